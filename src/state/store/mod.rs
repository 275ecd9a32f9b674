//! The embedded sled database: trees for the registry, tracking and replay
//! defence, group-committed durability, and recovery from a write failure.
//!
//! Invariants: sled holds metadata only, never an envelope body; a caller that
//! must not lose a write awaits [`Store::durable`] before acknowledging
//! anything to the broker. Many concurrent callers share one `flush`.
//!
//! Every flush truc asks for (group commit or [`Store::flush`]) bumps the
//! store's *generation* (`meta` key `store_generation`) first and, once the
//! store is anchored ([`Store::anchor`]), writes the checkpoint file after the
//! flush and before any waiter is released: the file never claims more than
//! is on disk, and is current when [`Store::durable`] resolves. Flushes are
//! serialised by one lock. Before any of that, every flush (the idle health
//! check too) runs the [`CommitHook`]s, which write what they hold in memory
//! (the audit log's batch) so the flush covers it; a hook's error fails the
//! flush like a write error.
//!
//! Write failures: sled 0.34 keeps the first I/O error of its log writer
//! (ENOSPC included) as a *global error* (`Config::set_global_error` in
//! `pagecache/iobuf.rs`) that every later write and flush returns, and only
//! `PageCache::start` — opening the database again — resets it. So the
//! flusher checks the database at least once a second; while it cannot
//! flush, [`Store::fault`] says why (the `/healthz` `store` check), and once a
//! probe file can be written in the data directory again it **reopens** the
//! database and bumps [`Store::reopens`]. Writes made before a reopen and
//! not yet flushed are gone: [`Store::durable`] fails for a caller whose
//! writes straddle a reopen, so it does not ack and the message comes again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::core::alarm::{Alarm, Say};
use crate::core::checkpoint::Checkpoint;
use crate::core::metrics;
use crate::state::integrity::{self, Anchoring};
use crate::state::pg::PgPool;

mod table;
pub use table::{Entry, InsertRead, Iter, PairInsertRead, Table};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value does not decode.
    #[error(transparent)]
    Codec(#[from] crate::state::codec::CodecError),
    /// The store was closed while waiting for durability.
    #[error("store closed")]
    Closed,
    /// The database was reopened after a write failure while the caller's
    /// writes were not yet durable: they may be lost, do it again.
    #[error("store reopened after a write failure; unflushed writes are lost")]
    Reopened,
    /// The PostgreSQL store failed.
    #[error("postgres store: {0}")]
    Pg(#[from] crate::state::pg::PgError),
    /// The checkpoint file could not be written.
    #[error("checkpoint file {path}: {source}")]
    Anchor {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Sled(sled::Error::Io(_)) => true,
            Self::Sled(
                sled::Error::CollectionNotFound(_)
                | sled::Error::Unsupported(_)
                | sled::Error::ReportableBug(_)
                | sled::Error::Corruption { .. },
            ) => false,
            Self::Pg(e) => e.is_retryable(),
            Self::Codec(_) => false,
            Self::Closed => false,
            Self::Reopened => true,
            Self::Anchor { .. } => true,
        }
    }
}

/// One opening of the database and its trees.
struct Trees {
    db: sled::Db,
    agencies: sled::Tree,
    keys: sled::Tree,
    envelopes: sled::Tree,
    by_dest: sled::Tree,
    deadlines: sled::Tree,
    nonces: sled::Tree,
    meta: sled::Tree,
    pending: sled::Tree,
    presence: sled::Tree,
    presence_log: sled::Tree,
    audit: sled::Tree,
    broker_users: sled::Tree,
    last_keys: sled::Tree,
    routing: sled::Tree,
}

impl Trees {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(1000));
        // sled's background thread may hold the file lock of a handle just
        // dropped in this process for a moment: retry briefly before failing.
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // sled reports the lock as kind `Other` wrapping the
                // `WouldBlock` of the lock call, so both forms are matched.
                Err(sled::Error::Io(e))
                    if tries < 40
                        && (e.kind() == std::io::ErrorKind::WouldBlock
                            || e.to_string().contains("could not acquire lock")) =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Self {
            agencies: db.open_tree("agencies")?,
            keys: db.open_tree("keys")?,
            envelopes: db.open_tree("envelopes")?,
            by_dest: db.open_tree("by_dest")?,
            deadlines: db.open_tree("deadlines")?,
            nonces: db.open_tree("nonces")?,
            meta: db.open_tree("meta")?,
            pending: db.open_tree("pending")?,
            presence: db.open_tree("presence")?,
            presence_log: db.open_tree("presence_log")?,
            audit: db.open_tree("audit")?,
            broker_users: db.open_tree("broker_users")?,
            last_keys: db.open_tree("last_keys")?,
            routing: db.open_tree("routing")?,
            db,
        })
    }
}

/// Lets a snapshot see every table at one instant: each write through a
/// [`Table`] holds it shared for the duration of one operation, and
/// [`Store::snapshot`] holds it exclusively while it copies.
#[derive(Clone, Default)]
pub(crate) struct Gate(Arc<RwLock<()>>);

impl Gate {
    /// Held while one write runs.
    fn write(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Held while a snapshot copies: no write runs meanwhile.
    fn freeze(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every table's entries at one instant, by table name (see [`Store::snapshot`]).
pub type Snapshot = Vec<(&'static str, Vec<Entry>)>;

struct Inner {
    /// Held shared by each write, exclusively by a snapshot.
    gate: Gate,
    /// The shared PostgreSQL store, when the store is one; then `open` is
    /// always `None`.
    pg: Option<PgPool>,
    /// The sled database; `None` only inside [`Inner::recover`] (under the
    /// write lock) and for a PostgreSQL store.
    open: RwLock<Option<Arc<Trees>>>,
    /// Bumped by every reopen.
    reopens: AtomicU64,
    /// The store generation and the checkpoint writer, under one lock.
    commit: Mutex<Commit>,
    /// Number of the last flush started / the last one that succeeded.
    flushes_started: AtomicU64,
    flushed: AtomicU64,
    /// Why the store cannot write, while it cannot.
    fault: Mutex<Option<String>>,
    /// A caller saw a write fail: the next flush writes a probe first.
    suspect: std::sync::atomic::AtomicBool,
    alarm: Alarm,
    requested: AtomicU64,
    wake: Arc<Notify>,
    done: watch::Sender<u64>,
    path: PathBuf,
    /// Run before every commit ([`Store::add_commit_hook`]); forgotten once
    /// their owner is dropped.
    hooks: Mutex<Vec<Weak<dyn CommitHook>>>,
}

/// What one flush updates, under one lock.
struct Commit {
    generation: u64,
    anchor: Option<Anchoring>,
}

/// The `meta` key written to check that the store can write.
const PROBE_KEY: &[u8] = b"store_probe";

/// The `meta` key a PostgreSQL store's synchronous commit writes.
const SYNC_KEY: &str = "store_sync";

/// Bytes written (and synced) to a probe file before a reopen is tried.
const PROBE_BYTES: usize = 1 << 20;

/// On PostgreSQL, how long the group commit waits, once asked, for more
/// callers to join it (PostgreSQL's own `commit_delay` idea, on truc's side).
/// Each commit is a statement of its own on the synchronous session and a
/// WAL flush on the server; under load the wait gathers several envelopes'
/// writes into one, and it costs a lone caller two milliseconds. sled's
/// commit is a local flush and does not wait.
const PG_COMMIT_GATHER: Duration = Duration::from_millis(2);

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    path: PathBuf,
}

macro_rules! trees {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        impl Store {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> Table {
                    let gate = self.inner.gate.clone();
                    match &self.inner.pg {
                        Some(pool) => Table::pg(pool.table(stringify!($name)), gate),
                        None => Table::sled(self.with(|t| t.$name.clone()), gate),
                    }
                }
            )*

            /// Every tree the store opens, with its name (for `truc store stats`).
            pub fn trees(&self) -> Vec<(&'static str, Table)> {
                vec![$((stringify!($name), self.$name())),*]
            }
        }
    };
}

trees! {
    /// Agencies by code.
    agencies,
    /// Access key → agency code.
    keys,
    /// Envelope records by `from \0 message_id`.
    envelopes,
    /// Index `dest \0 message_id \0 from` → empty.
    by_dest,
    /// Deadlines: `deliver_by ms (BE) from \0 message_id` → empty.
    deadlines,
    /// Seen nonces: `key \0 nonce` → (expiry ms, message id).
    nonces,
    /// Small settings (`name` → value).
    meta,
    /// Undelivered envelopes: `dest \0 from \0 message_id` → pending entry.
    pending,
    /// Current presence per agency: `code` → presence record.
    presence,
    /// Presence transitions: `code \0 at_ms (8 bytes BE) seq (4 bytes BE)` → transition.
    presence_log,
    /// Audit entries by big-endian sequence number ([`crate::state::audit`]).
    audit,
    /// RabbitMQ password hash of each agency's broker user: `code` →
    /// [`crate::state::registry::BrokerUser`] (never the password).
    broker_users,
    /// The access key each agency last authenticated with: `code` → key.
    last_keys,
    /// Envelopes being routed: `from \0 message_id` → empty, written before
    /// the record and removed once its deliveries and notices are confirmed.
    routing,
}

impl Store {
    /// Opens (creating) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let path = dir.join("db");
        let trees = Trees::open(&path)?;
        let gate = Gate::default();
        let generation = integrity::generation(&Table::sled(trees.meta.clone(), gate.clone()))?;
        Ok(Self::assemble(gate, None, Some(trees), generation, path))
    }

    /// Opens the shared PostgreSQL store at `url` with `connections`
    /// connections, applying the schema migrations this version carries
    /// (under a lock, so instances starting together apply each once). A
    /// database whose schema is newer than this version knows is refused.
    pub fn open_postgres(url: &str, connections: usize) -> Result<Self, StoreError> {
        let pool = PgPool::connect(url, connections)?;
        let report = pool.migrate()?;
        if report.applied.is_empty() {
            tracing::info!(store = %pool.redacted_url(), schema = report.to, connections = pool.threads(), "postgres store opened");
        } else {
            tracing::info!(store = %pool.redacted_url(), from = report.from, to = report.to, applied = ?report.applied, "postgres store schema migrated");
        }
        // Said at every start, not refused: a site may vacuum on a schedule.
        if !pool.autovacuum_on()? {
            tracing::warn!(store = %pool.redacted_url(), "PostgreSQL autovacuum is off: truc's claim and pending tables, which churn with every envelope, will only grow unless they are vacuumed on a schedule (docs/CLUSTER.md)");
        }
        let location = PathBuf::from(pool.redacted_url());
        Ok(Self::assemble(
            Gate::default(),
            Some(pool),
            None,
            0,
            location,
        ))
    }

    fn assemble(
        gate: Gate,
        pg: Option<PgPool>,
        trees: Option<Trees>,
        generation: u64,
        path: PathBuf,
    ) -> Self {
        let (done, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                gate,
                pg,
                open: RwLock::new(trees.map(Arc::new)),
                reopens: AtomicU64::new(0),
                commit: Mutex::new(Commit {
                    generation,
                    anchor: None,
                }),
                flushes_started: AtomicU64::new(0),
                flushed: AtomicU64::new(0),
                fault: Mutex::new(None),
                suspect: std::sync::atomic::AtomicBool::new(false),
                alarm: Alarm::new(),
                requested: AtomicU64::new(0),
                wake: Arc::new(Notify::new()),
                done,
                path: path.clone(),
                hooks: Mutex::new(Vec::new()),
            }),
            path,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&Trees) -> R) -> R {
        self.inner.with(f)
    }

    /// A copy of every table, consistent across tables. sled: writes wait
    /// while it is taken (in memory; the store holds metadata only, so this
    /// is quick), and none is half-seen; PostgreSQL: one read-only
    /// repeatable-read transaction, which sees every instance's writes
    /// committed before it and none after.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        // What the hooks hold goes in too, when the store can write it.
        if let Err(e) = self.inner.run_commit_hooks() {
            tracing::debug!(error = %e, "commit hooks failed before a snapshot");
        }
        if let Some(pool) = &self.inner.pg {
            // One database snapshot covers every instance's writes.
            pool.share()?;
            return Ok(pool.snapshot()?);
        }
        let _frozen = self.inner.gate.freeze();
        let mut out = Vec::new();
        for (name, table) in self.trees() {
            let entries = table.iter().collect::<Result<Vec<_>, _>>()?;
            out.push((name, entries));
        }
        Ok(out)
    }

    /// Sends this process's staged writes ([`Table::put`],
    /// [`Table::delete`]) to the shared store, so other instances see them:
    /// call it before telling anyone of them (publishing a delivery or a
    /// notice). Not durable until [`Store::durable`], whose group commit
    /// sends them too. Nothing to do on sled, where every write is in place
    /// at once.
    pub fn share(&self) -> Result<(), StoreError> {
        match &self.inner.pg {
            Some(pool) => Ok(pool.share()?),
            None => Ok(()),
        }
    }

    /// Whether other processes may share this store (so a marker another
    /// wrote may belong to a live process). sled is opened by one only.
    pub fn is_shared(&self) -> bool {
        self.inner.pg.is_some()
    }

    /// Where the store is: the sled directory, or the PostgreSQL URL
    /// without its password.
    pub fn location(&self) -> String {
        match &self.inner.pg {
            Some(pool) => pool.redacted_url().to_owned(),
            None => self.path.display().to_string(),
        }
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes on disk.
    pub fn size_on_disk(&self) -> u64 {
        match &self.inner.pg {
            Some(pool) => pool.size_on_disk().unwrap_or(0),
            None => self.with(|t| t.db.size_on_disk().unwrap_or(0)),
        }
    }

    /// How many times the database was reopened after a write failure.
    /// Writes made before a reopen and not flushed then are lost.
    pub fn reopens(&self) -> u64 {
        self.inner.reopens.load(Ordering::Acquire)
    }

    /// Why the store cannot write (the last flush failed), or `None`.
    pub fn fault(&self) -> Option<String> {
        self.inner
            .fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A mark for writes made now: they are on disk once
    /// [`Store::flushed_through`] passes it (with no reopen between).
    pub fn flush_mark(&self) -> u64 {
        self.inner.flushes_started.load(Ordering::Acquire)
    }

    /// The number of the last flush that succeeded (see [`Store::flush_mark`]).
    pub fn flushed_through(&self) -> u64 {
        self.inner.flushed.load(Ordering::Acquire)
    }

    /// A write failed (seen by a caller): the next flush checks that the
    /// store can write at all before it counts as a success.
    pub fn suspect(&self) {
        self.inner.suspect.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }

    /// Asks for a flush soon without waiting for it.
    pub fn nudge(&self) {
        self.inner.requested.fetch_add(1, Ordering::AcqRel);
        self.inner.wake.notify_one();
    }

    /// Starts the group-commit flusher, which also checks the database once
    /// a second and reopens it after a write failure. Call once, inside a runtime.
    pub fn start_flusher(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let wake = self.inner.wake.clone();
        tokio::spawn(async move {
            loop {
                let notified = wake.notified();
                let Some(inner) = weak.upgrade() else { return };
                let mut target = inner.requested.load(Ordering::Acquire);
                let idle = *inner.done.borrow() >= target;
                let gather = inner.pg.is_some() && !idle;
                drop(inner);
                if idle {
                    // Wake on the next request; flush anyway (a health check
                    // when nothing is dirty) at least once a second.
                    if tokio::time::timeout(Duration::from_secs(1), notified)
                        .await
                        .is_ok()
                    {
                        continue;
                    }
                }
                if gather {
                    // Callers that ask meanwhile are served by this commit.
                    tokio::time::sleep(PG_COMMIT_GATHER).await;
                    let Some(inner) = weak.upgrade() else { return };
                    target = inner.requested.load(Ordering::Acquire);
                }
                let Some(inner) = weak.upgrade() else { return };
                let n = inner.flushes_started.fetch_add(1, Ordering::AcqRel) + 1;
                // sled's flush succeeds with nothing new to write even after
                // its sticky error (make_stable returns early), so a write
                // goes first when a caller saw one fail or a fault is known.
                let probe = inner.suspect.swap(false, Ordering::AcqRel)
                    || inner
                        .fault
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_some();
                drop(inner);
                let Some(inner) = weak.upgrade() else { return };
                let committer = inner.clone();
                drop(inner);
                let res =
                    tokio::task::spawn_blocking(move || committer.flush_once(n, probe, idle)).await;
                let Some(inner) = weak.upgrade() else { return };
                match res {
                    Ok(Ok(_)) => {
                        inner.flushed.store(n, Ordering::Release);
                        inner.done.send_if_modified(|d| {
                            let more = *d < target;
                            *d = (*d).max(target);
                            more
                        });
                        inner.healthy();
                    }
                    Ok(Err(e)) => {
                        inner.failed(&e);
                        let again = inner.clone();
                        drop(inner);
                        // Reopen (blocking: it waits for sled's lock) once a
                        // probe shows there is room to write again.
                        let _ = tokio::task::spawn_blocking(move || again.recover()).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "sled flush task failed");
                        return;
                    }
                }
            }
        })
    }

    /// Resolves once everything written before the call is on disk.
    /// Concurrent callers share one flush (group commit). Fails with
    /// [`StoreError::Reopened`] when the database was reopened meanwhile.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let reopens = self.reopens();
        let ticket = self.inner.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut rx = self.inner.done.subscribe();
        self.inner.wake.notify_one();
        rx.wait_for(|done| *done >= ticket)
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Closed)?;
        if self.reopens() != reopens {
            return Err(StoreError::Reopened);
        }
        Ok(())
    }

    /// Flushes synchronously (shutdown, CLI tools), like a group commit:
    /// bumps the generation and writes the checkpoint if anchored.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush_once(self.flush_mark() + 1, false, false)
    }

    fn commit_state(&self) -> std::sync::MutexGuard<'_, Commit> {
        self.inner.commit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation of the last flush truc asked for (0: never).
    pub fn generation(&self) -> u64 {
        self.commit_state().generation
    }

    /// Makes the next flush's generation greater than `generation` (records
    /// loaded from a backup carry their store's generation).
    pub fn raise_generation(&self, generation: u64) {
        let mut c = self.commit_state();
        c.generation = c.generation.max(generation);
    }

    /// From now on every flush writes a checkpoint through `anchor`.
    pub fn anchor(&self, anchor: Anchoring) {
        self.commit_state().anchor = Some(anchor);
    }

    /// Stops writing checkpoints (a start refused after the store was
    /// anchored must leave the anchor as it found it).
    pub fn disarm_anchor(&self) {
        self.commit_state().anchor = None;
    }

    /// Makes the next checkpoint's serial greater than `serial` (a copy seen
    /// elsewhere, e.g. the broker's).
    pub fn raise_serial(&self, serial: u64) {
        if let Some(a) = self.commit_state().anchor.as_mut() {
            a.raise_serial(serial);
        }
    }

    /// Makes the next checkpoint's epoch at least `epoch`.
    pub fn raise_epoch(&self, epoch: u64) {
        if let Some(a) = self.commit_state().anchor.as_mut() {
            a.raise_epoch(epoch);
        }
    }

    /// Where the checkpoint file is and how it is sealed, once anchored.
    pub fn anchor_file(&self) -> Option<integrity::AnchorFile> {
        self.commit_state().anchor.as_ref().map(|a| a.file.clone())
    }
}

impl Inner {
    /// One flush: the commit hooks first (a hook that wrote makes a health
    /// check a full commit); then for sled, a probe write first when a write was seen to
    /// fail (`probe`), only sled's flush when nothing was asked (`idle`, a
    /// health check), else [`Inner::commit`]; for PostgreSQL, a synchronous
    /// commit, which makes every earlier write of every connection durable.
    fn flush_once(&self, n: u64, probe: bool, idle: bool) -> Result<(), StoreError> {
        if let Some(pool) = &self.pg {
            self.run_commit_hooks()?;
            pool.sync_commit(SYNC_KEY.as_bytes())?;
            return Ok(());
        }
        let trees = self.current();
        // A hook that wrote makes even a health check a full commit.
        let hooks_wrote = self.run_commit_hooks()?;
        if probe {
            trees.meta.insert(PROBE_KEY, &n.to_be_bytes())?;
        } else if idle && !hooks_wrote {
            // Only a health check: no new generation or checkpoint.
            trees.db.flush()?;
            return Ok(());
        }
        self.commit(&trees).map(|_| ())
    }

    /// Bumps the generation, flushes `trees`, then writes the checkpoint (if
    /// anchored). A failed flush leaves the generation where it was: the
    /// `meta` write of the bump is lost with the rest when the database is
    /// reopened.
    fn commit(&self, trees: &Trees) -> Result<Option<Checkpoint>, StoreError> {
        let mut c = self.commit.lock().unwrap_or_else(|p| p.into_inner());
        let generation = c.generation + 1;
        trees
            .meta
            .insert(integrity::GENERATION_KEY, &generation.to_be_bytes())?;
        if c.anchor.is_some() {
            trees.meta.insert(integrity::ANCHORED_KEY, &[1u8])?;
        }
        let head = integrity::audit_head(&Table::sled(trees.meta.clone(), self.gate.clone()))?;
        trees.db.flush()?;
        c.generation = generation;
        let Some(anchor) = c.anchor.as_mut() else {
            return Ok(None);
        };
        let cp = anchor.next(generation, head);
        anchor.write(&cp)?;
        Ok(Some(cp))
    }

    fn with<R>(&self, f: impl FnOnce(&Trees) -> R) -> R {
        let g = self.open.read().unwrap_or_else(|p| p.into_inner());
        f(g.as_ref().expect("the store is open outside a reopen"))
    }

    fn current(&self) -> Arc<Trees> {
        let g = self.open.read().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .expect("the store is open outside a reopen")
            .clone()
    }

    /// A flush succeeded: the fault, if any, is over.
    fn healthy(&self) {
        let was = self.fault.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(why) = was {
            let lasted = self.alarm.clear(Instant::now()).unwrap_or_default();
            metrics::store_writable(true);
            tracing::info!(was = %why, lasted_s = lasted.as_secs(), reopens = self.reopens.load(Ordering::Acquire), "store writable again");
        }
    }

    /// A flush failed with `e`.
    fn failed(&self, e: &StoreError) {
        let detail = e.to_string();
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(detail.clone());
        metrics::store_writable(false);
        match self.alarm.raise(Instant::now()) {
            Say::Started => {
                tracing::warn!(error = %detail, "store cannot write: nothing is acked until it can; it is reopened once there is room")
            }
            Say::Reminder {
                suppressed,
                lasting,
            } => {
                tracing::warn!(error = %detail, lasting_s = lasting.as_secs(), suppressed, "store still cannot write")
            }
            Say::Quiet => {}
        }
    }

    /// After a failed flush: once a probe file can be written next to the
    /// database, reopens it (sled's error is sticky until then).
    fn recover(&self) {
        if self.pg.is_some() {
            // The pool reconnects by itself (to whichever host takes writes).
            return;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if let Err(e) = probe(dir) {
            tracing::debug!(error = %e, "no room to write yet");
            return;
        }
        let mut g = self.open.write().unwrap_or_else(|p| p.into_inner());
        // The old database must be closed (its file lock released) before it
        // is opened again; a handle still in use elsewhere holds it a moment,
        // which [`Trees::open`] waits out.
        drop(g.take());
        loop {
            match Trees::open(&self.path) {
                Ok(t) => {
                    *g = Some(Arc::new(t));
                    let reopens = self.reopens.fetch_add(1, Ordering::AcqRel) + 1;
                    tracing::info!(reopens, "store reopened after a write failure");
                    return;
                }
                Err(e) => {
                    // Nothing can be read or written without it: keep trying.
                    tracing::error!(error = %e, "store cannot be reopened; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Work done before every commit: writes held back in memory (the audit
/// log's batch), so that the commit covers them.
pub trait CommitHook: Send + Sync {
    /// Writes what it holds; true when it wrote something. An error fails
    /// the flush (as a store write error does), and what it held must be
    /// kept for the next one.
    fn before_commit(&self) -> Result<bool, StoreError>;
}

/// Commit hooks.
impl Store {
    /// Runs `hook` before every commit ([`Store::durable`]'s group commit,
    /// [`Store::flush`], the flusher's health check) and before a
    /// [`Store::snapshot`], as long as it is alive.
    pub fn add_commit_hook(&self, hook: Weak<dyn CommitHook>) {
        let mut hooks = self.inner.hooks.lock().unwrap_or_else(|p| p.into_inner());
        hooks.retain(|h| h.strong_count() > 0);
        hooks.push(hook);
    }
}

impl Inner {
    /// Runs every live commit hook, in the order they were added; stops at
    /// the first error. True when one wrote something.
    fn run_commit_hooks(&self) -> Result<bool, StoreError> {
        let live: Vec<Arc<dyn CommitHook>> = {
            let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
            hooks.retain(|h| h.strong_count() > 0);
            hooks.iter().filter_map(Weak::upgrade).collect()
        };
        let mut wrote = false;
        for hook in live {
            wrote |= hook.before_commit()?;
        }
        Ok(wrote)
    }
}

/// Writes, syncs and removes a file of [`PROBE_BYTES`] in `dir`.
fn probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".truc-space-probe");
    let res = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn durable_resolves_for_many_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.start_flusher();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let s = store.clone();
            set.spawn(async move {
                s.meta().insert(i.to_be_bytes(), b"x").unwrap();
                s.durable().await.unwrap();
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        // 200 keys plus the generation.
        assert_eq!(store.meta().len().unwrap(), 201);
        // Each shared flush bumped the generation once.
        let g = store.generation();
        assert!((1..=200).contains(&g), "{g}");
        assert!(store.flushed_through() >= 1);
        assert_eq!(store.fault(), None);
    }

    #[test]
    fn trees_lists_every_tree_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let names: Vec<&str> = store.trees().iter().map(|(n, _)| *n).collect();
        let mut opened: Vec<String> = store.with(|t| {
            t.db.tree_names()
                .iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .filter(|n| n != "__sled__default")
                .collect()
        });
        opened.sort();
        let mut listed: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        listed.sort();
        assert_eq!(listed, opened);
    }

    #[test]
    fn a_reopen_keeps_what_was_flushed_and_bumps_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.meta().insert("k", "v").unwrap();
        store.flush().unwrap();
        let held = store.clone();
        store.inner.recover();
        assert_eq!(store.reopens(), 1);
        assert_eq!(held.meta().get("k").unwrap().unwrap(), b"v");
        held.meta().insert("k2", "v2").unwrap();
        assert!(store.meta().get("k2").unwrap().is_some());
    }

    /// Writes one `meta` key per commit while armed.
    struct Once(Store, std::sync::atomic::AtomicBool);

    impl CommitHook for Once {
        fn before_commit(&self) -> Result<bool, StoreError> {
            if !self.1.swap(false, Ordering::AcqRel) {
                return Ok(false);
            }
            self.0.meta().insert("hooked", "1")?;
            Ok(true)
        }
    }

    #[test]
    fn commit_hooks_run_first_and_a_dropped_one_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hook = Arc::new(Once(store.clone(), true.into()));
        store.add_commit_hook(Arc::downgrade(&hook) as Weak<dyn CommitHook>);
        // An idle health check with nothing written: no new generation.
        hook.1.store(false, Ordering::Release);
        store.inner.flush_once(1, false, true).unwrap();
        assert_eq!(store.generation(), 0);
        // A hook that wrote makes it a full commit.
        hook.1.store(true, Ordering::Release);
        store.inner.flush_once(2, false, true).unwrap();
        assert_eq!(store.generation(), 1);
        assert_eq!(store.meta().get("hooked").unwrap(), Some(b"1".to_vec()));
        drop(hook);
        store.flush().unwrap();
        assert!(store.inner.hooks.lock().unwrap().is_empty());
    }
}

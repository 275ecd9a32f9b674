//! A pool of dedicated OS threads, each owning one synchronous PostgreSQL
//! session, serving blocking requests from any thread (tokio tasks included).
//!
//! Why threads: the synchronous client runs its own small runtime and panics
//! when used on a tokio runtime thread, so callers never touch a client:
//! they send a job over a channel and block on a one-slot reply channel.
//!
//! Invariants:
//! - a client is only ever used (and dropped) on its worker thread;
//! - every session runs `SET synchronous_commit = off` before its first
//!   request, except one more, the group-commit session (`on`), which only
//!   [`PgPool::run_sync`] uses; durability comes from
//!   [`PgPool::sync_commit`] on it, whose flush (WAL is sequential) covers
//!   every earlier commit of every session;
//! - every session runs with `enable_seqscan = off`: each statement truc
//!   sends addresses rows by key or key range, and its busiest tables
//!   (claims, pending deliveries) grow from empty to thousands of dead rows
//!   between two autovacuum rounds. A prepared statement's generic plan made
//!   while such a table was small would otherwise stay a sequential scan of
//!   the grown table (measured: a scan of every pending row at one flush in
//!   five); with scans priced out the planner keeps to the primary key
//!   (a full read, which has no other way, is still a scan);
//! - a worker whose connection broke drops it and reconnects on its next
//!   request, so after a failover the next request reaches the new primary
//!   (`target_session_attrs=read-write` picks it); the request that hit the
//!   broken connection fails with a retryable [`PgError::ConnectionLost`] and
//!   is not retried here;
//! - dropping the last handle closes the channel; the workers finish their
//!   current job and exit, and the drop waits for them.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls, Statement};

use super::error::{PgError, RECONNECT_STATES};
use super::table::Op;

/// Connect timeout used when the connection string sets none, so that a
/// dead host in a multi-host list is skipped in bounded time.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long sent data may stay unacknowledged before the connection is
/// dropped, when the connection string sets none (Linux only).
const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The client's own keepalive idle time (two hours): replaced when unchanged.
const CLIENT_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// Keepalive idle time, interval and probes, when the string sets none.
const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(15);
const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_KEEPALIVES_RETRIES: u32 = 3;

/// Key of a cached prepared statement: the tree and the operation.
pub(super) type StmtKey = (&'static str, Op);

/// A job run on a worker with its session.
type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// One worker's session: its (lazily re-made) client and its statements.
pub(super) struct Session {
    config: Arc<Config>,
    redacted: Arc<str>,
    client: Option<Client>,
    stmts: HashMap<StmtKey, Statement>,
    /// The group-commit session: its transactions commit synchronously.
    synchronous: bool,
}

impl Session {
    /// The live client, connecting first if there is none or it is closed.
    pub(super) fn client(&mut self) -> Result<&mut Client, PgError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.disconnect();
        }
        if self.client.is_none() {
            let connect_err = |source| PgError::Connect {
                url: self.redacted.to_string(),
                source,
            };
            let mut client = self.config.connect(NoTls).map_err(connect_err)?;
            let mode = if self.synchronous { "on" } else { "off" };
            client
                .batch_execute(&format!(
                    "SET synchronous_commit = {mode}; SET enable_seqscan = off"
                ))
                .map_err(connect_err)?;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| PgError::Unexpected("no client after connecting".into()))
    }

    /// The client and the statement cached under `key`, preparing `sql()`
    /// on this session the first time.
    pub(super) fn prepared(
        &mut self,
        key: StmtKey,
        sql: impl FnOnce() -> String,
    ) -> Result<(&mut Client, Statement), PgError> {
        self.client()?;
        let stmt = match self.stmts.get(&key) {
            Some(stmt) => stmt.clone(),
            None => {
                let client = self.client()?;
                let stmt = client.prepare(&sql())?;
                self.stmts.insert(key, stmt.clone());
                stmt
            }
        };
        Ok((self.client()?, stmt))
    }

    /// Forget the connection and its statements.
    fn disconnect(&mut self) {
        self.client = None;
        self.stmts.clear();
    }

    /// Turn an error from a request into what the caller gets, dropping the
    /// connection when it is broken or no longer usable for writes.
    fn classify(&mut self, err: PgError) -> PgError {
        match err {
            PgError::Query(e) => {
                let broken = e.is_closed()
                    || self.client.as_ref().is_none_or(Client::is_closed)
                    || has_io_source(&e);
                let stale = e
                    .code()
                    .is_some_and(|s| RECONNECT_STATES.contains(&s.code()));
                if broken || stale {
                    self.disconnect();
                } else if e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) {
                    // "cached plan must not change result type": the schema
                    // changed under a prepared statement; prepare afresh.
                    self.stmts.clear();
                }
                if broken {
                    PgError::ConnectionLost(e)
                } else {
                    PgError::Query(e)
                }
            }
            other => other,
        }
    }
}

/// Whether the error was caused by an I/O error (a broken socket).
fn has_io_source(e: &postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

struct Inner {
    tx: Option<Sender<Job>>,
    /// Jobs for the group-commit session.
    sync_tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// How many of `workers` serve `tx` (the last serves `sync_tx`).
    threads: usize,
    redacted: Arc<str>,
    /// Blind writes not yet sent ([`super::staged`]).
    staged: super::staged::Staged,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channels makes every idle worker's `recv` fail.
        self.tx = None;
        self.sync_tx = None;
        let me = thread::current().id();
        for worker in self.workers.drain(..) {
            if worker.thread().id() != me {
                // A worker that panicked outside a job has nothing to report.
                let _ = worker.join();
            }
        }
    }
}

/// A pool of PostgreSQL sessions on dedicated threads. Cloning is cheap
/// (shared); the threads stop when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct PgPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("url", &self.inner.redacted)
            .field("threads", &self.inner.workers.len())
            .finish()
    }
}

impl PgPool {
    /// Parse `url` (URL or `key=value` form, several hosts and
    /// `target_session_attrs` allowed), start `threads` workers (at least
    /// one) and connect the first session now, so that a bad string or an
    /// unreachable server fails here; the other sessions connect on first use.
    pub(crate) fn connect(url: &str, threads: usize) -> Result<PgPool, PgError> {
        let config = Arc::new(configure(url)?);
        let redacted: Arc<str> = crate::core::config::redact_store_url(url).into();
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let (sync_tx, sync_rx) = mpsc::channel::<Job>();
        let sync_rx = Arc::new(Mutex::new(sync_rx));
        let threads = threads.max(1);
        let mut workers = Vec::with_capacity(threads + 1);
        // One more session for the group commit: it commits synchronously
        // without a round trip to say so.
        for i in 0..=threads {
            let synchronous = i == threads;
            let session = Session {
                config: config.clone(),
                redacted: redacted.clone(),
                client: None,
                stmts: HashMap::new(),
                synchronous,
            };
            let (rx, name) = if synchronous {
                (sync_rx.clone(), "truc-pg-sync".to_owned())
            } else {
                (rx.clone(), format!("truc-pg-{i}"))
            };
            let spawned = thread::Builder::new()
                .name(name)
                .spawn(move || work(session, &rx));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    drop(tx);
                    drop(sync_tx);
                    for w in workers {
                        let _ = w.join();
                    }
                    return Err(PgError::Unexpected(format!(
                        "cannot start a PostgreSQL worker thread: {e}"
                    )));
                }
            }
        }
        let pool = PgPool {
            inner: Arc::new(Inner {
                tx: Some(tx),
                sync_tx: Some(sync_tx),
                workers,
                threads,
                redacted,
                staged: Default::default(),
            }),
        };
        pool.run(|s| s.client().map(|_| ()))?;
        Ok(pool)
    }

    /// The connection string with its password replaced by `***`.
    pub(crate) fn redacted_url(&self) -> &str {
        &self.inner.redacted
    }

    /// The blind writes of this pool's tables not yet sent.
    pub(crate) fn staged(&self) -> &super::staged::Staged {
        &self.inner.staged
    }

    /// Sends every staged write ([`super::staged::Staged::flush`]).
    pub(crate) fn share(&self) -> Result<(), PgError> {
        self.inner.staged.flush(self, None)
    }

    /// Number of worker threads.
    pub(crate) fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Run `f` on a worker with its session and wait for its result.
    /// Blocks the calling thread; safe on a tokio runtime thread only in the
    /// sense that it does not panic (prefer `spawn_blocking` for long work).
    pub(super) fn run<T, F>(&self, f: F) -> Result<T, PgError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session) -> Result<T, PgError> + Send + 'static,
    {
        self.run_on(self.inner.tx.as_ref(), f)
    }

    /// [`PgPool::run`] on the group-commit session, whose transactions
    /// commit synchronously (and make every earlier commit durable).
    pub(super) fn run_sync<T, F>(&self, f: F) -> Result<T, PgError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session) -> Result<T, PgError> + Send + 'static,
    {
        self.run_on(self.inner.sync_tx.as_ref(), f)
    }

    fn run_on<T, F>(&self, tx: Option<&Sender<Job>>, f: F) -> Result<T, PgError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session) -> Result<T, PgError> + Send + 'static,
    {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |session: &mut Session| {
            let result = f(session).map_err(|e| session.classify(e));
            // The caller may have gone; nothing to do then.
            let _ = reply_tx.send(result);
        });
        let tx = tx.ok_or(PgError::PoolClosed)?;
        tx.send(job).map_err(|_| PgError::PoolClosed)?;
        // The reply sender is dropped without a send only if the job panicked.
        reply_rx.recv().map_err(|_| PgError::WorkerPanicked)?
    }

    /// The group-commit barrier: one transaction with synchronous commit
    /// that sends the staged writes, or, with none, upserts `marker_key` in
    /// `truc_meta` (value: the server's time as UTF-8 text). When it
    /// returns, every commit made before it, by any session, is flushed.
    /// Blocking: call it from `spawn_blocking`.
    pub(crate) fn sync_commit(&self, marker_key: &[u8]) -> Result<(), PgError> {
        self.inner.staged.flush(self, Some(marker_key))
    }

    /// Every tree's entries as of one instant, for every instance's writes:
    /// one read-only transaction at REPEATABLE READ (one snapshot of the
    /// database), tree by tree in [`super::TREES`] order, keys in order.
    #[allow(clippy::type_complexity)]
    pub(crate) fn snapshot(
        &self,
    ) -> Result<Vec<(&'static str, Vec<super::table::Entry>)>, PgError> {
        self.run(move |s| {
            let client = s.client()?;
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let mut out = Vec::with_capacity(super::TREES.len());
            for name in super::TREES {
                // Names come from the fixed list only.
                let rows = tx.query(&format!("SELECT k, v FROM truc_{name} ORDER BY k"), &[])?;
                let mut entries = Vec::with_capacity(rows.len());
                for row in rows {
                    entries.push((row.try_get::<_, Vec<u8>>(0)?, row.try_get::<_, Vec<u8>>(1)?));
                }
                out.push((*name, entries));
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Bytes used by truc's tables (data, indexes, TOAST), summed.
    pub(crate) fn size_on_disk(&self) -> Result<u64, PgError> {
        let mut names: Vec<String> = super::TREES.iter().map(|t| format!("truc_{t}")).collect();
        names.push("truc_schema".to_owned());
        self.run(move |s| {
            let row = s.client()?.query_one(
                "SELECT COALESCE(SUM(pg_total_relation_size(to_regclass(t))), 0)::bigint \
                 FROM unnest($1::text[]) AS t",
                &[&names],
            )?;
            let size: i64 = row.try_get(0)?;
            u64::try_from(size).map_err(|_| PgError::Unexpected(format!("negative size {size}")))
        })
    }
}

/// Parse `url` and fill in what it leaves unset: a connect timeout, the
/// application name, and TCP settings that notice a vanished server (a
/// failover without a reset) in about half a minute instead of hours: a
/// worker waiting on such a socket would otherwise block its callers.
fn configure(url: &str) -> Result<Config, PgError> {
    let mut config = Config::from_str(url).map_err(PgError::BadUrl)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("truc");
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
    }
    if config.get_keepalives_idle() == CLIENT_KEEPALIVES_IDLE {
        config.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(DEFAULT_KEEPALIVES_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(DEFAULT_KEEPALIVES_RETRIES);
    }
    Ok(config)
}

/// A worker: take jobs until the channel closes.
fn work(mut session: Session, rx: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is only held while waiting; `recv` does not panic, so
        // the mutex cannot be poisoned, and if it were its data is intact.
        let job = match rx.lock().unwrap_or_else(PoisonError::into_inner).recv() {
            Ok(job) => job,
            Err(_) => break,
        };
        if catch_unwind(AssertUnwindSafe(|| job(&mut session))).is_err() {
            // The session's state is unknown after a panic: start afresh.
            session.disconnect();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::testdb::{migrated_pool, server_url, TestDb};
    use super::*;

    #[test]
    fn unset_timeouts_get_defaults_and_set_ones_are_kept() {
        let c = configure("postgres://u@h/db").unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(c.get_application_name(), Some("truc"));
        assert_eq!(c.get_tcp_user_timeout(), Some(&DEFAULT_TCP_USER_TIMEOUT));
        assert_eq!(c.get_keepalives_idle(), DEFAULT_KEEPALIVES_IDLE);
        assert_eq!(
            c.get_keepalives_interval(),
            Some(DEFAULT_KEEPALIVES_INTERVAL)
        );
        assert_eq!(c.get_keepalives_retries(), Some(DEFAULT_KEEPALIVES_RETRIES));
        let c = configure(
            "host=h user=u connect_timeout=3 application_name=x tcp_user_timeout=7 \
             keepalives_idle=60 keepalives_interval=9 keepalives_retries=2",
        )
        .unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(c.get_application_name(), Some("x"));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(9)));
        assert_eq!(c.get_keepalives_retries(), Some(2));
    }

    #[test]
    fn a_bad_url_fails_at_connect() {
        let err = PgPool::connect("postgres://u@h:notaport/db", 2).unwrap_err();
        assert!(matches!(err, PgError::BadUrl(_)), "{err}");
        assert!(!err.is_retryable());
        assert!(
            err.to_string()
                .contains("invalid PostgreSQL connection string"),
            "{err}"
        );
    }

    #[test]
    fn an_unreachable_server_fails_at_connect_with_a_clear_error() {
        let started = Instant::now();
        let err =
            PgPool::connect("postgres://u:pw@127.0.0.1:1/db?connect_timeout=2", 4).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        let msg = err.to_string();
        assert!(matches!(err, PgError::Connect { .. }), "{msg}");
        assert!(
            msg.contains("cannot connect to PostgreSQL at postgres://u:***@127.0.0.1:1/db"),
            "{msg}"
        );
        assert!(!msg.contains("pw"), "{msg}");
        assert!(msg.contains("refused"), "the cause is named: {msg}");
        // A server that is down may come back.
        assert!(err.is_retryable());
    }

    #[test]
    fn an_unknown_role_fails_at_connect_and_is_final() {
        let db = TestDb::new();
        let url = db.url().replacen("truc_test:", "truc_no_such_role:", 1);
        assert_ne!(url, db.url(), "test server URL names the role");
        let err = PgPool::connect(&url, 1).unwrap_err();
        assert!(matches!(err, PgError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("truc_no_such_role"), "{err}");
        assert!(!err.is_retryable(), "{err}");
    }

    #[test]
    fn a_missing_database_fails_at_connect() {
        let db = TestDb::new();
        let url = db.url().replace(db.name(), "truc_no_such_database");
        let err = PgPool::connect(&url, 1).unwrap_err();
        assert!(matches!(err, PgError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("truc_no_such_database"), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn sessions_commit_asynchronously_and_sync_commit_is_synchronous() {
        let db = TestDb::new();
        let pool = PgPool::connect(db.url(), 8).unwrap();
        pool.migrate().unwrap();
        assert_eq!(pool.threads(), 8);
        assert!(pool.redacted_url().contains(":***@"));
        let setting = || {
            pool.run(|s| {
                let row = s.client()?.query_one("SHOW synchronous_commit", &[])?;
                Ok(row.try_get::<_, String>(0)?)
            })
            .unwrap()
        };
        assert_eq!(setting(), "off");
        pool.sync_commit(b"durable_marker").unwrap();
        let first = pool.table("meta").get(b"durable_marker").unwrap().unwrap();
        // A timestamp from the server, as text.
        assert!(String::from_utf8(first.clone()).unwrap().starts_with("20"));
        pool.sync_commit(b"durable_marker").unwrap();
        let second = pool.table("meta").get(b"durable_marker").unwrap().unwrap();
        assert!(second > first, "the marker is rewritten each time");
        // The group-commit session alone commits synchronously.
        assert_eq!(setting(), "off");
        let sync_setting = pool
            .run_sync(|s| {
                let row = s.client()?.query_one("SHOW synchronous_commit", &[])?;
                Ok(row.try_get::<_, String>(0)?)
            })
            .unwrap();
        assert_eq!(sync_setting, "on");
    }

    /// The staged batch's deletes, planned generically on near-empty
    /// tables (as a prepared statement is after five runs), still go
    /// through the primary key, not a scan of the table.
    #[test]
    fn generic_plans_keep_to_the_key_on_small_tables() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        for i in 0..20u32 {
            pool.table("pending")
                .insert(&i.to_be_bytes(), b"p")
                .unwrap();
            pool.table("routing")
                .insert(&i.to_be_bytes(), b"r")
                .unwrap();
        }
        let sql = super::super::staged::batch_sql(1 << 7, 1 << 13, 0, 0);
        assert!(
            sql.contains("truc_pending") && sql.contains("truc_routing"),
            "{sql}"
        );
        let plan = pool
            .run(move |s| {
                let c = s.client()?;
                c.batch_execute("SET plan_cache_mode = force_generic_plan")?;
                c.batch_execute(&format!(
                    "PREPARE batch(bytea[], bytea[], bytea[]) AS {sql}"
                ))?;
                let rows = c.query(
                    "EXPLAIN EXECUTE batch('{}'::bytea[], '{}'::bytea[], '{}'::bytea[])",
                    &[],
                )?;
                c.batch_execute("DEALLOCATE batch; RESET plan_cache_mode")?;
                let mut plan = String::new();
                for r in rows {
                    plan.push_str(&r.try_get::<_, String>(0)?);
                    plan.push('\n');
                }
                Ok(plan)
            })
            .unwrap();
        assert!(!plan.contains("Seq Scan"), "{plan}");
        assert!(
            plan.contains("truc_pending_pkey") && plan.contains("truc_routing_pkey"),
            "{plan}"
        );
    }

    #[test]
    fn sync_commit_before_migration_fails() {
        let db = TestDb::new();
        let pool = PgPool::connect(db.url(), 1).unwrap();
        let err = pool.sync_commit(b"m").unwrap_err();
        assert!(matches!(err, PgError::Query(_)), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn size_on_disk_grows_with_data() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        let before = pool.size_on_disk().unwrap();
        assert!(before > 0, "empty tables still have index pages");
        let t = pool.table("envelopes");
        for i in 0..2000u32 {
            t.insert(&i.to_be_bytes(), &[7; 200]).unwrap();
        }
        let after = pool.size_on_disk().unwrap();
        assert!(after >= before + 2000 * 200, "{before} -> {after}");
    }

    /// A session killed by the server: the request on it fails retryable,
    /// the next one reconnects (the same path as a failover).
    #[test]
    fn a_broken_connection_is_retryable_and_replaced() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        let t = pool.table("meta");
        t.insert(b"k", b"v").unwrap();
        let pid: i32 = pool
            .run(|s| {
                Ok(s.client()?
                    .query_one("SELECT pg_backend_pid()", &[])?
                    .try_get(0)?)
            })
            .unwrap();
        let mut admin = postgres::Client::connect(&server_url(), NoTls).unwrap();
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap();
        // Let the server close the socket.
        std::thread::sleep(Duration::from_millis(200));
        let err = t.get(b"k").unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(matches!(err, PgError::ConnectionLost(_)), "{err:?}");
        assert_eq!(t.get(b"k").unwrap(), Some(b"v".to_vec()));
        let new_pid: i32 = pool
            .run(|s| {
                Ok(s.client()?
                    .query_one("SELECT pg_backend_pid()", &[])?
                    .try_get(0)?)
            })
            .unwrap();
        assert_ne!(pid, new_pid);
    }

    #[test]
    fn statements_are_prepared_again_after_a_schema_change() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        let t = pool.table("meta");
        t.insert(b"k", b"v").unwrap();
        assert_eq!(t.get(b"k").unwrap(), Some(b"v".to_vec()));
        let alter = |sql: &'static str| pool.run(move |s| Ok(s.client()?.batch_execute(sql)?));
        alter("ALTER TABLE truc_meta ALTER COLUMN v TYPE text USING encode(v, 'escape')").unwrap();
        // The cached statement's result type changed: refused once...
        let err = t.get(b"k").unwrap_err();
        let PgError::Query(e) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{err}");
        // ...then prepared afresh: it runs, and the text column does not
        // decode as bytes.
        let err = t.get(b"k").unwrap_err();
        let PgError::Query(e) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(e.code(), None, "{err}");
    }

    #[test]
    fn a_panicking_job_does_not_kill_the_worker() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        let err = pool
            .run(|_| -> Result<(), PgError> { panic!("job panics on purpose") })
            .unwrap_err();
        assert!(matches!(err, PgError::WorkerPanicked), "{err}");
        pool.table("meta").insert(b"after", b"panic").unwrap();
    }

    #[test]
    fn dropping_the_pool_stops_its_threads_and_sessions() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 3);
        // Make every worker connect.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let pool = pool.clone();
                let barrier = barrier.clone();
                thread::spawn(move || {
                    pool.run(move |s| {
                        s.client()?;
                        barrier.wait();
                        Ok(())
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        // And the group-commit session.
        pool.sync_commit(b"marker").unwrap();
        let name = db.name().to_owned();
        let sessions = move || -> i64 {
            let mut admin = postgres::Client::connect(&server_url(), NoTls).unwrap();
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&name],
                )
                .unwrap()
                .get(0)
        };
        assert_eq!(sessions(), 4);
        let handles: Vec<_> = pool.inner.workers.iter().map(|w| w.thread().id()).collect();
        assert_eq!(handles.len(), 4);
        drop(pool); // joins the workers
        let deadline = Instant::now() + Duration::from_secs(5);
        while sessions() != 0 {
            assert!(Instant::now() < deadline, "sessions left after drop");
            thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn several_hosts_and_key_value_form_reach_the_primary() {
        let db = TestDb::new();
        // An unreachable first host, then the real one, read-write required.
        let url = format!(
            "host=127.0.0.1,127.0.0.1 port=1,5432 user=truc_test password=truc_test \
             dbname={} target_session_attrs=read-write connect_timeout=2",
            db.name()
        );
        let pool = PgPool::connect(&url, 1).unwrap();
        assert_eq!(
            pool.redacted_url(),
            url.replace("password=truc_test", "password=***")
        );
        let report = pool.migrate().unwrap();
        assert_eq!(report.applied, vec![1]);
    }
}

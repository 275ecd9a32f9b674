//! The audit log (R14): every accept, reject, quarantine, status, bounce,
//! purge, dead-letter retry or drop and admin action, append-only and
//! hash-chained in the store's `audit` table, keyed by big-endian sequence number.
//!
//! Invariants:
//! - an entry is `{seq, at, prev, event}` encoded by [`crate::state::codec`], stored
//!   with `hash = sha256(encoded entry)`; `prev` is the previous entry's `hash`
//!   (32 zero bytes for entry 1), so altering, removing or reordering any
//!   entry breaks verification at that entry;
//! - sequence numbers are contiguous; writes are serialised by one lock per
//!   log, and logs sharing a store (instances on one PostgreSQL database)
//!   write a batch only under sequence numbers nobody took, all or none
//!   ([`crate::state::store::Table::insert_all_new`]), else chain it again
//!   after the newest entry;
//! - appends are batched at group commit: [`Audit::record`] (the pipeline's
//!   call) stages the event and its time in memory, and the store runs the
//!   log's [`CommitHook`] before every commit, which writes every staged
//!   event in order: one statement per batch, and the stored head moved
//!   forward ([`crate::state::store::Table::raise`]) by the commit's own
//!   write, not three statements per entry.
//!   An event recorded before [`Store::durable`] is awaited is written by the
//!   commit that resolves it. [`Audit::append`] writes at once (the staged
//!   events first), and every read (`tail`, `verify`, `len`, `sweep`) writes
//!   the staged events first, so this process reads all it recorded;
//! - writing never flushes: entries become durable with the group commit
//!   ([`Store::durable`], [`Store::flush`]) or sled's periodic flush, so
//!   auditing adds no fsync per envelope;
//! - the retention sweep removes the oldest entries only after recording
//!   their last `(seq, hash)` as the *anchor* in `meta`, so the chain still
//!   verifies from the first kept entry; `meta` also keeps the head
//!   `(seq, hash)` so truncation of the newest entries is detected;
//! - an audit failure is logged and counted but never stops routing, and
//!   loses nothing: a batch the store cannot write fails the commit (so
//!   nothing waiting on it is acked) and stays staged, written (in order,
//!   before any later event) once the store can write; an entry written but
//!   not yet covered by a flush is kept too, and written again if the store
//!   is reopened after a write failure without it (same `at`, so same hash);
//! - unauthenticated input costs a bounded amount of audit space: it is not
//!   recorded one entry per message but tallied by [`QuarantineTally`] into
//!   one `quarantine-summary` entry per (minute, reason) with the count and
//!   up to [`QUARANTINE_SAMPLES`] escaped, cut samples, written when the
//!   minute is over (at the next message or housekeeping tick) and at
//!   shutdown.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::text::escaped_max;
use crate::core::time::{format_rfc3339, now_ms};
use crate::state::codec;
use crate::state::keys::{Fields, Key};
use crate::state::store::{CommitHook, Store, StoreError};

const ANCHOR_KEY: &[u8] = b"audit_anchor";
const HEAD_KEY: &[u8] = crate::state::integrity::AUDIT_HEAD_KEY;
const ZERO: [u8; 32] = [0; 32];

/// Audit errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuditError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
        }
    }
}

impl From<sled::Error> for AuditError {
    fn from(e: sled::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<codec::CodecError> for AuditError {
    fn from(e: codec::CodecError) -> Self {
        Self::Store(e.into())
    }
}

/// What happened. Codes and ids only: never a body, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditEvent {
    /// An envelope was accepted: delivered to some destinations, bounced for others.
    Accepted {
        /// Source code.
        from: String,
        /// The source's message id.
        message_id: String,
        /// Destinations it was delivered to.
        delivered: Vec<String>,
        /// `code:reason` of destinations bounced at once.
        bounced: Vec<String>,
    },
    /// An authenticated message was refused with a notice.
    Rejected {
        /// Sender code.
        from: String,
        /// Its message id.
        message_id: String,
        /// Reason code.
        reason: String,
        /// Human detail.
        detail: String,
    },
    /// Unauthenticated input went to the rejected queue (one entry per
    /// message; written by earlier versions, now [`Self::QuarantineSummary`]).
    Quarantined {
        /// Routing key it came with.
        routing_key: String,
        /// Its message id, if any.
        message_id: String,
        /// Reason code.
        reason: String,
    },
    /// A destination's status was recorded and relayed.
    Status {
        /// The destination that sent it.
        from: String,
        /// The envelope's source.
        source: String,
        /// The envelope's message id.
        reference: String,
        /// QCVN 102 status code.
        status: String,
    },
    /// An operator purged an envelope from an inbox; the source was told.
    Purged {
        /// The inbox's agency.
        dest: String,
        /// The envelope's source.
        source: String,
        /// Its message id.
        message_id: String,
        /// Reason code in the bounce notice.
        reason: String,
    },
    /// An operator republished a dead letter.
    DeadRetried {
        /// `dead` or `rejected`.
        queue: String,
        /// Source code (as the message claims it).
        source: String,
        /// Message id.
        message_id: String,
        /// Exchange and routing key it went to.
        target: String,
    },
    /// An operator dropped a dead letter.
    DeadDropped {
        /// `dead` or `rejected`.
        queue: String,
        /// Source code (as the message claims it).
        source: String,
        /// Message id.
        message_id: String,
    },
    /// An admin API action that changed something.
    Admin {
        /// The action (`agency-add`, `agency-disable`, `rotate-key`…).
        action: String,
        /// What it applied to.
        target: String,
        /// Detail (never a secret).
        detail: String,
    },
    /// Unauthenticated input that went to the rejected queue in one minute
    /// for one reason: counted, with a few samples.
    QuarantineSummary {
        /// Reason code.
        reason: String,
        /// Start of the minute (RFC 3339).
        minute: String,
        /// Messages quarantined for `reason` in that minute.
        count: u64,
        /// The first few of them, escaped and cut.
        samples: Vec<QuarantineSample>,
    },
    /// `truc serve --accept-loss` started on a store its checkpoint did not
    /// match (or that did not open): what was expected and what was found.
    StoreLossAccepted {
        /// The problem found at start.
        problem: String,
        /// What the checkpoint anchored.
        expected: String,
        /// What the store held.
        found: String,
    },
    /// `truc store restore` loaded a backup into an empty store (and
    /// anchored it in a new epoch, superseding the checkpoints it names).
    StoreRestored {
        /// The backup file restored.
        file: String,
        /// When the backup was taken (RFC 3339).
        backup_created_at: String,
        /// The store generation in the backup.
        backup_generation: u64,
        /// The newest audit entry in the backup (this entry follows it).
        backup_audit_seq: u64,
        /// The checkpoints found before the restore, given up by it.
        superseded: Vec<String>,
    },
    /// What an operator did through the admin API or the console: the
    /// event, and the account that caused it (`@admin-token` for the
    /// configured admin token).
    By {
        /// The account.
        account: String,
        /// What happened.
        event: Box<AuditEvent>,
    },
}

/// One quarantined message as kept in a [`AuditEvent::QuarantineSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineSample {
    /// Its routing key, escaped and cut to [`QUARANTINE_SAMPLE_CHARS`].
    pub routing_key: String,
    /// Its message id (empty if none), escaped and cut.
    pub message_id: String,
}

impl AuditEvent {
    /// The kebab-case kind (`accepted`, `dead-retried`…).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::Rejected { .. } => "rejected",
            Self::Quarantined { .. } => "quarantined",
            Self::Status { .. } => "status",
            Self::Purged { .. } => "purged",
            Self::DeadRetried { .. } => "dead-retried",
            Self::DeadDropped { .. } => "dead-dropped",
            Self::Admin { .. } => "admin",
            Self::QuarantineSummary { .. } => "quarantine-summary",
            Self::StoreLossAccepted { .. } => "store-loss-accepted",
            Self::StoreRestored { .. } => "store-restored",
            Self::By { event, .. } => event.kind(),
        }
    }

    /// This event, as done by `account`.
    pub fn by(self, account: &str) -> Self {
        Self::By {
            account: account.to_owned(),
            event: Box::new(self),
        }
    }

    /// The event itself, without who caused it.
    pub fn inner(&self) -> &AuditEvent {
        match self {
            Self::By { event, .. } => event.inner(),
            other => other,
        }
    }

    /// The account that caused it, if an operator did.
    pub fn account(&self) -> Option<&str> {
        match self {
            Self::By { account, .. } => Some(account),
            _ => None,
        }
    }

    /// An admin action.
    pub fn admin(action: &str, target: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Admin {
            action: action.to_owned(),
            target: target.into(),
            detail: detail.into(),
        }
    }
}

/// One entry as chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Sequence number (1, 2, …).
    pub seq: u64,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Hash of the previous entry.
    pub prev: [u8; 32],
    /// What happened.
    pub event: AuditEvent,
}

/// What sled holds: the encoded entry and its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sealed {
    /// `codec::encode(entry)`.
    pub body: Vec<u8>,
    /// `sha256(body)`.
    pub hash: [u8; 32],
}

/// An entry as shown by `truc audit tail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryView {
    /// Sequence number.
    pub seq: u64,
    /// RFC 3339 time.
    pub at: String,
    /// Kind.
    pub kind: String,
    /// The event's fields.
    pub fields: serde_json::Value,
    /// Hex hash of the entry.
    pub hash: String,
}

/// The first broken link found by [`Audit::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broken {
    /// The entry where verification failed.
    pub seq: u64,
    /// What is wrong.
    pub problem: String,
}

/// Result of [`Audit::verify`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True when the whole chain verifies.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// First kept entry.
    pub first_seq: Option<u64>,
    /// Last entry.
    pub last_seq: Option<u64>,
    /// Sequence number of the last swept entry (the anchor), if any.
    pub anchor_seq: Option<u64>,
    /// The first problem.
    pub broken: Option<Broken>,
    /// The checkpoint outside the store the chain was checked against
    /// (absent when the store is not anchored).
    #[serde(default)]
    pub checkpoint: Option<CheckpointView>,
    /// The `store-restored` entries in the chain (restores from a backup),
    /// oldest first.
    #[serde(default)]
    pub restores: Vec<RestoreView>,
}

/// A `store-restored` entry found by [`Audit::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreView {
    /// The entry.
    pub seq: u64,
    /// When the restore was done (RFC 3339).
    pub at: String,
    /// The backup file.
    pub file: String,
    /// When the backup was taken (RFC 3339).
    pub backup_created_at: String,
}

/// The checkpoint an audit check used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointView {
    /// Where it was read (file path or broker queue).
    pub place: String,
    /// Its serial number.
    pub serial: u64,
    /// The store generation it anchors.
    pub generation: u64,
    /// The audit entry it anchors.
    pub audit_seq: u64,
    /// When it was written (RFC 3339).
    pub at: String,
}

struct Head {
    next_seq: u64,
    last_hash: [u8; 32],
}

/// An appended entry not yet known to be on disk: appended again if the
/// store is reopened without it.
struct Kept {
    seq: u64,
    at_ms: i64,
    event: AuditEvent,
    /// [`Store::flush_mark`] when it was appended.
    mark: u64,
}

/// The most events kept waiting to be written (staged for the next commit,
/// or kept for a retry while the store cannot write); more are counted as
/// audit failures (the hub acks nothing while the store cannot write, so
/// only admin actions and refusals made before the failure could add to it).
const BACKLOG_MAX: usize = 1_000_000;

/// The most entries written by one statement; a longer backlog is written
/// in several, in order.
const BATCH_MAX: usize = 1_000;

/// The writer's state, under one lock (appends are serialised).
#[derive(Default)]
struct Log {
    head: Option<Head>,
    /// The store generation `head` was read in.
    generation: u64,
    /// Appended, not yet flushed (oldest first).
    unflushed: VecDeque<Kept>,
    /// Recorded, not written yet, with their time: written in order, before
    /// any later one, at the next commit (or before an append or a read). A
    /// store failure leaves them here until it can write.
    staged: VecDeque<(AuditEvent, i64)>,
    /// How many of the oldest staged events were already counted as audit
    /// failures (each is counted once, however often writing it fails).
    counted: usize,
    /// The newest entry written whose `(seq, hash)` the stored head in
    /// `meta` may not hold yet (moving it failed): moved at the next write.
    head_behind: Option<SeqHash>,
}

/// The writer: the log's state and the store it writes to. The store holds
/// it as a weak [`CommitHook`], so each commit writes what is staged.
struct Writer {
    store: Store,
    log: Mutex<Log>,
}

/// The audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    writer: Arc<Writer>,
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// An audit entry's sequence number and hash.
type SeqHash = (u64, [u8; 32]);

fn seq_hash(v: &[u8]) -> Option<SeqHash> {
    if v.len() != 40 {
        return None;
    }
    let seq = u64::from_be_bytes(v[..8].try_into().ok()?);
    let hash: [u8; 32] = v[8..].try_into().ok()?;
    Some((seq, hash))
}

fn pack(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(hash);
    v
}

/// Key of an entry: its sequence number (u64 BE).
fn seq_key(seq: u64) -> Vec<u8> {
    Key::new().u64(seq).into_bytes()
}

fn key_seq(k: &[u8]) -> u64 {
    let mut f = Fields::of(k);
    match f.u64() {
        Some(seq) if f.is_empty() => seq,
        _ => 0,
    }
}

/// The retention anchor (the last entry removed) and the stored head,
/// each as `(seq, hash)`.
fn anchor_and_head(store: &Store) -> Result<(Option<SeqHash>, Option<SeqHash>), AuditError> {
    let meta = store.meta();
    let read = |key| -> Result<Option<SeqHash>, AuditError> {
        Ok(meta.get(key)?.and_then(|v| seq_hash(&v)))
    };
    Ok((read(ANCHOR_KEY)?, read(HEAD_KEY)?))
}

/// The newest entry in the store (or the anchor, or the stored head).
fn load_head(store: &Store) -> Result<Head, AuditError> {
    if let Some((k, v)) = store.audit().last()? {
        // The hash of the stored bytes even if they do not decode:
        // the chain goes on, and verify reports the bad entry.
        let hash = codec::decode::<Sealed>(&v)
            .map(|s| s.hash)
            .unwrap_or_else(|_| sha(&v));
        return Ok(Head {
            next_seq: key_seq(&k) + 1,
            last_hash: hash,
        });
    }
    let (anchor, head) = anchor_and_head(store)?;
    let (seq, hash) = match (anchor, head) {
        (Some(a), Some(h)) if h.0 > a.0 => h,
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => (0, ZERO),
    };
    Ok(Head {
        next_seq: seq + 1,
        last_hash: hash,
    })
}

impl Writer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a reopen, entries appended but lost with it go back to the
    /// front of the staged events; entries covered by a flush started after
    /// them are forgotten.
    fn refresh_locked(&self, log: &mut Log) -> Result<(), AuditError> {
        let generation = self.store.reopens();
        if log.generation != generation {
            // Reopened: what was appended and not flushed may be gone.
            let head = load_head(&self.store)?;
            let on_disk = head.next_seq - 1;
            log.head = Some(head);
            log.generation = generation;
            let lost: Vec<Kept> = log
                .unflushed
                .drain(..)
                .filter(|k| k.seq > on_disk)
                .collect();
            if !lost.is_empty() {
                tracing::warn!(
                    entries = lost.len(),
                    from_seq = on_disk + 1,
                    "audit entries lost by the store reopen are written again"
                );
            }
            // Ahead of the staged ones (not counted as failures: they were written).
            log.counted += lost.len();
            for k in lost.into_iter().rev() {
                log.staged.push_front((k.event, k.at_ms));
            }
            // A head past what is on disk is set again by the rewrite.
            log.head_behind = log.head_behind.filter(|h| h.0 <= on_disk);
        }
        // Entries covered by a flush started after them are on disk.
        let flushed = self.store.flushed_through();
        while log.unflushed.front().is_some_and(|k| k.mark < flushed) {
            log.unflushed.pop_front();
        }
        Ok(())
    }

    /// Writes every staged event, in order, a batch per statement, then
    /// moves the stored head forward once. True when it wrote anything. On
    /// an error what was not written stays staged.
    fn write_locked(&self, log: &mut Log) -> Result<bool, AuditError> {
        self.refresh_locked(log)?;
        let mut wrote = false;
        while !log.staged.is_empty() {
            self.write_batch_locked(log)?;
            wrote = true;
        }
        if let Some((seq, hash)) = log.head_behind {
            // The head only moves forward, whichever writer gets there last.
            self.store.meta().raise(HEAD_KEY, pack(seq, &hash))?;
            log.head_behind = None;
            wrote = true;
        }
        Ok(wrote)
    }

    /// Writes the oldest staged events (up to [`BATCH_MAX`]) with one
    /// statement, chained after the newest entry.
    fn write_batch_locked(&self, log: &mut Log) -> Result<(), AuditError> {
        let n = log.staged.len().min(BATCH_MAX);
        let mut head = match log.head.take() {
            Some(head) => head,
            None => {
                let head = load_head(&self.store)?;
                log.generation = self.store.reopens();
                head
            }
        };
        // Instances sharing a store append to one chain: the batch takes its
        // sequence numbers only if no other writer took any of them first,
        // and otherwise is chained again after the newest entry.
        loop {
            let (mut seq, mut prev) = (head.next_seq, head.last_hash);
            let mut rows = Vec::with_capacity(n);
            let chained = log.staged.iter().take(n).try_for_each(|(event, at_ms)| {
                let entry = Entry {
                    seq,
                    at_ms: *at_ms,
                    prev,
                    event: event.clone(),
                };
                let body = codec::encode(&entry)?;
                let hash = sha(&body);
                rows.push((seq_key(seq), codec::encode(&Sealed { body, hash })?));
                (seq, prev) = (seq + 1, hash);
                Ok::<(), AuditError>(())
            });
            if let Err(e) = chained {
                log.head = Some(head);
                return Err(e);
            }
            let mark = self.store.flush_mark();
            let inserted = match self.store.audit().insert_all_new(&rows) {
                Ok(inserted) => inserted,
                Err(e) => {
                    log.head = Some(head);
                    return Err(e.into());
                }
            };
            if !inserted {
                // The same batch may be there already: an earlier try whose
                // answer was lost with its connection had landed. Its last
                // entry, byte for byte (same times, same chain), says so.
                let landed = match rows.last() {
                    Some((k, v)) => match self.store.audit().get(k) {
                        Ok(found) => found.as_deref() == Some(v.as_slice()),
                        Err(e) => {
                            log.head = Some(head);
                            return Err(e.into());
                        }
                    },
                    None => false,
                };
                if !landed {
                    head = load_head(&self.store)?;
                    continue;
                }
            }
            let first = head.next_seq;
            log.head = Some(Head {
                next_seq: seq,
                last_hash: prev,
            });
            log.head_behind = Some((seq - 1, prev));
            log.counted = log.counted.saturating_sub(n);
            for (i, (event, at_ms)) in log.staged.drain(..n).enumerate() {
                log.unflushed.push_back(Kept {
                    seq: first + i as u64,
                    at_ms,
                    event,
                    mark,
                });
            }
            return Ok(());
        }
    }

    /// Writes what is staged before a read, so a reader in this process sees
    /// every recorded event; a failure (the store cannot write) is logged and
    /// the read goes on with what is stored.
    fn write_for_read(&self) {
        let mut log = self.lock();
        match self.write_locked(&mut log) {
            Ok(true) => self.store.nudge(),
            Ok(false) => {}
            Err(e) => {
                failed(&mut log);
                tracing::debug!(error = %e, waiting = log.staged.len(), "staged audit entries not written before a read");
            }
        }
    }
}

/// Writing the staged events failed: the ones not counted yet are counted
/// as audit failures, and the backlog gauge set.
fn failed(log: &mut Log) {
    let waiting = log.staged.len();
    if waiting > log.counted {
        crate::core::metrics::audit_failures(waiting - log.counted);
    }
    log.counted = waiting;
    crate::core::metrics::audit_backlog(waiting);
}

impl CommitHook for Writer {
    /// The group commit's batch: every staged event, written before the
    /// store commits, so the commit covers them.
    fn before_commit(&self) -> Result<bool, StoreError> {
        let mut log = self.lock();
        let res = self.write_locked(&mut log);
        crate::core::metrics::audit_backlog(log.staged.len());
        res.map_err(|e| {
            failed(&mut log);
            tracing::debug!(error = %e, waiting = log.staged.len(), "audit entries kept until the store can write");
            match e {
                AuditError::Store(e) => e,
            }
        })
    }
}

impl Drop for Writer {
    /// The last handle is gone: what is staged is written now (not flushed:
    /// the store's next flush covers it), or lost with a logged error.
    fn drop(&mut self) {
        let mut log = std::mem::take(self.log.get_mut().unwrap_or_else(|p| p.into_inner()));
        if log.staged.is_empty() && log.head_behind.is_none() {
            return;
        }
        if let Err(e) = self.write_locked(&mut log) {
            crate::core::metrics::audit_failures(log.staged.len().saturating_sub(log.counted));
            tracing::error!(error = %e, lost = log.staged.len(), "audit entries not written: the log was dropped while the store could not write");
        }
    }
}

impl Audit {
    /// Over `store` (the `audit` tree and the anchor/head in `meta`); the
    /// store writes what [`Audit::record`] stages before each commit.
    pub fn new(store: Store) -> Self {
        let writer = Arc::new(Writer {
            store: store.clone(),
            log: Mutex::new(Log::default()),
        });
        let hook: Weak<dyn CommitHook> = Arc::downgrade(&writer) as Weak<dyn CommitHook>;
        store.add_commit_hook(hook);
        Self { store, writer }
    }

    /// Appends `event` now; returns its sequence number.
    pub fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.append_at(event, now_ms())
    }

    /// Appends `event` with time `at_ms` (tests backdate entries), at once:
    /// the staged events are written first, in the same batch. On an error
    /// `event` is not kept (the caller decides); the staged ones are.
    pub fn append_at(&self, event: AuditEvent, at_ms: i64) -> Result<u64, AuditError> {
        let mut log = self.writer.lock();
        self.writer.refresh_locked(&mut log)?;
        log.staged.push_back((event, at_ms));
        let res = self.writer.write_locked(&mut log);
        if !log.staged.is_empty() {
            // Not written: `event` is the newest staged (a reopen puts lost
            // entries at the front).
            log.staged.pop_back();
            log.counted = log.counted.min(log.staged.len());
            res?;
        } else if let Err(e) = res {
            // Written; only the stored head lags, moved at the next write.
            tracing::warn!(error = %e, "audit head not moved forward yet");
        }
        // On disk within a flush, not at sled's next periodic one.
        self.store.nudge();
        let seq = log.head.as_ref().map_or(0, |h| h.next_seq - 1);
        Ok(seq)
    }

    /// Writes what is staged now (what [`Audit::record`] staged, and what a
    /// store failure kept from being written or lost with a reopen).
    /// Returns how many entries wait still.
    pub fn catch_up(&self) -> Result<usize, AuditError> {
        let mut log = self.writer.lock();
        let res = self.writer.write_locked(&mut log);
        match res {
            Ok(wrote) => {
                crate::core::metrics::audit_backlog(log.staged.len());
                if wrote {
                    self.store.nudge();
                }
            }
            Err(_) => failed(&mut log),
        }
        res.map(|_| log.staged.len())
    }

    /// Records `event` with the time now: staged in memory and written, in
    /// order, with the store's next commit (a few statements per batch). It
    /// never fails (the router must go on): a store failure keeps it staged
    /// until the store can write. Use this from the pipeline; a caller that
    /// acks something awaits [`Store::durable`] after it.
    pub fn record(&self, event: AuditEvent) {
        let at_ms = now_ms();
        {
            let mut log = self.writer.lock();
            if log.staged.len() < BACKLOG_MAX {
                log.staged.push_back((event, at_ms));
            } else {
                crate::core::metrics::audit_failure();
                tracing::error!("audit entry not written: the retry backlog is full");
            }
        }
        // Written with a flush soon, not at sled's next periodic one.
        self.store.nudge();
    }

    /// Entries after `after` (oldest first, up to `n`), or the last `n`.
    pub fn tail(&self, n: usize, after: Option<u64>) -> Result<Vec<EntryView>, AuditError> {
        self.writer.write_for_read();
        let mut raw = Vec::new();
        match after {
            Some(a) => {
                for item in self.store.audit().range(seq_key(a + 1)..).take(n) {
                    raw.push(item?);
                }
            }
            None => {
                for item in self.store.audit().iter().rev().take(n) {
                    raw.push(item?);
                }
                raw.reverse();
            }
        }
        Ok(raw
            .into_iter()
            .map(|(k, v)| view(key_seq(&k), &v))
            .collect())
    }

    /// Checks the whole chain; reports the first broken entry.
    pub fn verify(&self) -> Result<VerifyReport, AuditError> {
        self.writer.write_for_read();
        let (anchor, head) = anchor_and_head(&self.store)?;
        let mut expect = anchor.unwrap_or((0, ZERO));
        let mut report = VerifyReport {
            ok: true,
            entries: 0,
            first_seq: None,
            last_seq: None,
            anchor_seq: anchor.map(|a| a.0),
            broken: None,
            checkpoint: None,
            restores: Vec::new(),
        };
        let fail = |report: &mut VerifyReport, seq: u64, problem: String| {
            report.ok = false;
            report.broken = Some(Broken { seq, problem });
        };
        for item in self.store.audit().iter() {
            let (k, v) = item?;
            let seq = key_seq(&k);
            report.entries += 1;
            report.last_seq = Some(seq);
            let Ok(sealed) = codec::decode::<Sealed>(&v) else {
                fail(&mut report, seq, "entry does not decode".into());
                return Ok(report);
            };
            if sha(&sealed.body) != sealed.hash {
                fail(
                    &mut report,
                    seq,
                    "entry content does not match its hash (altered)".into(),
                );
                return Ok(report);
            }
            let Ok(entry) = codec::decode::<Entry>(&sealed.body) else {
                fail(&mut report, seq, "entry body does not decode".into());
                return Ok(report);
            };
            if entry.seq != seq {
                fail(
                    &mut report,
                    seq,
                    format!("entry stored under {seq} says it is {}", entry.seq),
                );
                return Ok(report);
            }
            if report.first_seq.is_none() {
                report.first_seq = Some(seq);
                if anchor.is_some_and(|a| seq <= a.0) {
                    // Left over by an interrupted sweep: start the chain here.
                    expect = (seq - 1, entry.prev);
                }
            }
            if seq != expect.0 + 1 {
                fail(
                    &mut report,
                    seq,
                    format!("entries {} to {} are missing", expect.0 + 1, seq - 1),
                );
                return Ok(report);
            }
            if entry.prev != expect.1 {
                let what = if expect.0 == 0 {
                    "the chain's start".to_owned()
                } else if anchor.is_some_and(|a| a.0 == expect.0) {
                    format!("the anchor of swept entry {}", expect.0)
                } else {
                    format!("entry {}", expect.0)
                };
                fail(
                    &mut report,
                    seq,
                    format!("link broken: entry does not hold the hash of {what}"),
                );
                return Ok(report);
            }
            if let Some(a) = anchor.filter(|a| a.0 == seq && a.1 != sealed.hash) {
                fail(
                    &mut report,
                    a.0,
                    "entry does not match the recorded anchor".into(),
                );
                return Ok(report);
            }
            if let AuditEvent::StoreRestored {
                file,
                backup_created_at,
                ..
            } = entry.event.inner()
            {
                report.restores.push(RestoreView {
                    seq,
                    at: format_rfc3339(entry.at_ms),
                    file: file.clone(),
                    backup_created_at: backup_created_at.clone(),
                });
            }
            expect = (seq, sealed.hash);
        }
        if let Some(h) = head.filter(|h| h.0 > expect.0) {
            fail(
                &mut report,
                expect.0 + 1,
                format!(
                    "entries {} to {} are missing (the log was truncated)",
                    expect.0 + 1,
                    h.0
                ),
            );
        }
        Ok(report)
    }

    /// Removes up to `batch` of the oldest entries written before `cutoff_ms`,
    /// recording the anchor first; returns how many were removed.
    pub fn sweep(&self, cutoff_ms: i64, batch: usize) -> Result<usize, AuditError> {
        self.writer.write_for_read();
        let mut doomed: Vec<(Vec<u8>, [u8; 32], u64)> = Vec::new();
        for item in self.store.audit().iter().take(batch) {
            let (k, v) = item?;
            let Ok(sealed) = codec::decode::<Sealed>(&v) else {
                tracing::warn!(
                    seq = key_seq(&k),
                    "undecodable audit entry kept for inspection; sweep stops"
                );
                break;
            };
            let Ok(entry) = codec::decode::<Entry>(&sealed.body) else {
                tracing::warn!(
                    seq = key_seq(&k),
                    "undecodable audit entry kept for inspection; sweep stops"
                );
                break;
            };
            if entry.at_ms >= cutoff_ms {
                break;
            }
            doomed.push((k, sealed.hash, entry.seq));
        }
        // Never sweep the newest entry: it carries the chain on.
        if let Some(last) = self.store.audit().last()? {
            doomed.retain(|(k, _, _)| *k != last.0);
        }
        let Some((_, hash, seq)) = doomed.last() else {
            return Ok(0);
        };
        self.store.meta().insert(ANCHOR_KEY, pack(*seq, hash))?;
        for (k, _, _) in &doomed {
            self.store.audit().remove(k)?;
        }
        Ok(doomed.len())
    }

    /// Number of entries kept.
    pub fn len(&self) -> Result<usize, AuditError> {
        self.writer.write_for_read();
        Ok(self.store.audit().len()?)
    }

    /// True when no entry is kept.
    pub fn is_empty(&self) -> Result<bool, AuditError> {
        self.writer.write_for_read();
        Ok(self.store.audit().is_empty()?)
    }
}

fn view(seq: u64, v: &[u8]) -> EntryView {
    let bad = |why: &str| EntryView {
        seq,
        at: String::new(),
        kind: "undecodable".into(),
        fields: serde_json::json!({ "problem": why }),
        hash: hex::encode(sha(v)),
    };
    let Ok(sealed) = codec::decode::<Sealed>(v) else {
        return bad("entry does not decode");
    };
    let Ok(entry) = codec::decode::<Entry>(&sealed.body) else {
        return bad("entry body does not decode");
    };
    let (event, account) = (entry.event.inner(), entry.event.account());
    let mut fields = match serde_json::to_value(event) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.remove(event.kind()).unwrap_or(serde_json::Value::Null)
        }
        _ => serde_json::Value::Null,
    };
    if let (Some(a), serde_json::Value::Object(m)) = (account, &mut fields) {
        m.insert("account".into(), serde_json::Value::String(a.to_owned()));
    }
    EntryView {
        seq,
        at: format_rfc3339(entry.at_ms),
        kind: entry.event.kind().to_owned(),
        fields,
        hash: hex::encode(sealed.hash),
    }
}

/// Samples kept per (minute, reason) of unauthenticated input.
pub const QUARANTINE_SAMPLES: usize = 3;
/// Characters kept of a sample's routing key or message id.
pub const QUARANTINE_SAMPLE_CHARS: usize = 64;
const MINUTE_MS: i64 = 60_000;

#[derive(Default)]
struct Bucket {
    count: u64,
    samples: Vec<QuarantineSample>,
}

#[derive(Default)]
struct Window {
    /// The open minute (ms since the epoch / 60 000).
    minute: Option<i64>,
    by_reason: BTreeMap<String, Bucket>,
}

impl Window {
    /// The open minute's summaries, leaving the window empty.
    fn take(&mut self) -> Vec<AuditEvent> {
        let Some(minute) = self.minute.take() else {
            return Vec::new();
        };
        let start = format_rfc3339(minute * MINUTE_MS);
        std::mem::take(&mut self.by_reason)
            .into_iter()
            .map(|(reason, b)| AuditEvent::QuarantineSummary {
                reason,
                minute: start.clone(),
                count: b.count,
                samples: b.samples,
            })
            .collect()
    }
}

/// Tallies unauthenticated input per (minute, reason) and writes one
/// [`AuditEvent::QuarantineSummary`] for each when the minute is over.
/// Memory is bounded: one bucket per reason code, a few short samples each.
pub struct QuarantineTally {
    audit: Audit,
    window: Mutex<Window>,
}

impl QuarantineTally {
    /// Writing into `audit`.
    pub fn new(audit: Audit) -> Self {
        Self {
            audit,
            window: Mutex::new(Window::default()),
        }
    }

    /// Counts one quarantined message at `at_ms`. If the open minute is over,
    /// it is written first. A time before the open minute (the clock went
    /// back) counts in the open minute.
    pub fn note(&self, at_ms: i64, reason: &str, routing_key: &str, message_id: &str) {
        let minute = at_ms.div_euclid(MINUTE_MS);
        let done = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let done = match w.minute {
                Some(open) if minute > open => w.take(),
                _ => Vec::new(),
            };
            if w.minute.is_none() {
                w.minute = Some(minute);
            }
            let b = w.by_reason.entry(reason.to_owned()).or_default();
            b.count += 1;
            if b.samples.len() < QUARANTINE_SAMPLES {
                b.samples.push(QuarantineSample {
                    routing_key: escaped_max(routing_key, QUARANTINE_SAMPLE_CHARS),
                    message_id: escaped_max(message_id, QUARANTINE_SAMPLE_CHARS),
                });
            }
            done
        };
        self.write(done, at_ms);
    }

    /// Writes the open minute if `now_ms` is past it (housekeeping); returns
    /// how many summaries were written.
    pub fn roll(&self, now_ms: i64) -> usize {
        let done = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            match w.minute {
                Some(open) if now_ms.div_euclid(MINUTE_MS) > open => w.take(),
                _ => Vec::new(),
            }
        };
        self.write(done, now_ms)
    }

    /// Writes the open minute, over or not (shutdown); returns how many
    /// summaries were written.
    pub fn flush(&self, now_ms: i64) -> usize {
        let done = self.window.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.write(done, now_ms)
    }

    fn write(&self, events: Vec<AuditEvent>, at_ms: i64) -> usize {
        let n = events.len();
        for e in events {
            if let Err(err) = self.audit.append_at(e, at_ms) {
                crate::core::metrics::audit_failure();
                tracing::error!(error = %err, "quarantine summary not written");
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u32) -> AuditEvent {
        AuditEvent::admin("test", format!("T{i}"), format!("detail {i}"))
    }

    #[test]
    fn writers_sharing_a_store_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Two instances' logs over one store, each with its own cached head.
        let (a, b) = (Audit::new(store.clone()), Audit::new(store.clone()));
        let mut seqs = Vec::new();
        for i in 0..10 {
            seqs.push(a.append(ev(i)).unwrap());
            seqs.push(b.append(ev(100 + i)).unwrap());
            seqs.push(b.append(ev(200 + i)).unwrap());
        }
        assert_eq!(seqs, (1..=30).collect::<Vec<u64>>());
        let r = a.verify().unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!((r.entries, r.last_seq), (30, Some(30)));
        // The stored head is the newest entry, whoever wrote last.
        let head = seq_hash(&store.meta().get(HEAD_KEY).unwrap().unwrap()).unwrap();
        assert_eq!(head.0, 30);
    }

    #[test]
    fn an_operators_event_names_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::new(Store::open(dir.path()).unwrap());
        audit
            .append(AuditEvent::admin("agency-disable", "000.00.31.H37", "").by("lan"))
            .unwrap();
        audit.append(ev(1)).unwrap();
        let tail = audit.tail(2, None).unwrap();
        assert_eq!(tail[0].kind, "admin");
        assert_eq!(tail[0].fields["action"], "agency-disable");
        assert_eq!(tail[0].fields["account"], "lan");
        assert!(tail[1].fields.get("account").is_none());
        assert!(audit.verify().unwrap().ok);
    }

    #[test]
    fn chain_verifies_and_detects_an_altered_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::new(store.clone());
        for i in 0..10 {
            assert_eq!(audit.append(ev(i)).unwrap(), u64::from(i) + 1);
        }
        let r = audit.verify().unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(
            (r.entries, r.first_seq, r.last_seq),
            (10, Some(1), Some(10))
        );
        let tail = audit.tail(3, None).unwrap();
        assert_eq!(
            tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(tail[0].kind, "admin");
        assert_eq!(tail[0].fields["target"], "T7");
        assert_eq!(audit.tail(2, Some(4)).unwrap()[0].seq, 5);

        // Alter entry 4's content in place (same length).
        let k = 4u64.to_be_bytes();
        let mut raw = store.audit().get(k).unwrap().unwrap().to_vec();
        let pos = raw.windows(8).position(|w| w == b"detail 3").unwrap();
        raw[pos + 7] = b'X';
        store.audit().insert(k, raw).unwrap();
        let r = audit.verify().unwrap();
        assert!(!r.ok);
        assert_eq!(r.broken.as_ref().unwrap().seq, 4, "{r:?}");

        // Recompute its hash too: then entry 5's link breaks.
        let mut sealed: Sealed = codec::decode(&store.audit().get(k).unwrap().unwrap()).unwrap();
        sealed.hash = sha(&sealed.body);
        store
            .audit()
            .insert(k, codec::encode(&sealed).unwrap())
            .unwrap();
        let r = audit.verify().unwrap();
        assert_eq!(r.broken.unwrap().seq, 5);
    }

    #[test]
    fn removed_and_truncated_entries_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::new(store.clone());
        for i in 0..6 {
            audit.append(ev(i)).unwrap();
        }
        store.audit().remove(3u64.to_be_bytes()).unwrap();
        let r = audit.verify().unwrap();
        assert_eq!(r.broken.unwrap().seq, 4);
        let dir2 = tempfile::tempdir().unwrap();
        let store2 = Store::open(dir2.path()).unwrap();
        let audit2 = Audit::new(store2.clone());
        for i in 0..6 {
            audit2.append(ev(i)).unwrap();
        }
        store2.audit().remove(6u64.to_be_bytes()).unwrap();
        let r = audit2.verify().unwrap();
        assert_eq!(r.broken.unwrap().seq, 6, "truncation seen through the head");
    }

    #[test]
    fn sweep_keeps_an_anchor_and_the_chain_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::new(store.clone());
        for i in 0..20 {
            audit.append_at(ev(i), 1_000 + i64::from(i)).unwrap();
        }
        assert_eq!(audit.sweep(1_012, 5).unwrap(), 5);
        assert_eq!(audit.sweep(1_012, 100).unwrap(), 7);
        assert_eq!(audit.sweep(1_012, 100).unwrap(), 0);
        let r = audit.verify().unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!((r.first_seq, r.anchor_seq), (Some(13), Some(12)));
        // Everything old: the newest entry stays to carry the chain.
        assert_eq!(audit.sweep(i64::MAX, 100).unwrap(), 7);
        assert_eq!(audit.len().unwrap(), 1);
        drop(audit);
        // A new process continues the chain after the anchor.
        let audit = Audit::new(store.clone());
        assert_eq!(audit.append(ev(99)).unwrap(), 21);
        assert!(audit.verify().unwrap().ok);
        // The first kept entry altered: reported against the anchor.
        let k = 20u64.to_be_bytes();
        let mut sealed: Sealed = codec::decode(&store.audit().get(k).unwrap().unwrap()).unwrap();
        let mut e: Entry = codec::decode(&sealed.body).unwrap();
        e.prev = [9; 32];
        sealed.body = codec::encode(&e).unwrap();
        sealed.hash = sha(&sealed.body);
        store
            .audit()
            .insert(k, codec::encode(&sealed).unwrap())
            .unwrap();
        let r = audit.verify().unwrap();
        assert_eq!(r.broken.unwrap().seq, 20);
    }

    fn targets(audit: &Audit) -> Vec<String> {
        audit
            .tail(100_000, None)
            .unwrap()
            .into_iter()
            .map(|e| e.fields["target"].as_str().unwrap().to_owned())
            .collect()
    }

    fn stored_head(store: &Store) -> u64 {
        seq_hash(&store.meta().get(HEAD_KEY).unwrap().unwrap())
            .unwrap()
            .0
    }

    #[test]
    fn a_batch_that_landed_unanswered_is_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::new(store.clone());
        audit.record(ev(0));
        audit.record(ev(1));
        let staged: Vec<(AuditEvent, i64)> = {
            let log = audit.writer.log.lock().unwrap();
            log.staged.iter().cloned().collect()
        };
        store.flush().unwrap();
        assert_eq!(store.audit().len().unwrap(), 2);
        // As if the answer to that write was lost with its connection: the
        // same events staged again, the cached head where it was.
        {
            let mut log = audit.writer.log.lock().unwrap();
            log.staged.extend(staged);
            log.head = Some(Head {
                next_seq: 1,
                last_hash: ZERO,
            });
            log.unflushed.clear();
        }
        store.flush().unwrap();
        assert_eq!(store.audit().len().unwrap(), 2, "written once");
        let r = audit.verify().unwrap();
        assert!(r.ok, "{r:?}");
        // What comes next is chained after them.
        assert_eq!(audit.append(ev(2)).unwrap(), 3);
    }

    #[test]
    fn recorded_events_are_written_by_a_flush_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::new(store.clone());
        for i in 0..5 {
            audit.record(ev(i));
        }
        assert_eq!(store.audit().len().unwrap(), 0, "staged, not written yet");
        store.flush().unwrap();
        assert_eq!(store.audit().len().unwrap(), 5);
        assert_eq!(stored_head(&store), 5);
        // An append writes what is staged first, then its own entry.
        audit.record(ev(5));
        audit.record(ev(6));
        assert_eq!(audit.append(ev(7)).unwrap(), 8);
        // A read writes what is staged first.
        audit.record(ev(8));
        let want: Vec<String> = (0..9).map(|i| format!("T{i}")).collect();
        assert_eq!(targets(&audit), want);
        let r = audit.verify().unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!((r.entries, r.last_seq), (9, Some(9)));
        assert_eq!(stored_head(&store), 9);

        // The flusher's group commit writes what was recorded before
        // `durable` was awaited.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let flusher = store.start_flusher();
            audit.record(ev(9));
            store.durable().await.unwrap();
            assert_eq!(store.audit().len().unwrap(), 10);
            flusher.abort();
        });

        // A log dropped is forgotten by the store, and what it staged is
        // written first.
        let other = Audit::new(store.clone());
        other.record(ev(10));
        drop(other);
        assert_eq!(store.audit().len().unwrap(), 11);
        store.flush().unwrap();
        // The first log's cached head is behind: it chains after entry 11.
        assert_eq!(audit.append(ev(11)).unwrap(), 12);
        let r = audit.verify().unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.last_seq, Some(12));
        assert_eq!(stored_head(&store), 12);
    }

    #[test]
    fn two_instances_on_postgres_recording_concurrently_keep_one_chain() {
        let db = crate::state::pg::testdb::TestDb::new();
        let stores = [
            Store::open_postgres(db.url(), 4).unwrap(),
            Store::open_postgres(db.url(), 4).unwrap(),
        ];
        let audits = [Audit::new(stores[0].clone()), Audit::new(stores[1].clone())];
        const THREADS: u32 = 4;
        const EACH: u32 = 60;
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (store, audit) = (&stores[t as usize % 2], &audits[t as usize % 2]);
                scope.spawn(move || {
                    for i in 0..EACH {
                        audit.record(ev(t * 1000 + i));
                        // Commits at different moments on each instance.
                        if i % (5 + t) == 4 {
                            store.flush().unwrap();
                        }
                    }
                });
            }
        });
        for s in &stores {
            s.flush().unwrap();
        }
        let total = u64::from(THREADS * EACH);
        let r = audits[0].verify().unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!((r.entries, r.last_seq), (total, Some(total)));
        assert_eq!(stored_head(&stores[1]), total);
        // Every event once, each writer's in the order it recorded them.
        let got = targets(&audits[1]);
        let mut sorted = got.clone();
        sorted.sort();
        let mut want: Vec<String> = (0..THREADS)
            .flat_map(|t| (0..EACH).map(move |i| format!("T{}", t * 1000 + i)))
            .collect();
        want.sort();
        assert_eq!(sorted, want);
        for t in 0..THREADS {
            let mine: Vec<u32> = got
                .iter()
                .filter_map(|s| s[1..].parse::<u32>().ok())
                .filter(|n| n / 1000 == t)
                .collect();
            assert_eq!(mine, (0..EACH).map(|i| t * 1000 + i).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_store_error_during_the_hook_keeps_the_events() {
        let db = crate::state::pg::testdb::TestDb::new();
        let store = Store::open_postgres(db.url(), 2).unwrap();
        let audit = Audit::new(store.clone());
        assert_eq!(audit.append(ev(0)).unwrap(), 1);
        let mut admin = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
        admin
            .batch_execute("ALTER TABLE truc_audit ADD CONSTRAINT refuse CHECK (false) NOT VALID")
            .unwrap();
        for i in 1..4 {
            audit.record(ev(i));
        }
        let err = store.flush().unwrap_err();
        assert!(err.to_string().contains("refuse"), "{err}");
        // An append fails too and is not kept (its caller decides); the
        // recorded events wait, and later ones go after them.
        assert!(audit.append(ev(99)).is_err());
        audit.record(ev(4));
        assert!(store.flush().is_err());
        // Reads go on with what is stored.
        assert_eq!(targets(&audit), vec!["T0".to_owned()]);

        // The flusher fails too and does not release a `durable` waiter
        // until the store can write.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (flusher, waiter) = rt.block_on(async {
            let flusher = store.start_flusher();
            let s = store.clone();
            let waiter = tokio::spawn(async move { s.durable().await });
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            assert!(!waiter.is_finished(), "released while the hook fails");
            (flusher, waiter)
        });
        assert!(store.fault().is_some());
        admin
            .batch_execute("ALTER TABLE truc_audit DROP CONSTRAINT refuse")
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
                .await
                .expect("released once the store can write")
                .unwrap()
                .unwrap();
            flusher.abort();
        });
        let want: Vec<String> = (0..5).map(|i| format!("T{i}")).collect();
        assert_eq!(targets(&audit), want);
        let r = audit.verify().unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.last_seq, Some(5));
        assert_eq!(stored_head(&store), 5);
    }

    fn summaries(audit: &Audit) -> Vec<EntryView> {
        audit
            .tail(1000, None)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "quarantine-summary")
            .collect()
    }

    #[test]
    fn quarantined_input_is_one_entry_per_minute_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::new(store);
        let tally = QuarantineTally::new(audit.clone());
        let t0 = 1_780_000_040_000; // 20 s into a minute
        let forged = format!("envelope.H41\nINFO truc::admin: x{}", "y".repeat(100));
        for i in 0..10 {
            tally.note(t0 + i * 1000, "bad-signature", &forged, &format!("M{i}"));
        }
        tally.note(t0 + 5000, "unknown-key", "envelope.H41", "");
        assert_eq!(tally.roll(t0 + 39_000), 0, "the minute is not over");
        assert!(summaries(&audit).is_empty());
        // The next minute's first message writes the last minute out.
        tally.note(t0 + 41_000, "bad-signature", "envelope.H42", "N1");
        let s = summaries(&audit);
        assert_eq!(s.len(), 2, "{s:?}");
        let bad = s
            .iter()
            .find(|e| e.fields["reason"] == "bad-signature")
            .unwrap();
        assert_eq!(bad.fields["count"], 10);
        assert_eq!(bad.fields["minute"], format_rfc3339(1_780_000_020_000));
        let samples = bad.fields["samples"].as_array().unwrap();
        assert_eq!(samples.len(), QUARANTINE_SAMPLES);
        let rk = samples[0]["routing_key"].as_str().unwrap();
        assert!(rk.starts_with("envelope.H41\\nINFO"), "{rk}");
        assert!(!rk.contains('\n') && rk.ends_with(" chars)"), "{rk}");
        assert_eq!(samples[2]["message_id"], "M2");
        let unknown = s
            .iter()
            .find(|e| e.fields["reason"] == "unknown-key")
            .unwrap();
        assert_eq!(unknown.fields["count"], 1);
        // A quiet minute after: housekeeping writes it; shutdown writes the rest.
        assert_eq!(tally.roll(t0 + 100_000), 1);
        assert_eq!(tally.flush(t0 + 100_000), 0);
        tally.note(t0 + 200_000, "malformed", "x", "");
        assert_eq!(
            tally.flush(t0 + 200_500),
            1,
            "shutdown writes the open minute"
        );
        assert_eq!(summaries(&audit).len(), 4);
        assert!(audit.verify().unwrap().ok);
    }
}

#[cfg(test)]
mod measure {
    use super::*;

    /// `cargo test --release --lib audit::measure -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement, run by hand in release"]
    fn append_and_verify_rates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::new(store);
        let n = 100_000u64;
        let t = std::time::Instant::now();
        for i in 0..n {
            audit
                .append(AuditEvent::Accepted {
                    from: "000.00.31.H41".into(),
                    message_id: format!("01JD{i:022}"),
                    delivered: vec!["000.00.32.H41".into()],
                    bounced: vec![],
                })
                .unwrap();
        }
        let append = t.elapsed();
        let t = std::time::Instant::now();
        assert!(audit.verify().unwrap().ok);
        let verify = t.elapsed();
        println!(
            "appends: {n} in {append:?} ({:.0}/s, {:.1} us each); verify: {verify:?} ({:.0}/s)",
            n as f64 / append.as_secs_f64(),
            append.as_secs_f64() * 1e6 / n as f64,
            n as f64 / verify.as_secs_f64()
        );
    }

    fn audit_bytes(store: &Store) -> u64 {
        store
            .audit()
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.len() + v.len()) as u64
            })
            .sum()
    }

    /// Audit bytes added by 20,000 unauthenticated messages: one entry each
    /// (as before) against the per-minute summaries (20,000 in 5 minutes,
    /// 4 reasons). Prints both; run with `--nocapture` to see them.
    #[test]
    fn quarantine_summaries_bound_the_audit_cost_of_strangers() {
        const N: i64 = 20_000;
        let reasons = [
            "bad-signature",
            "unknown-key",
            "malformed",
            "unsupported-version",
        ];
        let rk = "envelope.000.00.31.H41";
        let t0 = 1_780_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::new(store.clone());
        for i in 0..N {
            audit
                .append_at(
                    AuditEvent::Quarantined {
                        routing_key: rk.into(),
                        message_id: format!("MSG-{i:010}"),
                        reason: reasons[i as usize % 4].into(),
                    },
                    t0 + i * 15,
                )
                .unwrap();
        }
        let per_message = audit_bytes(&store);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tally = QuarantineTally::new(Audit::new(store.clone()));
        for i in 0..N {
            tally.note(
                t0 + i * 15,
                reasons[i as usize % 4],
                rk,
                &format!("MSG-{i:010}"),
            );
        }
        tally.flush(t0 + N * 15);
        let summarised = audit_bytes(&store);
        println!(
            "audit bytes for {N} unauthenticated messages: {per_message} one entry each, \
             {summarised} as per-minute summaries"
        );
        assert!(per_message > 2_000_000, "{per_message}");
        assert!(summarised < 20_000, "{summarised}");
    }
}

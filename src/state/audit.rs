//! The audit log (R14): every accept, reject, quarantine, status, bounce,
//! purge, dead-letter retry or drop and admin action, append-only and
//! hash-chained in the sled tree `audit`, keyed by big-endian sequence number.
//!
//! Invariants:
//! - an entry is `{seq, at, prev, event}` encoded by [`crate::state::codec`], stored
//!   with `hash = sha256(encoded entry)`; `prev` is the previous entry's `hash`
//!   (32 zero bytes for entry 1), so altering, removing or reordering any
//!   entry breaks verification at that entry;
//! - sequence numbers are contiguous; appends are serialised by one lock;
//! - appending writes to sled but never flushes: entries become durable with
//!   the router's group commit ([`crate::state::store::Store::durable`]) or sled's
//!   periodic flush, so auditing adds no fsync per envelope;
//! - the retention sweep removes the oldest entries only after recording
//!   their last `(seq, hash)` as the *anchor* in `meta`, so the chain still
//!   verifies from the first kept entry; `meta` also keeps the head
//!   `(seq, hash)` so truncation of the newest entries is detected;
//! - an audit failure is logged and counted but never stops routing, and
//!   loses nothing: the event is kept in memory and written (in order, before
//!   any later one) once the store can write; an entry appended but not yet
//!   covered by a flush is kept too, and written again if the store is
//!   reopened after a write failure without it (same `at`, so same hash);
//! - unauthenticated input costs a bounded amount of audit space: it is not
//!   recorded one entry per message but tallied by [`QuarantineTally`] into
//!   one `quarantine-summary` entry per (minute, reason) with the count and
//!   up to [`QUARANTINE_SAMPLES`] escaped, cut samples, written when the
//!   minute is over (at the next message or housekeeping tick) and at
//!   shutdown.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::text::escaped_max;
use crate::core::time::{format_rfc3339, now_ms};
use crate::state::codec;
use crate::state::keys::{Fields, Key};
use crate::state::store::{Store, StoreError};

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

/// The most events kept for a retry while the store cannot write; more are
/// counted as audit failures (the hub acks nothing meanwhile, so only admin
/// actions and refusals made before the failure could add to it).
const BACKLOG_MAX: usize = 1_000_000;

/// The writer's state, under one lock (appends are serialised).
#[derive(Default)]
struct Log {
    head: Option<Head>,
    /// The store generation `head` was read in.
    generation: u64,
    /// Appended, not yet flushed (oldest first).
    unflushed: std::collections::VecDeque<Kept>,
    /// Not written yet (the store failed): written, in order, before any new one.
    backlog: std::collections::VecDeque<(AuditEvent, i64)>,
}

/// The audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    log: Arc<Mutex<Log>>,
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

impl Audit {
    /// Over `store` (the `audit` tree and the anchor/head in `meta`).
    pub fn new(store: Store) -> Self {
        Self {
            store,
            log: Arc::new(Mutex::new(Log::default())),
        }
    }

    /// The retention anchor (the last entry removed) and the stored head,
    /// each as `(seq, hash)`.
    fn anchor_and_head(&self) -> Result<(Option<SeqHash>, Option<SeqHash>), AuditError> {
        let meta = self.store.meta();
        let read = |key| -> Result<Option<SeqHash>, AuditError> {
            Ok(meta.get(key)?.and_then(|v| seq_hash(&v)))
        };
        Ok((read(ANCHOR_KEY)?, read(HEAD_KEY)?))
    }

    fn load_head(&self) -> Result<Head, AuditError> {
        if let Some((k, v)) = self.store.audit().last()? {
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
        let (anchor, head) = self.anchor_and_head()?;
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

    /// Appends `event` now; returns its sequence number.
    pub fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.append_at(event, now_ms())
    }

    /// Appends `event` with time `at_ms` (tests backdate entries). Events
    /// kept from a failed [`Audit::record`] are written first.
    pub fn append_at(&self, event: AuditEvent, at_ms: i64) -> Result<u64, AuditError> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        self.catch_up_locked(&mut log)?;
        self.append_locked(&mut log, event, at_ms)
    }

    /// Writes again what a store failure lost or kept from being written:
    /// entries appended but lost when the store was reopened, then the
    /// backlog of [`Audit::record`]. Returns how many entries wait still.
    pub fn catch_up(&self) -> Result<usize, AuditError> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let res = self.catch_up_locked(&mut log);
        crate::core::metrics::audit_backlog(log.backlog.len());
        res.map(|()| log.backlog.len())
    }

    fn catch_up_locked(&self, log: &mut Log) -> Result<(), AuditError> {
        let generation = self.store.reopens();
        if log.generation != generation {
            // Reopened: what was appended and not flushed may be gone.
            let head = self.load_head()?;
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
            for k in lost.into_iter().rev() {
                log.backlog.push_front((k.event, k.at_ms));
            }
        }
        // Entries covered by a flush started after them are on disk.
        let flushed = self.store.flushed_through();
        while log.unflushed.front().is_some_and(|k| k.mark < flushed) {
            log.unflushed.pop_front();
        }
        while let Some((event, at_ms)) = log.backlog.front().cloned() {
            self.append_locked(log, event, at_ms)?;
            log.backlog.pop_front();
        }
        Ok(())
    }

    fn append_locked(
        &self,
        log: &mut Log,
        event: AuditEvent,
        at_ms: i64,
    ) -> Result<u64, AuditError> {
        if log.head.is_none() {
            log.head = Some(self.load_head()?);
            log.generation = self.store.reopens();
        }
        let head = log.head.as_mut().expect("loaded above");
        // Instances sharing a store append to one chain: the entry takes
        // its sequence number only if no other writer took it first, and
        // otherwise is chained again after the newest entry.
        let mut event = Some(event);
        let (entry, hash, mark) = loop {
            let entry = Entry {
                seq: head.next_seq,
                at_ms,
                prev: head.last_hash,
                event: event.take().expect("put back on a lost race"),
            };
            let body = codec::encode(&entry)?;
            let hash = sha(&body);
            let stored = codec::encode(&Sealed { body, hash })?;
            let mark = self.store.flush_mark();
            match self
                .store
                .audit()
                .compare_and_swap(seq_key(entry.seq), None, Some(&stored))?
            {
                Ok(()) => break (entry, hash, mark),
                Err(_) => {
                    event = Some(entry.event);
                    *head = self.load_head()?;
                }
            }
        };
        // The head only moves forward, whichever writer gets there last.
        let packed = pack(entry.seq, &hash);
        self.store
            .meta()
            .fetch_and_update(HEAD_KEY, |old| match old.and_then(seq_hash) {
                Some((seq, _)) if seq >= entry.seq => old.map(<[u8]>::to_vec),
                _ => Some(packed.clone()),
            })?;
        head.next_seq = entry.seq + 1;
        head.last_hash = hash;
        log.unflushed.push_back(Kept {
            seq: entry.seq,
            at_ms,
            event: entry.event,
            mark,
        });
        // On disk within a flush, not at sled's next periodic one.
        self.store.nudge();
        Ok(entry.seq)
    }

    /// Appends `event`; a failure is logged and counted, never returned
    /// (the router must go on), and the event is kept and written again
    /// (before any later one) once the store can write. Use this from the pipeline.
    pub fn record(&self, event: AuditEvent) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let at_ms = now_ms();
        let res = match self.catch_up_locked(&mut log) {
            Ok(()) => self
                .append_locked(&mut log, event.clone(), at_ms)
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            self.store.suspect();
            crate::core::metrics::audit_failure();
            if log.backlog.len() < BACKLOG_MAX {
                log.backlog.push_back((event, at_ms));
                tracing::debug!(error = %e, waiting = log.backlog.len(), "audit entry kept until the store can write");
            } else {
                tracing::error!(error = %e, "audit entry not written: the retry backlog is full");
            }
            crate::core::metrics::audit_backlog(log.backlog.len());
        }
    }

    /// Entries after `after` (oldest first, up to `n`), or the last `n`.
    pub fn tail(&self, n: usize, after: Option<u64>) -> Result<Vec<EntryView>, AuditError> {
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
        let (anchor, head) = self.anchor_and_head()?;
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
            } = &entry.event
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
        Ok(self.store.audit().len()?)
    }

    /// True when no entry is kept.
    pub fn is_empty(&self) -> Result<bool, AuditError> {
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
    let fields = match serde_json::to_value(&entry.event) {
        Ok(serde_json::Value::Object(mut m)) => m
            .remove(entry.event.kind())
            .unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    };
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

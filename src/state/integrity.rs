//! Store integrity: the store's *generation* (a counter in `meta` bumped by
//! every flush truc asks for), the checkpoint file that anchors the store
//! outside it, and the start-up check of the store against a checkpoint.
//!
//! Invariants:
//! - a checkpoint never claims more than is on disk: it is written after the
//!   flush that made its generation and audit head durable
//!   ([`crate::state::store::Store`]), so a store found *behind* its newest
//!   valid checkpoint (older generation, shorter audit log, or another hash
//!   at the anchored audit entry) was damaged, rolled back or rewritten;
//! - the checkpoint file is written whole: temporary file, `fsync`, rename;
//! - `meta` key `store_anchored` is set by the first flush after the store
//!   was anchored, so a store that claims it was anchored but has no
//!   checkpoint anywhere is refused rather than silently re-anchored;
//! - nothing here decides to go on despite a problem: the caller (`truc
//!   serve`) refuses to start, or with `--accept-loss` records the problem
//!   in the audit log ([`record_loss`]) and anchors the store as it is.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::core::checkpoint::{Checkpoint, CheckpointError, CheckpointKey};
use crate::core::time::now_ms;
use crate::state::audit::{Audit, AuditError, AuditEvent, Broken, CheckpointView, VerifyReport};
use crate::state::codec;
use crate::state::store::{Store, StoreError, Table};

/// `meta` key of the store's generation (u64 big-endian).
pub const GENERATION_KEY: &[u8] = b"store_generation";
/// `meta` key set once a checkpoint of the store was written.
pub const ANCHORED_KEY: &[u8] = b"store_anchored";
/// `meta` key of the audit log's head `(seq, hash)` (written by [`crate::state::audit`]).
pub const AUDIT_HEAD_KEY: &[u8] = b"audit_head";

/// Why the store cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// sled cannot open the store (or panicked opening it).
    #[error("the store at {path} does not open: {detail}")]
    Unopenable {
        /// The sled directory.
        path: PathBuf,
        /// What sled said.
        detail: String,
    },
    /// A checkpoint copy does not decode or its HMAC does not verify.
    #[error("the checkpoint in {place} is not valid: {source}")]
    Checkpoint {
        /// The file or broker queue.
        place: String,
        /// What is wrong.
        source: CheckpointError,
    },
    /// A checkpoint file exists but cannot be read.
    #[error("the checkpoint file {path} cannot be read: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store's generation is older than the checkpoint's.
    #[error("the store is behind its checkpoint (rolled back, truncated or replaced): store generation {found}, the checkpoint in {place} expects at least {expected}")]
    GenerationBehind {
        /// Where the checkpoint came from.
        place: String,
        /// The checkpoint's generation.
        expected: u64,
        /// The store's.
        found: u64,
    },
    /// The audit log ends before the checkpoint's audit head.
    #[error("the audit log is behind its checkpoint (rolled back or truncated): it ends at entry {found}, the checkpoint in {place} anchors entry {expected}")]
    AuditBehind {
        /// Where the checkpoint came from.
        place: String,
        /// The anchored sequence number.
        expected: u64,
        /// The newest entry in the store (0: none).
        found: u64,
    },
    /// The audit entry at the anchored sequence number has another hash.
    #[error("audit entry {seq} was rewritten: its hash is {found}, the checkpoint in {place} anchors {expected}")]
    AuditRewritten {
        /// Where the checkpoint came from.
        place: String,
        /// The anchored entry.
        seq: u64,
        /// The anchored hash (hex).
        expected: String,
        /// The stored hash (hex), or what is wrong with the entry.
        found: String,
    },
    /// The store says it was anchored, but no copy of its checkpoint exists.
    #[error("the store was anchored but its checkpoint is missing in both places ({file} and broker queue {queue}): it cannot be checked")]
    AnchorMissing {
        /// The checkpoint file.
        file: PathBuf,
        /// The broker queue.
        queue: String,
    },
    /// The store failed while being checked.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log failed while recording an accepted loss.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl IntegrityError {
    /// Whether trying again may succeed: only a store that failed in
    /// passing; every finding needs an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unopenable { .. }
            | Self::Checkpoint { .. }
            | Self::GenerationBehind { .. }
            | Self::AuditBehind { .. }
            | Self::AuditRewritten { .. }
            | Self::AnchorMissing { .. } => false,
            Self::Unreadable { .. } => true,
            Self::Store(e) => e.is_retryable(),
            Self::Audit(e) => e.is_retryable(),
        }
    }
}

impl From<sled::Error> for IntegrityError {
    fn from(e: sled::Error) -> Self {
        Self::Store(e.into())
    }
}

/// The checkpoint file: where it is and the key it is sealed with.
#[derive(Debug, Clone)]
pub struct AnchorFile {
    /// The file.
    pub path: PathBuf,
    key: CheckpointKey,
}

impl AnchorFile {
    /// The file at `path`, sealed with `key`.
    pub fn new(path: PathBuf, key: CheckpointKey) -> Self {
        Self { path, key }
    }

    /// The key checkpoints are sealed with.
    pub fn key(&self) -> &CheckpointKey {
        &self.key
    }

    /// The checkpoint in the file; `None` when there is no file.
    pub fn read(&self) -> Result<Option<Checkpoint>, IntegrityError> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => Checkpoint::decode(&t, &self.key)
                .map(Some)
                .map_err(|source| IntegrityError::Checkpoint {
                    place: format!("file {}", self.path.display()),
                    source,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IntegrityError::Unreadable {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Replaces the file with `cp`: temporary file, `fsync`, rename.
    pub fn write(&self, cp: &Checkpoint) -> std::io::Result<()> {
        use std::io::Write;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("store.anchor");
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(cp.encode(&self.key).as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)
    }
}

/// How a store writes its checkpoints (given to [`Store::anchor`]).
pub struct Anchoring {
    /// The checkpoint file.
    pub file: AnchorFile,
    serial: u64,
    epoch: u64,
    latest: watch::Sender<Option<Checkpoint>>,
}

impl Anchoring {
    /// Writing to `file`, continuing after serial `last_serial`; the newest
    /// checkpoint is also sent on `latest` (for the broker copy).
    /// in `epoch`.
    pub fn new(
        file: AnchorFile,
        last_serial: u64,
        epoch: u64,
        latest: watch::Sender<Option<Checkpoint>>,
    ) -> Self {
        Self {
            file,
            serial: last_serial,
            epoch,
            latest,
        }
    }

    /// Makes the epoch at least `epoch`.
    pub(crate) fn raise_epoch(&mut self, epoch: u64) {
        self.epoch = self.epoch.max(epoch);
    }

    /// Makes the next serial greater than `serial`.
    pub(crate) fn raise_serial(&mut self, serial: u64) {
        self.serial = self.serial.max(serial);
    }

    /// The next checkpoint for this generation and audit head.
    pub(crate) fn next(&mut self, generation: u64, head: (u64, [u8; 32])) -> Checkpoint {
        self.serial += 1;
        Checkpoint {
            serial: self.serial,
            epoch: self.epoch,
            generation,
            audit_seq: head.0,
            audit_hash: head.1,
            at_ms: now_ms(),
        }
    }

    /// Writes `cp` to the file, then publishes it as the latest.
    pub(crate) fn write(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        self.file.write(cp).map_err(|source| StoreError::Anchor {
            path: self.file.path.clone(),
            source,
        })?;
        self.latest.send_replace(Some(*cp));
        Ok(())
    }
}

/// The generation recorded in `meta` (0 when never flushed by truc).
pub fn generation(meta: &Table) -> Result<u64, StoreError> {
    Ok(meta
        .get(GENERATION_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// The audit head `(seq, hash)` recorded in `meta` (`(0, zeros)`: none).
pub fn audit_head(meta: &Table) -> Result<(u64, [u8; 32]), StoreError> {
    Ok(meta
        .get(AUDIT_HEAD_KEY)?
        .and_then(|v| {
            let seq = <[u8; 8]>::try_from(v.get(..8)?).ok()?;
            let hash = <[u8; 32]>::try_from(v.get(8..)?).ok()?;
            Some((u64::from_be_bytes(seq), hash))
        })
        .unwrap_or((0, [0; 32])))
}

/// The store as found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Its generation.
    pub generation: u64,
    /// Whether it says it was anchored.
    pub anchored: bool,
    /// Its newest audit entry (0: none).
    pub audit_last: u64,
    /// Whether any tree holds anything.
    pub has_data: bool,
}

impl Snapshot {
    /// Reads `store`.
    pub fn of(store: &Store) -> Result<Self, IntegrityError> {
        let audit_last = match store.audit().last()? {
            Some((k, _)) => <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes),
            None => 0,
        };
        Ok(Self {
            generation: generation(&store.meta())?,
            anchored: store.meta().get(ANCHORED_KEY)?.is_some(),
            audit_last,
            has_data: {
                let mut any = false;
                for (_, t) in store.trees() {
                    any |= !t.is_empty()?;
                }
                any
            },
        })
    }

    /// One line for logs and the audit entry.
    pub fn describe(&self) -> String {
        format!(
            "generation {}, audit log up to entry {}",
            self.generation, self.audit_last
        )
    }
}

/// One line describing a checkpoint.
pub fn describe(cp: &Checkpoint) -> String {
    format!(
        "generation {}, audit entry {} with hash {} (checkpoint {}, epoch {}, of {})",
        cp.generation,
        cp.audit_seq,
        hex::encode(cp.audit_hash),
        cp.serial,
        cp.epoch,
        crate::core::time::format_rfc3339(cp.at_ms)
    )
}

/// Checks the store (as `snap` found it) against `cp`, read from `place`.
pub fn check(
    store: &Store,
    snap: &Snapshot,
    cp: &Checkpoint,
    place: &str,
) -> Result<(), IntegrityError> {
    if snap.generation < cp.generation {
        return Err(IntegrityError::GenerationBehind {
            place: place.to_owned(),
            expected: cp.generation,
            found: snap.generation,
        });
    }
    if cp.audit_seq == 0 {
        return Ok(());
    }
    if snap.audit_last < cp.audit_seq {
        return Err(IntegrityError::AuditBehind {
            place: place.to_owned(),
            expected: cp.audit_seq,
            found: snap.audit_last,
        });
    }
    let rewritten = |found: String| IntegrityError::AuditRewritten {
        place: place.to_owned(),
        seq: cp.audit_seq,
        expected: hex::encode(cp.audit_hash),
        found,
    };
    match store.audit().get(cp.audit_seq.to_be_bytes())? {
        Some(v) => match codec::decode::<crate::state::audit::Sealed>(&v) {
            Ok(sealed) if sealed.hash == cp.audit_hash => Ok(()),
            Ok(sealed) => Err(rewritten(hex::encode(sealed.hash))),
            Err(_) => Err(rewritten("an entry that does not decode".into())),
        },
        // Swept by retention since (newer entries exist): the chain from
        // the first kept entry is checked by `truc audit verify`.
        None if store
            .audit()
            .first()?
            .is_some_and(|(k, _)| k.as_slice() > cp.audit_seq.to_be_bytes().as_slice()) =>
        {
            Ok(())
        }
        None => Err(rewritten("no entry".into())),
    }
}

/// Records in the audit log that the operator accepted `problem` (start with
/// `--accept-loss`): what the checkpoint expected and what the store holds.
/// `audit` must be the log the running hub appends to (one chain head).
pub fn record_loss(
    audit: &Audit,
    problem: &IntegrityError,
    expected: String,
    found: String,
) -> Result<u64, IntegrityError> {
    let seq = audit.append(AuditEvent::StoreLossAccepted {
        problem: problem.to_string(),
        expected,
        found,
    })?;
    Ok(seq)
}

/// Anchors `store` in an epoch above every checkpoint in `copies` (serials
/// going on after theirs) and writes a checkpoint now. The start check gives
/// up every copy of an older epoch than the file's
/// (`check_broker_copy` in `serve::integrity`), the rule that lets a
/// start with `--accept-loss` go on: so copies that describe a store that
/// was replaced on purpose (`truc store restore`) are superseded once, and
/// the replacement is checked like any store from then on.
pub fn supersede(
    store: &Store,
    file: AnchorFile,
    copies: &[Checkpoint],
) -> Result<Checkpoint, IntegrityError> {
    let epoch = copies.iter().map(|c| c.epoch + 1).max().unwrap_or(1);
    let serial = copies.iter().map(|c| c.serial).max().unwrap_or(0);
    let (tx, rx) = watch::channel(None);
    store.anchor(Anchoring::new(file, serial, epoch, tx));
    store.flush()?;
    let cp = *rx.borrow();
    Ok(cp.expect("an anchored flush writes a checkpoint"))
}

/// Checks the audit chain ([`Audit::verify`]) and then the store against the
/// checkpoint in `file` (when given): a valid chain whose head is behind the
/// checkpoint, or whose anchored entry has another hash, was rolled back or
/// rewritten; a checkpoint that does not verify is reported too.
pub fn verify_audit(
    store: &Store,
    audit: &Audit,
    file: Option<&AnchorFile>,
) -> Result<VerifyReport, AuditError> {
    let mut report = audit.verify()?;
    let Some(file) = file else {
        return Ok(report);
    };
    let place = format!("file {}", file.path.display());
    let fail = |report: &mut VerifyReport, seq: u64, problem: String| {
        report.ok = false;
        report.broken = Some(Broken { seq, problem });
    };
    let last = report.last_seq.unwrap_or(0);
    let cp = match file.read() {
        Ok(Some(cp)) => cp,
        Ok(None) => {
            if report.ok {
                fail(
                    &mut report,
                    last,
                    format!(
                        "the checkpoint {place} is missing: the chain cannot be checked against it"
                    ),
                );
            }
            return Ok(report);
        }
        Err(e) => {
            if report.ok {
                fail(&mut report, last, e.to_string());
            }
            return Ok(report);
        }
    };
    report.checkpoint = Some(CheckpointView {
        place: place.clone(),
        serial: cp.serial,
        generation: cp.generation,
        audit_seq: cp.audit_seq,
        at: crate::core::time::format_rfc3339(cp.at_ms),
    });
    if !report.ok {
        return Ok(report);
    }
    let snap = match Snapshot::of(store) {
        Ok(s) => s,
        Err(IntegrityError::Store(e)) => return Err(e.into()),
        Err(e) => {
            fail(&mut report, 0, e.to_string());
            return Ok(report);
        }
    };
    match check(store, &snap, &cp, &place) {
        Ok(()) => {}
        Err(IntegrityError::Store(e)) => return Err(e.into()),
        Err(e) => {
            let seq = match &e {
                IntegrityError::AuditRewritten { seq, .. } => *seq,
                _ => snap.audit_last + 1,
            };
            fail(&mut report, seq, e.to_string());
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::secrets::MasterKey;

    fn key() -> CheckpointKey {
        CheckpointKey::from_master(&MasterKey::parse(&"ab".repeat(32)).unwrap())
    }

    fn anchored(dir: &Path) -> (Store, watch::Receiver<Option<Checkpoint>>) {
        let store = Store::open(&dir.join("db")).unwrap();
        let (tx, rx) = watch::channel(None);
        store.anchor(Anchoring::new(
            AnchorFile::new(dir.join("store.anchor"), key()),
            0,
            0,
            tx,
        ));
        (store, rx)
    }

    #[test]
    fn every_flush_bumps_the_generation_and_writes_a_current_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (store, rx) = anchored(dir.path());
        assert_eq!(store.generation(), 0);
        let audit = Audit::new(store.clone());
        audit.append(AuditEvent::admin("t", "x", "1")).unwrap();
        store.flush().unwrap();
        let file = AnchorFile::new(dir.path().join("store.anchor"), key());
        let cp = file.read().unwrap().unwrap();
        assert_eq!((cp.serial, cp.generation, cp.audit_seq), (1, 1, 1));
        assert_eq!(*rx.borrow(), Some(cp));
        let snap = Snapshot::of(&store).unwrap();
        assert!(snap.anchored && snap.has_data);
        check(&store, &snap, &cp, "test").unwrap();
        audit.append(AuditEvent::admin("t", "x", "2")).unwrap();
        store.flush().unwrap();
        let cp2 = file.read().unwrap().unwrap();
        assert_eq!((cp2.serial, cp2.generation, cp2.audit_seq), (2, 2, 2));
        drop((audit, store));
        // Reopened: the generation is kept.
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.generation(), 2);
        let snap = Snapshot::of(&store).unwrap();
        check(&store, &snap, &cp2, "test").unwrap();
        // A checkpoint ahead of the store (a rolled-back store) is refused.
        let ahead = Checkpoint {
            generation: 3,
            ..cp2
        };
        assert!(matches!(
            check(&store, &snap, &ahead, "test"),
            Err(IntegrityError::GenerationBehind {
                expected: 3,
                found: 2,
                ..
            })
        ));
        let longer = Checkpoint {
            audit_seq: 3,
            ..cp2
        };
        assert!(matches!(
            check(&store, &snap, &longer, "test"),
            Err(IntegrityError::AuditBehind {
                expected: 3,
                found: 2,
                ..
            })
        ));
        let other = Checkpoint {
            audit_hash: [7; 32],
            ..cp2
        };
        let e = check(&store, &snap, &other, "test").unwrap_err();
        assert!(
            matches!(e, IntegrityError::AuditRewritten { seq: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("audit entry 2 was rewritten"), "{e}");
    }

    #[test]
    fn an_altered_checkpoint_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _rx) = anchored(dir.path());
        store.flush().unwrap();
        let path = dir.path().join("store.anchor");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("generation=1", "generation=9")).unwrap();
        let e = AnchorFile::new(path.clone(), key()).read().unwrap_err();
        assert!(
            matches!(
                e,
                IntegrityError::Checkpoint {
                    source: CheckpointError::Mac,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("store.anchor"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(AnchorFile::new(path, key()).read().unwrap(), None);
    }
}

#[cfg(test)]
mod measure {
    use super::*;
    use crate::core::secrets::MasterKey;

    /// `cargo test --lib integrity::measure -- --ignored --nocapture`:
    /// the cost of the checkpoint on a flush (one small write per flush).
    #[test]
    #[ignore = "measurement, run by hand"]
    fn flush_with_and_without_checkpoint() {
        let n = 300;
        let run = |anchor: bool| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("db")).unwrap();
            if anchor {
                let key = CheckpointKey::from_master(&MasterKey::parse(&"ab".repeat(32)).unwrap());
                let (tx, _rx) = watch::channel(None);
                store.anchor(Anchoring::new(
                    AnchorFile::new(dir.path().join("store.anchor"), key),
                    0,
                    0,
                    tx,
                ));
            }
            let t = std::time::Instant::now();
            for i in 0..n {
                store
                    .keys()
                    .insert(format!("k{i}"), vec![0u8; 200])
                    .unwrap();
                store.flush().unwrap();
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        };
        let (plain, anchored) = (run(false), run(true));
        let (plain2, anchored2) = (run(false), run(true));
        println!(
            "flush: {plain:.0} / {plain2:.0} us without the checkpoint, {anchored:.0} / {anchored2:.0} us with it ({n} flushes each)"
        );
    }
}

//! Backups of the store: a backend-neutral snapshot file, its writer and
//! reader, [`collect`] (every tree of a store) and [`load`] (every record
//! into an empty store), and [`restore`] (load, record it in the audit log,
//! anchor the store in a new epoch).
//!
//! The file: one header line `truc-backup 1 {json}\n` (created_at, truc
//! version, source backend, each tree with its entry count, the store
//! generation and audit head when present, the length of the records and a
//! key check value), then the records, each `u16 tree index, u32 key
//! length, key, u32 value length, value` (big-endian), then the trailer
//! `TRUC-MAC` followed by HMAC-SHA256 of everything before it under
//! [`BackupKey`] (derived from the master key for this purpose only).
//!
//! Invariants:
//! - [`Backup::decode`] checks, in this order, the magic, the header, the
//!   key check value (another master key is named as such), the length
//!   (a truncated file is named as such) and then the MAC, in constant
//!   time, **before** it reads a single record; a file that decodes was
//!   written whole by a holder of the master key; it then checks every
//!   tree's count against the header;
//! - [`load`] writes only into a store where every tree is empty, checks
//!   every tree name before it writes anything, keeps the store generation
//!   from growing backwards and flushes before it returns;
//! - every direct access to a tree is in this file (the lead adapts it when
//!   the trees become a backend-neutral table); records are opaque bytes:
//!   nothing here decodes a value, so the format does not depend on the
//!   value codec; nothing here holds message content (the store has none).

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::core::checkpoint::Checkpoint;
use crate::core::secrets::MasterKey;
use crate::core::time::{format_rfc3339, now_ms};
use crate::state::audit::{Audit, AuditError, AuditEvent};
use crate::state::integrity::{self, AnchorFile, IntegrityError};
use crate::state::store::{Store, StoreError};

/// The first bytes of every backup file (then a space and the header).
pub const MAGIC: &str = "truc-backup 1";
/// What precedes the MAC at the end of the file.
const TRAILER_TAG: &[u8; 8] = b"TRUC-MAC";
/// Tag and MAC.
const TRAILER_LEN: usize = TRAILER_TAG.len() + 32;
/// What the backup key is derived for.
const PURPOSE: &[u8] = b"truc store backup v1";
/// The message whose MAC is the key check value.
const KEY_CHECK: &[u8] = b"truc store backup key check";
/// The longest header line read (a few dozen trees).
const MAX_HEADER: usize = 64 * 1024;

/// Backup errors.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The bytes do not start with [`MAGIC`].
    #[error("not a truc backup file (it does not start with {MAGIC:?})")]
    NotABackup,
    /// The file ends before its header says it does.
    #[error("the backup file is truncated: {found} bytes, its header says {expected}")]
    Truncated {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// The file ends inside its header line.
    #[error("the backup file is truncated: {found} bytes, it ends inside its header")]
    TruncatedHeader {
        /// Bytes found.
        found: u64,
    },
    /// The file was written under another master key.
    #[error("the backup file was written under another master key (its key check does not match this master key)")]
    WrongKey,
    /// The MAC does not verify, or the file is longer than it says, or its
    /// header does not parse.
    #[error("the backup file was altered: {0}")]
    Altered(String),
    /// A file that verified holds what its header does not say (a bug in
    /// the writer).
    #[error("the backup file is inconsistent: {0}")]
    Inconsistent(String),
    /// The backup holds a tree this store does not have.
    #[error("the backup holds tree {0:?}, which this store does not have (a backup of another truc version?)")]
    UnknownTree(String),
    /// A restore was asked into a store that holds data.
    #[error("the target store is not empty (tree {tree} holds data): a backup is only loaded into an empty store")]
    NotEmpty {
        /// The first tree found with data.
        tree: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The checkpoint could not be written.
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
}

impl BackupError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::NotABackup
            | Self::Truncated { .. }
            | Self::TruncatedHeader { .. }
            | Self::WrongKey
            | Self::Altered(_)
            | Self::Inconsistent(_)
            | Self::UnknownTree(_)
            | Self::NotEmpty { .. } => false,
            Self::Store(e) => e.is_retryable(),
            Self::Audit(e) => e.is_retryable(),
            Self::Integrity(e) => e.is_retryable(),
        }
    }
}

impl From<sled::Error> for BackupError {
    fn from(e: sled::Error) -> Self {
        Self::Store(e.into())
    }
}

/// The key backups are sealed with; derived from the master key.
#[derive(Clone)]
pub struct BackupKey([u8; 32]);

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupKey(redacted)")
    }
}

impl BackupKey {
    /// The backup key of `master`.
    pub fn from_master(master: &MasterKey) -> Self {
        Self(master.derive(PURPOSE))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key")
    }

    /// 8 bytes (hex) that tell this key from another without revealing it.
    fn check_value(&self) -> String {
        let mut mac = self.mac();
        mac.update(KEY_CHECK);
        hex::encode(&mac.finalize().into_bytes()[..8])
    }
}

/// One tree in the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeCount {
    /// Tree name.
    pub name: String,
    /// Records.
    pub entries: u64,
}

/// The audit head in the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadView {
    /// Sequence number of the newest entry.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
}

/// The header line's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// When the snapshot was taken (RFC 3339).
    pub created_at: String,
    /// The same, ms since the epoch.
    pub created_at_ms: i64,
    /// The truc version that wrote it.
    pub truc_version: String,
    /// The backend it was taken from (`sled`).
    pub source_backend: String,
    /// Every tree, in record order, with its count.
    pub trees: Vec<TreeCount>,
    /// The store generation (`meta` `store_generation`), when present.
    pub generation: Option<u64>,
    /// The audit head (`meta` `audit_head`), when present.
    pub audit_head: Option<HeadView>,
    /// Bytes of records between the header line and the trailer.
    pub records_bytes: u64,
    /// Key check value: tells another master key from an altered file.
    pub key_check: String,
}

impl Header {
    /// Reads the header of `bytes` **without** checking the MAC: for
    /// showing what a file claims (the CLI without the master key).
    pub fn peek(bytes: &[u8]) -> Result<(Self, usize), BackupError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_bytes())
            .and_then(|r| r.strip_prefix(b" "))
            .ok_or(BackupError::NotABackup)?;
        let Some(end) = rest.iter().take(MAX_HEADER).position(|b| *b == b'\n') else {
            return Err(if rest.len() < MAX_HEADER {
                BackupError::TruncatedHeader {
                    found: bytes.len() as u64,
                }
            } else {
                BackupError::Altered("the header line has no end".into())
            });
        };
        let header: Header = serde_json::from_slice(&rest[..end])
            .map_err(|e| BackupError::Altered(format!("the header does not parse: {e}")))?;
        Ok((header, MAGIC.len() + 1 + end + 1))
    }

    /// Records in all trees.
    pub fn entries(&self) -> u64 {
        self.trees.iter().map(|t| t.entries).sum()
    }
}

/// One tree's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeData {
    /// Tree name ([`Store::trees`]).
    pub name: String,
    /// `(key, value)` in key order.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A snapshot of every tree of a store, backend-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// When it was taken (ms since the epoch).
    pub created_at_ms: i64,
    /// The truc version that took it.
    pub truc_version: String,
    /// The backend it was taken from.
    pub source_backend: String,
    /// Every tree.
    pub trees: Vec<TreeData>,
}

impl Backup {
    /// The records of tree `name` (empty when absent).
    pub fn tree(&self, name: &str) -> &[(Vec<u8>, Vec<u8>)] {
        self.trees
            .iter()
            .find(|t| t.name == name)
            .map_or(&[], |t| t.records.as_slice())
    }

    /// The value of `key` in `meta`.
    fn meta(&self, key: &[u8]) -> Option<&[u8]> {
        self.tree("meta")
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The store generation it holds, when present.
    pub fn generation(&self) -> Option<u64> {
        self.meta(integrity::GENERATION_KEY)
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map(u64::from_be_bytes)
    }

    /// The audit head `(seq, hash)` it holds, when present.
    pub fn audit_head(&self) -> Option<(u64, [u8; 32])> {
        let v = self.meta(integrity::AUDIT_HEAD_KEY)?;
        let seq = <[u8; 8]>::try_from(v.get(..8)?).ok()?;
        let hash = <[u8; 32]>::try_from(v.get(8..)?).ok()?;
        Some((u64::from_be_bytes(seq), hash))
    }

    /// Records in all trees.
    pub fn entries(&self) -> u64 {
        self.trees.iter().map(|t| t.records.len() as u64).sum()
    }

    /// The header this snapshot is written with.
    pub fn header(&self, key: &BackupKey) -> Header {
        Header {
            created_at: format_rfc3339(self.created_at_ms),
            created_at_ms: self.created_at_ms,
            truc_version: self.truc_version.clone(),
            source_backend: self.source_backend.clone(),
            trees: self
                .trees
                .iter()
                .map(|t| TreeCount {
                    name: t.name.clone(),
                    entries: t.records.len() as u64,
                })
                .collect(),
            generation: self.generation(),
            audit_head: self.audit_head().map(|(seq, hash)| HeadView {
                seq,
                hash: hex::encode(hash),
            }),
            records_bytes: self
                .trees
                .iter()
                .flat_map(|t| &t.records)
                .map(|(k, v)| (2 + 4 + k.len() + 4 + v.len()) as u64)
                .sum(),
            key_check: key.check_value(),
        }
    }

    /// The file: header line, records, trailer MAC.
    pub fn encode(&self, key: &BackupKey) -> Vec<u8> {
        let header = self.header(key);
        let json = serde_json::to_string(&header).expect("the header serializes");
        let mut out =
            Vec::with_capacity(MAGIC.len() + json.len() + 2 + header.records_bytes as usize + 40);
        out.extend_from_slice(MAGIC.as_bytes());
        out.push(b' ');
        out.extend_from_slice(json.as_bytes());
        out.push(b'\n');
        for (index, t) in self.trees.iter().enumerate() {
            let index = u16::try_from(index).expect("fewer than 65536 trees");
            for (k, v) in &t.records {
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(&(k.len() as u32).to_be_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
        let mut mac = key.mac();
        mac.update(&out);
        let tag = mac.finalize().into_bytes();
        out.extend_from_slice(TRAILER_TAG);
        out.extend_from_slice(&tag);
        out
    }

    /// Reads a file written by [`Backup::encode`]: checks the key, the
    /// length and the MAC before any record is read, then the counts.
    pub fn decode(bytes: &[u8], key: &BackupKey) -> Result<Self, BackupError> {
        let (header, start) = Header::peek(bytes)?;
        if header.key_check != key.check_value() {
            return Err(BackupError::WrongKey);
        }
        let expected = (start as u64)
            .saturating_add(header.records_bytes)
            .saturating_add(TRAILER_LEN as u64);
        let found = bytes.len() as u64;
        if found < expected {
            return Err(BackupError::Truncated { expected, found });
        }
        if found > expected {
            return Err(BackupError::Altered(format!(
                "{found} bytes, its header says {expected}"
            )));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
        let (tag, sum) = trailer.split_at(TRAILER_TAG.len());
        if tag != TRAILER_TAG {
            return Err(BackupError::Altered("the trailer is missing".into()));
        }
        let mut mac = key.mac();
        mac.update(body);
        mac.verify_slice(sum)
            .map_err(|_| BackupError::Altered("its MAC does not verify".into()))?;
        // Verified: written whole by a holder of the master key.
        let mut trees: Vec<TreeData> = header
            .trees
            .iter()
            .map(|t| TreeData {
                name: t.name.clone(),
                records: Vec::new(),
            })
            .collect();
        let bad = |why: &str| BackupError::Inconsistent(why.to_owned());
        let mut rest = &body[start..];
        let mut take = |n: usize| -> Result<&[u8], BackupError> {
            if rest.len() < n {
                return Err(bad("a record runs past the end"));
            }
            let (a, b) = rest.split_at(n);
            rest = b;
            Ok(a)
        };
        let mut remaining = header.records_bytes;
        while remaining > 0 {
            let index = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
            let klen = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            let k = take(klen)?.to_vec();
            let vlen = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            let v = take(vlen)?.to_vec();
            remaining = remaining.saturating_sub((2 + 4 + klen + 4 + vlen) as u64);
            trees
                .get_mut(index)
                .ok_or_else(|| bad(&format!("a record names tree {index}, beyond the header's")))?
                .records
                .push((k, v));
        }
        for (t, c) in trees.iter().zip(&header.trees) {
            if t.records.len() as u64 != c.entries {
                return Err(BackupError::Inconsistent(format!(
                    "tree {} holds {} records, its header says {}",
                    t.name,
                    t.records.len(),
                    c.entries
                )));
            }
        }
        Ok(Self {
            created_at_ms: header.created_at_ms,
            truc_version: header.truc_version,
            source_backend: header.source_backend,
            trees,
        })
    }
}

/// Every tree of `store`, at one instant ([`Store::snapshot`]: writes wait
/// while it is taken, so the trees agree with each other).
pub fn collect(store: &Store) -> Result<Backup, BackupError> {
    let trees = store
        .snapshot()?
        .into_iter()
        .map(|(name, records)| TreeData {
            name: name.to_owned(),
            records,
        })
        .collect();
    Ok(Backup {
        created_at_ms: now_ms(),
        truc_version: env!("CARGO_PKG_VERSION").to_owned(),
        source_backend: if store.is_shared() {
            "postgres"
        } else {
            "sled"
        }
        .into(),
        trees,
    })
}

/// What [`load`] wrote: records per tree, in the backup's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// `(tree, records)`.
    pub trees: Vec<(String, u64)>,
}

/// Writes every record of `backup` into `store`, which must be empty, then
/// flushes. Uses only the store's tree API (`trees`, `iter`, `insert`), so
/// any backend's store can be filled.
pub fn load(backup: &Backup, store: &Store) -> Result<Loaded, BackupError> {
    let trees: BTreeMap<&str, _> = store.trees().into_iter().collect();
    for (name, tree) in &trees {
        if tree.iter().next().transpose()?.is_some() {
            return Err(BackupError::NotEmpty {
                tree: (*name).to_owned(),
            });
        }
    }
    if let Some(t) = backup
        .trees
        .iter()
        .find(|t| !trees.contains_key(t.name.as_str()))
    {
        return Err(BackupError::UnknownTree(t.name.clone()));
    }
    let mut loaded = Vec::with_capacity(backup.trees.len());
    for t in &backup.trees {
        let tree = &trees[t.name.as_str()];
        for (k, v) in &t.records {
            tree.insert(k.as_slice(), v.as_slice())?;
        }
        loaded.push((t.name.clone(), t.records.len() as u64));
    }
    // The next flush writes a generation above the backup's, never below.
    store.raise_generation(backup.generation().unwrap_or(0));
    store.flush()?;
    Ok(Loaded { trees: loaded })
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Records per tree.
    pub loaded: Loaded,
    /// The `store-restored` audit entry.
    pub audit_seq: u64,
    /// The checkpoint written, of a new epoch (none for a shared store).
    pub checkpoint: Option<Checkpoint>,
}

/// Restores `backup` (read from `source`, a file name for the record) into
/// the empty `store`: [`load`], then one `store-restored` audit entry naming
/// `by` (who ran the restore), then
/// [`integrity::supersede`]: a checkpoint in `file` of an epoch above every
/// copy in `copies` (the checkpoint file and the broker's copy found before
/// the restore), which the start check accepts as superseding them.
pub fn restore(
    backup: &Backup,
    store: &Store,
    file: AnchorFile,
    copies: &[Checkpoint],
    source: &str,
    by: &str,
) -> Result<Restored, BackupError> {
    let (loaded, audit_seq) = load_and_record(backup, store, copies, source, by)?;
    let checkpoint = integrity::supersede(store, file, copies)?;
    Ok(Restored {
        loaded,
        audit_seq,
        checkpoint: Some(checkpoint),
    })
}

/// Restores `backup` into the empty shared (PostgreSQL) `store`: [`load`],
/// then one `store-restored` audit entry naming `by`. No checkpoint: a
/// shared store's integrity is the database's.
pub fn restore_shared(
    backup: &Backup,
    store: &Store,
    source: &str,
    by: &str,
) -> Result<Restored, BackupError> {
    let (loaded, audit_seq) = load_and_record(backup, store, &[], source, by)?;
    store.flush()?;
    Ok(Restored {
        loaded,
        audit_seq,
        checkpoint: None,
    })
}

fn load_and_record(
    backup: &Backup,
    store: &Store,
    copies: &[Checkpoint],
    source: &str,
    by: &str,
) -> Result<(Loaded, u64), BackupError> {
    let loaded = load(backup, store)?;
    let audit = Audit::new(store.clone());
    let audit_seq = audit.append(
        AuditEvent::StoreRestored {
            file: source.to_owned(),
            backup_created_at: format_rfc3339(backup.created_at_ms),
            backup_generation: backup.generation().unwrap_or(0),
            backup_audit_seq: backup.audit_head().map_or(0, |h| h.0),
            superseded: copies.iter().map(integrity::describe).collect(),
        }
        .by(by),
    )?;
    Ok((loaded, audit_seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::checkpoint::CheckpointKey;
    use crate::state::integrity::{check, Snapshot};

    fn master(b: &str) -> MasterKey {
        MasterKey::parse(&b.repeat(32)).unwrap()
    }

    fn key(b: &str) -> BackupKey {
        BackupKey::from_master(&master(b))
    }

    /// A store with records in every tree (a real audit chain and
    /// generation among them), flushed.
    fn filled(dir: &std::path::Path) -> Store {
        let store = Store::open(dir).unwrap();
        let audit = Audit::new(store.clone());
        for i in 0..3 {
            audit
                .append(AuditEvent::admin("t", format!("x{i}"), "d"))
                .unwrap();
        }
        for (name, tree) in store.trees() {
            if name == "audit" {
                // Holds the real chain above.
                continue;
            }
            for i in 0..4u8 {
                // Binary keys and values, an empty value among them.
                let v: Vec<u8> = if i == 0 { Vec::new() } else { vec![i, 0, 255] };
                tree.insert([name.as_bytes(), &[0, i]].concat(), v).unwrap();
            }
        }
        store.flush().unwrap();
        store
    }

    /// Every tree's name and records.
    type Dump = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

    fn dump(store: &Store) -> Dump {
        let mut out: Vec<_> = store
            .trees()
            .into_iter()
            .map(|(n, t)| {
                (
                    n.to_owned(),
                    t.iter()
                        .map(|r| {
                            let (k, v) = r.unwrap();
                            (k.to_vec(), v.to_vec())
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn round_trip_of_every_tree() {
        let a = tempfile::tempdir().unwrap();
        let src = filled(a.path());
        let backup = collect(&src).unwrap();
        assert_eq!(backup.trees.len(), src.trees().len());
        assert!(backup.trees.iter().all(|t| !t.records.is_empty()));
        let g = src.generation();
        assert_eq!(backup.generation(), Some(g));
        assert_eq!(backup.audit_head().map(|h| h.0), Some(3));
        let bytes = backup.encode(&key("ab"));
        let (header, _) = Header::peek(&bytes).unwrap();
        assert_eq!(header.entries(), backup.entries());
        assert_eq!(header.source_backend, "sled");
        assert_eq!(header.generation, Some(g));
        let back = Backup::decode(&bytes, &key("ab")).unwrap();
        assert_eq!(back, backup);

        let b = tempfile::tempdir().unwrap();
        let dst = Store::open(b.path()).unwrap();
        let loaded = load(&back, &dst).unwrap();
        assert_eq!(
            loaded.trees.iter().map(|t| t.1).sum::<u64>(),
            backup.entries()
        );
        // Same records everywhere except the generation, which the flush
        // of the load moved one past the backup's.
        let (mut want, mut got) = (dump(&src), dump(&dst));
        for d in [&mut want, &mut got] {
            for (name, recs) in d.iter_mut() {
                if name == "meta" {
                    recs.retain(|(k, _)| k != integrity::GENERATION_KEY);
                }
            }
        }
        assert_eq!(got, want);
        assert_eq!(dst.generation(), g + 1);
        drop(dst);
        let dst = Store::open(b.path()).unwrap();
        assert_eq!(dst.generation(), g + 1, "durable");
        assert!(Audit::new(dst).verify().unwrap().ok);
    }

    #[test]
    fn each_corruption_is_refused_and_named() {
        let a = tempfile::tempdir().unwrap();
        let bytes = collect(&filled(a.path())).unwrap().encode(&key("ab"));
        let k = key("ab");
        // Another master key.
        assert!(matches!(
            Backup::decode(&bytes, &key("cd")),
            Err(BackupError::WrongKey)
        ));
        // Truncated anywhere after the header, and inside the header.
        for cut in [1, 40, bytes.len() / 2] {
            let e = Backup::decode(&bytes[..bytes.len() - cut], &k).unwrap_err();
            assert!(matches!(e, BackupError::Truncated { .. }), "{cut}: {e}");
            assert!(e.to_string().contains("truncated"), "{e}");
        }
        let e = Backup::decode(&bytes[..30], &k).unwrap_err();
        assert!(matches!(e, BackupError::TruncatedHeader { .. }), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");
        // One byte flipped in a record, in the MAC, in the header's counts.
        let (_, start) = Header::peek(&bytes).unwrap();
        for at in [start + 7, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[at] ^= 0x01;
            let e = Backup::decode(&b, &k).unwrap_err();
            assert!(matches!(e, BackupError::Altered(_)), "{at}: {e}");
            assert!(e.to_string().contains("altered"), "{e}");
        }
        let text = String::from_utf8_lossy(&bytes[..start]).into_owned();
        let edited = text.replacen("\"entries\":4", "\"entries\":5", 1);
        assert_ne!(edited, text);
        let b = [edited.as_bytes(), &bytes[start..]].concat();
        assert!(matches!(
            Backup::decode(&b, &k),
            Err(BackupError::Truncated { .. } | BackupError::Altered(_))
        ));
        // Bytes appended.
        let b = [bytes.as_slice(), b"x"].concat();
        assert!(matches!(
            Backup::decode(&b, &k),
            Err(BackupError::Altered(_))
        ));
        // Not a backup at all.
        assert!(matches!(
            Backup::decode(b"hello\n", &k),
            Err(BackupError::NotABackup)
        ));
        // The original still decodes.
        Backup::decode(&bytes, &k).unwrap();
    }

    #[test]
    fn a_non_empty_target_is_refused_and_left_alone() {
        let a = tempfile::tempdir().unwrap();
        let backup = collect(&filled(a.path())).unwrap();
        let b = tempfile::tempdir().unwrap();
        let dst = Store::open(b.path()).unwrap();
        dst.presence().insert("x", "y").unwrap();
        let before = dump(&dst);
        let e = load(&backup, &dst).unwrap_err();
        assert!(
            matches!(&e, BackupError::NotEmpty { tree } if tree == "presence"),
            "{e}"
        );
        assert!(e.to_string().contains("not empty"), "{e}");
        assert_eq!(dump(&dst), before);
    }

    #[test]
    fn an_unknown_tree_is_refused_before_anything_is_written() {
        let a = tempfile::tempdir().unwrap();
        let mut backup = collect(&filled(a.path())).unwrap();
        backup.trees.push(TreeData {
            name: "future".into(),
            records: vec![(b"k".to_vec(), b"v".to_vec())],
        });
        let b = tempfile::tempdir().unwrap();
        let dst = Store::open(b.path()).unwrap();
        assert!(matches!(
            load(&backup, &dst),
            Err(BackupError::UnknownTree(t)) if t == "future"
        ));
        assert!(dst.trees().iter().all(|(_, t)| t.iter().next().is_none()));
    }

    #[test]
    fn a_restore_is_recorded_and_anchored_in_a_new_epoch() {
        let a = tempfile::tempdir().unwrap();
        let backup = collect(&filled(a.path())).unwrap();
        let b = tempfile::tempdir().unwrap();
        let dst = Store::open(&b.path().join("data")).unwrap();
        let ck = CheckpointKey::from_master(&master("ab"));
        let file = AnchorFile::new(b.path().join("store.anchor"), ck.clone());
        // The old hub's copy: further on than the backup, epoch 2.
        let old = Checkpoint {
            serial: 40,
            epoch: 2,
            generation: 1000,
            audit_seq: 90,
            audit_hash: [9; 32],
            at_ms: 1,
        };
        let r = restore(&backup, &dst, file.clone(), &[old], "b.truc", "@local:test").unwrap();
        let cp = r.checkpoint.unwrap();
        assert_eq!(r.audit_seq, 4);
        assert_eq!((cp.epoch, cp.serial), (3, 41));
        assert_eq!(file.read().unwrap(), Some(cp));
        // The store matches its new checkpoint; the old copy is behind.
        let snap = Snapshot::of(&dst).unwrap();
        check(&dst, &snap, &cp, "test").unwrap();
        assert!(check(&dst, &snap, &old, "test").is_err());
        let audit = Audit::new(dst.clone());
        let last = audit.tail(1, None).unwrap();
        assert_eq!(last[0].kind, "store-restored");
        assert_eq!(last[0].fields["file"], "b.truc");
        let report = audit.verify().unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.restores.len(), 1);
        assert_eq!(report.restores[0].seq, 4);
    }

    #[test]
    fn a_restore_with_no_checkpoint_anywhere_starts_epoch_one() {
        let a = tempfile::tempdir().unwrap();
        let backup = collect(&filled(a.path())).unwrap();
        let b = tempfile::tempdir().unwrap();
        let dst = Store::open(&b.path().join("data")).unwrap();
        let file = AnchorFile::new(
            b.path().join("store.anchor"),
            CheckpointKey::from_master(&master("ab")),
        );
        let r = restore(&backup, &dst, file, &[], "b.truc", "@local:test").unwrap();
        let cp = r.checkpoint.unwrap();
        assert_eq!((cp.epoch, cp.serial), (1, 1));
        assert_eq!(cp.generation, dst.generation());
        assert_eq!(cp.audit_seq, r.audit_seq);
    }
}

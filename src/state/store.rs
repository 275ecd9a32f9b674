//! The embedded sled database: trees for the registry, tracking and replay
//! defence, and group-committed durability.
//!
//! Invariants: sled holds metadata only, never an envelope body; a caller that
//! must not lose a write awaits [`Store::durable`] before acknowledging
//! anything to the broker. Many concurrent callers share one `flush`.
//! Every flush truc asks for (group commit or [`Store::flush`]) bumps the
//! store's *generation* (`meta` key `store_generation`) first and, once the
//! store is anchored ([`Store::anchor`]), writes the checkpoint file after the
//! flush and before any waiter is released: the file never claims more than
//! is on disk, and is current when [`Store::durable`] resolves. Flushes are
//! serialised by one lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::{watch, Notify};

use crate::core::checkpoint::Checkpoint;
use crate::state::integrity::{self, Anchoring};

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
            Self::Codec(_) => false,
            Self::Closed => false,
            Self::Anchor { .. } => true,
        }
    }
}

struct Inner {
    db: sled::Db,
    meta: sled::Tree,
    requested: AtomicU64,
    wake: Arc<Notify>,
    done: watch::Sender<u64>,
    commit: std::sync::Mutex<Commit>,
}

/// What one flush updates, under one lock.
struct Commit {
    generation: u64,
    anchor: Option<Anchoring>,
}

impl Inner {
    /// Bumps the generation, flushes, then writes the checkpoint (if anchored).
    fn commit(&self) -> Result<Option<Checkpoint>, StoreError> {
        let mut c = self.commit.lock().unwrap_or_else(|p| p.into_inner());
        let generation = c.generation + 1;
        self.meta
            .insert(integrity::GENERATION_KEY, &generation.to_be_bytes())?;
        if c.anchor.is_some() {
            self.meta.insert(integrity::ANCHORED_KEY, &[1u8])?;
        }
        let head = integrity::audit_head(&self.meta)?;
        self.db.flush()?;
        c.generation = generation;
        let Some(anchor) = c.anchor.as_mut() else {
            return Ok(None);
        };
        let cp = anchor.next(generation, head);
        anchor.write(&cp)?;
        Ok(Some(cp))
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// Agencies by code.
    pub agencies: sled::Tree,
    /// Access key → agency code.
    pub keys: sled::Tree,
    /// Envelope records by `from \0 message_id`.
    pub envelopes: sled::Tree,
    /// Index `dest \0 message_id \0 from` → empty.
    pub by_dest: sled::Tree,
    /// Deadlines: `deliver_by ms (BE) from \0 message_id` → empty.
    pub deadlines: sled::Tree,
    /// Seen nonces: `key \0 nonce` → (expiry ms, message id).
    pub nonces: sled::Tree,
    /// Small settings (`name` → value).
    pub meta: sled::Tree,
    /// Undelivered envelopes: `dest \0 from \0 message_id` → pending entry.
    pub pending: sled::Tree,
    /// Current presence per agency: `code` → presence record.
    pub presence: sled::Tree,
    /// Presence transitions: `code \0 at_ms (8 bytes BE) seq (4 bytes BE)` → transition.
    pub presence_log: sled::Tree,
    /// Audit entries by big-endian sequence number ([`crate::state::audit`]).
    pub audit: sled::Tree,
    /// RabbitMQ password hash of each agency's broker user: `code` →
    /// [`crate::state::registry::BrokerUser`] (never the password).
    pub broker_users: sled::Tree,
    /// The access key each agency last authenticated with: `code` → access
    /// key (UTF-8), read by [`crate::state::registry::Registry::signing_key`].
    pub last_keys: sled::Tree,
    path: PathBuf,
}

impl Store {
    /// Opens (creating) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let path = dir.join("db");
        let config = sled::Config::new()
            .path(&path)
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
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (done, _) = watch::channel(0);
        let meta = db.open_tree("meta")?;
        let generation = integrity::generation(&meta)?;
        Ok(Self {
            agencies: db.open_tree("agencies")?,
            keys: db.open_tree("keys")?,
            envelopes: db.open_tree("envelopes")?,
            by_dest: db.open_tree("by_dest")?,
            deadlines: db.open_tree("deadlines")?,
            nonces: db.open_tree("nonces")?,
            meta: meta.clone(),
            pending: db.open_tree("pending")?,
            presence: db.open_tree("presence")?,
            presence_log: db.open_tree("presence_log")?,
            audit: db.open_tree("audit")?,
            broker_users: db.open_tree("broker_users")?,
            last_keys: db.open_tree("last_keys")?,
            inner: Arc::new(Inner {
                db,
                meta,
                requested: AtomicU64::new(0),
                wake: Arc::new(Notify::new()),
                done,
                commit: std::sync::Mutex::new(Commit {
                    generation,
                    anchor: None,
                }),
            }),
            path,
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Starts the group-commit flusher. Call once, inside a runtime.
    pub fn start_flusher(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let wake = self.inner.wake.clone();
        tokio::spawn(async move {
            loop {
                let notified = wake.notified();
                let Some(inner) = weak.upgrade() else { return };
                let target = inner.requested.load(Ordering::Acquire);
                if *inner.done.borrow() >= target {
                    drop(inner);
                    // Wake on the next request, or re-check the weak handle now and then.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), notified).await;
                    continue;
                }
                match tokio::task::spawn_blocking(move || inner.commit()).await {
                    Ok(Ok(_)) => {
                        if let Some(inner) = weak.upgrade() {
                            inner.done.send_replace(target);
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "store flush failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
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
    /// Concurrent callers share one flush (group commit).
    pub async fn durable(&self) -> Result<(), StoreError> {
        let ticket = self.inner.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut rx = self.inner.done.subscribe();
        self.inner.wake.notify_one();
        rx.wait_for(|done| *done >= ticket)
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Closed)
    }

    /// Every tree the store opens, with its name (for `truc store stats`).
    pub fn trees(&self) -> Vec<(&'static str, &sled::Tree)> {
        // Destructured so that a tree added to the store cannot be left out.
        let Self {
            inner: _,
            agencies,
            keys,
            envelopes,
            by_dest,
            deadlines,
            nonces,
            meta,
            pending,
            presence,
            presence_log,
            audit,
            broker_users,
            last_keys,
            path: _,
        } = self;
        vec![
            ("agencies", agencies),
            ("keys", keys),
            ("envelopes", envelopes),
            ("by_dest", by_dest),
            ("deadlines", deadlines),
            ("nonces", nonces),
            ("meta", meta),
            ("pending", pending),
            ("presence", presence),
            ("presence_log", presence_log),
            ("audit", audit),
            ("broker_users", broker_users),
            ("last_keys", last_keys),
        ]
    }

    /// Flushes synchronously (shutdown, CLI tools), like a group commit:
    /// bumps the generation and writes the checkpoint if anchored.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.commit()?;
        Ok(())
    }

    /// The generation of the last flush truc asked for (0: never).
    pub fn generation(&self) -> u64 {
        self.inner
            .commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    /// From now on every flush writes a checkpoint through `anchor`.
    pub fn anchor(&self, anchor: Anchoring) {
        self.inner
            .commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .anchor = Some(anchor);
    }

    /// Stops writing checkpoints (a start refused after the store was
    /// anchored must leave the anchor as it found it).
    pub fn disarm_anchor(&self) {
        self.inner
            .commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .anchor = None;
    }

    /// Makes the next checkpoint's serial greater than `serial` (a copy seen
    /// elsewhere, e.g. the broker's).
    pub fn raise_serial(&self, serial: u64) {
        if let Some(a) = self
            .inner
            .commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .anchor
            .as_mut()
        {
            a.raise_serial(serial);
        }
    }

    /// Makes the next checkpoint's epoch at least `epoch`.
    pub fn raise_epoch(&self, epoch: u64) {
        if let Some(a) = self
            .inner
            .commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .anchor
            .as_mut()
        {
            a.raise_epoch(epoch);
        }
    }

    /// Where the checkpoint file is and how it is sealed, once anchored.
    pub fn anchor_file(&self) -> Option<integrity::AnchorFile> {
        self.inner
            .commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .anchor
            .as_ref()
            .map(|a| a.file.clone())
    }
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
                s.keys.insert(i.to_be_bytes(), b"x".to_vec()).unwrap();
                s.durable().await.unwrap();
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        assert_eq!(store.keys.len(), 200);
        // Each shared flush bumped the generation once.
        let g = store.generation();
        assert!((1..=200).contains(&g), "{g}");
    }

    #[test]
    fn trees_lists_every_tree_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let names: Vec<&str> = store.trees().iter().map(|(n, _)| *n).collect();
        let mut opened: Vec<String> = store
            .inner
            .db
            .tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .filter(|n| n != "__sled__default")
            .collect();
        opened.sort();
        let mut listed: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        listed.sort();
        assert_eq!(listed, opened);
    }
}

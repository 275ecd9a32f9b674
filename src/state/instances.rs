//! The instances of one hub: every `truc serve` sharing a store writes a
//! heartbeat record of itself, `meta` key `instance \0 <id>`, at every tick
//! of its lease ([`crate::state::lease::RENEW_EVERY`], 2 s);
//! [`InstanceBook::list`] returns the live ones.
//!
//! Invariants: an instance is live while its record was written within
//! [`LIVE_MS`]; a record not written for [`FORGET_MS`] is removed by the
//! next listing (compare-and-swap on the bytes read, so a record written
//! again meanwhile stays); a clean shutdown removes the instance's own
//! record. An instance id is 1-64 of `A-Z a-z 0-9 . _ -`
//! ([`crate::core::config::check_instance_id`]), so it never holds the key
//! separator. All store access of the instance records is in this file.

use serde::{Deserialize, Serialize};

use crate::state::codec;
use crate::state::keys::Key;
use crate::state::store::{Store, StoreError};

/// An instance is live while its record is younger than this (ms).
pub const LIVE_MS: i64 = 10_000;

/// A record older than this is removed (ms): the instance is gone.
pub const FORGET_MS: i64 = 3_600_000;

/// One instance as it describes itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Its instance id (config `instance_id`, default `<hostname>-<pid>`).
    pub id: String,
    /// Host name of its machine.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// truc version.
    pub version: String,
    /// When it started (ms).
    pub started_ms: i64,
    /// When it last wrote its record (ms).
    pub seen_ms: i64,
    /// Its admin API address.
    pub admin_addr: String,
}

fn prefix() -> Vec<u8> {
    Key::new().str("instance").prefix()
}

fn key(id: &str) -> Vec<u8> {
    Key::new().str("instance").str(id).into_bytes()
}

/// The instance records of a store.
#[derive(Clone)]
pub struct InstanceBook {
    store: Store,
}

impl InstanceBook {
    /// Over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Writes `info` (its `seen_ms` set to `now_ms`).
    pub fn beat(&self, info: &InstanceInfo, now_ms: i64) -> Result<(), StoreError> {
        let info = InstanceInfo {
            seen_ms: now_ms,
            ..info.clone()
        };
        self.store
            .meta()
            .insert(key(&info.id), codec::encode(&info)?)?;
        Ok(())
    }

    /// The live instances at `now_ms`, by id; removes records gone for over
    /// [`FORGET_MS`] (and records that do not decode).
    pub fn list(&self, now_ms: i64) -> Result<Vec<InstanceInfo>, StoreError> {
        let p = prefix();
        let meta = self.store.meta();
        let mut live = Vec::new();
        for item in meta.scan_prefix(&p) {
            let (k, v) = item?;
            match codec::decode::<InstanceInfo>(&v) {
                Ok(info) if now_ms - info.seen_ms < LIVE_MS => live.push(info),
                Ok(info) if now_ms - info.seen_ms <= FORGET_MS => {}
                Ok(_) | Err(_) => {
                    // Written again since it was read: kept.
                    let _ = meta.compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?;
                }
            }
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }

    /// Removes the record of `id` (clean shutdown).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.store.meta().remove(key(id))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> InstanceInfo {
        InstanceInfo {
            id: id.into(),
            host: "h".into(),
            pid: 7,
            version: "0.1.0".into(),
            started_ms: 1,
            seen_ms: 0,
            admin_addr: "127.0.0.1:8080".into(),
        }
    }

    #[test]
    fn live_ones_are_listed_and_long_gone_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let book = InstanceBook::new(store.clone());
        let now = 10 * FORGET_MS;
        book.beat(&info("b"), now - 1_000).unwrap();
        book.beat(&info("a"), now - LIVE_MS + 1).unwrap();
        book.beat(&info("stale"), now - LIVE_MS).unwrap();
        book.beat(&info("gone"), now - FORGET_MS - 1).unwrap();
        // Another meta key with the same start is not an instance.
        store.meta().insert("instances", b"x").unwrap();
        let ids: Vec<String> = book.list(now).unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(book.list(now).unwrap()[1].seen_ms, now - 1_000);
        // The stale one is kept (it may come back), the gone one removed.
        assert!(store.meta().get(key("stale")).unwrap().is_some());
        assert!(store.meta().get(key("gone")).unwrap().is_none());
        assert!(store.meta().get("instances").unwrap().is_some());
        // Back again, and removed at a clean stop.
        book.beat(&info("stale"), now).unwrap();
        assert_eq!(book.list(now).unwrap().len(), 3);
        book.remove("stale").unwrap();
        assert_eq!(book.list(now).unwrap().len(), 2);
    }
}

//! Heartbeats a follower instance received, handed to the leader through
//! the store: agencies publish heartbeats to their ingress queue, which any
//! instance may consume, but only the leader's presence task decides
//! presence (see `serve::presence`). A follower writes each heartbeat to
//! `meta` key `relay \0 heartbeat \0 <code>`; the leader takes them every
//! [`TAKE_EVERY`].
//!
//! Invariants: one record per agency holding its latest heartbeat (a later
//! `at_ms` replaces an earlier one, never the reverse: several followers may
//! write it); [`HeartbeatRelay::take`] removes a record only if it still
//! holds the bytes read (compare-and-swap), so a heartbeat written meanwhile
//! is taken next time, never lost. All store access of the relay is in this
//! file.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::code::AgencyCode;
use crate::state::codec;
use crate::state::keys::{Fields, Key};
use crate::state::store::{Store, StoreError};

/// How often the leader takes relayed heartbeats.
pub const TAKE_EVERY: Duration = Duration::from_secs(1);

/// One relayed heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relayed {
    /// `lgsp-state: online`.
    pub online: bool,
    /// When the follower took it (hub time, ms).
    pub at_ms: i64,
}

fn prefix() -> Vec<u8> {
    Key::new().str("relay").str("heartbeat").prefix()
}

fn key(code: &AgencyCode) -> Vec<u8> {
    Key::new()
        .str("relay")
        .str("heartbeat")
        .code(code)
        .into_bytes()
}

/// The heartbeat relay of a store.
#[derive(Clone)]
pub struct HeartbeatRelay {
    store: Store,
}

impl HeartbeatRelay {
    /// Over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Leaves a heartbeat of `code` for the leader (kept only if it is the
    /// latest one relayed for `code`).
    pub fn put(&self, code: &AgencyCode, hb: &Relayed) -> Result<(), StoreError> {
        let new = codec::encode(hb)?;
        self.store.meta().fetch_and_update(key(code), |old| {
            match old.and_then(|v| codec::decode::<Relayed>(v).ok()) {
                Some(o) if o.at_ms > hb.at_ms => Some(old.unwrap_or_default().to_vec()),
                _ => Some(new.clone()),
            }
        })?;
        Ok(())
    }

    /// Takes every relayed heartbeat, oldest first (records that do not
    /// decode are dropped).
    pub fn take(&self) -> Result<Vec<(AgencyCode, Relayed)>, StoreError> {
        let p = prefix();
        let meta = self.store.meta();
        let mut out = Vec::new();
        for item in meta.scan_prefix(&p) {
            let (k, v) = item?;
            let code = Fields::after(&k, &p).and_then(|mut f| f.code());
            let removed = meta.compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?;
            if removed.is_err() {
                // Written again since it was read: taken next time.
                continue;
            }
            if let (Some(code), Ok(hb)) = (code, codec::decode::<Relayed>(&v)) {
                out.push((code, hb));
            }
        }
        out.sort_by_key(|(_, hb)| hb.at_ms);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_heartbeat_is_relayed_once() {
        let dir = tempfile::tempdir().unwrap();
        let relay = HeartbeatRelay::new(Store::open(dir.path()).unwrap());
        let a = AgencyCode::parse("000.00.31.H41").unwrap();
        let b = AgencyCode::parse("000.00.31").unwrap();
        let hb = |online, at_ms| Relayed { online, at_ms };
        relay.put(&a, &hb(true, 2_000)).unwrap();
        // An older one (another follower, late) does not replace it.
        relay.put(&a, &hb(false, 1_000)).unwrap();
        relay.put(&b, &hb(false, 1_500)).unwrap();
        assert_eq!(
            relay.take().unwrap(),
            vec![(b.clone(), hb(false, 1_500)), (a.clone(), hb(true, 2_000))]
        );
        assert!(relay.take().unwrap().is_empty(), "taken once");
        relay.put(&a, &hb(false, 3_000)).unwrap();
        assert_eq!(relay.take().unwrap(), vec![(a, hb(false, 3_000))]);
    }
}

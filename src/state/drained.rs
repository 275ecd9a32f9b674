//! When each source's ingress queue was last seen empty (hub time): the
//! floor of the clock-skew check and of the rate limiter, kept across
//! restarts in `meta` as `drained \0 code` → i64 (BE).
//!
//! Invariants: a source's time only moves forward; it is persisted when it
//! has moved [`PERSIST_EVERY`] past the persisted one (so an idle source
//! costs one small write per [`PERSIST_EVERY`], not one per observation), so
//! the persisted time is never later than the one in memory; an agency
//! never seen empty has no time (the caller's rule for "unknown" applies).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::core::code::AgencyCode;
use crate::state::keys::{Fields, Key};
use crate::state::store::{Store, StoreError};

/// How far the time must move before it is written again.
pub const PERSIST_EVERY: i64 = 5_000;

fn prefix() -> Vec<u8> {
    Key::new().str("drained").prefix()
}

fn key(code: &AgencyCode) -> Vec<u8> {
    Key::new().str("drained").code(code).into_bytes()
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    at_ms: i64,
    persisted_ms: Option<i64>,
}

/// The drained times; cheap to clone.
#[derive(Clone)]
pub struct Drained {
    store: Store,
    seen: Arc<Mutex<HashMap<AgencyCode, Seen>>>,
}

impl Drained {
    /// Over `store`, with the times persisted there.
    pub fn open(store: Store) -> Result<Self, StoreError> {
        let mut seen = HashMap::new();
        let p = prefix();
        for item in store.meta().scan_prefix(&p) {
            let (k, v) = item?;
            let code = Fields::after(&k, &p).and_then(|mut f| f.code());
            let at = v.as_ref().try_into().ok().map(i64::from_be_bytes);
            if let (Some(code), Some(at)) = (code, at) {
                seen.insert(
                    code,
                    Seen {
                        at_ms: at,
                        persisted_ms: Some(at),
                    },
                );
            }
        }
        Ok(Self {
            store,
            seen: Arc::new(Mutex::new(seen)),
        })
    }

    /// With no time known (the store could not be read).
    pub fn empty(store: Store) -> Self {
        Self {
            store,
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// `code`'s queue was seen empty at `at_ms`; persisted when it moved far
    /// enough. A write failure leaves the persisted time where it was.
    pub fn seen_empty(&self, code: &AgencyCode, at_ms: i64) -> Result<(), StoreError> {
        let write = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let s = seen.entry(code.clone()).or_insert(Seen {
                at_ms,
                persisted_ms: None,
            });
            s.at_ms = s.at_ms.max(at_ms);
            match s.persisted_ms {
                Some(p) if s.at_ms - p < PERSIST_EVERY => None,
                _ => Some(s.at_ms),
            }
        };
        if let Some(at) = write {
            self.store.meta().insert(key(code), &at.to_be_bytes())?;
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = seen.get_mut(code) {
                s.persisted_ms = Some(s.persisted_ms.map_or(at, |p| p.max(at)));
            }
        }
        Ok(())
    }

    /// When `code`'s queue was last seen empty, if ever.
    pub fn at(&self, code: &AgencyCode) -> Option<i64> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(code)
            .map(|s| s.at_ms)
    }

    /// The time a restart would start from (the persisted one), if any.
    pub fn persisted(&self, code: &AgencyCode) -> Option<i64> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(code)
            .and_then(|s| s.persisted_ms)
    }

    /// Every source with a time (to seed the rate limiter at start).
    pub fn all(&self) -> Vec<(AgencyCode, i64)> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, s)| (c.clone(), s.at_ms))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_move_forward_and_survive_a_reopen_within_the_persist_step() {
        let dir = tempfile::tempdir().unwrap();
        let a = AgencyCode::parse("000.00.00.A01").unwrap();
        {
            let d = Drained::open(Store::open(dir.path()).unwrap()).unwrap();
            assert_eq!(d.at(&a), None);
            d.seen_empty(&a, 10_000).unwrap();
            d.seen_empty(&a, 9_000).unwrap();
            assert_eq!(d.at(&a), Some(10_000));
            d.seen_empty(&a, 12_000).unwrap();
            assert_eq!(d.at(&a), Some(12_000));
            assert_eq!(d.persisted(&a), Some(10_000));
            d.seen_empty(&a, 15_000).unwrap();
            assert_eq!(d.persisted(&a), Some(15_000));
            d.seen_empty(&a, 16_000).unwrap();
            d.store.flush().unwrap();
        }
        let d = Drained::open(Store::open(dir.path()).unwrap()).unwrap();
        assert_eq!(d.at(&a), Some(15_000));
        assert_eq!(d.all(), vec![(a, 15_000)]);
    }
}

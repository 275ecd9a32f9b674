//! When each source's ingress queue was last seen empty (hub time): the
//! floor of the clock-skew check and of the rate limiter, kept across
//! restarts in `meta` as `drained \0 code` → i64 (BE).
//!
//! A message that failed and comes again keeps the floor of its first
//! delivery ([`Drained::keep_floor`], in memory): its queue may have been
//! seen empty while it was out for handling, so the queue's later time does
//! not bound when it was published.
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

/// How long a failed message's floor is kept without it coming again.
pub const KEPT_FOR: i64 = 600_000;

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

/// One source's failed messages: message id → (floor, last failed at).
type Kept = HashMap<String, (i64, i64)>;

/// The drained times; cheap to clone.
#[derive(Clone)]
pub struct Drained {
    store: Store,
    seen: Arc<Mutex<HashMap<AgencyCode, Seen>>>,
    /// Floors of messages that failed, by source and message id, with when
    /// they last failed.
    kept: Arc<Mutex<HashMap<AgencyCode, Kept>>>,
}

impl Drained {
    /// Over `store`, with the times persisted there.
    pub fn open(store: Store) -> Result<Self, StoreError> {
        let mut seen = HashMap::new();
        let p = prefix();
        for item in store.meta().scan_prefix(&p) {
            let (k, v) = item?;
            let code = Fields::after(&k, &p).and_then(|mut f| f.code());
            let at = <[u8; 8]>::try_from(v.as_slice())
                .ok()
                .map(i64::from_be_bytes);
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
            kept: Arc::default(),
        })
    }

    /// With no time known (the store could not be read).
    pub fn empty(store: Store) -> Self {
        Self {
            store,
            seen: Arc::new(Mutex::new(HashMap::new())),
            kept: Arc::default(),
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
            self.store.meta().insert(key(code), at.to_be_bytes())?;
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

    /// The floor of a delivery of `message_id` from `code`'s queue: the one
    /// it kept when it failed before, else the queue's time.
    pub fn floor_of(&self, code: &AgencyCode, message_id: Option<&str>) -> Option<i64> {
        let kept = message_id.and_then(|m| {
            self.kept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(code)
                .and_then(|k| k.get(m))
                .map(|(floor, _)| *floor)
        });
        kept.or_else(|| self.at(code))
    }

    /// A delivery of `message_id` judged from `floor` failed at `now_ms`: it
    /// keeps that floor (or an earlier one) when it comes again.
    pub fn keep_floor(&self, code: &AgencyCode, message_id: &str, floor: i64, now_ms: i64) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let f = kept
            .entry(code.clone())
            .or_default()
            .entry(message_id.to_owned())
            .or_insert((floor, now_ms));
        *f = (f.0.min(floor), now_ms);
    }

    /// `message_id` was handled: its kept floor goes.
    pub fn forget_floor(&self, code: &AgencyCode, message_id: &str) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = kept.get_mut(code) {
            k.remove(message_id);
            if k.is_empty() {
                kept.remove(code);
            }
        }
    }

    /// Whether messages from `code` failed and are to come again (one that
    /// has not come again for [`KEPT_FOR`] is dropped: dead-lettered or
    /// handled elsewhere). While they are, the queue's time must not move
    /// past them: it is what a restart judges them from.
    pub fn failing(&self, code: &AgencyCode, now_ms: i64) -> bool {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let Some(k) = kept.get_mut(code) else {
            return false;
        };
        k.retain(|_, (_, last)| now_ms - *last < KEPT_FOR);
        if k.is_empty() {
            kept.remove(code);
            return false;
        }
        true
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
        assert_eq!(d.all(), vec![(a.clone(), 15_000)]);
        // A failed message keeps its floor while the queue's moves on.
        assert!(!d.failing(&a, 20_000));
        d.keep_floor(&a, "M1", 15_000, 20_000);
        d.keep_floor(&a, "M1", 16_000, 21_000);
        assert!(d.failing(&a, 22_000));
        d.seen_empty(&a, 90_000).unwrap();
        assert_eq!(d.floor_of(&a, Some("M1")), Some(15_000));
        assert_eq!(d.floor_of(&a, Some("M2")), Some(90_000));
        d.forget_floor(&a, "M1");
        assert_eq!(d.floor_of(&a, Some("M1")), Some(90_000));
        assert!(!d.failing(&a, 22_000));
        d.keep_floor(&a, "M3", 15_000, 20_000);
        assert!(!d.failing(&a, 20_000 + KEPT_FOR), "dropped once stale");
    }
}

//! Replay defence: a nonce may be used once per access key within the
//! clock-skew window.
//!
//! Invariants: a nonce is remembered with the `message_id` it came with, so
//! the broker redelivering the *same* message (after a crash or a lost
//! connection) is not mistaken for a replay; entries live in sled so a
//! restart does not open a replay window, and are swept once expired.

use crate::state::keys::Key;
use crate::state::store::{Store, StoreError};

/// The outcome of [`Nonces::check_and_remember`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// First use.
    Fresh,
    /// Seen before with this same message (a broker redelivery).
    SameMessage,
    /// Seen before with another message: a replay.
    Replay,
}

/// The nonce table.
#[derive(Clone)]
pub struct Nonces {
    store: Store,
}

/// Key of a nonce: `access_key \0 nonce`.
fn nonce_key(key: &str, nonce: &str) -> Vec<u8> {
    Key::new().str(key).str(nonce).into_bytes()
}

/// What an insert-if-absent of a nonce entry found: `Ok(())` when it
/// inserted, else the entry there (`None`: none any more).
pub type NonceFound = Result<(), Option<Vec<u8>>>;

/// One use of a nonce, to be judged: its entry and what decides a repeat.
/// Made by [`NonceUse::new`]; checked by [`Nonces::check`], or inserted by
/// a caller together with another write and judged by [`Nonces::judge`].
#[derive(Debug, Clone)]
pub struct NonceUse {
    key: Vec<u8>,
    value: Vec<u8>,
    message_id: String,
    floor_ms: i64,
}

impl NonceUse {
    /// The use of `nonce` with access key `key` by `message_id`, remembered
    /// until `expires_ms`; `floor_ms` as [`Nonces::check_and_remember`] says.
    pub fn new(key: &str, nonce: &str, message_id: &str, expires_ms: i64, floor_ms: i64) -> Self {
        let mut value = expires_ms.to_be_bytes().to_vec();
        value.extend_from_slice(message_id.as_bytes());
        Self {
            key: nonce_key(key, nonce),
            value,
            message_id: message_id.to_owned(),
            floor_ms,
        }
    }

    /// The entry's key in the nonce table.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The entry's value: expiry (i64 BE), then the message id.
    pub fn value(&self) -> &[u8] {
        &self.value
    }
}

impl Nonces {
    /// Over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Inserts `u`'s entry if absent and judges the use.
    pub fn check(&self, u: &NonceUse) -> Result<NonceCheck, StoreError> {
        let inserted =
            self.store
                .nonces()
                .compare_and_swap(&u.key, None as Option<&[u8]>, Some(&u.value))?;
        self.judge(u, inserted)
    }

    /// Judges use `u` from its insert-if-absent: inserted (`Ok`), or the
    /// entry found. A redelivery of the same message is no replay; an
    /// expired entry not swept yet frees the nonce (taken over here).
    pub fn judge(&self, u: &NonceUse, inserted: NonceFound) -> Result<NonceCheck, StoreError> {
        let Err(current) = inserted else {
            return Ok(NonceCheck::Fresh);
        };
        let old = current.unwrap_or_default();
        let (exp, mid) = old.split_at(8.min(old.len()));
        let exp = i64::from_be_bytes(exp.try_into().unwrap_or([0; 8]));
        if mid == u.message_id.as_bytes() {
            Ok(NonceCheck::SameMessage)
        } else if exp <= u.floor_ms {
            // Expired entry not swept yet: the nonce is free again.
            self.store.nonces().insert(&u.key, u.value.clone())?;
            Ok(NonceCheck::Fresh)
        } else {
            Ok(NonceCheck::Replay)
        }
    }

    /// Checks `nonce` for `key`; remembers it until `expires_ms` when fresh.
    /// An entry of an earlier use counts as expired only when its expiry is
    /// at or before `floor_ms`, the time the message could first have been
    /// seen ([`crate::core::skew::floor`]; at most now), so a message the
    /// clock-skew rule still accepts never finds its nonce forgotten.
    pub fn check_and_remember(
        &self,
        key: &str,
        nonce: &str,
        message_id: &str,
        expires_ms: i64,
        floor_ms: i64,
    ) -> Result<NonceCheck, StoreError> {
        self.check(&NonceUse::new(key, nonce, message_id, expires_ms, floor_ms))
    }

    /// Removes expired entries; returns how many. `floor_of(access_key)` is
    /// the floor of the key's source (the persisted time its queue was last
    /// seen empty, at most `now_ms`; `now_ms` when unknown): an entry goes
    /// only when its expiry is before it, so no message the clock-skew rule
    /// would still accept can reuse the nonce.
    pub fn sweep(&self, now_ms: i64, floor_of: impl Fn(&str) -> i64) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.store.nonces().iter() {
            let (k, v) = item?;
            if v.len() < 8 {
                continue;
            }
            let exp = i64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8]));
            if exp > now_ms {
                continue;
            }
            let access_key = crate::state::keys::Fields::of(&k).str().unwrap_or("");
            if exp <= floor_of(access_key).min(now_ms) {
                self.store.nonces().remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_same_replay_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let n = Nonces::new(Store::open(dir.path()).unwrap());
        assert_eq!(
            n.check_and_remember("K", "nonce-0000000001", "m1", 1000, 0)
                .unwrap(),
            NonceCheck::Fresh
        );
        assert_eq!(
            n.check_and_remember("K", "nonce-0000000001", "m1", 1000, 10)
                .unwrap(),
            NonceCheck::SameMessage
        );
        assert_eq!(
            n.check_and_remember("K", "nonce-0000000001", "m2", 1000, 10)
                .unwrap(),
            NonceCheck::Replay
        );
        assert_eq!(
            n.check_and_remember("K2", "nonce-0000000001", "m2", 1000, 10)
                .unwrap(),
            NonceCheck::Fresh
        );
        assert_eq!(
            n.check_and_remember("K", "nonce-0000000001", "m3", 3000, 2000)
                .unwrap(),
            NonceCheck::Fresh
        );
        assert_eq!(n.sweep(5000, |_| 5000).unwrap(), 2);
    }

    #[test]
    fn an_entry_outlives_its_expiry_while_its_source_was_not_seen_empty_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let n = Nonces::new(Store::open(dir.path()).unwrap());
        let fresh = n
            .check_and_remember("K", "nonce-0000000001", "m1", 1000, 0)
            .unwrap();
        assert_eq!(fresh, NonceCheck::Fresh);
        // Hours later, but the queue was last seen empty before the expiry:
        // the entry is live for a message judged from that floor.
        assert_eq!(
            n.check_and_remember("K", "nonce-0000000001", "m2", 9000, 900)
                .unwrap(),
            NonceCheck::Replay
        );
        // Nor is it swept while its source's floor is before its expiry.
        assert_eq!(n.sweep(10_000_000, |_| 900).unwrap(), 0);
        assert_eq!(n.sweep(10_000_000, |_| 1000).unwrap(), 1);
    }
}

//! The leader lease: which one of several `truc serve` instances sharing one
//! store runs the work that must happen once across them (sweeps, presence
//! decisions, the broker copy of the checkpoint; see `serve::leader`).
//!
//! The lease is one `meta` record, key `leader`, value a [`LeaseRecord`]
//! (holder, term, expiry). Every instance calls [`Lease::tick`] every
//! [`RENEW_EVERY`]: the holder renews it for [`LEASE_TTL_MS`], any other
//! instance takes it over once it expired (term + 1), otherwise it follows.
//! A holder that stops ticking (it died, or lost the store) is replaced
//! within `LEASE_TTL_MS + RENEW_EVERY` (12 s); one that stops cleanly calls
//! [`Lease::release`] so the next takes over at its next tick.
//!
//! Invariants:
//! - every write is a compare-and-swap on the exact bytes read, so two
//!   instances never both win the same record;
//! - the term only grows: each takeover writes the term read plus one;
//! - an instance counts itself leader ([`Lease::role_at`]) only until
//!   [`SKEW_MARGIN_MS`] before the expiry it wrote, while others take over
//!   only after that expiry: with clocks apart by less than the margin, two
//!   instances are never leaders at the same instant;
//! - an *exclusive* lease ([`Lease::exclusive`], for a store only one process
//!   can open, such as sled) takes a record left by another holder at once:
//!   that holder cannot be running, and a restart must not wait for its
//!   lease to expire;
//! - a record that does not decode is replaced as if it had expired (else a
//!   damaged record would leave the hub without a leader forever).
//!
//! All store access of the lease is in this file.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::codec;
use crate::state::store::{Store, StoreError};

/// How long a lease lasts after it was written (ms).
pub const LEASE_TTL_MS: i64 = 10_000;

/// How often every instance ticks its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// How long before the expiry it wrote a holder stops counting itself
/// leader: the clock difference between instances the lease tolerates.
pub const SKEW_MARGIN_MS: i64 = 2_000;

/// The `meta` key of the lease record.
const LEADER_KEY: &[u8] = b"leader";

/// Compare-and-swap attempts in one tick before it settles for what it read.
const CAS_ATTEMPTS: usize = 4;

/// The lease as stored under `meta` key `leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Instance id of the holder.
    pub holder: String,
    /// Grows by one at every takeover.
    pub term: u64,
    /// When the lease ends unless renewed (ms since the epoch).
    pub expires_ms: i64,
}

impl LeaseRecord {
    /// Whether the lease is still held at `now_ms`.
    pub fn live_at(&self, now_ms: i64) -> bool {
        self.expires_ms > now_ms
    }
}

/// What an instance is, as its last tick found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It holds the lease.
    Leader {
        /// The term of its lease.
        term: u64,
    },
    /// Another instance holds it (`None`: nobody, or not known yet).
    Follower {
        /// The holder's instance id.
        leader: Option<String>,
    },
}

impl Role {
    /// Whether this is [`Role::Leader`].
    pub fn is_leader(&self) -> bool {
        matches!(self, Self::Leader { .. })
    }

    /// `leader` or `follower`, as `/healthz` and the metrics say it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Leader { .. } => "leader",
            Self::Follower { .. } => "follower",
        }
    }
}

/// The lease record in `store`, if any (undecodable: `None`).
pub fn current(store: &Store) -> Result<Option<LeaseRecord>, StoreError> {
    Ok(store
        .meta()
        .get(LEADER_KEY)?
        .and_then(|v| codec::decode(&v).ok()))
}

/// One instance's side of the lease.
pub struct Lease {
    store: Store,
    instance: String,
    exclusive: bool,
    local: Mutex<Local>,
}

/// What an instance knows of the lease between ticks.
#[derive(Debug, Default)]
struct Local {
    /// The expiry and term this instance last wrote as holder, while it holds it.
    held: Option<(i64, u64)>,
    /// The holder its last tick found, when another.
    other: Option<String>,
}

impl Lease {
    /// The lease of instance `instance_id` over a store shared by several
    /// instances.
    pub fn new(store: Store, instance_id: impl Into<String>) -> Self {
        Self {
            store,
            instance: instance_id.into(),
            exclusive: false,
            local: Mutex::new(Local::default()),
        }
    }

    /// The lease of instance `instance_id` over a store only one process can
    /// open (sled): a record of another holder is taken over at once.
    pub fn exclusive(store: Store, instance_id: impl Into<String>) -> Self {
        Self {
            exclusive: true,
            ..Self::new(store, instance_id)
        }
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn follow(&self, leader: Option<String>) -> Role {
        let mut l = self.local();
        l.held = None;
        l.other = leader.clone();
        Role::Follower { leader }
    }

    /// Renews, takes over or follows at `now_ms`; returns the role it found.
    /// After an error, [`Lease::role_at`] says how to act (a holder stays
    /// leader until its lease would run out).
    pub fn tick(&self, now_ms: i64) -> Result<Role, StoreError> {
        let meta = self.store.meta();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let old = meta.get(LEADER_KEY)?;
            let read: Option<LeaseRecord> = old.as_ref().and_then(|v| codec::decode(v).ok());
            let term = match &read {
                Some(r) if r.holder == self.instance && r.live_at(now_ms) => r.term,
                Some(r) if r.live_at(now_ms) && !self.exclusive => {
                    return Ok(self.follow(Some(r.holder.clone())));
                }
                Some(r) => r.term + 1,
                // Nothing, or a record that does not decode (its term is
                // lost; terms only order this store's takeovers).
                None if old.is_some() => {
                    tracing::warn!("leader lease record does not decode; replacing it");
                    1
                }
                None => 1,
            };
            let new = LeaseRecord {
                holder: self.instance.clone(),
                term,
                expires_ms: now_ms + LEASE_TTL_MS,
            };
            let swapped =
                meta.compare_and_swap(LEADER_KEY, old.as_deref(), Some(&codec::encode(&new)?))?;
            match swapped {
                Ok(()) => {
                    let mut l = self.local();
                    if l.held.is_none_or(|(_, t)| t != term) {
                        tracing::info!(instance = %self.instance, term, "leader lease taken");
                    }
                    l.held = Some((new.expires_ms, term));
                    l.other = None;
                    return Ok(Role::Leader { term });
                }
                // Someone wrote in between: read again (a few times).
                Err(_) if attempts < CAS_ATTEMPTS => continue,
                Err(current) => {
                    let leader = current
                        .as_ref()
                        .and_then(|v| codec::decode::<LeaseRecord>(v).ok())
                        .map(|r| r.holder);
                    return Ok(self.follow(leader));
                }
            }
        }
    }

    /// The role this instance may act in at `now_ms`, from what its last
    /// tick wrote (no store access): leader until [`SKEW_MARGIN_MS`] before
    /// the expiry of the lease it last wrote.
    pub fn role_at(&self, now_ms: i64) -> Role {
        let l = self.local();
        match l.held {
            Some((until, term)) if now_ms < until - SKEW_MARGIN_MS => Role::Leader { term },
            _ => Role::Follower {
                leader: l.other.clone(),
            },
        }
    }

    /// Gives the lease up (clean shutdown): when this instance holds it, it
    /// is written expired, so another instance takes it at its next tick.
    /// Returns whether it was held.
    pub fn release(&self, now_ms: i64) -> Result<bool, StoreError> {
        self.follow(None);
        let meta = self.store.meta();
        let Some(old) = meta.get(LEADER_KEY)? else {
            return Ok(false);
        };
        let Ok(r) = codec::decode::<LeaseRecord>(&old) else {
            return Ok(false);
        };
        if r.holder != self.instance || !r.live_at(now_ms) {
            return Ok(false);
        }
        let expired = LeaseRecord {
            expires_ms: now_ms.min(r.expires_ms) - LEASE_TTL_MS,
            ..r
        };
        let swapped =
            meta.compare_and_swap(LEADER_KEY, Some(&old), Some(&codec::encode(&expired)?))?;
        Ok(swapped.is_ok())
    }
}

/// Several leases, each on its own handle of one store (`open` gives one
/// per instance), ticking in random interleavings over simulated time, each
/// with a clock off by up to ±900 ms; one dies (stops ticking) or stops
/// cleanly. At every instant at most one counts itself leader, terms never
/// go back, and a live instance leads within `LEASE_TTL_MS + RENEW_EVERY`
/// (plus the lateness and skews simulated) of the leader's death. Each seed
/// runs at a later time with fresh instance ids, so seeds share a store.
#[cfg(test)]
pub(crate) fn simulate_interleavings(open: impl Fn() -> Store, seeds: std::ops::Range<u64>) {
    use rand::{Rng, SeedableRng};
    let renew = RENEW_EVERY.as_millis() as i64;
    for seed in seeds {
        let base = 1_000_000 + seed as i64 * 1_000_000;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = rng.gen_range(2..=3);
        let leases: Vec<Lease> = (0..n)
            .map(|i| Lease::new(open(), format!("s{seed}i{i}")))
            .collect();
        let skew: Vec<i64> = (0..n).map(|_| rng.gen_range(-900..=900)).collect();
        // When each stops ticking (dies, or releases first), if ever.
        let mut stop_at: Vec<Option<(i64, bool)>> = vec![None; n];
        let victim = rng.gen_range(0..n);
        stop_at[victim] = Some((rng.gen_range(1_000..40_000), rng.gen_bool(0.3)));
        let mut next: Vec<i64> = (0..n).map(|_| rng.gen_range(0..renew)).collect();
        let mut stopped = vec![false; n];
        let mut last_term = 0u64;
        let mut leaderless_since: Option<i64> = Some(0);
        let mut t = 0i64;
        let clock = |i: usize, t: i64| base + t + skew[i];
        while t < 60_000 {
            t += rng.gen_range(1..400);
            for i in 0..n {
                if stopped[i] {
                    continue;
                }
                if let Some((at, clean)) = stop_at[i] {
                    if t >= at {
                        stopped[i] = true;
                        if clean {
                            leases[i].release(clock(i, t)).unwrap();
                        }
                        continue;
                    }
                }
                // Ticks come every RENEW_EVERY, sometimes late by up to
                // a second (a busy runtime), in random order with others.
                if t >= next[i] {
                    let role = leases[i].tick(clock(i, t)).unwrap();
                    if let Role::Leader { term } = role {
                        assert!(term >= last_term, "seed {seed}: term went back");
                        last_term = term;
                    }
                    next[i] = t + renew + rng.gen_range(0..=1_000);
                }
            }
            let leaders: Vec<usize> = (0..n)
                .filter(|&i| !stopped[i] && leases[i].role_at(clock(i, t)).is_leader())
                .collect();
            // A dead instance may still believe it leads: count it too
            // (it would keep acting if it were only stalled).
            let believers: Vec<usize> = (0..n)
                .filter(|&i| leases[i].role_at(clock(i, t)).is_leader())
                .collect();
            assert!(
                believers.len() <= 1,
                "seed {seed}: {believers:?} lead at {t}"
            );
            match (leaders.is_empty(), leaderless_since) {
                (true, None) => leaderless_since = Some(t),
                (false, _) => leaderless_since = None,
                (true, Some(since)) => {
                    // Takeover bound: expiry (≤ TTL after the last
                    // renewal), then the next late tick, plus skews.
                    let bound = LEASE_TTL_MS + renew + 1_000 + 1_800 + 400;
                    assert!(
                        t - since <= bound,
                        "seed {seed}: no leader from {since} to {t}"
                    );
                }
            }
        }
        assert!(last_term >= 1, "seed {seed}: nobody ever led");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn first_takes_renews_and_others_follow() {
        let (_d, s) = store();
        let a = Lease::new(s.clone(), "a");
        let b = Lease::new(s.clone(), "b");
        assert_eq!(a.tick(1_000).unwrap(), Role::Leader { term: 1 });
        assert_eq!(
            b.tick(1_001).unwrap(),
            Role::Follower {
                leader: Some("a".into())
            }
        );
        // Renewed: same term, later expiry.
        assert_eq!(a.tick(3_000).unwrap(), Role::Leader { term: 1 });
        assert_eq!(
            current(&s).unwrap().unwrap().expires_ms,
            3_000 + LEASE_TTL_MS
        );
        // Still held just before expiry, taken at it with the next term.
        assert!(!b.tick(3_000 + LEASE_TTL_MS - 1).unwrap().is_leader());
        assert_eq!(
            b.tick(3_000 + LEASE_TTL_MS).unwrap(),
            Role::Leader { term: 2 }
        );
        // The old holder finds out at its next tick.
        assert_eq!(
            a.tick(3_000 + LEASE_TTL_MS + 1).unwrap(),
            Role::Follower {
                leader: Some("b".into())
            }
        );
        assert!(!a.role_at(3_000 + LEASE_TTL_MS + 1).is_leader());
    }

    #[test]
    fn release_hands_over_at_the_next_tick() {
        let (_d, s) = store();
        let a = Lease::new(s.clone(), "a");
        let b = Lease::new(s.clone(), "b");
        assert!(a.tick(10_000).unwrap().is_leader());
        assert!(!b.release(10_001).unwrap(), "b holds nothing to release");
        assert!(!b.tick(10_500).unwrap().is_leader());
        assert!(a.release(11_000).unwrap());
        assert!(!a.role_at(11_000).is_leader());
        assert_eq!(b.tick(11_001).unwrap(), Role::Leader { term: 2 });
        // Released twice: nothing left to give up.
        assert!(!a.release(11_002).unwrap());
        assert!(!a.tick(11_003).unwrap().is_leader());
    }

    #[test]
    fn an_exclusive_store_takes_a_dead_holders_lease_at_once() {
        let (_d, s) = store();
        // What a killed process left: a lease valid for 10 more seconds.
        assert!(Lease::new(s.clone(), "host-1")
            .tick(5_000)
            .unwrap()
            .is_leader());
        let restarted = Lease::exclusive(s.clone(), "host-2");
        assert_eq!(restarted.tick(5_001).unwrap(), Role::Leader { term: 2 });
        // A shared store waits for expiry instead.
        let (_d2, s2) = store();
        assert!(Lease::new(s2.clone(), "host-1")
            .tick(5_000)
            .unwrap()
            .is_leader());
        assert!(!Lease::new(s2, "host-2").tick(5_001).unwrap().is_leader());
    }

    #[test]
    fn a_record_that_does_not_decode_is_replaced() {
        let (_d, s) = store();
        s.meta().insert(LEADER_KEY, b"\x09junk").unwrap();
        let a = Lease::new(s.clone(), "a");
        assert_eq!(a.tick(1).unwrap(), Role::Leader { term: 1 });
        assert_eq!(current(&s).unwrap().unwrap().holder, "a");
    }

    #[test]
    fn role_at_ends_before_the_lease_does() {
        let (_d, s) = store();
        let a = Lease::new(s.clone(), "a");
        assert!(a.tick(0).unwrap().is_leader());
        assert_eq!(a.role_at(1), Role::Leader { term: 1 });
        assert!(a.role_at(LEASE_TTL_MS - SKEW_MARGIN_MS - 1).is_leader());
        assert!(!a.role_at(LEASE_TTL_MS - SKEW_MARGIN_MS).is_leader());
    }

    #[test]
    fn never_two_leaders_at_one_instant() {
        let (_d, s) = store();
        simulate_interleavings(|| s.clone(), 0..200);
    }
}

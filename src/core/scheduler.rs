//! Pure scheduling decisions: retry backoff with jitter, delay-bucket choice,
//! deadlines, and per-source rate limiting. No I/O and no clock of its own:
//! every function takes the time it decides for, so it is tested with
//! explicit or paused time.
//!
//! Invariants: a backoff delay lies in `[min, max]` after jitter; a chosen
//! bucket never overshoots the due time (a message may go round several
//! buckets, each one shorter than what remains); a rate limiter never grants
//! more than `burst` at once nor more than `rate × elapsed` over time.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;

use crate::core::code::AgencyCode;
use crate::core::policy::{Backoff, Rate};

/// TTLs of the delay buckets, shortest first. Each is a queue
/// `<prefix>delay.<name>` whose messages dead-letter to the release queue.
pub const BUCKETS: [(&str, Duration); 8] = [
    ("1s", Duration::from_secs(1)),
    ("5s", Duration::from_secs(5)),
    ("30s", Duration::from_secs(30)),
    ("2m", Duration::from_secs(120)),
    ("10m", Duration::from_secs(600)),
    ("1h", Duration::from_secs(3600)),
    ("6h", Duration::from_secs(6 * 3600)),
    ("1d", Duration::from_secs(86400)),
];

/// A message whose due time is this close is delivered rather than deferred again.
pub const DUE_SLACK: Duration = Duration::from_millis(500);

/// The delay before retry number `attempt` (1 = first retry), without jitter.
pub fn backoff_base(policy: &Backoff, attempt: u32) -> Duration {
    let exp = policy.factor.powi(attempt.saturating_sub(1).min(60) as i32);
    let secs = (policy.min.as_secs_f64() * exp).min(policy.max.as_secs_f64());
    Duration::from_secs_f64(secs)
}

/// The delay before retry `attempt`, with jitter drawn from `rng`, clamped to `[min, max]`.
pub fn backoff(policy: &Backoff, attempt: u32, rng: &mut impl Rng) -> Duration {
    let base = backoff_base(policy, attempt).as_secs_f64();
    let spread = if policy.jitter > 0.0 {
        rng.gen_range(-policy.jitter..=policy.jitter)
    } else {
        0.0
    };
    let secs = (base * (1.0 + spread)).clamp(policy.min.as_secs_f64(), policy.max.as_secs_f64());
    Duration::from_secs_f64(secs)
}

/// Where a message due in `remaining` goes next: `None` when it is due now,
/// else the index into [`BUCKETS`] of the longest bucket not longer than `remaining`.
pub fn bucket_for(remaining: Duration) -> Option<usize> {
    if remaining <= DUE_SLACK {
        return None;
    }
    Some(
        BUCKETS
            .iter()
            .rposition(|(_, ttl)| *ttl <= remaining)
            .unwrap_or(0),
    )
}

/// Whether a deadline (ms) has passed at `now_ms`.
pub fn expired(deliver_by_ms: Option<i64>, now_ms: i64) -> bool {
    deliver_by_ms.is_some_and(|d| d <= now_ms)
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// Per-source token buckets.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<AgencyCode, Bucket>,
}

impl RateLimiter {
    /// An empty limiter (every source starts with a full bucket).
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one token for `source` at `now_ms` under `rate`; false when over the rate.
    pub fn allow(&mut self, source: &AgencyCode, rate: Rate, now_ms: i64) -> bool {
        let burst = f64::from(rate.burst);
        let b = self.buckets.entry(source.clone()).or_insert(Bucket {
            tokens: burst,
            at_ms: now_ms,
        });
        let elapsed = (now_ms - b.at_ms).max(0) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * rate.per_s).min(burst);
        b.at_ms = now_ms.max(b.at_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> Backoff {
        Backoff {
            min: Duration::from_secs(5),
            max: Duration::from_secs(600),
            factor: 2.0,
            jitter: 0.25,
        }
    }

    #[test]
    fn backoff_curve_doubles_and_caps() {
        let p = policy();
        let curve: Vec<u64> = (1..=10).map(|a| backoff_base(&p, a).as_secs()).collect();
        assert_eq!(curve, vec![5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
    }

    #[test]
    fn jitter_stays_in_bounds_and_spreads() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let d = backoff(&p, 3, &mut rng);
            assert!(
                d >= Duration::from_secs(15) && d <= Duration::from_secs(25),
                "{d:?}"
            );
            seen.insert(d.as_millis() / 100);
        }
        assert!(
            seen.len() > 50,
            "1,000 retries spread over many slots, not one burst"
        );
        for _ in 0..100 {
            assert!(backoff(&p, 1, &mut rng) >= p.min);
            assert!(backoff(&p, 40, &mut rng) <= p.max);
        }
    }

    #[test]
    fn bucket_choice_never_overshoots() {
        assert_eq!(bucket_for(Duration::from_millis(200)), None);
        assert_eq!(bucket_for(Duration::from_millis(800)), Some(0));
        assert_eq!(bucket_for(Duration::from_secs(4)), Some(0));
        assert_eq!(bucket_for(Duration::from_secs(5)), Some(1));
        assert_eq!(bucket_for(Duration::from_secs(3 * 3600)), Some(5));
        assert_eq!(bucket_for(Duration::from_secs(10 * 86400)), Some(7));
        // Walking the buckets reaches the due time without passing it.
        for total in [1_700u64, 61_000, 7_300_000, 90_000_000] {
            let mut left = Duration::from_millis(total);
            let mut hops = 0;
            while let Some(i) = bucket_for(left) {
                assert!(BUCKETS[i].1 <= left.max(BUCKETS[0].1));
                left = left.saturating_sub(BUCKETS[i].1);
                hops += 1;
            }
            assert!(
                left <= DUE_SLACK && hops < 40,
                "{total}: {left:?} after {hops}"
            );
        }
    }

    #[test]
    fn deadlines() {
        assert!(!expired(None, 10));
        assert!(!expired(Some(11), 10));
        assert!(expired(Some(10), 10));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_grants_burst_then_rate() {
        let mut l = RateLimiter::new();
        let a = AgencyCode::parse("A").unwrap();
        let rate = Rate {
            per_s: 10.0,
            burst: 5,
        };
        let start = tokio::time::Instant::now();
        let now = |s: tokio::time::Instant| (s.elapsed().as_millis()) as i64;
        let granted = (0..20).filter(|_| l.allow(&a, rate, now(start))).count();
        assert_eq!(granted, 5, "burst");
        tokio::time::advance(Duration::from_millis(1000)).await;
        let granted = (0..20).filter(|_| l.allow(&a, rate, now(start))).count();
        assert_eq!(granted, 5, "refill is capped at burst");
        tokio::time::advance(Duration::from_millis(300)).await;
        let granted = (0..20).filter(|_| l.allow(&a, rate, now(start))).count();
        assert_eq!(granted, 3, "10/s for 0.3 s");
        let b = AgencyCode::parse("B").unwrap();
        assert!(
            l.allow(&b, rate, now(start)),
            "other sources have their own bucket"
        );
    }
}

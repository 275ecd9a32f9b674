//! Pure scheduling decisions: retry backoff with jitter, delay-bucket choice,
//! deadlines, and per-source rate limiting. No I/O and no clock of its own:
//! every function takes the time it decides for, so it is tested with
//! explicit or paused time.
//!
//! Invariants: a backoff delay lies in `[min, max]` after jitter; a chosen
//! bucket never overshoots the due time (a message may go round several
//! buckets, each one shorter than what remains); a rate limiter never grants
//! more than `burst` at once nor more than `rate × elapsed` over time, where
//! time is the hub's: an envelope counts at [`measured_at`], never later than
//! its arrival, never earlier than the last time its source's queue was seen
//! empty, so between two such times a source gets at most `burst + rate ×
//! elapsed` whatever `lgsp-time` it writes.

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

/// When the hub counts an envelope against its source's rate: the earliest
/// time it can have reached the broker. That is its `lgsp-time`, but never
/// later than `now_ms` (when the hub handles it: a forward-dated time counts
/// as now) and never earlier than `drained_ms`, the last time the hub saw the
/// source's ingress queue empty (nothing waiting behind that can have been
/// published before it). A backlog that waited in the broker while the hub
/// was away is so measured on its signing times, and a source whose queue
/// keeps being drained is measured on arrival.
pub fn measured_at(signed_ms: i64, now_ms: i64, drained_ms: Option<i64>) -> i64 {
    let t = signed_ms.min(now_ms);
    match drained_ms {
        Some(d) => t.max(d.min(now_ms)),
        None => t,
    }
}

/// Per-source token buckets, each measured at [`measured_at`].
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<AgencyCode, Bucket>,
    drained: HashMap<AgencyCode, i64>,
}

impl RateLimiter {
    /// An empty limiter (every source starts with a full bucket).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `source`'s ingress queue was seen empty at `at_ms`
    /// (hub time): whatever it sends later was published after that.
    pub fn drained(&mut self, source: &AgencyCode, at_ms: i64) {
        let d = self.drained.entry(source.clone()).or_insert(at_ms);
        *d = (*d).max(at_ms);
    }

    /// Takes one token for `source`'s envelope signed at `signed_ms` and
    /// handled at `now_ms` under `rate`; false when over the rate.
    pub fn allow(&mut self, source: &AgencyCode, rate: Rate, signed_ms: i64, now_ms: i64) -> bool {
        let at = measured_at(signed_ms, now_ms, self.drained.get(source).copied());
        self.take(source, rate, at)
    }

    /// Takes one token for `source` at `at_ms` (already measured) under `rate`.
    pub fn take(&mut self, source: &AgencyCode, rate: Rate, at_ms: i64) -> bool {
        let burst = f64::from(rate.burst);
        let b = self.buckets.entry(source.clone()).or_insert(Bucket {
            tokens: burst,
            at_ms,
        });
        let elapsed = (at_ms - b.at_ms).max(0) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * rate.per_s).min(burst);
        b.at_ms = at_ms.max(b.at_ms);
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
        let t = now(start);
        let granted = (0..20).filter(|_| l.allow(&a, rate, t, t)).count();
        assert_eq!(granted, 5, "burst");
        tokio::time::advance(Duration::from_millis(1000)).await;
        let t = now(start);
        let granted = (0..20).filter(|_| l.allow(&a, rate, t, t)).count();
        assert_eq!(granted, 5, "refill is capped at burst");
        tokio::time::advance(Duration::from_millis(300)).await;
        let t = now(start);
        let granted = (0..20).filter(|_| l.allow(&a, rate, t, t)).count();
        assert_eq!(granted, 3, "10/s for 0.3 s");
        let b = AgencyCode::parse("B").unwrap();
        assert!(
            l.allow(&b, rate, t, t),
            "other sources have their own bucket"
        );
    }

    #[test]
    fn measured_on_the_earliest_possible_arrival() {
        // Forward-dated: counts as now.
        assert_eq!(measured_at(5_000, 1_000, None), 1_000);
        assert_eq!(measured_at(5_000, 1_000, Some(900)), 1_000);
        // Signed earlier: its signing time, unless the queue was seen empty since.
        assert_eq!(measured_at(400, 1_000, None), 400);
        assert_eq!(measured_at(400, 1_000, Some(300)), 400);
        assert_eq!(measured_at(400, 1_000, Some(700)), 700);
        // A drained time after now (clock oddities) never pushes past now.
        assert_eq!(measured_at(400, 1_000, Some(2_000)), 1_000);
    }

    const RATE: Rate = Rate {
        per_s: 50.0,
        burst: 100,
    };

    /// The flood: every envelope handled as fast as the hub can (here
    /// 1,000 a second of hub time), `lgsp-time` moved 1 s forward every 50
    /// envelopes (the sustained rate), queue kept drained (seen empty half a
    /// second before each arrival).
    #[tokio::test(start_paused = true)]
    async fn a_forward_dated_flood_is_measured_on_arrival() {
        let mut l = RateLimiter::new();
        let a = AgencyCode::parse("A").unwrap();
        let start = tokio::time::Instant::now();
        let base = 1_700_000_000_000i64;
        let mut granted = 0;
        for i in 0..2_000i64 {
            let now = base + start.elapsed().as_millis() as i64;
            l.drained(&a, now - 500);
            if l.allow(&a, RATE, base + (i / 50) * 1_000, now) {
                granted += 1;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        // 2 s of hub time: burst 100 + 50/s × 2 s.
        assert!((190..=201).contains(&granted), "{granted} of 2000");
    }

    /// Backdating buys nothing once the queue was seen empty.
    #[tokio::test(start_paused = true)]
    async fn a_backdated_flood_is_measured_from_the_drained_time() {
        let mut l = RateLimiter::new();
        let a = AgencyCode::parse("A").unwrap();
        let now = 1_700_000_300_000i64;
        l.drained(&a, now - 100);
        // Signing times spread over the 300 s before: 50/s on paper.
        let granted = (0..15_000i64)
            .filter(|i| l.allow(&a, RATE, now - 300_000 + i * 20, now))
            .count();
        // Burst 100 + 50/s × 0.1 s, not 50/s × 300 s.
        assert!((100..=105).contains(&granted), "{granted}");
    }

    /// A backlog signed at the sustained rate while the hub was away (its
    /// queue not seen empty since) drains at once and is accepted whole; the
    /// same envelopes measured on arrival would be mostly refused.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_drained_fast_is_accepted() {
        let mut l = RateLimiter::new();
        let a = AgencyCode::parse("A").unwrap();
        let now = 1_700_000_300_000i64;
        l.drained(&a, now - 120_000);
        // 2 minutes of envelopes at 40/s, signed during the outage.
        let granted = (0..4_800i64)
            .filter(|i| l.allow(&a, RATE, now - 120_000 + i * 25, now))
            .count();
        assert_eq!(granted, 4_800);
        let mut strict = RateLimiter::new();
        let on_arrival = (0..4_800).filter(|_| strict.take(&a, RATE, now)).count();
        assert_eq!(on_arrival, 100);
        // Then it is measured on arrival again.
        l.drained(&a, now);
        let more = (0..200)
            .filter(|_| l.allow(&a, RATE, now + 60_000, now))
            .count();
        assert!(more <= 101, "{more}");
    }
}

//! Clocks and latency statistics: one monotonic clock for the whole run
//! (send times travel in a header and are read back in the same process),
//! and percentiles computed by sorting the raw samples.

use std::sync::OnceLock;
use std::time::Instant;

use serde::Serialize;

/// The instant every `now_ns` value counts from.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Starts the run clock (idempotent).
pub fn start_clock() {
    EPOCH.get_or_init(Instant::now);
}

/// Nanoseconds since the run started (monotonic).
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Seconds since the run started, for reports.
pub fn ns_to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Latency percentiles of one set of samples, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Pct {
    /// Number of samples.
    pub count: usize,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

/// Percentiles of `lat_ns` (sorted in place); `None` when empty.
pub fn percentiles(lat_ns: &mut [u64]) -> Option<Pct> {
    if lat_ns.is_empty() {
        return None;
    }
    lat_ns.sort_unstable();
    let n = lat_ns.len();
    let at = |q: f64| {
        // Nearest-rank percentile.
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        lat_ns[rank - 1] as f64 / 1e6
    };
    let sum: u128 = lat_ns.iter().map(|&v| u128::from(v)).sum();
    Some(Pct {
        count: n,
        mean_ms: round3(sum as f64 / n as f64 / 1e6),
        p50_ms: round3(at(0.50)),
        p95_ms: round3(at(0.95)),
        p99_ms: round3(at(0.99)),
        max_ms: round3(lat_ns[n - 1] as f64 / 1e6),
    })
}

/// Rounds to three decimals (keeps the JSON readable).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Rounds to one decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        let p = percentiles(&mut v).unwrap();
        assert_eq!(p.p50_ms, 50.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        assert!(percentiles(&mut []).is_none());
    }
}

//! Whether ingress keeps up: per source queue, since when messages have been
//! received from it with none handled.
//!
//! Definition (the `/healthz` `ingress` check): a source is **stuck** when
//! its consumer received a message at time `T`, no message from that source
//! was handled (acked: accepted, refused, absorbed as a duplicate, relayed)
//! since `T`, and `T` is more than [`STALL`] ago. A message that fails and
//! comes again does not move `T`; any one handled clears it.
//!
//! Invariants: a source's entry is dropped when its consumer stops (the
//! broker check covers a lost link), so the table holds only sources being
//! consumed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::core::code::AgencyCode;

/// How long received messages may wait with none handled before ingress counts as stuck.
pub const STALL: Duration = Duration::from_secs(60);

/// Per-source progress; shared by the consumers and `/healthz`.
#[derive(Debug, Default)]
pub struct Progress {
    waiting_since: Mutex<HashMap<AgencyCode, i64>>,
}

impl Progress {
    /// Nothing received.
    pub fn new() -> Self {
        Self::default()
    }

    /// A message from `source`'s queue was delivered at `now_ms`.
    pub fn received(&self, source: &AgencyCode, now_ms: i64) {
        self.lock().entry(source.clone()).or_insert(now_ms);
    }

    /// A message from `source`'s queue was handled (it will be acked).
    pub fn handled(&self, source: &AgencyCode) {
        self.lock().remove(source);
    }

    /// `source`'s consumer stopped.
    pub fn forget(&self, source: &AgencyCode) {
        self.lock().remove(source);
    }

    /// The stuck sources at `now_ms`, with the time since which nothing
    /// they sent was handled (oldest first).
    pub fn stuck(&self, now_ms: i64) -> Vec<(AgencyCode, i64)> {
        let stall = STALL.as_millis() as i64;
        let mut v: Vec<(AgencyCode, i64)> = self
            .lock()
            .iter()
            .filter(|(_, since)| now_ms - **since > stall)
            .map(|(c, s)| (c.clone(), *s))
            .collect();
        v.sort_by_key(|(c, s)| (*s, c.to_string()));
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgencyCode, i64>> {
        self.waiting_since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_only_after_the_stall_with_nothing_handled() {
        let p = Progress::new();
        let a = AgencyCode::parse("000.00.00.A01").unwrap();
        let stall = STALL.as_millis() as i64;
        p.received(&a, 1_000);
        p.received(&a, 5_000); // a redelivery does not move the start
        assert!(p.stuck(1_000 + stall).is_empty());
        assert_eq!(p.stuck(1_001 + stall), vec![(a.clone(), 1_000)]);
        p.handled(&a);
        assert!(p.stuck(10 * stall).is_empty());
        p.received(&a, 10 * stall);
        p.forget(&a);
        assert!(p.stuck(20 * stall).is_empty());
    }
}

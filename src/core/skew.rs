//! The clock-skew rule: is a message's `lgsp-time` believable?
//!
//! A message waiting in its source's ingress queue (a hub outage, a stall, a
//! backlog) is judged against the time it could first have been seen, not
//! against the time it is handled: the hub knows when the queue was last
//! seen empty (`seen_empty_ms`, before the message was delivered), and a
//! message in the queue now was published after that. So, with `skew` the
//! policy's `clock_skew`:
//!
//! - `lgsp-time > now + skew` is refused (a clock ahead);
//! - `lgsp-time < floor - skew` is refused (a clock behind), where
//!   `floor = min(seen_empty_ms, now)`, or `now` when the queue was never
//!   seen empty (unknown: the rule is then the plain `|lgsp-time - now| ≤ skew`).
//!
//! When the hub keeps up, the queue is seen empty every half second, so the
//! floor is within a second of `now` and a sender whose clock is off is
//! refused as before; a backlog of any age is accepted as long as it was
//! signed at most `skew` before the queue was last empty.
//!
//! Replays: a nonce is remembered until `lgsp-time + 2 × skew` and an entry
//! counts as expired only once that is at or before the *floor* of the
//! message being checked (never `now`): a message the rule accepts has
//! `floor ≤ lgsp-time + skew`, so the entry of an earlier use of its nonce
//! is still live. The sweep removes an entry only when its expiry is before
//! the floor of its key's source (persisted), for the same reason.

/// Which way the clock is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Off {
    /// Signed more than `skew` before the floor.
    Behind {
        /// The floor it was judged against.
        floor_ms: i64,
    },
    /// Signed more than `skew` after hub time.
    Ahead,
}

/// The time a message could first have been seen: the last time its queue
/// was seen empty before it was delivered, never after `now`; `now` when
/// that is unknown.
pub fn floor(now_ms: i64, seen_empty_ms: Option<i64>) -> i64 {
    seen_empty_ms.map_or(now_ms, |d| d.min(now_ms))
}

/// Judges `signed_ms` (the message's `lgsp-time`) at `now_ms`.
pub fn judge(
    signed_ms: i64,
    now_ms: i64,
    seen_empty_ms: Option<i64>,
    skew_ms: i64,
) -> Result<(), Off> {
    if signed_ms > now_ms.saturating_add(skew_ms) {
        return Err(Off::Ahead);
    }
    let floor_ms = floor(now_ms, seen_empty_ms);
    if signed_ms < floor_ms.saturating_sub(skew_ms) {
        return Err(Off::Behind { floor_ms });
    }
    Ok(())
}

/// Until when a nonce signed at `signed_ms` is remembered.
pub fn nonce_expiry(signed_ms: i64, skew_ms: i64) -> i64 {
    signed_ms.saturating_add(skew_ms.saturating_mul(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKEW: i64 = 300_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn without_a_drained_time_the_rule_is_plain_skew() {
        let now = 10 * HOUR;
        assert_eq!(judge(now - SKEW, now, None, SKEW), Ok(()));
        assert_eq!(judge(now + SKEW, now, None, SKEW), Ok(()));
        assert_eq!(
            judge(now - SKEW - 1, now, None, SKEW),
            Err(Off::Behind { floor_ms: now })
        );
        assert_eq!(judge(now + SKEW + 1, now, None, SKEW), Err(Off::Ahead));
    }

    #[test]
    fn a_backlog_is_judged_from_when_the_queue_was_last_empty() {
        let now = 10 * HOUR;
        let drained = now - 3 * HOUR;
        // Signed hours ago, after the queue was last seen empty: accepted.
        assert_eq!(judge(drained + 1, now, Some(drained), SKEW), Ok(()));
        assert_eq!(judge(drained - SKEW, now, Some(drained), SKEW), Ok(()));
        // Older than the floor minus the skew: a clock behind.
        assert_eq!(
            judge(drained - SKEW - 1, now, Some(drained), SKEW),
            Err(Off::Behind { floor_ms: drained })
        );
        // The future is judged against now, whatever the floor.
        assert_eq!(
            judge(now + SKEW + 1, now, Some(drained), SKEW),
            Err(Off::Ahead)
        );
        // A drained time after now (clock oddities) never raises the floor past now.
        assert_eq!(floor(now, Some(now + HOUR)), now);
    }

    #[test]
    fn an_accepted_message_finds_its_nonce_entry_still_live() {
        // Accepted ⇒ floor ≤ signed + skew < expiry.
        for (signed, drained) in [
            (0, Some(SKEW)),
            (5 * HOUR, Some(5 * HOUR + SKEW)),
            (0, None),
        ] {
            let now = 12 * HOUR;
            let f = floor(now, drained.or(Some(signed + SKEW)));
            if judge(signed, now, Some(f), SKEW).is_ok() {
                assert!(f < nonce_expiry(signed, SKEW));
            }
        }
    }
}

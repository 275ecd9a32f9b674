//! A condition that can hold for a long time (the store cannot write, ingress
//! is stuck, the hub is unhealthy) said in the log without flooding it: one
//! warning when it starts, a reminder at most every [`REMIND`] with the number
//! of repeats kept quiet since the last line, one line when it clears.
//!
//! Invariants: pure bookkeeping (the caller logs what [`Alarm::raise`] and
//! [`Alarm::clear`] return, with its own fields); time is passed in, so the
//! rules are unit-tested without a clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a raised alarm stays quiet.
pub const REMIND: Duration = Duration::from_secs(30);

/// What the caller should log for one occurrence of the condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Say {
    /// It just started: warn.
    Started,
    /// Still there: remind, with the occurrences not logged since the last line.
    Reminder {
        /// Occurrences kept quiet since the last line.
        suppressed: u64,
        /// How long it has held.
        lasting: Duration,
    },
    /// Said recently: nothing to log.
    Quiet,
}

#[derive(Debug, Default)]
struct State {
    since: Option<Instant>,
    last_said: Option<Instant>,
    suppressed: u64,
}

/// One condition's log state.
#[derive(Debug, Default)]
pub struct Alarm {
    state: Mutex<State>,
}

impl Alarm {
    /// Not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// The condition holds at `now`.
    pub fn raise(&self, now: Instant) -> Say {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(since) = s.since else {
            s.since = Some(now);
            s.last_said = Some(now);
            s.suppressed = 0;
            return Say::Started;
        };
        match s.last_said {
            Some(last) if now.saturating_duration_since(last) < REMIND => {
                s.suppressed += 1;
                Say::Quiet
            }
            _ => {
                let suppressed = std::mem::take(&mut s.suppressed);
                s.last_said = Some(now);
                Say::Reminder {
                    suppressed,
                    lasting: now.saturating_duration_since(since),
                }
            }
        }
    }

    /// The condition no longer holds at `now`: how long it held, if it was raised.
    pub fn clear(&self, now: Instant) -> Option<Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let since = s.since.take()?;
        s.last_said = None;
        s.suppressed = 0;
        Some(now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_reminds_with_a_count_and_clears_once() {
        let a = Alarm::new();
        let t0 = Instant::now();
        assert_eq!(a.clear(t0), None, "nothing to clear");
        assert_eq!(a.raise(t0), Say::Started);
        for i in 1..=250 {
            assert_eq!(a.raise(t0 + Duration::from_millis(i * 4)), Say::Quiet);
        }
        assert_eq!(
            a.raise(t0 + REMIND),
            Say::Reminder {
                suppressed: 250,
                lasting: REMIND
            }
        );
        assert_eq!(a.raise(t0 + REMIND + Duration::from_secs(1)), Say::Quiet);
        assert_eq!(a.clear(t0 + REMIND * 2), Some(REMIND * 2));
        assert_eq!(a.clear(t0 + REMIND * 3), None);
        assert_eq!(a.raise(t0 + REMIND * 3), Say::Started);
    }
}

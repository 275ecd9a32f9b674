//! Presence: whether each agency's system is online, as pure decision logic.
//!
//! Inputs are observations — the consumer count of an agency's inbox from a
//! broker poll, whether the operator enabled it, signed heartbeats — each with
//! the hub's time. Outputs are [`Transition`]s (to store as connection
//! history) and, through [`due`], the delay warnings and bounces an undelivered
//! envelope has become due for. No I/O happens here; the task that polls the
//! broker, writes sled and publishes notices lives in
//! the presence task of `truc serve`.
//!
//! Invariants:
//! - an agency is [`State::Disabled`] while the operator disabled it, whatever
//!   the signals say;
//! - otherwise it is [`State::Online`] while its inbox has a consumer or its
//!   last `online` heartbeat is younger than the heartbeat window, except that
//!   a signed `offline` heartbeat holds it offline until a fresh signal: an
//!   `online` heartbeat, or a consumer seen after a poll saw none;
//! - a transition is produced only when the state changes (the first
//!   observation of an agency is one), and `since_ms` is the time of the last
//!   transition, kept across restarts through [`Tracker::restore`];
//! - an envelope's offline clock starts at the later of the destination's
//!   last going offline and the envelope's queueing: time offline before the
//!   envelope existed does not count, and any online period resets it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::code::AgencyCode;
use crate::core::reason::Reason;

/// An agency's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// A consumer on its inbox, or a recent `online` heartbeat.
    Online,
    /// Neither.
    Offline,
    /// An operator disabled the agency.
    Disabled,
}

impl State {
    /// The token shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Disabled => "disabled",
        }
    }
}

/// Why an agency entered its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// Its inbox has a consumer.
    Consumer,
    /// An `online` heartbeat arrived.
    Heartbeat,
    /// No consumer and no heartbeat within the window.
    NoConsumer,
    /// The last `online` heartbeat became older than the window.
    HeartbeatExpired,
    /// A signed `offline` heartbeat arrived.
    HeartbeatOffline,
    /// The operator disabled the agency.
    Disabled,
}

impl Cause {
    /// The token shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consumer => "consumer",
            Self::Heartbeat => "heartbeat",
            Self::NoConsumer => "no-consumer",
            Self::HeartbeatExpired => "heartbeat-expired",
            Self::HeartbeatOffline => "heartbeat-offline",
            Self::Disabled => "disabled",
        }
    }
}

/// What is known about one agency (persisted, so restarts keep `since_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgencyPresence {
    /// Current state.
    pub state: State,
    /// When it entered the state (ms).
    pub since_ms: i64,
    /// Why.
    pub cause: Cause,
    /// Whether the operator has it enabled (last poll).
    pub enabled: bool,
    /// Consumers on its inbox at the last poll.
    pub consumers: u32,
    /// When its last `online` heartbeat arrived (hub time, ms).
    pub heartbeat_ms: Option<i64>,
    /// A signed `offline` heartbeat holds it offline until a fresh signal.
    pub declared_offline: bool,
}

/// One change of state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The agency.
    pub code: AgencyCode,
    /// The state left (`None` at the first observation).
    pub from: Option<State>,
    /// The state entered.
    pub to: State,
    /// When (ms).
    pub at_ms: i64,
    /// Why.
    pub cause: Cause,
}

/// One observation of an agency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// A broker poll: whether the operator has it enabled, and its inbox's
    /// consumer count (`None`: the broker did not answer, keep the last count;
    /// a missing inbox counts as 0).
    Poll {
        /// `Agency.enabled`.
        enabled: bool,
        /// Consumers on its inbox.
        consumers: Option<u32>,
    },
    /// A valid signed heartbeat.
    Heartbeat {
        /// `lgsp-state: online`.
        online: bool,
    },
}

/// Presence of every agency seen.
#[derive(Debug, Clone)]
pub struct Tracker {
    window_ms: i64,
    agencies: BTreeMap<AgencyCode, AgencyPresence>,
}

impl Tracker {
    /// A tracker with heartbeats valid for `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window_ms: window.as_millis() as i64,
            agencies: BTreeMap::new(),
        }
    }

    /// Changes the heartbeat window (policy reload).
    pub fn set_window(&mut self, window: Duration) {
        self.window_ms = window.as_millis() as i64;
    }

    /// Restores what was persisted before a restart.
    pub fn restore(&mut self, code: AgencyCode, p: AgencyPresence) {
        self.agencies.insert(code, p);
    }

    #[cfg(test)]
    /// What is known about `code`.
    pub fn get(&self, code: &AgencyCode) -> Option<&AgencyPresence> {
        self.agencies.get(code)
    }

    /// Every agency known, by code.
    pub fn iter(&self) -> impl Iterator<Item = (&AgencyCode, &AgencyPresence)> {
        self.agencies.iter()
    }

    /// How many agencies are online.
    pub fn online(&self) -> usize {
        self.agencies
            .values()
            .filter(|p| p.state == State::Online)
            .count()
    }

    /// Forgets agencies for which `keep` is false (removed from the registry).
    pub fn retain(&mut self, keep: impl Fn(&AgencyCode) -> bool) {
        self.agencies.retain(|c, _| keep(c));
    }

    /// Applies one observation at `now_ms`; returns the transition it caused.
    pub fn observe(
        &mut self,
        code: &AgencyCode,
        obs: Observation,
        now_ms: i64,
    ) -> Option<Transition> {
        let window_ms = self.window_ms;
        let (p, from) = match self.agencies.get_mut(code) {
            Some(p) => {
                let from = Some(p.state);
                (p, from)
            }
            None => {
                let fresh = AgencyPresence {
                    state: State::Offline,
                    since_ms: now_ms,
                    cause: Cause::NoConsumer,
                    enabled: true,
                    consumers: 0,
                    heartbeat_ms: None,
                    declared_offline: false,
                };
                (self.agencies.entry(code.clone()).or_insert(fresh), None)
            }
        };
        // Observations can arrive out of time order (a heartbeat stamped by
        // the router while a slow poll round was running): the state machine's
        // clock never goes back, so history stays in the order it happened.
        let now_ms = now_ms.max(p.since_ms);
        match obs {
            Observation::Poll { enabled, consumers } => {
                p.enabled = enabled;
                if let Some(n) = consumers {
                    if n == 0 {
                        // The declared-offline hold ends once the consumer is gone:
                        // the next consumer seen is a fresh signal.
                        p.declared_offline = false;
                    }
                    p.consumers = n;
                }
            }
            Observation::Heartbeat { online: true } => {
                p.heartbeat_ms = Some(now_ms);
                p.declared_offline = false;
            }
            Observation::Heartbeat { online: false } => {
                p.heartbeat_ms = None;
                p.declared_offline = true;
            }
        }
        settle(code, p, from, window_ms, now_ms)
    }

    /// Re-evaluates every agency at `now_ms` (heartbeat windows running out).
    pub fn expire(&mut self, now_ms: i64) -> Vec<Transition> {
        let window_ms = self.window_ms;
        self.agencies
            .iter_mut()
            .filter_map(|(code, p)| {
                let from = Some(p.state);
                settle(code, p, from, window_ms, now_ms.max(p.since_ms))
            })
            .collect()
    }
}

/// The state `p`'s signals call for at `now_ms`, and why.
fn desired(p: &AgencyPresence, window_ms: i64, now_ms: i64) -> (State, Cause) {
    if !p.enabled {
        return (State::Disabled, Cause::Disabled);
    }
    if p.declared_offline {
        return (State::Offline, Cause::HeartbeatOffline);
    }
    if p.consumers > 0 {
        return (State::Online, Cause::Consumer);
    }
    match p.heartbeat_ms {
        Some(hb) if now_ms - hb < window_ms => (State::Online, Cause::Heartbeat),
        Some(_) => (State::Offline, Cause::HeartbeatExpired),
        None => (State::Offline, Cause::NoConsumer),
    }
}

fn settle(
    code: &AgencyCode,
    p: &mut AgencyPresence,
    from: Option<State>,
    window_ms: i64,
    now_ms: i64,
) -> Option<Transition> {
    let (to, cause) = desired(p, window_ms, now_ms);
    if from == Some(to) {
        // Same state: the cause may be refined (heartbeat → consumer) without a transition.
        p.cause = cause;
        return None;
    }
    p.state = to;
    p.since_ms = now_ms;
    p.cause = cause;
    Some(Transition {
        code: code.clone(),
        from,
        to,
        at_ms: now_ms,
        cause,
    })
}

/// One undelivered envelope waiting on one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// When it was queued for the destination (ms).
    pub queued_at_ms: i64,
    /// Warn the source after the destination has been offline this long.
    pub delay_warning_after: Duration,
    /// Bounce after this long offline (`None`: never for presence reasons).
    pub bounce_after: Option<Duration>,
    /// The delay warning was already sent.
    pub warned: bool,
    /// The bounce was already sent.
    pub bounced: bool,
}

/// A notice an envelope has become due for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// `delay-warning`.
    DelayWarning {
        /// How long the destination has been offline for this envelope.
        offline: Duration,
        /// `destination-offline` or `destination-disabled`.
        reason: Reason,
    },
    /// `bounced`.
    Bounce {
        /// How long the destination has been offline for this envelope.
        offline: Duration,
        /// `destination-offline` or `destination-disabled`.
        reason: Reason,
    },
}

/// The notices `w` is due for at `now_ms`, given what is known of its
/// destination (`None`: not observed yet, so nothing is due). A warning that
/// is due comes before a bounce that is due at the same time; nothing is due
/// twice.
pub fn due(dest: Option<&AgencyPresence>, w: &Waiting, now_ms: i64) -> Vec<Due> {
    let Some(d) = dest else {
        return Vec::new();
    };
    let reason = match d.state {
        State::Online => return Vec::new(),
        State::Offline => Reason::DestinationOffline,
        State::Disabled => Reason::DestinationDisabled,
    };
    let start = d.since_ms.max(w.queued_at_ms);
    let offline = Duration::from_millis((now_ms - start).max(0) as u64);
    let mut out = Vec::new();
    if !w.warned && !w.bounced && offline >= w.delay_warning_after {
        out.push(Due::DelayWarning { offline, reason });
    }
    if !w.bounced && w.bounce_after.is_some_and(|b| offline >= b) {
        out.push(Due::Bounce { offline, reason });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn c(s: &str) -> AgencyCode {
        AgencyCode::parse(s).unwrap()
    }

    fn poll(n: u32) -> Observation {
        Observation::Poll {
            enabled: true,
            consumers: Some(n),
        }
    }

    fn hb(online: bool) -> Observation {
        Observation::Heartbeat { online }
    }

    fn waiting(queued_at_ms: i64, warn_s: u64, bounce_s: Option<u64>) -> Waiting {
        Waiting {
            queued_at_ms,
            delay_warning_after: Duration::from_secs(warn_s),
            bounce_after: bounce_s.map(Duration::from_secs),
            warned: false,
            bounced: false,
        }
    }

    #[test]
    fn first_observation_is_a_transition_then_only_changes_are() {
        let mut t = Tracker::new(Duration::from_secs(90));
        let a = c("000.00.32.H41");
        let tr = t.observe(&a, poll(0), 10 * S).unwrap();
        assert_eq!(
            (tr.from, tr.to, tr.cause),
            (None, State::Offline, Cause::NoConsumer)
        );
        assert_eq!(t.observe(&a, poll(0), 20 * S), None);
        let tr = t.observe(&a, poll(2), 30 * S).unwrap();
        assert_eq!(
            (tr.from, tr.to, tr.cause),
            (Some(State::Offline), State::Online, Cause::Consumer)
        );
        assert_eq!(t.observe(&a, poll(1), 40 * S), None);
        assert_eq!(t.get(&a).unwrap().since_ms, 30 * S);
        let tr = t.observe(&a, poll(0), 50 * S).unwrap();
        assert_eq!((tr.to, tr.at_ms), (State::Offline, 50 * S));
        assert_eq!(t.online(), 0);
    }

    #[test]
    fn flapping_records_every_change_and_resets_the_offline_clock() {
        let mut t = Tracker::new(Duration::from_secs(90));
        let a = c("A1");
        let w = waiting(0, 5, Some(8));
        let mut transitions = Vec::new();
        for i in 0..10i64 {
            let n = (i % 2) as u32; // 0, 1, 0, 1…: never offline 5 s in a row
            transitions.extend(t.observe(&a, poll(n), i * S));
            assert!(due(t.get(&a), &w, i * S + 999).is_empty(), "at {i} s");
        }
        assert_eq!(transitions.len(), 10);
        assert!(transitions.windows(2).all(|w| w[0].to != w[1].to));
        // Online at 9 s; offline again from 10 s.
        t.observe(&a, poll(0), 10 * S);
        assert!(due(t.get(&a), &w, 14 * S).is_empty());
        assert_eq!(
            due(t.get(&a), &w, 15 * S),
            vec![Due::DelayWarning {
                offline: Duration::from_secs(5),
                reason: Reason::DestinationOffline
            }]
        );
    }

    #[test]
    fn heartbeats_keep_online_within_the_window() {
        let mut t = Tracker::new(Duration::from_secs(3));
        let a = c("H37.DN.001");
        t.observe(&a, poll(0), 0);
        let tr = t.observe(&a, hb(true), S).unwrap();
        assert_eq!((tr.to, tr.cause), (State::Online, Cause::Heartbeat));
        assert!(t.expire(3 * S).is_empty());
        assert_eq!(t.observe(&a, hb(true), 3 * S), None, "refreshes");
        assert!(t.expire(5 * S).is_empty());
        let tr = t.expire(6 * S);
        assert_eq!(tr.len(), 1);
        assert_eq!(
            (tr[0].to, tr[0].cause, tr[0].at_ms),
            (State::Offline, Cause::HeartbeatExpired, 6 * S)
        );
        // A poll does not bring it back.
        assert_eq!(t.observe(&a, poll(0), 7 * S), None);
    }

    #[test]
    fn offline_heartbeat_wins_until_a_fresh_signal() {
        let mut t = Tracker::new(Duration::from_secs(90));
        let a = c("A1");
        t.observe(&a, poll(1), 0);
        let tr = t.observe(&a, hb(false), S).unwrap();
        assert_eq!((tr.to, tr.cause), (State::Offline, Cause::HeartbeatOffline));
        // The old consumer lingers: still offline.
        assert_eq!(t.observe(&a, poll(1), 2 * S), None);
        // It goes away, then a new one comes: online again.
        assert_eq!(t.observe(&a, poll(0), 3 * S), None);
        assert_eq!(t.get(&a).unwrap().cause, Cause::NoConsumer);
        let tr = t.observe(&a, poll(1), 4 * S).unwrap();
        assert_eq!((tr.to, tr.cause), (State::Online, Cause::Consumer));
        // Offline heartbeat, then online heartbeat: online at once.
        t.observe(&a, hb(false), 5 * S).unwrap();
        let tr = t.observe(&a, hb(true), 6 * S).unwrap();
        assert_eq!(tr.to, State::Online);
    }

    #[test]
    fn disabled_overrides_signals_and_reenabling_recomputes() {
        let mut t = Tracker::new(Duration::from_secs(90));
        let a = c("A1");
        t.observe(&a, poll(1), 0);
        let off = Observation::Poll {
            enabled: false,
            consumers: Some(1),
        };
        let tr = t.observe(&a, off, S).unwrap();
        assert_eq!((tr.to, tr.cause), (State::Disabled, Cause::Disabled));
        assert_eq!(t.observe(&a, hb(true), 2 * S), None);
        let w = waiting(0, 1, Some(2));
        assert_eq!(
            due(t.get(&a), &w, 3 * S),
            vec![
                Due::DelayWarning {
                    offline: Duration::from_secs(2),
                    reason: Reason::DestinationDisabled
                },
                Due::Bounce {
                    offline: Duration::from_secs(2),
                    reason: Reason::DestinationDisabled
                }
            ]
        );
        let tr = t.observe(&a, poll(1), 4 * S).unwrap();
        assert_eq!((tr.from, tr.to), (Some(State::Disabled), State::Online));
    }

    #[test]
    fn broker_silence_keeps_the_last_count() {
        let mut t = Tracker::new(Duration::from_secs(90));
        let a = c("A1");
        t.observe(&a, poll(1), 0);
        let silent = Observation::Poll {
            enabled: true,
            consumers: None,
        };
        assert_eq!(t.observe(&a, silent, S), None);
        assert_eq!(t.get(&a).unwrap().state, State::Online);
    }

    #[test]
    fn thresholds_count_from_the_later_of_offline_and_queued() {
        let mut t = Tracker::new(Duration::from_secs(90));
        let a = c("A1");
        t.observe(&a, poll(0), 0); // offline since 0
        let w = waiting(100 * S, 10, Some(30)); // queued at 100 s
        assert!(
            due(t.get(&a), &w, 109 * S).is_empty(),
            "offline before queueing does not count"
        );
        assert!(matches!(
            due(t.get(&a), &w, 110 * S)[..],
            [Due::DelayWarning { .. }]
        ));
        let warned = Waiting {
            warned: true,
            ..w.clone()
        };
        assert!(due(t.get(&a), &warned, 129 * S).is_empty());
        assert!(matches!(
            due(t.get(&a), &warned, 130 * S)[..],
            [Due::Bounce { .. }]
        ));
        let both = Waiting {
            warned: true,
            bounced: true,
            ..w.clone()
        };
        assert!(due(t.get(&a), &both, 1000 * S).is_empty(), "never twice");
        // Late evaluation (the hub was down): the warning still precedes the bounce.
        assert!(matches!(
            due(t.get(&a), &w, 500 * S)[..],
            [Due::DelayWarning { .. }, Due::Bounce { .. }]
        ));
        // No bounce-after (priority 4 waits for its deadline): warnings only.
        let no_bounce = waiting(0, 10, None);
        assert!(matches!(
            due(t.get(&a), &no_bounce, 10_000 * S)[..],
            [Due::DelayWarning { .. }]
        ));
        // Unobserved destination: nothing is due.
        assert!(due(None, &w, 10_000 * S).is_empty());
    }

    #[test]
    fn coming_back_before_the_threshold_means_no_notice() {
        let mut t = Tracker::new(Duration::from_secs(90));
        let a = c("A1");
        t.observe(&a, poll(0), 0);
        let w = waiting(0, 10, Some(20));
        assert!(due(t.get(&a), &w, 9 * S).is_empty());
        t.observe(&a, poll(1), 9 * S);
        assert!(due(t.get(&a), &w, 100 * S).is_empty());
        // Gone again at 100 s: the clock restarts there.
        t.observe(&a, poll(0), 100 * S);
        assert!(due(t.get(&a), &w, 109 * S).is_empty());
        assert_eq!(due(t.get(&a), &w, 110 * S).len(), 1);
    }

    #[test]
    fn restore_keeps_since_across_restarts() {
        let mut t = Tracker::new(Duration::from_secs(3));
        let a = c("A1");
        t.observe(&a, poll(0), 0);
        t.observe(&a, hb(true), S);
        let saved = t.get(&a).unwrap().clone();
        let mut t2 = Tracker::new(Duration::from_secs(3));
        t2.restore(a.clone(), saved);
        // Same facts after the restart: no transition, the old `since` stays.
        assert_eq!(t2.observe(&a, poll(0), 2 * S), None);
        assert_eq!(t2.get(&a).unwrap().since_ms, S);
        // The persisted heartbeat still expires on time.
        let tr = t2.expire(4 * S);
        assert_eq!((tr[0].to, tr[0].at_ms), (State::Offline, 4 * S));
        let w = waiting(0, 5, Some(10));
        assert!(due(t2.get(&a), &w, 8 * S).is_empty());
        assert_eq!(due(t2.get(&a), &w, 9 * S).len(), 1);
    }

    #[test]
    fn a_late_stamped_heartbeat_never_goes_back_in_time() {
        let mut t = Tracker::new(Duration::from_secs(90));
        let a = AgencyCode::parse("000.00.32.H41").unwrap();
        // A poll round at 10 s sees no consumer...
        let first = t
            .observe(
                &a,
                Observation::Poll {
                    enabled: true,
                    consumers: Some(0),
                },
                10 * S,
            )
            .unwrap();
        // ...then a heartbeat the router stamped at 9 s is applied.
        let second = t
            .observe(&a, Observation::Heartbeat { online: true }, 9 * S)
            .unwrap();
        assert_eq!((first.to, second.to), (State::Offline, State::Online));
        assert!(second.at_ms >= first.at_ms, "{second:?} before {first:?}");
    }
}

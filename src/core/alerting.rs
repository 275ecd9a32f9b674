//! Alerts as a state machine, with no I/O: the conditions found firing at
//! each evaluation go in, the notifications to send come out.
//!
//! Invariants:
//! - one alert per rule and subject (its key): a condition that stays true
//!   is announced once, then again only every `repeat_after`;
//! - an announced alert whose condition clears is announced resolved once;
//!   one never announced (the budget was spent) resolves silently;
//! - at most `max_per_hour` firing and repeat notifications in any hour;
//!   an alert left unannounced by the budget is announced at the first
//!   evaluation that has budget again, if it still fires (resolutions cost
//!   no budget: there are never more of them than announcements);
//! - the open alerts can be handed to a new leader ([`Alerting::resume`]),
//!   which then announces nothing already announced.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// A delivery parked in the undelivered queue.
    Undelivered,
    /// An agency offline for too long.
    AgencyOffline,
    /// The broker link down.
    BrokerDisconnected,
    /// The store cannot write.
    Store,
    /// An inbox too deep.
    InboxDepth,
    /// Too many refused messages.
    Refusals,
    /// A key in use or a certificate near its expiry.
    Expiry,
}

impl Rule {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Undelivered => "undelivered",
            Rule::AgencyOffline => "agency-offline",
            Rule::BrokerDisconnected => "broker-disconnected",
            Rule::Store => "store",
            Rule::InboxDepth => "inbox-depth",
            Rule::Refusals => "refusals",
            Rule::Expiry => "expiry",
        }
    }
}

/// A condition found true at one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The rule.
    pub rule: Rule,
    /// What it is about (an agency code, a queue, a file; `hub` for the
    /// hub as a whole).
    pub subject: String,
    /// What is wrong, in Vietnamese.
    pub text_vi: String,
    /// What is wrong, in English.
    pub text_en: String,
}

impl Condition {
    /// The alert key: rule and subject.
    pub fn key(&self) -> String {
        format!("{}:{}", self.rule.as_str(), self.subject)
    }
}

/// An alert, open or resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Rule and subject.
    pub key: String,
    /// The rule.
    pub rule: Rule,
    /// What it is about.
    pub subject: String,
    /// The latest text, in Vietnamese.
    pub text_vi: String,
    /// The latest text, in English.
    pub text_en: String,
    /// Since when it fires, ms.
    pub since_ms: i64,
    /// When it was last announced, ms (`None`: not yet).
    pub sent_ms: Option<i64>,
    /// When it cleared, ms.
    pub resolved_ms: Option<i64>,
}

/// What a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// It started (or was first announced).
    Firing,
    /// It still fires (`repeat_after` since the last announcement).
    Repeat,
    /// It cleared.
    Resolved,
}

impl Kind {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Firing => "firing",
            Kind::Repeat => "repeat",
            Kind::Resolved => "resolved",
        }
    }
}

/// A notification to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// What it says.
    pub kind: Kind,
    /// About which alert.
    pub alert: Alert,
}

/// What one evaluation changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Notifications to send, in order.
    pub notices: Vec<Notice>,
    /// Alerts that cleared (to move to the history).
    pub resolved: Vec<Alert>,
}

/// The open alerts and the notification budget.
#[derive(Debug, Clone, Default)]
pub struct Alerting {
    open: BTreeMap<String, Alert>,
    sent: VecDeque<i64>,
    suppressed: u64,
}

const HOUR_MS: i64 = 3_600_000;

impl Alerting {
    /// Carries on from `open` (what the previous leader kept).
    pub fn resume(open: Vec<Alert>) -> Self {
        Self {
            open: open.into_iter().map(|a| (a.key.clone(), a)).collect(),
            ..Self::default()
        }
    }

    /// The open alerts, by key.
    pub fn open(&self) -> impl Iterator<Item = &Alert> {
        self.open.values()
    }

    /// Notifications held back by the budget so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    fn spend(&mut self, now_ms: i64, max_per_hour: u32) -> bool {
        while self.sent.front().is_some_and(|t| now_ms - t >= HOUR_MS) {
            self.sent.pop_front();
        }
        if self.sent.len() < max_per_hour as usize {
            self.sent.push_back(now_ms);
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// One evaluation at `now_ms` that found `firing` true.
    pub fn step(
        &mut self,
        now_ms: i64,
        firing: Vec<Condition>,
        repeat_after_ms: i64,
        max_per_hour: u32,
    ) -> Step {
        let mut step = Step::default();
        let firing: BTreeMap<String, Condition> =
            firing.into_iter().map(|c| (c.key(), c)).collect();
        let cleared: Vec<String> = self
            .open
            .keys()
            .filter(|k| !firing.contains_key(*k))
            .cloned()
            .collect();
        for k in cleared {
            if let Some(mut a) = self.open.remove(&k) {
                a.resolved_ms = Some(now_ms);
                if a.sent_ms.is_some() {
                    step.notices.push(Notice {
                        kind: Kind::Resolved,
                        alert: a.clone(),
                    });
                }
                step.resolved.push(a);
            }
        }
        for (k, c) in firing {
            let mut a = self.open.get(&k).cloned().unwrap_or_else(|| Alert {
                key: k.clone(),
                rule: c.rule,
                subject: c.subject.clone(),
                text_vi: String::new(),
                text_en: String::new(),
                since_ms: now_ms,
                sent_ms: None,
                resolved_ms: None,
            });
            a.text_vi = c.text_vi;
            a.text_en = c.text_en;
            let kind = match a.sent_ms {
                None => Some(Kind::Firing),
                Some(t) if now_ms - t >= repeat_after_ms => Some(Kind::Repeat),
                Some(_) => None,
            };
            if let Some(kind) = kind {
                if self.spend(now_ms, max_per_hour) {
                    a.sent_ms = Some(now_ms);
                    step.notices.push(Notice {
                        kind,
                        alert: a.clone(),
                    });
                }
            }
            self.open.insert(k, a);
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(rule: Rule, subject: &str, n: u32) -> Condition {
        Condition {
            rule,
            subject: subject.into(),
            text_vi: format!("{n} thư"),
            text_en: format!("{n} letters"),
        }
    }

    fn kinds(s: &Step) -> Vec<(Kind, String)> {
        s.notices
            .iter()
            .map(|n| (n.kind, n.alert.key.clone()))
            .collect()
    }

    #[test]
    fn fires_once_repeats_after_a_while_and_resolves_once() {
        let mut a = Alerting::default();
        let s = a.step(0, vec![c(Rule::Undelivered, "hub", 1)], 1_000, 10);
        assert_eq!(kinds(&s), vec![(Kind::Firing, "undelivered:hub".into())]);
        assert_eq!(a.open().count(), 1);
        // Still firing, same text: nothing to say.
        let s = a.step(500, vec![c(Rule::Undelivered, "hub", 1)], 1_000, 10);
        assert_eq!(s, Step::default());
        // A new count: the open alert says it, not announced.
        let s = a.step(600, vec![c(Rule::Undelivered, "hub", 2)], 1_000, 10);
        assert!(s.notices.is_empty());
        assert_eq!(a.open().next().unwrap().text_en, "2 letters");
        let s = a.step(1_000, vec![c(Rule::Undelivered, "hub", 2)], 1_000, 10);
        assert_eq!(kinds(&s), vec![(Kind::Repeat, "undelivered:hub".into())]);
        assert_eq!(s.notices[0].alert.since_ms, 0);
        let s = a.step(1_100, vec![], 1_000, 10);
        assert_eq!(kinds(&s), vec![(Kind::Resolved, "undelivered:hub".into())]);
        assert_eq!(s.resolved[0].resolved_ms, Some(1_100));
        assert_eq!(a.open().count(), 0);
        assert_eq!(a.step(1_200, vec![], 1_000, 10), Step::default());
    }

    #[test]
    fn subjects_are_separate_alerts() {
        let mut a = Alerting::default();
        let s = a.step(
            0,
            vec![
                c(Rule::AgencyOffline, "H37.1", 0),
                c(Rule::AgencyOffline, "H37.2", 0),
            ],
            1_000,
            10,
        );
        assert_eq!(s.notices.len(), 2);
        let s = a.step(10, vec![c(Rule::AgencyOffline, "H37.2", 0)], 1_000, 10);
        assert_eq!(
            kinds(&s),
            vec![(Kind::Resolved, "agency-offline:H37.1".into())]
        );
    }

    #[test]
    fn the_budget_holds_back_and_announces_later() {
        let mut a = Alerting::default();
        let many: Vec<Condition> = (0..5)
            .map(|i| c(Rule::InboxDepth, &format!("A{i}"), i))
            .collect();
        let s = a.step(0, many.clone(), 10 * HOUR_MS, 3);
        assert_eq!(s.notices.len(), 3);
        assert_eq!(a.open().count(), 5, "all five are open and listed");
        assert_eq!(a.suppressed(), 2);
        // One of the unannounced clears: it resolves silently.
        let s = a.step(10, many[..4].to_vec(), 10 * HOUR_MS, 3);
        assert!(s.notices.is_empty(), "{s:?}");
        assert_eq!(s.resolved.len(), 1);
        // An hour on, the budget is back: the one still unannounced is.
        let s = a.step(HOUR_MS, many[..4].to_vec(), 10 * HOUR_MS, 3);
        assert_eq!(kinds(&s), vec![(Kind::Firing, "inbox-depth:A3".into())]);
    }

    #[test]
    fn a_new_leader_announces_nothing_already_announced() {
        let mut first = Alerting::default();
        first.step(0, vec![c(Rule::Store, "hub", 0)], 1_000, 10);
        let kept: Vec<Alert> = first.open().cloned().collect();
        let mut next = Alerting::resume(kept);
        let s = next.step(100, vec![c(Rule::Store, "hub", 0)], 1_000, 10);
        assert!(s.notices.is_empty());
        let s = next.step(200, vec![], 1_000, 10);
        assert_eq!(kinds(&s), vec![(Kind::Resolved, "store:hub".into())]);
    }
}

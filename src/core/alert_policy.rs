//! The alerting policy (`policies/alerts.toml`, built in when absent): how
//! often rules are evaluated, how often a lasting alert is repeated, the
//! notification budget, the channels (webhook, email) and each rule's
//! threshold.
//!
//! Invariants: every duration and threshold is checked at load (an
//! unknown key is an error, as in every policy file); a channel is on only
//! when it names where to send; no secret is read from this file (the SMTP
//! password comes from the environment).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::policy::PolicyError;
use crate::core::time::parse_duration;

/// The built-in `alerts.toml`.
pub const DEFAULT_ALERTS: &str = include_str!("../../policies/alerts.toml");

/// Where email goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// The relay, `host:port`.
    pub smtp: String,
    /// Upgrade with STARTTLS.
    pub starttls: bool,
    /// Login name, when the relay wants one (password: `TRUC_SMTP_PASSWORD`).
    pub username: Option<String>,
    /// Sender address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
}

/// The rules' thresholds; `None`: the rule is off.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    /// Deliveries parked in the undelivered queue.
    pub undelivered: bool,
    /// An agency offline for longer than this.
    pub agency_offline: Option<Duration>,
    /// The broker link down for longer than this.
    pub broker_disconnected: Option<Duration>,
    /// The store cannot write.
    pub store: bool,
    /// An inbox deeper than this.
    pub inbox_depth: Option<u64>,
    /// More than `.0` refusals within `.1`.
    pub refusals: Option<(u64, Duration)>,
    /// A key in use or a certificate expiring within this.
    pub expiry: Option<Duration>,
}

/// The alerting policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsPolicy {
    /// How often the rules are evaluated.
    pub evaluate_every: Duration,
    /// A firing alert is sent again after this long.
    pub repeat_after: Duration,
    /// Notifications an hour, each channel.
    pub max_per_hour: u32,
    /// The webhook URL (`http://` or `https://`).
    pub webhook: Option<String>,
    /// Email.
    pub email: Option<Email>,
    /// Rules.
    pub rules: Rules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    alerts: Section,
    #[serde(default)]
    webhook: Option<WebhookSection>,
    #[serde(default)]
    email: Option<EmailSection>,
    #[serde(default)]
    rules: RulesSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    evaluate_every: String,
    repeat_after: String,
    max_per_hour: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    #[serde(default)]
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailSection {
    #[serde(default)]
    smtp: String,
    #[serde(default)]
    starttls: bool,
    #[serde(default)]
    username: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RulesSection {
    #[serde(default)]
    undelivered: Option<Toggle>,
    #[serde(default)]
    agency_offline: Option<After>,
    #[serde(default)]
    broker_disconnected: Option<After>,
    #[serde(default)]
    store: Option<Toggle>,
    #[serde(default)]
    inbox_depth: Option<Max>,
    #[serde(default)]
    refusals: Option<MaxWithin>,
    #[serde(default)]
    expiry: Option<Within>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Toggle {
    #[serde(default = "yes")]
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct After {
    #[serde(default = "yes")]
    enabled: bool,
    after: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Max {
    #[serde(default = "yes")]
    enabled: bool,
    max: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaxWithin {
    #[serde(default = "yes")]
    enabled: bool,
    max: u64,
    window: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Within {
    #[serde(default = "yes")]
    enabled: bool,
    within: String,
}

impl AlertsPolicy {
    /// `alerts.toml` from `dir`, or the built-in one when there is none.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let path = dir.join("alerts.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_toml(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::from_toml(DEFAULT_ALERTS, Path::new("(built-in alerts.toml)"))
            }
            Err(source) => Err(PolicyError::Read { path, source }),
        }
    }

    /// The policy in `text` (`path` names it in errors).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let invalid = |key: &str, problem: String| PolicyError::Invalid {
            path: PathBuf::from(path),
            key: key.to_owned(),
            problem,
        };
        let dur = |key: &str, v: &str| -> Result<Duration, PolicyError> {
            let d = parse_duration(v).map_err(|e| invalid(key, e.to_string()))?;
            if d.is_zero() {
                return Err(invalid(key, "must be more than 0".into()));
            }
            Ok(d)
        };
        let f: File = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: PathBuf::from(path),
            message: e.to_string(),
        })?;
        let evaluate_every = dur("alerts.evaluate_every", &f.alerts.evaluate_every)?;
        let repeat_after = dur("alerts.repeat_after", &f.alerts.repeat_after)?;
        if f.alerts.max_per_hour == 0 {
            return Err(invalid("alerts.max_per_hour", "must be at least 1".into()));
        }
        let webhook = match f.webhook.map(|w| w.url.trim().to_owned()) {
            Some(u) if u.is_empty() => None,
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(u),
            Some(u) => {
                return Err(invalid(
                    "webhook.url",
                    format!("{u:?} is not an http:// or https:// URL"),
                ))
            }
            None => None,
        };
        let email = match f.email {
            Some(e) if !e.smtp.trim().is_empty() => {
                let smtp = e.smtp.trim().to_owned();
                match smtp.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
                    Some((h, Ok(p))) if !h.is_empty() && p > 0 => {}
                    _ => return Err(invalid("email.smtp", format!("{smtp:?} is not host:port"))),
                }
                let addr = |a: &str| a.contains('@') && !a.contains(char::is_whitespace);
                if !addr(&e.from) {
                    return Err(invalid(
                        "email.from",
                        format!("{:?} is not an address", e.from),
                    ));
                }
                if e.to.is_empty() {
                    return Err(invalid("email.to", "names no recipient".into()));
                }
                if let Some(bad) = e.to.iter().find(|a| !addr(a)) {
                    return Err(invalid("email.to", format!("{bad:?} is not an address")));
                }
                Some(Email {
                    smtp,
                    starttls: e.starttls,
                    username: Some(e.username).filter(|u| !u.is_empty()),
                    from: e.from,
                    to: e.to,
                })
            }
            _ => None,
        };
        let r = f.rules;
        let rules = Rules {
            undelivered: r.undelivered.is_some_and(|t| t.enabled),
            agency_offline: match r.agency_offline {
                Some(a) if a.enabled => Some(dur("rules.agency_offline.after", &a.after)?),
                _ => None,
            },
            broker_disconnected: match r.broker_disconnected {
                Some(a) if a.enabled => Some(dur("rules.broker_disconnected.after", &a.after)?),
                _ => None,
            },
            store: r.store.is_some_and(|t| t.enabled),
            inbox_depth: match r.inbox_depth {
                Some(m) if m.enabled => Some(m.max),
                _ => None,
            },
            refusals: match r.refusals {
                Some(m) if m.enabled => Some((m.max, dur("rules.refusals.window", &m.window)?)),
                _ => None,
            },
            expiry: match r.expiry {
                Some(w) if w.enabled => Some(dur("rules.expiry.within", &w.within)?),
                _ => None,
            },
        };
        Ok(Self {
            evaluate_every,
            repeat_after,
            max_per_hour: f.alerts.max_per_hour,
            webhook,
            email,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AlertsPolicy, PolicyError> {
        AlertsPolicy::from_toml(text, Path::new("alerts.toml"))
    }

    #[test]
    fn the_built_in_policy_turns_every_rule_on_and_sends_nowhere() {
        let p = load(DEFAULT_ALERTS).unwrap();
        assert_eq!(p.evaluate_every, Duration::from_secs(15));
        assert_eq!(p.webhook, None);
        assert_eq!(p.email, None);
        assert!(p.rules.undelivered && p.rules.store);
        assert_eq!(p.rules.agency_offline, Some(Duration::from_secs(1800)));
        assert_eq!(p.rules.inbox_depth, Some(1000));
        assert_eq!(p.rules.refusals, Some((100, Duration::from_secs(300))));
        assert_eq!(p.rules.expiry, Some(Duration::from_secs(14 * 86_400)));
    }

    #[test]
    fn channels_and_rules_are_checked_at_load() {
        let base = DEFAULT_ALERTS;
        let with = |from: &str, to: &str| base.replacen(from, to, 1);
        let p = load(&with(
            "url = \"\"",
            "url = \"https://chat.example/hooks/x\"",
        ))
        .unwrap();
        assert_eq!(p.webhook.as_deref(), Some("https://chat.example/hooks/x"));
        let e = load(&with("url = \"\"", "url = \"ftp://x\"")).unwrap_err();
        assert!(e.to_string().contains("webhook.url"), "{e}");
        let mail = with("smtp = \"\"", "smtp = \"127.0.0.1:2525\"");
        let e = load(&mail).unwrap_err();
        assert!(e.to_string().contains("email.to"), "{e}");
        let p = load(&mail.replacen("to = []", "to = [\"ops@example.gov.vn\"]", 1)).unwrap();
        assert_eq!(p.email.unwrap().to, vec!["ops@example.gov.vn"]);
        let e = load(&with("smtp = \"\"", "smtp = \"nohost\"")).unwrap_err();
        assert!(e.to_string().contains("host:port"), "{e}");
        let e = load(&with("after = \"30m\"", "after = \"0s\"")).unwrap_err();
        assert!(e.to_string().contains("agency_offline"), "{e}");
        let e = load(&with("max_per_hour = 30", "max_per_hour = 0")).unwrap_err();
        assert!(e.to_string().contains("max_per_hour"), "{e}");
        let e = load(&format!("{base}\n[rules.nonsense]\nenabled = true\n")).unwrap_err();
        assert!(e.to_string().contains("nonsense"), "{e}");
        let p = load(&with(
            "[rules.store]\nenabled = true",
            "[rules.store]\nenabled = false",
        ))
        .unwrap();
        assert!(!p.rules.store);
    }
}

//! Delivery, permission, rate and presence policies, read from
//! `policies/*.toml` (`ingress.toml`, `delivery.toml`, `access.toml`,
//! `presence.toml`; the built-in copy of a file stands in when it is absent).
//!
//! Invariant: a [`Policies`] value is validated when built; an invalid file
//! stops start-up (or a SIGHUP reload) with the file, key and problem named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::code::AgencyCode;
use crate::core::envelope::Priority;
use crate::core::time::parse_duration;

/// The built-in `ingress.toml`.
pub const DEFAULT_POLICY: &str = include_str!("../../policies/ingress.toml");
/// The built-in `delivery.toml`.
pub const DEFAULT_DELIVERY: &str = include_str!("../../policies/delivery.toml");
/// The built-in `access.toml`.
pub const DEFAULT_ACCESS: &str = include_str!("../../policies/access.toml");
/// The built-in `presence.toml`.
pub const DEFAULT_PRESENCE: &str = include_str!("../../policies/presence.toml");

/// Policy errors.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file does not parse or has an unknown key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said (it names the key).
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {key}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

// ---- file shapes -----------------------------------------------------------

fn default_clock_skew() -> String {
    "300s".into()
}
fn default_max_body_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_priority() -> u8 {
    0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressSection {
    #[serde(default = "default_clock_skew")]
    clock_skew: String,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
    #[serde(default = "default_priority")]
    default_priority: u8,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressFile {
    ingress: IngressSection,
    #[serde(default)]
    spaces: SpacesSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SpacesSection {
    max_document_bytes: u64,
    bytes_per_agency: u64,
    /// Absent: 4 MiB, or `max_body_bytes` when that is smaller.
    inline_bytes: Option<u64>,
    unused_after: String,
}

impl Default for SpacesSection {
    /// What an ingress file without a `[spaces]` section gets.
    fn default() -> Self {
        Self {
            max_document_bytes: 1 << 30,
            bytes_per_agency: 4 << 30,
            inline_bytes: None,
            unused_after: "24h".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySection {
    min: String,
    max: String,
    factor: f64,
    jitter: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrioritySection {
    bounce_after: Option<String>,
    delay_warning_after: Option<String>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideSection {
    agency: String,
    priority: Option<u8>,
    bounce_after: Option<String>,
    delay_warning_after: Option<String>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryFile {
    retry: RetrySection,
    priority: BTreeMap<String, PrioritySection>,
    #[serde(default, rename = "override")]
    overrides: Vec<OverrideSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateAgency {
    code: String,
    envelopes_per_s: f64,
    burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateSection {
    envelopes_per_s: f64,
    burst: u32,
    #[serde(default)]
    agency: Vec<RateAgency>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    from: String,
    to: String,
    action: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionsSection {
    default: String,
    #[serde(default)]
    rule: Vec<RuleSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    rate: RateSection,
    permissions: PermissionsSection,
    #[serde(default)]
    gateway: GatewaySection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayAgency {
    code: String,
    calls_per_s: f64,
    burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewaySection {
    calls_per_s: f64,
    burst: u32,
    #[serde(default)]
    agency: Vec<GatewayAgency>,
}

impl Default for GatewaySection {
    /// What an access file without a `[gateway]` section gets.
    fn default() -> Self {
        Self {
            calls_per_s: 500.0,
            burst: 1000,
            agency: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceSection {
    heartbeat_window: String,
    poll_interval: String,
    return_on_bounce: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceFile {
    presence: PresenceSection,
}

// ---- validated values ------------------------------------------------------

/// Retry backoff after a destination rejects a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Growth per attempt.
    pub factor: f64,
    /// ± fraction of random spread.
    pub jitter: f64,
}

/// What applies to one envelope's delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Bounce when the destination stays offline this long (`None`: until the deadline).
    pub bounce_after: Option<Duration>,
    /// Warn the source when the destination has been offline this long.
    pub delay_warning_after: Duration,
    /// Rejections before bounce.
    pub max_attempts: u32,
}

/// A source's rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained envelopes per second.
    pub per_s: f64,
    /// Bucket size.
    pub burst: u32,
}

/// A code pattern: exact, prefix (`H37.*`) or any (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Any code.
    Any,
    /// Codes starting with this.
    Prefix(String),
    /// This code.
    Exact(AgencyCode),
}

impl Pattern {
    fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            Ok(Self::Any)
        } else if let Some(p) = s.strip_suffix('*') {
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase() || b == b'.')
            {
                return Err(format!("{s:?} is not a code pattern"));
            }
            Ok(Self::Prefix(p.to_owned()))
        } else {
            AgencyCode::parse(s)
                .map(Self::Exact)
                .map_err(|e| format!("{s:?}: {e}"))
        }
    }

    /// Whether `code` matches.
    pub fn matches(&self, code: &AgencyCode) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(p) => code.as_str().starts_with(p.as_str()),
            Self::Exact(c) => c == code,
        }
    }
}

/// A permission rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Sources.
    pub from: Pattern,
    /// Destinations.
    pub to: Pattern,
    /// Allow (true) or deny.
    pub allow: bool,
}

/// Presence settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresencePolicy {
    /// Heartbeats keep an agency online this long.
    pub heartbeat_window: Duration,
    /// Broker polling period.
    pub poll_interval: Duration,
    /// Take bounced envelopes out of the inbox.
    pub return_on_bounce: bool,
}

/// Upload spaces (large documents, docs/GATEWAY.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpacesPolicy {
    /// Largest document a space holds.
    pub max_document_bytes: u64,
    /// Most bytes one agency's spaces hold together.
    pub bytes_per_agency: u64,
    /// A body sent inline over the gateway larger than this is kept in a
    /// space the hub makes, not in memory.
    pub inline_bytes: u64,
    /// A space no envelope used within this time is deleted.
    pub unused_after: Duration,
}

/// Validated policies.
#[derive(Debug, Clone)]
pub struct Policies {
    /// Clock-skew window.
    pub clock_skew: Duration,
    /// Largest body.
    pub max_body_bytes: u64,
    /// Default priority.
    pub default_priority: Priority,
    /// Retry backoff.
    pub backoff: Backoff,
    per_priority: [DeliveryPolicy; 5],
    overrides: Vec<(AgencyCode, Option<u8>, PrioritySection)>,
    /// Default source rate.
    pub rate: Rate,
    rates: BTreeMap<AgencyCode, Rate>,
    /// Default rate of an agency's calls to the HTTPS gateway.
    pub gateway_rate: Rate,
    gateway_rates: BTreeMap<AgencyCode, Rate>,
    /// Permission rules, in order.
    pub rules: Vec<Rule>,
    /// When no rule matches.
    pub default_allow: bool,
    /// Presence.
    pub presence: PresencePolicy,
    /// Upload spaces.
    pub spaces: SpacesPolicy,
}

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn invalid(&self, key: impl Into<String>, problem: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            path: self.path.to_owned(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn duration(&self, key: &str, v: &str) -> Result<Duration, PolicyError> {
        parse_duration(v).map_err(|e| self.invalid(key, e.to_string()))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, text: &str) -> Result<T, PolicyError> {
        toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: self.path.to_owned(),
            message: e.to_string(),
        })
    }
}

fn read(dir: &Path, name: &str, builtin: &'static str) -> Result<(String, PathBuf), PolicyError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((text, path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
            builtin.to_owned(),
            PathBuf::from(format!("(built-in {name})")),
        )),
        Err(source) => Err(PolicyError::Read { path, source }),
    }
}

impl Policies {
    /// Builds policies from the text of each file (`paths` name them in errors).
    pub fn from_texts(
        ingress: (&str, &Path),
        delivery: (&str, &Path),
        access: (&str, &Path),
        presence: (&str, &Path),
    ) -> Result<Self, PolicyError> {
        // ingress.toml
        let cx = Ctx { path: ingress.1 };
        let ing: IngressFile = cx.parse(ingress.0)?;
        let ing_file_spaces = ing.spaces;
        let ing = ing.ingress;
        let clock_skew = cx.duration("ingress.clock_skew", &ing.clock_skew)?;
        if clock_skew < Duration::from_secs(1) || clock_skew > Duration::from_secs(3600) {
            return Err(cx.invalid("ingress.clock_skew", "must be between 1s and 1h"));
        }
        if ing.max_body_bytes == 0 || ing.max_body_bytes > 128 * 1024 * 1024 {
            return Err(cx.invalid(
                "ingress.max_body_bytes",
                "must be 1 to 134217728 (RabbitMQ's own ceiling)",
            ));
        }
        let default_priority = Priority::new(ing.default_priority)
            .filter(|p| *p != Priority::FLASH_APPOINTED)
            .ok_or_else(|| cx.invalid("ingress.default_priority", "must be 0-3"))?;
        let sp = &ing_file_spaces;
        let spaces = SpacesPolicy {
            max_document_bytes: sp.max_document_bytes,
            bytes_per_agency: sp.bytes_per_agency,
            inline_bytes: sp.inline_bytes.unwrap_or((4 << 20).min(ing.max_body_bytes)),
            unused_after: cx.duration("spaces.unused_after", &sp.unused_after)?,
        };
        if spaces.max_document_bytes == 0 || spaces.max_document_bytes > 1 << 40 {
            return Err(cx.invalid("spaces.max_document_bytes", "must be 1 to 1 TiB"));
        }
        if spaces.bytes_per_agency < spaces.max_document_bytes {
            return Err(cx.invalid(
                "spaces.bytes_per_agency",
                "must be at least spaces.max_document_bytes",
            ));
        }
        if spaces.inline_bytes == 0 || spaces.inline_bytes > ing.max_body_bytes {
            return Err(cx.invalid("spaces.inline_bytes", "must be 1 to ingress.max_body_bytes"));
        }
        if spaces.unused_after < Duration::from_secs(60) {
            return Err(cx.invalid("spaces.unused_after", "must be at least 60s"));
        }

        // delivery.toml
        let cx = Ctx { path: delivery.1 };
        let del: DeliveryFile = cx.parse(delivery.0)?;
        let r = &del.retry;
        let backoff = Backoff {
            min: cx.duration("retry.min", &r.min)?,
            max: cx.duration("retry.max", &r.max)?,
            factor: r.factor,
            jitter: r.jitter,
        };
        if backoff.min.is_zero() || backoff.max < backoff.min {
            return Err(cx.invalid(
                "retry.max",
                "must be at least retry.min, and retry.min above 0",
            ));
        }
        if !(1.0..=10.0).contains(&backoff.factor) {
            return Err(cx.invalid("retry.factor", "must be between 1.0 and 10.0"));
        }
        if !(0.0..1.0).contains(&backoff.jitter) {
            return Err(cx.invalid("retry.jitter", "must be at least 0 and below 1"));
        }
        for k in del.priority.keys() {
            if !["0", "1", "2", "3", "4"].contains(&k.as_str()) {
                return Err(cx.invalid(format!("priority.{k}"), "priority codes are 0-4"));
            }
        }
        let mut per_priority = Vec::with_capacity(5);
        for p in 0..5u8 {
            let key = p.to_string();
            let sec = del
                .priority
                .get(&key)
                .ok_or_else(|| cx.invalid(format!("priority.{p}"), "missing"))?;
            per_priority.push(delivery_policy(&cx, &format!("priority.{p}"), sec, None)?);
        }
        let per_priority: [DeliveryPolicy; 5] = per_priority.try_into().expect("five priorities");
        let mut overrides = Vec::new();
        for (i, o) in del.overrides.iter().enumerate() {
            let key = format!("override[{i}]");
            let code = AgencyCode::parse(&o.agency)
                .map_err(|e| cx.invalid(format!("{key}.agency"), e.to_string()))?;
            if o.priority.is_some_and(|p| p > 4) {
                return Err(cx.invalid(format!("{key}.priority"), "must be 0-4"));
            }
            let sec = PrioritySection {
                bounce_after: o.bounce_after.clone(),
                delay_warning_after: o.delay_warning_after.clone(),
                max_attempts: o.max_attempts,
            };
            // Validate now, apply later over the priority's defaults.
            delivery_policy(&cx, &key, &sec, Some(&per_priority[0]))?;
            overrides.push((code, o.priority, sec));
        }

        // access.toml
        let cx = Ctx { path: access.1 };
        let acc: AccessFile = cx.parse(access.0)?;
        let per_s = "envelopes_per_s";
        let rate = make_rate(&cx, "rate", per_s, acc.rate.envelopes_per_s, acc.rate.burst)?;
        let mut rates = BTreeMap::new();
        for (i, a) in acc.rate.agency.iter().enumerate() {
            let key = format!("rate.agency[{i}]");
            let code = AgencyCode::parse(&a.code)
                .map_err(|e| cx.invalid(format!("{key}.code"), e.to_string()))?;
            rates.insert(
                code,
                make_rate(&cx, &key, per_s, a.envelopes_per_s, a.burst)?,
            );
        }
        let per_s = "calls_per_s";
        let g = &acc.gateway;
        let gateway_rate = make_rate(&cx, "gateway", per_s, g.calls_per_s, g.burst)?;
        let mut gateway_rates = BTreeMap::new();
        for (i, a) in g.agency.iter().enumerate() {
            let key = format!("gateway.agency[{i}]");
            let code = AgencyCode::parse(&a.code)
                .map_err(|e| cx.invalid(format!("{key}.code"), e.to_string()))?;
            gateway_rates.insert(code, make_rate(&cx, &key, per_s, a.calls_per_s, a.burst)?);
        }
        let action = |key: &str, v: &str| match v {
            "allow" => Ok(true),
            "deny" => Ok(false),
            _ => Err(cx.invalid(key, "must be \"allow\" or \"deny\"")),
        };
        let default_allow = action("permissions.default", &acc.permissions.default)?;
        let mut rules = Vec::new();
        for (i, r) in acc.permissions.rule.iter().enumerate() {
            let key = format!("permissions.rule[{i}]");
            rules.push(Rule {
                from: Pattern::parse(&r.from).map_err(|e| cx.invalid(format!("{key}.from"), e))?,
                to: Pattern::parse(&r.to).map_err(|e| cx.invalid(format!("{key}.to"), e))?,
                allow: action(&format!("{key}.action"), &r.action)?,
            });
        }

        // presence.toml
        let cx = Ctx { path: presence.1 };
        let pre: PresenceFile = cx.parse(presence.0)?;
        let presence = PresencePolicy {
            heartbeat_window: cx
                .duration("presence.heartbeat_window", &pre.presence.heartbeat_window)?,
            poll_interval: cx.duration("presence.poll_interval", &pre.presence.poll_interval)?,
            return_on_bounce: pre.presence.return_on_bounce,
        };
        if presence.poll_interval < Duration::from_secs(1) {
            return Err(cx.invalid("presence.poll_interval", "must be at least 1s"));
        }
        if presence.heartbeat_window < Duration::from_secs(1) {
            return Err(cx.invalid("presence.heartbeat_window", "must be at least 1s"));
        }
        if presence.return_on_bounce {
            // The hub cannot take one message out of the middle of an inbox
            // without consuming that inbox, which belongs to the destination.
            return Err(cx.invalid(
                "presence.return_on_bounce",
                "true is not supported: a bounced envelope stays queued in the destination's inbox (set it to false)",
            ));
        }

        Ok(Self {
            clock_skew,
            max_body_bytes: ing.max_body_bytes,
            default_priority,
            backoff,
            per_priority,
            overrides,
            rate,
            rates,
            gateway_rate,
            gateway_rates,
            rules,
            default_allow,
            presence,
            spaces,
        })
    }

    /// Loads every policy file from `dir` (built-in copies for absent files).
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let (i, ip) = read(dir, "ingress.toml", DEFAULT_POLICY)?;
        let (d, dp) = read(dir, "delivery.toml", DEFAULT_DELIVERY)?;
        let (a, ap) = read(dir, "access.toml", DEFAULT_ACCESS)?;
        let (p, pp) = read(dir, "presence.toml", DEFAULT_PRESENCE)?;
        Self::from_texts((&i, &ip), (&d, &dp), (&a, &ap), (&p, &pp))
    }

    /// Policies from the built-in files with `ingress` as `ingress.toml`.
    pub fn from_toml(ingress: &str, path: &Path) -> Result<Self, PolicyError> {
        let b = |n: &str| PathBuf::from(format!("(built-in {n})"));
        Self::from_texts(
            (ingress, path),
            (DEFAULT_DELIVERY, &b("delivery.toml")),
            (DEFAULT_ACCESS, &b("access.toml")),
            (DEFAULT_PRESENCE, &b("presence.toml")),
        )
    }

    /// The delivery policy for an envelope of `priority` from `source`.
    pub fn delivery(&self, priority: Priority, source: &AgencyCode) -> DeliveryPolicy {
        let mut p = self.per_priority[priority.code() as usize].clone();
        for (code, prio, sec) in &self.overrides {
            if code == source && prio.is_none_or(|x| x == priority.code()) {
                let cx = Ctx {
                    path: Path::new(""),
                };
                if let Ok(o) = delivery_policy(&cx, "", sec, Some(&p)) {
                    p = o;
                }
            }
        }
        p
    }

    /// The rate of `source`.
    pub fn rate_of(&self, source: &AgencyCode) -> Rate {
        self.rates.get(source).copied().unwrap_or(self.rate)
    }

    /// The rate of `agency`'s calls to the HTTPS gateway.
    pub fn gateway_rate_of(&self, agency: &AgencyCode) -> Rate {
        self.gateway_rates
            .get(agency)
            .copied()
            .unwrap_or(self.gateway_rate)
    }

    /// Whether `from` may send to `to`.
    pub fn allowed(&self, from: &AgencyCode, to: &AgencyCode) -> bool {
        self.rules
            .iter()
            .find(|r| r.from.matches(from) && r.to.matches(to))
            .map(|r| r.allow)
            .unwrap_or(self.default_allow)
    }
}

fn delivery_policy(
    cx: &Ctx<'_>,
    key: &str,
    sec: &PrioritySection,
    base: Option<&DeliveryPolicy>,
) -> Result<DeliveryPolicy, PolicyError> {
    let bounce_after = match &sec.bounce_after {
        Some(v) => Some(cx.duration(&format!("{key}.bounce_after"), v)?),
        None => base.and_then(|b| b.bounce_after),
    };
    let delay_warning_after = match (&sec.delay_warning_after, base) {
        (Some(v), _) => cx.duration(&format!("{key}.delay_warning_after"), v)?,
        (None, Some(b)) => b.delay_warning_after,
        (None, None) => return Err(cx.invalid(format!("{key}.delay_warning_after"), "missing")),
    };
    let max_attempts = match (sec.max_attempts, base) {
        (Some(n), _) => n,
        (None, Some(b)) => b.max_attempts,
        (None, None) => return Err(cx.invalid(format!("{key}.max_attempts"), "missing")),
    };
    if !(1..=1000).contains(&max_attempts) {
        return Err(cx.invalid(format!("{key}.max_attempts"), "must be 1-1000"));
    }
    Ok(DeliveryPolicy {
        bounce_after,
        delay_warning_after,
        max_attempts,
    })
}

fn make_rate(
    cx: &Ctx<'_>,
    key: &str,
    per_s_name: &str,
    per_s: f64,
    burst: u32,
) -> Result<Rate, PolicyError> {
    if !(per_s > 0.0 && per_s <= 1_000_000.0) {
        return Err(cx.invalid(
            format!("{key}.{per_s_name}"),
            "must be above 0 and at most 1000000",
        ));
    }
    if burst == 0 {
        return Err(cx.invalid(format!("{key}.burst"), "must be at least 1"));
    }
    Ok(Rate { per_s, burst })
}

impl Default for Policies {
    fn default() -> Self {
        Self::from_toml(DEFAULT_POLICY, Path::new("(built-in ingress.toml)"))
            .expect("the built-in policies are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> AgencyCode {
        AgencyCode::parse(s).unwrap()
    }

    #[test]
    fn spaces_take_their_defaults_within_the_inline_limit() {
        let p = Policies::default().spaces;
        assert_eq!(
            (p.max_document_bytes, p.bytes_per_agency, p.inline_bytes),
            (1 << 30, 4 << 30, 4 << 20)
        );
        assert_eq!(p.unused_after, Duration::from_secs(86400));
        // A smaller inline limit brings the default under it.
        let small = "[ingress]\nmax_body_bytes = 1048576\n";
        let p = Policies::from_toml(small, Path::new("p.toml"))
            .unwrap()
            .spaces;
        assert_eq!(p.inline_bytes, 1 << 20);
        // Said explicitly, it must fit.
        let over = format!("{small}[spaces]\ninline_bytes = 2097152\n");
        let e = Policies::from_toml(&over, Path::new("p.toml")).unwrap_err();
        assert!(e.to_string().contains("spaces.inline_bytes"), "{e}");
        let quota = "[ingress]\n[spaces]\nmax_document_bytes = 100\nbytes_per_agency = 10\n";
        let e = Policies::from_toml(quota, Path::new("p.toml")).unwrap_err();
        assert!(e.to_string().contains("spaces.bytes_per_agency"), "{e}");
    }

    #[test]
    fn builtin_is_valid_and_errors_name_file_and_key() {
        let p = Policies::default();
        assert_eq!(p.clock_skew, Duration::from_secs(300));
        assert_eq!(
            p.delivery(Priority::NORMAL, &c("A")).bounce_after,
            Some(Duration::from_secs(3 * 86400))
        );
        assert_eq!(
            p.delivery(Priority::FLASH_APPOINTED, &c("A")).bounce_after,
            None
        );
        let e = Policies::from_toml("[ingress]\nclock_skew = \"soon\"\n", Path::new("p.toml"))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("p.toml: ingress.clock_skew:"),
            "{e}"
        );
        let e = Policies::from_toml("[ingress]\nmax_bodyy = 3\n", Path::new("p.toml")).unwrap_err();
        assert!(e.to_string().contains("max_bodyy"), "{e}");
        let e = Policies::from_toml("[ingress]\ndefault_priority = 4\n", Path::new("p.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("default_priority"), "{e}");
    }

    fn with_delivery(extra: &str) -> Result<Policies, PolicyError> {
        let text = format!("{DEFAULT_DELIVERY}\n{extra}");
        Policies::from_texts(
            (DEFAULT_POLICY, Path::new("i")),
            (&text, Path::new("delivery.toml")),
            (DEFAULT_ACCESS, Path::new("a")),
            (DEFAULT_PRESENCE, Path::new("p")),
        )
    }

    #[test]
    fn overrides_apply_to_their_source_and_priority() {
        let p = with_delivery("[[override]]\nagency = \"H37.DN.001\"\npriority = 0\nbounce_after = \"7d\"\nmax_attempts = 9\n").unwrap();
        let d = p.delivery(Priority::NORMAL, &c("H37.DN.001"));
        assert_eq!(
            (d.bounce_after, d.max_attempts),
            (Some(Duration::from_secs(7 * 86400)), 9)
        );
        assert_eq!(
            p.delivery(Priority::new(1).unwrap(), &c("H37.DN.001"))
                .max_attempts,
            5
        );
        assert_eq!(
            p.delivery(Priority::NORMAL, &c("H37.DN.002")).max_attempts,
            5
        );
        let e = with_delivery("[[override]]\nagency = \"bad code\"\n").unwrap_err();
        assert!(
            e.to_string().contains("delivery.toml: override[0].agency"),
            "{e}"
        );
        let e = with_delivery("[[override]]\nagency = \"A\"\nmax_attempts = 0\n").unwrap_err();
        assert!(e.to_string().contains("override[0].max_attempts"), "{e}");
    }

    #[test]
    fn permissions_first_match_wins() {
        let access = "[rate]\nenvelopes_per_s = 5.0\nburst = 10\n[[rate.agency]]\ncode = \"A1\"\nenvelopes_per_s = 50.0\nburst = 100\n\
            [permissions]\ndefault = \"deny\"\n[[permissions.rule]]\nfrom = \"H37.*\"\nto = \"H37.DN.009\"\naction = \"deny\"\n\
            [[permissions.rule]]\nfrom = \"H37.*\"\nto = \"*\"\naction = \"allow\"\n";
        let p = Policies::from_texts(
            (DEFAULT_POLICY, Path::new("i")),
            (DEFAULT_DELIVERY, Path::new("d")),
            (access, Path::new("access.toml")),
            (DEFAULT_PRESENCE, Path::new("p")),
        )
        .unwrap();
        assert!(p.allowed(&c("H37.DN.001"), &c("000.00.31.H41")));
        assert!(!p.allowed(&c("H37.DN.001"), &c("H37.DN.009")));
        assert!(!p.allowed(&c("000.00.31.H41"), &c("H37.DN.001")));
        assert_eq!(p.rate_of(&c("A1")).burst, 100);
        assert_eq!(p.rate_of(&c("A2")).burst, 10);
        let bad = access.replace("\"deny\"\n[[", "\"maybe\"\n[[");
        let e = Policies::from_texts(
            (DEFAULT_POLICY, Path::new("i")),
            (DEFAULT_DELIVERY, Path::new("d")),
            (&bad, Path::new("access.toml")),
            (DEFAULT_PRESENCE, Path::new("p")),
        )
        .unwrap_err();
        assert!(e.to_string().contains("permissions.default"), "{e}");
    }

    #[test]
    fn return_on_bounce_is_refused() {
        let pre = DEFAULT_PRESENCE.replace("return_on_bounce = false", "return_on_bounce = true");
        let e = Policies::from_texts(
            (DEFAULT_POLICY, Path::new("i")),
            (DEFAULT_DELIVERY, Path::new("d")),
            (DEFAULT_ACCESS, Path::new("a")),
            (&pre, Path::new("presence.toml")),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("presence.toml: presence.return_on_bounce:"),
            "{e}"
        );
    }
}

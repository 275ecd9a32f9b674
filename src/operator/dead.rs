//! Dead letters for operators: `dead`, the bounded `<prefix>undelivered`
//! queue where the router parks deliveries it gave up on (max-attempts,
//! expired, unknown-destination, record-lost; with `x-truc-reason`, `x-truc-detail`, `x-truc-died-at`,
//! `x-truc-deaths`), and the bounded `<prefix>rejected` queue
//! (unauthenticated input, with `x-truc-*`):
//! listing with filters, retrying (rate-limited) and dropping.
//!
//! Invariants: a message is acked (removed) only after its republication was
//! confirmed by the broker (retry) or when the operator dropped it; every
//! message looked at but not selected goes back to its queue when the
//! browsing channel closes; a retry republishes to where the message was
//! going (dead: `<prefix>deliver` with routing key `lgsp-dest`; rejected:
//! `<prefix>ingress` with the original routing key from
//! `x-truc-routing-key`) without the broker's and truc's `x-` bookkeeping
//! headers, so nothing the source signed changes; a delivery is finished by
//! the router's delivery builder, so its hub signature is made with the
//! destination's current key.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker::{AmqpError, Got};
use crate::core::text::Escaped;
use crate::core::time::{format_rfc3339, now_ms, parse_rfc3339};
use crate::operator::queues::{link, QueueError};
use crate::operator::Hub;
use crate::state::audit::AuditEvent;

/// Most messages one command looks at in one queue.
pub const SCAN_LIMIT: usize = 20_000;

/// Dead-letter errors.
#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The broker failed.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// The filter is invalid.
    #[error("{0}")]
    BadFilter(String),
}

impl DeadError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Queue(e) => e.is_retryable(),
            Self::Amqp(e) => e.is_retryable(),
            Self::BadFilter(_) => false,
        }
    }
}

/// Which queue(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Which {
    /// Both.
    #[default]
    All,
    /// `<prefix>undelivered` (shown as `dead`).
    Dead,
    /// `<prefix>rejected`.
    Rejected,
}

impl Which {
    fn queues(self) -> &'static [&'static str] {
        match self {
            Self::All => &["dead", "rejected"],
            Self::Dead => &["dead"],
            Self::Rejected => &["rejected"],
        }
    }
}

/// The broker queue behind an operator-facing name: `dead` is where the
/// router parks deliveries it gave up on (`<prefix>undelivered`).
fn physical(label: &str) -> &str {
    match label {
        "dead" => "undelivered",
        other => other,
    }
}

/// Reasons a dead letter may carry besides the wire reason codes: why the
/// router parked it, or why the broker dead-lettered it.
pub const EXTRA_REASONS: [&str; 4] = ["not-a-delivery", "rejected", "maxlen", "delivery_limit"];

/// Every `reason` a filter accepts, sorted: the wire reason codes and
/// [`EXTRA_REASONS`].
pub fn reasons() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = crate::core::reason::Reason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain(EXTRA_REASONS)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Selection of dead letters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Filter {
    /// Queue(s).
    #[serde(default)]
    pub queue: Which,
    /// Destination code (`lgsp-dest`, or one of `lgsp-to`).
    #[serde(default)]
    pub dest: Option<String>,
    /// Source code (`lgsp-from`).
    #[serde(default)]
    pub source: Option<String>,
    /// Reason (`max-attempts`, `expired` for dead; a reason code such
    /// as `unknown-key` for rejected).
    #[serde(default)]
    pub reason: Option<String>,
    /// Only messages that died at least this many seconds ago.
    #[serde(default)]
    pub older_than_s: Option<u64>,
    /// At most this many selected messages.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One dead letter as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Item {
    /// `dead` or `rejected`.
    pub queue: String,
    /// AMQP message id.
    pub message_id: Option<String>,
    /// `lgsp-from`.
    pub source: Option<String>,
    /// `lgsp-dest` (dead) or `lgsp-to` (rejected).
    pub dest: Option<String>,
    /// Why it is here.
    pub reason: String,
    /// Detail (`x-truc-detail`, or the queue it died in).
    pub detail: String,
    /// When it died (RFC 3339), if known.
    pub died_at: Option<String>,
    /// Seconds since then.
    pub age_s: Option<i64>,
    /// Routing key it was originally published with (rejected).
    pub routing_key: Option<String>,
    /// Body size.
    pub size: usize,
    /// Times it died (dead).
    pub deaths: i64,
}

/// Describes `g`, taken from `queue` (`dead` or `rejected`).
pub fn describe(queue: &str, g: &Got, now: i64) -> Item {
    let m = &g.inbound.message;
    let h = |n: &str| m.header(n).map(str::to_owned);
    let (reason, detail, died_ms, dest, deaths) = if queue == "rejected" {
        (
            h("x-truc-reason").unwrap_or_default(),
            h("x-truc-detail").unwrap_or_default(),
            h("x-truc-rejected-at").and_then(|t| parse_rfc3339(&t).ok()),
            h("lgsp-to"),
            0,
        )
    } else {
        // Parked by the router (x-truc-*), or dead-lettered by the broker (x-death).
        let d = g.death.as_ref();
        (
            h("x-truc-reason")
                .or_else(|| d.map(|d| d.reason.clone()))
                .or_else(|| h("x-first-death-reason"))
                .unwrap_or_default(),
            h("x-truc-detail")
                .or_else(|| d.map(|d| format!("died in {}", d.queue)))
                .unwrap_or_default(),
            h("x-truc-died-at")
                .and_then(|t| parse_rfc3339(&t).ok())
                .or_else(|| d.and_then(|d| d.time_ms)),
            h("lgsp-dest"),
            h("x-truc-deaths")
                .and_then(|n| n.parse().ok())
                .or_else(|| d.map(|d| d.count))
                .unwrap_or(0),
        )
    };
    Item {
        queue: queue.to_owned(),
        message_id: m.message_id.clone(),
        source: h("lgsp-from"),
        dest,
        reason,
        detail,
        died_at: died_ms.map(format_rfc3339),
        age_s: died_ms.map(|t| (now - t).max(0) / 1000),
        routing_key: h("x-truc-routing-key"),
        size: m.body.len(),
        deaths,
    }
}

/// Whether `item` is selected by `f` (queue and limit aside).
pub fn matches(f: &Filter, item: &Item) -> bool {
    if let Some(d) = &f.dest {
        let hit = item
            .dest
            .as_deref()
            .is_some_and(|v| v.split(',').any(|c| c == d));
        if !hit {
            return false;
        }
    }
    if f.source
        .as_ref()
        .is_some_and(|s| item.source.as_ref() != Some(s))
    {
        return false;
    }
    if f.reason.as_ref().is_some_and(|r| &item.reason != r) {
        return false;
    }
    if let Some(min) = f.older_than_s {
        // Unknown age: not old enough to be touched by an age filter.
        if item.age_s.is_none_or(|a| (a as u64) < min) {
            return false;
        }
    }
    true
}

/// What to do with selected messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Look only.
    List,
    /// Republish at `rate` messages per second.
    Retry {
        /// Messages per second.
        rate: f64,
    },
    /// Remove.
    Drop,
}

/// What a command did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Messages looked at.
    pub scanned: usize,
    /// Selected messages (listed, retried or dropped).
    pub items: Vec<Item>,
    /// `list`, `retry` or `drop`.
    pub action: String,
}

/// The message to republish for a retry of `g` from `queue`.
pub fn republication(
    hub: &Hub,
    queue: &str,
    g: &Got,
) -> Result<crate::core::message::Message, String> {
    let m = &g.inbound.message;
    if queue == "rejected" {
        let rk = m
            .header("x-truc-routing-key")
            .ok_or("no x-truc-routing-key header: cannot tell where it was going")?
            .to_owned();
        let mut m = m.clone();
        m.exchange = hub.topology.name("ingress");
        m.routing_key = rk;
        m.strip_bookkeeping();
        return Ok(m);
    }
    let dest = m
        .header("lgsp-dest")
        .ok_or("no lgsp-dest header: cannot tell its destination")?;
    // The router's one delivery builder: signed again with the destination's
    // current key (it may have been rotated since the copy was parked).
    Ok(hub.router.parked_retry(m, dest))
}

/// Lists, retries or drops the dead letters selected by `f`.
pub async fn run(hub: &Hub, by: &str, f: &Filter, action: Action) -> Result<Outcome, DeadError> {
    if let Action::Retry { rate } = action {
        if !(rate > 0.0 && rate <= 1000.0) {
            return Err(DeadError::BadFilter(
                "--rate must be between 0 and 1000 per second".into(),
            ));
        }
    }
    if let Some(r) = &f.reason {
        if !reasons().contains(&r.as_str()) {
            return Err(DeadError::BadFilter(format!(
                "reason {r:?} is not one of {}",
                reasons().join(", ")
            )));
        }
    }
    let link = link(hub)?;
    let limit = f.limit.unwrap_or(usize::MAX);
    let mut out = Outcome {
        scanned: 0,
        items: Vec::new(),
        action: match action {
            Action::List => "list",
            Action::Retry { .. } => "retry",
            Action::Drop => "drop",
        }
        .to_owned(),
    };
    let pace = match action {
        Action::Retry { rate } => Some(Duration::from_secs_f64(1.0 / rate)),
        _ => None,
    };
    let mut next_at = tokio::time::Instant::now();
    for q in f.queue.queues() {
        if out.items.len() >= limit {
            break;
        }
        let name = hub.topology.name(physical(q));
        let b = link.browse(&name).await?;
        let res = async {
            let mut seen = 0;
            while seen < SCAN_LIMIT && out.items.len() < limit {
                let Some(g) = b.get().await? else { break };
                seen += 1;
                out.scanned += 1;
                let item = describe(q, &g, now_ms());
                if !matches(f, &item) {
                    continue; // stays unacked: back to the queue on close
                }
                let audit_source = item.source.clone().unwrap_or_default();
                let mid = item.message_id.clone().unwrap_or_default();
                match action {
                    Action::List => {}
                    Action::Drop => {
                        hub.router.audit().record(
                            AuditEvent::DeadDropped {
                                queue: (*q).to_owned(),
                                source: audit_source,
                                message_id: mid,
                            }
                            .by(by),
                        );
                        b.ack(g.inbound.delivery_tag).await?;
                    }
                    Action::Retry { .. } => {
                        let m = match republication(hub, q, &g) {
                            Ok(m) => m,
                            Err(why) => {
                                tracing::warn!(queue = %name, message_id = %Escaped(&mid), why = %Escaped(&why), "dead letter not retried");
                                continue;
                            }
                        };
                        if let Some(p) = pace {
                            tokio::time::sleep_until(next_at).await;
                            next_at = tokio::time::Instant::now() + p;
                        }
                        link.publish(&m).await?;
                        hub.router.audit().record(
                            AuditEvent::DeadRetried {
                                queue: (*q).to_owned(),
                                source: audit_source,
                                message_id: mid,
                                target: format!("{} {}", m.exchange, m.routing_key),
                            }
                            .by(by),
                        );
                        b.ack(g.inbound.delivery_tag).await?;
                    }
                }
                out.items.push(item);
            }
            Ok::<_, DeadError>(())
        }
        .await;
        b.close().await;
        res?;
    }
    match action {
        Action::List => {}
        Action::Retry { .. } => crate::core::metrics::operator_action("retry", out.items.len()),
        Action::Drop => crate::core::metrics::operator_action("drop", out.items.len()),
    }
    let target = format!("{:?}", f.queue).to_lowercase();
    match action {
        Action::List => {}
        Action::Retry { rate } => hub.router.audit().record(
            AuditEvent::admin(
                "dead-retry",
                target,
                format!("{} messages at {rate}/s", out.items.len()),
            )
            .by(by),
        ),
        Action::Drop => hub.router.audit().record(
            AuditEvent::admin("dead-drop", target, format!("{} messages", out.items.len())).by(by),
        ),
    }
    if action != Action::List {
        hub.store.durable().await.map_err(QueueError::from)?;
        tracing::info!(action = %out.action, messages = out.items.len(), "dead letters handled by operator");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(reason: &str, dest: &str, age: Option<i64>) -> Item {
        Item {
            queue: "dead".into(),
            message_id: Some("m".into()),
            source: Some("S1".into()),
            dest: Some(dest.into()),
            reason: reason.into(),
            detail: String::new(),
            died_at: None,
            age_s: age,
            routing_key: None,
            size: 0,
            deaths: 1,
        }
    }

    #[test]
    fn filters_combine() {
        let all = Filter::default();
        assert!(matches(&all, &item("rejected", "D1", None)));
        let f = Filter {
            dest: Some("D2".into()),
            ..Filter::default()
        };
        assert!(matches(&f, &item("x", "D1,D2", None)));
        assert!(!matches(&f, &item("x", "D1,D22", None)));
        let f = Filter {
            source: Some("S2".into()),
            ..Filter::default()
        };
        assert!(!matches(&f, &item("x", "D1", None)));
        let f = Filter {
            reason: Some("expired".into()),
            older_than_s: Some(60),
            ..Filter::default()
        };
        assert!(matches(&f, &item("expired", "D1", Some(61))));
        assert!(!matches(&f, &item("expired", "D1", Some(59))));
        assert!(!matches(&f, &item("expired", "D1", None)));
        assert!(!matches(&f, &item("rejected", "D1", Some(100))));
    }
}

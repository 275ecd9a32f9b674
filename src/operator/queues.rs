//! Operator views and actions over the agencies' queues: depth, consumers,
//! age of the oldest waiting envelope, an age histogram (like qshape),
//! peeking without consuming, purging with a bounce notice to each source,
//! and the periodic sampling of depths for `/metrics`.
//!
//! Invariants: peeking returns every message it took to the queue
//! (`basic.reject requeue=true`, which sets the redelivered flag); purging
//! acks a message only after its source's `bounced` notice was confirmed by
//! the broker and its timeline records `purged`, and never takes more than
//! the messages waiting when it started; "online" is decided in one place,
//! [`is_online`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::broker::{AmqpError, Link, QueueInfo};
use crate::core::code::AgencyCode;
use crate::core::message::Message;
use crate::core::notice::{HubKey, Notice, NoticeKind};
use crate::core::reason::Reason;
use crate::core::time::{format_rfc3339, now_ms, parse_rfc3339};
use crate::core::timeline::DeliveryState;
use crate::operator::Hub;
use crate::state::audit::AuditEvent;
use crate::state::store::StoreError;
use crate::state::tracking::EnvelopeRecord;

/// Queue operation errors.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// truc is not connected to the broker right now.
    #[error("the hub is not connected to the broker right now")]
    NoBroker,
    /// No such agency.
    #[error("agency {0} is not registered")]
    NotFound(AgencyCode),
    /// The broker failed.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QueueError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::NoBroker => true,
            Self::NotFound(_) => false,
            Self::Amqp(e) => e.is_retryable(),
            Self::Store(e) => e.is_retryable(),
        }
    }
}

/// Whether an agency is online: a consumer on its inbox now, or the presence
/// tracker's state (consumers or heartbeats seen by its last poll).
pub fn is_online(hub: &Hub, code: &AgencyCode, inbox: &QueueInfo) -> bool {
    // A consumer on the inbox right now is online by definition (PROTOCOL
    // §6), even before the tracker's next poll has seen it.
    inbox.consumers > 0
        || match hub.presence.get(code) {
            Ok(Some(p)) => p.state == crate::core::presence::State::Online,
            Ok(None) | Err(_) => false,
        }
}

/// Queue facts of `names`, [`INFO_CONCURRENCY`] at a time, in order; `None`
/// where the broker did not answer (e.g. the queue does not exist).
pub async fn infos(link: Arc<Link>, names: Vec<String>) -> Vec<Option<QueueInfo>> {
    link.probe_queues(&names, INFO_CONCURRENCY)
        .await
        .into_iter()
        .map(Result::ok)
        .collect()
}

/// Channels asking at once (the link caps it at its own probe-channel limit).
pub const INFO_CONCURRENCY: usize = 16;

/// The current broker link, or [`QueueError::NoBroker`].
pub fn link(hub: &Hub) -> Result<Arc<Link>, QueueError> {
    hub.link.borrow().clone().ok_or(QueueError::NoBroker)
}

/// The age buckets of [`shape`], upper bounds in seconds (the last is open).
pub const BUCKETS: [(&str, u64); 7] = [
    ("0-5m", 300),
    ("5-30m", 1_800),
    ("30m-2h", 7_200),
    ("2-8h", 28_800),
    ("8h-1d", 86_400),
    ("1-3d", 259_200),
    (">3d", u64::MAX),
];

/// The bucket index of an age in milliseconds.
pub fn bucket(age_ms: i64) -> usize {
    let secs = (age_ms.max(0) / 1000) as u64;
    BUCKETS
        .iter()
        .position(|(_, upper)| secs < *upper)
        .unwrap_or(BUCKETS.len() - 1)
}

/// What the tracking records say is waiting for one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waiting {
    /// Envelopes waiting in the inbox ([`crate::state::tracking::DestTrack::is_waiting`]).
    pub count: u64,
    /// When the oldest of them was queued (ms).
    pub oldest_ms: Option<i64>,
    /// Counts per [`BUCKETS`] entry.
    pub buckets: [u64; 7],
}

/// Scans `records` for destinations still waiting for them
/// ([`crate::state::tracking::DestTrack::is_waiting`]: queued, perhaps delay-warned since), as of
/// `now`; each counts from when it was queued.
pub fn waiting<'a>(
    records: impl IntoIterator<Item = &'a EnvelopeRecord>,
    now: i64,
) -> BTreeMap<AgencyCode, Waiting> {
    let mut out: BTreeMap<AgencyCode, Waiting> = BTreeMap::new();
    for rec in records {
        for d in &rec.dests {
            if !d.is_waiting() {
                continue;
            }
            let since = d.waiting_since().unwrap_or(rec.accepted_at_ms);
            let w = out.entry(d.code.clone()).or_default();
            w.count += 1;
            w.oldest_ms = Some(w.oldest_ms.map_or(since, |o| o.min(since)));
            w.buckets[bucket(now - since)] += 1;
        }
    }
    out
}

async fn all_waiting(hub: &Hub, now: i64) -> Result<BTreeMap<AgencyCode, Waiting>, QueueError> {
    let tracking = hub.router.tracking().clone();
    // A full scan of the timelines: off the async workers.
    tokio::task::spawn_blocking(move || {
        let records = tracking.list(usize::MAX, |r| r.dests.iter().any(|d| d.is_waiting()))?;
        Ok(waiting(&records, now))
    })
    .await
    .map_err(|e| QueueError::Store(StoreError::Sled(sled::Error::ReportableBug(e.to_string()))))?
}

/// One row of `truc queue list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueRow {
    /// Agency code.
    pub code: String,
    /// Agency name.
    pub name: String,
    /// Enabled.
    pub enabled: bool,
    /// Inbox queue.
    pub inbox: String,
    /// Messages ready in the inbox (null when the broker did not answer).
    pub messages: Option<u32>,
    /// Consumers on the inbox.
    pub consumers: Option<u32>,
    /// Messages in the notify queue.
    pub notify_messages: Option<u32>,
    /// Envelopes the timelines show as `queued` for it.
    pub queued_tracked: u64,
    /// When the oldest waiting envelope was queued (RFC 3339).
    pub oldest_queued_at: Option<String>,
    /// Its age in seconds.
    pub oldest_age_s: Option<i64>,
    /// Online ([`is_online`]).
    pub online: bool,
}

/// Per-agency queue facts.
pub async fn list(hub: &Hub) -> Result<Vec<QueueRow>, QueueError> {
    let link = link(hub)?;
    let now = now_ms();
    let waiting = all_waiting(hub, now).await?;
    let agencies = hub.registry.list();
    let mut names = Vec::with_capacity(agencies.len() * 2);
    for a in &agencies {
        names.push(hub.topology.inbox(&a.code));
        names.push(hub.topology.notify(&a.code));
    }
    let facts = infos(link.clone(), names.clone()).await;
    let mut rows = Vec::new();
    for (i, a) in agencies.iter().enumerate() {
        let inbox = names[2 * i].clone();
        let info = facts[2 * i];
        let notify = facts[2 * i + 1];
        let w = waiting.get(&a.code).cloned().unwrap_or_default();
        let mut oldest = w.oldest_ms;
        if oldest.is_none() && info.is_some_and(|i| i.messages > 0) {
            oldest = peek_head_accepted_at(&link, &inbox).await;
        }
        rows.push(QueueRow {
            code: a.code.to_string(),
            name: a.name.clone(),
            enabled: a.enabled,
            inbox,
            messages: info.map(|i| i.messages),
            consumers: info.map(|i| i.consumers),
            notify_messages: notify.map(|i| i.messages),
            queued_tracked: w.count,
            oldest_queued_at: oldest.map(format_rfc3339),
            oldest_age_s: oldest.map(|o| (now - o).max(0) / 1000),
            online: info.is_some_and(|i| is_online(hub, &a.code, &i)),
        });
    }
    Ok(rows)
}

/// `lgsp-accepted-at` of the head message of `queue` (taken and requeued).
async fn peek_head_accepted_at(link: &Link, queue: &str) -> Option<i64> {
    let b = link.browse(queue).await.ok()?;
    let got = b.get().await.ok().flatten();
    let at = got
        .as_ref()
        .and_then(|g| g.inbound.message.header("lgsp-accepted-at"))
        .and_then(|t| parse_rfc3339(t).ok());
    if let Some(g) = got {
        let _ = b.reject(g.inbound.delivery_tag, true).await;
    }
    b.close().await;
    at
}

/// One destination's row of `truc queue shape`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShapeRow {
    /// Destination code.
    pub code: String,
    /// Envelopes waiting.
    pub total: u64,
    /// Counts by bucket label, in [`BUCKETS`] order.
    pub buckets: BTreeMap<String, u64>,
}

/// The age histogram of waiting envelopes per destination.
pub async fn shape(hub: &Hub) -> Result<(Vec<&'static str>, Vec<ShapeRow>), QueueError> {
    let waiting = all_waiting(hub, now_ms()).await?;
    let rows = waiting
        .into_iter()
        .map(|(code, w)| ShapeRow {
            code: code.to_string(),
            total: w.count,
            buckets: BUCKETS
                .iter()
                .zip(w.buckets)
                .map(|((l, _), n)| ((*l).to_owned(), n))
                .collect(),
        })
        .collect();
    Ok((BUCKETS.iter().map(|(l, _)| *l).collect(), rows))
}

/// Envelope metadata as `peek` and `dead list` show it (never the body).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageView {
    /// AMQP message id.
    pub message_id: Option<String>,
    /// `lgsp-from`.
    pub from: Option<String>,
    /// `lgsp-to`.
    pub to: Option<String>,
    /// `lgsp-dest`.
    pub dest: Option<String>,
    /// `lgsp-subject`.
    pub subject: Option<String>,
    /// `lgsp-priority`.
    pub priority: Option<String>,
    /// `lgsp-type`.
    pub data_type: Option<String>,
    /// Body size in bytes.
    pub size: usize,
    /// `lgsp-accepted-at`.
    pub accepted_at: Option<String>,
    /// `lgsp-attempt`.
    pub attempt: Option<String>,
    /// The broker had delivered it before.
    pub redelivered: bool,
}

/// The metadata of `m`.
pub fn view(m: &Message, redelivered: bool) -> MessageView {
    let h = |n: &str| m.header(n).map(str::to_owned);
    MessageView {
        message_id: m.message_id.clone(),
        from: h("lgsp-from"),
        to: h("lgsp-to"),
        dest: h("lgsp-dest"),
        subject: h("lgsp-subject"),
        priority: h("lgsp-priority"),
        data_type: h("lgsp-type"),
        size: m.body.len(),
        accepted_at: h("lgsp-accepted-at"),
        attempt: h("lgsp-attempt"),
        redelivered,
    }
}

fn registered(hub: &Hub, code: &AgencyCode) -> Result<(), QueueError> {
    hub.registry
        .get(code)
        .map(|_| ())
        .ok_or_else(|| QueueError::NotFound(code.clone()))
}

/// Up to `n` messages at the head of `code`'s inbox, returned to the queue.
pub async fn peek(hub: &Hub, code: &AgencyCode, n: usize) -> Result<Vec<MessageView>, QueueError> {
    registered(hub, code)?;
    let link = link(hub)?;
    let b = link.browse(&hub.topology.inbox(code)).await?;
    let mut out = Vec::new();
    let mut tags = Vec::new();
    let res = async {
        while out.len() < n {
            let Some(g) = b.get().await? else { break };
            out.push(view(&g.inbound.message, g.inbound.redelivered));
            tags.push(g.inbound.delivery_tag);
        }
        Ok::<_, QueueError>(())
    }
    .await;
    for t in tags {
        let _ = b.reject(t, true).await;
    }
    b.close().await;
    res.map(|_| out)
}

/// What `purge` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeReport {
    /// The agency.
    pub code: String,
    /// Envelopes removed.
    pub purged: u64,
    /// Bounce notices sent to sources.
    pub notices: u64,
    /// Messages whose source is not a registered agency (removed, no notice).
    pub without_source: u64,
    /// Reason code in the notices.
    pub reason: String,
}

/// Removes every envelope waiting in `code`'s inbox: each source gets a
/// `bounced` notice, each timeline a `purged` event. The reason is
/// `destination-disabled` when the agency is disabled, else
/// `rejected-by-destination` (the operator refuses on the destination's
/// behalf); the detail says it was purged by the operator.
pub async fn purge(hub: &Hub, by: &str, code: &AgencyCode) -> Result<PurgeReport, QueueError> {
    let entry = hub
        .registry
        .get(code)
        .ok_or_else(|| QueueError::NotFound(code.clone()))?;
    let link = link(hub)?;
    let inbox = hub.topology.inbox(code);
    let start = link.queue_info(&inbox).await?.messages;
    let reason = if entry.agency.enabled {
        Reason::RejectedByDestination
    } else {
        Reason::DestinationDisabled
    };
    let detail = format!("purged from the inbox of {code} by the hub operator; not delivered");
    let b = link.browse(&inbox).await?;
    let mut report = PurgeReport {
        code: code.to_string(),
        purged: 0,
        notices: 0,
        without_source: 0,
        reason: reason.to_string(),
    };
    // Acks wait for one group commit per batch, not one fsync per message.
    let mut pending: Vec<u64> = Vec::new();
    let res = async {
        for _ in 0..start {
            let Some(g) = b.get().await? else { break };
            let m = &g.inbound.message;
            let mid = m.message_id.clone().unwrap_or_default();
            let source = m
                .header("lgsp-from")
                .and_then(|f| AgencyCode::parse(f).ok());
            let now = now_ms();
            match source.as_ref().and_then(|s| hub.registry.get(s)) {
                Some(src) => {
                    let mut n =
                        Notice::new(NoticeKind::Bounced, src.agency.code.clone(), &mid, now);
                    n.dest = Some(code.clone());
                    n.reason = Some(reason);
                    n.detail = detail.clone();
                    let last = hub.registry.last_used(&src.agency.code);
                    let key = src
                        .agency
                        .signing_key(last.as_deref(), now)
                        .map(|k| HubKey::new(&k.access_key, &k.secret))
                        .unwrap_or(HubKey {
                            access_key: None,
                            secret: "",
                        });
                    link.publish(&n.to_message(&hub.topology.prefix, key))
                        .await?;
                    report.notices += 1;
                    crate::core::metrics::bounced(reason);
                    hub.router
                        .tracking()
                        .update(&src.agency.code, &mid, |rec| {
                            if let Some(d) = rec.dests.iter_mut().find(|d| &d.code == code) {
                                d.push(now, DeliveryState::Purged, Some(reason), &detail);
                            }
                        })?;
                }
                None => report.without_source += 1,
            }
            hub.router.audit().record(
                AuditEvent::Purged {
                    dest: code.to_string(),
                    source: source.map(|s| s.to_string()).unwrap_or_default(),
                    message_id: mid.clone(),
                    reason: reason.to_string(),
                }
                .by(by),
            );
            pending.push(g.inbound.delivery_tag);
            if pending.len() >= PURGE_BATCH {
                report.purged += settle(hub, &b, &mut pending).await?;
            }
        }
        report.purged += settle(hub, &b, &mut pending).await?;
        Ok::<_, QueueError>(())
    }
    .await;
    b.close().await;
    if res.is_ok() {
        hub.router.audit().record(
            AuditEvent::admin(
                "queue-purge",
                code.to_string(),
                format!("{} envelopes, reason {}", report.purged, report.reason),
            )
            .by(by),
        );
    }
    crate::core::metrics::operator_action("purge", report.purged as usize);
    tracing::info!(agency = %code, purged = report.purged, notices = report.notices, "inbox purged by operator");
    res.map(|_| report)
}

/// Messages purged per group commit.
const PURGE_BATCH: usize = 64;

/// Makes the batch's records durable, then acks its messages.
async fn settle(
    hub: &Hub,
    b: &crate::broker::Browser,
    pending: &mut Vec<u64>,
) -> Result<u64, QueueError> {
    if pending.is_empty() {
        return Ok(0);
    }
    hub.store.durable().await?;
    let n = pending.len() as u64;
    for tag in pending.drain(..) {
        b.ack(tag).await?;
    }
    Ok(n)
}

/// Samples inbox depths, consumers, online agencies and dead-letter depths
/// into the metrics.
pub async fn sample(hub: &Hub) {
    let Ok(link) = link(hub) else { return };
    let agencies = hub.registry.list();
    let names: Vec<String> = agencies
        .iter()
        .map(|a| hub.topology.inbox(&a.code))
        .collect();
    let facts = infos(link.clone(), names).await;
    for (a, info) in agencies.iter().zip(facts) {
        if let Some(info) = info {
            crate::core::metrics::inbox_depth(a.code.as_str(), info.messages);
            crate::core::metrics::inbox_consumers(a.code.as_str(), info.consumers);
        }
    }
    for q in ["undelivered", "dead", "rejected"] {
        if let Ok(info) = link.queue_info(&hub.topology.name(q)).await {
            crate::core::metrics::dead_depth(q, info.messages);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tracking::DestTrack;

    #[test]
    fn buckets_follow_qshape_bounds() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(299_999), 0);
        assert_eq!(bucket(300_000), 1);
        assert_eq!(bucket(7_199_000), 2);
        assert_eq!(bucket(7_200_000), 3);
        assert_eq!(bucket(86_399_000), 4);
        assert_eq!(bucket(86_400_000), 5);
        assert_eq!(bucket(3 * 86_400_000), 6);
        assert_eq!(bucket(-5), 0);
    }

    #[test]
    fn waiting_counts_only_queued_destinations() {
        let code = |s: &str| AgencyCode::parse(s).unwrap();
        let rec =
            |at: i64, dests: Vec<DestTrack>| EnvelopeRecord::for_test(at, &format!("m{at}"), dests);
        let now = 10_000_000;
        let mut delivered = DestTrack::new(code("A"), 0, DeliveryState::Queued, None, "");
        delivered.push(1, DeliveryState::Delivered, None, "");
        let records = vec![
            rec(
                now - 1_000,
                vec![DestTrack::new(
                    code("A"),
                    now - 1_000,
                    DeliveryState::Queued,
                    None,
                    "",
                )],
            ),
            rec(
                now - 4_000_000,
                vec![
                    DestTrack::new(code("A"), now - 4_000_000, DeliveryState::Queued, None, ""),
                    delivered,
                ],
            ),
            rec(
                now - 20,
                vec![DestTrack::new(
                    code("B"),
                    now - 20,
                    DeliveryState::Queued,
                    None,
                    "",
                )],
            ),
        ];
        let w = waiting(&records, now);
        assert_eq!(w[&code("A")].count, 2);
        assert_eq!(w[&code("A")].oldest_ms, Some(now - 4_000_000));
        assert_eq!(w[&code("A")].buckets, [1, 0, 1, 0, 0, 0, 0]);
        assert_eq!(w[&code("B")].count, 1);
    }

    #[test]
    fn a_delay_warned_envelope_still_counts_as_waiting() {
        let code = |s: &str| AgencyCode::parse(s).unwrap();
        let now = 10_000_000;
        let mut warned = DestTrack::new(
            code("A"),
            now - 5_000_000,
            DeliveryState::Accepted,
            None,
            "",
        );
        warned.push(now - 5_000_000, DeliveryState::Queued, None, "attempt 1");
        warned.push(
            now - 10,
            DeliveryState::DelayWarning,
            Some(Reason::DestinationOffline),
            "offline",
        );
        let mut held = DestTrack::new(code("A"), now - 100, DeliveryState::Accepted, None, "");
        held.push(now - 100, DeliveryState::Deferred, None, "until later");
        let rec = EnvelopeRecord::for_test(now - 5_000_000, "m1", vec![warned, held]);
        let w = waiting([&rec], now);
        assert_eq!(w[&code("A")].count, 1, "warned counts, deferred does not");
        assert_eq!(
            w[&code("A")].oldest_ms,
            Some(now - 5_000_000),
            "counted from when it was queued, not from the warning"
        );
        assert_eq!(w[&code("A")].buckets, [0, 0, 1, 0, 0, 0, 0]);
    }
}

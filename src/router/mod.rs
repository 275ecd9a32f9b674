//! The ingress pipeline: decode → authenticate → authorise → check digest →
//! dedupe → route → publish (confirmed) → record (durable) → ack.
//!
//! Invariants:
//! - an ingress message is acknowledged only after every publish it caused
//!   was confirmed by the broker and its record is on disk;
//! - the envelope record is written *after* its deliveries are confirmed, so a
//!   crash in between makes the broker redeliver it and truc publish again,
//!   marked `lgsp-attempt: 2` (a possible repeat the client library drops);
//! - a sender that cannot be authenticated gets no notice: its message goes
//!   to the bounded `rejected` queue;
//! - the router never holds a body anywhere but in the message being handled.
//!
//! The broker is reached through the [`Outbox`] trait, so the whole pipeline
//! runs in unit tests without one.

mod delivery;
mod holding;
#[cfg(test)]
mod tests;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::core::auth::{body_digest, verify};
use crate::core::canonical::canonical_form;
use crate::core::code::AgencyCode;
use crate::core::envelope::{EnvelopeFields, Kind, Payload, Refusal, Signed, StatusFields};
use crate::core::message::{Inbound, Message};
use crate::core::metrics;
use crate::core::notice::{Notice, NoticeKind};
use crate::core::policy::Policies;
use crate::core::reason::Reason;
use crate::core::time::{format_rfc3339, now_ms};
use crate::core::timeline::{DeliveryState, StatusCode};
use crate::core::topology::Topology;
use crate::router::delivery::Delivery;
use crate::state::audit::{Audit, AuditEvent};
use crate::state::registry::{Entry, Registry};
use crate::state::replay::{NonceCheck, Nonces};
use crate::state::store::{Store, StoreError};
use crate::state::tracking::{DestTrack, EnvelopeRecord, Pending, Tracking};

pub use crate::broker::{Outbox, PublishError};

/// Router errors: the ingress message is not acked and will come again.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A publish failed.
    #[error("publish failed: {0}")]
    Publish(#[from] PublishError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The message refers to an envelope still being accepted; try later.
    #[error("{0}")]
    Pending(String),
}

impl RouterError {
    /// Whether handling the same message again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Publish(PublishError::Failed(_)) => true,
            Self::Publish(PublishError::Unroutable) => true,
            Self::Store(e) => e.is_retryable(),
            Self::Pending(_) => true,
        }
    }
}

/// What happened to one ingress message (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; delivered to these destinations.
    Accepted {
        /// Destinations published to.
        delivered: Vec<AgencyCode>,
        /// Destinations bounced at once, with the reason.
        bounced: Vec<(AgencyCode, Reason)>,
    },
    /// A repeat of an accepted envelope; `accepted` was sent again.
    Duplicate,
    /// Refused with a notice to the sender.
    Rejected(Reason),
    /// Refused without a notice (unauthenticated), kept in the rejected queue.
    Quarantined(Reason),
    /// A status message was recorded and relayed.
    StatusRelayed,
    /// A heartbeat was taken.
    Heartbeat,
    /// A delivery was put (back) in a delay bucket.
    Held,
    /// A held delivery went out to its destination.
    Released,
    /// A copy was dropped (why).
    Dropped(&'static str),
}

/// A valid heartbeat, handed to the presence task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The agency that signed it.
    pub code: AgencyCode,
    /// `lgsp-state: online`.
    pub online: bool,
    /// Hub time of arrival (ms).
    pub at_ms: i64,
}

/// What [`Router::offline_notice`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineNotice {
    /// The notice was published and recorded in the timeline.
    Sent,
    /// The timeline already holds it (sent before a restart): not sent again.
    AlreadySent,
    /// The destination is no longer waiting (answered, or bounced otherwise).
    NotWaiting,
}

/// The notice [`Router::offline_notice`] sends.
#[derive(Debug, Clone, Copy)]
pub struct OfflineFacts<'a> {
    /// `delay-warning` or `bounced`.
    pub kind: NoticeKind,
    /// `destination-offline` or `destination-disabled`.
    pub reason: Reason,
    /// Human text.
    pub detail: &'a str,
}

/// The pipeline and the state it reads.
pub struct Router {
    heartbeats: std::sync::OnceLock<tokio::sync::mpsc::Sender<Heartbeat>>,
    pub(crate) locks: KeyLocks,
    limiter: std::sync::Mutex<crate::core::scheduler::RateLimiter>,
    pub(crate) registry: Registry,
    pub(crate) tracking: Tracking,
    nonces: Nonces,
    pub(crate) store: Store,
    pub(crate) topology: Arc<Topology>,
    policies: RwLock<Arc<Policies>>,
    audit: Audit,
}

/// Striped async locks by `(from, message_id)`.
pub(crate) struct KeyLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl KeyLocks {
    const STRIPES: usize = 4096;

    fn new() -> Self {
        Self {
            stripes: (0..Self::STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    pub(crate) async fn lock(
        &self,
        from: &str,
        message_id: &str,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (from, message_id).hash(&mut h);
        self.stripes[(h.finish() as usize) % Self::STRIPES]
            .lock()
            .await
    }
}

struct Authenticated {
    signed: Signed,
    sender: Arc<Entry>,
}

impl Router {
    /// A router over `store`, `registry` and `topology` with `policies`.
    pub fn new(
        store: Store,
        registry: Registry,
        topology: Arc<Topology>,
        policies: Policies,
    ) -> Self {
        let audit = Audit::new(store.clone());
        Self {
            heartbeats: std::sync::OnceLock::new(),
            locks: KeyLocks::new(),
            limiter: std::sync::Mutex::new(crate::core::scheduler::RateLimiter::new()),
            tracking: Tracking::new(store.clone()),
            nonces: Nonces::new(store.clone()),
            registry,
            store,
            topology,
            policies: RwLock::new(Arc::new(policies)),
            audit,
        }
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<Policies> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the policies (SIGHUP).
    pub fn set_policies(&self, p: Policies) {
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
    }

    /// The tracking store.
    pub fn tracking(&self) -> &Tracking {
        &self.tracking
    }

    /// The audit log.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The nonce table.
    pub fn nonces(&self) -> &Nonces {
        &self.nonces
    }

    /// Where valid heartbeats go (the presence task). Set once; before it is
    /// set, heartbeats are counted and dropped.
    pub fn set_heartbeat_sink(&self, tx: tokio::sync::mpsc::Sender<Heartbeat>) {
        let _ = self.heartbeats.set(tx);
    }

    fn heartbeat(&self, code: &AgencyCode, online: bool, now: i64) {
        metrics::heartbeat(online);
        tracing::debug!(from = %code, online, "heartbeat");
        let Some(tx) = self.heartbeats.get() else {
            return;
        };
        let hb = Heartbeat {
            code: code.clone(),
            online,
            at_ms: now,
        };
        if let Err(e) = tx.try_send(hb) {
            // Heartbeats repeat: one lost under overload costs nothing lasting.
            tracing::warn!(from = %code, error = %e, "heartbeat dropped: presence task busy or stopped");
        }
    }

    /// Handles one ingress message end to end. On `Ok` the caller acks it; on
    /// `Err` it must not.
    pub async fn handle<O: Outbox>(
        &self,
        inbound: &Inbound,
        outbox: &O,
    ) -> Result<Outcome, RouterError> {
        let started = Instant::now();
        let now = now_ms();
        let msg = &inbound.message;
        let auth = match self.authenticate(msg, now)? {
            Ok(a) => a,
            Err(refusal) => return self.quarantine(msg, refusal, outbox).await,
        };
        let outcome = match self.check(&auth, msg, now)? {
            Err(refusal) => self.reject(&auth, refusal, outbox, now).await?,
            Ok(Payload::Envelope(fields)) => {
                self.route(&auth, msg, fields, inbound.redelivered, outbox, now)
                    .await?
            }
            Ok(Payload::Status(fields)) => self.status(&auth, fields, outbox, now).await?,
            Ok(Payload::Presence(p)) => {
                self.heartbeat(&auth.signed.from, p.online, now);
                Outcome::Heartbeat
            }
        };
        metrics::ingress_latency(started.elapsed());
        Ok(outcome)
    }

    /// Step 1: who sent it, and is the signature theirs.
    fn authenticate(
        &self,
        msg: &Message,
        now: i64,
    ) -> Result<Result<Authenticated, Refusal>, RouterError> {
        let signed = match Signed::parse(msg) {
            Ok(s) => s,
            Err(r) => return Ok(Err(r)),
        };
        let Some((sender, _key)) = self.registry.by_key(&signed.key, now) else {
            return Ok(Err(Refusal::new(
                Reason::UnknownKey,
                format!(
                    "access key {:?} is not registered or has expired",
                    signed.key
                ),
            )));
        };
        let canonical = match canonical_form(msg, &msg.routing_key) {
            Ok(c) => c,
            Err(e) => return Ok(Err(Refusal::new(Reason::Malformed, e.to_string()))),
        };
        let secret = sender
            .agency
            .keys
            .iter()
            .find(|k| k.access_key == signed.key)
            .map(|k| k.secret.as_str())
            .unwrap_or("");
        if let Err(e) = verify(
            signed.alg,
            secret,
            sender.public_key.as_ref(),
            canonical.as_bytes(),
            &signed.signature,
        ) {
            return Ok(Err(Refusal::new(Reason::BadSignature, e.to_string())));
        }
        Ok(Ok(Authenticated { signed, sender }))
    }

    /// Step 2: the authenticated sender's message is checked in full.
    fn check(
        &self,
        auth: &Authenticated,
        msg: &Message,
        now: i64,
    ) -> Result<Result<Payload, Refusal>, RouterError> {
        let policies = self.policies();
        let s = &auth.signed;
        if s.from != auth.sender.agency.code {
            return Ok(Err(Refusal::new(
                Reason::Forbidden,
                format!(
                    "key {} belongs to {}, not {}",
                    s.key, auth.sender.agency.code, s.from
                ),
            )));
        }
        if !auth.sender.agency.enabled {
            return Ok(Err(Refusal::new(
                Reason::Forbidden,
                format!("agency {} is disabled", s.from),
            )));
        }
        let skew_ms = policies.clock_skew.as_millis() as i64;
        if (s.time_ms - now).abs() > skew_ms {
            return Ok(Err(Refusal::new(
                Reason::ClockSkew,
                format!(
                    "lgsp-time {} is more than {}s from hub time {}",
                    format_rfc3339(s.time_ms),
                    skew_ms / 1000,
                    format_rfc3339(now)
                ),
            )));
        }
        match self.nonces.check_and_remember(
            &s.key,
            &s.nonce,
            &s.message_id,
            s.time_ms + skew_ms * 2,
            now,
        )? {
            NonceCheck::Fresh | NonceCheck::SameMessage => {}
            NonceCheck::Replay => {
                return Ok(Err(Refusal::new(
                    Reason::Replay,
                    format!("nonce {} was already used with key {}", s.nonce, s.key),
                )))
            }
        }
        let payload = match Payload::parse(s.kind, msg, policies.default_priority) {
            Ok(p) => p,
            Err(r) => return Ok(Err(r)),
        };
        if s.kind == Kind::Envelope && msg.body.len() as u64 > policies.max_body_bytes {
            return Ok(Err(Refusal::new(
                Reason::TooLarge,
                format!(
                    "body is {} bytes, the limit is {}",
                    msg.body.len(),
                    policies.max_body_bytes
                ),
            )));
        }
        let digest = match &payload {
            Payload::Envelope(e) => Some(&e.digest),
            Payload::Status(st) => Some(&st.digest),
            Payload::Presence(_) => None,
        };
        if let Some(d) = digest {
            if *d != body_digest(&msg.body) {
                return Ok(Err(Refusal::new(
                    Reason::DigestMismatch,
                    "the body does not match lgsp-digest",
                )));
            }
        }
        Ok(Ok(payload))
    }

    async fn quarantine<O: Outbox>(
        &self,
        msg: &Message,
        refusal: Refusal,
        outbox: &O,
    ) -> Result<Outcome, RouterError> {
        metrics::message_rejected(refusal.reason);
        tracing::warn!(
            routing_key = %msg.routing_key,
            message_id = msg.message_id.as_deref().unwrap_or(""),
            reason = %refusal.reason,
            detail = %refusal.detail,
            "unauthenticated input quarantined"
        );
        let mut q = msg.clone();
        q.exchange = String::new();
        q.routing_key = self.topology.name("rejected");
        q.priority = None;
        q.expiration = None;
        q.set_header("x-truc-reason", refusal.reason.as_str());
        q.set_header("x-truc-detail", refusal.detail.clone());
        q.set_header("x-truc-routing-key", msg.routing_key.clone());
        q.set_header("x-truc-rejected-at", format_rfc3339(now_ms()));
        outbox.publish(&q).await?;
        self.audit.record(AuditEvent::Quarantined {
            routing_key: msg.routing_key.clone(),
            message_id: msg.message_id.clone().unwrap_or_default(),
            reason: refusal.reason.to_string(),
        });
        Ok(Outcome::Quarantined(refusal.reason))
    }

    async fn reject<O: Outbox>(
        &self,
        auth: &Authenticated,
        refusal: Refusal,
        outbox: &O,
        now: i64,
    ) -> Result<Outcome, RouterError> {
        metrics::message_rejected(refusal.reason);
        tracing::info!(
            from = %auth.signed.from,
            message_id = %auth.signed.message_id,
            reason = %refusal.reason,
            detail = %refusal.detail,
            "message rejected"
        );
        // The notice goes to the agency whose key signed the message: the only
        // party authenticated (it may differ from lgsp-from when forbidden).
        let mut n = Notice::new(
            NoticeKind::Rejected,
            auth.sender.agency.code.clone(),
            &auth.signed.message_id,
            now,
        );
        n.reason = Some(refusal.reason);
        n.detail = refusal.detail;
        self.notify(&auth.sender, &n, outbox).await?;
        self.audit.record(AuditEvent::Rejected {
            from: auth.signed.from.to_string(),
            message_id: auth.signed.message_id.clone(),
            reason: refusal.reason.to_string(),
            detail: n.detail.clone(),
        });
        Ok(Outcome::Rejected(refusal.reason))
    }

    /// Publishes a notice to the source, declaring its queues if they are missing.
    pub(crate) async fn notify<O: Outbox>(
        &self,
        source: &Entry,
        n: &Notice,
        outbox: &O,
    ) -> Result<(), RouterError> {
        let m = n.to_message(&self.topology.prefix, source.agency.current_secret());
        self.publish_declaring(&source.agency.code, &m, outbox)
            .await
    }

    pub(crate) async fn publish_declaring<O: Outbox>(
        &self,
        code: &AgencyCode,
        m: &Message,
        outbox: &O,
    ) -> Result<(), RouterError> {
        let t = Instant::now();
        match outbox.publish(m).await {
            Err(PublishError::Unroutable) => {
                tracing::warn!(agency = %code, exchange = %m.exchange, "queue missing; declaring it");
                outbox.declare_agency(code).await?;
                outbox.publish(m).await?;
            }
            other => other?,
        }
        metrics::publish_confirm_latency(t.elapsed());
        Ok(())
    }

    async fn route<O: Outbox>(
        &self,
        auth: &Authenticated,
        msg: &Message,
        fields: EnvelopeFields,
        redelivered: bool,
        outbox: &O,
        now: i64,
    ) -> Result<Outcome, RouterError> {
        let from = &auth.signed.from;
        let mid = &auth.signed.message_id;
        // Copies of one envelope handled at once must not both deliver: the
        // dedupe check and the record write happen under the key's lock.
        let _guard = self.locks.lock(from.as_str(), mid).await;
        if let Some(rec) = self.tracking.get(from, mid)? {
            metrics::duplicate();
            tracing::info!(from = %from, message_id = %mid, "duplicate envelope absorbed");
            let mut n = Notice::new(NoticeKind::Accepted, from.clone(), mid, now);
            n.destinations = rec
                .dests
                .iter()
                .filter(|d| !d.is_final())
                .map(|d| d.code.clone())
                .collect();
            n.detail = "already accepted; not delivered again".into();
            self.notify(&auth.sender, &n, outbox).await?;
            return Ok(Outcome::Duplicate);
        }
        let policies = self.policies();
        let rate = policies.rate_of(from);
        let allowed = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            // Measured on signing times, so a backlog that waited in the broker
            // (hub restart, outage) is not refused for arriving all at once.
            .allow(from, rate, auth.signed.time_ms);
        if !allowed {
            return self
                .reject(
                    auth,
                    Refusal::new(
                        Reason::RateLimited,
                        format!(
                            "more than {} envelopes/s (burst {}) from {from}",
                            rate.per_s, rate.burst
                        ),
                    ),
                    outbox,
                    now,
                )
                .await;
        }
        let expired = fields.deliver_by_ms.is_some_and(|d| d <= now);
        let mut deliver: Vec<Arc<Entry>> = Vec::new();
        let mut bounced: Vec<(AgencyCode, Reason, String)> = Vec::new();
        for code in &fields.to {
            match self.registry.get(code) {
                None => bounced.push((
                    code.clone(),
                    Reason::UnknownDestination,
                    format!("no agency {code} is registered"),
                )),
                Some(e) if !e.agency.enabled => bounced.push((
                    code.clone(),
                    Reason::DestinationDisabled,
                    format!("agency {code} is disabled"),
                )),
                Some(_) if expired => bounced.push((
                    code.clone(),
                    Reason::Expired,
                    "lgsp-deliver-by has already passed".into(),
                )),
                Some(_) if !policies.allowed(from, code) => bounced.push((
                    code.clone(),
                    Reason::Forbidden,
                    format!("{from} may not send to {code} (access policy)"),
                )),
                Some(e) => deliver.push(e),
            }
        }
        let codes: Vec<AgencyCode> = deliver.iter().map(|d| d.agency.code.clone()).collect();
        self.tracking.index(from, mid, &codes)?;
        let attempt = if redelivered { "2" } else { "1" };
        let accepted_at = format_rfc3339(now);
        // Deferred (lgsp-not-before in the future): each delivery waits in a
        // delay bucket, in the broker, and comes back through the release queue.
        let defer_until = fields.not_before_ms.filter(|nb| {
            crate::core::scheduler::bucket_for(Duration::from_millis((nb - now).max(0) as u64))
                .is_some()
        });
        // Due within the bucket slack: wait it out here rather than deliver early.
        if let Some(nb) = fields
            .not_before_ms
            .filter(|nb| *nb > now && defer_until.is_none())
        {
            tokio::time::sleep(Duration::from_millis((nb - now) as u64)).await;
        }
        let deliveries: Vec<Message> = deliver
            .iter()
            .map(|dest| {
                let d = self.deliver_to(
                    Delivery::first(msg, &fields, &accepted_at, attempt, now),
                    &dest.agency.code,
                );
                match defer_until {
                    Some(due) => self.held(d, due, now),
                    None => d,
                }
            })
            .collect();
        if let Some(d) = fields.deliver_by_ms {
            self.tracking.add_deadline(d, from, mid)?;
        }
        // Notices: accepted, then one bounce per refused destination.
        let mut notices = Vec::with_capacity(1 + bounced.len());
        let mut acc = Notice::new(NoticeKind::Accepted, from.clone(), mid, now);
        acc.destinations = deliver.iter().map(|d| d.agency.code.clone()).collect();
        notices.push(acc);
        for (code, reason, detail) in &bounced {
            metrics::bounced(*reason);
            let mut b = Notice::new(NoticeKind::Bounced, from.clone(), mid, now);
            b.dest = Some(code.clone());
            b.reason = Some(*reason);
            b.detail = detail.clone();
            notices.push(b);
        }
        // Deliveries and notices go out together: one round of confirms.
        let publishes = deliveries
            .iter()
            .zip(&deliver)
            .map(|(m, dest)| self.publish_declaring(&dest.agency.code, m, outbox));
        let notifies = notices.iter().map(|n| self.notify(&auth.sender, n, outbox));
        let (published, notified) = futures_util::future::join(
            futures_util::future::join_all(publishes),
            futures_util::future::join_all(notifies),
        )
        .await;
        for r in published {
            r?;
            metrics::delivery_published();
        }
        for r in notified {
            r?;
        }
        let mut dests: Vec<DestTrack> = deliver
            .iter()
            .map(|d| {
                let mut t = DestTrack::new(
                    d.agency.code.clone(),
                    now,
                    DeliveryState::Accepted,
                    None,
                    "",
                );
                match defer_until {
                    Some(due) => t.push(
                        now,
                        DeliveryState::Deferred,
                        None,
                        &format!("until {}", format_rfc3339(due)),
                    ),
                    None => t.push(
                        now,
                        DeliveryState::Queued,
                        None,
                        &format!("attempt {attempt}"),
                    ),
                }
                t
            })
            .collect();
        for (code, reason, detail) in &bounced {
            let mut t = DestTrack::new(code.clone(), now, DeliveryState::Accepted, None, "");
            t.push(now, DeliveryState::Bounced, Some(*reason), detail);
            dests.push(t);
        }
        let rec = EnvelopeRecord {
            from: from.clone(),
            message_id: mid.clone(),
            subject: fields.subject.clone(),
            data_type: fields.data_type.clone(),
            priority: fields.priority.code(),
            digest: fields.digest.clone(),
            size: msg.body.len() as u64,
            content_type: msg.content_type.clone(),
            accepted_at_ms: now,
            deliver_by_ms: fields.deliver_by_ms,
            not_before_ms: fields.not_before_ms,
            max_attempts: fields
                .max_attempts
                .unwrap_or_else(|| policies.delivery(fields.priority, from).max_attempts),
            dests,
            bounce_after_ms: fields.bounce_after.map(|d| d.as_millis() as u64),
        };
        self.tracking.put(&rec)?;
        // Presence watches what waits in an inbox; a deferred delivery is
        // pended when it is released.
        if defer_until.is_none() {
            self.tracking.pend(
                from,
                mid,
                &codes,
                &Pending {
                    queued_at_ms: now,
                    priority: fields.priority.code(),
                    bounce_after_ms: rec.bounce_after_ms,
                    warned: false,
                    bounced: false,
                },
            )?;
        }
        self.audit.record(AuditEvent::Accepted {
            from: from.to_string(),
            message_id: mid.clone(),
            delivered: codes.iter().map(|c| c.to_string()).collect(),
            bounced: bounced.iter().map(|(c, r, _)| format!("{c}:{r}")).collect(),
        });
        self.store.durable().await?;
        metrics::envelope_accepted(fields.priority.code());
        tracing::info!(
            from = %from,
            message_id = %mid,
            delivered = deliver.len(),
            bounced = bounced.len(),
            attempt,
            "envelope accepted"
        );
        Ok(Outcome::Accepted {
            delivered: deliver.iter().map(|d| d.agency.code.clone()).collect(),
            bounced: bounced.into_iter().map(|(c, r, _)| (c, r)).collect(),
        })
    }

    /// A status message from a destination about an envelope it received.
    async fn status<O: Outbox>(
        &self,
        auth: &Authenticated,
        st: StatusFields,
        outbox: &O,
        now: i64,
    ) -> Result<Outcome, RouterError> {
        let sender = &auth.signed.from;
        if st.status == StatusCode::RecallRequest {
            return match self.recall(sender, &st, outbox, now).await? {
                Ok(o) => Ok(o),
                Err(why) => {
                    self.reject(auth, Refusal::new(Reason::Forbidden, why), outbox, now)
                        .await
                }
            };
        }
        let mut sources = self.tracking.sources_of(sender, &st.reference)?;
        if let Some(to) = &st.to {
            sources.retain(|s| s == to);
        }
        let source = match sources.as_slice() {
            [one] => one.clone(),
            [] => {
                return self
                    .reject(
                        auth,
                        Refusal::new(
                            Reason::Forbidden,
                            format!("{sender} never received an envelope {}", st.reference),
                        ),
                        outbox,
                        now,
                    )
                    .await
            }
            _ => {
                return self
                    .reject(
                        auth,
                        Refusal::new(
                            Reason::Malformed,
                            format!(
                                "several sources sent {} to {sender}: name the source in lgsp-to",
                                st.reference
                            ),
                        ),
                        outbox,
                        now,
                    )
                    .await
            }
        };
        let detail = st.reason.clone().unwrap_or_default();
        let state = DeliveryState::of_status(st.status);
        let reason = match st.status {
            StatusCode::Rejected => Some(Reason::RejectedByDestination),
            StatusCode::RecallAgreed => Some(Reason::Recalled),
            StatusCode::Received
            | StatusCode::Accepted
            | StatusCode::Assigned
            | StatusCode::Processing
            | StatusCode::Completed
            | StatusCode::RecallRequest
            | StatusCode::Refused => None,
        };
        // Wait for the envelope's acceptance to finish (the destination may
        // answer before truc has written the record).
        let guard = self.locks.lock(source.as_str(), &st.reference).await;
        let found = self.tracking.update(&source, &st.reference, |rec| {
            if let Some(d) = rec.dests.iter_mut().find(|d| &d.code == sender) {
                d.push(now, state, reason, &detail);
            }
        })?;
        if found {
            // Any status means the destination has the envelope: it no longer
            // waits on presence (no delay warning or bounce from now on).
            self.tracking.unpend(sender, &source, &st.reference)?;
        }
        drop(guard);
        if found {
            observe_status(&self.tracking, &source, &st.reference, sender, st.status);
            self.audit.record(AuditEvent::Status {
                from: sender.to_string(),
                source: source.to_string(),
                reference: st.reference.clone(),
                status: st.status.to_string(),
            });
        }
        if !found {
            return Err(RouterError::Pending(format!(
                "status {} from {sender} about {} {}: envelope not recorded yet",
                st.status, source, st.reference
            )));
        }
        let Some(src_entry) = self.registry.get(&source) else {
            return Ok(Outcome::StatusRelayed);
        };
        if st.status == StatusCode::Received {
            let mut n = Notice::new(NoticeKind::Delivered, source.clone(), &st.reference, now);
            n.dest = Some(sender.clone());
            n.status = Some(st.status.to_string());
            self.notify(&src_entry, &n, outbox).await?;
        }
        if st.status == StatusCode::Rejected {
            let mut n = Notice::new(NoticeKind::Bounced, source.clone(), &st.reference, now);
            n.dest = Some(sender.clone());
            n.status = Some(st.status.to_string());
            n.reason = Some(Reason::RejectedByDestination);
            n.detail = detail.clone();
            self.notify(&src_entry, &n, outbox).await?;
            metrics::bounced(Reason::RejectedByDestination);
        }
        let mut n = Notice::new(NoticeKind::Status, source.clone(), &st.reference, now);
        n.dest = Some(sender.clone());
        n.status = Some(st.status.to_string());
        n.detail = detail;
        self.notify(&src_entry, &n, outbox).await?;
        self.store.durable().await?;
        metrics::status_relayed(st.status.as_str());
        tracing::info!(from = %sender, source = %source, reference = %st.reference, status = %st.status, "status relayed");
        Ok(Outcome::StatusRelayed)
    }

    /// Sends the presence notice `kind` (`delay-warning` or `bounced`) about
    /// `(from, message_id)` for `dest` once: under the envelope's lock, checks
    /// the timeline, publishes the notice (confirmed), then records the event
    /// in the destination's timeline and waits until it is durable. A crash
    /// between the confirm and the write repeats the notice once after the
    /// restart (at least once, like every notice); otherwise it is never sent
    /// twice.
    pub async fn offline_notice<O: Outbox>(
        &self,
        dest: &AgencyCode,
        from: &AgencyCode,
        message_id: &str,
        what: OfflineFacts<'_>,
        outbox: &O,
    ) -> Result<OfflineNotice, RouterError> {
        let OfflineFacts {
            kind,
            reason,
            detail,
        } = what;
        // Only these two are presence notices; no other kind is sent here.
        let state = match kind {
            NoticeKind::DelayWarning => DeliveryState::DelayWarning,
            NoticeKind::Bounced => DeliveryState::Bounced,
            NoticeKind::Accepted
            | NoticeKind::Rejected
            | NoticeKind::Delivered
            | NoticeKind::Status => return Ok(OfflineNotice::NotWaiting),
        };
        let _guard = self.locks.lock(from.as_str(), message_id).await;
        let Some(rec) = self.tracking.get(from, message_id)? else {
            return Ok(OfflineNotice::NotWaiting);
        };
        let Some(track) = rec.dests.iter().find(|d| &d.code == dest) else {
            return Ok(OfflineNotice::NotWaiting);
        };
        // One notice of each kind per envelope and destination, whatever the reason.
        let sent = |st: DeliveryState| track.events.iter().any(|e| e.state == st);
        if sent(state) || (kind == NoticeKind::DelayWarning && sent(DeliveryState::Bounced)) {
            return Ok(OfflineNotice::AlreadySent);
        }
        if !track.is_waiting() {
            return Ok(OfflineNotice::NotWaiting);
        }
        let Some(src) = self.registry.get(from) else {
            return Ok(OfflineNotice::NotWaiting);
        };
        let now = now_ms();
        let mut n = Notice::new(kind, from.clone(), message_id, now);
        n.dest = Some(dest.clone());
        n.reason = Some(reason);
        n.detail = detail.to_owned();
        self.notify(&src, &n, outbox).await?;
        self.tracking.update(from, message_id, |rec| {
            if let Some(d) = rec.dests.iter_mut().find(|d| &d.code == dest) {
                d.push(now, state, Some(reason), detail);
            }
        })?;
        self.store.durable().await?;
        if kind == NoticeKind::Bounced {
            metrics::bounced(reason);
        } else {
            metrics::delay_warning();
        }
        tracing::info!(source = %from, message_id, dest = %dest, notice = %state, reason = %reason, "presence notice sent");
        Ok(OfflineNotice::Sent)
    }
}

/// Called by the router after a status was recorded: on the first status
/// `01` of a destination, counts the delivery and its end-to-end latency.
fn observe_status(
    tracking: &Tracking,
    source: &AgencyCode,
    reference: &str,
    dest: &AgencyCode,
    status: StatusCode,
) {
    if status != StatusCode::Received {
        return;
    }
    let Ok(Some(rec)) = tracking.get(source, reference) else {
        return;
    };
    let Some(d) = rec.dests.iter().find(|d| &d.code == dest) else {
        return;
    };
    let mut delivered = d
        .events
        .iter()
        .filter(|e| e.state == DeliveryState::Delivered);
    if let (Some(first), None) = (delivered.next(), delivered.next()) {
        let ms = (first.at_ms - rec.accepted_at_ms).max(0) as u64;
        metrics::delivered(rec.priority, Duration::from_millis(ms));
    }
}

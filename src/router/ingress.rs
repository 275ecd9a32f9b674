//! Step 1 — an ingress message, end to end: decode → authenticate →
//! authorise (sender, clock, nonce, kind's fields, size, digest) → claim →
//! dedupe → rate limit → route → record → share → publish deliveries and
//! notices (one round of confirms) → release the claim → durable → ack.
//! Statuses go on to [`super::status`], heartbeats to the presence task.
//! An envelope that passes every other check has its nonce judged with its
//! routing claim, in the claim's round trip (a status that names its
//! source, with the update of that record); the refusals keep the order of
//! docs/PROTOCOL.md §5 (a replay is refused as a replay whatever else is
//! wrong after it, and gives its claim back).
//!
//! Invariants: the envelope is claimed (in the store, atomically across
//! instances) before its record is looked at, and the dedupe check and the
//! record write happen under the claim and the envelope's lock; the record
//! is written and shared with other instances before its deliveries and
//! notices are published (a destination's status or an operator reading
//! `accepted` finds it, on any instance); the claim stays until every one of
//! them was confirmed, and one still there (a crash, a failed publish) is an
//! unfinished routing: the envelope is routed again as a possible repeat
//! (`lgsp-attempt: 2`), never taken for a duplicate; a claim given up
//! without routing (a duplicate, a rate-limit refusal) is released at once;
//! a sender that cannot be authenticated gets no notice (its message is kept
//! in the bounded `rejected` queue and tallied in the audit log per minute
//! and reason); a refusal of an authenticated sender is a `rejected` notice
//! to the key's owner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::auth::{body_digest, verify};
use crate::core::canonical::canonical_form;
use crate::core::code::AgencyCode;
use crate::core::envelope::{EnvelopeFields, Kind, Payload, Refusal, Signed};
use crate::core::message::{Inbound, Message};
use crate::core::metrics;
use crate::core::notice::{Notice, NoticeKind};
use crate::core::policy::Policies;
use crate::core::reason::Reason;
use crate::core::skew;
use crate::core::text::{escaped, Escaped};
use crate::core::time::{format_rfc3339, now_ms};
use crate::core::timeline::DeliveryState;
use crate::router::delivery::Delivery;
use crate::router::order::Turn;
use crate::router::{Heartbeat, Outbox, Outcome, PublishError, Router, RouterError};
use crate::state::audit::AuditEvent;
use crate::state::registry::Entry;
use crate::state::replay::{NonceCheck, NonceUse};
use crate::state::tracking::{Claim, DestTrack, EnvelopeRecord, Pending};

/// How often a claim held by another instance is looked at again.
const CLAIM_POLL: Duration = Duration::from_millis(500);

/// How long a claim held by another instance is waited for: past it the
/// claim is stale ([`crate::state::tracking::CLAIM_STALE_MS`]) and taken over.
const CLAIM_WAIT: Duration =
    Duration::from_millis(crate::state::tracking::CLAIM_STALE_MS as u64 + 2_000);

/// An ingress message whose signature is its sender's.
pub(super) struct Authenticated {
    pub(super) signed: Signed,
    pub(super) sender: Arc<Entry>,
}

impl Router {
    /// Handles one ingress message end to end. On `Ok` the caller acks it; on
    /// `Err` it must not.
    pub async fn handle<O: Outbox>(
        &self,
        inbound: &Inbound,
        outbox: &O,
    ) -> Result<Outcome, RouterError> {
        self.handle_in_turn(inbound, outbox, None, None).await
    }

    /// [`Router::handle`] for a message read from its source's own queue:
    /// `turn` orders the source's envelopes at the rate-limit step, so which
    /// of them is over the rate follows the order the source published them;
    /// `seen_empty_ms` is when that queue was last seen empty before the
    /// message was delivered (the floor of its clock-skew check,
    /// [`crate::core::skew`]).
    ///
    /// Fails with [`StoreError::Reopened`](crate::state::store::StoreError)
    /// when the store was reopened after a write failure while the message
    /// was handled: its writes may be lost, so it must come again.
    pub(crate) async fn handle_in_turn<O: Outbox>(
        &self,
        inbound: &Inbound,
        outbox: &O,
        turn: Option<&Turn>,
        seen_empty_ms: Option<i64>,
    ) -> Result<Outcome, RouterError> {
        let generation = self.store.reopens();
        let outcome = self
            .handle_once(inbound, outbox, turn, seen_empty_ms)
            .await?;
        if self.store.reopens() != generation {
            return Err(crate::state::store::StoreError::Reopened.into());
        }
        Ok(outcome)
    }

    async fn handle_once<O: Outbox>(
        &self,
        inbound: &Inbound,
        outbox: &O,
        turn: Option<&Turn>,
        seen_empty_ms: Option<i64>,
    ) -> Result<Outcome, RouterError> {
        let started = Instant::now();
        let now = now_ms();
        let msg = &inbound.message;
        if let Some(why) = msg.header(crate::broker::guard::MALFORMED_HEADER) {
            let refusal = Refusal::new(
                Reason::Malformed,
                format!("unreadable AMQP properties ({why})"),
            );
            return self.quarantine(msg, refusal, outbox).await;
        }
        let auth = match self.authenticate(msg, now)? {
            Ok(a) => a,
            Err(refusal) => return self.quarantine(msg, refusal, outbox).await,
        };
        let space = inbound
            .content_space
            .as_deref()
            .or(msg.header(crate::core::envelope::SPACE));
        let checked = self.check(&auth, msg, now, seen_empty_ms, space.is_some())?;
        // The space an envelope's content is in: checked and bound before
        // it is routed.
        let checked = match checked {
            Ok((Payload::Envelope(mut fields), nonce)) if space.is_some() => {
                match self.take_space(&auth, inbound, &mut fields) {
                    Ok(()) => Ok((Payload::Envelope(fields), nonce)),
                    Err(Err(e)) => return Err(e),
                    // Refused: its nonce is judged (and kept) as for B5–B7.
                    Err(Ok(refusal)) => match nonce.map(|n| self.nonces.check(&n)).transpose()? {
                        Some(NonceCheck::Replay) => Err(replay(&auth.signed)),
                        _ => Err(refusal),
                    },
                }
            }
            other => other,
        };
        if let (
            Some(t),
            Err(_) | Ok((Payload::Status(_) | Payload::Presence(_) | Payload::Session(_), _)),
        ) = (turn, &checked)
        {
            // Refused before the rate step (or not an envelope): its place goes.
            t.pass();
        }
        let outcome = match checked {
            Err(refusal) => self.reject(&auth, refusal, outbox, now).await?,
            Ok((Payload::Envelope(fields), nonce)) => {
                self.route(&auth, inbound, fields, nonce, turn, outbox, now)
                    .await?
            }
            Ok((Payload::Status(fields), nonce)) => {
                self.status(&auth, fields, nonce, outbox, now).await?
            }
            Ok((Payload::Presence(p), _)) => {
                self.heartbeat(&auth.signed.from, p.online, now);
                Outcome::Heartbeat
            }
            Ok((Payload::Session(_), _)) => {
                let refusal = Refusal::new(
                    Reason::Malformed,
                    "a session is asked for over the HTTPS gateway (POST /v1/sessions), not published",
                );
                self.reject(&auth, refusal, outbox, now).await?
            }
        };
        metrics::ingress_latency(started.elapsed());
        Ok(outcome)
    }

    /// Step 1: who sent it, and is the signature theirs.
    pub(super) fn authenticate(
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
        // The agency holds this key's secret: what the hub sends it from now
        // on (this message's notices included) is signed with it.
        self.registry.note_used(&sender.agency.code, &signed.key)?;
        Ok(Ok(Authenticated { signed, sender }))
    }

    /// Step 2: the authenticated sender's message is checked in full.
    /// `in_space`: the envelope's content is in an upload space (its body
    /// is then empty, and its digest is checked against the space's).
    pub(super) fn check(
        &self,
        auth: &Authenticated,
        msg: &Message,
        now: i64,
        seen_empty_ms: Option<i64>,
        in_space: bool,
    ) -> Result<Result<(Payload, Option<NonceUse>), Refusal>, RouterError> {
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
        // Judged from when the message could first have been seen, so a
        // backlog left by an outage is not refused for its age.
        match skew::judge(s.time_ms, now, seen_empty_ms, skew_ms) {
            Ok(()) => {}
            Err(skew::Off::Ahead) => {
                return Ok(Err(Refusal::new(
                    Reason::ClockSkew,
                    format!(
                        "lgsp-time {} is more than {}s ahead of hub time {}",
                        format_rfc3339(s.time_ms),
                        skew_ms / 1000,
                        format_rfc3339(now)
                    ),
                )))
            }
            Err(skew::Off::Behind { floor_ms }) => {
                return Ok(Err(Refusal::new(
                    Reason::ClockSkew,
                    format!(
                        "lgsp-time {} is more than {}s before {}, when the hub could first have seen it (hub time {})",
                        format_rfc3339(s.time_ms),
                        skew_ms / 1000,
                        format_rfc3339(floor_ms),
                        format_rfc3339(now),
                    ),
                )))
            }
        }
        let nonce = NonceUse::new(
            &s.key,
            &s.nonce,
            &s.message_id,
            skew::nonce_expiry(s.time_ms, skew_ms),
            skew::floor(now, seen_empty_ms),
        );
        let rest = Self::check_fields(s.kind, msg, &policies, in_space);
        // B4 comes before the rest: a refused message's nonce is judged
        // first. An envelope that passes has its nonce judged with its
        // routing claim, in the same round trip (Router::route); a status,
        // with the update of the record it names (Router::status).
        if let Ok(p @ (Payload::Envelope(_) | Payload::Status(_))) = rest {
            return Ok(Ok((p, Some(nonce))));
        }
        match self.nonces.check(&nonce)? {
            NonceCheck::Fresh => {}
            // A broker's redelivery; a session request is never redelivered.
            NonceCheck::SameMessage if s.kind != Kind::Session => {}
            NonceCheck::SameMessage | NonceCheck::Replay => return Ok(Err(replay(s))),
        }
        Ok(rest.map(|p| (p, None)))
    }

    /// B5–B7: the kind's own fields, the size and the digest.
    fn check_fields(
        kind: Kind,
        msg: &Message,
        policies: &Policies,
        in_space: bool,
    ) -> Result<Payload, Refusal> {
        let payload = Payload::parse(kind, msg, policies.default_priority)?;
        if kind == Kind::Envelope && msg.body.len() as u64 > policies.max_body_bytes {
            return Err(Refusal::new(
                Reason::TooLarge,
                format!(
                    "body is {} bytes, the limit is {}",
                    msg.body.len(),
                    policies.max_body_bytes
                ),
            ));
        }
        let digest = match &payload {
            // Checked against the space's (Router::take_space).
            Payload::Envelope(_) if in_space => None,
            Payload::Envelope(e) => Some(&e.digest),
            Payload::Status(st) => Some(&st.digest),
            Payload::Session(s) => Some(&s.digest),
            Payload::Presence(_) => None,
        };
        if let Some(d) = digest {
            if *d != body_digest(&msg.body) {
                return Err(Refusal::new(
                    Reason::DigestMismatch,
                    "the body does not match lgsp-digest",
                ));
            }
        }
        Ok(payload)
    }

    async fn quarantine<O: Outbox>(
        &self,
        msg: &Message,
        refusal: Refusal,
        outbox: &O,
    ) -> Result<Outcome, RouterError> {
        metrics::message_rejected(refusal.reason);
        metrics::quarantined(refusal.reason);
        tracing::warn!(
            routing_key = %Escaped(&msg.routing_key),
            message_id = %Escaped::opt(msg.message_id.as_deref()),
            reason = %refusal.reason,
            detail = %Escaped(&refusal.detail),
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
        // Strangers cost bounded audit space: counted and sampled per minute.
        self.quarantined.note(
            now_ms(),
            refusal.reason.as_str(),
            &msg.routing_key,
            msg.message_id.as_deref().unwrap_or(""),
        );
        Ok(Outcome::Quarantined(refusal.reason))
    }

    pub(super) async fn reject<O: Outbox>(
        &self,
        auth: &Authenticated,
        refusal: Refusal,
        outbox: &O,
        now: i64,
    ) -> Result<Outcome, RouterError> {
        metrics::message_rejected(refusal.reason);
        tracing::info!(
            from = %auth.signed.from,
            message_id = %Escaped(&auth.signed.message_id),
            reason = %refusal.reason,
            detail = %Escaped(&refusal.detail),
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
            detail: escaped(&n.detail),
        });
        Ok(Outcome::Rejected(refusal.reason))
    }

    #[allow(clippy::too_many_arguments)]
    async fn route<O: Outbox>(
        &self,
        auth: &Authenticated,
        inbound: &Inbound,
        fields: EnvelopeFields,
        mut nonce: Option<NonceUse>,
        turn: Option<&Turn>,
        outbox: &O,
        now: i64,
    ) -> Result<Outcome, RouterError> {
        let (msg, redelivered) = (&inbound.message, inbound.redelivered);
        let from = &auth.signed.from;
        let mid = &auth.signed.message_id;
        // The source's envelopes take the rate step in the order its queue
        // delivered them. Waited for before any lock is held (nothing that
        // holds a lock waits for a turn, so the two cannot deadlock); given
        // up on return (a duplicate) or passed right after the decision.
        if let Some(t) = turn {
            t.wait().await;
        }
        // Copies of one envelope handled at once must not both deliver: the
        // dedupe check and the record write happen under the key's lock.
        // A record still marked as being routed is what a crash (or a failed
        // publish) left half done: route it again, marked as a possible repeat.
        // One another live instance is routing now is waited for here (its
        // outcome decides: a duplicate, or a claim gone stale with its
        // instance), not sent back to the queue, whose delivery limit a
        // crashed instance's claim would otherwise use up.
        let mut waited = Duration::ZERO;
        let (_guard, token, unfinished, record) = loop {
            let guard = self.locks.lock(from.as_str(), mid).await;
            let at = now + waited.as_millis() as i64;
            // The nonce (B4) is judged with the first claim, in its round
            // trip; a replay gives the claim back and is refused as such.
            let claim = match nonce.take() {
                None => self.tracking.claim(from, mid, at)?,
                Some(n) => {
                    let (claim, found) = self.tracking.claim_after_nonce(from, mid, at, &n)?;
                    if self.nonces.judge(&n, found)? == NonceCheck::Replay {
                        // A marker it took over (a routing left unfinished)
                        // stays, as a marker: that envelope is routed again
                        // when it comes.
                        if let Claim::Mine {
                            token,
                            unfinished: false,
                            ..
                        } = &claim
                        {
                            self.tracking.release(from, mid, token)?;
                        }
                        drop(guard);
                        if let Some(t) = turn {
                            t.pass();
                        }
                        return self.reject(auth, replay(&auth.signed), outbox, now).await;
                    }
                    claim
                }
            };
            match claim {
                Claim::Elsewhere { owner } => {
                    drop(guard);
                    // The source's later envelopes do not wait behind this
                    // one (a crashed instance leaves a claim on each of its
                    // in-flight envelopes): it gives up its place in the
                    // rate step's order.
                    if let Some(t) = turn {
                        t.pass();
                    }
                    if waited >= CLAIM_WAIT || !outbox.is_usable() {
                        return Err(RouterError::Pending(format!(
                            "envelope {} from {from} is being routed by another instance ({owner}); it comes again",
                            Escaped(mid)
                        )));
                    }
                    tokio::time::sleep(CLAIM_POLL).await;
                    waited += CLAIM_POLL;
                }
                Claim::Mine {
                    token,
                    unfinished,
                    record,
                } => break (guard, token, unfinished, record),
            }
        };
        // Looked at under the claim: a record routed to the end by anyone
        // before it is a duplicate; one whose routing did not finish is
        // routed again.
        if let Some(rec) = record.filter(|_| !unfinished) {
            self.tracking.release(from, mid, &token)?;
            if let Some(t) = turn {
                t.pass();
            }
            metrics::duplicate();
            tracing::info!(from = %from, message_id = %Escaped(mid), "duplicate envelope absorbed");
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
            // Measured on hub time: the signing time clamped between the last
            // time the source's queue was seen empty and now (scheduler::measured_at).
            .allow(from, rate, auth.signed.time_ms, now);
        if let Some(t) = turn {
            t.pass();
        }
        if !allowed {
            self.tracking.release(from, mid, &token)?;
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
        // Its space is bound to it now, under its claim, once nothing else
        // can refuse it before it is routed.
        if let Err(refusal) = self.bind_space(from, mid, &fields, now)? {
            self.tracking.release(from, mid, &token)?;
            return self.reject(auth, refusal, outbox, now).await;
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
        let attempt = if redelivered || unfinished { "2" } else { "1" };
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
            size: fields.space_size.unwrap_or(msg.body.len() as u64),
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
        // The record first (under the claim), so whoever hears of the
        // envelope (its destination, its source reading `accepted`) finds it.
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
        // Other instances see the record, index and pending entries before
        // anyone hears of the envelope.
        self.store.share()?;
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
        for ((r, m), dest) in published.into_iter().zip(&deliveries).zip(&deliver) {
            match r {
                Ok(()) => metrics::delivery_published(),
                // Its inbox's broker node is down: held and tried again later.
                Err(RouterError::Publish(PublishError::Unavailable(why))) => {
                    self.hold_unavailable(from, mid, &dest.agency.code, m, &why, outbox, now)
                        .await?
                }
                Err(e) => return Err(e),
            }
        }
        for r in notified {
            r?;
        }
        self.tracking.routed(from, mid, &token)?;
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
            message_id = %Escaped(mid),
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

    /// Hands a heartbeat of `code` to the presence task (a heartbeat
    /// message, or a gateway call standing for one).
    pub(crate) fn heartbeat(&self, code: &AgencyCode, online: bool, now: i64) {
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
}

/// The refusal of a nonce used before with another message (B4).
pub(super) fn replay(s: &Signed) -> Refusal {
    Refusal::new(
        Reason::Replay,
        format!("nonce {} was already used with key {}", s.nonce, s.key),
    )
}

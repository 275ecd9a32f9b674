//! Deliveries the hub holds or takes back: deferral (`lgsp-not-before`)
//! through the delay buckets, retries of deliveries a destination rejected,
//! deadlines (`lgsp-deliver-by`), and recall (status `13`).
//!
//! Invariants: a held delivery lives only in the broker (a delay bucket), never
//! in truc's memory or store, so a restart loses nothing; a destination's
//! timeline decides whether a held copy may still go out (a copy whose
//! destination is bounced, expired, recalled or already delivered is dropped);
//! each bounce is recorded in the timeline before it is acknowledged, so a
//! redelivered copy does not bounce twice; every copy that goes (back) to an
//! inbox — released, retried, or a recall request — is finished by the one
//! delivery builder ([`super::delivery`]), signed with the destination's
//! current key; a copy that comes back without an envelope record (the
//! store was lost) is never dropped: its record is rebuilt from the copy
//! ([`super::rebuild`]) and it goes on as usual (delivered when due,
//! `lgsp-deliver-by` enforced), or it is parked as `record-lost` and
//! reported; a retry due for a destination no longer registered is parked
//! and bounced, not dropped.
//!
//! Repeats are marked (docs/PROTOCOL.md §6.2): a released copy carries the
//! largest of the attempt it was held with, one more than the `queued`
//! events of its destination's timeline, and — when the release is a broker
//! redelivery or the record was rebuilt — one more than it was held with (a
//! copy put back in a bucket in that case is held with one more, too); a
//! retry carries the rejections so far + 1, counted from the copy when the
//! timeline knows fewer.

use std::time::Duration;

use crate::core::code::AgencyCode;
use crate::core::envelope::StatusFields;
use crate::core::message::{Inbound, Message};
use crate::core::metrics;
use crate::core::notice::{Notice, NoticeKind};
use crate::core::reason::Reason;
use crate::core::scheduler::{backoff, bucket_for, expired, BUCKETS};
use crate::core::text::Escaped;
use crate::core::time::{format_duration, format_rfc3339, now_ms};
use crate::core::timeline::DeliveryState;
use crate::router::delivery::{attempt_of, Delivery};
use crate::router::rebuild::is_rebuilt;
use crate::router::{Outbox, Outcome, PublishError, Router, RouterError};
use crate::state::tracking::EnvelopeRecord;

const EXPIRED_DETAIL: &str = "lgsp-deliver-by passed before delivery";

/// How long a delivery whose inbox is unavailable (its broker node is down)
/// waits in a delay bucket before it is tried again.
pub(super) const UNAVAILABLE_RETRY_MS: i64 = 30_000;

/// Header carrying the due time (ms) of a held delivery.
pub const DUE_HEADER: &str = "x-truc-due";

/// Removes what the broker added when dead-lettering, and the due marker.
fn clean(mut m: Message) -> Message {
    m.strip_bookkeeping();
    m
}

/// What a copy coming back from the broker finds in the store.
enum Found {
    /// The envelope's record (`rebuilt` from the copy when the store had lost it).
    Record {
        rec: Box<EnvelopeRecord>,
        rebuilt: bool,
    },
    /// The copy no longer goes out (why).
    Drop(&'static str),
    /// The record is lost and could not be rebuilt: the copy was parked and
    /// reported.
    Parked,
}

/// How many copies of the envelope the timeline records as put into the
/// inbox of `dest` (`queued` events).
fn queued(rec: &EnvelopeRecord, dest: &AgencyCode) -> u32 {
    rec.dests.iter().find(|d| &d.code == dest).map_or(0, |t| {
        t.events
            .iter()
            .filter(|e| e.state == DeliveryState::Queued)
            .count() as u32
    })
}

/// `(from, dest, message_id)` of a delivery copy.
fn delivery_key(m: &Message) -> Option<(AgencyCode, AgencyCode, String)> {
    let from = AgencyCode::parse(m.header("lgsp-from")?).ok()?;
    let dest = AgencyCode::parse(m.header("lgsp-dest")?).ok()?;
    Some((from, dest, m.message_id.clone()?))
}

impl Router {
    /// Delivery `d` to `dest` could not be published because its inbox is
    /// unavailable (in a cluster, the broker node holding it is down): it is
    /// held in a delay bucket (replicated in the cluster profile) and tried
    /// again in [`UNAVAILABLE_RETRY_MS`], and the timeline says so. Never
    /// dropped, and the ingress message it came from is acknowledged.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn hold_unavailable<O: Outbox>(
        &self,
        from: &AgencyCode,
        mid: &str,
        dest: &AgencyCode,
        d: &Message,
        why: &str,
        outbox: &O,
        now: i64,
    ) -> Result<(), RouterError> {
        let due = self.retry_when_available(d.clone(), outbox, now).await?;
        let detail = format!(
            "inbox unavailable ({why}); tried again at {}",
            format_rfc3339(due)
        );
        self.tracking.update(from, mid, |r| {
            if let Some(t) = r.dest_mut(dest) {
                t.push(now, DeliveryState::Retry, None, &detail);
            }
        })?;
        self.tracking.unpend(dest, from, mid)?;
        tracing::warn!(from = %from, message_id = %Escaped(mid), dest = %dest, why = %Escaped(why), "inbox unavailable; delivery held for a retry");
        Ok(())
    }

    /// Holds delivery `d`, whose inbox is unavailable, in a delay bucket for
    /// [`UNAVAILABLE_RETRY_MS`]; returns when it is due again.
    async fn retry_when_available<O: Outbox>(
        &self,
        d: Message,
        outbox: &O,
        now: i64,
    ) -> Result<i64, RouterError> {
        let due = now + UNAVAILABLE_RETRY_MS;
        outbox.publish(&self.held(d, due, now)).await?;
        metrics::delivery_held_unavailable();
        Ok(due)
    }

    /// Turns delivery `d` into a copy held in the right delay bucket until `due_ms`.
    pub(super) fn held(&self, mut d: Message, due_ms: i64, now: i64) -> Message {
        let remaining = Duration::from_millis((due_ms - now).max(0) as u64);
        let i = bucket_for(remaining).unwrap_or(0);
        d.exchange = String::new();
        d.routing_key = self.topology.name(&format!("delay.{}", BUCKETS[i].0));
        d.set_header(DUE_HEADER, due_ms.to_string());
        d
    }

    /// Records `state` for `dest` and tells the source it bounced for `reason`.
    async fn bounce<O: Outbox>(
        &self,
        rec: &EnvelopeRecord,
        dest: &AgencyCode,
        (state, reason, detail): (DeliveryState, Reason, &str),
        outbox: &O,
        now: i64,
    ) -> Result<(), RouterError> {
        self.tracking.update(&rec.from, &rec.message_id, |r| {
            if let Some(t) = r.dest_mut(dest) {
                t.push(now, state, Some(reason), detail);
            }
        })?;
        if let Some(src) = self.registry.get(&rec.from) {
            let mut n = Notice::new(NoticeKind::Bounced, rec.from.clone(), &rec.message_id, now);
            n.dest = Some(dest.clone());
            n.reason = Some(reason);
            n.detail = detail.to_owned();
            self.notify(&src, &n, outbox).await?;
        }
        metrics::bounced(reason);
        tracing::info!(from = %rec.from, message_id = %Escaped(&rec.message_id), dest = %dest, reason = %reason, "delivery bounced");
        Ok(())
    }

    /// The envelope's record when a copy coming back from the broker may
    /// still go out to `dest` ([`crate::state::tracking::DestTrack::may_deliver`]),
    /// rebuilt from the copy when the store lost it ([`super::rebuild`]);
    /// else why not. A copy whose record is lost and cannot be rebuilt is
    /// parked and reported here. The caller holds the envelope's lock.
    async fn held_record<O: Outbox>(
        &self,
        copy: &Message,
        (from, dest, mid): (&AgencyCode, &AgencyCode, &str),
        outbox: &O,
        now: i64,
    ) -> Result<Found, RouterError> {
        let existing = self.tracking.get(from, mid)?;
        if let Some(rec) = &existing {
            match rec.dests.iter().find(|d| &d.code == dest) {
                Some(t) if !t.may_deliver() => {
                    return Ok(Found::Drop("destination no longer waits for it"))
                }
                Some(_) => {
                    return Ok(Found::Record {
                        rec: Box::new(rec.clone()),
                        rebuilt: false,
                    })
                }
                None if !is_rebuilt(rec) => {
                    return Ok(Found::Drop("not a destination of the envelope"))
                }
                // A rebuilt record learns its destinations copy by copy.
                None => {}
            }
        }
        match self.rebuild(copy, (from, dest, mid), existing, now).await? {
            Ok(rec) => {
                metrics::record_missing("rebuilt");
                tracing::warn!(from = %from, message_id = %Escaped(mid), dest = %dest, "envelope record missing (store lost?): rebuilt from the held copy");
                Ok(Found::Record {
                    rec: Box::new(rec),
                    rebuilt: true,
                })
            }
            Err(why) => {
                self.park(copy, Reason::RecordLost, &why, outbox, now)
                    .await?;
                if let Some(src) = self.registry.get(from) {
                    let mut n = Notice::new(NoticeKind::Bounced, from.clone(), mid, now);
                    n.dest = Some(dest.clone());
                    n.reason = Some(Reason::RecordLost);
                    n.detail = why.clone();
                    self.notify(&src, &n, outbox).await?;
                }
                metrics::record_missing("parked");
                metrics::bounced(Reason::RecordLost);
                tracing::error!(from = %from, message_id = %Escaped(mid), dest = %dest, detail = %Escaped(&why), "envelope record missing and not rebuilt: held copy parked in undelivered");
                Ok(Found::Parked)
            }
        }
    }

    /// Bounces `dest` as expired, parks the copy for operators, durably.
    async fn expire<O: Outbox>(
        &self,
        rec: &EnvelopeRecord,
        dest: &AgencyCode,
        copy: &Message,
        outbox: &O,
        now: i64,
    ) -> Result<Outcome, RouterError> {
        self.park(copy, Reason::Expired, EXPIRED_DETAIL, outbox, now)
            .await?;
        self.bounce(
            rec,
            dest,
            (DeliveryState::Expired, Reason::Expired, EXPIRED_DETAIL),
            outbox,
            now,
        )
        .await?;
        self.store.durable().await?;
        Ok(Outcome::Dropped("expired"))
    }

    /// Keeps a delivery the hub gave up on in the bounded `undelivered`
    /// queue, where operators list, retry or drop it (`truc dead`).
    async fn park<O: Outbox>(
        &self,
        copy: &Message,
        reason: Reason,
        detail: &str,
        outbox: &O,
        now: i64,
    ) -> Result<(), RouterError> {
        let deaths = copy.header("lgsp-attempt").unwrap_or("1").to_owned();
        let mut p = clean(copy.clone());
        p.exchange = String::new();
        p.routing_key = self.topology.name("undelivered");
        p.expiration = None;
        p.set_header("x-truc-reason", reason.as_str());
        p.set_header("x-truc-detail", detail);
        p.set_header("x-truc-died-at", format_rfc3339(now));
        p.set_header("x-truc-deaths", deaths);
        outbox.publish(&p).await?;
        Ok(())
    }

    /// A held delivery came back from a delay bucket.
    pub async fn release<O: Outbox>(
        &self,
        inbound: &Inbound,
        outbox: &O,
    ) -> Result<Outcome, RouterError> {
        let now = now_ms();
        let m = &inbound.message;
        let Some((from, dest, mid)) = delivery_key(m) else {
            tracing::warn!(routing_key = %Escaped(&m.routing_key), "release queue: not a delivery copy; dropped");
            return Ok(Outcome::Dropped("not a delivery copy"));
        };
        let due = m
            .header(DUE_HEADER)
            .and_then(|d| d.parse::<i64>().ok())
            .unwrap_or(now);
        let _g = self.locks.lock(from.as_str(), &mid).await;
        let (rec, rebuilt) = match self
            .held_record(m, (&from, &dest, &mid), outbox, now)
            .await?
        {
            Found::Record { rec, rebuilt } => (*rec, rebuilt),
            Found::Drop(why) => return Ok(Outcome::Dropped(why)),
            Found::Parked => return Ok(Outcome::Dropped("record lost; parked")),
        };
        if expired(rec.deliver_by_ms, now) {
            return self.expire(&rec, &dest, m, outbox, now).await;
        }
        // Repeats are marked (docs/PROTOCOL.md §6.2): a copy that may follow
        // another copy of the envelope into the inbox carries more than 1.
        let carried = attempt_of(m);
        let unsure = inbound.redelivered || rebuilt;
        if bucket_for(Duration::from_millis((due - now).max(0) as u64)).is_some() {
            let mut again = clean(m.clone());
            if unsure {
                // The bucket may already hold a copy put back before a crash.
                again.set_header("lgsp-attempt", (carried + 1).to_string());
            }
            let again = self.held(again, due, now);
            outbox.publish(&again).await?;
            return Ok(Outcome::Held);
        }
        // Never early: the last fraction of a second is waited here.
        if due > now {
            tokio::time::sleep(Duration::from_millis((due - now) as u64)).await;
        }
        let now = now_ms();
        // Signed again with the destination's signing key now (a key may have
        // been rotated, or the destination switched keys, while it was held).
        let mut attempt = carried.max(queued(&rec, &dest) + 1);
        if unsure {
            attempt = attempt.max(carried + 1);
        }
        let out = self.deliver_to(
            Delivery::again(m)
                .attempt(attempt)
                .expires(rec.deliver_by_ms, now),
            &dest,
        );
        match self.publish_declaring(&dest, &out, outbox).await {
            Ok(()) => {}
            // Still unavailable: held again, unchanged, for another try.
            Err(RouterError::Publish(PublishError::Unavailable(why))) => {
                self.retry_when_available(clean(m.clone()), outbox, now)
                    .await?;
                tracing::warn!(from = %from, message_id = %Escaped(&mid), dest = %dest, why = %Escaped(&why), "inbox still unavailable; delivery held again");
                return Ok(Outcome::Held);
            }
            Err(e) => return Err(e),
        }
        metrics::delivery_published();
        self.tracking.update(&from, &mid, |r| {
            if let Some(t) = r.dest_mut(&dest) {
                t.push(
                    now,
                    DeliveryState::Queued,
                    None,
                    &format!("attempt {attempt}"),
                );
            }
        })?;
        self.tracking.pend(
            &from,
            &mid,
            std::slice::from_ref(&dest),
            &crate::state::tracking::Pending {
                queued_at_ms: now,
                priority: rec.priority,
                bounce_after_ms: rec.bounce_after_ms,
                warned: false,
                bounced: false,
            },
        )?;
        self.store.durable().await?;
        tracing::info!(from = %from, message_id = %Escaped(&mid), dest = %dest, late_ms = now - due, "held delivery released");
        Ok(Outcome::Released)
    }

    /// A delivery came back dead-lettered from an inbox (rejected or expired).
    pub async fn dead<O: Outbox>(
        &self,
        inbound: &Inbound,
        outbox: &O,
    ) -> Result<Outcome, RouterError> {
        let now = now_ms();
        let m = &inbound.message;
        if m.header("lgsp-kind") == Some("recall") {
            return Ok(Outcome::Dropped(
                "recall request refused by the destination",
            ));
        }
        let Some((from, dest, mid)) = delivery_key(m) else {
            // Not something the hub delivered (published into an inbox by
            // someone else): keep it for operators in the rejected queue.
            tracing::warn!(routing_key = %Escaped(&m.routing_key), "dead letter is not a delivery copy; moved to the rejected queue");
            let mut q = clean(m.clone());
            q.exchange = String::new();
            q.routing_key = self.topology.name("rejected");
            q.expiration = None;
            q.set_header("x-truc-reason", "not-a-delivery");
            q.set_header("x-truc-rejected-at", format_rfc3339(now));
            outbox.publish(&q).await?;
            return Ok(Outcome::Dropped("not a delivery copy"));
        };
        let death = m
            .header("x-first-death-reason")
            .unwrap_or("rejected")
            .to_owned();
        let _g = self.locks.lock(from.as_str(), &mid).await;
        let rec = match self
            .held_record(m, (&from, &dest, &mid), outbox, now)
            .await?
        {
            Found::Record { rec, .. } => *rec,
            Found::Drop(why) => return Ok(Outcome::Dropped(why)),
            Found::Parked => return Ok(Outcome::Dropped("record lost; parked")),
        };
        if death == "expired" || expired(rec.deliver_by_ms, now) {
            return self.expire(&rec, &dest, m, outbox, now).await;
        }
        let track = rec
            .dests
            .iter()
            .find(|d| d.code == dest)
            .expect("held_record() found it");
        // A copy carrying attempt n was rejected n - 1 times before (the
        // timeline may be younger than the copy: rebuilt after a store loss).
        let rejections = track.rejections().max(attempt_of(m).saturating_sub(1)) + 1;
        self.tracking.update(&from, &mid, |r| {
            if let Some(t) = r.dest_mut(&dest) {
                t.push(
                    now,
                    DeliveryState::Rejected,
                    None,
                    &format!(
                        "{death} by the destination ({rejections} of {})",
                        rec.max_attempts
                    ),
                );
            }
        })?;
        if rejections >= rec.max_attempts {
            let detail = format!("{dest} rejected the delivery {rejections} times");
            self.park(m, Reason::MaxAttempts, &detail, outbox, now)
                .await?;
            self.bounce(
                &rec,
                &dest,
                (DeliveryState::Bounced, Reason::MaxAttempts, &detail),
                outbox,
                now,
            )
            .await?;
            self.store.durable().await?;
            return Ok(Outcome::Dropped("max attempts"));
        }
        if self.registry.get(&dest).is_none() {
            // Nobody to retry to: parked and reported, not dropped silently.
            let detail = format!("{dest} is no longer registered; no retry");
            self.park(m, Reason::UnknownDestination, &detail, outbox, now)
                .await?;
            self.bounce(
                &rec,
                &dest,
                (DeliveryState::Bounced, Reason::UnknownDestination, &detail),
                outbox,
                now,
            )
            .await?;
            self.store.durable().await?;
            return Ok(Outcome::Dropped("destination no longer registered"));
        }
        let delay = backoff(
            &self.policies().backoff,
            rejections,
            &mut rand::thread_rng(),
        );
        let again = self.deliver_to(Delivery::again(m).attempt(rejections + 1), &dest);
        let due = now + delay.as_millis() as i64;
        let held = self.held(again, due, now);
        outbox.publish(&held).await?;
        self.tracking.update(&from, &mid, |r| {
            if let Some(t) = r.dest_mut(&dest) {
                t.push(
                    now,
                    DeliveryState::Retry,
                    None,
                    &format!("attempt {} at {}", rejections + 1, format_rfc3339(due)),
                );
            }
        })?;
        self.store.durable().await?;
        metrics::retry_scheduled();
        tracing::info!(from = %from, message_id = %Escaped(&mid), dest = %dest, attempt = rejections + 1, delay = %format_duration(delay), "retry scheduled");
        Ok(Outcome::Held)
    }

    /// Status `13` from the source: recall the envelope `st.reference`.
    pub(super) async fn recall<O: Outbox>(
        &self,
        source: &AgencyCode,
        st: &StatusFields,
        outbox: &O,
        now: i64,
    ) -> Result<Result<Outcome, String>, RouterError> {
        let _g = self.locks.lock(source.as_str(), &st.reference).await;
        let Some(rec) = self.tracking.get(source, &st.reference)? else {
            return Ok(Err(format!("{source} sent no envelope {}", st.reference)));
        };
        for track in &rec.dests {
            if track.is_final() {
                continue;
            }
            if matches!(track.state, DeliveryState::Deferred | DeliveryState::Retry) {
                // Held by the hub: the copy will be dropped when it comes back.
                self.bounce(
                    &rec,
                    &track.code,
                    (
                        DeliveryState::Recalled,
                        Reason::Recalled,
                        "recalled by the source before delivery",
                    ),
                    outbox,
                    now,
                )
                .await?;
                continue;
            }
            // In the inbox or already received: ask the destination (it answers 15 or 16).
            if self.registry.get(&track.code).is_none() {
                continue;
            }
            let mut r = Message {
                message_id: Some(crate::core::notice::fresh_message_id('r')),
                content_type: Some("application/json".into()),
                priority: Some(5),
                body: serde_json::to_vec(&serde_json::json!({
                    "recall": st.reference, "from": source, "reason": st.reason,
                }))
                .unwrap_or_default()
                .into(),
                ..Message::default()
            };
            r.set_header("lgsp-version", "1");
            r.set_header("lgsp-kind", "recall");
            r.set_header("lgsp-from", source.as_str());
            r.set_header("lgsp-ref", &st.reference);
            r.set_header("lgsp-time", format_rfc3339(now));
            r.set_header("lgsp-digest", crate::core::auth::body_digest(&r.body));
            if let Some(reason) = &st.reason {
                r.set_header("lgsp-reason", reason);
            }
            let r = self.deliver_to(Delivery::request(r), &track.code);
            self.publish_declaring(&track.code, &r, outbox).await?;
            self.tracking.update(source, &st.reference, |rec| {
                if let Some(t) = rec.dest_mut(&track.code) {
                    t.push(
                        now,
                        DeliveryState::RecallRequested,
                        None,
                        "asked the destination to drop it",
                    );
                }
            })?;
        }
        self.store.durable().await?;
        tracing::info!(from = %source, message_id = %Escaped(&st.reference), "recall handled");
        Ok(Ok(Outcome::StatusRelayed))
    }

    /// Expires every destination whose deadline passed before delivery;
    /// returns how many envelopes were looked at.
    pub async fn sweep_deadlines<O: Outbox>(
        &self,
        outbox: &O,
        now: i64,
    ) -> Result<usize, RouterError> {
        let due = self.tracking.due_deadlines(now, 500)?;
        for (key, from, mid) in &due {
            let _g = self.locks.lock(from.as_str(), mid).await;
            if let Some(rec) = self.tracking.get(from, mid)? {
                for track in &rec.dests {
                    if track.may_deliver() {
                        self.bounce(
                            &rec,
                            &track.code,
                            (DeliveryState::Expired, Reason::Expired, EXPIRED_DETAIL),
                            outbox,
                            now,
                        )
                        .await?;
                    }
                }
            }
            self.tracking.remove_deadline(key)?;
        }
        if !due.is_empty() {
            self.store.durable().await?;
        }
        Ok(due.len())
    }
}

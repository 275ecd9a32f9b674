//! Step 2 — a status message from a destination about an envelope it
//! received: find the envelope's source, record the status in that
//! destination's timeline (`01` → `delivered`, `02` → `bounced`, `15` →
//! `recalled`, other `NN` → `status-NN`), relay it to the source as notices,
//! and count deliveries. A recall (`13`, from the source) is handed to
//! [`super::holding`].
//!
//! Invariants: a status is recorded under the envelope's lock, after the
//! envelope's acceptance finished (a status about an envelope not recorded
//! yet is retried, not refused); any status ends the destination's wait on
//! presence (its `pending` entry is removed); statuses are not de-duplicated.

use std::time::Duration;

use crate::core::code::AgencyCode;
use crate::core::envelope::{Refusal, StatusFields};
use crate::core::metrics;
use crate::core::notice::{Notice, NoticeKind};
use crate::core::reason::Reason;
use crate::core::text::Escaped;
use crate::core::timeline::{DeliveryState, StatusCode};
use crate::router::ingress::{replay, Authenticated};
use crate::router::{Outbox, Outcome, Router, RouterError};
use crate::state::audit::AuditEvent;
use crate::state::replay::{NonceCheck, NonceUse};
use crate::state::tracking::EnvelopeRecord;

impl Router {
    /// A status message from a destination about an envelope it received.
    pub(super) async fn status<O: Outbox>(
        &self,
        auth: &Authenticated,
        st: StatusFields,
        mut nonce: Option<NonceUse>,
        outbox: &O,
        now: i64,
    ) -> Result<Outcome, RouterError> {
        let sender = &auth.signed.from;
        // The nonce (B4) goes with the update of the record the status names
        // (one round trip); any other status has it judged first.
        if st.status == StatusCode::RecallRequest || st.to.is_none() {
            if let Some(n) = nonce.take() {
                if self.nonces.check(&n)? == NonceCheck::Replay {
                    return self.reject(auth, replay(&auth.signed), outbox, now).await;
                }
            }
        }
        if st.status == StatusCode::RecallRequest {
            return match self.recall(sender, &st, outbox, now).await? {
                Ok(o) => Ok(o),
                Err(why) => {
                    self.reject(auth, Refusal::new(Reason::Forbidden, why), outbox, now)
                        .await
                }
            };
        }
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
        let record = |rec: &mut EnvelopeRecord| {
            let Some(d) = rec.dests.iter_mut().find(|d| &d.code == sender) else {
                return false;
            };
            d.push(now, state, reason, &detail);
            true
        };
        // A source named in lgsp-to (what adapters are asked to send) is
        // looked up directly: the record it names, if it lists the sender
        // among its destinations, is the one. Anything else (no such
        // record, not a destination of it, no lgsp-to) is decided from the
        // destination index below.
        let direct = match &st.to {
            Some(to) => match self
                .record_status(to, sender, &st, nonce.as_ref(), record)
                .await?
            {
                Recorded::Replay => {
                    return self.reject(auth, replay(&auth.signed), outbox, now).await
                }
                Recorded::Done(done) => done.map(|delivered| (to.clone(), delivered)),
            },
            None => None,
        };
        let (source, delivered) = match direct {
            Some(direct) => direct,
            None => {
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
                                    format!(
                                        "{sender} never received an envelope {}",
                                        st.reference
                                    ),
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
                // Indexed: the record is updated whether or not it lists the
                // sender (an index entry is written before its record).
                let found = match self
                    .record_status(&source, sender, &st, None, |rec| {
                        record(rec);
                        true
                    })
                    .await?
                {
                    Recorded::Done(done) => done,
                    // Judged already (no nonce was given).
                    Recorded::Replay => None,
                };
                match found {
                    Some(applied) => (source, applied),
                    None => {
                        return Err(RouterError::Pending(format!(
                            "status {} from {sender} about {} {}: envelope not recorded yet",
                            st.status, source, st.reference
                        )))
                    }
                }
            }
        };
        if let Some((priority, latency)) = delivered {
            metrics::delivered(priority, latency);
        }
        self.audit.record(AuditEvent::Status {
            from: sender.to_string(),
            source: source.to_string(),
            reference: st.reference.clone(),
            status: st.status.to_string(),
        });
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
        tracing::info!(from = %sender, source = %source, reference = %Escaped(&st.reference), status = %st.status, "status relayed");
        Ok(Outcome::StatusRelayed)
    }
}

impl Router {
    /// Records status `st` from `sender` in the record of `(source,
    /// st.reference)` under the envelope's lock, if `edit` applies to it
    /// (it may run more than once), and ends the sender's wait on presence.
    /// With the status's `nonce`, its entry is inserted with the update (one
    /// round trip) and judged: a replay records nothing.
    async fn record_status(
        &self,
        source: &AgencyCode,
        sender: &AgencyCode,
        st: &StatusFields,
        nonce: Option<&NonceUse>,
        edit: impl Fn(&mut EnvelopeRecord) -> bool,
    ) -> Result<Recorded, RouterError> {
        // Waits for the envelope's acceptance to finish (the destination may
        // answer before truc has written the record).
        let _guard = self.locks.lock(source.as_str(), &st.reference).await;
        // The first `01` is read off the record as updated.
        let delivered = std::cell::Cell::new(None);
        // Whether no destination may still receive the envelope, as updated.
        let settled = std::cell::Cell::new(false);
        let edit = |rec: &mut EnvelopeRecord| {
            let applied = edit(rec);
            delivered.set(first_delivery(rec, sender, st.status));
            settled.set(rec.dests.iter().all(|d| !d.may_deliver()));
            applied
        };
        let applied = match nonce {
            None => self.tracking.update_if(source, &st.reference, edit)?,
            Some(n) => match self
                .tracking
                .update_if_after_nonce(source, &st.reference, n, edit)?
            {
                (_, Some(applied)) => applied,
                // The nonce was there: not a replay (a redelivery, an
                // expired entry), then the update goes alone.
                (found, None) => {
                    if self.nonces.judge(n, found)? == NonceCheck::Replay {
                        return Ok(Recorded::Replay);
                    }
                    self.tracking.update_if(source, &st.reference, edit)?
                }
            },
        };
        if applied != Some(true) {
            return Ok(Recorded::Done(None));
        }
        // Any status means the destination has the envelope: it no longer
        // waits on presence (no delay warning or bounce from now on).
        self.tracking.unpend(sender, source, &st.reference)?;
        if settled.get() {
            // Its upload space, if it has one, is no longer needed.
            self.release_space(source, &st.reference, crate::core::time::now_ms());
        }
        Ok(Recorded::Done(Some(delivered.get())))
    }
}

/// What [`Router::record_status`] did.
enum Recorded {
    /// The status's nonce was used before by another message: nothing
    /// was recorded.
    Replay,
    /// `None` when there is no such record or the edit declined; else, on
    /// the sender's first `01`, the envelope's priority and latency.
    Done(Option<Option<(u8, Duration)>>),
}

/// On the first status `01` of `dest` in `rec` (as just updated): the
/// envelope's priority and its end-to-end latency, for the metrics.
fn first_delivery(
    rec: &EnvelopeRecord,
    dest: &AgencyCode,
    status: StatusCode,
) -> Option<(u8, Duration)> {
    if status != StatusCode::Received {
        return None;
    }
    let d = rec.dests.iter().find(|d| &d.code == dest)?;
    let mut delivered = d
        .events
        .iter()
        .filter(|e| e.state == DeliveryState::Delivered);
    match (delivered.next(), delivered.next()) {
        (Some(first), None) => {
            let ms = (first.at_ms - rec.accepted_at_ms).max(0) as u64;
            Some((rec.priority, Duration::from_millis(ms)))
        }
        _ => None,
    }
}

//! Step 4 — notices to sources: publishing a notice (declaring the agency's
//! queues when they are missing), and the presence notices (`delay-warning`,
//! `bounced destination-offline`) the presence task asks for.
//!
//! Invariants: every notice is signed by the hub with the source's signing
//! key (the key it last authenticated with while valid, else its newest),
//! named in `lgsp-hub-key`; a presence notice is sent under the envelope's lock, only while
//! the destination still waits ([`crate::state::tracking::DestTrack::is_waiting`]),
//! at most once of each kind per envelope and destination, and recorded in
//! the timeline (durably) right after the broker confirmed it.

use std::time::Instant;

use crate::core::code::AgencyCode;
use crate::core::message::Message;
use crate::core::metrics;
use crate::core::notice::{HubKey, Notice, NoticeKind};
use crate::core::reason::Reason;
use crate::core::text::Escaped;
use crate::core::time::now_ms;
use crate::core::timeline::DeliveryState;
use crate::router::{Outbox, PublishError, Router, RouterError};
use crate::state::registry::Entry;

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

impl Router {
    /// Publishes a notice to the source, declaring its queues if they are missing.
    pub(super) async fn notify<O: Outbox>(
        &self,
        source: &Entry,
        n: &Notice,
        outbox: &O,
    ) -> Result<(), RouterError> {
        let last = self.registry.last_used(&source.agency.code);
        let key = source
            .agency
            .signing_key(last.as_deref(), now_ms())
            .map(|k| HubKey::new(&k.access_key, &k.secret));
        // Every registered agency has a key; none would sign with an empty
        // secret, which the recipient refuses rather than trusts.
        let key = key.unwrap_or(HubKey {
            access_key: None,
            secret: "",
        });
        let m = n.to_message(&self.topology.prefix, key);
        self.publish_declaring(&source.agency.code, &m, outbox)
            .await
    }

    pub(super) async fn publish_declaring<O: Outbox>(
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
        tracing::info!(source = %from, message_id = %Escaped(message_id), dest = %dest, notice = %state, reason = %reason, "presence notice sent");
        Ok(OfflineNotice::Sent)
    }
}

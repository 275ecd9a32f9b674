//! `POST /v1/envelopes`: an envelope sent over HTTPS, handled by the router
//! while the caller waits, and answered with what happened to it.
//!
//! Invariants: the envelope's `lgsp-from` is the session's agency; its body
//! is read up to the policy's `max_body_bytes` (refused before reading when
//! its declared length is over); it is judged by [`crate::router::Router::handle`],
//! exactly as an envelope consumed from AMQP (the source also gets the
//! same notices in its notify queue), and answered only once that returned,
//! so `202` means accepted and durable; a call repeated after a timeout is
//! a repeat (`200`, "already accepted"), never a second delivery.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;

use std::sync::Arc;

use super::{request, status_of, Answer, Gateway, Gs};
use crate::broker::LinkOutbox;
use crate::core::message::{Inbound, Message};
use crate::core::reason::Reason;
use crate::router::{Outcome, RouterError};
use crate::state::registry::Entry;

/// `POST /v1/envelopes`.
pub(super) async fn send(axum::extract::State(gw): Gs, headers: HeaderMap, body: Body) -> Answer {
    let limit = gw.hub.router.policies().max_body_bytes;
    let (message_id, handled) = match handle(&gw, "envelope", &headers, body, limit).await {
        Ok((_, msg, handled)) => (msg.message_id.unwrap_or_default(), handled),
        Err(a) => return a,
    };
    match handled {
        Ok(Outcome::Accepted { delivered, bounced }) => Answer(
            StatusCode::ACCEPTED,
            json!({
                "outcome": "accepted",
                "message_id": message_id,
                "destinations": delivered.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "bounced": bounced
                    .iter()
                    .map(|(c, r)| json!({ "dest": c.as_str(), "reason": r.as_str() }))
                    .collect::<Vec<_>>(),
            }),
        ),
        Ok(Outcome::Duplicate) => Answer(
            StatusCode::OK,
            json!({
                "outcome": "accepted",
                "message_id": message_id,
                "detail": "already accepted; not delivered again",
            }),
        ),
        // Refused after its signature was verified: a notice went out.
        Ok(Outcome::Rejected(reason)) => {
            refused(reason, "the rejected notice says more", message_id)
        }
        Ok(Outcome::Quarantined(reason)) => {
            refused(reason, "its signature could not be verified", message_id)
        }
        Ok(other) => {
            tracing::warn!(outcome = ?other, "gateway envelope handled as something else");
            Answer::error(
                StatusCode::BAD_REQUEST,
                Some(Reason::Malformed),
                "not an envelope",
            )
        }
        Err(e) => not_handled("envelope", &e),
    }
}

/// A request of `kind` from the session's agency, read (body up to
/// `limit`) and handled by the router as if consumed from AMQP: the
/// session's agency, the message, and what the router made of it.
pub(super) async fn handle(
    gw: &Gateway,
    kind: &'static str,
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<(Arc<Entry>, Message, Result<Outcome, RouterError>), Answer> {
    let (entry, _) = gw.session(headers)?;
    let msg = request::read(kind, headers, body, limit).await?;
    if msg.header("lgsp-from") != Some(entry.agency.code.as_str()) {
        return Err(Answer::error(
            StatusCode::FORBIDDEN,
            Some(Reason::Forbidden),
            format!(
                "lgsp-from must be the session's agency, {}",
                entry.agency.code
            ),
        ));
    }
    let Some(link) = gw.hub.link.borrow().clone() else {
        return Err(Answer::unavailable(kind));
    };
    let outbox = LinkOutbox::new(link, gw.hub.topology.clone());
    let inbound = Inbound {
        message: msg,
        delivery_tag: 0,
        redelivered: false,
    };
    let handled = gw.hub.router.handle(&inbound, &outbox).await;
    Ok((entry, inbound.message, handled))
}

/// The answer to a `kind` the router could not handle now.
pub(super) fn not_handled(kind: &str, e: &RouterError) -> Answer {
    tracing::warn!(kind, error = %e, retryable = e.is_retryable(), "gateway request not handled; the caller may send it again");
    Answer::unavailable(kind)
}

/// The answer to an envelope the router refused for `reason`.
fn refused(reason: Reason, more: &str, message_id: String) -> Answer {
    refused_kind("envelope", reason, more, message_id)
}

/// The answer to a `kind` the router refused for `reason`.
pub(super) fn refused_kind(kind: &str, reason: Reason, more: &str, message_id: String) -> Answer {
    let mut a = Answer::error(
        status_of(reason),
        Some(reason),
        format!("{kind} refused: {reason} ({more})"),
    );
    a.1["outcome"] = "rejected".into();
    a.1["message_id"] = message_id.into();
    a
}

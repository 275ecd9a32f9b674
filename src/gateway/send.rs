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

use super::{request, status_of, Answer, Gs};
use crate::broker::LinkOutbox;
use crate::core::message::Inbound;
use crate::core::reason::Reason;
use crate::router::Outcome;

/// `POST /v1/envelopes`.
pub(super) async fn send(axum::extract::State(gw): Gs, headers: HeaderMap, body: Body) -> Answer {
    let (entry, _) = match gw.session(&headers) {
        Ok(s) => s,
        Err(a) => return a,
    };
    let limit = gw.hub.router.policies().max_body_bytes;
    let msg = match request::read("envelope", &headers, body, limit).await {
        Ok(m) => m,
        Err(a) => return a,
    };
    if msg.header("lgsp-from") != Some(entry.agency.code.as_str()) {
        return Answer::error(
            StatusCode::FORBIDDEN,
            Some(Reason::Forbidden),
            format!(
                "lgsp-from must be the session's agency, {}",
                entry.agency.code
            ),
        );
    }
    let Some(link) = gw.hub.link.borrow().clone() else {
        return Answer::unavailable("envelope");
    };
    let outbox = LinkOutbox::new(link, gw.hub.topology.clone());
    let message_id = msg.message_id.clone().unwrap_or_default();
    let inbound = Inbound {
        message: msg,
        delivery_tag: 0,
        redelivered: false,
    };
    match gw.hub.router.handle(&inbound, &outbox).await {
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
        Err(e) => {
            tracing::warn!(error = %e, retryable = e.is_retryable(), "gateway envelope not handled; the caller may send it again");
            Answer::unavailable("envelope")
        }
    }
}

/// The answer to an envelope the router refused for `reason`.
fn refused(reason: Reason, more: &str, message_id: String) -> Answer {
    let mut a = Answer::error(
        status_of(reason),
        Some(reason),
        format!("envelope refused: {reason} ({more})"),
    );
    a.1["outcome"] = "rejected".into();
    a.1["message_id"] = message_id.into();
    a
}

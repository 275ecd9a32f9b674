//! `POST /v1/envelopes`: an envelope sent over HTTPS, handled by the router
//! while the caller waits, and answered with what happened to it.
//!
//! Invariants: the envelope's `lgsp-from` is the session's agency; its body
//! is read up to the policy's `max_body_bytes` (refused before reading when
//! its declared length is over); it is judged by [`crate::router::Router::handle`],
//! exactly as an envelope consumed from AMQP (the source also gets the
//! same notices in its notify queue), and answered only once that returned,
//! so `202` means accepted and durable; a call repeated after a timeout is
//! a repeat (`200`, "already accepted"), never a second delivery. A body
//! declared larger than the policy's `inline_bytes` is streamed into an
//! upload space the hub makes ([`super::large`]), never held in memory.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};

use std::sync::Arc;

use super::types::{Accepted, Bounce, Error};
use super::{request, status_of, Answer, Gateway, Gs};
use crate::broker::LinkOutbox;
use crate::core::message::{Inbound, Message};
use crate::core::reason::Reason;
use crate::router::{Outcome, RouterError};
use crate::state::registry::Entry;

/// Sends an envelope: the headers of PROTOCOL.md §3.2–3.3 signed for
/// `envelope.<your code>`, and the body. Answered once it is accepted and
/// recorded, or refused.
#[utoipa::path(post, path = "/v1/envelopes", operation_id = "sendEnvelope", tag = "send",
    params(super::Signed, super::EnvelopeFields),
    request_body(content = String, content_type = "application/octet-stream", description = "the document: empty when lgsp-space names the space holding it; up to the policy's max_body_bytes without Content-Length; with a Content-Length over inline_bytes, up to max_document_bytes, streamed by the hub into a space of the sender's"),
    responses(
        (status = 202, description = "accepted and recorded", body = Accepted),
        (status = 200, description = "a repeat of an accepted envelope; not delivered again", body = Accepted),
        (status = 400, description = "malformed or unsupported-version", body = Error),
        (status = 401, description = "no good session", body = Error),
        (status = 403, description = "forbidden (lgsp-from is not the session's agency, or it may not send)", body = Error),
        (status = 413, description = "too-large: over max_body_bytes, or over max_document_bytes for a body kept in a space (refused before the body is read when Content-Length is declared)", body = Error),
        (status = 422, description = "bad-signature, unknown-key, clock-skew, replay, digest-mismatch", body = Error),
        (status = 429, description = "rate-limited", body = Error),
        (status = 503, description = "the hub cannot take it now; send the same request again", body = Error),
        (status = 507, description = "too-large: a large body would put the agency's spaces over its quota (bytes_per_agency)", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn send(axum::extract::State(gw): Gs, headers: HeaderMap, body: Body) -> Answer {
    let policies = gw.hub.router.policies();
    let (message_id, handled) = match request::declared_length(&headers) {
        Some(size) if size > policies.spaces.inline_bytes => {
            match super::large::send(&gw, &headers, body, size).await {
                Ok(r) => r,
                Err(a) => return a,
            }
        }
        _ => match handle(&gw, "envelope", &headers, body, policies.max_body_bytes).await {
            Ok((_, msg, handled)) => (msg.message_id.unwrap_or_default(), handled),
            Err(a) => return a,
        },
    };
    match handled {
        Ok(Outcome::Accepted { delivered, bounced }) => Answer::of(
            StatusCode::ACCEPTED,
            &Accepted {
                outcome: "accepted".into(),
                message_id,
                destinations: Some(delivered.iter().map(|c| c.to_string()).collect()),
                bounced: Some(
                    bounced
                        .iter()
                        .map(|(c, r)| Bounce {
                            dest: c.to_string(),
                            reason: r.as_str().to_owned(),
                        })
                        .collect(),
                ),
                detail: None,
            },
        ),
        Ok(Outcome::Duplicate) => Answer::of(
            StatusCode::OK,
            &Accepted {
                outcome: "accepted".into(),
                message_id,
                destinations: None,
                bounced: None,
                detail: Some("already accepted; not delivered again".into()),
            },
        ),
        other => not_taken("envelope", other, message_id),
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
    let msg = request::read(kind, headers, body, limit, gw.body_idle).await?;
    route(gw, kind, entry, msg, None).await
}

/// Hands `msg` from the session's agency (`entry`) to the router, its
/// content in `content_space` when the gateway kept its body there.
pub(super) async fn route(
    gw: &Gateway,
    kind: &'static str,
    entry: Arc<Entry>,
    msg: Message,
    content_space: Option<String>,
) -> Result<(Arc<Entry>, Message, Result<Outcome, RouterError>), Answer> {
    if msg.header("lgsp-from") != Some(entry.agency.code.as_str()) {
        return Err(not_from(&entry));
    }
    let Some(link) = gw.hub.link.borrow().clone() else {
        return Err(Answer::unavailable(kind));
    };
    let outbox = LinkOutbox::new(link, gw.hub.topology.clone());
    let inbound = Inbound {
        message: msg,
        delivery_tag: 0,
        redelivered: false,
        content_space,
    };
    let handled = gw.hub.router.handle(&inbound, &outbox).await;
    Ok((entry, inbound.message, handled))
}

/// The answer to a request whose `lgsp-from` is not the session's agency.
pub(super) fn not_from(entry: &Entry) -> Answer {
    Answer::error(
        StatusCode::FORBIDDEN,
        Some(Reason::Forbidden),
        format!(
            "lgsp-from must be the session's agency, {}",
            entry.agency.code
        ),
    )
}

/// The answer to a `kind` whose handling ended in anything but what the
/// caller wanted: a refusal (with or without a notice), another outcome,
/// or an error (try again).
pub(super) fn not_taken(
    kind: &str,
    handled: Result<Outcome, RouterError>,
    message_id: String,
) -> Answer {
    match handled {
        // Refused after its signature was verified: a notice went out.
        Ok(Outcome::Rejected(reason)) => {
            refused(kind, reason, "the rejected notice says more", message_id)
        }
        Ok(Outcome::Quarantined(reason)) => refused(
            kind,
            reason,
            "its signature could not be verified",
            message_id,
        ),
        Ok(other) => {
            tracing::warn!(kind, outcome = ?other, "gateway request handled as something else");
            Answer::error(
                StatusCode::BAD_REQUEST,
                Some(Reason::Malformed),
                format!("not a {kind}"),
            )
        }
        Err(e) => {
            tracing::warn!(kind, error = %e, retryable = e.is_retryable(), "gateway request not handled; the caller may send it again");
            Answer::unavailable(kind)
        }
    }
}

/// The answer to a `kind` the router refused for `reason`.
fn refused(kind: &str, reason: Reason, more: &str, message_id: String) -> Answer {
    Answer::of(
        status_of(reason),
        &Error {
            error: format!("{kind} refused: {reason} ({more})"),
            reason: Some(reason.as_str().to_owned()),
            outcome: Some("rejected".into()),
            message_id: Some(message_id),
        },
    )
}

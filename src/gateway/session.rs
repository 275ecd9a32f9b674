//! Sessions: `POST /v1/sessions` (a signed session request, answered with a
//! token), `GET /v1/session` (what a token stands for), `POST
//! /v1/session/renew` (a new token for a session still good).
//!
//! Invariants: a session is granted only to a request the router would
//! accept from the same agency on AMQP (signature, enabled, clock, nonce,
//! digest); a refusal of an unauthenticated request says nothing of why
//! (`401`), one of an authenticated agency says its reason code; a renewed
//! token is bound to the same agency and key as the one it replaces.

use super::types::{Error, SessionGranted, SessionInfo};
use super::{request, status_of, Answer, Gateway, Gs};
use crate::core::time::{format_rfc3339, now_ms};
use crate::router::{SessionGrant, SessionRefused};
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};

/// The largest session request body read (it is normally empty).
const SESSION_BODY_LIMIT: u64 = 4096;

impl Gateway {
    /// A new token for `agency` and `access_key`, and its answer.
    fn grant(&self, agency: &str, access_key: &str) -> Answer {
        let now = now_ms();
        let ttl_ms = self.session_ttl.as_millis() as i64;
        let expires = now + ttl_ms;
        let token = self.tokens.mint(agency, access_key, expires);
        Answer::of(
            StatusCode::CREATED,
            &SessionGranted {
                token,
                agency: agency.to_owned(),
                expires_at: format_rfc3339(expires),
                expires_in_s: ttl_ms / 1000,
            },
        )
    }
}

/// Opens a session: a session request signed as any message (routing key
/// `session.<your code>`, usually an empty body), answered with a token.
#[utoipa::path(post, path = "/v1/sessions", operation_id = "openSession", tag = "session",
    params(super::Signed),
    request_body(content = String, content_type = "application/octet-stream", description = "usually empty; its digest is lgsp-digest"),
    responses(
        (status = 201, description = "granted", body = SessionGranted),
        (status = 401, description = "not authenticated (the same words whatever the cause)", body = Error),
        (status = 403, description = "the agency is disabled (reason forbidden)", body = Error),
        (status = 422, description = "clock-skew, replay or digest-mismatch", body = Error),
        (status = 503, description = "the hub cannot do it now; try again", body = Error),
    ))]
pub(super) async fn open(axum::extract::State(gw): Gs, headers: HeaderMap, body: Body) -> Answer {
    let msg = match request::read("session", &headers, body, SESSION_BODY_LIMIT, gw.body_idle).await
    {
        Ok(m) => m,
        Err(a) => return a,
    };
    match gw.hub.router.open_session(&msg) {
        Ok(Ok(SessionGrant { agency, access_key })) => {
            if let Err(a) = gw.count_call(&agency, &gw.hub.router.policies()) {
                return a;
            }
            tracing::info!(agency = %agency, "gateway session opened");
            gw.grant(agency.as_str(), &access_key)
        }
        Ok(Err(SessionRefused::Unauthenticated(r))) => {
            tracing::info!(reason = %r.reason, "gateway session refused: sender not authenticated");
            Answer::unauthorized()
        }
        Ok(Err(SessionRefused::Refused(r))) => {
            tracing::info!(reason = %r.reason, "gateway session refused");
            Answer::error(status_of(r.reason), Some(r.reason), r.detail)
        }
        Err(e) => {
            tracing::warn!(error = %e, "gateway session not opened");
            Answer::unavailable("session")
        }
    }
}

/// What the session's token stands for.
#[utoipa::path(get, path = "/v1/session", operation_id = "showSession", tag = "session",
    responses(
        (status = 200, description = "the session is good", body = SessionInfo),
        (status = 401, description = "no good session", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn show(axum::extract::State(gw): Gs, headers: HeaderMap) -> Answer {
    match gw.session(&headers) {
        Ok((entry, claims)) => Answer::of(
            StatusCode::OK,
            &SessionInfo {
                agency: entry.agency.code.to_string(),
                expires_at: format_rfc3339(claims.expires_ms),
            },
        ),
        Err(a) => a,
    }
}

/// A new token for a session still good (same agency and key).
#[utoipa::path(post, path = "/v1/session/renew", operation_id = "renewSession", tag = "session",
    responses(
        (status = 201, description = "renewed", body = SessionGranted),
        (status = 401, description = "no good session", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn renew(axum::extract::State(gw): Gs, headers: HeaderMap) -> Answer {
    match gw.session(&headers) {
        Ok((entry, claims)) => gw.grant(entry.agency.code.as_str(), &claims.access_key),
        Err(a) => a,
    }
}

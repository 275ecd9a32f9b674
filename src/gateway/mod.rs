//! Layer 6b — **gateway**: the agencies' HTTPS API, beside AMQP, in the same
//! process, on the same store and broker (`gateway_addr`; off when unset).
//!
//! - [`session`] — `POST /v1/sessions`: a session request signed like any
//!   message (routing key `session.<from>`) is answered with a short-lived
//!   token; `GET /v1/session` reads it, `POST /v1/session/renew` renews it;
//! - [`send`] — `POST /v1/envelopes`: an envelope with the same signed
//!   `lgsp-*` fields as on AMQP, handled by the router at once and answered
//!   with its outcome (accepted, or the contract's reason code);
//! - [`request`] — an HTTP request read as the message it stands for;
//! - [`token`] — the session tokens.
//!
//! Invariants: every call but `POST /v1/sessions` carries a token that
//! verifies and whose agency is registered, enabled and still has the key
//! the session was opened with (checked at each call: disabling, rotating
//! or removing an agency ends its sessions at once); a refused session or
//! token is answered `401` with the same words whatever the cause; a body
//! larger than the limit is refused before it is read when its length is
//! declared; an envelope goes through exactly the router steps an AMQP
//! envelope goes through, so both are judged alike, and a call repeated
//! after a timeout is a repeat the router recognises; no token or secret is
//! logged.
//!
//! May use: every layer beneath it, and the admin API's connection
//! handling ([`crate::api::tls`]).

mod mailbox;
mod notices;
mod receive;
mod request;
mod send;
mod session;
mod status;
mod stream;
mod token;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::api::tls::ServerTls;
use crate::core::code::AgencyCode;
use crate::core::reason::Reason;
use crate::core::time::now_ms;
use crate::operator::Hub;
use crate::state::registry::Entry;

pub(crate) use token::PURPOSE as TOKEN_PURPOSE;

/// The gateway's shared state.
pub(crate) struct Gateway {
    hub: Arc<Hub>,
    tokens: token::Tokens,
    session_ttl: Duration,
    mailboxes: Arc<mailbox::Mailboxes>,
    /// When each agency's calls last counted as a heartbeat.
    beats: std::sync::Mutex<std::collections::HashMap<AgencyCode, std::time::Instant>>,
}

/// The state every handler gets.
type Gs = axum::extract::State<Arc<Gateway>>;

/// An answer: status and JSON body.
pub(crate) struct Answer(StatusCode, serde_json::Value);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(self.1)).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl Answer {
    /// An error answer: `{"error": …}`, with the reason code when there is one.
    fn error(status: StatusCode, reason: Option<Reason>, text: impl Into<String>) -> Self {
        let mut body = serde_json::json!({ "error": text.into() });
        if let Some(r) = reason {
            body["reason"] = r.as_str().into();
        }
        Self(status, body)
    }

    /// A request the gateway cannot read.
    fn bad_request(text: impl Into<String>) -> Self {
        Self::error(StatusCode::BAD_REQUEST, None, text)
    }

    /// The one answer to any session or token that is not good.
    fn unauthorized() -> Self {
        Self::error(
            StatusCode::UNAUTHORIZED,
            None,
            "authentication failed: open a session (POST /v1/sessions) and send its token",
        )
    }

    /// The hub cannot do it now (broker or store); the caller tries again.
    fn unavailable(what: &str) -> Self {
        Self::error(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            format!("{what}: the hub cannot do it right now; try again"),
        )
    }
}

/// The HTTP status of a refusal for `reason`.
fn status_of(reason: Reason) -> StatusCode {
    match reason {
        Reason::Malformed | Reason::UnsupportedVersion => StatusCode::BAD_REQUEST,
        Reason::Forbidden => StatusCode::FORBIDDEN,
        Reason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Reason::UnknownKey
        | Reason::BadSignature
        | Reason::ClockSkew
        | Reason::Replay
        | Reason::DigestMismatch
        | Reason::UnknownDestination
        | Reason::DestinationDisabled
        | Reason::DestinationOffline
        | Reason::Expired
        | Reason::RejectedByDestination
        | Reason::MaxAttempts
        | Reason::Recalled
        | Reason::RecordLost => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl Gateway {
    /// The agency of the session whose token `headers` carry, if it is
    /// still good: the token verifies and has not expired, and its agency is
    /// registered, enabled, and has the same newest key.
    fn session(&self, headers: &HeaderMap) -> Result<(Arc<Entry>, token::Claims), Answer> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(Answer::unauthorized)?;
        let claims = self.tokens.verify(token.trim(), now_ms()).map_err(|e| {
            tracing::debug!(error = %e, "gateway session refused");
            Answer::unauthorized()
        })?;
        let entry = AgencyCode::parse(&claims.agency)
            .ok()
            .and_then(|code| self.hub.registry.get(&code))
            .filter(|e| e.agency.enabled)
            .filter(|e| {
                e.agency
                    .keys
                    .last()
                    .is_some_and(|k| k.access_key == claims.access_key)
            })
            .ok_or_else(|| {
                tracing::debug!(agency = %crate::core::text::Escaped(&claims.agency), "gateway session ended: agency removed, disabled or its key rotated");
                Answer::unauthorized()
            })?;
        self.beat(&entry.agency.code);
        Ok((entry, claims))
    }

    /// Counts a call of `code` as an `online` heartbeat (PROTOCOL.md §3.5),
    /// at most once every third of the heartbeat window.
    fn beat(&self, code: &AgencyCode) {
        let every = self.hub.router.policies().presence.heartbeat_window / 3;
        let now = std::time::Instant::now();
        {
            let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
            if beats
                .get(code)
                .is_some_and(|last| now.duration_since(*last) < every)
            {
                return;
            }
            beats.insert(code.clone(), now);
        }
        self.hub.router.heartbeat(code, true, now_ms());
    }
}

/// The gateway's routes.
fn routes(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/sessions", post(session::open))
        .route("/v1/session", get(session::show))
        .route("/v1/session/renew", post(session::renew))
        .route("/v1/envelopes", post(send::send))
        .route("/v1/statuses", post(status::post))
        .route("/v1/deliveries", get(receive::list))
        .route("/v1/deliveries/{from}/{message_id}", get(receive::fetch))
        .route("/v1/deliveries/{from}/{message_id}/ack", post(receive::ack))
        .route(
            "/v1/deliveries/{from}/{message_id}/reject",
            post(receive::reject),
        )
        .route("/v1/notices", get(notices::list))
        .route("/v1/notices/ack", post(notices::ack))
        .route("/v1/stream", get(stream::open))
        .with_state(gw)
}

/// Serves the gateway on `listener` until `shutdown`: HTTPS when `tls` is
/// given, with the admin API's connection timeouts; session tokens under
/// `token_key` ([`TOKEN_PURPOSE`] derived from the master key).
pub(crate) async fn serve(
    hub: Arc<Hub>,
    token_key: [u8; 32],
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) {
    let header_timeout = hub.config.admin_header_timeout();
    let gw = Arc::new(Gateway {
        session_ttl: hub.config.gateway_session_ttl(),
        tokens: token::Tokens::new(token_key),
        mailboxes: Arc::new(mailbox::Mailboxes::new(shutdown.clone())),
        beats: Default::default(),
        hub,
    });
    crate::api::tls::serve_connections(
        "gateway",
        routes(gw),
        listener,
        tls,
        header_timeout,
        shutdown,
    )
    .await;
}

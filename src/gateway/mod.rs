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

mod large;
mod mailbox;
mod notices;
mod params;
mod receive;
mod request;
mod send;
mod session;
mod spaces;
mod status;
mod stream;
mod token;
mod types;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::tls::ServerTls;
use crate::core::code::AgencyCode;
use crate::core::policy::Policies;
use crate::core::reason::Reason;
use crate::core::time::now_ms;
use crate::operator::Hub;
use crate::state::registry::Entry;

pub(crate) use params::{EnvelopeFields, Signed, StatusFields};
pub(crate) use token::PURPOSE as TOKEN_PURPOSE;

/// The gateway's shared state.
pub(crate) struct Gateway {
    hub: Arc<Hub>,
    tokens: token::Tokens,
    session_ttl: Duration,
    /// The longest a request body may stall (the header timeout).
    body_idle: Duration,
    mailboxes: Arc<mailbox::Mailboxes>,
    /// Each agency's calls, against its gateway rate (policies).
    calls: std::sync::Mutex<crate::core::scheduler::RateLimiter>,
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
        if self.0 == StatusCode::TOO_MANY_REQUESTS || self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

impl Answer {
    /// `status` with `body` ([`types`]).
    fn of(status: StatusCode, body: &impl serde::Serialize) -> Self {
        Self(
            status,
            serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// An error answer ([`types::Error`]), with the reason code when there is one.
    fn error(status: StatusCode, reason: Option<Reason>, text: impl Into<String>) -> Self {
        Self::of(
            status,
            &types::Error {
                error: text.into(),
                reason: reason.map(|r| r.as_str().to_owned()),
                outcome: None,
                message_id: None,
            },
        )
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
    /// still good ([`Gateway::verify`]), for a call that counts: against
    /// the agency's gateway rate (`429` over it), and as a heartbeat.
    fn session(&self, headers: &HeaderMap) -> Result<(Arc<Entry>, token::Claims), Answer> {
        let (entry, claims) = self.verify(headers)?;
        let policies = self.hub.router.policies();
        self.count_call(&entry.agency.code, &policies)?;
        self.beat(&entry.agency.code, &policies);
        Ok((entry, claims))
    }

    /// Takes a call of `code` from its gateway rate.
    fn count_call(&self, code: &AgencyCode, policies: &Policies) -> Result<(), Answer> {
        let rate = policies.gateway_rate_of(code);
        let allowed =
            self.calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(code, rate, now_ms());
        if allowed {
            return Ok(());
        }
        crate::core::metrics::gateway_rate_limited();
        Err(Answer::error(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Reason::RateLimited),
            format!(
                "over your rate of {} calls per second (burst {}): try again after Retry-After",
                rate.per_s, rate.burst
            ),
        ))
    }

    /// The agency of the session whose token `headers` carry, if it is
    /// still good: the token verifies and has not expired, and its agency is
    /// registered, enabled, and has the same newest key.
    fn verify(&self, headers: &HeaderMap) -> Result<(Arc<Entry>, token::Claims), Answer> {
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
        if self
            .hub
            .registry
            .sessions_revoked_at(&entry.agency.code)
            .is_some_and(|at| claims.issued_ms <= at)
        {
            tracing::debug!(agency = %entry.agency.code, "gateway session ended: opened before the agency was disabled");
            return Err(Answer::unauthorized());
        }
        Ok((entry, claims))
    }

    /// Counts a call of `code` as an `online` heartbeat (PROTOCOL.md §3.5),
    /// at most once every third of the heartbeat window.
    fn beat(&self, code: &AgencyCode, policies: &Policies) {
        let every = policies.presence.heartbeat_window / 3;
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

/// The document's frame; the paths come from the routes ([`routes`]).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "truc gateway",
        description = "The agencies' HTTPS API of the provincial integration axis (LGSP): \
            sessions, sending, receiving, statuses, notices and upload spaces for large \
            documents. Requests carry the signed \
            message of the wire contract (docs/PROTOCOL.md); docs/GATEWAY.md shows the whole \
            flow with curl."
    ),
    modifiers(&BearerSession),
    tags(
        (name = "session", description = "session keys"),
        (name = "send", description = "sending envelopes"),
        (name = "receive", description = "deliveries, statuses and the event stream"),
        (name = "notices", description = "what the hub tells a source"),
        (name = "spaces", description = "upload spaces for large documents"),
    )
)]
struct Frame;

/// The `session` security scheme: `Authorization: Bearer <token>`.
struct BearerSession;

impl utoipa::Modify for BearerSession {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "session",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("the token from POST /v1/sessions"))
                        .build(),
                ),
            );
    }
}

/// The gateway's routes and the OpenAPI document made from them (so the
/// document lists exactly the routes served, with their types).
fn routes() -> (Router<Arc<Gateway>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(Frame::openapi())
        .routes(routes!(session::open))
        .routes(routes!(session::show))
        .routes(routes!(session::renew))
        .routes(routes!(send::send))
        .routes(routes!(status::post))
        .routes(routes!(receive::list))
        .routes(routes!(receive::fetch))
        .routes(routes!(receive::ack))
        .routes(routes!(receive::reject))
        .routes(routes!(notices::list))
        .routes(routes!(notices::ack))
        .routes(routes!(stream::open))
        .routes(routes!(spaces::create))
        .routes(routes!(spaces::show, spaces::delete))
        .routes(routes!(spaces::put_chunk))
        .routes(routes!(spaces::complete))
        .routes(routes!(spaces::content))
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    rate_limited(&mut doc);
    (router, doc)
}

/// Adds the `429` every call may get (its agency's call rate, [`Gateway::count_call`])
/// to every operation of `doc`.
fn rate_limited(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let answer = ResponseBuilder::new()
        .description(
            "rate-limited: over your agency's call rate; call again after Retry-After (seconds)",
        )
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            op.responses
                .responses
                .entry("429".to_owned())
                .or_insert_with(|| RefOr::T(answer.clone()));
        }
    }
}

/// The OpenAPI document of the gateway (`GET /openapi.json`).
pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// Answers a request the framework refused before a handler ran (a path
/// parameter that does not parse, say: plain text) with the gateway's JSON
/// [`types::Error`], like every other answer.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let r = next.run(req).await;
    let plain = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(plain && r.status().is_client_error()) {
        return r;
    }
    let status = r.status();
    let text = axum::body::to_bytes(r.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Answer::error(status, None, text).into_response()
}

/// Counts and times each call by its route ([`crate::core::metrics::gateway_request`]).
async fn measure(
    path: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = path.map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let r = next.run(req).await;
    crate::core::metrics::gateway_request(&route, r.status().as_u16(), started.elapsed());
    r
}

/// `GET /openapi.json`.
async fn openapi_json(
    axum::extract::State(doc): axum::extract::State<Arc<serde_json::Value>>,
) -> Json<serde_json::Value> {
    Json((*doc).clone())
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
        body_idle: header_timeout,
        tokens: token::Tokens::new(token_key),
        mailboxes: Arc::new(mailbox::Mailboxes::new(shutdown.clone())),
        calls: Default::default(),
        beats: Default::default(),
        hub,
    });
    let (api, doc) = routes();
    let doc = Arc::new(serde_json::to_value(&doc).unwrap_or_default());
    let app = api
        .with_state(gw)
        .merge(
            Router::new()
                .route("/openapi.json", get(openapi_json))
                .with_state(doc),
        )
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn(measure));
    crate::api::tls::serve_connections("gateway", app, listener, tls, header_timeout, shutdown)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is the document the code generates: regenerate it
    /// with `truc openapi > docs/openapi.json` after changing the gateway.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let committed: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let generated = serde_json::to_value(openapi()).unwrap();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run `truc openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn every_call_but_opening_a_session_needs_the_session() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 17, "{:?}", paths.keys().collect::<Vec<_>>());
        let mut ids = std::collections::BTreeSet::new();
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                let open = path == "/v1/sessions";
                assert_eq!(
                    op.get("security").is_some(),
                    !open,
                    "{method} {path}: security"
                );
                assert!(op["responses"].get("401").is_some(), "{method} {path}: 401");
                assert!(
                    ids.insert(op["operationId"].as_str().unwrap().to_owned()),
                    "{method} {path}: operationId not unique"
                );
            }
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["session"]["scheme"],
            "bearer"
        );
    }
}

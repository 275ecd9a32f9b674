//! Layer 6 — **api**: the admin HTTP API, used by the `truc` CLI:
//! bearer-token protected, JSON in and out (the store backup: bytes out);
//! `/healthz` is open, `/metrics` (Prometheus) is open only when `metrics_require_token` is off (the default
//! on loopback). Plain HTTP on loopback, HTTPS anywhere else ([`tls`]).
//! One file per resource; this file
//! holds the routes, the token check, the error mapping and [`serve`].
//! Every body is a type of [`types`]; the work is done by
//! [`crate::operator`].
//!
//! Who calls is a [`caller::Caller`] extractor: the admin token or an
//! account's API token, whose role ([`crate::core::role`]) decides what it
//! may do and whose scope cuts what it sees.
//!
//! Invariants: every `/v1` handler checks its caller's permission first; no response ever
//! carries a secret except those issuing one (`POST /v1/agencies`,
//! `rotate-key`, `rotate-broker-password`, `import`); every error is `{"error": …}` with a status
//! derived from the operator error, never from its text (503 when the
//! error says trying again may succeed).
//!
//! May use: every layer beneath it.

mod accounts;
mod agencies;
mod alerts;
mod audit;
pub(crate) mod caller;
mod console;
mod dead;
mod envelopes;
pub(crate) mod health;
mod instances;
mod presence;
mod queues;
mod reports;
mod store;
pub(crate) mod tls;
pub mod types;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::api::types::ErrorBody;
use crate::operator::agency::AgencyError;
use crate::operator::dead::DeadError;
use crate::operator::envelopes::EnvelopeError;
use crate::operator::presence::PresenceViewError;
use crate::operator::queues::QueueError;
use crate::operator::reporting::ReportingError;
use crate::operator::Hub;
use crate::state::accounts::AccountError;
use crate::state::audit::AuditError;
use crate::state::registry::RegistryError;

/// The shared state of every handler.
type Hs = axum::extract::State<Arc<Hub>>;

/// An API error: status and message, as `{"error": …}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

pub(crate) fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// A failure that may pass: 503, which the CLI reports as "unreachable" (4).
pub(crate) fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::Exists(_) => StatusCode::CONFLICT,
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::BadName | RegistryError::BadKey(_) => StatusCode::BAD_REQUEST,
            RegistryError::BadRow { .. } => StatusCode::BAD_REQUEST,
            RegistryError::Store(_) | RegistryError::Sealed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self(status, e.to_string())
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let status = match &e {
            _ if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            QueueError::NoBroker => StatusCode::SERVICE_UNAVAILABLE,
            QueueError::NotFound(_) => StatusCode::NOT_FOUND,
            QueueError::Amqp(_) => StatusCode::BAD_GATEWAY,
            QueueError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<DeadError> for ApiError {
    fn from(e: DeadError) -> Self {
        if e.is_retryable() && !matches!(e, DeadError::Queue(_)) {
            return ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        match e {
            DeadError::Queue(q) => q.into(),
            DeadError::Amqp(a) => ApiError(StatusCode::BAD_GATEWAY, a.to_string()),
            DeadError::BadFilter(m) => ApiError(StatusCode::BAD_REQUEST, m),
        }
    }
}

impl From<AgencyError> for ApiError {
    fn from(e: AgencyError) -> Self {
        let retryable = e.is_retryable();
        match e {
            AgencyError::BadCode(m) => bad_request(m),
            AgencyError::NotRegistered(_) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            AgencyError::InboxNotEmpty { .. } => ApiError(StatusCode::CONFLICT, e.to_string()),
            AgencyError::Registry(r) if retryable => unavailable(r),
            AgencyError::Registry(r) => r.into(),
            AgencyError::Queue(q) => q.into(),
        }
    }
}

impl From<EnvelopeError> for ApiError {
    fn from(e: EnvelopeError) -> Self {
        let status = match &e {
            EnvelopeError::BadQuery(_) => StatusCode::BAD_REQUEST,
            EnvelopeError::NotFound { .. } => StatusCode::NOT_FOUND,
            EnvelopeError::Ambiguous { .. } => StatusCode::CONFLICT,
            EnvelopeError::Store(_) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            EnvelopeError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<PresenceViewError> for ApiError {
    fn from(e: PresenceViewError) -> Self {
        let status = match &e {
            PresenceViewError::BadCode(_) => StatusCode::BAD_REQUEST,
            PresenceViewError::Unknown(_) => StatusCode::NOT_FOUND,
            PresenceViewError::Book(_) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            PresenceViewError::Book(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<ReportingError> for ApiError {
    fn from(e: ReportingError) -> Self {
        if e.is_retryable() {
            unavailable(e)
        } else {
            internal(e)
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        let status = match &e {
            AccountError::BadName(_) | AccountError::BadPassword | AccountError::BadAgency(_) => {
                StatusCode::BAD_REQUEST
            }
            AccountError::Exists(_) => StatusCode::CONFLICT,
            AccountError::NotFound(_) => StatusCode::NOT_FOUND,
            AccountError::BadLogin => StatusCode::FORBIDDEN,
            AccountError::Store(_) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            AccountError::Store(_) | AccountError::Hash(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<crate::operator::overview::OverviewError> for ApiError {
    fn from(e: crate::operator::overview::OverviewError) -> Self {
        if e.is_retryable() {
            unavailable(e)
        } else {
            internal(e)
        }
    }
}

impl From<crate::state::store::StoreError> for ApiError {
    fn from(e: crate::state::store::StoreError) -> Self {
        if e.is_retryable() {
            unavailable(e)
        } else {
            internal(e)
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        internal(e)
    }
}

/// `since` given as a duration: that long before now, in ms.
fn since_duration(d: &str) -> Result<i64, ApiError> {
    let d = crate::core::time::parse_duration(d).map_err(|e| bad_request(format!("since: {e}")))?;
    Ok(crate::core::time::now_ms() - d.as_millis() as i64)
}

/// The API routes over `hub`.
pub fn routes(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics_text))
        .route("/v1/agencies", get(agencies::list).post(agencies::add))
        .route("/v1/agencies/import", post(agencies::import))
        .route(
            "/v1/agencies/{code}",
            get(agencies::show).delete(agencies::remove),
        )
        .route("/v1/agencies/{code}/disable", post(agencies::disable))
        .route("/v1/agencies/{code}/enable", post(agencies::enable))
        .route("/v1/agencies/{code}/rotate-key", post(agencies::rotate))
        .route(
            "/v1/agencies/{code}/rotate-broker-password",
            post(agencies::rotate_broker_password),
        )
        .route("/v1/rabbitmq-definitions", get(agencies::definitions))
        .route("/v1/envelopes", get(envelopes::show))
        .route("/v1/envelopes/list", get(envelopes::list))
        .route("/v1/presence", get(presence::list))
        .route("/v1/presence/{code}/history", get(presence::history))
        .route("/v1/queues", get(queues::list))
        .route("/v1/queues/shape", get(queues::shape))
        .route("/v1/queues/{code}/peek", get(queues::peek))
        .route("/v1/queues/{code}/purge", post(queues::purge))
        .route("/v1/dead", get(dead::list))
        .route("/v1/dead/retry", post(dead::retry))
        .route("/v1/dead/drop", post(dead::drop))
        .route("/v1/audit", get(audit::tail))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/report", get(reports::report))
        .route("/v1/store/stats", get(store::stats))
        .route("/v1/store/backup", get(store::backup))
        .route("/v1/instances", get(instances::list))
        .route("/v1/whoami", get(accounts::whoami))
        .route("/v1/alerts", get(alerts::list))
        .merge(console::routes())
        .route("/v1/accounts", get(accounts::list).post(accounts::add))
        .route("/v1/accounts/{name}/disable", post(accounts::disable))
        .route("/v1/accounts/{name}/enable", post(accounts::enable))
        .route("/v1/accounts/{name}/password", post(accounts::password))
        .route("/v1/accounts/{name}/tokens", post(accounts::token))
        .with_state(hub)
}

/// Installs the Prometheus recorder: before anything emits a metric, so no
/// early value is lost. Idempotent.
pub(crate) fn install_metrics() {
    health::prometheus();
}

/// Serves the API on `listener` until `shutdown`: HTTPS when `tls` is
/// given, with the timeouts of [`tls`].
pub async fn serve(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    tls: Option<tls::ServerTls>,
    shutdown: CancellationToken,
) {
    health::prometheus();
    let header_timeout = hub.config.admin_header_timeout();
    tls::serve_connections(
        "admin API",
        routes(hub),
        listener,
        tls,
        header_timeout,
        shutdown,
    )
    .await;
}

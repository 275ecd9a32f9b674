//! The admin HTTP API, used by the `truc` CLI: bearer-token protected, JSON
//! in and out; `/healthz` is open, `/metrics` (Prometheus) is open only when
//! `metrics_require_token` is off (the default on loopback). Plain HTTP on
//! loopback, HTTPS anywhere else ([`tls`]).
//!
//! Invariant: no response ever carries a secret except the one `POST
//! /v1/agencies` that issues it.

mod ops;
pub(crate) mod tls;

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::broker::declare_agency;
use crate::core::code::AgencyCode;
use crate::core::time::format_rfc3339;
use crate::operator::Hub;
use crate::state::registry::{Agency, RegistryError};

fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests); then ours renders empty.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// An API error: status and message, as `{"error": …}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
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

pub(crate) fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

pub(crate) fn check_token(hub: &Hub, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // An empty or short token never opens the API, whatever was configured.
    let usable = hub.admin_token.len() >= crate::core::config::MIN_ADMIN_TOKEN_LEN;
    if usable && bool::from(given.as_bytes().ct_eq(hub.admin_token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token".into(),
        ))
    }
}

/// An access key as shown (no secret).
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyView {
    /// The access key.
    pub access_key: String,
    /// Issued at (RFC 3339).
    pub created_at: String,
    /// Expires at (RFC 3339).
    pub expires_at: Option<String>,
}

/// An agency as shown (no secrets).
#[derive(Debug, Serialize, Deserialize)]
pub struct AgencyView {
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
    /// Enabled.
    pub enabled: bool,
    /// Registered at (RFC 3339).
    pub created_at: String,
    /// Has an RSA public key.
    pub rsa_public_key: bool,
    /// Access keys.
    pub access_keys: Vec<KeyView>,
    /// Inbox queue name.
    pub inbox: String,
    /// Notify queue name.
    pub notify: String,
    /// Inbox depth, when the broker answered.
    #[serde(default)]
    pub inbox_messages: Option<u32>,
    /// Inbox consumers, when the broker answered.
    #[serde(default)]
    pub inbox_consumers: Option<u32>,
}

pub(crate) fn view(hub: &Hub, a: &Agency) -> AgencyView {
    AgencyView {
        code: a.code.to_string(),
        name: a.name.clone(),
        enabled: a.enabled,
        created_at: format_rfc3339(a.created_at_ms),
        rsa_public_key: a.public_key_pem.is_some(),
        access_keys: a
            .keys
            .iter()
            .map(|k| KeyView {
                access_key: k.access_key.clone(),
                created_at: format_rfc3339(k.created_at_ms),
                expires_at: k.expires_at_ms.map(format_rfc3339),
            })
            .collect(),
        inbox: hub.topology.inbox(&a.code),
        notify: hub.topology.notify(&a.code),
        inbox_messages: None,
        inbox_consumers: None,
    }
}

/// Body of `POST /v1/agencies`.
#[derive(Debug, Deserialize, Serialize)]
pub struct AddAgency {
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
    /// PEM RSA public key.
    #[serde(default)]
    pub public_key_pem: Option<String>,
}

async fn add_agency(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Json(body): Json<AddAgency>,
) -> Result<Response, ApiError> {
    check_token(&hub, &headers)?;
    let code =
        AgencyCode::parse(&body.code).map_err(|e| bad_request(format!("{:?}: {e}", body.code)))?;
    let issued = hub
        .registry
        .add(code.clone(), &body.name, body.public_key_pem)?;
    let link = hub.link.borrow().clone();
    let queues_declared = match link {
        Some(link) => match declare_agency(&link, &hub.topology, &code).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(agency = %code, error = %e, "queues not declared now; they will be at the next connection");
                false
            }
        },
        None => false,
    };
    tracing::info!(agency = %code, access_key = %issued.access_key, "agency registered");
    hub.router
        .audit()
        .record(crate::state::audit::AuditEvent::admin(
            "agency-add",
            code.to_string(),
            format!("access key {}", issued.access_key),
        ));
    let mut out = serde_json::to_value(&issued).unwrap_or_default();
    out["queues_declared"] = json!(queues_declared);
    out["inbox"] = json!(hub.topology.inbox(&code));
    out["notify"] = json!(hub.topology.notify(&code));
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn list_agencies(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
) -> Result<Json<Vec<AgencyView>>, ApiError> {
    check_token(&hub, &headers)?;
    Ok(Json(
        hub.registry.list().iter().map(|a| view(&hub, a)).collect(),
    ))
}

async fn show_agency(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Json<AgencyView>, ApiError> {
    check_token(&hub, &headers)?;
    let code = AgencyCode::parse(&code).map_err(|e| bad_request(format!("{code:?}: {e}")))?;
    let entry = hub.registry.get(&code).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("agency {code} is not registered"),
        )
    })?;
    let mut v = view(&hub, &entry.agency);
    let link = hub.link.borrow().clone();
    if let Some(link) = link {
        // Passive declares run on the link's own probe channels; a missing
        // queue closes only such a channel.
        if let Ok(info) = link.queue_info(&v.inbox).await {
            v.inbox_messages = Some(info.messages);
            v.inbox_consumers = Some(info.consumers);
        }
    }
    Ok(Json(v))
}

/// Query of `GET /v1/envelopes`.
#[derive(Debug, Deserialize)]
pub struct EnvelopeQuery {
    /// Source code.
    pub from: String,
    /// Message id.
    pub id: String,
}

async fn show_envelope(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(q): Query<EnvelopeQuery>,
) -> Result<Response, ApiError> {
    check_token(&hub, &headers)?;
    let from = AgencyCode::parse(&q.from).map_err(|e| bad_request(format!("from: {e}")))?;
    match hub.router.tracking().get(&from, &q.id) {
        Ok(Some(rec)) => Ok(Json(rec).into_response()),
        Ok(None) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no envelope {} from {from}", q.id),
        )),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// Query of `GET /v1/envelopes/list`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Source code.
    pub from: Option<String>,
    /// Destination code.
    pub to: Option<String>,
    /// A destination in this state (`queued`, `delivered`, `bounced`…).
    pub state: Option<String>,
    /// Accepted within this duration (`2h`).
    pub since: Option<String>,
    /// Most records (default 100, at most 10000).
    pub limit: Option<usize>,
}

async fn list_envelopes(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    check_token(&hub, &headers)?;
    let code = |v: &Option<String>, what: &str| {
        v.as_deref()
            .map(|c| AgencyCode::parse(c).map_err(|e| bad_request(format!("{what}: {e}"))))
            .transpose()
    };
    let from = code(&q.from, "from")?;
    let to = code(&q.to, "to")?;
    let since_ms = match &q.since {
        None => None,
        Some(d) => Some(
            crate::core::time::now_ms()
                - crate::core::time::parse_duration(d)
                    .map_err(|e| bad_request(format!("since: {e}")))?
                    .as_millis() as i64,
        ),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let state = q.state.clone();
    let recs = hub
        .router
        .tracking()
        .list(limit, |r| {
            from.as_ref().is_none_or(|f| &r.from == f)
                && since_ms.is_none_or(|s| r.accepted_at_ms >= s)
                && r.dests.iter().any(|d| {
                    to.as_ref().is_none_or(|t| &d.code == t)
                        && state.as_ref().is_none_or(|s| &d.state == s)
                })
        })
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(recs).into_response())
}

/// One agency's presence as `GET /v1/presence` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct PresenceView {
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
    /// `online`, `offline`, `disabled`, or `unknown` (not observed yet).
    pub state: String,
    /// Since when (RFC 3339).
    pub since: Option<String>,
    /// Why it is in that state (`consumer`, `heartbeat`, `no-consumer`…).
    pub cause: Option<String>,
    /// Consumers on its inbox at the last poll.
    pub consumers: Option<u32>,
    /// Last `online` heartbeat (RFC 3339).
    pub last_heartbeat: Option<String>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn list_presence(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
) -> Result<Json<Vec<PresenceView>>, ApiError> {
    check_token(&hub, &headers)?;
    let states: std::collections::HashMap<AgencyCode, crate::core::presence::AgencyPresence> =
        hub.presence.load().map_err(internal)?.into_iter().collect();
    let mut out = Vec::new();
    for a in hub.registry.list() {
        let p = states.get(&a.code);
        let state = match p {
            // The registry is authoritative at once; presence follows at its next round.
            _ if !a.enabled => "disabled",
            Some(p) => p.state.as_str(),
            None => "unknown",
        };
        out.push(PresenceView {
            code: a.code.to_string(),
            name: a.name.clone(),
            state: state.to_owned(),
            since: p.map(|p| format_rfc3339(p.since_ms)),
            cause: p.map(|p| p.cause.as_str().to_owned()),
            consumers: p.map(|p| p.consumers),
            last_heartbeat: p.and_then(|p| p.heartbeat_ms).map(format_rfc3339),
        });
    }
    out.sort_by(|a, b| a.code.cmp(&b.code));
    Ok(Json(out))
}

/// Query of `GET /v1/presence/{code}/history`.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// Only transitions younger than this duration (e.g. `24h`, `7d`).
    pub since: Option<String>,
}

async fn presence_history(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(code): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_token(&hub, &headers)?;
    let code = AgencyCode::parse(&code).map_err(|e| bad_request(format!("{code:?}: {e}")))?;
    let since_ms = match &q.since {
        None => 0,
        Some(d) => {
            let d = crate::core::time::parse_duration(d)
                .map_err(|e| bad_request(format!("since: {e}")))?;
            crate::core::time::now_ms() - d.as_millis() as i64
        }
    };
    let entries = hub
        .presence
        .history_view(&code, since_ms)
        .map_err(internal)?;
    if entries.is_empty() && hub.registry.get(&code).is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("agency {code} is not registered and has no history"),
        ));
    }
    Ok(Json(json!({
        "code": code,
        "since": format_rfc3339(since_ms),
        "entries": entries,
    })))
}

async fn healthz(State(hub): State<Arc<Hub>>) -> Json<serde_json::Value> {
    let broker = hub.link.borrow().as_ref().is_some_and(|l| l.is_connected());
    Json(json!({ "status": "ok", "broker_connected": broker, "agencies": hub.registry.len() }))
}

async fn metrics_text(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Result<String, ApiError> {
    if hub.config.metrics_token_required() {
        check_token(&hub, &headers)?;
    }
    Ok(prometheus().render())
}

/// The API routes over `hub`.
pub fn routes(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/agencies", get(list_agencies).post(add_agency))
        .route(
            "/v1/agencies/{code}",
            get(show_agency).delete(crate::api::ops::remove_agency),
        )
        .route("/v1/envelopes", get(show_envelope))
        .route("/v1/envelopes/list", get(list_envelopes))
        .route("/v1/presence", get(list_presence))
        .route("/v1/presence/{code}/history", get(presence_history))
        .merge(crate::api::ops::routes())
        .with_state(hub)
}

/// Serves the API on `listener` until `shutdown`.
/// Serves HTTPS when `tls` is given, with the timeouts of [`tls`].
pub async fn serve(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    tls: Option<tls::AdminTls>,
    shutdown: CancellationToken,
) {
    prometheus();
    let header_timeout = hub.config.admin_header_timeout();
    tls::serve_connections(routes(hub), listener, tls, header_timeout, shutdown).await;
}

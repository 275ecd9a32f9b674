//! The operators' part of the admin API: agency lifecycle, queues, dead
//! letters, audit log, reports and store statistics. Merged into
//! [`crate::api::routes`]; same bearer token, same JSON error shape.
//!
//! Invariants: every handler checks the token first; every action that
//! changes something appends an audit entry; the only secret ever returned
//! is the one issued by `rotate-key` or `import`, once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{bad_request, check_token, view, AgencyView, ApiError};
use crate::core::code::AgencyCode;
use crate::core::time::format_rfc3339;
use crate::operator::dead::{Action, DeadError, Filter};
use crate::operator::queues::{link, QueueError};
use crate::operator::report::By;
use crate::operator::Hub;
use crate::state::audit::AuditEvent;
use crate::state::registry::Issued;

type Hs = State<Arc<Hub>>;

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

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn code_of(text: &str) -> Result<AgencyCode, ApiError> {
    AgencyCode::parse(text).map_err(|e| bad_request(format!("{text:?}: {e}")))
}

fn audit(hub: &Hub, action: &str, target: impl Into<String>, detail: impl Into<String>) {
    hub.router
        .audit()
        .record(AuditEvent::admin(action, target, detail));
}

async fn set_enabled(hub: &Hub, code: &str, enabled: bool) -> Result<Json<AgencyView>, ApiError> {
    let code = code_of(code)?;
    let a = hub.registry.set_enabled(&code, enabled)?;
    let action = if enabled {
        "agency-enable"
    } else {
        "agency-disable"
    };
    audit(hub, action, code.to_string(), "");
    tracing::info!(agency = %code, enabled, "agency state changed");
    Ok(Json(view(hub, &a)))
}

async fn disable(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
) -> Result<Json<AgencyView>, ApiError> {
    check_token(&hub, &h)?;
    set_enabled(&hub, &code, false).await
}

async fn enable(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
) -> Result<Json<AgencyView>, ApiError> {
    check_token(&hub, &h)?;
    set_enabled(&hub, &code, true).await
}

/// Body of `POST /v1/agencies/{code}/rotate-key`.
#[derive(Debug, Deserialize, Serialize)]
pub struct Rotate {
    /// Seconds the older keys stay valid.
    pub grace_s: u64,
}

async fn rotate(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
    Json(body): Json<Rotate>,
) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    let code = code_of(&code)?;
    let (issued, agency) = hub
        .registry
        .rotate_key(&code, Duration::from_secs(body.grace_s))?;
    let old: Vec<Value> = agency
        .keys
        .iter()
        .filter(|k| k.access_key != issued.access_key)
        .map(|k| json!({ "access_key": k.access_key, "expires_at": k.expires_at_ms.map(format_rfc3339) }))
        .collect();
    audit(
        &hub,
        "rotate-key",
        code.to_string(),
        format!(
            "new access key {}, grace {}s",
            issued.access_key, body.grace_s
        ),
    );
    tracing::info!(agency = %code, access_key = %issued.access_key, grace_s = body.grace_s, "key rotated");
    Ok(Json(json!({
        "code": issued.code,
        "name": issued.name,
        "access_key": issued.access_key,
        "secret": issued.secret,
        "old_keys": old,
    })))
}

/// Query of `DELETE /v1/agencies/{code}`.
#[derive(Debug, Deserialize)]
pub struct RemoveQuery {
    /// Remove even when the inbox holds messages (they are deleted with it).
    #[serde(default)]
    pub force: bool,
}

/// `DELETE /v1/agencies/{code}`: refuses (409) when the inbox is not empty
/// unless `force`; deletes the agency's queues.
pub async fn remove_agency(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    let code = code_of(&code)?;
    if hub.registry.get(&code).is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("agency {code} is not registered"),
        ));
    }
    let link = link(&hub)?;
    let inbox = hub.topology.inbox(&code);
    let depth = match link.queue_info(&inbox).await {
        Ok(i) => i.messages,
        Err(crate::broker::AmqpError::NoSuchQueue(_)) => 0,
        Err(e) => return Err(QueueError::from(e).into()),
    };
    if depth > 0 && !q.force {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("inbox {inbox} holds {depth} messages: purge it first, or remove with --force (they are lost)"),
        ));
    }
    let removed = hub.registry.remove(&code)?;
    let mut deleted = Vec::new();
    for qn in [inbox, hub.topology.notify(&code)] {
        match link.delete_queue(&qn).await {
            Ok(n) => deleted.push(json!({ "queue": qn, "messages": n })),
            Err(e) => tracing::warn!(queue = %qn, error = %e, "queue not deleted"),
        }
    }
    audit(
        &hub,
        "agency-remove",
        code.to_string(),
        format!("force={}, inbox depth {depth}", q.force),
    );
    tracing::info!(agency = %code, force = q.force, depth, "agency removed");
    Ok(Json(
        json!({ "code": removed.code, "name": removed.name, "deleted_queues": deleted }),
    ))
}

/// One row of an import.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ImportRow {
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
}

/// Body of `POST /v1/agencies/import`.
#[derive(Debug, Deserialize, Serialize)]
pub struct Import {
    /// Rows, in file order.
    pub rows: Vec<ImportRow>,
}

async fn import(
    State(hub): Hs,
    h: HeaderMap,
    Json(body): Json<Import>,
) -> Result<Json<Vec<Issued>>, ApiError> {
    check_token(&hub, &h)?;
    let rows: Vec<(String, String)> = body.rows.into_iter().map(|r| (r.code, r.name)).collect();
    let issued = hub.registry.import(&rows)?;
    if let Ok(link) = link(&hub) {
        for i in &issued {
            if let Err(e) = crate::broker::declare_agency(&link, &hub.topology, &i.code).await {
                tracing::warn!(agency = %i.code, error = %e, "queues not declared now; they will be at the next connection");
            }
        }
    }
    audit(
        &hub,
        "agency-import",
        format!("{} agencies", issued.len()),
        issued
            .iter()
            .map(|i| i.code.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    tracing::info!(agencies = issued.len(), "agencies imported");
    Ok(Json(issued))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| if c == '.' { vec!['\\', '.'] } else { vec![c] })
        .collect()
}

fn vhost(url: &str) -> String {
    let path = url.rsplit_once('/').map(|(_, p)| p).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() {
        "/".into()
    } else {
        path.replace("%2f", "/").replace("%2F", "/")
    }
}

/// RabbitMQ definitions (users, permissions, topic permissions) letting each
/// agency publish only `<kind>.<its code>` to the ingress exchange and read
/// only its own inbox and notify queues. Users have no password: set one
/// with `rabbitmqctl change_password`.
pub fn rabbitmq_definitions(prefix: &str, vhost: &str, codes: &[AgencyCode]) -> Value {
    let p = regex_escape(prefix);
    let users: Vec<Value> = codes
        .iter()
        .map(|c| json!({ "name": c.as_str(), "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": [] }))
        .collect();
    let perms: Vec<Value> = codes
        .iter()
        .map(|c| {
            let e = regex_escape(c.as_str());
            json!({
                "user": c.as_str(), "vhost": vhost,
                "configure": "^$",
                "write": format!("^{p}ingress$"),
                "read": format!("^{p}(inbox|notify)\\.{e}$"),
            })
        })
        .collect();
    let topic: Vec<Value> = codes
        .iter()
        .map(|c| {
            let e = regex_escape(c.as_str());
            json!({
                "user": c.as_str(), "vhost": vhost,
                "exchange": format!("{prefix}ingress"),
                "write": format!("^(envelope|status|presence)\\.{e}$"),
                "read": "^$",
            })
        })
        .collect();
    json!({ "users": users, "permissions": perms, "topic_permissions": topic })
}

async fn definitions(State(hub): Hs, h: HeaderMap) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    let codes: Vec<AgencyCode> = hub.registry.list().into_iter().map(|a| a.code).collect();
    Ok(Json(rabbitmq_definitions(
        &hub.topology.prefix,
        &vhost(&hub.config.amqp_url),
        &codes,
    )))
}

async fn queue_list(State(hub): Hs, h: HeaderMap) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(json!(crate::operator::queues::list(&hub).await?)))
}

async fn queue_shape(State(hub): Hs, h: HeaderMap) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    let (buckets, rows) = crate::operator::queues::shape(&hub).await?;
    Ok(Json(json!({ "buckets": buckets, "destinations": rows })))
}

/// Query of `GET /v1/queues/{code}/peek`.
#[derive(Debug, Deserialize)]
pub struct PeekQuery {
    /// How many.
    #[serde(default = "default_peek")]
    pub n: usize,
}

fn default_peek() -> usize {
    10
}

async fn peek(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
    Query(q): Query<PeekQuery>,
) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    let code = code_of(&code)?;
    if q.n == 0 || q.n > 1000 {
        return Err(bad_request("n must be 1-1000"));
    }
    Ok(Json(json!(
        crate::operator::queues::peek(&hub, &code, q.n).await?
    )))
}

async fn purge(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    let code = code_of(&code)?;
    let r = crate::operator::queues::purge(&hub, &code).await?;
    audit(
        &hub,
        "queue-purge",
        code.to_string(),
        format!("{} envelopes, reason {}", r.purged, r.reason),
    );
    Ok(Json(json!(r)))
}

async fn dead_list(
    State(hub): Hs,
    h: HeaderMap,
    Query(f): Query<Filter>,
) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(json!(
        crate::operator::dead::run(&hub, &f, Action::List).await?
    )))
}

/// Body of `POST /v1/dead/retry` and `/v1/dead/drop`.
#[derive(Debug, Deserialize, Serialize)]
pub struct DeadBody {
    /// Selection.
    #[serde(flatten)]
    pub filter: Filter,
    /// Retry rate, messages per second (default 10).
    #[serde(default)]
    pub rate: Option<f64>,
}

async fn dead_retry(
    State(hub): Hs,
    h: HeaderMap,
    Json(b): Json<DeadBody>,
) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    let rate = b.rate.unwrap_or(10.0);
    let out = crate::operator::dead::run(&hub, &b.filter, Action::Retry { rate }).await?;
    audit(
        &hub,
        "dead-retry",
        format!("{:?}", b.filter.queue).to_lowercase(),
        format!("{} messages at {rate}/s", out.items.len()),
    );
    Ok(Json(json!(out)))
}

async fn dead_drop(
    State(hub): Hs,
    h: HeaderMap,
    Json(b): Json<DeadBody>,
) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    let out = crate::operator::dead::run(&hub, &b.filter, Action::Drop).await?;
    audit(
        &hub,
        "dead-drop",
        format!("{:?}", b.filter.queue).to_lowercase(),
        format!("{} messages", out.items.len()),
    );
    Ok(Json(json!(out)))
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    /// How many.
    #[serde(default = "default_peek")]
    pub n: usize,
    /// Only entries after this sequence number (oldest first).
    #[serde(default)]
    pub after: Option<u64>,
}

async fn audit_tail(
    State(hub): Hs,
    h: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    let n = q.n.clamp(1, 10_000);
    Ok(Json(json!(hub
        .router
        .audit()
        .tail(n, q.after)
        .map_err(internal)?)))
}

async fn audit_verify(State(hub): Hs, h: HeaderMap) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(json!(hub
        .router
        .audit()
        .verify()
        .map_err(internal)?)))
}

/// Query of `GET /v1/report`.
#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    /// Start, ms since the epoch (inclusive).
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// End, ms since the epoch (exclusive).
    #[serde(default)]
    pub until_ms: Option<i64>,
    /// Period.
    #[serde(default)]
    pub by: By,
}

async fn report(
    State(hub): Hs,
    h: HeaderMap,
    Query(q): Query<ReportQuery>,
) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    let tracking = hub.router.tracking().clone();
    let report = tokio::task::spawn_blocking(move || {
        tracking
            .list(usize::MAX, |_| true)
            .map(|records| crate::operator::report::build(&records, q.since_ms, q.until_ms, q.by))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let mut out = json!(report);
    out["connections_now"] = json!(connections_now(&hub).await);
    out["connections"] = json!(connection_history(&hub, q.since_ms, q.until_ms).map_err(internal)?);
    Ok(Json(out))
}

/// Each agency's connects and disconnects in `[since, until)`, from the
/// presence tracker's history, oldest first per agency.
fn connection_history(
    hub: &Hub,
    since: Option<i64>,
    until: Option<i64>,
) -> Result<Vec<Value>, crate::state::presence::PresenceError> {
    let mut out = Vec::new();
    for a in hub.registry.list() {
        for e in hub.presence.history_view(&a.code, since.unwrap_or(0))? {
            if until.is_some_and(|u| e.at_ms >= u) {
                break;
            }
            out.push(json!({
                "agency": a.code,
                "at": e.at,
                "event": e.event,
                "cause": e.cause,
            }));
        }
    }
    Ok(out)
}

/// What the broker says about each agency's inbox at this moment (the
/// connection *history* comes from the presence tracker). Empty when the
/// hub is not connected to the broker.
async fn connections_now(hub: &Hub) -> Vec<Value> {
    let Ok(link) = link(hub) else {
        return Vec::new();
    };
    let at = format_rfc3339(crate::core::time::now_ms());
    let agencies = hub.registry.list();
    let names: Vec<String> = agencies
        .iter()
        .map(|a| hub.topology.inbox(&a.code))
        .collect();
    let facts = crate::operator::queues::infos(link, names).await;
    let mut out = Vec::new();
    for (a, info) in agencies.iter().zip(facts) {
        if let Some(info) = info {
            out.push(json!({
                "agency": a.code,
                "inbox_consumers": info.consumers,
                "online": crate::operator::queues::is_online(hub, &a.code, &info),
                "at": at,
            }));
        }
    }
    out
}

async fn store_stats(State(hub): Hs, h: HeaderMap) -> Result<Json<Value>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(json!(crate::state::retention::stats(
        &hub.store,
        &hub.config.envelope_retention,
        &hub.config.audit_retention
    ))))
}

/// The operator routes.
pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/v1/agencies/import", post(import))
        .route("/v1/agencies/{code}/disable", post(disable))
        .route("/v1/agencies/{code}/enable", post(enable))
        .route("/v1/agencies/{code}/rotate-key", post(rotate))
        .route("/v1/rabbitmq-definitions", get(definitions))
        .route("/v1/queues", get(queue_list))
        .route("/v1/queues/shape", get(queue_shape))
        .route("/v1/queues/{code}/peek", get(peek))
        .route("/v1/queues/{code}/purge", post(purge))
        .route("/v1/dead", get(dead_list))
        .route("/v1/dead/retry", post(dead_retry))
        .route("/v1/dead/drop", post(dead_drop))
        .route("/v1/audit", get(audit_tail))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/report", get(report))
        .route("/v1/store/stats", get(store_stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_confine_each_agency() {
        let codes = vec![AgencyCode::parse("000.00.31.H41").unwrap()];
        let d = rabbitmq_definitions("lgsp.", "/", &codes);
        assert_eq!(d["users"][0]["name"], "000.00.31.H41");
        assert_eq!(
            d["permissions"][0]["read"],
            "^lgsp\\.(inbox|notify)\\.000\\.00\\.31\\.H41$"
        );
        assert_eq!(d["permissions"][0]["write"], "^lgsp\\.ingress$");
        assert_eq!(d["permissions"][0]["configure"], "^$");
        assert_eq!(
            d["topic_permissions"][0]["write"],
            "^(envelope|status|presence)\\.000\\.00\\.31\\.H41$"
        );
        assert_eq!(vhost("amqp://g:g@h:5672/%2f"), "/");
        assert_eq!(vhost("amqp://g:g@h:5672/prod"), "prod");
    }
}

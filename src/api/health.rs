//! `/healthz` (open, for probes) and `/metrics` (Prometheus; behind the
//! token when `metrics_require_token` is on).
//!
//! Invariants: neither says anything an agency could not learn otherwise
//! (broker connected, number of agencies, counters).

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::api::types::Health;
use crate::api::{check_token, ApiError, Hs};

pub(super) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests); then ours renders empty.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

pub(super) async fn healthz(State(hub): Hs) -> Json<Health> {
    let broker = hub.link.borrow().as_ref().is_some_and(|l| l.is_connected());
    Json(Health {
        status: "ok".into(),
        broker_connected: broker,
        agencies: hub.registry.len(),
    })
}

pub(super) async fn metrics_text(State(hub): Hs, headers: HeaderMap) -> Result<String, ApiError> {
    if hub.config.metrics_token_required() {
        check_token(&hub, &headers)?;
    }
    Ok(prometheus().render())
}

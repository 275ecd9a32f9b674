//! `/healthz` (open, for probes) and `/metrics` (Prometheus; behind the
//! token when `metrics_require_token` is on).
//!
//! `/healthz` names this instance and its role (`leader`/`follower`) and
//! answers 200 `ok`, or 503 `unhealthy` with one reason per
//! failed check: `store` (its last flush failed: [`crate::state::store`]),
//! `broker` (the hub's link is down), `ingress` (a source's messages were
//! received and none handled for [`crate::router::progress::STALL`]).
//!
//! Invariants: neither says anything an agency could not learn otherwise
//! (broker connected, number of agencies, counters, the store's error, the
//! codes of stuck sources, and the instance id, by default the host name
//! and pid, with its role); [`evaluate`] is the one definition of
//! healthy, used by `/healthz` and by the `truc_healthy` gauges.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::api::caller::{authenticate, require};
use crate::api::types::{Health, HealthReason};
use crate::api::{ApiError, Hs};
use crate::core::role::Permission;
use crate::core::time::{format_rfc3339, now_ms};
use crate::operator::Hub;

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

/// The hub's health at `now_ms`.
pub(crate) fn evaluate(hub: &Hub, now_ms: i64) -> Health {
    let mut reasons = Vec::new();
    if let Some(why) = hub.store.fault() {
        reasons.push(HealthReason {
            check: "store".into(),
            detail: format!("the store cannot write ({why}); nothing is acked until it can"),
        });
    }
    let broker = hub.link.borrow().as_ref().is_some_and(|l| l.is_connected());
    if !broker {
        reasons.push(HealthReason {
            check: "broker".into(),
            detail: "not connected to the broker".into(),
        });
    }
    let stuck = hub.router.progress().stuck(now_ms);
    if !stuck.is_empty() {
        let shown: Vec<String> = stuck
            .iter()
            .take(5)
            .map(|(code, since)| format!("{code} since {}", format_rfc3339(*since)))
            .collect();
        reasons.push(HealthReason {
            check: "ingress".into(),
            detail: format!(
                "{} source queue(s) with messages received and none handled for over {}s: {}{}",
                stuck.len(),
                crate::router::progress::STALL.as_secs(),
                shown.join(", "),
                if stuck.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            ),
        });
    }
    Health {
        status: if reasons.is_empty() {
            "ok"
        } else {
            "unhealthy"
        }
        .into(),
        broker_connected: broker,
        agencies: hub.registry.len(),
        instance: hub.instance_id.clone(),
        role: hub.role_now().as_str().into(),
        reasons,
    }
}

pub(super) async fn healthz(State(hub): Hs) -> (StatusCode, Json<Health>) {
    let h = evaluate(&hub, now_ms());
    let code = if h.reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(h))
}

pub(super) async fn metrics_text(State(hub): Hs, headers: HeaderMap) -> Result<String, ApiError> {
    if hub.config.metrics_token_required() {
        require(&authenticate(&hub, &headers)?, Permission::ViewAll)?;
    }
    Ok(prometheus().render())
}

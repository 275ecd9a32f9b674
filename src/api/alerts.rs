//! `/v1/alerts`: the alerts open now and those resolved in the last week
//! (`policies/alerts.toml`), read by [`crate::operator::alerts`].
//!
//! Invariants: the caller's permission is checked first; read-only.

use axum::extract::State;
use axum::Json;

use crate::api::caller::require;
use crate::api::types::AlertsView;
use crate::api::{ApiError, Hs};
use crate::core::role::Permission;
use crate::core::time::now_ms;
use crate::operator::alerts;
use crate::operator::scope::Caller;

/// How far back resolved alerts are listed.
const RESOLVED_MS: i64 = 7 * 86_400_000;

pub(super) async fn list(State(hub): Hs, caller: Caller) -> Result<Json<AlertsView>, ApiError> {
    require(&caller, Permission::ViewAll)?;
    let view = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::state::store::StoreError>(AlertsView {
            open: alerts::open(&hub)?,
            resolved: alerts::resolved(&hub, now_ms() - RESOLVED_MS)?,
        })
    })
    .await
    .map_err(crate::api::internal)??;
    Ok(Json(view))
}

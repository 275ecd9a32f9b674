//! `/v1/store/stats`: entries per tree and bytes on disk, from
//! [`crate::operator::audit::store_stats`]; `/v1/store/backup`: the sealed
//! snapshot of the store, from [`crate::operator::backup`].
//!
//! Invariants: the caller's permission is checked first; `stats` is read-only; `backup`
//! only reads the store (and appends its audit entry) and answers the bytes
//! as `application/octet-stream`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

use crate::api::caller::require;
use crate::api::types::StoreStats;
use crate::api::{internal, unavailable, ApiError, Hs};
use crate::core::role::Permission;
use crate::operator::audit::store_stats;
use crate::operator::scope::Caller;

pub(super) async fn stats(State(hub): Hs, caller: Caller) -> Result<Json<StoreStats>, ApiError> {
    require(&caller, Permission::ViewAll)?;
    Ok(Json(store_stats(&hub)))
}

pub(super) async fn backup(State(hub): Hs, caller: Caller) -> Result<impl IntoResponse, ApiError> {
    require(&caller, Permission::Backup)?;
    let bytes =
        tokio::task::spawn_blocking(move || crate::operator::backup::backup(&hub, &caller.name))
            .await
            .map_err(internal)?
            .map_err(|e| {
                if e.is_retryable() {
                    unavailable(e)
                } else {
                    internal(e)
                }
            })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

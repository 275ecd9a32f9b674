//! `/v1/store/stats`: entries per tree and bytes on disk, from
//! [`crate::operator::audit::store_stats`]; `/v1/store/backup`: the sealed
//! snapshot of the store, from [`crate::operator::backup`].
//!
//! Invariants: the token is checked first; `stats` is read-only; `backup`
//! only reads the store (and appends its audit entry) and answers the bytes
//! as `application/octet-stream`.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;

use crate::api::types::StoreStats;
use crate::api::{check_token, internal, unavailable, ApiError, Hs};
use crate::operator::audit::store_stats;

pub(super) async fn stats(State(hub): Hs, h: HeaderMap) -> Result<Json<StoreStats>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(store_stats(&hub)))
}

pub(super) async fn backup(State(hub): Hs, h: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    check_token(&hub, &h)?;
    let bytes = tokio::task::spawn_blocking(move || crate::operator::backup::backup(&hub))
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

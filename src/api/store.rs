//! `/v1/store/stats`: entries per tree and bytes on disk, from
//! [`crate::operator::audit::store_stats`].
//!
//! Invariants: the token is checked first; read-only.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use crate::api::types::StoreStats;
use crate::api::{check_token, ApiError, Hs};
use crate::operator::audit::store_stats;

pub(super) async fn stats(State(hub): Hs, h: HeaderMap) -> Result<Json<StoreStats>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(store_stats(&hub)))
}

//! `/v1/dead…`: list, retry and drop dead letters, handled by
//! [`crate::operator::dead`].
//!
//! Invariants: the token is checked first; retries and drops are audited by
//! the operator layer; an unknown `reason` is refused (400).

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;

use crate::api::types::{DeadBody, DeadFilter, DeadOutcome};
use crate::api::{check_token, ApiError, Hs};
use crate::operator::dead::{run, Action};

pub(super) async fn list(
    State(hub): Hs,
    h: HeaderMap,
    Query(f): Query<DeadFilter>,
) -> Result<Json<DeadOutcome>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(run(&hub, &f, Action::List).await?))
}

pub(super) async fn retry(
    State(hub): Hs,
    h: HeaderMap,
    Json(b): Json<DeadBody>,
) -> Result<Json<DeadOutcome>, ApiError> {
    check_token(&hub, &h)?;
    let rate = b.rate.unwrap_or(10.0);
    Ok(Json(run(&hub, &b.filter, Action::Retry { rate }).await?))
}

pub(super) async fn drop(
    State(hub): Hs,
    h: HeaderMap,
    Json(b): Json<DeadBody>,
) -> Result<Json<DeadOutcome>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(run(&hub, &b.filter, Action::Drop).await?))
}

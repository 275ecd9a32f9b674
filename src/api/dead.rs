//! `/v1/dead…`: list, retry and drop dead letters, handled by
//! [`crate::operator::dead`].
//!
//! Invariants: the caller's permission is checked first; retries and drops are audited by
//! the operator layer; an unknown `reason` is refused (400).

use axum::extract::{Query, State};
use axum::Json;

use crate::api::caller::require;
use crate::api::types::{DeadBody, DeadFilter, DeadOutcome};
use crate::api::{ApiError, Hs};
use crate::core::role::Permission;
use crate::operator::dead::{run, Action};
use crate::operator::scope::Caller;

pub(super) async fn list(
    State(hub): Hs,
    caller: Caller,
    Query(f): Query<DeadFilter>,
) -> Result<Json<DeadOutcome>, ApiError> {
    require(&caller, Permission::ViewAll)?;
    Ok(Json(run(&hub, &caller.name, &f, Action::List).await?))
}

pub(super) async fn retry(
    State(hub): Hs,
    caller: Caller,
    Json(b): Json<DeadBody>,
) -> Result<Json<DeadOutcome>, ApiError> {
    require(&caller, Permission::WorkQueues)?;
    let rate = b.rate.unwrap_or(10.0);
    Ok(Json(
        run(&hub, &caller.name, &b.filter, Action::Retry { rate }).await?,
    ))
}

pub(super) async fn drop(
    State(hub): Hs,
    caller: Caller,
    Json(b): Json<DeadBody>,
) -> Result<Json<DeadOutcome>, ApiError> {
    require(&caller, Permission::WorkQueues)?;
    Ok(Json(
        run(&hub, &caller.name, &b.filter, Action::Drop).await?,
    ))
}

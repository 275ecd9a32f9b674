//! `/v1/queues…`: agency inboxes (depths, shape, peek, purge), handled by
//! [`crate::operator::queues`].
//!
//! Invariants: the caller's permission is checked first; a peek takes 1–1000 messages
//! and returns them; a purge is audited by the operator layer.

use axum::extract::{Path, Query, State};
use axum::Json;

use crate::api::caller::require;
use crate::api::types::{MessageView, PeekQuery, PurgeReport, QueueRow, Shape};
use crate::api::{bad_request, ApiError, Hs};
use crate::core::role::Permission;
use crate::operator::agency::code_of;
use crate::operator::queues;
use crate::operator::scope::Caller;

pub(super) async fn list(State(hub): Hs, caller: Caller) -> Result<Json<Vec<QueueRow>>, ApiError> {
    require(&caller, Permission::ViewAll)?;
    Ok(Json(queues::list(&hub).await?))
}

pub(super) async fn shape(State(hub): Hs, caller: Caller) -> Result<Json<Shape>, ApiError> {
    require(&caller, Permission::ViewAll)?;
    let (buckets, destinations) = queues::shape(&hub).await?;
    Ok(Json(Shape {
        buckets: buckets.into_iter().map(str::to_owned).collect(),
        destinations,
    }))
}

pub(super) async fn peek(
    State(hub): Hs,
    caller: Caller,
    Path(code): Path<String>,
    Query(q): Query<PeekQuery>,
) -> Result<Json<Vec<MessageView>>, ApiError> {
    require(&caller, Permission::PeekQueues)?;
    let code = code_of(&code)?;
    if q.n == 0 || q.n > 1000 {
        return Err(bad_request("n must be 1-1000"));
    }
    Ok(Json(queues::peek(&hub, &code, q.n).await?))
}

pub(super) async fn purge(
    State(hub): Hs,
    caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<PurgeReport>, ApiError> {
    require(&caller, Permission::WorkQueues)?;
    let code = code_of(&code)?;
    Ok(Json(queues::purge(&hub, &caller.name, &code).await?))
}

//! `/v1/queues…`: agency inboxes (depths, shape, peek, purge), handled by
//! [`crate::operator::queues`].
//!
//! Invariants: the token is checked first; a peek takes 1–1000 messages
//! and returns them; a purge is audited by the operator layer.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;

use crate::api::types::{MessageView, PeekQuery, PurgeReport, QueueRow, Shape};
use crate::api::{bad_request, check_token, ApiError, Hs};
use crate::operator::agency::code_of;
use crate::operator::queues;

pub(super) async fn list(State(hub): Hs, h: HeaderMap) -> Result<Json<Vec<QueueRow>>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(queues::list(&hub).await?))
}

pub(super) async fn shape(State(hub): Hs, h: HeaderMap) -> Result<Json<Shape>, ApiError> {
    check_token(&hub, &h)?;
    let (buckets, destinations) = queues::shape(&hub).await?;
    Ok(Json(Shape {
        buckets: buckets.into_iter().map(str::to_owned).collect(),
        destinations,
    }))
}

pub(super) async fn peek(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
    Query(q): Query<PeekQuery>,
) -> Result<Json<Vec<MessageView>>, ApiError> {
    check_token(&hub, &h)?;
    let code = code_of(&code)?;
    if q.n == 0 || q.n > 1000 {
        return Err(bad_request("n must be 1-1000"));
    }
    Ok(Json(queues::peek(&hub, &code, q.n).await?))
}

pub(super) async fn purge(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
) -> Result<Json<PurgeReport>, ApiError> {
    check_token(&hub, &h)?;
    let code = code_of(&code)?;
    Ok(Json(queues::purge(&hub, &code).await?))
}

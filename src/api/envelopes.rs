//! `/v1/envelopes` and `/v1/envelopes/list`: envelope timelines, read by
//! [`crate::operator::envelopes`].
//!
//! Invariants: the caller's permission is checked first; a lookup without `from` is
//! answered only when one source sent that id (409 listing the sources
//! otherwise).

use axum::extract::{Query, State};
use axum::Json;

use crate::api::caller::require;
use crate::api::types::{EnvelopeQuery, EnvelopeView, ListQuery};
use crate::api::{since_duration, ApiError, Hs};
use crate::core::role::Permission;
use crate::operator::envelopes::{self, Selection};
use crate::operator::scope::Caller;

pub(super) async fn show(
    State(hub): Hs,
    caller: Caller,
    Query(q): Query<EnvelopeQuery>,
) -> Result<Json<EnvelopeView>, ApiError> {
    require(&caller, Permission::ViewOwn)?;
    Ok(Json(envelopes::show(
        &hub,
        &caller.scope(),
        q.from.as_deref(),
        &q.id,
    )?))
}

pub(super) async fn list(
    State(hub): Hs,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<EnvelopeView>>, ApiError> {
    require(&caller, Permission::ViewOwn)?;
    let since_ms = match (&q.since, q.since_ms) {
        (Some(d), _) => Some(since_duration(d)?),
        (None, ms) => ms,
    };
    let sel = Selection {
        from: q.from,
        to: q.to,
        state: q.state,
        since_ms,
        until_ms: q.until_ms,
        limit: q.limit.unwrap_or(100).clamp(1, 10_000),
    };
    Ok(Json(envelopes::list(&hub, &caller.scope(), &sel)?))
}

//! `/v1/presence` and `/v1/presence/{code}/history`: who is online, and one
//! agency's connects and disconnects, read by [`crate::operator::presence`].
//!
//! Invariants: the caller's permission is checked first; `since` (a duration) wins over
//! `since_ms`; without either the whole history is returned.

use axum::extract::{Path, Query, State};
use axum::Json;

use crate::api::caller::require;
use crate::api::types::{HistoryQuery, PresenceHistory, PresenceView};
use crate::api::{since_duration, ApiError, Hs};
use crate::core::code::AgencyCode;
use crate::core::role::Permission;
use crate::operator::presence::{self, PresenceViewError};
use crate::operator::scope::Caller;

pub(super) async fn list(
    State(hub): Hs,
    caller: Caller,
) -> Result<Json<Vec<PresenceView>>, ApiError> {
    require(&caller, Permission::ViewOwn)?;
    let scope = caller.scope();
    let mut rows = presence::list(&hub)?;
    rows.retain(|p| scope.sees_text(&p.code));
    Ok(Json(rows))
}

pub(super) async fn history(
    State(hub): Hs,
    caller: Caller,
    Path(code): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<PresenceHistory>, ApiError> {
    require(&caller, Permission::ViewOwn)?;
    let since_ms = match (&q.since, q.since_ms) {
        (Some(d), _) => since_duration(d)?,
        (None, ms) => ms.unwrap_or(0),
    };
    if let Ok(c) = AgencyCode::parse(&code) {
        if !caller.scope().sees(&c) {
            return Err(PresenceViewError::Unknown(c).into());
        }
    }
    Ok(Json(presence::history(&hub, &code, since_ms, q.until_ms)?))
}

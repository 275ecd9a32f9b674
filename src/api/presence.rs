//! `/v1/presence` and `/v1/presence/{code}/history`: who is online, and one
//! agency's connects and disconnects, read by [`crate::operator::presence`].
//!
//! Invariants: the token is checked first; `since` (a duration) wins over
//! `since_ms`; without either the whole history is returned.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;

use crate::api::types::{HistoryQuery, PresenceHistory, PresenceView};
use crate::api::{check_token, since_duration, ApiError, Hs};
use crate::operator::presence;

pub(super) async fn list(
    State(hub): Hs,
    h: HeaderMap,
) -> Result<Json<Vec<PresenceView>>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(presence::list(&hub)?))
}

pub(super) async fn history(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<PresenceHistory>, ApiError> {
    check_token(&hub, &h)?;
    let since_ms = match (&q.since, q.since_ms) {
        (Some(d), _) => since_duration(d)?,
        (None, ms) => ms.unwrap_or(0),
    };
    Ok(Json(presence::history(&hub, &code, since_ms, q.until_ms)?))
}

//! `/v1/report`: statistics per agency and period with the connects and
//! disconnects, assembled by [`crate::operator::reporting`].
//!
//! Invariants: the token is checked first; read-only; periods are cut in
//! the query's `tz` when given (an unknown zone is a 400), else in the hub's
//! `time_zone`.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;

use crate::api::types::{FullReport, ReportQuery};
use crate::api::{bad_request, check_token, ApiError, Hs};
use crate::core::zone::Zone;
use crate::operator::reporting;

pub(super) async fn report(
    State(hub): Hs,
    h: HeaderMap,
    Query(q): Query<ReportQuery>,
) -> Result<Json<FullReport>, ApiError> {
    check_token(&hub, &h)?;
    let zone = match q.tz.as_deref() {
        None => hub.config.zone(),
        Some(name) => Zone::parse(name).map_err(|e| bad_request(e.to_string()))?,
    };
    Ok(Json(
        reporting::report(&hub, q.since_ms, q.until_ms, q.by, zone).await?,
    ))
}

//! `/v1/report`: statistics per agency and period with the connects and
//! disconnects, assembled by [`crate::operator::reporting`].
//!
//! Invariants: the caller's permission is checked first; read-only; periods are cut in
//! the query's `tz` when given (an unknown zone is a 400), else in the hub's
//! `time_zone`.

use axum::extract::{Query, State};
use axum::Json;

use crate::api::caller::require;
use crate::api::types::{FullReport, ReportQuery};
use crate::api::{bad_request, ApiError, Hs};
use crate::core::role::Permission;
use crate::core::zone::Zone;
use crate::operator::reporting;
use crate::operator::scope::Caller;

pub(super) async fn report(
    State(hub): Hs,
    caller: Caller,
    Query(q): Query<ReportQuery>,
) -> Result<Json<FullReport>, ApiError> {
    require(&caller, Permission::ViewOwn)?;
    let zone = match q.tz.as_deref() {
        None => hub.config.zone(),
        Some(name) => Zone::parse(name).map_err(|e| bad_request(e.to_string()))?,
    };
    let full = reporting::report(&hub, q.since_ms, q.until_ms, q.by, zone).await?;
    Ok(Json(caller.scope().report(full)))
}

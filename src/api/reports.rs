//! `/v1/report`: statistics per agency and period with the connects and
//! disconnects, assembled by [`crate::operator::reporting`].
//!
//! Invariants: the token is checked first; read-only.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;

use crate::api::types::{FullReport, ReportQuery};
use crate::api::{check_token, ApiError, Hs};
use crate::operator::reporting;

pub(super) async fn report(
    State(hub): Hs,
    h: HeaderMap,
    Query(q): Query<ReportQuery>,
) -> Result<Json<FullReport>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(
        reporting::report(&hub, q.since_ms, q.until_ms, q.by).await?,
    ))
}

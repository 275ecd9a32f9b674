//! `/v1/audit` and `/v1/audit/verify`: the hash-chained audit log, read by
//! [`crate::operator::audit`].
//!
//! Invariants: the token is checked first; read-only.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;

use crate::api::types::{AuditEntry, AuditQuery, VerifyReport};
use crate::api::{check_token, ApiError, Hs};
use crate::operator::audit;

pub(super) async fn tail(
    State(hub): Hs,
    h: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(audit::tail(&hub, q.n, q.after)?))
}

pub(super) async fn verify(State(hub): Hs, h: HeaderMap) -> Result<Json<VerifyReport>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(audit::verify(&hub)?))
}

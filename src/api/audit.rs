//! `/v1/audit` and `/v1/audit/verify`: the hash-chained audit log, read by
//! [`crate::operator::audit`].
//!
//! Invariants: the caller's permission is checked first; read-only.

use axum::extract::{Query, State};
use axum::Json;

use crate::api::caller::require;
use crate::api::types::{AuditEntry, AuditQuery, VerifyReport};
use crate::api::{ApiError, Hs};
use crate::core::role::Permission;
use crate::operator::audit;
use crate::operator::scope::Caller;

pub(super) async fn tail(
    State(hub): Hs,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    require(&caller, Permission::ReadAudit)?;
    Ok(Json(audit::tail(&hub, q.n, q.after)?))
}

pub(super) async fn verify(State(hub): Hs, caller: Caller) -> Result<Json<VerifyReport>, ApiError> {
    require(&caller, Permission::ReadAudit)?;
    Ok(Json(audit::verify(&hub)?))
}

//! `/v1/agencies…` and `/v1/rabbitmq-definitions`: the agency lifecycle
//! over HTTP, done by [`crate::operator::agency`].
//!
//! Invariants: the caller's permission is checked first; only `POST /v1/agencies`,
//! `rotate-key`, `rotate-broker-password` and `import` return a secret.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use crate::api::caller::require;
use crate::api::types::{
    AddAgency, Added, AgencyView, BrokerIssued, Import, Issued, RabbitDefinitions, RemoveQuery,
    Removed, Rotate, Rotated,
};
use crate::api::{ApiError, Hs};
use crate::core::role::Permission;
use crate::operator::agency;
use crate::operator::scope::Caller;

pub(super) async fn add(
    State(hub): Hs,
    caller: Caller,
    Json(body): Json<AddAgency>,
) -> Result<(StatusCode, Json<Added>), ApiError> {
    require(&caller, Permission::IssueKeys)?;
    let added = agency::add(
        &hub,
        &caller.name,
        &body.code,
        &body.name,
        body.public_key_pem,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(added)))
}

pub(super) async fn list(
    State(hub): Hs,
    caller: Caller,
) -> Result<Json<Vec<AgencyView>>, ApiError> {
    require(&caller, Permission::ViewOwn)?;
    let scope = caller.scope();
    Ok(Json(
        agency::list(&hub)
            .into_iter()
            .filter(|a| scope.sees_text(&a.code))
            .collect(),
    ))
}

pub(super) async fn show(
    State(hub): Hs,
    caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<AgencyView>, ApiError> {
    require(&caller, Permission::ViewOwn)?;
    let parsed = agency::code_of(&code)?;
    if !caller.scope().sees(&parsed) {
        return Err(agency::AgencyError::NotRegistered(parsed).into());
    }
    Ok(Json(agency::show(&hub, &code).await?))
}

pub(super) async fn disable(
    State(hub): Hs,
    caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<AgencyView>, ApiError> {
    require(&caller, Permission::EnableAgencies)?;
    Ok(Json(agency::set_enabled(&hub, &caller.name, &code, false)?))
}

pub(super) async fn enable(
    State(hub): Hs,
    caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<AgencyView>, ApiError> {
    require(&caller, Permission::EnableAgencies)?;
    Ok(Json(agency::set_enabled(&hub, &caller.name, &code, true)?))
}

pub(super) async fn rotate(
    State(hub): Hs,
    caller: Caller,
    Path(code): Path<String>,
    Json(body): Json<Rotate>,
) -> Result<Json<Rotated>, ApiError> {
    require(&caller, Permission::IssueKeys)?;
    Ok(Json(agency::rotate_key(
        &hub,
        &caller.name,
        &code,
        Duration::from_secs(body.grace_s),
    )?))
}

/// `DELETE /v1/agencies/{code}`: refuses (409) when the inbox is not empty
/// unless `force`; deletes the agency's queues.
pub(super) async fn remove(
    State(hub): Hs,
    caller: Caller,
    Path(code): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<Removed>, ApiError> {
    require(&caller, Permission::IssueKeys)?;
    Ok(Json(
        agency::remove(&hub, &caller.name, &code, q.force).await?,
    ))
}

pub(super) async fn import(
    State(hub): Hs,
    caller: Caller,
    Json(body): Json<Import>,
) -> Result<Json<Vec<Issued>>, ApiError> {
    require(&caller, Permission::IssueKeys)?;
    let rows: Vec<(String, String)> = body.rows.into_iter().map(|r| (r.code, r.name)).collect();
    Ok(Json(agency::import(&hub, &caller.name, &rows).await?))
}

pub(super) async fn rotate_broker_password(
    State(hub): Hs,
    caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<BrokerIssued>, ApiError> {
    require(&caller, Permission::IssueKeys)?;
    Ok(Json(agency::rotate_broker_password(
        &hub,
        &caller.name,
        &code,
    )?))
}

pub(super) async fn definitions(
    State(hub): Hs,
    caller: Caller,
) -> Result<Json<RabbitDefinitions>, ApiError> {
    require(&caller, Permission::IssueKeys)?;
    Ok(Json(agency::definitions(&hub)?))
}

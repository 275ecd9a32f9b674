//! `/v1/agencies…` and `/v1/rabbitmq-definitions`: the agency lifecycle
//! over HTTP, done by [`crate::operator::agency`].
//!
//! Invariants: the token is checked first; only `POST /v1/agencies`,
//! `rotate-key`, `rotate-broker-password` and `import` return a secret.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use crate::api::types::{
    AddAgency, Added, AgencyView, BrokerIssued, Import, Issued, RabbitDefinitions, RemoveQuery,
    Removed, Rotate, Rotated,
};
use crate::api::{check_token, ApiError, Hs};
use crate::operator::agency;

pub(super) async fn add(
    State(hub): Hs,
    h: HeaderMap,
    Json(body): Json<AddAgency>,
) -> Result<(StatusCode, Json<Added>), ApiError> {
    check_token(&hub, &h)?;
    let added = agency::add(&hub, &body.code, &body.name, body.public_key_pem).await?;
    Ok((StatusCode::CREATED, Json(added)))
}

pub(super) async fn list(State(hub): Hs, h: HeaderMap) -> Result<Json<Vec<AgencyView>>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(agency::list(&hub)))
}

pub(super) async fn show(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
) -> Result<Json<AgencyView>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(agency::show(&hub, &code).await?))
}

pub(super) async fn disable(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
) -> Result<Json<AgencyView>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(agency::set_enabled(&hub, &code, false)?))
}

pub(super) async fn enable(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
) -> Result<Json<AgencyView>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(agency::set_enabled(&hub, &code, true)?))
}

pub(super) async fn rotate(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
    Json(body): Json<Rotate>,
) -> Result<Json<Rotated>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(agency::rotate_key(
        &hub,
        &code,
        Duration::from_secs(body.grace_s),
    )?))
}

/// `DELETE /v1/agencies/{code}`: refuses (409) when the inbox is not empty
/// unless `force`; deletes the agency's queues.
pub(super) async fn remove(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<Removed>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(agency::remove(&hub, &code, q.force).await?))
}

pub(super) async fn import(
    State(hub): Hs,
    h: HeaderMap,
    Json(body): Json<Import>,
) -> Result<Json<Vec<Issued>>, ApiError> {
    check_token(&hub, &h)?;
    let rows: Vec<(String, String)> = body.rows.into_iter().map(|r| (r.code, r.name)).collect();
    Ok(Json(agency::import(&hub, &rows).await?))
}

pub(super) async fn rotate_broker_password(
    State(hub): Hs,
    h: HeaderMap,
    Path(code): Path<String>,
) -> Result<Json<BrokerIssued>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(agency::rotate_broker_password(&hub, &code)?))
}

pub(super) async fn definitions(
    State(hub): Hs,
    h: HeaderMap,
) -> Result<Json<RabbitDefinitions>, ApiError> {
    check_token(&hub, &h)?;
    Ok(Json(agency::definitions(&hub)?))
}

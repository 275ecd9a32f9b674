//! `/v1/accounts…` and `/v1/whoami`: operator accounts over HTTP, managed
//! by [`crate::operator::accounts`].
//!
//! Invariants: only a caller that may manage accounts lists or changes
//! them, except that any account may set its own password and issue
//! itself a token; argon2 and the store run off the async threads; only
//! `POST …/tokens` returns a secret.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use crate::api::caller::require;
use crate::api::types::{AccountView, AddAccount, IssueToken, SetPassword, TokenIssued, WhoAmI};
use crate::api::{internal, ApiError, Hs};
use crate::core::role::Permission;
use crate::operator::accounts;
use crate::operator::scope::Caller;
use crate::state::accounts::AccountError;

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AccountError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(f).await.map_err(internal)??)
}

/// `Ok` when `caller` manages accounts or is account `name` itself.
fn self_or_manager(caller: &Caller, name: &str) -> Result<(), ApiError> {
    if caller.name == name {
        Ok(())
    } else {
        require(caller, Permission::ManageAccounts)
    }
}

pub(super) async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        account: caller.name,
        role: caller.role,
        agency: caller.agency.map(|c| c.to_string()),
    })
}

pub(super) async fn list(
    State(hub): Hs,
    caller: Caller,
) -> Result<Json<Vec<AccountView>>, ApiError> {
    require(&caller, Permission::ManageAccounts)?;
    Ok(Json(blocking(move || accounts::list(&hub)).await?))
}

pub(super) async fn add(
    State(hub): Hs,
    caller: Caller,
    Json(b): Json<AddAccount>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    require(&caller, Permission::ManageAccounts)?;
    let view = blocking(move || {
        accounts::add(
            &hub,
            &caller.name,
            &b.name,
            b.role,
            b.agency.as_deref(),
            &b.password,
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn set_enabled(
    hub: Hs,
    caller: Caller,
    name: String,
    enabled: bool,
) -> Result<Json<AccountView>, ApiError> {
    require(&caller, Permission::ManageAccounts)?;
    let State(hub) = hub;
    Ok(Json(
        blocking(move || accounts::set_enabled(&hub, &caller.name, &name, enabled)).await?,
    ))
}

pub(super) async fn disable(
    hub: Hs,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    set_enabled(hub, caller, name, false).await
}

pub(super) async fn enable(
    hub: Hs,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    set_enabled(hub, caller, name, true).await
}

pub(super) async fn password(
    State(hub): Hs,
    caller: Caller,
    Path(name): Path<String>,
    Json(b): Json<SetPassword>,
) -> Result<Json<AccountView>, ApiError> {
    self_or_manager(&caller, &name)?;
    Ok(Json(
        blocking(move || accounts::set_password(&hub, &caller.name, &name, &b.password)).await?,
    ))
}

pub(super) async fn token(
    State(hub): Hs,
    caller: Caller,
    Path(name): Path<String>,
    Json(b): Json<IssueToken>,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    self_or_manager(&caller, &name)?;
    let issued =
        blocking(move || accounts::issue_token(&hub, &caller.name, &name, &b.label)).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

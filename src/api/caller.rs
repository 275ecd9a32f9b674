//! Who calls the admin API: the configured admin token, or an account's API
//! token ([`crate::state::accounts`]), read from `Authorization: Bearer`.
//! A handler takes a [`Caller`] argument and asks it for the permission
//! its work needs first ([`require`]); the answer is then cut to the
//! caller's scope ([`crate::operator::scope`]).
//!
//! Invariants: no `/v1` answer without a caller (401); a role that may not
//! do something is refused with 403 before any work, whatever a user
//! interface shows; the admin token is compared in constant time and never
//! opens anything when shorter than the configured minimum.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use crate::api::ApiError;
use crate::core::role::Permission;
use crate::operator::scope::Caller;
use crate::operator::Hub;

fn unauthorized() -> ApiError {
    ApiError(
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin token".into(),
    )
}

/// The caller the `Authorization` header names.
pub(crate) fn authenticate(hub: &Hub, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if given.starts_with(crate::state::accounts::TOKEN_PREFIX) {
        return match hub.accounts.by_token(given) {
            Ok(Some(a)) => Ok(Caller::of(&a)),
            Ok(None) => Err(unauthorized()),
            Err(e) if e.is_retryable() => Err(crate::api::unavailable(e)),
            Err(e) => Err(crate::api::internal(e)),
        };
    }
    // An empty or short token never opens the API, whatever was configured.
    let usable = hub.admin_token.len() >= crate::core::config::MIN_ADMIN_TOKEN_LEN;
    if usable && bool::from(given.as_bytes().ct_eq(hub.admin_token.as_bytes())) {
        Ok(Caller::admin_token())
    } else {
        Err(unauthorized())
    }
}

/// `Ok` if `caller` may do `p`, else 403 naming the account and its role.
pub(crate) fn require(caller: &Caller, p: Permission) -> Result<(), ApiError> {
    if caller.may(p) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "account {} (role {}) may not do this",
                caller.name, caller.role
            ),
        ))
    }
}

impl FromRequestParts<Arc<Hub>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, ApiError> {
        authenticate(hub, &parts.headers)
    }
}

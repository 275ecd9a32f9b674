//! Operator accounts as an operator manages them: add, list, disable and
//! enable, set a password, issue an API token, over
//! [`crate::state::accounts`].
//!
//! Invariants: no view carries a password hash or a token's secret (a new
//! token is shown once, in [`TokenIssued`]); an `agency` account names a
//! registered agency; every change is an audit entry naming the account
//! that made it. Every function blocks (store, argon2): call them off the
//! async threads.

use serde::{Deserialize, Serialize};

use crate::core::code::AgencyCode;
use crate::core::role::Role;
use crate::core::time::{format_rfc3339, now_ms};
use crate::operator::Hub;
use crate::state::accounts::{Account, AccountError};
use crate::state::audit::AuditEvent;

/// The name the configured admin token acts under in the audit log (not a
/// valid account name, so no account can take it).
pub const ADMIN_TOKEN_ACCOUNT: &str = "@admin-token";

/// One API token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// Public id.
    pub id: String,
    /// Label given at issue.
    pub label: String,
    /// Issued at (RFC 3339).
    pub created: String,
}

/// An account as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The agency of an `agency` account.
    pub agency: Option<String>,
    /// Whether it may log in.
    pub enabled: bool,
    /// Created at (RFC 3339).
    pub created: String,
    /// Password last set at (RFC 3339).
    pub password_set: String,
    /// Its API tokens.
    pub tokens: Vec<TokenView>,
}

/// A new API token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenIssued {
    /// The account.
    pub account: String,
    /// The token: `Authorization: Bearer <token>`, or `TRUC_ADMIN_TOKEN`
    /// for the CLI.
    pub token: String,
}

/// The view of `a`.
pub fn view(a: &Account) -> AccountView {
    AccountView {
        name: a.name.clone(),
        role: a.role,
        agency: a.agency.as_ref().map(|c| c.to_string()),
        enabled: a.enabled,
        created: format_rfc3339(a.created_ms),
        password_set: format_rfc3339(a.password_set_ms),
        tokens: a
            .tokens
            .iter()
            .map(|t| TokenView {
                id: t.id.clone(),
                label: t.label.clone(),
                created: format_rfc3339(t.created_ms),
            })
            .collect(),
    }
}

fn audit(hub: &Hub, by: &str, action: &str, target: &str, detail: String) {
    hub.router
        .audit()
        .record(AuditEvent::admin(action, target, detail).by(by));
}

/// Every account.
pub fn list(hub: &Hub) -> Result<Vec<AccountView>, AccountError> {
    Ok(hub.accounts.list()?.iter().map(view).collect())
}

/// A new account; an `agency` account's agency must be registered.
pub fn add(
    hub: &Hub,
    by: &str,
    name: &str,
    role: Role,
    agency: Option<&str>,
    password: &str,
) -> Result<AccountView, AccountError> {
    let agency = match agency {
        None => None,
        Some(text) => {
            let code = AgencyCode::parse(text)
                .map_err(|e| AccountError::BadAgency(format!("agency {text:?}: {e}")))?;
            if hub.registry.get(&code).is_none() {
                return Err(AccountError::BadAgency(format!(
                    "agency {code} is not registered"
                )));
            }
            Some(code)
        }
    };
    let a = hub.accounts.add(name, role, agency, password, now_ms())?;
    let detail = match &a.agency {
        Some(c) => format!("role {role}, agency {c}"),
        None => format!("role {role}"),
    };
    audit(hub, by, "account-add", name, detail);
    Ok(view(&a))
}

/// Enables or disables `name` (either way its API tokens are revoked).
pub fn set_enabled(
    hub: &Hub,
    by: &str,
    name: &str,
    enabled: bool,
) -> Result<AccountView, AccountError> {
    let a = hub.accounts.set_enabled(name, enabled)?;
    let action = if enabled {
        "account-enable"
    } else {
        "account-disable"
    };
    audit(hub, by, action, name, String::new());
    Ok(view(&a))
}

/// Sets `name`'s password.
pub fn set_password(
    hub: &Hub,
    by: &str,
    name: &str,
    password: &str,
) -> Result<AccountView, AccountError> {
    let a = hub.accounts.set_password(name, password, now_ms())?;
    audit(hub, by, "account-password", name, String::new());
    Ok(view(&a))
}

/// A new API token for `name`.
pub fn issue_token(
    hub: &Hub,
    by: &str,
    name: &str,
    label: &str,
) -> Result<TokenIssued, AccountError> {
    let token = hub.accounts.issue_token(name, label, now_ms())?;
    let id = token.split('.').nth(1).unwrap_or_default().to_owned();
    audit(hub, by, "account-token", name, format!("token {id}"));
    Ok(TokenIssued {
        account: name.to_owned(),
        token,
    })
}

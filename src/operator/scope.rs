//! What part of the hub's traffic a caller may see: all of it, or one
//! agency's own. The admin API and the console cut every answer with the
//! caller's [`Scope`] before it leaves the hub.
//!
//! Invariants: an agency's scope shows an envelope only if the agency sent
//! it or is one of its destinations, and a destination sees its own
//! timeline only, never the other destinations of a multicast; an agency,
//! presence row, report row or connection of another agency is never
//! shown. What is out of scope is answered as absent, never as forbidden,
//! so a scope cannot probe what exists outside it.

use crate::core::code::AgencyCode;
use crate::core::role::{Permission, Role};
use crate::operator::envelopes::EnvelopeView;
use crate::operator::reporting::FullReport;

/// The traffic a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every agency's.
    All,
    /// One agency's own.
    Agency(AgencyCode),
    /// None (a role that may see nothing of the traffic).
    Nothing,
}

impl Scope {
    /// Whether agency `code`'s own records are in scope.
    pub fn sees(&self, code: &AgencyCode) -> bool {
        match self {
            Scope::All => true,
            Scope::Agency(own) => own == code,
            Scope::Nothing => false,
        }
    }

    /// Whether agency `code` (as text) is in scope.
    pub fn sees_text(&self, code: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Agency(own) => own.as_str() == code,
            Scope::Nothing => false,
        }
    }

    /// Whether the envelope `v` is in scope at all.
    pub fn sees_envelope(&self, v: &EnvelopeView) -> bool {
        match self {
            Scope::All => true,
            Scope::Agency(own) => &v.from == own || v.dests.iter().any(|d| &d.code == own),
            Scope::Nothing => false,
        }
    }

    /// `v` as this scope shows it: whole to its source (and to
    /// [`Scope::All`]), with the caller's own timeline only to a
    /// destination; `None` when out of scope.
    pub fn envelope(&self, mut v: EnvelopeView) -> Option<EnvelopeView> {
        if !self.sees_envelope(&v) {
            return None;
        }
        if let Scope::Agency(own) = self {
            if &v.from != own {
                v.dests.retain(|d| &d.code == own);
            }
        }
        Some(v)
    }

    /// `r` with only the rows and connections in scope.
    pub fn report(&self, mut r: FullReport) -> FullReport {
        if *self != Scope::All {
            r.report.rows.retain(|row| self.sees_text(&row.agency));
            r.connections_now.retain(|c| self.sees(&c.agency));
            r.connections.retain(|c| self.sees(&c.agency));
        }
        r
    }
}

/// Who acts: the account's name (as the audit log records it), its role,
/// and its agency for an `agency` account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Account name ([`crate::operator::accounts::ADMIN_TOKEN_ACCOUNT`] for
    /// the configured admin token).
    pub name: String,
    /// Role.
    pub role: Role,
    /// The agency of an `agency` account.
    pub agency: Option<AgencyCode>,
}

impl Caller {
    /// The admin token's caller.
    pub fn admin_token() -> Self {
        Self {
            name: crate::operator::accounts::ADMIN_TOKEN_ACCOUNT.to_owned(),
            role: Role::Admin,
            agency: None,
        }
    }

    /// The caller acting as account `a`.
    pub fn of(a: &crate::state::accounts::Account) -> Self {
        Self {
            name: a.name.clone(),
            role: a.role,
            agency: a.agency.clone(),
        }
    }

    /// Whether it may do `p`.
    pub fn may(&self, p: Permission) -> bool {
        self.role.may(p)
    }

    /// What it may see: everything with [`Permission::ViewAll`], its own
    /// agency's traffic with [`Permission::ViewOwn`], else nothing.
    pub fn scope(&self) -> Scope {
        match &self.agency {
            _ if self.may(Permission::ViewAll) => Scope::All,
            Some(code) if self.may(Permission::ViewOwn) => Scope::Agency(code.clone()),
            _ => Scope::Nothing,
        }
    }
}

//! Operator roles and what each may do: the one table the admin API and the
//! web console consult before any work.
//!
//! Invariants: [`Role::may`] is an exhaustive match over roles and
//! permissions (no `_` arm), so a new permission or role cannot be added
//! without deciding it for every role; an `agency` role reads only its own
//! agency's traffic ([`Permission::ViewOwn`]) and nothing else.

use serde::{Deserialize, Serialize};

/// An account's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including key issuance, backups and accounts.
    Admin,
    /// Day-to-day running: sees everything, works queues and dead letters,
    /// enables and disables agencies; issues no key.
    Operator,
    /// Read-only: everything an operator sees, the audit log and reports.
    Auditor,
    /// One agency's own traffic, timelines, presence history and reports.
    Agency,
}

/// Every role, in the order the console lists them.
pub const ROLES: [Role; 4] = [Role::Admin, Role::Operator, Role::Auditor, Role::Agency];

/// What a caller asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read every agency, envelope, queue depth, presence, report and
    /// instance.
    ViewAll,
    /// Read one's own agency's envelopes, presence history and reports
    /// (every role that has [`Permission::ViewAll`] has this too).
    ViewOwn,
    /// Read the audit log and verify its chain.
    ReadAudit,
    /// Look at the messages waiting in a queue (headers and sizes).
    PeekQueues,
    /// Purge an inbox, retry or drop dead letters.
    WorkQueues,
    /// Enable or disable an agency.
    EnableAgencies,
    /// Add, import or remove an agency, rotate its keys or broker password,
    /// read the broker definitions (they hold password hashes).
    IssueKeys,
    /// Download a backup of the store (it holds the sealed secrets).
    Backup,
    /// Add, disable and enable accounts, set any account's password.
    ManageAccounts,
}

impl Role {
    /// Whether this role may do `p`.
    pub fn may(self, p: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Admin => true,
            Role::Operator => match p {
                P::ViewAll
                | P::ViewOwn
                | P::ReadAudit
                | P::PeekQueues
                | P::WorkQueues
                | P::EnableAgencies => true,
                P::IssueKeys | P::Backup | P::ManageAccounts => false,
            },
            Role::Auditor => match p {
                P::ViewAll | P::ViewOwn | P::ReadAudit => true,
                P::PeekQueues
                | P::WorkQueues
                | P::EnableAgencies
                | P::IssueKeys
                | P::Backup
                | P::ManageAccounts => false,
            },
            Role::Agency => match p {
                P::ViewOwn => true,
                P::ViewAll
                | P::ReadAudit
                | P::PeekQueues
                | P::WorkQueues
                | P::EnableAgencies
                | P::IssueKeys
                | P::Backup
                | P::ManageAccounts => false,
            },
        }
    }

    /// The kebab-case name (`admin`, `operator`, `auditor`, `agency`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Agency => "agency",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        ROLES.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Permission; 9] = [
        Permission::ViewAll,
        Permission::ViewOwn,
        Permission::ReadAudit,
        Permission::PeekQueues,
        Permission::WorkQueues,
        Permission::EnableAgencies,
        Permission::IssueKeys,
        Permission::Backup,
        Permission::ManageAccounts,
    ];

    fn allowed(r: Role) -> Vec<Permission> {
        ALL.into_iter().filter(|p| r.may(*p)).collect()
    }

    #[test]
    fn the_roles_of_the_issue() {
        use Permission as P;
        assert_eq!(allowed(Role::Admin), ALL.to_vec());
        assert_eq!(
            allowed(Role::Operator),
            vec![
                P::ViewAll,
                P::ViewOwn,
                P::ReadAudit,
                P::PeekQueues,
                P::WorkQueues,
                P::EnableAgencies
            ]
        );
        assert_eq!(
            allowed(Role::Auditor),
            vec![P::ViewAll, P::ViewOwn, P::ReadAudit]
        );
        assert_eq!(allowed(Role::Agency), vec![P::ViewOwn]);
    }

    #[test]
    fn names_round_trip() {
        for r in ROLES {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert_eq!(Role::parse("root"), None);
    }
}

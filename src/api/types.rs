//! Every request and response body of the admin API, as typed serde
//! structures shared by the server ([`crate::api`]) and the CLI's admin
//! client. Result types the operator layer already defines are re-exported
//! here rather than duplicated. Exported publicly as `truc::admin_types`.
//!
//! Invariants: field names are the wire contract (tests and adapters read
//! them); JSON times are RFC 3339 (fields ending `_ms` are extra); no type
//! carries a secret except [`Added`], [`Rotated`], [`BrokerIssued`] and
//! [`Issued`] and [`TokenIssued`].

use serde::{Deserialize, Serialize};

pub use crate::core::alerting::{Alert, Rule as AlertRule};
pub use crate::core::role::Role;
pub use crate::operator::accounts::{AccountView, TokenIssued, TokenView};
pub use crate::operator::agency::{
    Added, AgencyView, BrokerIssued, DeletedQueue, KeyView, OldKey, RabbitDefinitions,
    RabbitPermission, RabbitTopicPermission, RabbitUser, Removed, Rotated,
};
pub use crate::operator::dead::{
    Filter as DeadFilter, Item as DeadItem, Outcome as DeadOutcome, Which,
};
pub use crate::operator::envelopes::{DestView, EnvelopeView, EventView, STATES};
pub use crate::operator::presence::{
    ConnectionEvent, ConnectionNow, History as PresenceHistory, PresenceView,
};
pub use crate::operator::queues::{MessageView, PurgeReport, QueueRow, ShapeRow};
pub use crate::operator::report::{By, Report, Row as ReportRow};
pub use crate::operator::reporting::FullReport;
pub use crate::state::audit::{Broken, EntryView as AuditEntry, VerifyReport};
pub use crate::state::presence::HistoryEntry;
pub use crate::state::registry::Issued;
pub use crate::state::retention::{StoreStats, TreeStats};

/// `GET /v1/alerts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertsView {
    /// Open now, by key.
    pub open: Vec<Alert>,
    /// Resolved in the last 7 days, newest first.
    pub resolved: Vec<Alert>,
}

/// `POST /v1/accounts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddAccount {
    /// Login name: 2-64 of `a-z 0-9 . _ -`.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The agency of an `agency` account (its code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<String>,
    /// Its first password (at least 12 characters).
    pub password: String,
}

/// `POST /v1/accounts/{name}/password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetPassword {
    /// The new password (at least 12 characters).
    pub password: String,
}

/// `POST /v1/accounts/{name}/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IssueToken {
    /// What the token is for (`ops laptop`), shown in the account list.
    #[serde(default)]
    pub label: String,
}

/// `GET /v1/whoami`: the caller as the hub sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// Account name (`@admin-token` for the configured admin token).
    pub account: String,
    /// Role.
    pub role: Role,
    /// The agency of an `agency` account.
    pub agency: Option<String>,
}

/// Every error response: `{"error": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// `GET /healthz`: HTTP 200 with `status: ok`, or 503 with `status:
/// unhealthy` and why in `reasons` (docs/OPERATIONS.md, "Health").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` or `unhealthy`.
    pub status: String,
    /// Whether the hub is connected to the broker.
    pub broker_connected: bool,
    /// Registered agencies.
    pub agencies: usize,
    /// This instance's id (config `instance_id`).
    #[serde(default)]
    pub instance: String,
    /// `leader` or `follower`: whether this instance holds the leader lease
    /// (see `truc instances`).
    #[serde(default)]
    pub role: String,
    /// Why it is unhealthy (empty when `ok`).
    #[serde(default)]
    pub reasons: Vec<HealthReason>,
}

/// One running instance, as `GET /v1/instances` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    /// Instance id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// truc version.
    pub version: String,
    /// When it started (RFC 3339).
    pub started: String,
    /// When it started (ms).
    pub started_ms: i64,
    /// When it last wrote its record (RFC 3339).
    pub last_seen: String,
    /// When it last wrote its record (ms).
    pub last_seen_ms: i64,
    /// Its admin API address.
    pub admin_addr: String,
    /// Whether it holds the leader lease.
    pub leader: bool,
    /// The lease's term, for the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

/// One failed check of `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReason {
    /// `store` (the store cannot write), `broker` (not connected) or
    /// `ingress` (messages received and none handled for a while).
    pub check: String,
    /// What is wrong, for a human.
    pub detail: String,
}

/// Body of `POST /v1/agencies`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddAgency {
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
    /// PEM RSA public key.
    #[serde(default)]
    pub public_key_pem: Option<String>,
}

/// Body of `POST /v1/agencies/{code}/rotate-key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rotate {
    /// Seconds the older keys stay valid.
    pub grace_s: u64,
}

/// Query of `DELETE /v1/agencies/{code}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoveQuery {
    /// Remove even when the inbox holds messages (they are deleted with it).
    #[serde(default)]
    pub force: bool,
}

/// One row of an import.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRow {
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
}

/// Body of `POST /v1/agencies/import`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Import {
    /// Rows, in file order.
    pub rows: Vec<ImportRow>,
}

/// Query of `GET /v1/envelopes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnvelopeQuery {
    /// Source code; without it the id must be unambiguous.
    #[serde(default)]
    pub from: Option<String>,
    /// Message id.
    pub id: String,
}

/// Query of `GET /v1/envelopes/list`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListQuery {
    /// Source code.
    #[serde(default)]
    pub from: Option<String>,
    /// Destination code.
    #[serde(default)]
    pub to: Option<String>,
    /// A destination in this state (`queued`, `delivered`, `bounced`…).
    #[serde(default)]
    pub state: Option<String>,
    /// Accepted within this duration (`2h`).
    #[serde(default)]
    pub since: Option<String>,
    /// Accepted at or after this time, ms since the epoch.
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// Accepted before this time, ms since the epoch.
    #[serde(default)]
    pub until_ms: Option<i64>,
    /// Most records (default 100, at most 10000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Query of `GET /v1/presence/{code}/history`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Only transitions younger than this duration (e.g. `24h`, `7d`).
    #[serde(default)]
    pub since: Option<String>,
    /// Only transitions at or after this time, ms since the epoch.
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// Only transitions before this time, ms since the epoch.
    #[serde(default)]
    pub until_ms: Option<i64>,
}

/// `GET /v1/queues/shape`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shape {
    /// Age bucket labels, youngest first.
    pub buckets: Vec<String>,
    /// Per destination.
    pub destinations: Vec<ShapeRow>,
}

/// Query of `GET /v1/queues/{code}/peek`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeekQuery {
    /// How many.
    #[serde(default = "default_n")]
    pub n: usize,
}

fn default_n() -> usize {
    10
}

/// Body of `POST /v1/dead/retry` and `/v1/dead/drop`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeadBody {
    /// Selection.
    #[serde(flatten)]
    pub filter: DeadFilter,
    /// Retry rate, messages per second (default 10).
    #[serde(default)]
    pub rate: Option<f64>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditQuery {
    /// How many.
    #[serde(default = "default_n")]
    pub n: usize,
    /// Only entries after this sequence number (oldest first).
    #[serde(default)]
    pub after: Option<u64>,
}

/// Query of `GET /v1/report`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReportQuery {
    /// Start, ms since the epoch (inclusive).
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// End, ms since the epoch (exclusive).
    #[serde(default)]
    pub until_ms: Option<i64>,
    /// Period.
    #[serde(default)]
    pub by: By,
    /// Time zone (IANA name) to cut periods in and show times in; the
    /// hub's `time_zone` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
}

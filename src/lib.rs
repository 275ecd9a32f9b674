//! truc — the provincial integration axis (Trục liên thông, LGSP): a
//! store-and-forward router for signed envelopes on RabbitMQ.
//!
//! # Layout
//! The crate is built in layers; **a layer uses only the layers above it in
//! this list** (never one below), so there is no dependency cycle between
//! folders. Each folder's `mod.rs` says what it owns and may use.
//!
//! 1. `core/` — pure code, no broker, store or network:
//!    `code` (QCVN 102 agency codes), `time`, `reason` (reason codes),
//!    `message` (the transport-neutral message), `canonical` (the signed form),
//!    `auth` (HMAC/RSA signatures), `envelope` (parsing what adapters send),
//!    `timeline` (delivery states and status codes, and the one definition of
//!    "still waiting"), `notice` (and the hub signature with `lgsp-hub-key`),
//!    `outgoing` (building signed messages as an adapter does, credentials,
//!    checking a hub signature with the key it names), `policy`, `scheduler`
//!    (backoff, delay buckets, rates), `presence` (the online/offline state
//!    machine), `topology` (queues as data), `config`, `zone` (the operator's time zone), `secrets` (sealing at rest), `broker_password`
//!    (RabbitMQ password hashes), `pem`, `text` (escaping wire text for logs), `metrics` (every
//!    metric, emitted from one function each), `skew` (the clock-skew rule),
//!    `alarm` (a lasting condition said in the log without flooding it),
//!    `role` (operator roles and what each may do), `alerting` (alerts as a
//!    state machine: once, repeat, resolve, budget), `alert_policy`
//!    (`policies/alerts.toml`).
//! 2. `state/` — everything persisted, in sled: `store`, `codec` (the one
//!    value codec), `keys` (the one key encoder), `registry` (agencies,
//!    keys, and the key each agency last used, which the hub signs with),
//!    `replay` (nonces), `tracking` (timelines, dedupe), `presence`
//!    (presence history), `audit` (hash-chained log), `retention`, `integrity` (store generation
//!    and checkpoint), `drained` (when each source's queue was last seen empty),
//!    `backup` (the snapshot file of every tree, and its restore), `lease` (the
//!    leader lease among instances sharing a store), `instances` (their
//!    heartbeat records), `relay` (heartbeats a follower hands the leader),
//!    `accounts` (operator accounts: argon2id passwords, API tokens), `logins`
//!    (web console sessions), `alerts` (open and resolved alerts).
//! 3. [`broker`] — the only code that imports lapin: `link` (connect,
//!    declare, publish with confirms, consume), `guard` (the frame guard that
//!    keeps unparseable messages from stopping the hub), `tls`, `outbox` (the
//!    router's way out), `convert`.
//! 4. `router/` — what happens to each message, one step per file: `ingress`,
//!    `status`, `delivery` (the one signed-delivery builder), `notify`,
//!    `holding` (deferral, retries, deadlines, recall), `rebuild` (the
//!    record of a held copy whose record the store lost), `order` (a message
//!    waits for the earlier one it depends on), `progress` (is ingress stuck).
//! 5. `operator/` — what an operator can see and do, without HTTP or CLI
//!    types: `agency` (lifecycle), `envelopes`, `presence`, `queues`, `dead`,
//!    `report`/`reporting`, `audit`, `backup`, `accounts`, `alerts`,
//!    `overview` (the console's first page), `scope` (who calls, and what part
//!    of the traffic they may see), and `Hub`, the context they share.
//! 6. `api/` — the admin HTTP API: one file per resource, `types` (every
//!    request and response body, shared with the CLI; public as
//!    [`admin_types`]), `tls`, `caller` (the admin token or an account's API
//!    token, and the permission check), `console/` (the operators' web
//!    console: server-rendered pages, sessions, CSRF, Vietnamese and English).
//!    `gateway/` (beside it, using its connection handling): the agencies'
//!    HTTPS API: `session` (session requests and tokens, `token`), `send`
//!    (an envelope handled at once), `request` (a request read as a message).
//! 7. [`serve`] — `truc serve`: wiring, one consumer per agency's ingress
//!    queue, housekeeping, the presence task, `leader` (which instance runs
//!    the work done once across instances), `alerts` (the leader evaluates the
//!    alert rules and sends to the webhook and by email), shutdown.
//! 8. [`client`] — the Rust adapter library (uses `core` and `broker`).
//! 9. [`cli`] — the `truc` command line: one file per subcommand, `admin`
//!    (the typed admin client), `http`, `tls`.
//!
//! The public surface is what adapter authors, tests and the benchmark use
//! (re-exported below); everything else is crate-private.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod api;
pub mod broker;
pub mod cli;
pub mod client;
pub(crate) mod core;
pub(crate) mod gateway;
pub(crate) mod operator;
pub(crate) mod router;
pub mod serve;
pub(crate) mod state;

pub use crate::api::types as admin_types;
pub use crate::core::{
    auth, broker_password, canonical, code, config, envelope, message, notice, policy, reason,
    scheduler, time, topology, zone,
};
pub use crate::operator::report;

/// Test support shared by the unit and integration tests: a throw-away
/// PostgreSQL database per test.
#[doc(hidden)]
pub mod testing {
    pub use crate::state::pg::testdb::TestDb;
}
pub use crate::state::store;

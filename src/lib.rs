//! truc — the provincial integration axis (Trục liên thông, LGSP): a
//! store-and-forward router for signed envelopes on RabbitMQ.
//!
//! # Layout
//! The crate is built in layers; **a layer uses only the layers above it in
//! this list** (never one below), so there is no dependency cycle between
//! folders. Each folder's `mod.rs` says what it owns.
//!
//! 1. [`core`](crate::core) — pure code: agency codes, times, reasons, the
//!    message, the canonical form, signatures, envelope parsing, notices,
//!    policies, scheduling decisions, the presence model, topology as data,
//!    configuration, sealing of secrets, broker password hashes, the metrics
//!    facade.
//! 2. [`state`](crate::state) — the sled store and everything persisted:
//!    registry, nonces, timelines, presence history, audit log, retention.
//! 3. [`broker`] — the only code that imports lapin: links, topology
//!    declaration, publishing with confirms, consuming, the outbox.
//! 4. [`router`](crate::router) — the ingress pipeline, status handling,
//!    holding (deferral, retries, deadlines, recall) and the one signed-delivery
//!    builder.
//! 5. [`operator`](crate::operator) — queues, dead letters, reports, agency
//!    lifecycle: what an operator can do, with no HTTP or CLI types.
//! 6. [`api`](crate::api) — the admin HTTP API and `/metrics`; its request
//!    and response bodies are public as [`admin_types`].
//! 7. [`serve`] — `truc serve`: wiring, consumers, housekeeping, the presence
//!    task, shutdown.
//! 8. [`client`] — the Rust adapter library (uses `core` and `broker`).
//! 9. [`cli`] — the `truc` command line: one file per subcommand and the admin
//!    client.
//!
//! The public surface is what adapter authors, tests and the benchmark use;
//! everything else is crate-private.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod api;
pub mod broker;
pub mod cli;
pub mod client;
pub(crate) mod core;
pub(crate) mod operator;
pub(crate) mod router;
pub mod serve;
pub(crate) mod state;

pub use crate::api::types as admin_types;
pub use crate::core::{
    auth, broker_password, canonical, code, config, envelope, message, notice, policy, reason,
    scheduler, time, topology,
};
pub use crate::operator::report;
pub use crate::state::store;

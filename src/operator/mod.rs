//! Layer 5 — **operator**: what an operator can see and do, with no HTTP or
//! command-line types: the agency lifecycle, envelope timelines, presence
//! views, agency queues, dead letters, reports, the audit log, backups of
//! the store, operator accounts, what each caller may see ([`scope`]), and
//! the shared [`Hub`] context every operator action runs against.
//!
//! Invariants: what an operator asks for comes back as a typed result
//! (Serialize + Deserialize, re-exported by the admin API's types rather
//! than duplicated) or its module's `thiserror` error; every action that
//! changes something appends an audit entry naming the account that did it.
//!
//! May use: [`crate::core`], [`crate::state`], [`crate::broker`],
//! [`crate::router`].

pub mod accounts;
pub mod agency;
pub mod alerts;
pub mod audit;
pub mod backup;
pub mod dead;
pub mod envelopes;
mod hub;
pub use hub::Hub;
pub mod overview;
pub mod presence;
pub mod queues;
pub mod report;
pub mod reporting;
pub mod scope;

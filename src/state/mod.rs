//! Layer 2 — **state**: everything truc persists, in the embedded sled store.
//!
//! Owns the store and its group-committed durability, the one value codec,
//! the agency registry, nonce replay defence, per-envelope timelines and
//! dedupe records, presence history, the hash-chained audit log, the
//! retention sweeps, the store's integrity (generation and checkpoint),
//! when each source's queue was last seen empty, backups of the store (a
//! snapshot file, and its restore into an empty store), and what several
//! instances sharing one store coordinate through it: the leader lease, the
//! instance records and the heartbeats followers relay to the leader; and
//! the operators' side: named accounts, web console sessions, alerts.
//!
//! May use: [`crate::core`]. Invariants: every value goes through
//! [`codec`] and every key of several fields through [`keys`]; nothing here
//! holds message content.

pub mod accounts;
pub mod alerts;
pub mod audit;
pub mod backup;
pub mod codec;
#[cfg(test)]
mod conformance;
pub mod drained;
pub mod instances;
pub mod integrity;
pub mod keys;
pub mod lease;
pub mod logins;
pub mod pg;
pub mod presence;
pub mod registry;
pub mod relay;
pub mod replay;
pub mod retention;
pub mod spaces;
pub mod store;
pub mod tracking;

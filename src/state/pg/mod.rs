//! The PostgreSQL backend of the store: the same ordered byte-key →
//! byte-value trees as the embedded store, as tables of a database that
//! several truc processes share.
//!
//! Responsibility: the connection pool and its threads ([`pool`]), the
//! schema and its migrations ([`migrate`]), one table per tree with the
//! embedded store's semantics ([`table`]), and the errors ([`error`]).
//!
//! Invariants: keys order byte-wise exactly as in the embedded store; every
//! write that reports the previous value is atomic against other processes;
//! table names come only from [`TREES`]; the synchronous client is only ever
//! used on the pool's own threads, never on a tokio runtime thread; single
//! writes commit asynchronously and [`PgPool::sync_commit`] makes every
//! earlier write durable.

pub(crate) mod error;
pub(crate) mod migrate;
pub(crate) mod pool;
pub(crate) mod staged;
pub(crate) mod table;
pub mod testdb;

pub use error::PgError;
pub(crate) use pool::PgPool;
pub(crate) use table::{PgIter, PgTable};

/// The store's trees, one table `truc_<tree>` each (see
/// `migrations/0001_init.sql`), in this order.
pub(crate) const TREES: &[&str] = &[
    "agencies",
    "keys",
    "envelopes",
    "by_dest",
    "deadlines",
    "nonces",
    "meta",
    "pending",
    "presence",
    "presence_log",
    "audit",
    "broker_users",
    "last_keys",
    "routing",
];

//! Layer 5 — **operator**: what an operator can see and do, with no HTTP or
//! command-line types: agency queues, dead letters, reports, and the shared
//! [`Hub`] context every operator action runs against.
//!
//! May use: [`crate::core`], [`crate::state`], [`crate::broker`],
//! [`crate::router`].

pub mod dead;
mod hub;
pub use hub::Hub;
pub mod queues;
pub mod report;

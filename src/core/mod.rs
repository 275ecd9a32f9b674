//! Layer 1 — **core**: pure code with no broker, no store and no network.
//!
//! Owns the wire contract's vocabulary (agency codes, times, reasons, status
//! codes, the transport-neutral message, the canonical form and signatures),
//! envelope parsing, the states of a delivery's timeline, notices, policies,
//! scheduling decisions, the presence model, the topology as data,
//! configuration, sealing of secrets, the store checkpoint's sealed form,
//! hashing of broker passwords, the escaping of wire text for logs, the
//! operator's time zone, operator roles and permissions, and alerting (its
//! policy and its state machine).
//!
//! May use: nothing else in the crate. The only I/O here is reading the
//! operator's data files (configuration, policies, topology) at start-up.

pub mod alarm;
pub mod alert_policy;
pub mod alerting;
pub mod auth;
pub mod broker_password;
pub mod canonical;
pub mod checkpoint;
pub mod code;
pub mod config;
pub mod dedupe;
pub mod envelope;
pub mod message;
pub mod metrics;
pub mod notice;
pub mod outgoing;
pub mod pem;
pub mod policy;
pub mod presence;
pub mod reason;
pub mod role;
pub mod scheduler;
pub mod secrets;
pub mod skew;
pub mod text;
pub mod time;
pub mod timeline;
pub mod topology;
pub mod zone;

//! truc — the provincial integration axis (Trục liên thông, LGSP): a
//! store-and-forward router for signed envelopes on RabbitMQ.
//!
//! # Layout
//! - [`code`] — agency codes (QCVN 102), validated once at the edge.
//! - [`time`] — RFC 3339 times and human durations.
//! - [`message`] — the transport-neutral AMQP message.
//! - [`canonical`] — the canonical form every signature covers.
//! - [`auth`] — HMAC-SHA256/SHA1 and RSA-SHA256 verification, hub signing.
//! - [`reason`] — the contract's reason codes.
//! - [`envelope`] — parsing envelopes, status messages and heartbeats.
//! - [`codec`] — the one codec for sled values (version byte + bincode).
//! - [`store`] — the sled database and group-committed durability.
//! - [`registry`] — agencies, keys, public keys.
//! - [`replay`] — nonce replay defence.
//! - [`tracking`] — per-envelope, per-destination timelines; dedupe records.
//! - [`presence`] — online/offline state machine, due warnings and bounces (pure).
//! - [`presence_task`] — presence I/O: broker polls, history in sled, notices.
//! - [`notice`] — notices to sources and the hub signature.
//! - [`policy`] — policies from `policies/`.
//! - [`topology`] — the RabbitMQ topology from `queues/`.
//! - [`config`] — configuration file and environment.
//! - [`amqp`] — the only module that imports lapin.
//! - [`router`] — the ingress pipeline (broker behind a trait).
//! - [`holding`] — deferral, retries, deadlines and recall of deliveries.
//! - [`scheduler`] — pure scheduling decisions: backoff, buckets, deadlines, rates.
//! - [`service`] — `truc serve`: link supervision, workers, shutdown.
//! - [`admin`] — the admin HTTP API and `/metrics`.
//! - [`metrics`] — every metric, emitted from one place each.
//! - [`client`] — a Rust adapter library.
//! - [`http`], [`cli`], [`adapter`] — the command line.
//! - [`secrets`] — sealing agency secrets at rest with the master key.
//! - [`audit`] — the hash-chained audit log.
//! - [`queues`] — operator views and actions over agency queues.
//! - [`dead`] — dead letters: list, retry, drop.
//! - [`report`] — statistics per agency and period.
//! - [`retention`] — retention sweeps and store statistics.
//! - [`admin_ops`], [`cli_ops`] — the operator API and commands over them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod adapter;
pub mod admin;
pub mod admin_ops;
pub mod amqp;
pub mod audit;
pub mod auth;
pub mod canonical;
pub mod cli;
pub mod cli_ops;
pub mod client;
pub mod code;
pub mod codec;
pub mod config;
pub mod dead;
pub mod envelope;
pub mod holding;
pub mod http;
pub mod message;
pub mod metrics;
pub mod notice;
pub mod policy;
pub mod presence;
pub mod presence_task;
pub mod queues;
pub mod reason;
pub mod registry;
pub mod replay;
pub mod report;
pub mod retention;
pub mod router;
#[cfg(test)]
mod router_tests;
pub mod scheduler;
pub mod secrets;
pub mod service;
pub mod store;
pub mod time;
pub mod topology;
pub mod tracking;

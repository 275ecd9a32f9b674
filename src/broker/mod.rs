//! The only module that speaks lapin: connections, topology declaration,
//! publishing with confirms, and consuming.
//!
//! Everything outside this module sees [`crate::core::message::Message`] and
//! [`crate::core::message::Inbound`]. Invariants: every publish is persistent and
//! mandatory and awaits its publisher confirm; a nack or a return is an error
//! ([`AmqpError::Nack`], [`AmqpError::Unroutable`]); acks go through
//! `channel.basic_ack` on the consuming channel. There is no automatic
//! recovery: after any error the caller drops the [`Link`], reconnects, and
//! treats in-flight work as unknown (the broker redelivers what was not acked).

mod convert;
pub(crate) mod guard;
mod link;
mod outbox;
mod tls;

pub use link::{redact, Browser, Death, Got, Link, QueueInfo, Settler, Subscription};
pub use outbox::{declare_agency, LinkOutbox, LinkSlot, Outbox, PublishError};
pub use tls::{is_amqps, BrokerTls, CA_FILE_ENV};

/// AMQP errors.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// Connecting failed.
    #[error("cannot connect to the broker: {0}")]
    Connect(String),
    /// The TLS settings cannot be used (CA file unreadable or without a
    /// certificate, CA file with a plaintext URL, unknown scheme).
    #[error("broker TLS settings: {0}")]
    Tls(String),
    /// A channel or connection operation failed (the link is unusable).
    #[error("broker operation {op} failed: {message}")]
    Broker {
        /// The operation.
        op: &'static str,
        /// lapin's message.
        message: String,
    },
    /// The broker nacked a publish.
    #[error("broker nacked the publish to {0}")]
    Nack(String),
    /// A mandatory publish had no queue to go to.
    #[error("no queue bound for {exchange}/{routing_key}")]
    Unroutable {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// The queue does not exist.
    #[error("queue {0} does not exist")]
    NoSuchQueue(String),
    /// The queue exists but cannot be reached now: the cluster node it lives
    /// on (a classic queue's home node) is down or shutting down, or its
    /// process crashed. It comes back with its node.
    #[error("queue {0} is unavailable: the broker node it lives on is down or stopping (or the queue crashed)")]
    QueueUnavailable(String),
    /// A declaration conflicts with what the broker has (different arguments).
    #[error("declaration of {name} conflicts with the broker: {message}")]
    Conflict {
        /// The object.
        name: String,
        /// The broker's words.
        message: String,
    },
}

impl AmqpError {
    /// Whether reconnecting and trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Broker { .. } | Self::Nack(_) | Self::QueueUnavailable(_) => {
                true
            }
            Self::Tls(_)
            | Self::Unroutable { .. }
            | Self::NoSuchQueue(_)
            | Self::Conflict { .. } => false,
        }
    }

    pub(crate) fn broker(op: &'static str, e: lapin::Error) -> Self {
        Self::Broker {
            op,
            message: e.to_string(),
        }
    }
}

//! The router's way out: the [`Outbox`] trait (publish with confirm, declare
//! an agency's queues) and its implementation over a live [`Link`].
//!
//! The trait speaks only [`Message`] and [`PublishError`], so the router's
//! pipeline runs in unit tests over an in-memory outbox.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use crate::broker::{AmqpError, Link};
use crate::core::code::AgencyCode;
use crate::core::message::Message;
use crate::core::topology::Topology;

/// Why a publish failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// No queue is bound for the routing key.
    #[error("unroutable")]
    Unroutable,
    /// The queue exists but is unavailable: in a cluster, the node that
    /// holds it is down. Publishing to it later may succeed.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// Anything else (nack, lost connection): the outcome is unknown.
    #[error("{0}")]
    Failed(String),
}

/// Where the router's output goes: the broker, or a test double.
pub trait Outbox: Send + Sync {
    /// Publishes `msg` and resolves when the broker confirmed it.
    fn publish(&self, msg: &Message) -> impl Future<Output = Result<(), PublishError>> + Send;
    /// Declares the inbox and notify queues of `code`.
    fn declare_agency(
        &self,
        code: &AgencyCode,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
    /// Whether the way out still works (a lost broker connection: no; the
    /// work waiting on it should give up rather than hold up a reconnect).
    fn is_usable(&self) -> bool;
}

/// The broker link currently in use, shared with the admin API.
pub type LinkSlot = watch::Receiver<Option<Arc<Link>>>;

/// [`Outbox`] over a live [`Link`].
pub struct LinkOutbox {
    link: Arc<Link>,
    topology: Arc<Topology>,
}

impl LinkOutbox {
    /// Over `link`.
    pub fn new(link: Arc<Link>, topology: Arc<Topology>) -> Self {
        Self { link, topology }
    }
}

fn publish_error(e: AmqpError) -> PublishError {
    match e {
        AmqpError::Unroutable { .. } => PublishError::Unroutable,
        other => PublishError::Failed(other.to_string()),
    }
}

impl Outbox for LinkOutbox {
    async fn publish(&self, msg: &Message) -> Result<(), PublishError> {
        self.link.publish(msg).await.map_err(publish_error)
    }

    fn is_usable(&self) -> bool {
        self.link.is_connected()
    }

    async fn declare_agency(&self, code: &AgencyCode) -> Result<(), PublishError> {
        declare_agency(&self.link, &self.topology, code)
            .await
            .map_err(|e| match e {
                // Declaring creates a missing queue: "no such queue" here is
                // a queue whose broker node is down.
                AmqpError::NoSuchQueue(q) | AmqpError::QueueUnavailable(q) => {
                    PublishError::Unavailable(q)
                }
                other => publish_error(other),
            })
    }
}

/// Declares the inbox and notify queues of `code`.
pub async fn declare_agency(
    link: &Link,
    topo: &Topology,
    code: &AgencyCode,
) -> Result<(), AmqpError> {
    for q in topo.agency_queues(code) {
        link.declare_queue(&q).await?;
    }
    Ok(())
}

//! The transport-neutral AMQP message: what truc reads from and writes to the broker.
//!
//! The `amqp` module converts lapin's types to and from [`Message`], so the
//! router, the client library and the tests never see a lapin type.

use std::collections::BTreeMap;
use std::sync::Arc;

/// One header value as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// An AMQP long string that is valid UTF-8 (the only kind the contract allows).
    Text(String),
    /// Anything else, described for error messages (`"integer"`, `"invalid utf-8"`…).
    Other(String),
}

impl HeaderValue {
    /// The text, when this is a text value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            Self::Other(_) => None,
        }
    }
}

/// An AMQP message with the properties truc uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Exchange to publish to (empty: the default exchange). Ignored on input.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// AMQP `message_id`.
    pub message_id: Option<String>,
    /// AMQP `content_type`.
    pub content_type: Option<String>,
    /// AMQP `timestamp` (seconds since the epoch).
    pub timestamp: Option<u64>,
    /// AMQP `priority` (0–9).
    pub priority: Option<u8>,
    /// AMQP `expiration` (milliseconds, as text).
    pub expiration: Option<String>,
    /// Headers, by name.
    pub headers: BTreeMap<String, HeaderValue>,
    /// The body, shared so fan-out does not copy it.
    pub body: Arc<[u8]>,
}

impl Message {
    /// A text header, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(HeaderValue::as_text)
    }

    /// Removes the broker's dead-letter bookkeeping (`x-death`,
    /// `x-first-death-*`, `x-last-death-*`) and truc's own `x-truc-*`
    /// headers, before a message is published again.
    pub fn strip_bookkeeping(&mut self) {
        self.headers.retain(|k, _| {
            !(k == "x-death"
                || k.starts_with("x-first-death-")
                || k.starts_with("x-last-death-")
                || k.starts_with("x-truc-"))
        });
    }

    /// Sets a text header.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers
            .insert(name.to_owned(), HeaderValue::Text(value.into()));
    }
}

/// A message received from a queue, with what is needed to settle it.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The message.
    pub message: Message,
    /// Broker delivery tag on the consuming channel.
    pub delivery_tag: u64,
    /// The broker delivered it before (to a consumer that did not ack it).
    pub redelivered: bool,
    /// The upload space the hub put its body in (the gateway does so with
    /// a large body sent inline); the message's body is then empty. Never
    /// set from what a sender wrote.
    pub content_space: Option<String>,
}

//! A Rust adapter library: sign and publish envelopes and status messages,
//! receive deliveries (hub signature checked, repeats dropped) and notices,
//! and wait for the hub's answer to one envelope.
//! The `truc send` / `truc recv` commands are built on it.
//!
//! Invariants: everything this module publishes is signed over the canonical
//! form of [`crate::core::canonical`], exactly as an adapter in another language
//! must do it from `docs/PROTOCOL.md`. What the hub sends is verified with the
//! secret of the key named in `lgsp-hub-key` (the credentials may hold earlier
//! keys, [`Credentials::previous_keys`]); a delivery or notice that does not
//! verify is reported as [`ClientError::Verify`] and must be left queued by
//! the caller, never acknowledged. [`Client::await_answer`] acknowledges only
//! the answer it waited for.

use std::time::Duration;

use crate::broker::{AmqpError, BrokerTls, Link, Subscription};
use crate::core::auth::body_digest;
use crate::core::code::AgencyCode;
use crate::core::message::{Inbound, Message};
use crate::core::notice::Notice;
use crate::core::time::now_ms;

pub use crate::core::dedupe::Dedupe;
pub use crate::core::outgoing::{
    envelope_message, new_message_id, new_nonce, presence_message, session_message, sign,
    status_message, verify_hub_signature, Credentials, KeyPair, Outgoing,
};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker failed.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// A delivery or notice failed verification (it must stay queued).
    #[error("cannot verify {what}: {why}")]
    Verify {
        /// What was received.
        what: &'static str,
        /// Why it was refused.
        why: String,
    },
    /// Credentials file problem.
    #[error("credentials: {0}")]
    Credentials(String),
}

impl ClientError {
    /// Whether trying again (after reconnecting, for a broker error) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Amqp(e) => e.is_retryable(),
            Self::Verify { .. } | Self::Credentials(_) => false,
        }
    }
}

impl Credentials {
    /// Reads a JSON credentials file as printed by `truc agency add --json`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Credentials(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| ClientError::Credentials(format!("{}: {e}", path.display())))
    }
}

/// What arrived in an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceivedKind {
    /// An envelope.
    Envelope,
    /// The source recalls the envelope `message_id` (answer status `15`, or
    /// `16` when it was already taken in).
    Recall {
        /// The envelope had already been received.
        already_received: bool,
    },
}

/// A delivery, verified.
#[derive(Debug, Clone)]
pub struct Received {
    /// Envelope or recall request.
    pub kind: ReceivedKind,
    /// `lgsp-deliver-by` has passed: the envelope is stale, drop it
    /// (reject without requeue; the hub has told the source).
    pub stale: bool,
    /// Source agency.
    pub from: AgencyCode,
    /// The source's message id.
    pub message_id: String,
    /// Subject.
    pub subject: String,
    /// Priority code.
    pub priority: u8,
    /// `lgsp-attempt` (> 1: possibly delivered before).
    pub attempt: u32,
    /// Already received before (by `(from, message_id)`): drop it.
    pub repeat: bool,
    /// The upload space holding the content (`lgsp-content-space`); the
    /// body is then empty: fetch the content over the HTTPS gateway
    /// (`GET /v1/spaces/{id}/content`) and check it against `lgsp-digest`.
    pub content_space: Option<String>,
    /// The message as received.
    pub message: Message,
    /// Delivery tag to settle.
    pub delivery_tag: u64,
}

/// A connected adapter.
pub struct Client {
    link: Link,
    creds: Credentials,
    prefix: String,
    dedupe: Dedupe,
}

impl Client {
    /// Connects to `url` as `creds`; an `amqps://` URL trusts the CA file
    /// named by `TRUC_AMQP_CA_FILE` besides the web PKI roots.
    pub async fn connect(url: &str, prefix: &str, creds: Credentials) -> Result<Self, ClientError> {
        Self::connect_tls(url, prefix, creds, &BrokerTls::from_env()).await
    }

    /// Connects to `url` as `creds`, verifying an `amqps://` broker against
    /// `tls` (never falling back to plaintext).
    pub async fn connect_tls(
        url: &str,
        prefix: &str,
        creds: Credentials,
        tls: &BrokerTls,
    ) -> Result<Self, ClientError> {
        let link = Link::connect_tls(url, &format!("adapter {}", creds.code), 1, tls).await?;
        Ok(Self {
            link,
            creds,
            prefix: prefix.to_owned(),
            dedupe: Dedupe::new(100_000),
        })
    }

    /// The credentials in use.
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// Signs and publishes an envelope (confirmed); returns its message id.
    pub async fn send(&self, out: &Outgoing) -> Result<String, ClientError> {
        let m = envelope_message(&self.prefix, &self.creds, out);
        self.link.publish(&m).await?;
        Ok(m.message_id.unwrap_or_default())
    }

    /// Publishes an already built message (confirmed).
    pub async fn publish(&self, m: &Message) -> Result<(), ClientError> {
        Ok(self.link.publish(m).await?)
    }

    /// Signs and publishes a status message (confirmed).
    pub async fn send_status(
        &self,
        reference: &str,
        status: &str,
        source: Option<&AgencyCode>,
        reason: Option<&str>,
    ) -> Result<(), ClientError> {
        let m = status_message(&self.prefix, &self.creds, reference, status, source, reason);
        Ok(self.link.publish(&m).await?)
    }

    /// Signs and publishes a presence heartbeat (confirmed).
    pub async fn heartbeat(&self, online: bool) -> Result<(), ClientError> {
        let m = presence_message(&self.prefix, &self.creds, online);
        Ok(self.link.publish(&m).await?)
    }

    /// Starts consuming this agency's inbox.
    pub async fn inbox(&self, prefetch: u16) -> Result<Subscription, ClientError> {
        Ok(self
            .link
            .subscribe(
                &format!("{}inbox.{}", self.prefix, self.creds.code),
                prefetch,
                "",
            )
            .await?)
    }

    /// Starts consuming this agency's notices.
    pub async fn notices(&self, prefetch: u16) -> Result<Subscription, ClientError> {
        Ok(self
            .link
            .subscribe(
                &format!("{}notify.{}", self.prefix, self.creds.code),
                prefetch,
                "",
            )
            .await?)
    }

    /// Verifies one inbox delivery and marks repeats.
    pub fn receive(&mut self, inbound: Inbound) -> Result<Received, ClientError> {
        let refuse = |why: String| ClientError::Verify {
            what: "delivery",
            why,
        };
        let m = inbound.message;
        self.creds
            .verify_hub(&m, &format!("deliver.{}", self.creds.code))
            .map_err(refuse)?;
        let from = m
            .header("lgsp-from")
            .and_then(|f| AgencyCode::parse(f).ok())
            .ok_or_else(|| refuse("no valid lgsp-from".into()))?;
        let content_space = m
            .header(crate::core::envelope::CONTENT_SPACE)
            .map(str::to_owned);
        if content_space.is_some() {
            // The content's digest is checked once it is fetched.
            if !m.body.is_empty() {
                return Err(refuse(
                    "a delivery whose content is in a space must have an empty body".into(),
                ));
            }
        } else if m.header("lgsp-digest").unwrap_or("") != body_digest(&m.body) {
            return Err(refuse("body does not match lgsp-digest".into()));
        }
        if m.header("lgsp-kind") == Some("recall") {
            let reference = m
                .header("lgsp-ref")
                .filter(|r| crate::core::envelope::valid_message_id(r))
                .ok_or_else(|| refuse("recall without a valid lgsp-ref".into()))?
                .to_owned();
            // Remembering it as seen makes a later copy of the envelope a repeat.
            let already_received = self.dedupe.seen(from.as_str(), &reference);
            return Ok(Received {
                kind: ReceivedKind::Recall { already_received },
                stale: false,
                from,
                message_id: reference,
                subject: String::new(),
                priority: 5,
                attempt: 1,
                repeat: false,
                content_space: None,
                message: m,
                delivery_tag: inbound.delivery_tag,
            });
        }
        let stale = m
            .header("lgsp-deliver-by")
            .and_then(|d| crate::core::time::parse_rfc3339(d).ok())
            .is_some_and(|d| d <= now_ms());
        let message_id = m.message_id.clone().unwrap_or_default();
        let repeat = !stale && self.dedupe.seen(from.as_str(), &message_id);
        Ok(Received {
            kind: ReceivedKind::Envelope,
            stale,
            from,
            subject: m.header("lgsp-subject").unwrap_or("").to_owned(),
            priority: m
                .header("lgsp-priority")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
            attempt: m
                .header("lgsp-attempt")
                .and_then(|a| a.parse().ok())
                .unwrap_or(1),
            repeat,
            content_space,
            message_id,
            message: m,
            delivery_tag: inbound.delivery_tag,
        })
    }

    /// Verifies one notice.
    pub fn notice(&self, inbound: &Inbound) -> Result<Notice, ClientError> {
        let refuse = |why: String| ClientError::Verify {
            what: "notice",
            why,
        };
        let m = &inbound.message;
        self.creds
            .verify_hub(m, &format!("notice.{}", self.creds.code))
            .map_err(refuse)?;
        if m.header("lgsp-digest") != Some(body_digest(&m.body).as_str()) {
            return Err(refuse("body does not match lgsp-digest".into()));
        }
        serde_json::from_slice(&m.body).map_err(|e| refuse(e.to_string()))
    }

    /// Waits up to `wait` for the hub's `accepted` or `rejected` notice
    /// about the envelope `message_id`, on this agency's notify queue.
    ///
    /// Only that notice is acknowledged. Every other notice received while
    /// waiting is held unacknowledged and, once the wait ends, the consumer
    /// is cancelled and they are all requeued (nack with requeue): they stay
    /// queued, in their order, for the agency's real adapter (marked
    /// redelivered). The consumer has no prefetch limit, so notices queued
    /// ahead of the answer cannot hide it. Returns `Ok(None)` when no answer
    /// came in time; [`ClientError::Verify`] (the answer is requeued too)
    /// when the answer does not verify.
    pub async fn await_answer(
        &self,
        message_id: &str,
        wait: Duration,
    ) -> Result<Option<Notice>, ClientError> {
        let mut sub = self
            .link
            .subscribe(&format!("{}notify.{}", self.prefix, self.creds.code), 0, "")
            .await?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut held = Vec::new();
        let outcome = loop {
            let inbound = match tokio::time::timeout_at(deadline, sub.next()).await {
                Err(_) | Ok(None) => break Ok(None),
                Ok(Some(Err(e))) => break Err(ClientError::from(e)),
                Ok(Some(Ok(i))) => i,
            };
            let m = &inbound.message;
            let answer = m.header("lgsp-ref") == Some(message_id)
                && matches!(m.header("lgsp-notice"), Some("accepted" | "rejected"));
            if !answer {
                held.push(inbound.delivery_tag);
                continue;
            }
            match self.notice(&inbound) {
                Ok(n) => {
                    sub.ack(inbound.delivery_tag).await?;
                    break Ok(Some(n));
                }
                Err(e) => {
                    held.push(inbound.delivery_tag);
                    break Err(e);
                }
            }
        };
        // Stop deliveries first, so the requeued notices do not come back here.
        sub.cancel().await?;
        // Deliveries already on their way still arrive; the stream then ends.
        while let Ok(Some(Ok(i))) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            held.push(i.delivery_tag);
        }
        for tag in held {
            sub.reject(tag, true).await?;
        }
        outcome
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.link.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_forgets_the_oldest() {
        let mut d = Dedupe::new(2);
        assert!(!d.seen("A", "1"));
        assert!(d.seen("A", "1"));
        assert!(!d.seen("B", "1"));
        assert!(!d.seen("A", "2"));
        assert!(!d.seen("A", "1"), "evicted");
    }

    #[test]
    fn message_ids_are_valid_and_distinct() {
        let a = new_message_id();
        let b = new_message_id();
        assert_eq!(a.len(), 26);
        assert!(crate::core::envelope::valid_message_id(&a));
        assert_ne!(a, b);
        assert!(crate::core::envelope::valid_nonce(&new_nonce()));
    }
}

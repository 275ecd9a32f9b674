//! Notices: what truc tells a source about its envelopes (accepted,
//! rejected, delivered, status relays, delay warnings, bounces), and the
//! hub signature on everything truc sends.
//!
//! Invariant: every notice is hub-signed with the *source's* current secret
//! over the canonical form with routing key `notice.<source>`; every delivery
//! with the *destination's* secret and routing key `deliver.<dest>`.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::core::auth::{sign_hmac, Alg};
use crate::core::canonical::canonical_form;
use crate::core::code::AgencyCode;
use crate::core::message::Message;
use crate::core::reason::Reason;
use crate::core::time::format_rfc3339;

/// The `lgsp-notice` kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoticeKind {
    /// The envelope was accepted for delivery.
    Accepted,
    /// The envelope (or status) was refused.
    Rejected,
    /// A destination confirmed receipt (status `01`).
    Delivered,
    /// A status relayed from a destination.
    Status,
    /// A destination has been offline for a while.
    DelayWarning,
    /// Delivery to a destination was given up.
    Bounced,
}

impl NoticeKind {
    /// The wire token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Delivered => "delivered",
            Self::Status => "status",
            Self::DelayWarning => "delay-warning",
            Self::Bounced => "bounced",
        }
    }
}

/// A notice, also the JSON body it is sent with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notice {
    /// Kind.
    pub notice: NoticeKind,
    /// The `message_id` the notice is about.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The source agency (the notice's recipient).
    pub source: AgencyCode,
    /// The destination it concerns, for per-destination notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<AgencyCode>,
    /// Relayed QCVN 102 status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Machine reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Human text.
    #[serde(default)]
    pub detail: String,
    /// For `accepted`: the destinations it will be delivered to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<AgencyCode>,
    /// When truc issued it (RFC 3339).
    pub at: String,
}

/// A fresh message id for what the hub originates.
pub fn fresh_message_id(prefix: char) -> String {
    let ms = crate::core::time::now_ms();
    let r: u64 = rand::thread_rng().gen();
    format!("{prefix}{ms:012x}{r:016x}")
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect()
}

/// Signs `msg` as the hub: `lgsp-hub-signature` over its canonical form under
/// `routing_key`, with `secret`.
pub fn hub_sign(msg: &mut Message, routing_key: &str, secret: &str) {
    msg.headers.remove("lgsp-hub-signature");
    // The hub builds every header itself from checked text, so this cannot fail;
    // an empty signature would be refused by the recipient, never trusted.
    let sig = canonical_form(msg, routing_key)
        .map(|c| sign_hmac(Alg::HmacSha256, secret, c.as_bytes()))
        .unwrap_or_default();
    msg.set_header("lgsp-hub-signature", sig);
}

impl Notice {
    /// A notice of `kind` about `reference`, for `source`, issued at `at_ms`.
    pub fn new(kind: NoticeKind, source: AgencyCode, reference: &str, at_ms: i64) -> Self {
        Self {
            notice: kind,
            reference: reference.to_owned(),
            source,
            dest: None,
            status: None,
            reason: None,
            detail: String::new(),
            destinations: Vec::new(),
            at: format_rfc3339(at_ms),
        }
    }

    /// The message to publish on exchange `<prefix>notify`, signed with `secret`.
    pub fn to_message(&self, prefix: &str, secret: &str) -> Message {
        let mut m = Message {
            exchange: format!("{prefix}notify"),
            routing_key: self.source.to_string(),
            message_id: Some(fresh_message_id('n')),
            content_type: Some("application/json".into()),
            body: serde_json::to_vec(self).unwrap_or_default().into(),
            ..Message::default()
        };
        m.set_header("lgsp-version", "1");
        m.set_header("lgsp-notice", self.notice.as_str());
        m.set_header("lgsp-ref", &self.reference);
        m.set_header("lgsp-to", self.source.as_str());
        m.set_header("lgsp-time", &self.at);
        // The digest puts the JSON body under the hub signature too.
        m.set_header("lgsp-digest", crate::core::auth::body_digest(&m.body));
        if let Some(d) = &self.dest {
            m.set_header("lgsp-dest", d.as_str());
        }
        if let Some(s) = &self.status {
            m.set_header("lgsp-status", s);
        }
        if let Some(r) = self.reason {
            m.set_header("lgsp-reason", r.as_str());
        }
        if !self.detail.is_empty() {
            m.set_header("lgsp-detail", clean(&self.detail));
        }
        hub_sign(&mut m, &format!("notice.{}", self.source), secret);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::auth::verify;

    #[test]
    fn notice_is_signed_for_the_source() {
        let src = AgencyCode::parse("000.00.31.H41").unwrap();
        let mut n = Notice::new(NoticeKind::Bounced, src, "m1", 0);
        n.dest = Some(AgencyCode::parse("X1").unwrap());
        n.reason = Some(Reason::UnknownDestination);
        n.detail = "no agency X1\nregistered".into();
        let m = n.to_message("lgsp.", "sec");
        assert_eq!(m.exchange, "lgsp.notify");
        assert_eq!(m.routing_key, "000.00.31.H41");
        assert_eq!(m.header("lgsp-reason"), Some("unknown-destination"));
        assert_eq!(m.header("lgsp-detail"), Some("no agency X1 registered"));
        let canon = canonical_form(&m, "notice.000.00.31.H41").unwrap();
        verify(
            Alg::HmacSha256,
            "sec",
            None,
            canon.as_bytes(),
            m.header("lgsp-hub-signature").unwrap(),
        )
        .unwrap();
        let back: Notice = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(back, n);
    }
}

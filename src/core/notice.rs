//! Notices: what truc tells a source about its envelopes (accepted,
//! rejected, delivered, status relays, delay warnings, bounces), and the
//! hub signature on everything truc sends.
//!
//! Invariant: every notice is hub-signed with a secret of the *source* over
//! the canonical form with routing key `notice.<source>`; every delivery
//! with a secret of the *destination* and routing key `deliver.<dest>`. The
//! access key whose secret signed is named in `lgsp-hub-key`, which is an
//! `lgsp-` header and therefore covered by the signature like any other.

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

/// The header naming the access key whose secret made `lgsp-hub-signature`.
pub const HUB_KEY_HEADER: &str = "lgsp-hub-key";

/// The key the hub signs a message for an agency with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubKey<'a> {
    /// The access key named in `lgsp-hub-key`; `None` only to rebuild what
    /// hubs before `lgsp-hub-key` sent (the published test vectors).
    pub access_key: Option<&'a str>,
    /// Its secret (HMAC key: the UTF-8 bytes).
    pub secret: &'a str,
}

impl<'a> HubKey<'a> {
    /// The key `access_key` with `secret`.
    pub fn new(access_key: &'a str, secret: &'a str) -> Self {
        Self {
            access_key: Some(access_key),
            secret,
        }
    }
}

/// Signs `msg` as the hub: sets `lgsp-hub-key` to the key's access key, then
/// `lgsp-hub-signature` over the canonical form under `routing_key` (which
/// covers `lgsp-hub-key`), with the key's secret.
pub fn hub_sign(msg: &mut Message, routing_key: &str, key: HubKey<'_>) {
    msg.headers.remove("lgsp-hub-signature");
    msg.headers.remove(HUB_KEY_HEADER);
    if let Some(k) = key.access_key {
        msg.set_header(HUB_KEY_HEADER, k);
    }
    // The hub builds every header itself from checked text, so this cannot fail;
    // an empty signature would be refused by the recipient, never trusted.
    let sig = canonical_form(msg, routing_key)
        .map(|c| sign_hmac(Alg::HmacSha256, key.secret, c.as_bytes()))
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

    /// The message to publish on exchange `<prefix>notify`, signed with `key`.
    pub fn to_message(&self, prefix: &str, key: HubKey<'_>) -> Message {
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
        hub_sign(&mut m, &format!("notice.{}", self.source), key);
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
        let m = n.to_message("lgsp.", HubKey::new("AKOLD0000001", "sec"));
        assert_eq!(m.header(HUB_KEY_HEADER), Some("AKOLD0000001"));
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
        // lgsp-hub-key is signed: naming another key breaks the signature.
        let mut forged = m.clone();
        forged.set_header(HUB_KEY_HEADER, "AKNEW0000002");
        let canon = canonical_form(&forged, "notice.000.00.31.H41").unwrap();
        assert!(canon.contains("\nlgsp-hub-key:AKNEW0000002\n"));
        assert!(verify(
            Alg::HmacSha256,
            "sec",
            None,
            canon.as_bytes(),
            m.header("lgsp-hub-signature").unwrap(),
        )
        .is_err());
    }

    #[test]
    fn signing_again_replaces_the_key_and_the_signature() {
        let mut m = Notice::new(
            NoticeKind::Accepted,
            AgencyCode::parse("A1").unwrap(),
            "m1",
            0,
        )
        .to_message("lgsp.", HubKey::new("AKOLD0000001", "old"));
        hub_sign(&mut m, "notice.A1", HubKey::new("AKNEW0000002", "new"));
        assert_eq!(m.header(HUB_KEY_HEADER), Some("AKNEW0000002"));
        let canon = canonical_form(&m, "notice.A1").unwrap();
        let sig = m.header("lgsp-hub-signature").unwrap();
        assert!(verify(Alg::HmacSha256, "new", None, canon.as_bytes(), sig).is_ok());
        assert!(verify(Alg::HmacSha256, "old", None, canon.as_bytes(), sig).is_err());
        // Without a key name (as hubs before lgsp-hub-key signed) no header is set.
        hub_sign(
            &mut m,
            "notice.A1",
            HubKey {
                access_key: None,
                secret: "new",
            },
        );
        assert_eq!(m.header(HUB_KEY_HEADER), None);
    }
}

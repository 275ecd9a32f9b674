//! Building signed messages as an adapter does: credentials, fresh ids and
//! nonces, the envelope, status and heartbeat messages, and the check of a
//! hub signature. Pure: the client library and the reference adapter publish
//! what this module builds; the router's unit tests use it as their sender.
//!
//! Invariant: everything built here is signed over the canonical form of
//! [`crate::core::canonical`], exactly as `docs/PROTOCOL.md` tells adapters in
//! other languages to do it.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::core::auth::{body_digest, sign_hmac, verify, Alg};
use crate::core::canonical::canonical_form;
use crate::core::code::AgencyCode;
use crate::core::envelope::Priority;
use crate::core::message::Message;
use crate::core::time::{format_rfc3339, now_ms};

/// An agency's credentials: the key it signs with and, during a key
/// rotation, the keys it held before (only to verify what the hub signed
/// with them, named in `lgsp-hub-key`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// The agency code.
    pub code: AgencyCode,
    /// Access key.
    pub access_key: String,
    /// Secret.
    pub secret: String,
    /// Earlier keys still held (optional in the file; absent = none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<KeyPair>,
}

/// An access key with its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPair {
    /// Access key.
    pub access_key: String,
    /// Secret.
    pub secret: String,
}

impl Credentials {
    /// Credentials holding the one key `access_key` / `secret`.
    pub fn new(code: AgencyCode, access_key: String, secret: String) -> Self {
        Self {
            code,
            access_key,
            secret,
            previous_keys: Vec::new(),
        }
    }

    /// Every access key held: the current one first, then the earlier ones.
    pub fn held_keys(&self) -> Vec<&str> {
        std::iter::once(self.access_key.as_str())
            .chain(self.previous_keys.iter().map(|k| k.access_key.as_str()))
            .collect()
    }

    /// The secret of `access_key`, if held.
    pub fn secret_of(&self, access_key: &str) -> Option<&str> {
        if access_key == self.access_key {
            return Some(&self.secret);
        }
        self.previous_keys
            .iter()
            .find(|k| k.access_key == access_key)
            .map(|k| k.secret.as_str())
    }

    /// Checks the hub signature of `m` received on `routing_key`
    /// (`deliver.<code>` or `notice.<code>`) with the secret of the key
    /// named in `lgsp-hub-key` (the current secret when the header is
    /// absent, as from hubs before it existed). The error says which key
    /// was named and which keys these credentials hold.
    pub fn verify_hub(&self, m: &Message, routing_key: &str) -> Result<(), String> {
        let named = m.header(crate::core::notice::HUB_KEY_HEADER);
        let held = self.held_keys().join(", ");
        let secret = match named {
            None => &self.secret,
            Some(k) => self.secret_of(k).ok_or_else(|| {
                format!(
                    "signed with key {k}, which these credentials do not hold (they hold {held})"
                )
            })?,
        };
        verify_hub_signature(m, routing_key, secret).map_err(|e| {
            let named = named.unwrap_or("(no lgsp-hub-key; tried the current key)");
            format!("{e} (signed with key {named}; these credentials hold {held})")
        })
    }
}

/// A fresh, sortable message id (26 characters).
pub fn new_message_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut ms = now_ms() as u64;
    let mut head = [0u8; 10];
    for slot in head.iter_mut().rev() {
        *slot = ALPHABET[(ms & 31) as usize];
        ms >>= 5;
    }
    let mut rng = rand::thread_rng();
    let tail: String = (0..16)
        .map(|_| ALPHABET[rng.gen_range(0..32)] as char)
        .collect();
    format!("{}{tail}", String::from_utf8_lossy(&head))
}

/// A fresh nonce (32 hex characters).
pub fn new_nonce() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    hex::encode(b)
}

/// An envelope to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Destinations.
    pub to: Vec<AgencyCode>,
    /// Subject.
    pub subject: String,
    /// Priority.
    pub priority: Priority,
    /// `lgsp-type`.
    pub data_type: String,
    /// AMQP content type.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
    /// Message id (generated when `None`).
    pub message_id: Option<String>,
    /// Further `lgsp-` headers (`lgsp-deliver-by`, `lgsp-bounce-after`…).
    pub extra: Vec<(String, String)>,
}

/// Signs `m` (which must hold every `lgsp-` header but the signature) with HMAC.
pub fn sign(m: &mut Message, creds: &Credentials, alg: Alg) {
    m.set_header("lgsp-version", "1");
    m.set_header("lgsp-from", creds.code.as_str());
    m.set_header("lgsp-key", &creds.access_key);
    m.set_header("lgsp-alg", alg.as_str());
    m.set_header(
        "lgsp-time",
        format_rfc3339(now_ms() / 1000 * 1000).replace(".000Z", "Z"),
    );
    m.set_header("lgsp-nonce", new_nonce());
    m.headers.remove("lgsp-signature");
    let canon = canonical_form(m, &m.routing_key.clone()).unwrap_or_default();
    m.set_header(
        "lgsp-signature",
        sign_hmac(alg, &creds.secret, canon.as_bytes()),
    );
}

/// The signed message for envelope `out` from `creds`.
pub fn envelope_message(prefix: &str, creds: &Credentials, out: &Outgoing) -> Message {
    let mut m = Message {
        exchange: format!("{prefix}ingress"),
        routing_key: format!("envelope.{}", creds.code),
        message_id: Some(out.message_id.clone().unwrap_or_else(new_message_id)),
        content_type: Some(out.content_type.clone()),
        timestamp: Some((now_ms() / 1000) as u64),
        // Flash envelopes overtake a backlog in the ingress priority queue too.
        priority: Some(out.priority.amqp_priority()),
        body: out.body.clone().into(),
        ..Message::default()
    };
    let to: Vec<&str> = out.to.iter().map(AgencyCode::as_str).collect();
    m.set_header("lgsp-to", to.join(","));
    m.set_header("lgsp-subject", &out.subject);
    m.set_header("lgsp-priority", out.priority.code().to_string());
    m.set_header("lgsp-type", &out.data_type);
    m.set_header("lgsp-digest", body_digest(&out.body));
    for (k, v) in &out.extra {
        m.set_header(k, v);
    }
    sign(&mut m, creds, Alg::HmacSha256);
    m
}

/// A signed request for an HTTPS gateway session (routing key
/// `session.<code>`, empty body): its `lgsp-*` headers and `Message-Id` go
/// as HTTP headers to `POST /v1/sessions` (docs/GATEWAY.md).
pub fn session_message(creds: &Credentials) -> Message {
    let mut m = Message {
        routing_key: format!("session.{}", creds.code),
        message_id: Some(new_message_id()),
        ..Message::default()
    };
    m.set_header("lgsp-digest", body_digest(b""));
    sign(&mut m, creds, Alg::HmacSha256);
    m
}

/// The signed status message `status` about `reference`.
pub fn status_message(
    prefix: &str,
    creds: &Credentials,
    reference: &str,
    status: &str,
    source: Option<&AgencyCode>,
    reason: Option<&str>,
) -> Message {
    let mut m = Message {
        exchange: format!("{prefix}ingress"),
        routing_key: format!("status.{}", creds.code),
        message_id: Some(new_message_id()),
        content_type: Some("text/plain".into()),
        timestamp: Some((now_ms() / 1000) as u64),
        body: Vec::new().into(),
        ..Message::default()
    };
    m.set_header("lgsp-ref", reference);
    m.set_header("lgsp-status", status);
    m.set_header("lgsp-digest", body_digest(b""));
    if let Some(s) = source {
        m.set_header("lgsp-to", s.as_str());
    }
    if let Some(r) = reason {
        m.set_header("lgsp-reason", r);
    }
    sign(&mut m, creds, Alg::HmacSha256);
    m
}

/// The signed presence heartbeat of `creds`: routing key `presence.<code>`,
/// header `lgsp-state` = `online` or `offline`, empty body, no digest.
pub fn presence_message(prefix: &str, creds: &Credentials, online: bool) -> Message {
    let mut m = Message {
        exchange: format!("{prefix}ingress"),
        routing_key: format!("presence.{}", creds.code),
        message_id: Some(new_message_id()),
        timestamp: Some((now_ms() / 1000) as u64),
        body: Vec::new().into(),
        ..Message::default()
    };
    m.set_header("lgsp-state", if online { "online" } else { "offline" });
    sign(&mut m, creds, Alg::HmacSha256);
    m
}

/// Checks the hub signature of a message received on `routing_key`
/// (`deliver.<code>` or `notice.<code>`).
pub fn verify_hub_signature(m: &Message, routing_key: &str, secret: &str) -> Result<(), String> {
    let sig = m
        .header("lgsp-hub-signature")
        .ok_or("no lgsp-hub-signature")?;
    let canon = canonical_form(m, routing_key).map_err(|e| e.to_string())?;
    verify(Alg::HmacSha256, secret, None, canon.as_bytes(), sig).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::notice::{hub_sign, HubKey, Notice, NoticeKind, HUB_KEY_HEADER};

    fn signed_notice(key: HubKey<'_>) -> Message {
        Notice::new(
            NoticeKind::Accepted,
            AgencyCode::parse("A1").unwrap(),
            "m1",
            0,
        )
        .to_message("lgsp.", key)
    }

    #[test]
    fn credentials_file_without_previous_keys_still_reads() {
        let c: Credentials =
            serde_json::from_str(r#"{"code":"A1","access_key":"AKNEW","secret":"new"}"#).unwrap();
        assert!(c.previous_keys.is_empty());
        assert!(!serde_json::to_string(&c).unwrap().contains("previous_keys"));
        let c: Credentials = serde_json::from_str(
            r#"{"code":"A1","access_key":"AKNEW","secret":"new",
                "previous_keys":[{"access_key":"AKOLD","secret":"old"}]}"#,
        )
        .unwrap();
        assert_eq!(c.held_keys(), vec!["AKNEW", "AKOLD"]);
        assert_eq!(c.secret_of("AKOLD"), Some("old"));
        assert_eq!(c.secret_of("AKOTHER"), None);
    }

    #[test]
    fn hub_messages_verify_with_the_key_they_name() {
        let mut both = Credentials::new(
            AgencyCode::parse("A1").unwrap(),
            "AKNEW".into(),
            "new".into(),
        );
        both.previous_keys.push(KeyPair {
            access_key: "AKOLD".into(),
            secret: "old".into(),
        });
        let old_only = Credentials::new(both.code.clone(), "AKOLD".into(), "old".into());
        let by_old = signed_notice(HubKey::new("AKOLD", "old"));
        let by_new = signed_notice(HubKey::new("AKNEW", "new"));
        both.verify_hub(&by_old, "notice.A1").unwrap();
        both.verify_hub(&by_new, "notice.A1").unwrap();
        old_only.verify_hub(&by_old, "notice.A1").unwrap();
        let e = old_only.verify_hub(&by_new, "notice.A1").unwrap_err();
        assert!(
            e.contains("signed with key AKNEW") && e.contains("hold AKOLD"),
            "{e}"
        );
        // A key the credentials hold, but the wrong secret: says which key.
        let wrong = Credentials::new(both.code.clone(), "AKOLD".into(), "not-old".into());
        let e = wrong.verify_hub(&by_old, "notice.A1").unwrap_err();
        assert!(e.contains("signed with key AKOLD"), "{e}");
        // Naming another held key than the one that signed fails: the header is signed.
        let mut relabelled = by_old.clone();
        relabelled.set_header(HUB_KEY_HEADER, "AKNEW");
        assert!(both.verify_hub(&relabelled, "notice.A1").is_err());
        // No lgsp-hub-key (an older hub): the current secret.
        let mut legacy = by_new.clone();
        hub_sign(
            &mut legacy,
            "notice.A1",
            HubKey {
                access_key: None,
                secret: "new",
            },
        );
        both.verify_hub(&legacy, "notice.A1").unwrap();
        assert!(old_only.verify_hub(&legacy, "notice.A1").is_err());
    }
}

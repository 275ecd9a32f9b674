//! The canonical form that every signature in the wire contract covers.
//!
//! ```text
//! LGSP1
//! <routing key>
//! <message_id>
//! <content_type, empty line if absent>
//! name:value          for every `lgsp-` header except lgsp-signature and
//! ...                 lgsp-hub-signature, sorted by name (bytewise)
//! ```
//! Lines are joined by `\n` with no trailing newline. Invariant: this module
//! is the single definition; signing and verification both call it.

use crate::core::message::{HeaderValue, Message};

/// Header prefix of every contract header.
pub const HEADER_PREFIX: &str = "lgsp-";
/// Headers that are never part of the canonical form.
pub const UNSIGNED_HEADERS: [&str; 2] = ["lgsp-signature", "lgsp-hub-signature"];

/// Why a canonical form cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// An `lgsp-` header is not a UTF-8 long string.
    #[error("header {0} is not a UTF-8 long string")]
    NotText(String),
    /// A value (or the routing key, message id, content type) holds a control character.
    #[error("{0} contains a control character")]
    ControlChar(String),
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Builds the canonical form of `msg` as it would be signed under `routing_key`.
pub fn canonical_form(msg: &Message, routing_key: &str) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(256 + msg.headers.len() * 48);
    out.push_str("LGSP1\n");
    for (what, v) in [
        ("routing key", routing_key),
        ("message_id", msg.message_id.as_deref().unwrap_or("")),
        ("content_type", msg.content_type.as_deref().unwrap_or("")),
    ] {
        if has_control(v) {
            return Err(CanonicalError::ControlChar(what.into()));
        }
        out.push_str(v);
        out.push('\n');
    }
    // BTreeMap<String, _> iterates in bytewise order of the names.
    for (name, value) in &msg.headers {
        if !name.starts_with(HEADER_PREFIX) || UNSIGNED_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let HeaderValue::Text(v) = value else {
            return Err(CanonicalError::NotText(name.clone()));
        };
        if has_control(name) || has_control(v) {
            return Err(CanonicalError::ControlChar(name.clone()));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(v);
        out.push('\n');
    }
    out.pop();
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The design's test vector, as a message.
    pub(crate) fn vector_message() -> Message {
        let mut m = Message {
            routing_key: "envelope.000.00.31.H41".into(),
            message_id: Some("01JD0000000000000000000001".into()),
            content_type: Some("application/edxml+xml".into()),
            body: "Xin chào, Sở Y tế!".as_bytes().into(),
            ..Message::default()
        };
        for (k, v) in [
            ("lgsp-alg", "hmac-sha256"),
            ("lgsp-bounce-after", "4h"),
            (
                "lgsp-digest",
                "sha256=a305c238ea36409c4e37fb0b33b962dcee6636d15ea5285b34756b5a21431ab3",
            ),
            ("lgsp-from", "000.00.31.H41"),
            ("lgsp-key", "AK3F9Q2ZLMXW"),
            ("lgsp-nonce", "b3c1d2e4f5a6978812345678"),
            ("lgsp-priority", "1"),
            ("lgsp-subject", "Công văn số 12/SYT-VP"),
            ("lgsp-time", "2026-11-22T08:00:00Z"),
            ("lgsp-to", "000.00.32.H41,000.00.33.H41"),
            ("lgsp-type", "edoc"),
            ("lgsp-version", "1"),
            (
                "lgsp-signature",
                "UleTPnsaHshzCTxkn3aX4wSXe9UJF+Tj5PTCXaLDtag=",
            ),
            ("x-other", "not signed"),
        ] {
            m.set_header(k, v);
        }
        m
    }

    pub(crate) const VECTOR_CANONICAL: &str = "LGSP1
envelope.000.00.31.H41
01JD0000000000000000000001
application/edxml+xml
lgsp-alg:hmac-sha256
lgsp-bounce-after:4h
lgsp-digest:sha256=a305c238ea36409c4e37fb0b33b962dcee6636d15ea5285b34756b5a21431ab3
lgsp-from:000.00.31.H41
lgsp-key:AK3F9Q2ZLMXW
lgsp-nonce:b3c1d2e4f5a6978812345678
lgsp-priority:1
lgsp-subject:Công văn số 12/SYT-VP
lgsp-time:2026-11-22T08:00:00Z
lgsp-to:000.00.32.H41,000.00.33.H41
lgsp-type:edoc
lgsp-version:1";

    #[test]
    fn design_test_vector_canonical_form() {
        let m = vector_message();
        assert_eq!(
            canonical_form(&m, &m.routing_key).unwrap(),
            VECTOR_CANONICAL
        );
    }

    #[test]
    fn absent_content_type_is_an_empty_line_and_unknown_lgsp_headers_are_signed() {
        let mut m = Message {
            message_id: Some("m1".into()),
            ..Message::default()
        };
        m.set_header("lgsp-zz-extension", "v");
        m.set_header("lgsp-a", "1");
        assert_eq!(
            canonical_form(&m, "status.A").unwrap(),
            "LGSP1\nstatus.A\nm1\n\nlgsp-a:1\nlgsp-zz-extension:v"
        );
    }

    #[test]
    fn refuses_non_text_and_control_characters() {
        let mut m = Message::default();
        m.headers
            .insert("lgsp-x".into(), HeaderValue::Other("integer".into()));
        assert!(matches!(
            canonical_form(&m, "k"),
            Err(CanonicalError::NotText(_))
        ));
        let mut m = Message::default();
        m.set_header("lgsp-subject", "a\nlgsp-to:B");
        assert!(matches!(
            canonical_form(&m, "k"),
            Err(CanonicalError::ControlChar(_))
        ));
    }
}

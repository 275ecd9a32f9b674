//! The typed forms of what adapters publish: envelopes, status messages and
//! presence heartbeats, parsed and validated from a [`Message`]. Pure, no I/O.
//!
//! Parsing happens in two steps, because the contract answers an
//! authenticated sender and stays silent to everyone else:
//! 1. [`Signed::parse`] reads only what is needed to check the signature
//!    (kind, sender, key, algorithm, time, nonce). A failure here is answered
//!    with nothing (the input is quarantined).
//! 2. after the signature verifies, [`Payload::parse`] reads the kind's own
//!    fields; a failure is answered with a `rejected malformed` notice.

use std::time::Duration;

use crate::core::auth::Alg;
use crate::core::code::AgencyCode;
use crate::core::message::Message;
use crate::core::reason::Reason;
use crate::core::time::{parse_duration, parse_rfc3339};

/// Headers only the hub writes; an envelope carrying one is malformed.
pub const HUB_HEADERS: [&str; 8] = [
    "lgsp-dest",
    "lgsp-accepted-at",
    "lgsp-attempt",
    "lgsp-kind",
    "lgsp-notice",
    "lgsp-hub-key",
    "lgsp-content-space",
    "lgsp-hub-signature",
];

/// The hub's header on a delivery whose content is in an upload space (its
/// id); the body is then empty.
pub const CONTENT_SPACE: &str = "lgsp-content-space";

/// The source's header naming the upload space that holds its envelope's
/// content.
pub const SPACE: &str = "lgsp-space";

/// Most destinations one envelope may name.
pub const MAX_DESTINATIONS: usize = 500;
/// Longest subject, in characters.
pub const MAX_SUBJECT_CHARS: usize = 1000;

/// A refusal: the contract reason and a human detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refusal {
    /// Machine reason code.
    pub reason: Reason,
    /// Human text for the notice and the log.
    pub detail: String,
}

impl Refusal {
    /// A refusal with `reason` and `detail`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

fn malformed(detail: impl Into<String>) -> Refusal {
    Refusal::new(Reason::Malformed, detail)
}

/// What a message on the ingress exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A document or data for destinations.
    Envelope,
    /// A status receipt about an envelope.
    Status,
    /// A presence heartbeat.
    Presence,
    /// A request for a gateway session (over HTTPS only).
    Session,
}

impl Kind {
    /// The routing-key token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Envelope => "envelope",
            Self::Status => "status",
            Self::Presence => "presence",
            Self::Session => "session",
        }
    }
}

/// Checks a `message_id`: 1–64 of `A-Z a-z 0-9 - _`.
pub fn valid_message_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a nonce: 16–64 of `A-Z a-z 0-9 - _ . ~ + / =`.
pub fn valid_nonce(s: &str) -> bool {
    (16..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b))
}

/// What step 1 reads: enough to authenticate the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// Kind from the routing key.
    pub kind: Kind,
    /// The sender (`lgsp-from`, equal to the routing-key code).
    pub from: AgencyCode,
    /// AMQP `message_id`.
    pub message_id: String,
    /// `lgsp-key`.
    pub key: String,
    /// `lgsp-alg`.
    pub alg: Alg,
    /// `lgsp-time`, ms since the epoch.
    pub time_ms: i64,
    /// `lgsp-nonce`.
    pub nonce: String,
    /// `lgsp-signature` (base64).
    pub signature: String,
}

fn required<'a>(msg: &'a Message, name: &str) -> Result<&'a str, Refusal> {
    match msg.headers.get(name) {
        None => Err(malformed(format!("missing header {name}"))),
        Some(v) => v
            .as_text()
            .ok_or_else(|| malformed(format!("header {name} is not a UTF-8 long string"))),
    }
}

fn optional<'a>(msg: &'a Message, name: &str) -> Result<Option<&'a str>, Refusal> {
    match msg.headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_text()
            .map(Some)
            .ok_or_else(|| malformed(format!("header {name} is not a UTF-8 long string"))),
    }
}

impl Signed {
    /// Step 1: reads the authentication fields. Every error is unauthenticated.
    pub fn parse(msg: &Message) -> Result<Self, Refusal> {
        let version = required(msg, "lgsp-version")?;
        if version != "1" {
            return Err(Refusal::new(
                Reason::UnsupportedVersion,
                format!("lgsp-version {version:?} is not supported (expected \"1\")"),
            ));
        }
        let (kind, rk_code) = msg
            .routing_key
            .split_once('.')
            .ok_or_else(|| malformed("routing key must be <kind>.<from-code>"))?;
        let kind = match kind {
            "envelope" => Kind::Envelope,
            "status" => Kind::Status,
            "presence" => Kind::Presence,
            "session" => Kind::Session,
            other => return Err(malformed(format!("unknown kind {other:?} in routing key"))),
        };
        let from_text = required(msg, "lgsp-from")?;
        let from =
            AgencyCode::parse(from_text).map_err(|e| malformed(format!("lgsp-from: {e}")))?;
        if rk_code != from_text {
            return Err(malformed(format!(
                "routing key code {rk_code:?} differs from lgsp-from {from_text:?}"
            )));
        }
        let message_id = msg
            .message_id
            .as_deref()
            .filter(|m| valid_message_id(m))
            .ok_or_else(|| malformed("message_id must be 1-64 of A-Z a-z 0-9 - _"))?
            .to_owned();
        let key = required(msg, "lgsp-key")?.to_owned();
        if key.is_empty() || key.len() > 64 {
            return Err(malformed("lgsp-key must be 1-64 characters"));
        }
        let alg_text = required(msg, "lgsp-alg")?;
        let alg = Alg::parse(alg_text)
            .ok_or_else(|| malformed(format!("lgsp-alg {alg_text:?} is not supported")))?;
        let time_ms = parse_rfc3339(required(msg, "lgsp-time")?)
            .map_err(|e| malformed(format!("lgsp-time: {e}")))?;
        let nonce = required(msg, "lgsp-nonce")?;
        if !valid_nonce(nonce) {
            return Err(malformed(
                "lgsp-nonce must be 16-64 of A-Z a-z 0-9 - _ . ~ + / =",
            ));
        }
        let signature = required(msg, "lgsp-signature")?.to_owned();
        Ok(Self {
            kind,
            from,
            message_id,
            key,
            alg,
            time_ms,
            nonce: nonce.to_owned(),
            signature,
        })
    }
}

/// QCVN 102 Priority code.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Priority(u8);

impl Priority {
    /// Thường (normal).
    pub const NORMAL: Priority = Priority(0);
    /// Hỏa tốc hẹn giờ (flash with appointed time): needs a deadline.
    pub const FLASH_APPOINTED: Priority = Priority(4);

    /// Parses `0`–`4`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "0" | "1" | "2" | "3" | "4" => Some(Self(s.as_bytes()[0] - b'0')),
            _ => None,
        }
    }

    /// From a number 0–4.
    pub fn new(n: u8) -> Option<Self> {
        (n <= 4).then_some(Self(n))
    }

    /// The code, 0–4.
    pub fn code(self) -> u8 {
        self.0
    }

    /// AMQP priority of deliveries: code + 1.
    pub fn amqp_priority(self) -> u8 {
        self.0 + 1
    }
}

/// The fields of an envelope (kind `envelope`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeFields {
    /// Destinations, in the order given, without repeats.
    pub to: Vec<AgencyCode>,
    /// `lgsp-subject`.
    pub subject: String,
    /// `lgsp-priority` (policy default when absent).
    pub priority: Priority,
    /// `lgsp-type`.
    pub data_type: String,
    /// `lgsp-protocol`.
    pub protocol: Option<String>,
    /// `lgsp-digest`.
    pub digest: String,
    /// `lgsp-deliver-by`, ms.
    pub deliver_by_ms: Option<i64>,
    /// `lgsp-not-before`, ms.
    pub not_before_ms: Option<i64>,
    /// `lgsp-bounce-after`.
    pub bounce_after: Option<Duration>,
    /// `lgsp-max-attempts`.
    pub max_attempts: Option<u32>,
    /// `lgsp-space`: the upload space holding the content (then the body
    /// is empty and `digest` is the content's); the router also sets it for
    /// a body the gateway kept in a space.
    pub space: Option<String>,
    /// The content's size when it is in a space (set by the router once it
    /// checked the space).
    pub space_size: Option<u64>,
}

pub use crate::core::timeline::StatusCode;

/// QCVN 102 status codes a status message may carry, as written on the wire.
pub const STATUS_CODES: [&str; 9] = ["01", "02", "03", "04", "05", "06", "13", "15", "16"];

/// The fields of a status message (kind `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusFields {
    /// `lgsp-ref`: the envelope's `message_id`.
    pub reference: String,
    /// `lgsp-status`.
    pub status: StatusCode,
    /// `lgsp-reason`.
    pub reason: Option<String>,
    /// `lgsp-digest`.
    pub digest: String,
    /// `lgsp-to`: the envelope's source, when the sender names it.
    pub to: Option<AgencyCode>,
}

/// The fields of a presence heartbeat (kind `presence`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceFields {
    /// `lgsp-state`: true for `online`.
    pub online: bool,
}

/// The fields of a session request (kind `session`, gateway only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFields {
    /// `lgsp-digest` of the body (normally empty).
    pub digest: String,
}

/// Step 2: the kind's own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// An envelope.
    Envelope(EnvelopeFields),
    /// A status message.
    Status(StatusFields),
    /// A heartbeat.
    Presence(PresenceFields),
    /// A session request.
    Session(SessionFields),
}

/// Whether `d` is a digest as written on the wire: `sha256=<64 lowercase hex>`.
pub fn is_digest(d: &str) -> bool {
    d.len() == 71
        && d.starts_with("sha256=")
        && d[7..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `id` has the form of an upload space's id: 32 lowercase hex digits.
pub fn is_space_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_digest(msg: &Message) -> Result<String, Refusal> {
    let d = required(msg, "lgsp-digest")?;
    if !is_digest(d) {
        return Err(malformed("lgsp-digest must be sha256=<64 lowercase hex>"));
    }
    Ok(d.to_owned())
}

fn valid_token(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
}

impl Payload {
    /// Step 2: parses the fields of `kind`, with `default_priority` for
    /// envelopes that name none.
    pub fn parse(kind: Kind, msg: &Message, default_priority: Priority) -> Result<Self, Refusal> {
        for (name, v) in &msg.headers {
            if let Some(t) = v.as_text() {
                if name.starts_with("lgsp-") && t.chars().any(char::is_control) {
                    return Err(malformed(format!(
                        "header {name} contains a control character"
                    )));
                }
            }
        }
        match kind {
            Kind::Envelope => Self::parse_envelope(msg, default_priority).map(Self::Envelope),
            Kind::Status => Self::parse_status(msg).map(Self::Status),
            Kind::Presence => {
                let online = match required(msg, "lgsp-state")? {
                    "online" => true,
                    "offline" => false,
                    other => {
                        return Err(malformed(format!(
                            "lgsp-state {other:?} must be online or offline"
                        )))
                    }
                };
                Ok(Self::Presence(PresenceFields { online }))
            }
            Kind::Session => Ok(Self::Session(SessionFields {
                digest: parse_digest(msg)?,
            })),
        }
    }

    fn parse_envelope(
        msg: &Message,
        default_priority: Priority,
    ) -> Result<EnvelopeFields, Refusal> {
        for reserved in HUB_HEADERS {
            if msg.headers.contains_key(reserved) {
                return Err(malformed(format!(
                    "{reserved} is set by the hub, not by a source"
                )));
            }
        }
        let to_text = required(msg, "lgsp-to")?;
        let mut to: Vec<AgencyCode> = Vec::new();
        for part in to_text.split(',') {
            let code = AgencyCode::parse(part)
                .map_err(|e| malformed(format!("lgsp-to entry {part:?}: {e}")))?;
            if !to.contains(&code) {
                to.push(code);
            }
        }
        if to.len() > MAX_DESTINATIONS {
            return Err(malformed(format!(
                "lgsp-to names more than {MAX_DESTINATIONS} destinations"
            )));
        }
        let subject = optional(msg, "lgsp-subject")?.unwrap_or("").to_owned();
        if subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(malformed(format!(
                "lgsp-subject is longer than {MAX_SUBJECT_CHARS} characters"
            )));
        }
        let priority = match optional(msg, "lgsp-priority")? {
            None => default_priority,
            Some(p) => Priority::parse(p)
                .ok_or_else(|| malformed(format!("lgsp-priority {p:?} must be 0-4")))?,
        };
        let data_type = required(msg, "lgsp-type")?;
        if !valid_token(data_type) {
            return Err(malformed("lgsp-type must be 1-64 of A-Z a-z 0-9 - _ . +"));
        }
        let protocol = optional(msg, "lgsp-protocol")?;
        if let Some(p) = protocol {
            if !valid_token(p) {
                return Err(malformed(
                    "lgsp-protocol must be 1-64 of A-Z a-z 0-9 - _ . +",
                ));
            }
        }
        let time = |name: &str| -> Result<Option<i64>, Refusal> {
            optional(msg, name)?
                .map(|t| parse_rfc3339(t).map_err(|e| malformed(format!("{name}: {e}"))))
                .transpose()
        };
        let deliver_by_ms = time("lgsp-deliver-by")?;
        let not_before_ms = time("lgsp-not-before")?;
        if priority == Priority::FLASH_APPOINTED && deliver_by_ms.is_none() {
            return Err(malformed(
                "priority 4 (Hỏa tốc hẹn giờ) needs lgsp-deliver-by",
            ));
        }
        if let (Some(nb), Some(db)) = (not_before_ms, deliver_by_ms) {
            if nb > db {
                return Err(malformed("lgsp-not-before is after lgsp-deliver-by"));
            }
        }
        let bounce_after = optional(msg, "lgsp-bounce-after")?
            .map(|d| parse_duration(d).map_err(|e| malformed(format!("lgsp-bounce-after: {e}"))))
            .transpose()?;
        let max_attempts = optional(msg, "lgsp-max-attempts")?
            .map(|n| {
                n.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| malformed("lgsp-max-attempts must be an integer 1-1000"))
            })
            .transpose()?;
        Ok(EnvelopeFields {
            to,
            subject,
            priority,
            data_type: data_type.to_owned(),
            protocol: protocol.map(str::to_owned),
            digest: parse_digest(msg)?,
            deliver_by_ms,
            not_before_ms,
            bounce_after,
            max_attempts,
            space: optional(msg, SPACE)?
                .map(|id| {
                    is_space_id(id).then(|| id.to_owned()).ok_or_else(|| {
                        malformed("lgsp-space must be a space id: 32 lowercase hex digits")
                    })
                })
                .transpose()?,
            space_size: None,
        })
    }

    fn parse_status(msg: &Message) -> Result<StatusFields, Refusal> {
        let reference = required(msg, "lgsp-ref")?;
        if !valid_message_id(reference) {
            return Err(malformed("lgsp-ref must be a message_id"));
        }
        let status = required(msg, "lgsp-status")?;
        let Some(status) = StatusCode::parse(status) else {
            return Err(malformed(format!(
                "lgsp-status {status:?} is not one of {}",
                STATUS_CODES.join(", ")
            )));
        };
        let to = optional(msg, "lgsp-to")?
            .map(|t| AgencyCode::parse(t).map_err(|e| malformed(format!("lgsp-to: {e}"))))
            .transpose()?;
        Ok(StatusFields {
            reference: reference.to_owned(),
            status,
            reason: optional(msg, "lgsp-reason")?.map(str::to_owned),
            digest: parse_digest(msg)?,
            to,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::canonical::tests::vector_message;
    use crate::core::message::HeaderValue;

    #[test]
    fn parses_the_design_vector() {
        let m = vector_message();
        let s = Signed::parse(&m).unwrap();
        assert_eq!(s.kind, Kind::Envelope);
        assert_eq!(s.from.as_str(), "000.00.31.H41");
        assert_eq!(s.alg, Alg::HmacSha256);
        let Payload::Envelope(e) = Payload::parse(s.kind, &m, Priority::NORMAL).unwrap() else {
            panic!("not an envelope")
        };
        assert_eq!(e.to.len(), 2);
        assert_eq!(e.priority.amqp_priority(), 2);
        assert_eq!(e.bounce_after, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(e.subject, "Công văn số 12/SYT-VP");
    }

    fn refusal_of(edit: impl FnOnce(&mut Message)) -> Refusal {
        let mut m = vector_message();
        edit(&mut m);
        match Signed::parse(&m) {
            Err(r) => r,
            Ok(s) => Payload::parse(s.kind, &m, Priority::NORMAL).unwrap_err(),
        }
    }

    #[test]
    fn an_envelope_naming_a_hub_key_is_refused() {
        let r = refusal_of(|m| m.set_header("lgsp-hub-key", "AK3F9Q2ZLMXW"));
        assert_eq!(r.reason, Reason::Malformed);
        assert_eq!(r.detail, "lgsp-hub-key is set by the hub, not by a source");
    }

    #[test]
    fn each_step_one_field_is_checked() {
        let r = refusal_of(|m| m.set_header("lgsp-version", "2"));
        assert_eq!(r.reason, Reason::UnsupportedVersion);
        for edit in [
            (|m: &mut Message| m.routing_key = "envelope.000.00.32.H41".into()) as fn(&mut Message),
            |m| m.routing_key = "letter.000.00.31.H41".into(),
            |m| m.routing_key = "envelope".into(),
            |m| m.message_id = None,
            |m| m.message_id = Some("has space".into()),
            |m| m.message_id = Some("x".repeat(65)),
            |m| {
                m.headers.remove("lgsp-key");
            },
            |m| m.set_header("lgsp-alg", "md5"),
            |m| m.set_header("lgsp-time", "yesterday"),
            |m| m.set_header("lgsp-nonce", "short"),
            |m| {
                m.headers
                    .insert("lgsp-from".into(), HeaderValue::Other("integer".into()));
            },
        ] {
            assert_eq!(refusal_of(edit).reason, Reason::Malformed);
        }
    }

    #[test]
    fn each_envelope_field_is_checked() {
        for edit in [
            (|m: &mut Message| m.set_header("lgsp-to", "")) as fn(&mut Message),
            |m| m.set_header("lgsp-to", "000.00.32.H41, 000.00.33.H41"),
            |m| {
                m.set_header(
                    "lgsp-to",
                    (0..501)
                        .map(|i| format!("A{i}"))
                        .collect::<Vec<_>>()
                        .join(","),
                )
            },
            |m| m.set_header("lgsp-priority", "5"),
            |m| m.set_header("lgsp-priority", "4"),
            |m| m.set_header("lgsp-subject", "x".repeat(1001)),
            |m| m.set_header("lgsp-digest", "sha256=ABC"),
            |m| m.set_header("lgsp-bounce-after", "soon"),
            |m| m.set_header("lgsp-max-attempts", "0"),
            |m| m.set_header("lgsp-deliver-by", "tomorrow"),
            |m| m.set_header("lgsp-type", "has space"),
            |m| m.set_header("lgsp-subject", "a\u{7}b"),
            |m| m.set_header("lgsp-kind", "recall"),
            |m| m.set_header("lgsp-attempt", "1"),
        ] {
            assert_eq!(refusal_of(edit).reason, Reason::Malformed);
        }
        // Duplicates are folded; 500 distinct codes are fine.
        let mut m = vector_message();
        m.set_header("lgsp-to", "A,A,B");
        let Payload::Envelope(e) = Payload::parse(Kind::Envelope, &m, Priority::NORMAL).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.to.len(), 2);
    }

    #[test]
    fn status_fields() {
        let mut m = vector_message();
        m.routing_key = "status.000.00.31.H41".into();
        m.set_header("lgsp-ref", "01JD0000000000000000000001");
        m.set_header("lgsp-status", "01");
        m.headers.remove("lgsp-to");
        let Payload::Status(s) = Payload::parse(Kind::Status, &m, Priority::NORMAL).unwrap() else {
            panic!()
        };
        assert_eq!(s.status.as_str(), "01");
        m.set_header("lgsp-status", "07");
        assert!(Payload::parse(Kind::Status, &m, Priority::NORMAL).is_err());
    }
}

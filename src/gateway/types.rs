//! Every JSON body the gateway takes or gives, typed, so that the OpenAPI
//! document (`GET /openapi.json`) is generated from what the handlers really
//! send.
//!
//! Invariant: a handler answers JSON only through these types (or
//! [`Error`]), never through free-form JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Any refusal or failure.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Error {
    /// What went wrong, in words.
    pub(crate) error: String,
    /// The contract's reason code (PROTOCOL.md §10), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    /// `rejected`, for a message the hub refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) outcome: Option<String>,
    /// The refused message's `Message-Id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message_id: Option<String>,
}

/// A session granted (`POST /v1/sessions`, `POST /v1/session/renew`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SessionGranted {
    /// The token: send it as `Authorization: Bearer <token>`.
    pub(crate) token: String,
    /// The agency the session is for.
    pub(crate) agency: String,
    /// When it expires (RFC 3339 UTC).
    pub(crate) expires_at: String,
    /// Seconds until it expires.
    pub(crate) expires_in_s: i64,
}

/// What a token stands for (`GET /v1/session`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SessionInfo {
    /// The agency.
    pub(crate) agency: String,
    /// When the session expires (RFC 3339 UTC).
    pub(crate) expires_at: String,
}

/// A destination refused at acceptance.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Bounce {
    /// The destination.
    pub(crate) dest: String,
    /// Its reason code.
    pub(crate) reason: String,
}

/// An envelope accepted (`POST /v1/envelopes`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Accepted {
    /// Always `accepted`.
    pub(crate) outcome: String,
    /// The envelope's `Message-Id`.
    pub(crate) message_id: String,
    /// Destinations it is delivered to (absent on a repeat).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) destinations: Option<Vec<String>>,
    /// Destinations refused at once (absent on a repeat).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bounced: Option<Vec<Bounce>>,
    /// On a repeat: `already accepted; not delivered again`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

/// A status recorded (`POST /v1/statuses`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Recorded {
    /// Always `recorded`.
    pub(crate) outcome: String,
    /// The status message's `Message-Id`.
    pub(crate) message_id: String,
    /// Ids of the held deliveries it settled (`<from>/<message_id>`).
    pub(crate) settled: Vec<String>,
}

/// A delivery held for the agency, without its body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Delivery {
    /// `<from>/<message_id>`: the path under `/v1/deliveries/`.
    pub(crate) id: String,
    /// `envelope` or `recall` (a recall request, PROTOCOL.md §6.7).
    pub(crate) kind: String,
    /// The source (`lgsp-from`).
    pub(crate) from: String,
    /// The delivery's `Message-Id` (the envelope's, or the hub's for a recall request).
    pub(crate) message_id: String,
    /// For a recall request: the recalled envelope's id (`lgsp-ref`).
    #[serde(rename = "ref")]
    pub(crate) reference: Option<String>,
    /// `lgsp-subject`.
    pub(crate) subject: Option<String>,
    /// `lgsp-attempt`: above 1, it may be a repeat (PROTOCOL.md §6.2).
    pub(crate) attempt: u32,
    /// `lgsp-deliver-by`, when the envelope has a deadline.
    pub(crate) deliver_by: Option<String>,
    /// The deadline has passed: reject it (PROTOCOL.md §6.8).
    pub(crate) stale: bool,
    /// Handed over before and not settled (a stream was cut, a mailbox closed).
    pub(crate) redelivered: bool,
    /// `Content-Type`.
    pub(crate) content_type: Option<String>,
    /// Body size in bytes (0 when the content is in an upload space).
    pub(crate) size: usize,
    /// The upload space holding the content (`lgsp-content-space`): fetch
    /// it from `/v1/spaces/{id}/content` and check it against `lgsp-digest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content_space: Option<String>,
    /// Every `lgsp-*` header exactly as signed: check `lgsp-hub-signature`
    /// over these (routing key `deliver.<your code>`).
    pub(crate) headers: BTreeMap<String, String>,
}

/// Deliveries held (`GET /v1/deliveries`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Deliveries {
    /// Oldest first.
    pub(crate) deliveries: Vec<Delivery>,
    /// The cursor to list from next time (`after`): only what arrives later.
    pub(crate) next: String,
}

/// A document's bytes, as they were sent.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // only described
pub(crate) struct Bytes(Vec<u8>);

/// A delivery settled (`POST /v1/deliveries/{from}/{message_id}/ack|reject`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SettledAnswer {
    /// The delivery.
    pub(crate) id: String,
    /// `acknowledged`, `rejected`, or `before` (settled by an earlier call).
    pub(crate) settled: String,
    /// On `before`: `already settled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

/// A notice held for the agency.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Notice {
    /// The notice's `Message-Id`: acknowledge it by this.
    pub(crate) id: String,
    /// The notice's JSON body (PROTOCOL.md §8.3), its members in the order
    /// the hub wrote them.
    #[schema(value_type = Object)]
    pub(crate) notice: Box<serde_json::value::RawValue>,
    /// The same body as a string, byte for byte: its SHA-256 is `lgsp-digest`.
    pub(crate) body: String,
    /// Its `lgsp-*` headers, exactly as signed (PROTOCOL.md §8.2; routing key
    /// `notice.<your code>`).
    pub(crate) headers: BTreeMap<String, String>,
}

/// Notices held (`GET /v1/notices`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Notices {
    /// Oldest first.
    pub(crate) notices: Vec<Notice>,
    /// The cursor to list from next time (`after`): only what arrives later.
    pub(crate) next: String,
}

/// Notices to acknowledge (`POST /v1/notices/ack`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckNotices {
    /// Their ids (at most 1000).
    pub(crate) ids: Vec<String>,
}

/// Notices acknowledged.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct NoticesAcked {
    /// Ids held and now acknowledged.
    pub(crate) acknowledged: Vec<String>,
    /// Ids not held (acknowledged before, or unknown).
    pub(crate) not_held: Vec<String>,
}

/// A space asked for (`POST /v1/spaces`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSpace {
    /// The document's size in bytes, 1 to the policy's `max_document_bytes`.
    #[schema(minimum = 1)]
    pub(crate) size: u64,
    /// `sha256=<64 lowercase hex>` of the document: the envelope's
    /// `lgsp-digest` later.
    pub(crate) digest: String,
}

/// An upload space, as its owner (or a destination of its envelope) sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SpaceInfo {
    /// The space's id: name it in the envelope's `lgsp-space`.
    pub(crate) id: String,
    /// The agency that owns it.
    pub(crate) owner: String,
    /// The document's size in bytes.
    pub(crate) size: u64,
    /// `sha256=<hex>` of the document.
    pub(crate) digest: String,
    /// Bytes in every chunk but the last (1 MiB).
    pub(crate) chunk_size: u32,
    /// How many chunks the document has (`0` to `chunks - 1`).
    pub(crate) chunks: u32,
    /// The chunks not received yet (only before it is complete).
    pub(crate) missing: Vec<u32>,
    /// Every chunk is there and the document matches its digest.
    pub(crate) complete: bool,
    /// The envelope it holds the content of, once one was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message_id: Option<String>,
    /// When it is deleted if no envelope uses it and no chunk comes before
    /// (RFC 3339 UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) unused_until: Option<String>,
}

/// A chunk stored (`PUT /v1/spaces/{id}/chunks/{n}`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ChunkStored {
    /// The chunk's number.
    pub(crate) chunk: u32,
    /// How many of the space's chunks are there now.
    pub(crate) received: u32,
    /// How many it has in all.
    pub(crate) chunks: u32,
}

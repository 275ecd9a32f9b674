//! The request headers of the signed calls, as OpenAPI parameters. They
//! only document: the headers are read by [`super::request`], which takes
//! every `lgsp-*` header whatever its name, so these lists name the ones
//! the contract defines (PROTOCOL.md §3.2–3.4).

#![allow(dead_code)]

use utoipa::IntoParams;

/// The headers of every signed request (PROTOCOL.md §3.2, §4).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct Signed {
    /// `1`.
    #[param(rename = "lgsp-version")]
    version: String,
    /// Your agency code; it must be the session's agency.
    #[param(rename = "lgsp-from")]
    from: String,
    /// Your access key.
    #[param(rename = "lgsp-key")]
    key: String,
    /// `hmac-sha256`, `hmac-sha1` or `rsa-sha256`.
    #[param(rename = "lgsp-alg")]
    alg: String,
    /// Signing time, RFC 3339 UTC, within 300 s of the hub's clock.
    #[param(rename = "lgsp-time")]
    time: String,
    /// 16–64 characters, never used before.
    #[param(rename = "lgsp-nonce")]
    nonce: String,
    /// `sha256=` and the hex SHA-256 of the body.
    #[param(rename = "lgsp-digest")]
    digest: String,
    /// Base64 signature of the canonical form (PROTOCOL.md §4), routing key
    /// `<kind>.<your code>` (`session`, `envelope`, `status`).
    #[param(rename = "lgsp-signature")]
    signature: String,
    /// The message id, 1–64 of `A-Z a-z 0-9 - _`.
    #[param(rename = "Message-Id")]
    message_id: String,
    /// Exactly the content type signed (absent: none was signed).
    #[param(rename = "Content-Type")]
    content_type: Option<String>,
}

/// The envelope's own headers (PROTOCOL.md §3.3).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct EnvelopeFields {
    /// Destination codes separated by `,` (no spaces).
    #[param(rename = "lgsp-to")]
    to: String,
    /// Data type token, e.g. `edoc`.
    #[param(rename = "lgsp-type")]
    data_type: String,
    /// Title, at most 1,000 characters (UTF-8).
    #[param(rename = "lgsp-subject")]
    subject: Option<String>,
    /// QCVN 102 priority, `0`–`4`.
    #[param(rename = "lgsp-priority")]
    priority: Option<String>,
    /// Protocol token, e.g. `edxml-102`.
    #[param(rename = "lgsp-protocol")]
    protocol: Option<String>,
    /// RFC 3339 deadline.
    #[param(rename = "lgsp-deliver-by")]
    deliver_by: Option<String>,
    /// RFC 3339 earliest delivery (deferred when in the future).
    #[param(rename = "lgsp-not-before")]
    not_before: Option<String>,
    /// How long a destination may stay offline, e.g. `2h`.
    #[param(rename = "lgsp-bounce-after")]
    bounce_after: Option<String>,
    /// Rejections allowed per destination, 1–1000.
    #[param(rename = "lgsp-max-attempts")]
    max_attempts: Option<String>,
    /// The upload space holding the document (32 lowercase hex digits);
    /// the body is then empty and `lgsp-digest` is the document's.
    #[param(rename = "lgsp-space")]
    space: Option<String>,
}

/// The status message's own headers (PROTOCOL.md §3.4).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct StatusFields {
    /// The envelope's `message_id`.
    #[param(rename = "lgsp-ref")]
    reference: String,
    /// `01`–`06`, `13`, `15`, `16`.
    #[param(rename = "lgsp-status")]
    status: String,
    /// The envelope's source (recommended always).
    #[param(rename = "lgsp-to")]
    to: Option<String>,
    /// Free text; the source sees it as the notice's detail.
    #[param(rename = "lgsp-reason")]
    reason: Option<String>,
}

//! An HTTP request read as the message it stands for: its `lgsp-*` headers
//! (names in lower case, as HTTP has them), `Message-Id` as the
//! `message_id`, `Content-Type` as the `content_type`, the body, and the
//! routing key `<kind>.<lgsp-from>` the signature is made for
//! (docs/GATEWAY.md). What the router then checks is what it checks on AMQP.
//!
//! Invariants: a header value is taken verbatim as UTF-8 (a value that is
//! not is refused, never altered); an `lgsp-*` header given twice is
//! refused (which one was signed cannot be known); a body is read only up
//! to its limit, and one whose declared length is over it is not read; a
//! body that stalls (no byte for the idle time) is refused `408`, so a slow
//! client cannot hold a connection and its memory for ever.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};

use super::Answer;
use crate::core::message::{HeaderValue, Message};
use crate::core::reason::Reason;

/// The message a request of `kind` stands for, its body read up to `limit`
/// bytes.
pub(super) async fn read(
    kind: &str,
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    idle: Duration,
) -> Result<Message, Answer> {
    let body = self::body(headers, body, limit, idle).await?;
    message(kind, headers, body)
}

/// Reads the body of a request, up to `limit` bytes, each part within `idle`.
pub(super) async fn body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    idle: Duration,
) -> Result<Vec<u8>, Answer> {
    let too_large = |size: String| {
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(Reason::TooLarge),
            format!("body is {size} bytes, the limit is {limit}"),
        )
    };
    if let Some(declared) = declared_length(headers) {
        if declared > limit {
            return Err(too_large(declared.to_string()));
        }
    }
    let mut parts = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(bytes) = next_part(&mut parts, idle).await? {
        if (out.len() + bytes.len()) as u64 > limit {
            return Err(too_large(format!("more than {limit}")));
        }
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// The declared `Content-Length`, if any.
pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The next part of a request body (`None` at its end), within `idle`: a
/// body that stalls is answered `408`.
pub(super) async fn next_part(
    parts: &mut axum::body::BodyDataStream,
    idle: Duration,
) -> Result<Option<axum::body::Bytes>, Answer> {
    let part = tokio::time::timeout(idle, parts.next())
        .await
        .map_err(|_| {
            Answer::error(
                StatusCode::REQUEST_TIMEOUT,
                None,
                format!(
                    "the body stalled: nothing came for {} s",
                    idle.as_secs_f64()
                ),
            )
        })?;
    match part {
        None => Ok(None),
        Some(Ok(bytes)) => Ok(Some(bytes)),
        Some(Err(e)) => Err(Answer::error(
            StatusCode::BAD_REQUEST,
            None,
            format!("the body could not be read: {e}"),
        )),
    }
}

/// The message a request of `kind` (`envelope`, `session`) stands for.
pub(super) fn message(kind: &str, headers: &HeaderMap, body: Vec<u8>) -> Result<Message, Answer> {
    let bad = |text: String| Answer::error(StatusCode::BAD_REQUEST, Some(Reason::Malformed), text);
    let mut m = Message::default();
    for (name, value) in headers {
        let name = name.as_str();
        if !name.starts_with("lgsp-") {
            continue;
        }
        let text = std::str::from_utf8(value.as_bytes())
            .map_err(|_| bad(format!("header {name} is not UTF-8")))?;
        if m.headers
            .insert(name.to_owned(), HeaderValue::Text(text.to_owned()))
            .is_some()
        {
            return Err(bad(format!("header {name} is given more than once")));
        }
    }
    let text = |h: &str| -> Result<Option<String>, Answer> {
        headers
            .get(h)
            .map(|v| {
                std::str::from_utf8(v.as_bytes())
                    .map(str::to_owned)
                    .map_err(|_| bad(format!("header {h} is not UTF-8")))
            })
            .transpose()
    };
    m.message_id = text("message-id")?;
    m.content_type = text("content-type")?;
    m.routing_key = format!("{kind}.{}", m.header("lgsp-from").unwrap_or(""));
    m.body = Arc::from(body);
    Ok(m)
}

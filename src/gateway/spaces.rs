//! `/v1/spaces`: upload spaces for large documents (the claim-check
//! pattern; "cấp không gian" in the regulations). A source asks for a space
//! of a size and digest, uploads it in 1 MiB chunks (in any order; a chunk
//! sent again replaces itself), completes it, then sends an envelope whose
//! `lgsp-space` names it and whose body is empty. Each destination of that
//! envelope fetches the content with its own session, by ranges.
//!
//! Invariants: only the owner uploads, completes or deletes; the content is
//! read by its owner and by the destinations the envelope was put in the
//! inbox of, nobody else (a space of another agency is answered `404` like
//! one that does not exist); a chunk is read up to its exact length, with
//! the body-stall timeout; no call holds more than a chunk of content in
//! memory; disk and store work runs off the async threads.

use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::types::{ChunkStored, Error, NewSpace, SpaceInfo};
use super::{request, Answer, Gateway, Gs};
use crate::core::code::AgencyCode;
use crate::core::reason::Reason;
use crate::core::time::{format_rfc3339, now_ms};
use crate::core::timeline::DeliveryState;
use crate::state::spaces::{Space, SpaceError, Spaces, CHUNK};

/// Runs `f` (disk and store work) off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpaceError> + Send + 'static,
) -> Result<T, SpaceError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(SpaceError::Io(std::io::Error::other(e.to_string()))))
}

/// The answer to a failed space operation.
pub(super) fn refused(e: SpaceError) -> Answer {
    let (status, reason) = match &e {
        SpaceError::Store(_) | SpaceError::Io(_) => {
            tracing::warn!(error = %e, "upload space operation failed");
            return Answer::unavailable("spaces");
        }
        SpaceError::Sealed(_) => {
            tracing::error!(error = %e, "upload space content does not open");
            (StatusCode::INTERNAL_SERVER_ERROR, None)
        }
        SpaceError::Unknown => (StatusCode::NOT_FOUND, None),
        SpaceError::TooLarge { size: 0, .. } => (StatusCode::BAD_REQUEST, Some(Reason::Malformed)),
        SpaceError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, Some(Reason::TooLarge)),
        SpaceError::Quota { .. } => (StatusCode::INSUFFICIENT_STORAGE, Some(Reason::TooLarge)),
        SpaceError::BadDigest => (StatusCode::BAD_REQUEST, Some(Reason::Malformed)),
        SpaceError::BadChunk(_) => (StatusCode::BAD_REQUEST, None),
        SpaceError::Complete
        | SpaceError::Missing(_)
        | SpaceError::Incomplete
        | SpaceError::Bound(_) => (StatusCode::CONFLICT, None),
        SpaceError::Mismatch => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(Reason::DigestMismatch),
        ),
    };
    Answer::error(status, reason, e.to_string())
}

impl Gateway {
    /// The agency whose session `headers` carry (a call that counts), and
    /// the hub's upload spaces.
    fn caller(&self, headers: &HeaderMap) -> Result<(AgencyCode, Spaces), Answer> {
        let (entry, _) = self.session(headers)?;
        Ok((entry.agency.code.clone(), self.spaces()?))
    }

    /// The hub's upload spaces.
    fn spaces(&self) -> Result<Spaces, Answer> {
        self.hub.router.spaces().cloned().ok_or_else(|| {
            Answer::error(
                StatusCode::NOT_FOUND,
                None,
                "this hub keeps no upload spaces",
            )
        })
    }
}

/// Space `id` as `agency` may read it: its own, or that of an envelope put
/// in `agency`'s inbox.
fn readable(
    gw: &Gateway,
    spaces: &Spaces,
    id: &str,
    agency: &AgencyCode,
) -> Result<Space, SpaceError> {
    let space = spaces.get(id)?.ok_or(SpaceError::Unknown)?;
    if &space.owner == agency {
        return Ok(space);
    }
    let Some(mid) = &space.message_id else {
        return Err(SpaceError::Unknown);
    };
    let rec = gw.hub.router.tracking.get(&space.owner, mid)?;
    let delivered_to = rec.is_some_and(|r| {
        r.dests
            .iter()
            .any(|d| &d.code == agency && d.events.iter().any(|e| e.state == DeliveryState::Queued))
    });
    if delivered_to {
        Ok(space)
    } else {
        Err(SpaceError::Unknown)
    }
}

fn info(spaces: &Spaces, space: &Space, unused_after_ms: i64) -> Result<SpaceInfo, SpaceError> {
    let missing = if space.complete {
        Vec::new()
    } else {
        let have = spaces.received(space)?;
        (0..space.chunks())
            .filter(|n| have.binary_search(n).is_err())
            .collect()
    };
    Ok(SpaceInfo {
        id: space.id.clone(),
        owner: space.owner.to_string(),
        size: space.size,
        digest: space.digest.clone(),
        chunk_size: CHUNK,
        chunks: space.chunks(),
        missing,
        complete: space.complete,
        message_id: space.message_id.clone(),
        unused_until: match space.message_id {
            None => Some(format_rfc3339(spaces.last_used(space)? + unused_after_ms)),
            Some(_) => None,
        },
    })
}

fn unused_after_ms(gw: &Gateway) -> i64 {
    gw.hub.router.policies().spaces.unused_after.as_millis() as i64
}

/// Asks for a space for a document of `size` bytes with `digest`, within
/// the policy's largest document and your quota.
#[utoipa::path(post, path = "/v1/spaces", operation_id = "createSpace", tag = "spaces",
    request_body = NewSpace,
    responses(
        (status = 201, description = "the space; upload its chunks next", body = SpaceInfo),
        (status = 400, description = "not a size (1 or more) and a digest", body = Error),
        (status = 401, description = "no good session", body = Error),
        (status = 413, description = "larger than the largest document (too-large)", body = Error),
        (status = 507, description = "over your agency's space quota (too-large): wait for your documents to be delivered", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn create(
    axum::extract::State(gw): Gs,
    headers: HeaderMap,
    body: Body,
) -> Result<Answer, Answer> {
    let (owner, spaces) = gw.caller(&headers)?;
    let text = request::body(&headers, body, 4096, gw.body_idle).await?;
    let asked: NewSpace = serde_json::from_slice(&text).map_err(|e| {
        Answer::error(
            StatusCode::BAD_REQUEST,
            Some(Reason::Malformed),
            format!("the body must be {{\"size\": …, \"digest\": …}}: {e}"),
        )
    })?;
    let policy = gw.hub.router.policies().spaces.clone();
    let unused = policy.unused_after.as_millis() as i64;
    let who = owner.clone();
    let made = blocking(move || {
        let space = spaces.create(&who, asked.size, &asked.digest, false, &policy, now_ms())?;
        info(&spaces, &space, unused)
    })
    .await
    .map_err(refused)?;
    tracing::info!(agency = %owner, space = %made.id, size = made.size, "upload space made");
    Ok(Answer::of(StatusCode::CREATED, &made))
}

/// Reads a space: which chunks are missing, whether it is complete.
/// Its owner and the destinations of its envelope may read it.
#[utoipa::path(get, path = "/v1/spaces/{id}", operation_id = "showSpace", tag = "spaces",
    params(("id" = String, Path, description = "the space's id")),
    responses(
        (status = 200, description = "the space", body = SpaceInfo),
        (status = 401, description = "no good session", body = Error),
        (status = 404, description = "no such space for you", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn show(
    axum::extract::State(gw): Gs,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Answer, Answer> {
    let (code, spaces) = gw.caller(&headers)?;
    let unused = unused_after_ms(&gw);
    let g = gw.clone();
    let i = blocking(move || {
        let space = readable(&g, &spaces, &id, &code)?;
        info(&spaces, &space, unused)
    })
    .await
    .map_err(refused)?;
    Ok(Answer::of(StatusCode::OK, &i))
}

/// Uploads chunk `n` (from 0): exactly 1 MiB, the last one the rest. A
/// chunk sent again replaces the one before (safe to repeat after a
/// timeout).
#[utoipa::path(put, path = "/v1/spaces/{id}/chunks/{n}", operation_id = "putChunk", tag = "spaces",
    params(
        ("id" = String, Path, description = "the space's id"),
        ("n" = u32, Path, description = "the chunk's number, from 0"),
    ),
    request_body(content = String, content_type = "application/octet-stream", description = "the chunk's bytes: chunk_size of them, the last chunk the rest"),
    responses(
        (status = 200, description = "stored", body = ChunkStored),
        (status = 400, description = "past the end, or shorter than the chunk's length", body = Error),
        (status = 413, description = "longer than the chunk's length (too-large)", body = Error),
        (status = 401, description = "no good session", body = Error),
        (status = 404, description = "no such space of yours", body = Error),
        (status = 408, description = "the body stalled", body = Error),
        (status = 409, description = "the space is complete", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn put_chunk(
    axum::extract::State(gw): Gs,
    headers: HeaderMap,
    Path((id, n)): Path<(String, u32)>,
    body: Body,
) -> Result<Answer, Answer> {
    let (code, spaces) = gw.caller(&headers)?;
    let s2 = spaces.clone();
    let space = blocking(move || s2.owned(&id, &code))
        .await
        .map_err(refused)?;
    let Some(len) = space.chunk_len(n) else {
        return Err(refused(SpaceError::BadChunk(format!(
            "chunk {n} is past the end: the space has chunks 0 to {}",
            space.chunks() - 1
        ))));
    };
    let bytes = request::body(&headers, body, u64::from(len), gw.body_idle).await?;
    let got = bytes.len() as u64;
    let (received, chunks) = blocking(move || {
        spaces.put_chunk(&space, n, &bytes)?;
        Ok((spaces.received(&space)?.len() as u32, space.chunks()))
    })
    .await
    .map_err(refused)?;
    crate::core::metrics::space_bytes_in(got);
    let stored = ChunkStored {
        chunk: n,
        received,
        chunks,
    };
    Ok(Answer::of(StatusCode::OK, &stored))
}

/// Completes the space: every chunk must be there, and the whole document
/// must match the digest (a mismatch deletes the space: upload it again).
/// Completing a complete space changes nothing.
#[utoipa::path(post, path = "/v1/spaces/{id}/complete", operation_id = "completeSpace", tag = "spaces",
    params(("id" = String, Path, description = "the space's id")),
    responses(
        (status = 200, description = "complete: name it in an envelope's lgsp-space", body = SpaceInfo),
        (status = 401, description = "no good session", body = Error),
        (status = 404, description = "no such space of yours", body = Error),
        (status = 409, description = "chunks are missing (GET the space for which)", body = Error),
        (status = 422, description = "the document does not match the digest (digest-mismatch); the space is deleted", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn complete(
    axum::extract::State(gw): Gs,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Answer, Answer> {
    let (code, spaces) = gw.caller(&headers)?;
    let unused = unused_after_ms(&gw);
    let i = blocking(move || {
        let space = spaces.owned(&id, &code)?;
        let done = spaces.complete(&space)?;
        info(&spaces, &done, unused)
    })
    .await
    .map_err(refused)?;
    Ok(Answer::of(StatusCode::OK, &i))
}

/// Deletes a space no envelope uses (an upload given up). A space an
/// envelope uses is deleted by the hub once its destinations are done.
#[utoipa::path(delete, path = "/v1/spaces/{id}", operation_id = "deleteSpace", tag = "spaces",
    params(("id" = String, Path, description = "the space's id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, description = "no good session", body = Error),
        (status = 404, description = "no such space of yours", body = Error),
        (status = 409, description = "an envelope uses it", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn delete(
    axum::extract::State(gw): Gs,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Answer> {
    let (code, spaces) = gw.caller(&headers)?;
    blocking(move || {
        let space = spaces.owned(&id, &code)?;
        if let Some(m) = &space.message_id {
            return Err(SpaceError::Bound(m.clone()));
        }
        spaces.delete(&space)
    })
    .await
    .map_err(refused)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A byte range `[start, end)` of a document of `size` bytes from a
/// `Range` header (one range of `bytes`); `Err` when it cannot be served.
fn range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?.trim();
    let spec = v.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (size.saturating_sub(n), size)
        }
        (s, "") => (s.parse().map_err(|_| ())?, size),
        (s, e) => {
            let e: u64 = e.parse().map_err(|_| ())?;
            (s.parse().map_err(|_| ())?, e.saturating_add(1).min(size))
        }
    };
    if start >= end || start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Fetches the document (or one byte range of it, `Range: bytes=a-b`),
/// streamed. Check it against the envelope's `lgsp-digest` once whole.
/// Its owner and the destinations of its envelope may fetch it.
#[utoipa::path(get, path = "/v1/spaces/{id}/content", operation_id = "fetchSpaceContent", tag = "spaces",
    params(
        ("id" = String, Path, description = "the space's id (the delivery's lgsp-content-space)"),
        ("Range" = Option<String>, Header, description = "one range, `bytes=<first>-<last>`, `bytes=<first>-` or `bytes=-<suffix length>`, to resume"),
    ),
    responses(
        (status = 200, description = "the whole document", content_type = "application/octet-stream", body = super::types::Bytes,
            headers(
                ("Content-Length" = u64, description = "the document's size"),
                ("Accept-Ranges" = String, description = "bytes"),
                ("lgsp-digest" = String, description = "sha256=<hex> of the whole document"),
            )),
        (status = 206, description = "the range asked for (Content-Range says which)", content_type = "application/octet-stream", body = super::types::Bytes,
            headers(
                ("Content-Length" = u64, description = "the range's length"),
                ("Content-Range" = String, description = "bytes <first>-<last>/<size>"),
                ("lgsp-digest" = String, description = "sha256=<hex> of the whole document"),
            )),
        (status = 401, description = "no good session", body = Error),
        (status = 404, description = "no such space for you", body = Error),
        (status = 409, description = "not complete yet", body = Error),
        (status = 416, description = "a range that cannot be served (several ranges, a unit other than bytes, reversed, or past the end); empty body",
            headers(("Content-Range" = String, description = "bytes */<size>"))),
    ),
    security(("session" = [])))]
pub(super) async fn content(
    axum::extract::State(gw): Gs,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Answer> {
    let (code, spaces) = gw.caller(&headers)?;
    let (g, s2) = (gw.clone(), spaces.clone());
    let space = blocking(move || readable(&g, &s2, &id, &code))
        .await
        .map_err(refused)?;
    if !space.complete {
        return Err(refused(SpaceError::Incomplete));
    }
    let (status, start, end) = match range(&headers, space.size) {
        Ok(None) => (StatusCode::OK, 0, space.size),
        Ok(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        Err(()) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", space.size)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let size = space.size;
    let digest = space.digest.clone();
    let stream = futures_util::stream::unfold(
        (spaces, space, start),
        move |(spaces, space, pos)| async move {
            if pos >= end {
                return None;
            }
            let n = (pos / u64::from(CHUNK)) as u32;
            let off = (pos % u64::from(CHUNK)) as usize;
            let (s2, sp2) = (spaces.clone(), space.clone());
            match blocking(move || s2.chunk(&sp2, n)).await {
                Ok(plain) => {
                    let take = ((plain.len() - off) as u64).min(end - pos) as usize;
                    crate::core::metrics::space_bytes_out(take as u64);
                    let part = Bytes::copy_from_slice(&plain[off..off + take]);
                    Some((
                        Ok::<_, std::io::Error>(part),
                        (spaces, space, pos + take as u64),
                    ))
                }
                Err(e) => {
                    tracing::error!(space = %space.id, chunk = n, error = %e, "upload space content not sent");
                    Some((
                        Err(std::io::Error::other(e.to_string())),
                        (spaces, space, end),
                    ))
                }
            }
        },
    );
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if let Ok(v) = HeaderValue::from_str(&digest) {
        h.insert(header::HeaderName::from_static("lgsp-digest"), v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(range: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(range).unwrap());
        h
    }

    #[test]
    fn ranges_are_read_as_http_says() {
        assert_eq!(range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(range(&with("bytes=0-9"), 10), Ok(Some((0, 10))));
        assert_eq!(range(&with("bytes=2-4"), 10), Ok(Some((2, 5))));
        assert_eq!(range(&with("bytes=4-"), 10), Ok(Some((4, 10))));
        assert_eq!(range(&with("bytes=-3"), 10), Ok(Some((7, 10))));
        assert_eq!(range(&with("bytes=0-99"), 10), Ok(Some((0, 10))));
        for bad in [
            "bytes=10-",
            "bytes=5-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=x-1",
            "bytes=-0",
        ] {
            assert_eq!(range(&with(bad), 10), Err(()), "{bad}");
        }
    }
}

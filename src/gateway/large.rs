//! A large body sent inline (`POST /v1/envelopes` with a `Content-Length`
//! over the policy's `inline_bytes`): streamed into an upload space the hub
//! makes for the sender, then the envelope goes to the router with its
//! content in that space, exactly as if it had named the space itself.
//!
//! Invariants: the body is never held whole (a chunk at a time); its
//! declared length is checked against the largest document and the
//! sender's quota before a byte is read; the space is deleted when the
//! body fails (short, long, stalled) or the envelope is not accepted, so a
//! refused envelope leaves nothing behind; the router judges the digest,
//! with the signature, against what was written.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};

use super::spaces::{blocking, refused};
use super::{request, Answer, Gateway};
use crate::core::time::now_ms;
use crate::router::{Outcome, RouterError};
use crate::state::spaces::{Space, CHUNK};

/// Sends the envelope whose large body `body` (`size` bytes) comes
/// with `headers`: its `message_id`, and what the router made of it.
pub(super) async fn send(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
    body: Body,
    size: u64,
) -> Result<(String, Result<Outcome, RouterError>), Answer> {
    let (entry, _) = gw.session(headers)?;
    let spaces = gw.hub.router.spaces().cloned().ok_or_else(|| {
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(crate::core::reason::Reason::TooLarge),
            "this hub keeps no upload spaces: the body is larger than it takes inline",
        )
    })?;
    let msg = request::message("envelope", headers, Vec::new())?;
    // Refused before a byte is read: another agency's envelope.
    if msg.header("lgsp-from") != Some(entry.agency.code.as_str()) {
        return Err(super::send::not_from(&entry));
    }
    let claimed = msg.header("lgsp-digest").unwrap_or_default().to_owned();
    let policy = gw.hub.router.policies().spaces.clone();
    let owner = entry.agency.code.clone();
    let s2 = spaces.clone();
    let mut writer = blocking(move || s2.writer(&owner, size, &claimed, &policy, now_ms()))
        .await
        .map_err(refused)?;
    let mut parts = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK as usize);
    let written = loop {
        let part = match request::next_part(&mut parts, gw.body_idle).await {
            Ok(p) => p,
            Err(a) => break Err(a),
        };
        let end = part.is_none();
        if let Some(p) = part {
            buf.extend_from_slice(&p);
        }
        if buf.len() >= CHUNK as usize || (end && !buf.is_empty()) {
            let chunk = std::mem::take(&mut buf);
            let n = chunk.len() as u64;
            match blocking(move || writer.write(&chunk).map(|()| writer)).await {
                Ok(w) => writer = w,
                // The writer is gone with its space's record; the sweep
                // removes what it wrote.
                Err(e) => return Err(refused(e)),
            }
            crate::core::metrics::space_bytes_in(n);
            buf = Vec::with_capacity(CHUNK as usize);
        }
        if end {
            break Ok(());
        }
    };
    if let Err(a) = written {
        blocking(move || {
            writer.abandon();
            Ok(())
        })
        .await
        .ok();
        return Err(a);
    }
    let space: Space = blocking(move || writer.finish()).await.map_err(refused)?;
    let (_, msg, handled) =
        match super::send::route(gw, "envelope", entry, msg, Some(space.id.clone())).await {
            Ok(r) => r,
            Err(a) => {
                forget(&spaces, space).await;
                return Err(a);
            }
        };
    if !matches!(handled, Ok(Outcome::Accepted { .. })) {
        // Refused, a repeat (the first copy's space serves it), or not
        // handled (sent again, it brings its body again).
        forget(&spaces, space).await;
    }
    Ok((msg.message_id.unwrap_or_default(), handled))
}

/// Deletes a space the hub made for a body that was not accepted.
async fn forget(spaces: &crate::state::spaces::Spaces, space: Space) {
    let s = spaces.clone();
    let id = space.id.clone();
    if let Err(e) = blocking(move || s.delete(&space)).await {
        tracing::warn!(space = %id, error = %e, "a space made for a refused body was not deleted; the sweep deletes it");
    }
}

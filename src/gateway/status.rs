//! `POST /v1/statuses`: a status message (PROTOCOL.md §3.4) signed as on
//! AMQP, handled by the router while the caller waits; the deliveries it
//! answers are then settled in the agency's mailbox.
//!
//! Invariants: the status is judged exactly as one consumed from AMQP
//! (recorded and relayed, or refused with the contract's reason); only a
//! status the router recorded settles anything: `01`–`06` and `02` settle the
//! envelope's copies held (`lgsp-ref` from `lgsp-to`, or from any source
//! when `lgsp-to` is absent), `15` and `16` settle those and the recall
//! requests for it; `13` (a source's recall) settles nothing. The copies are
//! acknowledged, so the broker drops them.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};

use super::mailbox::{Key, Settle, Settled};
use super::send::{handle, not_taken};
use super::types::{Error, Recorded};
use super::{Answer, Gs};
use crate::core::message::Message;
use crate::router::Outcome;

/// The largest status body taken (statuses carry no document).
const STATUS_BODY_LIMIT: u64 = 64 * 1024;

/// Posts a status about an envelope (PROTOCOL.md §3.4), signed for
/// `status.<your code>`: `01` received, `02` refused, `03`–`06`, `13`
/// recall (from the source), `15`/`16` answers to a recall. The held
/// deliveries it answers are settled.
#[utoipa::path(post, path = "/v1/statuses", operation_id = "postStatus", tag = "receive",
    params(super::Signed, super::StatusFields),
    request_body(content = String, content_type = "text/plain", description = "usually empty"),
    responses(
        (status = 200, description = "recorded and relayed to the source", body = Recorded),
        (status = 400, description = "malformed", body = Error),
        (status = 401, description = "no good session", body = Error),
        (status = 403, description = "forbidden (not a destination of that envelope, or lgsp-from is not the session's agency)", body = Error),
        (status = 422, description = "bad-signature, unknown-key, clock-skew, replay, digest-mismatch", body = Error),
        (status = 503, description = "the hub cannot take it now (or the envelope is still being accepted); send it again", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn post(axum::extract::State(gw): Gs, headers: HeaderMap, body: Body) -> Answer {
    let (entry, msg, handled) = match handle(&gw, "status", &headers, body, STATUS_BODY_LIMIT).await
    {
        Ok(h) => h,
        Err(a) => return a,
    };
    let message_id = msg.message_id.clone().unwrap_or_default();
    if !matches!(handled, Ok(Outcome::StatusRelayed)) {
        return not_taken("status", handled, message_id);
    }
    let mut settled = Vec::new();
    if let Some(mb) = gw.mailboxes.existing(&entry.agency.code).await {
        for key in mb.keys_where(|k, h| answers(&msg, k, &h.message)) {
            match gw.mailboxes.settle(&mb, &key, Settle::Ack).await {
                Ok(Settled::Now) => settled.push(key.id()),
                Ok(Settled::Before | Settled::NotHeld) => {}
                Err(e) => {
                    // Recorded, but the copy goes back to the inbox: it comes
                    // again, and settling it again is harmless.
                    tracing::warn!(agency = %mb.code, error = %e, "gateway settle after a status failed");
                    break;
                }
            }
        }
    }
    Answer::of(
        StatusCode::OK,
        &Recorded {
            outcome: "recorded".into(),
            message_id,
            settled,
        },
    )
}

/// Whether the status `status` answers the held copy `key` (`held`).
fn answers(status: &Message, key: &Key, held: &Message) -> bool {
    let code = status.header("lgsp-status").unwrap_or("");
    let Some(reference) = status.header("lgsp-ref") else {
        return false;
    };
    if code == "13" || status.header("lgsp-to").is_some_and(|to| to != key.from) {
        return false;
    }
    let recall = held.header("lgsp-kind") == Some("recall");
    if recall {
        matches!(code, "15" | "16") && held.header("lgsp-ref") == Some(reference)
    } else {
        key.message_id == reference
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(headers: &[(&str, &str)], id: &str) -> Message {
        let mut m = Message {
            message_id: Some(id.into()),
            ..Message::default()
        };
        for (n, v) in headers {
            m.set_header(n, *v);
        }
        m
    }

    #[test]
    fn a_status_settles_the_copies_it_answers() {
        let key = |from: &str, id: &str| Key {
            from: from.into(),
            message_id: id.into(),
        };
        let envelope = msg(&[("lgsp-from", "A")], "E1");
        let recall = msg(
            &[
                ("lgsp-from", "A"),
                ("lgsp-kind", "recall"),
                ("lgsp-ref", "E1"),
            ],
            "r1",
        );
        let status = |code: &str, to: Option<&str>| {
            let mut h = vec![("lgsp-status", code), ("lgsp-ref", "E1")];
            if let Some(to) = to {
                h.push(("lgsp-to", to));
            }
            msg(&h, "S1")
        };
        // 01 settles the envelope, not the recall request.
        assert!(answers(
            &status("01", Some("A")),
            &key("A", "E1"),
            &envelope
        ));
        assert!(!answers(&status("01", Some("A")), &key("A", "r1"), &recall));
        // Without lgsp-to any source's copy; with it, only that source's.
        assert!(answers(&status("03", None), &key("A", "E1"), &envelope));
        assert!(!answers(
            &status("01", Some("B")),
            &key("A", "E1"),
            &envelope
        ));
        // 15 and 16 settle both.
        for code in ["15", "16"] {
            assert!(answers(
                &status(code, Some("A")),
                &key("A", "E1"),
                &envelope
            ));
            assert!(answers(&status(code, Some("A")), &key("A", "r1"), &recall));
        }
        // 13 settles nothing; another id settles nothing.
        assert!(!answers(
            &status("13", Some("A")),
            &key("A", "E1"),
            &envelope
        ));
        assert!(!answers(
            &status("01", Some("A")),
            &key("A", "E2"),
            &envelope
        ));
    }
}

//! Notices over HTTPS: `GET /v1/notices?wait=&limit=` (a long-poll) lists
//! the notices the agency's mailbox holds, each as the same JSON body as on
//! AMQP (PROTOCOL.md §8.3) with its signed headers; `POST /v1/notices/ack`
//! acknowledges them by id.
//!
//! Invariants: listing changes nothing; a notice leaves its queue only when
//! acknowledged; acknowledging an id not held (already acknowledged, or
//! never seen) is not an error, the answer says which ids were held.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::mailbox::Mailbox;
use super::receive::{held, lgsp_headers, mailbox, ListQuery};
use super::types::{AckNotices, Error, Notice, Notices, NoticesAcked};
use super::{Answer, Gs};
use crate::core::message::Message;

/// Most ids one acknowledgement takes.
const MAX_IDS: usize = 1000;

/// What the API says of a held notice.
pub(super) fn describe(id: &str, m: &Message) -> Notice {
    let body = String::from_utf8_lossy(&m.body).into_owned();
    let notice = serde_json::value::RawValue::from_string(body.clone())
        .or_else(|_| serde_json::value::RawValue::from_string("null".into()))
        .unwrap_or_default();
    Notice {
        id: id.to_owned(),
        notice,
        body,
        headers: lgsp_headers(m),
    }
}

/// Lists the notices held for you, oldest first; with `wait`, waits for one
/// when none is held (a long-poll). Changes nothing.
#[utoipa::path(get, path = "/v1/notices", operation_id = "listNotices", tag = "notices",
    params(ListQuery),
    responses(
        (status = 200, description = "held notices", body = Notices),
        (status = 400, description = "bad query", body = Error),
        (status = 401, description = "no good session", body = Error),
        (status = 503, description = "the hub has no broker connection now; try again", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn list(
    axum::extract::State(gw): Gs,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    match held(&gw, &headers, q, Mailbox::notices).await {
        Ok(found) => Answer::of(
            StatusCode::OK,
            &Notices {
                notices: found.items.iter().map(|(id, m)| describe(id, m)).collect(),
                next: found.next,
            },
        ),
        Err(a) => a,
    }
}

/// Acknowledges notices by id: they leave your notify queue. Ids not held
/// are listed, not refused (safe to repeat).
#[utoipa::path(post, path = "/v1/notices/ack", operation_id = "ackNotices", tag = "notices",
    request_body = AckNotices,
    responses(
        (status = 200, description = "acknowledged", body = NoticesAcked),
        (status = 400, description = "bad body, or more than 1000 ids", body = Error),
        (status = 401, description = "no good session", body = Error),
        (status = 503, description = "the broker channel failed; the notices come again", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn ack(
    axum::extract::State(gw): Gs,
    headers: HeaderMap,
    body: Result<Json<AckNotices>, JsonRejection>,
) -> Answer {
    let mb = match mailbox(&gw, &headers).await {
        Ok(mb) => mb,
        Err(a) => return a,
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return Answer::bad_request(format!("bad body: {e}")),
    };
    if body.ids.len() > MAX_IDS {
        return Answer::bad_request(format!("at most {MAX_IDS} ids at once"));
    }
    match gw.mailboxes.ack_notices(&mb, &body.ids).await {
        Ok(done) => {
            let not_held = body
                .ids
                .iter()
                .filter(|i| !done.contains(i))
                .cloned()
                .collect();
            Answer::of(
                StatusCode::OK,
                &NoticesAcked {
                    acknowledged: done,
                    not_held,
                },
            )
        }
        Err(e) => {
            tracing::warn!(agency = %mb.code, error = %e, "gateway notice ack failed; the notices go back to the queue");
            Answer::unavailable("acknowledging notices")
        }
    }
}

//! Receiving over HTTPS, the polling way: `GET /v1/deliveries` lists what
//! the agency's mailbox holds (metadata and the exact signed headers, no
//! body), `GET /v1/deliveries/{from}/{message_id}` fetches one with its
//! body, and `POST …/ack` or `…/reject` settles it. Posting a status about
//! it (`POST /v1/statuses`, [`super::status`]) settles it too.
//!
//! Invariants: listing and fetching change nothing (safe to repeat); a
//! delivery is acked or rejected on the broker only when the agency settles
//! it, and settling again after a timeout is answered "already settled"; a
//! delivery's headers are given exactly as signed in the listing's JSON, so
//! the hub signature can be checked as on AMQP (routing key
//! `deliver.<code>`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::mailbox::{Held, Key, Mailbox, Settle, Settled, PREFETCH};
use super::types::{Deliveries, Delivery, Error, SettledAnswer};
use super::{Answer, Gateway, Gs};
use crate::core::message::Message;
use crate::core::time::now_ms;

/// The longest a listing waits for something to arrive.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(60);

/// `?wait=<seconds>&limit=<n>` of a listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Seconds to wait when nothing is held (0 by default, at most 60): a
    /// long-poll. The answer comes at once while anything is held.
    #[serde(default)]
    #[param(maximum = 60)]
    wait: u64,
    /// Most items in the answer (by default all that are held; at most 32 are held at once).
    #[param(minimum = 1)]
    limit: Option<usize>,
    /// The `next` of an earlier answer: list only what arrived after it (and
    /// wait for that). A cursor of an earlier mailbox (it closed) lists
    /// everything held.
    after: Option<String>,
}

/// A listing's query, read.
pub(super) struct Listing {
    wait: Duration,
    limit: usize,
    /// (mailbox id, arrival number) of `after`.
    after: Option<(u64, u64)>,
}

impl ListQuery {
    /// The query, or the answer to a bad one.
    pub(super) fn read(q: Result<Query<Self>, QueryRejection>) -> Result<Listing, Answer> {
        let Query(q) = q.map_err(|e| Answer::bad_request(format!("bad query: {e}")))?;
        let wait = Duration::from_secs(q.wait);
        if wait > MAX_WAIT {
            return Err(Answer::bad_request(format!(
                "wait is at most {} seconds",
                MAX_WAIT.as_secs()
            )));
        }
        let limit = q.limit.unwrap_or(usize::from(PREFETCH));
        if limit == 0 {
            return Err(Answer::bad_request("limit must be at least 1"));
        }
        let after = match q.after.as_deref() {
            None => None,
            Some(c) => Some(parse_cursor(c).ok_or_else(|| {
                Answer::bad_request("after must be the next of an earlier answer")
            })?),
        };
        Ok(Listing { wait, limit, after })
    }
}

/// `<mailbox id, hex>.<arrival number>`.
fn cursor(mailbox: u64, seq: u64) -> String {
    format!("{mailbox:x}.{seq}")
}

fn parse_cursor(c: &str) -> Option<(u64, u64)> {
    let (id, seq) = c.split_once('.')?;
    Some((u64::from_str_radix(id, 16).ok()?, seq.parse().ok()?))
}

/// Items listed, and the cursor after them.
pub(super) struct Found<T> {
    /// The items.
    pub(super) items: Vec<T>,
    /// `next`.
    pub(super) next: String,
}

/// The text headers of `m` that belong to the contract (`lgsp-*`), by name.
pub(super) fn lgsp_headers(m: &Message) -> std::collections::BTreeMap<String, String> {
    m.headers
        .iter()
        .filter(|(n, _)| n.starts_with("lgsp-"))
        .filter_map(|(n, v)| v.as_text().map(|t| (n.clone(), t.to_owned())))
        .collect()
}

/// What the API says of a held delivery (no body).
pub(super) fn describe(key: &Key, held: &Held) -> Delivery {
    let m = &held.message;
    let h = |name: &str| m.header(name).map(str::to_owned);
    let recall = m.header("lgsp-kind") == Some("recall");
    let stale = m
        .header("lgsp-deliver-by")
        .and_then(|d| crate::core::time::parse_rfc3339(d).ok())
        .is_some_and(|d| d <= now_ms());
    Delivery {
        id: key.id(),
        kind: if recall { "recall" } else { "envelope" }.into(),
        from: key.from.clone(),
        message_id: key.message_id.clone(),
        reference: if recall { h("lgsp-ref") } else { None },
        subject: h("lgsp-subject"),
        attempt: m
            .header("lgsp-attempt")
            .and_then(|a| a.parse::<u32>().ok())
            .unwrap_or(1),
        deliver_by: h("lgsp-deliver-by"),
        stale,
        redelivered: held.redelivered,
        content_type: m.content_type.clone(),
        size: m.body.len(),
        content_space: h(crate::core::envelope::CONTENT_SPACE),
        headers: lgsp_headers(m),
    }
}

/// The mailbox of the session's agency (opened if need be).
pub(super) async fn mailbox(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
) -> Result<Arc<Mailbox>, Answer> {
    let (entry, _) = gw.session(headers)?;
    gw.mailboxes
        .get(&gw.hub, &entry.agency.code)
        .await
        .map_err(|e| {
            tracing::warn!(agency = %entry.agency.code, error = %e, "gateway mailbox not opened");
            Answer::unavailable("receiving")
        })
}

/// Waits up to `wait` until `ready` finds something in `mb` (or it closes).
pub(super) async fn wait_for<T>(
    mb: &Mailbox,
    wait: Duration,
    ready: impl Fn(&Mailbox) -> Vec<T>,
) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut arrivals = mb.arrivals();
    loop {
        arrivals.borrow_and_update();
        let found = ready(mb);
        if !found.is_empty() || mb.closed.is_cancelled() {
            return found;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return ready(mb),
            _ = mb.closed.cancelled() => return ready(mb),
            changed = arrivals.changed() => if changed.is_err() { return ready(mb) },
        }
    }
}

/// Lists the deliveries held for you (no bodies), oldest first; with
/// `wait`, waits for one when none is held. Changes nothing.
#[utoipa::path(get, path = "/v1/deliveries", operation_id = "listDeliveries", tag = "receive",
    params(ListQuery),
    responses(
        (status = 200, description = "held deliveries", body = Deliveries),
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
    match held(&gw, &headers, q, Mailbox::deliveries).await {
        Ok(found) => Answer::of(
            StatusCode::OK,
            &Deliveries {
                deliveries: found.items.iter().map(|(k, h)| describe(k, h)).collect(),
                next: found.next,
            },
        ),
        Err(a) => a,
    }
}

/// What `take` finds in the session's mailbox (from the query's `after`, up
/// to its `limit`), waiting up to its `wait` for something: a listing's
/// common part. `take` gives each item with its arrival number.
pub(super) async fn held<T>(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
    take: impl Fn(&Mailbox, u64, usize) -> Vec<(u64, T)>,
) -> Result<Found<T>, Answer> {
    let listing = ListQuery::read(q)?;
    let mb = mailbox(gw, headers).await?;
    let from = match listing.after {
        Some((id, seq)) if id == mb.id => seq,
        _ => 0,
    };
    let found = wait_for(&mb, listing.wait, |mb| take(mb, from, listing.limit)).await;
    mb.touch();
    let next = found.last().map_or(from, |(seq, _)| seq + 1);
    Ok(Found {
        items: found.into_iter().map(|(_, t)| t).collect(),
        next: cursor(mb.id, next),
    })
}

/// The key named by a path.
fn key((from, message_id): (String, String)) -> Key {
    Key { from, message_id }
}

/// The answer for a key not held.
fn not_held(gw: &Gateway, key: &Key) -> Answer {
    if gw.mailboxes.was_settled(key) {
        Answer::error(
            StatusCode::GONE,
            None,
            format!("delivery {} was already settled", key.id()),
        )
    } else {
        Answer::error(
            StatusCode::NOT_FOUND,
            None,
            format!(
                "no delivery {} is held for you: list your deliveries first \
                 (it may not have arrived yet)",
                key.id()
            ),
        )
    }
}

/// Fetches a held delivery: its body, with `Message-Id`, `Content-Type`
/// and the `lgsp-*` headers HTTP can carry unchanged (the listing has them
/// all, exactly). Changes nothing.
#[utoipa::path(get, path = "/v1/deliveries/{from}/{message_id}", operation_id = "fetchDelivery", tag = "receive",
    params(
        ("from" = String, Path, description = "the source's code"),
        ("message_id" = String, Path, description = "the delivery's Message-Id"),
    ),
    responses(
        (status = 200, description = "the body, as the source sent it; empty when the document is in an upload space (lgsp-content-space: fetch it from /v1/spaces/{id}/content)", content_type = "*/*", body = super::types::Bytes,
            headers(
                ("Message-Id" = String, description = "the delivery's message_id"),
                ("Content-Type" = String, description = "the content type the source signed (absent when none)"),
                ("lgsp-hub-signature" = String, description = "and every other lgsp-* header HTTP can carry unchanged (raw UTF-8); the listing has them all, exactly"),
            )),
        (status = 401, description = "no good session", body = Error),
        (status = 404, description = "not held for you (not arrived yet: list first)", body = Error),
        (status = 410, description = "already settled", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn fetch(
    axum::extract::State(gw): Gs,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
) -> Response {
    let mb = match mailbox(&gw, &headers).await {
        Ok(mb) => mb,
        Err(a) => return a.into_response(),
    };
    let key = key(path);
    let Some(held) = mb.delivery(&key) else {
        return not_held(&gw, &key).into_response();
    };
    let m = &held.message;
    let mut r = Response::new(Body::from(m.body.to_vec()));
    let out = r.headers_mut();
    for (name, value) in m.headers.iter().filter(|(n, _)| n.starts_with("lgsp-")) {
        let Some(text) = value.as_text() else {
            continue;
        };
        // A value HTTP would alter (edge spaces) is only in the listing.
        if text.trim() != text {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(text.as_bytes()),
        ) {
            out.insert(n, v);
        }
    }
    if let Some(v) = m
        .message_id
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        out.insert(HeaderName::from_static("message-id"), v);
    }
    if let Some(v) = m
        .content_type
        .as_deref()
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
    {
        out.insert(header::CONTENT_TYPE, v);
    }
    r
}

/// Acknowledges a held delivery without a status (a repeat you already
/// have, or a recall you answered over AMQP): the broker drops it.
#[utoipa::path(post, path = "/v1/deliveries/{from}/{message_id}/ack", operation_id = "ackDelivery", tag = "receive",
    params(
        ("from" = String, Path, description = "the source's code"),
        ("message_id" = String, Path, description = "the delivery's Message-Id"),
    ),
    responses(
        (status = 200, description = "acknowledged, or settled before", body = SettledAnswer),
        (status = 401, description = "no good session", body = Error),
        (status = 404, description = "not held for you", body = Error),
        (status = 503, description = "the broker channel failed; the delivery comes again", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn ack(
    state: Gs,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
) -> Answer {
    settle(state, headers, path, Settle::Ack).await
}

/// Rejects a held delivery you cannot take (PROTOCOL.md §7 step 8) or that
/// is stale: the hub retries it after its backoff, up to its
/// `max-attempts` (a stale one is dropped).
#[utoipa::path(post, path = "/v1/deliveries/{from}/{message_id}/reject", operation_id = "rejectDelivery", tag = "receive",
    params(
        ("from" = String, Path, description = "the source's code"),
        ("message_id" = String, Path, description = "the delivery's Message-Id"),
    ),
    responses(
        (status = 200, description = "rejected, or settled before", body = SettledAnswer),
        (status = 401, description = "no good session", body = Error),
        (status = 404, description = "not held for you", body = Error),
        (status = 503, description = "the broker channel failed; the delivery comes again", body = Error),
    ),
    security(("session" = [])))]
pub(super) async fn reject(
    state: Gs,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
) -> Answer {
    settle(state, headers, path, Settle::Reject).await
}

async fn settle(
    axum::extract::State(gw): Gs,
    headers: HeaderMap,
    path: (String, String),
    how: Settle,
) -> Answer {
    let mb = match mailbox(&gw, &headers).await {
        Ok(mb) => mb,
        Err(a) => return a,
    };
    let key = key(path);
    let verb = match how {
        Settle::Ack => "acknowledged",
        Settle::Reject => "rejected",
    };
    match gw.mailboxes.settle(&mb, &key, how).await {
        Ok(Settled::Now) => Answer::of(
            StatusCode::OK,
            &SettledAnswer {
                id: key.id(),
                settled: verb.into(),
                detail: None,
            },
        ),
        Ok(Settled::Before) => Answer::of(
            StatusCode::OK,
            &SettledAnswer {
                id: key.id(),
                settled: "before".into(),
                detail: Some("already settled".into()),
            },
        ),
        Ok(Settled::NotHeld) => not_held(&gw, &key),
        Err(e) => {
            tracing::warn!(agency = %mb.code, error = %e, "gateway settle failed; the delivery goes back to the inbox");
            Answer::unavailable("settling")
        }
    }
}

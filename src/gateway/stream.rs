//! `GET /v1/stream`: deliveries and notices pushed as they arrive, as
//! Server-Sent Events (`event: delivery` with the listing's JSON of a
//! delivery, `event: notice` with the JSON of a notice).
//!
//! Invariants: a stream first sends everything the mailbox holds, then each
//! arrival once; what it sends stays held until settled (a status, an ack
//! or a reject; a notice ack), so a stream that is cut loses nothing: the
//! next stream sends again whatever is still unsettled (at least once,
//! settled by ack). While a stream is open the mailbox does not close for
//! idleness. When the mailbox closes (broker link lost), the stream ends
//! with `event: closed`, and the client connects again.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::mailbox::{Mailbox, StreamGuard};
use super::receive::{describe, mailbox};
use super::{notices, Gateway, Gs};

/// How often an open stream checks that its session is still good.
const SESSION_CHECK: Duration = Duration::from_secs(2);

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One open stream.
struct Open {
    gw: Arc<Gateway>,
    /// The request's headers (its token), checked again every
    /// [`SESSION_CHECK`]: the stream ends with its session.
    headers: HeaderMap,
    check: tokio::time::Interval,
    mb: Arc<Mailbox>,
    _guard: StreamGuard,
    /// Arrival number of the next item to send.
    next: u64,
    arrivals: tokio::sync::watch::Receiver<u64>,
    ready: VecDeque<Event>,
    ended: bool,
}

impl Open {
    /// Queues every item arrived since the last call.
    fn collect(&mut self) {
        let arrived = self.mb.since(self.next);
        for (_, (key, held)) in &arrived.deliveries {
            self.ready.push_back(
                Event::default()
                    .event("delivery")
                    .id(key.id())
                    .data(json(&describe(key, held))),
            );
        }
        for (_, (id, m)) in &arrived.notices {
            self.ready.push_back(
                Event::default()
                    .event("notice")
                    .id(id.clone())
                    .data(json(&notices::describe(id, m))),
            );
        }
        self.next = arrived.next;
    }

    /// The next event, waiting for an arrival; `None` once the stream ended.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            self.arrivals.borrow_and_update();
            self.collect();
            if !self.ready.is_empty() {
                continue;
            }
            tokio::select! {
                _ = self.mb.closed.cancelled() => {
                    self.ended = true;
                    return Some(Event::default().event("closed").data("the hub closed this stream; connect again"));
                }
                changed = self.arrivals.changed() => if changed.is_err() {
                    self.ended = true;
                },
                _ = self.check.tick() => if self.gw.verify(&self.headers).is_err() {
                    self.ended = true;
                    return Some(Event::default().event("closed").data("the session ended; open a new one"));
                },
            }
        }
    }
}

/// One line of JSON.
fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Streams deliveries and notices as Server-Sent Events while the session
/// is good: first everything held, then each arrival (`event: delivery`
/// with a Delivery as JSON, `event: notice` with a Notice as JSON;
/// `event: closed` before the hub ends it).
/// Settle as with the listings; what is not settled is sent again on the
/// next stream.
#[utoipa::path(get, path = "/v1/stream", operation_id = "openStream", tag = "receive",
    responses(
        (status = 200, description = "an event stream", content_type = "text/event-stream", body = String),
        (status = 401, description = "no good session", body = super::types::Error),
        (status = 503, description = "the hub has no broker connection now; try again", body = super::types::Error),
    ),
    security(("session" = [])))]
pub(super) async fn open(axum::extract::State(gw): Gs, headers: HeaderMap) -> Response {
    let mb = match mailbox(&gw, &headers).await {
        Ok(mb) => mb,
        Err(a) => return a.into_response(),
    };
    let open = Open {
        gw: gw.clone(),
        headers,
        check: tokio::time::interval(SESSION_CHECK),
        _guard: mb.stream_guard(),
        arrivals: mb.arrivals(),
        next: 0,
        ready: VecDeque::new(),
        ended: false,
        mb,
    };
    let events = futures_util::stream::unfold(open, |mut open| async move {
        let e = open.next_event().await?;
        Some((Ok::<_, Infallible>(e), open))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

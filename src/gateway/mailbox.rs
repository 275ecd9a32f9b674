//! What an agency receives over HTTPS: a **mailbox** per agency on this
//! instance, a consumer on its inbox and one on its notify queue, holding
//! what the broker handed over until the agency settles it.
//!
//! Invariants:
//! - the broker keeps every delivery and notice until it is settled here:
//!   a held item is acked (or rejected) only when the agency says so, and a
//!   mailbox that closes (idle, link lost, consumer error, shutdown) closes
//!   its channels, so the broker requeues what was held, marked
//!   redelivered: nothing is lost, and a repeat is only ever an item that was
//!   not settled;
//! - a mailbox lives while it is used: it closes after a heartbeat window
//!   (policies) without a call and without an open stream. While it lives its
//!   inbox has a consumer, so presence counts the agency online;
//! - each copy the broker hands over is held under its key (source,
//!   `message_id`); a second copy of the same key while the first is held is
//!   held with it and settled with it;
//! - at most [`PREFETCH`] deliveries and as many notices are held at once
//!   per mailbox (the broker's prefetch), which bounds its memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::{AmqpError, Settler, Subscription};
use crate::core::code::AgencyCode;
use crate::core::dedupe::Dedupe;
use crate::core::message::{Inbound, Message};
use crate::operator::Hub;

/// Deliveries (and, apart, notices) the broker hands a mailbox before any is
/// settled.
pub(super) const PREFETCH: u16 = 32;

/// How many settled keys each gateway remembers, so that settling again
/// after a timeout is answered "already settled".
const REMEMBERED: usize = 100_000;

/// A delivery's key: its source and `message_id` (a recall request's
/// `message_id` is the hub's own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Key {
    /// `lgsp-from`.
    pub(super) from: String,
    /// The AMQP `message_id`.
    pub(super) message_id: String,
}

impl Key {
    /// The key of `m`.
    fn of(m: &Message) -> Self {
        Self {
            from: m.header("lgsp-from").unwrap_or("").to_owned(),
            message_id: m.message_id.clone().unwrap_or_default(),
        }
    }

    /// `<from>/<message_id>`, as the API names it.
    pub(super) fn id(&self) -> String {
        format!("{}/{}", self.from, self.message_id)
    }
}

/// One delivery held, with every copy of it the broker handed over.
#[derive(Debug, Clone)]
pub(super) struct Held {
    /// The first copy.
    pub(super) message: Message,
    /// The broker flagged a copy redelivered.
    pub(super) redelivered: bool,
    /// The delivery tags of its copies.
    tags: Vec<u64>,
}

/// How to settle a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settle {
    /// Taken: the broker drops it.
    Ack,
    /// Refused: dead-lettered, so the hub retries it per policy (or, stale,
    /// drops it).
    Reject,
}

/// What settling found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// Held here and settled now.
    Now,
    /// Settled before (a repeat of the call).
    Before,
    /// Not held here: not arrived yet, or held by another instance.
    NotHeld,
}

/// The held items, in arrival order.
#[derive(Default)]
struct Items {
    next: u64,
    deliveries: BTreeMap<u64, (Key, Held)>,
    delivery_at: HashMap<Key, u64>,
    notices: BTreeMap<u64, (String, Message, u64)>,
    notice_at: HashMap<String, u64>,
}

/// Items arrived from some number on ([`Mailbox::since`]).
pub(super) struct Arrived {
    /// Deliveries, oldest first, with their arrival numbers.
    pub(super) deliveries: Vec<(u64, (Key, Held))>,
    /// Notices (id, message), oldest first, with their arrival numbers.
    pub(super) notices: Vec<(u64, (String, Message))>,
    /// The number of the next arrival.
    pub(super) next: u64,
}

impl Items {
    fn deliveries_from(&self, from: u64, limit: usize) -> Vec<(u64, (Key, Held))> {
        self.deliveries
            .range(from..)
            .take(limit)
            .map(|(seq, kh)| (*seq, kh.clone()))
            .collect()
    }

    fn notices_from(&self, from: u64, limit: usize) -> Vec<(u64, (String, Message))> {
        self.notices
            .range(from..)
            .take(limit)
            .map(|(seq, (id, m, _))| (*seq, (id.clone(), m.clone())))
            .collect()
    }
}

/// One agency's mailbox on this instance.
pub(super) struct Mailbox {
    /// The agency.
    pub(super) code: AgencyCode,
    /// Random, so that a listing cursor of an earlier mailbox is known for one.
    pub(super) id: u64,
    items: Mutex<Items>,
    /// Bumped at each arrival; waiters watch it.
    arrivals: watch::Sender<u64>,
    inbox: Settler,
    notify: Settler,
    last_call: Mutex<Instant>,
    streams: AtomicUsize,
    /// Cancelled when the mailbox closes.
    pub(super) closed: CancellationToken,
}

/// The mailboxes of this instance, and what was settled through them.
pub(super) struct Mailboxes {
    open: tokio::sync::Mutex<HashMap<AgencyCode, Arc<Mailbox>>>,
    /// One gate per agency, held while its mailbox is being opened (so two
    /// calls open one mailbox, and opening one agency's never waits on the
    /// broker for another's).
    gates: Mutex<HashMap<AgencyCode, Arc<tokio::sync::Mutex<()>>>>,
    settled: Mutex<Dedupe>,
    shutdown: CancellationToken,
}

/// A mailbox could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum MailboxError {
    /// No broker link now.
    #[error("the hub has no broker connection right now")]
    NoLink,
    /// The broker refused a consumer.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

impl Mailboxes {
    /// No mailbox yet; each closes at `shutdown`.
    pub(super) fn new(shutdown: CancellationToken) -> Self {
        Self {
            open: tokio::sync::Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
            settled: Mutex::new(Dedupe::new(REMEMBERED)),
            shutdown,
        }
    }

    /// The open mailbox of `code`, opened now if there is none; the call
    /// counts as use.
    pub(super) async fn get(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        code: &AgencyCode,
    ) -> Result<Arc<Mailbox>, MailboxError> {
        if let Some(mb) = self.existing(code).await {
            mb.touch();
            return Ok(mb);
        }
        let gate = lock(&self.gates).entry(code.clone()).or_default().clone();
        let _opening = gate.lock().await;
        if let Some(mb) = self.existing(code).await {
            mb.touch();
            return Ok(mb);
        }
        let link = hub.link.borrow().clone().ok_or(MailboxError::NoLink)?;
        let tag = format!("truc-gateway {}", hub.instance_id);
        let inbox = link
            .subscribe(&hub.topology.inbox(code), PREFETCH, &tag)
            .await?;
        let notify = match link
            .subscribe(&hub.topology.notify(code), PREFETCH, &tag)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                inbox.close().await;
                return Err(e.into());
            }
        };
        let (arrivals, _) = watch::channel(0);
        let mb = Arc::new(Mailbox {
            code: code.clone(),
            id: rand::random(),
            items: Mutex::new(Items::default()),
            arrivals,
            inbox: inbox.settler(),
            notify: notify.settler(),
            last_call: Mutex::new(Instant::now()),
            streams: AtomicUsize::new(0),
            closed: self.shutdown.child_token(),
        });
        {
            let mut open = self.open.lock().await;
            open.insert(code.clone(), mb.clone());
            crate::core::metrics::gateway_mailboxes(open.len());
        }
        tracing::info!(agency = %code, "gateway mailbox opened");
        let idle = hub.router.policies().presence.heartbeat_window;
        tokio::spawn(pump(self.clone(), mb.clone(), inbox, notify, idle));
        Ok(mb)
    }

    /// The open mailbox of `code`, if there is one (not opened, not touched).
    pub(super) async fn existing(&self, code: &AgencyCode) -> Option<Arc<Mailbox>> {
        self.open
            .lock()
            .await
            .get(code)
            .filter(|mb| !mb.closed.is_cancelled())
            .cloned()
    }

    /// Whether `key` was settled through this gateway (and is remembered).
    pub(super) fn was_settled(&self, key: &Key) -> bool {
        lock(&self.settled).contains(&key.from, &key.message_id)
    }

    /// Settles the delivery `key` of `mb` as `how`.
    pub(super) async fn settle(
        &self,
        mb: &Mailbox,
        key: &Key,
        how: Settle,
    ) -> Result<Settled, AmqpError> {
        let held = {
            let mut items = lock(&mb.items);
            let seq = items.delivery_at.remove(key);
            seq.and_then(|s| items.deliveries.remove(&s))
        };
        let Some((_, held)) = held else {
            return Ok(if self.was_settled(key) {
                Settled::Before
            } else {
                Settled::NotHeld
            });
        };
        for tag in &held.tags {
            let done = match how {
                Settle::Ack => mb.inbox.ack(*tag).await,
                Settle::Reject => mb.inbox.reject(*tag, false).await,
            };
            if let Err(e) = done {
                // The channel is gone: the broker requeues what it held.
                mb.closed.cancel();
                return Err(e);
            }
        }
        lock(&self.settled).seen(&key.from, &key.message_id);
        Ok(Settled::Now)
    }

    /// Acknowledges the notices `ids` of `mb`; returns those it held.
    pub(super) async fn ack_notices(
        &self,
        mb: &Mailbox,
        ids: &[String],
    ) -> Result<Vec<String>, AmqpError> {
        let mut done = Vec::new();
        for id in ids {
            let tag = {
                let mut items = lock(&mb.items);
                let seq = items.notice_at.remove(id);
                seq.and_then(|s| items.notices.remove(&s))
                    .map(|(_, _, tag)| tag)
            };
            if let Some(tag) = tag {
                if let Err(e) = mb.notify.ack(tag).await {
                    mb.closed.cancel();
                    return Err(e);
                }
                done.push(id.clone());
            }
        }
        Ok(done)
    }
}

impl Mailbox {
    /// Counts a call as use.
    pub(super) fn touch(&self) {
        *lock(&self.last_call) = Instant::now();
    }

    /// Up to `limit` held deliveries that arrived from number `from` on,
    /// oldest first, each with its arrival number.
    pub(super) fn deliveries(&self, from: u64, limit: usize) -> Vec<(u64, (Key, Held))> {
        lock(&self.items).deliveries_from(from, limit)
    }

    /// The held delivery `key`.
    pub(super) fn delivery(&self, key: &Key) -> Option<Held> {
        let items = lock(&self.items);
        let seq = items.delivery_at.get(key)?;
        items.deliveries.get(seq).map(|(_, h)| h.clone())
    }

    /// The keys of the held deliveries that `matches` accepts.
    pub(super) fn keys_where(&self, matches: impl Fn(&Key, &Held) -> bool) -> Vec<Key> {
        lock(&self.items)
            .deliveries
            .values()
            .filter(|(k, h)| matches(k, h))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Up to `limit` held notices (id, message) that arrived from number
    /// `from` on, oldest first, each with its arrival number.
    pub(super) fn notices(&self, from: u64, limit: usize) -> Vec<(u64, (String, Message))> {
        lock(&self.items).notices_from(from, limit)
    }

    /// Held items arrived from `seq` on, and the next arrival number.
    pub(super) fn since(&self, seq: u64) -> Arrived {
        // One lock for all three, so no arrival falls between them.
        let items = lock(&self.items);
        Arrived {
            deliveries: items.deliveries_from(seq, usize::MAX),
            notices: items.notices_from(seq, usize::MAX),
            next: items.next,
        }
    }

    /// A receiver that changes at each arrival.
    pub(super) fn arrivals(&self) -> watch::Receiver<u64> {
        self.arrivals.subscribe()
    }

    /// Counts an open stream until the guard is dropped (a mailbox with a
    /// stream never closes for idleness).
    pub(super) fn stream_guard(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::SeqCst);
        StreamGuard(self.clone())
    }

    fn idle_for(&self) -> Option<Duration> {
        (self.streams.load(Ordering::SeqCst) == 0).then(|| lock(&self.last_call).elapsed())
    }

    fn take_delivery(&self, inbound: Inbound) {
        let key = Key::of(&inbound.message);
        let mut items = lock(&self.items);
        if let Some(seq) = items.delivery_at.get(&key).copied() {
            if let Some((_, held)) = items.deliveries.get_mut(&seq) {
                held.tags.push(inbound.delivery_tag);
                held.redelivered |= inbound.redelivered;
                return;
            }
        }
        let seq = items.next;
        items.next += 1;
        items.delivery_at.insert(key.clone(), seq);
        let held = Held {
            message: inbound.message,
            redelivered: inbound.redelivered,
            tags: vec![inbound.delivery_tag],
        };
        items.deliveries.insert(seq, (key, held));
        drop(items);
        self.arrivals.send_modify(|n| *n = seq + 1);
    }

    async fn take_notice(&self, inbound: Inbound) {
        let id = inbound.message.message_id.clone().unwrap_or_default();
        let seq = {
            let mut items = lock(&self.items);
            if items.notice_at.contains_key(&id) {
                None
            } else {
                let seq = items.next;
                items.next += 1;
                items.notice_at.insert(id.clone(), seq);
                items
                    .notices
                    .insert(seq, (id, inbound.message, inbound.delivery_tag));
                Some(seq)
            }
        };
        match seq {
            Some(seq) => self.arrivals.send_modify(|n| *n = seq + 1),
            // A second copy of a notice held: the first stands for it.
            None => {
                if self.notify.ack(inbound.delivery_tag).await.is_err() {
                    self.closed.cancel();
                }
            }
        }
    }
}

/// An open stream of a mailbox.
pub(super) struct StreamGuard(Arc<Mailbox>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Takes what the broker hands `mb` until it closes: idle for `idle`, a
/// consumer ends or fails, or shutdown. Then closes its channels (the broker
/// requeues what was held) and forgets it.
async fn pump(
    boxes: Arc<Mailboxes>,
    mb: Arc<Mailbox>,
    mut inbox: Subscription,
    mut notify: Subscription,
    idle: Duration,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(idle));
    let why = loop {
        tokio::select! {
            _ = mb.closed.cancelled() => break "closed",
            d = inbox.next() => match d {
                Some(Ok(d)) => mb.take_delivery(d),
                Some(Err(e)) => {
                    tracing::warn!(agency = %mb.code, error = %e, "gateway inbox consumer failed");
                    break "inbox consumer failed";
                }
                None => break "inbox consumer cancelled",
            },
            n = notify.next() => match n {
                Some(Ok(n)) => mb.take_notice(n).await,
                Some(Err(e)) => {
                    tracing::warn!(agency = %mb.code, error = %e, "gateway notify consumer failed");
                    break "notify consumer failed";
                }
                None => break "notify consumer cancelled",
            },
            _ = tick.tick() => {
                if mb.idle_for().is_some_and(|d| d >= idle) {
                    break "idle";
                }
            }
        }
    };
    mb.closed.cancel();
    {
        let mut open = boxes.open.lock().await;
        if open.get(&mb.code).is_some_and(|m| Arc::ptr_eq(m, &mb)) {
            open.remove(&mb.code);
        }
        crate::core::metrics::gateway_mailboxes(open.len());
    }
    inbox.close().await;
    notify.close().await;
    let held = {
        let items = lock(&mb.items);
        (items.deliveries.len(), items.notices.len())
    };
    tracing::info!(agency = %mb.code, why, deliveries = held.0, notices = held.1, "gateway mailbox closed; what it held goes back to the queues");
}

/// Locks `m`, through a poisoning (the data stays consistent: every
/// critical section here is a few map operations that cannot panic halfway).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

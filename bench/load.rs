//! Load generation: simulated agencies on their own AMQP connections (a
//! source publishes signed envelopes and reads its notices; a destination
//! consumes its inbox, verifies the hub signature and the digest, acks, and
//! sends status `01`), raw one-hop endpoints (publisher → durable queue →
//! consumer, no truc), and the drivers: closed loop (flat out with a fixed
//! window of messages in flight), open loop (fixed rate), and fixed count.
//!
//! Every message carries `x-bench-phase` and `x-bench-sent-ns` (not signed:
//! only `lgsp-` headers are) so the receiving side attributes it to its phase
//! and measures end-to-end latency on the run's monotonic clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use truc::auth::body_digest;
use truc::broker::{Link, Subscription};
use truc::client::{envelope_message, status_message, verify_hub_signature, Credentials, Outgoing};
use truc::code::AgencyCode;
use truc::envelope::Priority;
use truc::message::{Inbound, Message};

use crate::hub::Registered;
use crate::stats::now_ns;

/// Phases a run may have.
pub const MAX_PHASES: usize = 256;
/// Window permits are not returned.
pub const RELEASE_NONE: u8 = 0;
/// A window permit comes back when the destination receives the message.
pub const RELEASE_ON_RECEIVE: u8 = 1;
/// A window permit comes back when the source gets the `accepted` notice.
pub const RELEASE_ON_ACCEPT: u8 = 2;
/// Status publishes in flight at once across all destinations.
pub const STATUS_INFLIGHT: usize = 4096;
/// Header with the phase id.
pub const H_PHASE: &str = "x-bench-phase";
/// Header with the send time (ns on the run clock).
pub const H_SENT: &str = "x-bench-sent-ns";

/// Counters and the in-flight window of one phase.
pub struct Slot {
    /// Publishes started.
    pub sent: AtomicU64,
    /// Publishes that failed (error or timeout).
    pub failed: AtomicU64,
    /// Publishes not yet settled.
    pub publishing: AtomicU64,
    /// Received by a destination (or raw consumer).
    pub received: AtomicU64,
    /// `accepted` notices.
    pub accepted: AtomicU64,
    /// `rejected` notices.
    pub rejected: AtomicU64,
    /// Closed-loop window.
    pub window: Semaphore,
    /// When window permits come back (`RELEASE_*`).
    pub release: AtomicU8,
}

impl Slot {
    fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            publishing: AtomicU64::new(0),
            received: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            window: Semaphore::new(0),
            release: AtomicU8::new(RELEASE_NONE),
        }
    }

    fn give_back(&self, on: u8) {
        if self.release.load(Ordering::Relaxed) == on {
            self.window.add_permits(1);
        }
    }
}

/// One latency sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Phase the message was sent in.
    pub phase: u16,
    /// QCVN 102 priority code (0 for raw messages).
    pub prio: u8,
    /// Send time, ns on the run clock.
    pub sent_ns: u64,
    /// Latency, ns.
    pub lat_ns: u64,
}

/// Run-wide counters (for the progress line and the timeline).
#[derive(Default)]
pub struct Totals {
    /// Publishes started.
    pub sent: AtomicU64,
    /// Messages received by destinations.
    pub received: AtomicU64,
    /// `accepted` notices.
    pub accepted: AtomicU64,
    /// `delivered` notices.
    pub delivered_notices: AtomicU64,
    /// `status` notices.
    pub status_notices: AtomicU64,
    /// Status `01` messages published (confirmed).
    pub statuses_sent: AtomicU64,
    /// When the last piece of work arrived (a delivery, or an `accepted`,
    /// `delivered` or `status` notice), ns on the run clock: once a phase has
    /// drained, when its work was done.
    pub last_work_ns: AtomicU64,
}

impl Totals {
    /// Records that a piece of work arrived at `ns`.
    pub fn worked(&self, ns: u64) {
        self.last_work_ns.fetch_max(ns, Ordering::Relaxed);
    }
}

/// State shared by every task of the run.
pub struct Shared {
    /// Per-phase slots.
    pub slots: Vec<Slot>,
    /// Run totals.
    pub totals: Totals,
    /// End-to-end samples.
    pub e2e: Mutex<Vec<Sample>>,
    /// Acceptance-notice samples.
    pub accept: Mutex<Vec<Sample>>,
    /// Errors by kind: count and first detail.
    pub errors: Mutex<BTreeMap<String, (u64, String)>>,
    /// Bounds the status publishes in flight.
    pub status_permits: Arc<Semaphore>,
    /// Hub prefix (the `stores` scenario switches it between the hubs it starts).
    prefix: std::sync::RwLock<String>,
    /// Cancelled when the run stops.
    pub cancel: CancellationToken,
    /// Longest wait for one publisher confirm.
    pub publish_timeout: Duration,
}

impl Shared {
    /// New shared state for hub prefix `prefix`.
    pub fn new(prefix: &str, cancel: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            slots: (0..MAX_PHASES).map(|_| Slot::new()).collect(),
            totals: Totals::default(),
            e2e: Mutex::new(Vec::with_capacity(1 << 20)),
            accept: Mutex::new(Vec::with_capacity(1 << 20)),
            errors: Mutex::new(BTreeMap::new()),
            status_permits: Arc::new(Semaphore::new(STATUS_INFLIGHT)),
            prefix: std::sync::RwLock::new(prefix.to_owned()),
            cancel,
            publish_timeout: Duration::from_secs(30),
        })
    }

    /// The prefix of the hub the agencies publish to.
    pub fn prefix(&self) -> String {
        self.prefix
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Points the agencies at another hub's exchanges (its prefix).
    pub fn set_prefix(&self, prefix: &str) {
        *self.prefix.write().unwrap_or_else(|p| p.into_inner()) = prefix.to_owned();
    }

    /// The slot of phase `id` (ids beyond the table share the last slot).
    pub fn slot(&self, id: u16) -> &Slot {
        &self.slots[(id as usize).min(MAX_PHASES - 1)]
    }

    /// Records an error of `kind`.
    pub fn error(&self, kind: &str, detail: impl std::fmt::Display) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let entry = e
            .entry(kind.to_owned())
            .or_insert_with(|| (0, detail.to_string()));
        entry.0 += 1;
    }

    /// Total errors so far.
    pub fn error_count(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(n, _)| n)
            .sum()
    }

    /// Status publishes still in flight.
    pub fn statuses_in_flight(&self) -> usize {
        STATUS_INFLIGHT - self.status_permits.available_permits()
    }
}

fn stamp(m: &Message) -> Option<(u16, u64)> {
    let phase = m.header(H_PHASE)?.parse().ok()?;
    let sent = m.header(H_SENT)?.parse().ok()?;
    Some((phase, sent))
}

fn record_receive(shared: &Shared, m: &Message, prio: u8) {
    let now = now_ns();
    let Some((phase, sent)) = stamp(m) else {
        shared.error("receive-unstamped", "a message without x-bench headers");
        return;
    };
    record_sample(shared, phase, prio, sent, now);
}

/// Records that a message of `phase` (priority code `prio`) sent at `sent`
/// was received by its destination at `now` (ns on the run clock).
pub fn record_sample(shared: &Shared, phase: u16, prio: u8, sent: u64, now: u64) {
    shared
        .e2e
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Sample {
            phase,
            prio,
            sent_ns: sent,
            lat_ns: now.saturating_sub(sent),
        });
    shared.totals.received.fetch_add(1, Ordering::Relaxed);
    shared.totals.worked(now);
    let slot = shared.slot(phase);
    slot.received.fetch_add(1, Ordering::Relaxed);
    slot.give_back(RELEASE_ON_RECEIVE);
}

/// A simulated agency: one AMQP connection, its inbox and notify consumers.
pub struct Agency {
    /// Credentials.
    pub creds: Credentials,
    /// Its connection.
    pub link: Arc<Link>,
    /// Inbox queue.
    pub inbox: String,
    /// Notify queue.
    pub notify: String,
    /// Envelopes sent and not yet `accepted`: message id → (sent ns, phase).
    pub pending: Pending,
    /// Stops this agency's consumers.
    pub stop: CancellationToken,
}

impl Agency {
    /// Connects as `reg` (timeout `within`).
    pub async fn connect(
        url: &str,
        reg: &Registered,
        shared: &Shared,
        within: Duration,
    ) -> Result<Arc<Self>, String> {
        let link = tokio::time::timeout(
            within,
            Link::connect(url, &format!("bench agency {}", reg.creds.code)),
        )
        .await
        .map_err(|_| format!("connect timeout after {within:?}"))?
        .map_err(|e| e.to_string())?;
        Ok(Arc::new(Self {
            creds: reg.creds.clone(),
            link: Arc::new(link),
            inbox: reg.inbox.clone(),
            notify: reg.notify.clone(),
            pending: Mutex::new(HashMap::new()),
            stop: shared.cancel.child_token(),
        }))
    }

    /// Starts consuming the notify queue.
    pub async fn start_notices(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        prefetch: u16,
    ) -> Result<(), String> {
        let sub = tokio::time::timeout(
            Duration::from_secs(15),
            self.link.subscribe(&self.notify, prefetch, ""),
        )
        .await
        .map_err(|_| "subscribe notify: timeout".to_owned())?
        .map_err(|e| format!("subscribe notify: {e}"))?;
        tokio::spawn(notice_loop(shared.clone(), self.clone(), sub));
        Ok(())
    }

    /// Starts consuming the inbox (verify, ack, and status `01` when `status`).
    pub async fn start_inbox(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        prefetch: u16,
        status: bool,
    ) -> Result<(), String> {
        let sub = tokio::time::timeout(
            Duration::from_secs(15),
            self.link.subscribe(&self.inbox, prefetch, ""),
        )
        .await
        .map_err(|_| "subscribe inbox: timeout".to_owned())?
        .map_err(|e| format!("subscribe inbox: {e}"))?;
        tokio::spawn(inbox_loop(shared.clone(), self.clone(), sub, status));
        Ok(())
    }

    /// Stops the consumers and closes the connection.
    pub async fn close(&self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.link.close()).await;
    }
}

/// Next delivery, or `None` when stopped or the consumer ended.
async fn next(stop: &CancellationToken, sub: &mut Subscription) -> Option<Inbound> {
    tokio::select! {
        _ = stop.cancelled() => None,
        n = sub.next() => match n {
            Some(Ok(i)) => Some(i),
            _ => None,
        },
    }
}

async fn inbox_loop(shared: Arc<Shared>, me: Arc<Agency>, mut sub: Subscription, status: bool) {
    let deliver_key = format!("deliver.{}", me.creds.code);
    while let Some(inbound) = next(&me.stop, &mut sub).await {
        let m = &inbound.message;
        let prio = m
            .header("lgsp-priority")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        record_receive(&shared, m, prio);
        // Verify as an adapter must: the hub signature, then the digest.
        let verified = match verify_hub_signature(m, &deliver_key, &me.creds.secret) {
            Err(e) => Err(format!("hub signature: {e}")),
            Ok(()) if m.header("lgsp-digest") != Some(body_digest(&m.body).as_str()) => {
                Err("body does not match lgsp-digest".to_owned())
            }
            Ok(()) => Ok(()),
        };
        if let Err(e) = verified {
            shared.error("delivery-verify", e);
        }
        if m.header("lgsp-attempt").is_some_and(|a| a != "1") {
            shared.error(
                "delivery-repeat",
                format!("lgsp-attempt {:?}", m.header("lgsp-attempt")),
            );
        }
        if let Err(e) = sub.ack(inbound.delivery_tag).await {
            if !me.stop.is_cancelled() {
                shared.error("inbox-ack", e);
            }
            break;
        }
        if !status {
            continue;
        }
        let (Some(reference), Some(from)) = (
            m.message_id.clone(),
            m.header("lgsp-from")
                .and_then(|f| AgencyCode::parse(f).ok()),
        ) else {
            shared.error("delivery-fields", "no message_id or lgsp-from");
            continue;
        };
        let permit = tokio::select! {
            _ = me.stop.cancelled() => break,
            p = shared.status_permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (shared, me) = (shared.clone(), me.clone());
        tokio::spawn(async move {
            let msg = status_message(
                &shared.prefix(),
                &me.creds,
                &reference,
                "01",
                Some(&from),
                None,
            );
            match tokio::time::timeout(shared.publish_timeout, me.link.publish(&msg)).await {
                Ok(Ok(())) => {
                    shared.totals.statuses_sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => shared.error("status-publish", e),
                Err(_) => shared.error("status-publish", "confirm timeout"),
            }
            drop(permit);
        });
    }
}

async fn notice_loop(shared: Arc<Shared>, me: Arc<Agency>, mut sub: Subscription) {
    while let Some(inbound) = next(&me.stop, &mut sub).await {
        take_notice(&shared, &me.creds, &me.pending, &inbound.message, now_ns());
        if let Err(e) = sub.ack(inbound.delivery_tag).await {
            if !me.stop.is_cancelled() {
                shared.error("notice-ack", e);
            }
            break;
        }
    }
}

/// Envelopes sent and not yet `accepted`: message id → (sent ns, phase).
pub type Pending = Mutex<HashMap<String, (u64, u16)>>;

/// Checks the hub signature of the notice `m` to the source `creds`
/// (an error when it does not verify), then counts it ([`count_notice`]).
/// True when it verified.
pub fn take_notice(
    shared: &Shared,
    creds: &Credentials,
    pending: &Pending,
    m: &Message,
    now: u64,
) -> bool {
    let verified = verify_hub_signature(m, &format!("notice.{}", creds.code), &creds.secret);
    if let Err(e) = &verified {
        shared.error("notice-verify", e);
    }
    count_notice(
        shared,
        pending,
        m.header("lgsp-notice").unwrap_or(""),
        m.header("lgsp-ref").unwrap_or(""),
        m.header("lgsp-reason").unwrap_or(""),
        m.header("lgsp-detail").unwrap_or(""),
        now,
    );
    verified.is_ok()
}

/// Counts a notice of `kind` about `reference` that arrived at `now` for a
/// source whose unaccepted envelopes are `pending` (AMQP or gateway): an `accepted` notice
/// gives an acceptance-latency sample, a `delivered` or `status` notice is
/// counted (the drain waits for them), anything else is an error and, for
/// an envelope of the run, its refusal.
pub fn count_notice(
    shared: &Shared,
    pending: &Pending,
    kind: &str,
    reference: &str,
    reason: &str,
    detail: &str,
    now: u64,
) {
    match kind {
        "accepted" => {
            shared.totals.accepted.fetch_add(1, Ordering::Relaxed);
            shared.totals.worked(now);
            let pending = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(reference);
            if let Some((sent, phase)) = pending {
                shared
                    .accept
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Sample {
                        phase,
                        prio: 0,
                        sent_ns: sent,
                        lat_ns: now.saturating_sub(sent),
                    });
                let slot = shared.slot(phase);
                slot.accepted.fetch_add(1, Ordering::Relaxed);
                slot.give_back(RELEASE_ON_ACCEPT);
            }
        }
        "delivered" => {
            shared
                .totals
                .delivered_notices
                .fetch_add(1, Ordering::Relaxed);
            shared.totals.worked(now);
        }
        "status" => {
            shared.totals.status_notices.fetch_add(1, Ordering::Relaxed);
            shared.totals.worked(now);
        }
        kind => {
            shared.error(
                &format!("notice-{kind}-{reason}"),
                format!("{reference}: {detail}"),
            );
            let pending = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(reference);
            if let Some((_, phase)) = pending {
                let slot = shared.slot(phase);
                slot.rejected.fetch_add(1, Ordering::Relaxed);
                slot.window.add_permits(1);
            }
        }
    }
}

/// Raw one-hop endpoints: publisher connections, durable queues, consumer connections.
pub struct RawSet {
    /// Publisher connections.
    pub pubs: Vec<Arc<Link>>,
    /// Consumer connections (one per queue).
    pub cons: Vec<Arc<Link>>,
    /// The durable queues.
    pub queues: Vec<String>,
    /// Stops the consumers.
    pub stop: CancellationToken,
}

impl RawSet {
    /// Declares `queues` (with `arguments`) through `ctl` and opens `publishers` + one consumer connection per queue.
    pub async fn open(
        url: &str,
        ctl: &Link,
        queues: Vec<String>,
        arguments: BTreeMap<String, truc::topology::ArgValue>,
        publishers: usize,
        prefetch: u16,
        shared: &Arc<Shared>,
    ) -> Result<Self, String> {
        for q in &queues {
            let spec = truc::topology::QueueSpec {
                name: q.clone(),
                bind: Vec::new(),
                arguments: arguments.clone(),
            };
            tokio::time::timeout(Duration::from_secs(15), ctl.declare_queue(&spec))
                .await
                .map_err(|_| format!("declare {q}: timeout"))?
                .map_err(|e| format!("declare {q}: {e}"))?;
        }
        let stop = shared.cancel.child_token();
        let connect = |name: String| async move {
            tokio::time::timeout(Duration::from_secs(15), Link::connect(url, &name))
                .await
                .map_err(|_| format!("{name}: connect timeout"))?
                .map(Arc::new)
                .map_err(|e| format!("{name}: {e}"))
        };
        let mut pubs = Vec::new();
        for i in 0..publishers {
            pubs.push(connect(format!("bench raw publisher {i}")).await?);
        }
        let mut cons = Vec::new();
        for (i, q) in queues.iter().enumerate() {
            let link = connect(format!("bench raw consumer {i}")).await?;
            let sub =
                tokio::time::timeout(Duration::from_secs(15), link.subscribe(q, prefetch, ""))
                    .await
                    .map_err(|_| format!("subscribe {q}: timeout"))?
                    .map_err(|e| format!("subscribe {q}: {e}"))?;
            tokio::spawn(raw_loop(shared.clone(), stop.clone(), sub));
            cons.push(link);
        }
        Ok(Self {
            pubs,
            cons,
            queues,
            stop,
        })
    }

    /// Stops the consumers and closes every connection.
    pub async fn close(&self) {
        self.stop.cancel();
        for l in self.pubs.iter().chain(self.cons.iter()) {
            let _ = tokio::time::timeout(Duration::from_secs(5), l.close()).await;
        }
    }
}

async fn raw_loop(shared: Arc<Shared>, stop: CancellationToken, mut sub: Subscription) {
    while let Some(inbound) = next(&stop, &mut sub).await {
        record_receive(&shared, &inbound.message, 0);
        if let Err(e) = sub.ack(inbound.delivery_tag).await {
            if !stop.is_cancelled() {
                shared.error("raw-ack", e);
            }
            break;
        }
    }
}

/// A Priority mix: weights per code 0–3.
#[derive(Debug, Clone)]
pub struct Mix {
    weights: Vec<(u8, u32)>,
    total: u32,
}

impl Mix {
    /// Parses `0:70,1:20,2:9,3:1`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut weights = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (code, w) = part
                .split_once(':')
                .ok_or_else(|| format!("priority mix {s:?}: expected code:weight"))?;
            let code: u8 = code
                .trim()
                .parse()
                .map_err(|_| format!("priority mix: bad code {code:?}"))?;
            if code > 3 {
                return Err("priority mix: codes 0-3 (4 needs a deadline)".into());
            }
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| format!("priority mix: bad weight {w:?}"))?;
            weights.push((code, w));
        }
        let total = weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return Err("priority mix: weights sum to 0".into());
        }
        Ok(Self { weights, total })
    }

    /// Only priority `code`.
    pub fn only(code: u8) -> Self {
        Self {
            weights: vec![(code, 1)],
            total: 1,
        }
    }

    fn pick(&self) -> Priority {
        let mut x = rand::thread_rng().gen_range(0..self.total);
        for (code, w) in &self.weights {
            if x < *w {
                return Priority::new(*code).unwrap_or(Priority::NORMAL);
            }
            x -= w;
        }
        Priority::NORMAL
    }
}

/// Pre-built messages: (source index, message), taken from the back.
pub type Pool = Mutex<Vec<(usize, Message)>>;

/// Where a phase's messages go.
pub enum Route {
    /// Raw one hop: default exchange → queue.
    Raw {
        /// Publisher connections.
        pubs: Vec<Arc<Link>>,
        /// Queues.
        queues: Vec<String>,
        /// Message template (body and a header block the size of an envelope's).
        template: Message,
    },
    /// Through truc: signed envelopes from sources to destinations.
    Truc {
        /// Sources.
        sources: Vec<Arc<Agency>>,
        /// Destination codes.
        dests: Vec<AgencyCode>,
        /// Body.
        body: Vec<u8>,
        /// Priority mix.
        mix: Mix,
        /// Pre-signed messages (then `body`/`mix` are unused).
        pool: Option<Pool>,
    },
    /// Through truc's HTTPS gateway: signed envelopes posted to
    /// `/v1/envelopes` by agencies with a session (`crate::gateway`).
    Gateway {
        /// Sources (with their sessions).
        sources: Vec<Arc<crate::gateway::GwAgency>>,
        /// Destination codes.
        dests: Vec<AgencyCode>,
        /// Body.
        body: Vec<u8>,
        /// The scenario's gateway state (send times, HTTP samples).
        state: Arc<crate::gateway::GwState>,
    },
}

/// A raw message template: the body plus the header block of a signed
/// envelope, so raw messages are the size of truc's.
pub fn raw_template(body_len: usize) -> Message {
    let creds = Credentials {
        code: AgencyCode::parse("B0.TEMPLATE").expect("valid code"),
        access_key: "AK0000000000".into(),
        secret: "template".into(),
        previous_keys: Vec::new(),
    };
    let out = outgoing(
        vec![AgencyCode::parse("B0.TEMPLATE2").expect("valid code")],
        Priority::NORMAL,
        vec![b'x'; body_len],
    );
    let mut m = envelope_message("raw.", &creds, &out);
    m.exchange = String::new();
    m
}

/// An envelope of `body` to `to`.
pub fn outgoing(to: Vec<AgencyCode>, priority: Priority, body: Vec<u8>) -> Outgoing {
    Outgoing {
        to,
        subject: "Văn bản thử tải".into(),
        priority,
        data_type: "data".into(),
        content_type: "application/octet-stream".into(),
        body,
        message_id: None,
        extra: Vec::new(),
    }
}

/// Outcome of one send.
enum Sent {
    Ok,
    Failed,
    Exhausted,
}

/// Builds and publishes message number `seq` of `phase`.
async fn send_one(shared: &Shared, route: &Route, seq: u64, phase: u16) -> Sent {
    let slot = shared.slot(phase);
    if let Route::Gateway {
        sources,
        dests,
        body,
        state,
    } = route
    {
        let ok = crate::gateway::send_one(shared, state, sources, dests, body, seq, phase).await;
        return if ok { Sent::Ok } else { Sent::Failed };
    }
    let (link, mut msg, source) = match route {
        Route::Raw {
            pubs,
            queues,
            template,
        } => {
            let mut m = template.clone();
            m.routing_key = queues[(seq % queues.len() as u64) as usize].clone();
            let link = pubs[(seq % pubs.len() as u64) as usize].clone();
            (link, m, None)
        }
        Route::Truc {
            sources,
            dests,
            body,
            mix,
            pool,
        } => {
            let (src_idx, m) = match pool {
                Some(pool) => match pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                    Some(x) => x,
                    None => return Sent::Exhausted,
                },
                None => {
                    let m_src = sources.len() as u64;
                    let src_idx = (seq % m_src) as usize;
                    let src = &sources[src_idx];
                    let k = dests.len() as u64;
                    // Each source cycles through every destination, never itself.
                    let mut d = ((seq / m_src + src_idx as u64) % k) as usize;
                    if dests[d] == src.creds.code {
                        d = (d + 1) % dests.len();
                    }
                    let out = outgoing(vec![dests[d].clone()], mix.pick(), body.clone());
                    (
                        src_idx,
                        envelope_message(&shared.prefix(), &src.creds, &out),
                    )
                }
            };
            let src = sources[src_idx].clone();
            (src.link.clone(), m, Some(src))
        }
        Route::Gateway { .. } => unreachable!("handled above"),
    };
    let sent = now_ns();
    msg.set_header(H_PHASE, phase.to_string());
    msg.set_header(H_SENT, sent.to_string());
    if let (Some(src), Some(id)) = (&source, &msg.message_id) {
        src.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), (sent, phase));
    }
    slot.sent.fetch_add(1, Ordering::Relaxed);
    shared.totals.sent.fetch_add(1, Ordering::Relaxed);
    slot.publishing.fetch_add(1, Ordering::Relaxed);
    let res = tokio::time::timeout(shared.publish_timeout, link.publish(&msg)).await;
    slot.publishing.fetch_sub(1, Ordering::Relaxed);
    let failure = match res {
        Ok(Ok(())) => return Sent::Ok,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "publisher confirm timeout".to_owned(),
    };
    shared.error("publish", failure);
    slot.failed.fetch_add(1, Ordering::Relaxed);
    if slot.release.load(Ordering::Relaxed) != RELEASE_NONE {
        slot.window.add_permits(1);
    }
    if let (Some(src), Some(id)) = (&source, &msg.message_id) {
        src.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
    Sent::Failed
}

/// What a driver did.
#[derive(Debug, Clone, Default)]
pub struct Driven {
    /// Open loop: messages due but not started because too many were in flight.
    pub behind: u64,
    /// A pre-built pool ran out.
    pub exhausted: bool,
}

/// When a closed-loop driver stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this long.
    After(Duration),
    /// After this many messages (bounded by a time limit too).
    Count(u64, Duration),
}

/// Flat out: keeps `window` messages in flight; a permit returns per `release`.
pub async fn drive_closed(
    shared: Arc<Shared>,
    route: Arc<Route>,
    phase: u16,
    window: usize,
    release: u8,
    stop: Stop,
    early: CancellationToken,
) -> Driven {
    let slot = shared.slot(phase);
    slot.release.store(release, Ordering::Relaxed);
    slot.window.add_permits(window);
    let exhausted = Arc::new(AtomicBool::new(false));
    let (deadline, count) = match stop {
        Stop::After(d) => (Instant::now() + d, u64::MAX),
        Stop::Count(n, limit) => (Instant::now() + limit, n),
    };
    let mut seq = 0u64;
    while seq < count && !exhausted.load(Ordering::Relaxed) && !early.is_cancelled() {
        let permit = tokio::select! {
            _ = early.cancelled() => break,
            _ = tokio::time::sleep_until(deadline.into()) => break,
            p = slot.window.acquire() => match p { Ok(p) => p, Err(_) => break },
        };
        permit.forget();
        let (shared, route, exhausted) = (shared.clone(), route.clone(), exhausted.clone());
        tokio::spawn(async move {
            if let Sent::Exhausted = send_one(&shared, &route, seq, phase).await {
                exhausted.store(true, Ordering::Relaxed);
            }
        });
        seq += 1;
    }
    // No more permits for this phase.
    slot.release.store(RELEASE_NONE, Ordering::Relaxed);
    Driven {
        behind: 0,
        exhausted: exhausted.load(Ordering::Relaxed),
    }
}

/// Open loop: `rate` messages per second for `duration`, at most
/// `max_inflight` publishes awaiting their confirm (beyond that the driver
/// falls behind and says so).
pub async fn drive_rate(
    shared: Arc<Shared>,
    route: Arc<Route>,
    phase: u16,
    rate: f64,
    duration: Duration,
    max_inflight: usize,
    early: CancellationToken,
) -> Driven {
    let inflight = Arc::new(Semaphore::new(max_inflight));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    let mut behind = 0u64;
    loop {
        tokio::select! {
            _ = early.cancelled() => break,
            _ = tick.tick() => {}
        }
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (rate * elapsed.as_secs_f64()) as u64;
        while seq < due {
            let Ok(permit) = inflight.clone().try_acquire_owned() else {
                behind += due - seq;
                seq = due;
                break;
            };
            let (shared, route) = (shared.clone(), route.clone());
            let n = seq;
            tokio::spawn(async move {
                send_one(&shared, &route, n, phase).await;
                drop(permit);
            });
            seq += 1;
        }
    }
    Driven {
        behind,
        exhausted: false,
    }
}

/// Connects and starts `regs` as agencies, `concurrency` at a time; stops
/// trying after `give_up_after` consecutive failures. Returns the agencies
/// held (in `regs` order, failures skipped) and the failures.
pub async fn connect_agencies(
    url: &str,
    regs: &[Registered],
    shared: &Arc<Shared>,
    inbox_prefetch: Option<u16>,
    concurrency: usize,
    give_up_after: usize,
    within: Duration,
) -> (Vec<Arc<Agency>>, Vec<String>) {
    use futures_util::stream::{self, StreamExt};
    let consecutive = Arc::new(AtomicU64::new(0));
    let results: Vec<(usize, Result<Arc<Agency>, String>)> = stream::iter(regs.iter().enumerate())
        .map(|(i, reg)| {
            let consecutive = consecutive.clone();
            let shared = shared.clone();
            async move {
                if consecutive.load(Ordering::Relaxed) >= give_up_after as u64
                    || shared.cancel.is_cancelled()
                {
                    return (
                        i,
                        Err("not attempted: too many consecutive failures".to_owned()),
                    );
                }
                let r = match Agency::connect(url, reg, &shared, within).await {
                    Err(e) => Err(e),
                    Ok(a) => {
                        let started = async {
                            a.start_notices(&shared, 256).await?;
                            if let Some(p) = inbox_prefetch {
                                a.start_inbox(&shared, p, true).await?;
                            }
                            Ok::<_, String>(())
                        }
                        .await;
                        match started {
                            Ok(()) => Ok(a),
                            Err(e) => {
                                a.close().await;
                                Err(e)
                            }
                        }
                    }
                };
                match &r {
                    Ok(_) => consecutive.store(0, Ordering::Relaxed),
                    Err(_) => {
                        consecutive.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (i, r)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut ordered: Vec<Option<Result<Arc<Agency>, String>>> =
        (0..regs.len()).map(|_| None).collect();
    for (i, r) in results {
        ordered[i] = Some(r);
    }
    let mut held = Vec::new();
    let mut failed = Vec::new();
    for (i, r) in ordered.into_iter().enumerate() {
        match r {
            Some(Ok(a)) => held.push(a),
            Some(Err(e)) => failed.push(format!("{}: {e}", regs[i].creds.code)),
            None => failed.push(format!("{}: not attempted", regs[i].creds.code)),
        }
    }
    (held, failed)
}

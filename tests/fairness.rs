//! Fairness between sources: each agency publishes into its own ingress
//! queue and the router consumes every queue on its own, so a source that
//! floods the hub does not delay a quiet one, whatever AMQP priority or
//! `lgsp-time` it writes; and a destination's `01` receipts are relayed while
//! a flood to that destination goes on.
//!
//! The bounds here are generous sanity bounds for a loaded CI machine; the
//! figures are printed, and the speed targets are measured by
//! `truc-bench --scenario fairness`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use truc::client::Client;
use truc::notice::NoticeKind;
use truc::reason::Reason;

/// The flooding source.
const A: &str = "000.00.31.H41";
/// The destination A floods (it consumes, and receipts B's envelopes).
const D: &str = "000.00.32.H41";
/// The quiet source.
const B: &str = "000.00.33.H41";
/// The quiet source's own destination (it consumes).
const E: &str = "000.00.34.H41";

/// Envelopes the quiet source sends, one every [`QUIET_EVERY`].
const QUIET_SENDS: usize = 25;
const QUIET_EVERY: Duration = Duration::from_millis(200);
/// Upper bound on the flood, whatever the machine's speed.
const FLOOD_MAX: usize = 15_000;
/// The sanity bound on a quiet source's p99 (the target is 1 s: see bench/).
const BOUND: Duration = Duration::from_secs(5);

/// A's own rate is high, so its flood reaches the router instead of being
/// refused as rate-limited.
const ACCESS: &str = "[rate]\nenvelopes_per_s = 500.0\nburst = 1000\n\
[[rate.agency]]\ncode = \"000.00.31.H41\"\nenvelopes_per_s = 1000000.0\nburst = 1000000\n\
[permissions]\ndefault = \"allow\"\n";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flood {
    /// AMQP priority 5 on every message, `lgsp-priority` 0.
    Priority5,
    /// `lgsp-time` moved 1 s forward every 500 envelopes.
    ForwardDated,
}

/// p50, p99 and max of `v` (sorted here).
fn percentiles(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    assert!(!v.is_empty());
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.50), at(0.99), v[v.len() - 1])
}

/// Floods `to` from `a` until `stop` or [`FLOOD_MAX`]; returns how many were published.
async fn flood(a: Arc<Client>, prefix: String, flood: Flood, stop: Arc<AtomicBool>) -> usize {
    let creds = a.credentials().clone();
    let start = truc::time::now_ms();
    let mut sent = 0;
    while sent < FLOOD_MAX && !stop.load(Ordering::SeqCst) {
        let batch: Vec<_> = (sent..sent + 100)
            .map(|i| {
                let mut m = envelope(D).signed(&prefix, &creds);
                match flood {
                    Flood::Priority5 => m.priority = Some(5),
                    Flood::ForwardDated => m.set_header(
                        "lgsp-time",
                        truc::time::format_rfc3339(start + (i as i64 / 500) * 1000),
                    ),
                }
                resign(&mut m, &creds.secret);
                m
            })
            .collect();
        let published = futures_util::future::join_all(batch.iter().map(|m| a.publish(m))).await;
        for r in published {
            r.unwrap();
        }
        sent += batch.len();
    }
    sent
}

/// What the destinations saw.
#[derive(Default)]
struct Seen {
    /// B's envelopes at E, by message id.
    at_e: HashMap<String, Instant>,
    /// When D sent `01` for B's envelopes, by message id.
    receipted: HashMap<String, Instant>,
    /// Deliveries D took before B's Hỏa tốc envelope (when it came).
    before_flash: Option<usize>,
    /// A's deliveries D saw with an AMQP priority other than that of Thường.
    a_priority_wrong: usize,
}

/// Consumes `client`'s inbox, acking everything, until `stop`. At D, B's
/// envelopes are receipted (`01`).
async fn consume(
    mut client: Client,
    prefetch: u16,
    seen: Arc<std::sync::Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> Client {
    let mut inbox = client.inbox(prefetch).await.unwrap();
    let is_d = client.credentials().code == code(D);
    let mut taken = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let Some(i) = next_within(&mut inbox, Duration::from_millis(200)).await else {
            continue;
        };
        let amqp_priority = i.message.priority;
        let r = client.receive(i).unwrap();
        inbox.ack(r.delivery_tag).await.unwrap();
        let now = Instant::now();
        taken += 1;
        if r.from == code(A) {
            if amqp_priority != Some(1) {
                seen.lock().unwrap().a_priority_wrong += 1;
            }
            continue;
        }
        if !is_d {
            seen.lock().unwrap().at_e.insert(r.message_id.clone(), now);
            continue;
        }
        if r.priority == 3 {
            seen.lock().unwrap().before_flash = Some(taken - 1);
            continue;
        }
        client
            .send_status(&r.message_id, "01", Some(&code(B)), None)
            .await
            .unwrap();
        seen.lock()
            .unwrap()
            .receipted
            .insert(r.message_id.clone(), Instant::now());
    }
    client
}

/// Figures of one run.
struct Run {
    quiet: (Duration, Duration, Duration),
    receipts: (Duration, Duration, Duration),
    flooded: usize,
}

/// One run: A floods D (`kind`), B sends one Thường envelope every 200 ms to E
/// and, every fifth, to D too; D receipts B's. With [`Flood::Priority5`] D
/// starts reading only once B's Hỏa tốc envelope waits in its inbox behind
/// the flood, and must get it first.
async fn run(kind: Flood) -> Run {
    let mut hub = TestHub::start_with_policies(&[("access.toml", ACCESS)]).await;
    let (ca, cd, cb, ce) = (
        hub.register(A).await,
        hub.register(D).await,
        hub.register(B).await,
        hub.register(E).await,
    );
    let a = Arc::new(hub.client(&ca).await);
    let b = hub.client(&cb).await;
    let mut b_notices = b.notices(256).await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let consume_e = tokio::spawn(consume(
        hub.client(&ce).await,
        64,
        seen.clone(),
        stop.clone(),
    ));
    let d = hub.client(&cd).await;
    // Delivered notices B receives, by message id.
    let delivered: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let flood_task = tokio::spawn(flood(a.clone(), hub.prefix.clone(), kind, stop.clone()));
    // Let the flood build up first (in D's inbox, which nobody reads yet).
    let deadline = Instant::now() + Duration::from_secs(15);
    while hub.depth(&format!("inbox.{D}")).await < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let consume_d = if kind == Flood::Priority5 {
        let flash = b.send(&envelope(D).priority(3).build()).await.unwrap();
        let ns = notices(&b, &mut b_notices, 1, Duration::from_secs(30)).await;
        assert!(
            ns.iter()
                .any(|n| n.notice == NoticeKind::Accepted && n.reference == flash),
            "{ns:?}"
        );
        // The accepted notice may come before the delivery is in D's inbox
        // (they are published together, PROTOCOL.md §5.3): the hub logs the
        // envelope accepted once every publish of it was confirmed.
        hub.wait_log(&["envelope accepted", &flash], 1).await;
        // The flash now waits in D's inbox, with whatever of the flood was routed.
        let waiting = hub.depth(&format!("inbox.{D}")).await;
        let t = tokio::spawn(consume(d, 16, seen.clone(), stop.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().before_flash.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = seen.lock().unwrap().before_flash;
        println!(
            "Hỏa tốc envelope: {waiting} messages in D's inbox, taken after {before:?} of them"
        );
        assert!(
            waiting > 100,
            "the flood should have queued at D: {waiting}"
        );
        assert!(
            before.is_some_and(|n| n < 16),
            "the Hỏa tốc envelope came after {before:?} of the {waiting} flood messages"
        );
        t
    } else {
        tokio::spawn(consume(d, 64, seen.clone(), stop.clone()))
    };

    let mut sent_at = HashMap::new();
    let collected = Arc::new(AtomicUsize::new(0));
    let collector = {
        let delivered = delivered.clone();
        let collected = collected.clone();
        tokio::spawn(async move {
            loop {
                let Some(i) = next_within(&mut b_notices, Duration::from_secs(60)).await else {
                    return (b, b_notices);
                };
                let n = b.notice(&i).unwrap();
                b_notices.ack(i.delivery_tag).await.unwrap();
                assert!(
                    !(n.notice == NoticeKind::Rejected && n.reason == Some(Reason::RateLimited)),
                    "{n:?}"
                );
                if n.notice == NoticeKind::Delivered && n.dest == Some(code(D)) {
                    delivered
                        .lock()
                        .unwrap()
                        .insert(n.reference, Instant::now());
                    collected.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let quiet_client = hub.client(&cb).await;
    let mut tick = tokio::time::interval(QUIET_EVERY);
    for i in 0..QUIET_SENDS {
        tick.tick().await;
        let mut e = envelope(E).subject(format!("quiet {i}"));
        if i % 5 == 0 {
            e = e.also_to(D);
        }
        let m = e.signed(&hub.prefix, &cb);
        quiet_client.publish(&m).await.unwrap();
        sent_at.insert(m.message_id.unwrap(), Instant::now());
    }
    // Every quiet envelope reached E, every receipt came back (bounded waits).
    let want_receipts = QUIET_SENDS.div_ceil(5);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (seen.lock().unwrap().at_e.len() < QUIET_SENDS
        || collected.load(Ordering::SeqCst) < want_receipts)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let flooded = flood_task.await.unwrap();
    consume_d.await.unwrap();
    consume_e.await.unwrap();
    collector.abort();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.a_priority_wrong, 0, "A's AMQP priority reached D");
    let mut quiet: Vec<Duration> = sent_at
        .iter()
        .filter_map(|(id, t)| seen.at_e.get(id).map(|r| r.duration_since(*t)))
        .collect();
    assert_eq!(quiet.len(), QUIET_SENDS, "quiet envelopes lost at E");
    let delivered = delivered.lock().unwrap();
    let mut receipts: Vec<Duration> = seen
        .receipted
        .iter()
        .filter_map(|(id, t)| delivered.get(id).map(|r| r.duration_since(*t)))
        .collect();
    assert_eq!(receipts.len(), want_receipts, "receipts not relayed");
    Run {
        quiet: percentiles(&mut quiet),
        receipts: percentiles(&mut receipts),
        flooded,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_does_not_delay_a_quiet_source_nor_its_receipts() {
    for kind in [Flood::Priority5, Flood::ForwardDated] {
        let r = run(kind).await;
        let (p50, p99, max) = r.quiet;
        let (r50, r99, rmax) = r.receipts;
        println!(
            "{kind:?} flood ({} envelopes): quiet source send→delivery p50 {p50:?} p99 {p99:?} max {max:?}; \
             D's 01 → B's delivered notice p50 {r50:?} p99 {r99:?} max {rmax:?}",
            r.flooded
        );
        assert!(
            r.flooded >= 1_000,
            "the flood was too small to test anything"
        );
        assert!(p99 <= BOUND, "{kind:?}: quiet p99 {p99:?}");
        assert!(rmax <= BOUND, "{kind:?}: receipts max {rmax:?}");
    }
}

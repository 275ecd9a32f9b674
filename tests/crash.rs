//! Crash safety against the real broker: SIGKILL and restart under a stream
//! of envelopes, a broker-side connection close, SIGTERM draining.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{envelope, next_within, TestHub};
use tokio::sync::Mutex;
use truc::client::{Client, Credentials, Outgoing};

struct Tally {
    distinct: Mutex<HashSet<String>>,
    repeats: AtomicU64,
    marked_repeats: AtomicU64,
}

/// Envelope number `i` of the stream.
fn numbered(i: usize) -> Outgoing {
    envelope("000.00.32.H41")
        .subject(format!("stream {i}"))
        .data_type("data")
        .body(format!("envelope number {i}"))
        .id(format!("STREAM-{i:06}"))
        .build()
}

/// Publishes `n` envelopes at about `per_s` a second.
fn spawn_sender(client: Client, n: usize, per_s: u64) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        let gap = Duration::from_micros(1_000_000 / per_s);
        let start = Instant::now();
        for i in 0..n {
            client
                .send(&numbered(i))
                .await
                .expect("broker takes the envelope");
            let due = start + gap * (i as u32 + 1);
            tokio::time::sleep_until(due.into()).await;
        }
        client
    })
}

/// Consumes the inbox, counting distinct envelopes and repeats.
fn spawn_receiver(
    hub_prefix: String,
    creds: Credentials,
    tally: Arc<Tally>,
    n: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = Client::connect(&common::amqp_url(), &hub_prefix, creds)
            .await
            .unwrap();
        let mut inbox = client.inbox(100).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while tally.distinct.lock().await.len() < n && Instant::now() < deadline {
            let Some(d) = next_within(&mut inbox, Duration::from_secs(1)).await else {
                continue;
            };
            let tag = d.delivery_tag;
            let r = client.receive(d).expect("delivery verifies");
            if r.repeat {
                tally.repeats.fetch_add(1, Ordering::Relaxed);
                if r.attempt > 1 {
                    tally.marked_repeats.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                tally.distinct.lock().await.insert(r.message_id);
            }
            inbox.ack(tag).await.unwrap();
        }
    })
}

/// Registers a source and a destination, starts a receiver and a sender of `n` envelopes.
async fn start_stream(
    hub: &mut TestHub,
    n: usize,
    per_s: u64,
) -> (
    Arc<Tally>,
    tokio::task::JoinHandle<()>,
    tokio::task::JoinHandle<Client>,
) {
    let src = hub.register("000.00.31.H41").await;
    let dst = hub.register("000.00.32.H41").await;
    let tally = Arc::new(Tally {
        distinct: Mutex::new(HashSet::new()),
        repeats: AtomicU64::new(0),
        marked_repeats: AtomicU64::new(0),
    });
    let receiver = spawn_receiver(hub.prefix.clone(), dst, tally.clone(), n);
    let sender = spawn_sender(hub.client(&src).await, n, per_s);
    (tally, receiver, sender)
}

async fn wait_for(tally: &Tally, n: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let got = tally.distinct.lock().await.len();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_under_load_loses_nothing() {
    const N: usize = 3000;
    const KILLS: u64 = 3;
    let mut hub = TestHub::start().await;
    let (tally, receiver, sender) = start_stream(&mut hub, N, 400).await;
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        hub.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        hub.spawn().await;
    }
    sender.await.unwrap().close().await;
    let got = wait_for(&tally, N, Duration::from_secs(60)).await;
    receiver.abort();
    let repeats = tally.repeats.load(Ordering::Relaxed);
    let marked = tally.marked_repeats.load(Ordering::Relaxed);
    eprintln!("sigkill x3 under {N} envelopes: distinct {got}, repeats {repeats} (marked attempt>1: {marked})");
    assert_eq!(
        got,
        N,
        "every accepted envelope arrives; log:\n{}",
        hub.log()
    );
    // A kill can leave at most the router's in-flight window (its ingress
    // prefetch) delivered but not acked, each redelivered once after the restart.
    let prefetch = u64::from(hub.prefetch());
    assert!(
        repeats <= KILLS * prefetch,
        "repeats stay within the in-flight window ({KILLS} kills × prefetch {prefetch}): {repeats}"
    );
    // Every repeat is marked (docs/PROTOCOL.md §6.2).
    assert_eq!(marked, repeats, "every repeat carries lgsp-attempt > 1");
    assert!(hub.terminate().success(), "SIGTERM exits cleanly");
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes the broker connection of the hub with `prefix`, from the broker side.
fn close_router_connection(prefix: &str) -> bool {
    let list = rabbitmqctl(&["list_connections", "pid", "client_properties", "-q"]);
    let needle = format!("truc router {prefix}");
    let mut closed = false;
    for line in list.lines().filter(|l| l.contains(&needle)) {
        if let Some(pid) = line.split_whitespace().next() {
            rabbitmqctl(&["close_connection", pid, "closed by test"]);
            closed = true;
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_closing_the_connection_is_survived() {
    const N: usize = 1500;
    let mut hub = TestHub::start().await;
    let (tally, receiver, sender) = start_stream(&mut hub, N, 300).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        close_router_connection(&hub.prefix),
        "found the router's connection"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        close_router_connection(&hub.prefix),
        "the router reconnected"
    );
    sender.await.unwrap().close().await;
    let got = wait_for(&tally, N, Duration::from_secs(60)).await;
    receiver.abort();
    let repeats = tally.repeats.load(Ordering::Relaxed);
    let marked = tally.marked_repeats.load(Ordering::Relaxed);
    eprintln!(
        "broker closed the router's connection twice under {N} envelopes: distinct {got}, repeats {repeats} (marked attempt>1: {marked})"
    );
    assert_eq!(got, N, "log:\n{}", hub.log());
    assert_eq!(marked, repeats, "every repeat carries lgsp-attempt > 1");
    assert!(hub.log().contains("broker link lost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_without_repeats() {
    const N: usize = 1000;
    let mut hub = TestHub::start().await;
    let (tally, receiver, sender) = start_stream(&mut hub, N, 300).await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(hub.terminate().success(), "SIGTERM exits cleanly");
        hub.spawn().await;
    }
    sender.await.unwrap().close().await;
    let got = wait_for(&tally, N, Duration::from_secs(60)).await;
    receiver.abort();
    let repeats = tally.repeats.load(Ordering::Relaxed);
    eprintln!("SIGTERM x2 under {N} envelopes: distinct {got}, repeats {repeats}");
    assert_eq!(got, N, "log:\n{}", hub.log());
    assert_eq!(
        repeats, 0,
        "a clean stop finishes what it took and leaves no possible repeat"
    );
}

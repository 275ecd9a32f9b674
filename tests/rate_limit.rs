//! Per-source rate limits on hostile input: the bucket runs on the hub's
//! clock, so a sender that moves its `lgsp-time` forward is refused
//! `rate-limited`, while a backlog signed within the rate that waited in the
//! broker during a hub outage is accepted whole when it drains at once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use truc::client::Credentials;
use truc::message::Message;
use truc::notice::{Notice, NoticeKind};
use truc::reason::Reason;

const SRC: &str = "000.00.31.H41";
const DST: &str = "000.00.32.H41";

fn access(per_s: u32, burst: u32) -> String {
    format!("[rate]\nenvelopes_per_s = {per_s}.0\nburst = {burst}\n[permissions]\ndefault = \"allow\"\n")
}

/// An envelope to [`DST`] signed as if at `time_ms`.
fn signed_at(prefix: &str, creds: &Credentials, time_ms: i64) -> Message {
    let mut m = envelope(DST).signed(prefix, creds);
    m.set_header("lgsp-time", truc::time::format_rfc3339(time_ms));
    resign(&mut m, &creds.secret);
    m
}

/// (accepted, refused rate-limited) among `notices`.
fn tally(ns: &[Notice]) -> (usize, usize) {
    let accepted = ns
        .iter()
        .filter(|n| n.notice == NoticeKind::Accepted)
        .count();
    let limited = ns
        .iter()
        .filter(|n| n.notice == NoticeKind::Rejected && n.reason == Some(Reason::RateLimited))
        .count();
    (accepted, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_dated_flood_is_refused_rate_limited() {
    const N: usize = 2_000;
    let mut hub = TestHub::start_with_policies(&[("access.toml", &access(50, 100))]).await;
    let src = hub.register(SRC).await;
    let _dst = hub.register(DST).await;
    let client = hub.client(&src).await;
    let mut notify = client.notices(256).await.unwrap();
    // lgsp-time moves 1 s forward every 50 envelopes: 50/s on paper.
    let start = truc::time::now_ms();
    let msgs: Vec<Message> = (0..N)
        .map(|i| signed_at(&hub.prefix, &src, start + (i as i64 / 50) * 1000))
        .collect();
    let began = Instant::now();
    for chunk in msgs.chunks(100) {
        for r in futures_util::future::join_all(chunk.iter().map(|m| client.publish(m))).await {
            r.unwrap();
        }
    }
    let ns = notices(&client, &mut notify, N, Duration::from_secs(60)).await;
    let took = began.elapsed();
    // The bucket runs from the first envelope's signing time.
    let since_first_s = (truc::time::now_ms() - start) as f64 / 1000.0;
    let (accepted, limited) = tally(&ns);
    println!("forward-dated flood: {accepted} accepted, {limited} rate-limited of {N}, published and answered in {took:?}");
    assert_eq!(accepted + limited, N, "{} notices", ns.len());
    // On the hub's clock: burst 100 + 50/s while it lasted (and a little slack).
    let allowance = 100 + (50.0 * since_first_s).ceil() as usize + 10;
    assert!(
        accepted <= allowance,
        "{accepted} accepted, at most {allowance} expected"
    );
    assert!(limited > N / 2, "{limited} of {N} refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_from_a_hub_outage_is_accepted_whole() {
    const N: i64 = 1_200;
    // The burst is at least the prefetch (128): the router handles that many
    // at once, so a backlog is measured up to that far out of order.
    let mut hub = TestHub::start_with_policies(&[("access.toml", &access(20, 200))]).await;
    let src = hub.register(SRC).await;
    let _dst = hub.register(DST).await;
    let client = hub.client(&src).await;
    let mut notify = client.notices(256).await.unwrap();
    assert!(hub.terminate().success());
    // 60 s of envelopes at the sustained rate (20/s), signed while the hub is
    // down: on arrival alone, about 200 + 20/s × the drain would pass.
    let start = truc::time::now_ms() - 60_000;
    for i in 0..N {
        client
            .publish(&signed_at(&hub.prefix, &src, start + i * 50))
            .await
            .unwrap();
    }
    hub.spawn().await;
    let began = Instant::now();
    let ns = notices(&client, &mut notify, N as usize, Duration::from_secs(60)).await;
    let (accepted, limited) = tally(&ns);
    println!(
        "backlog of {N}: {accepted} accepted, {limited} rate-limited, drained in {:?}",
        began.elapsed()
    );
    assert_eq!(
        (accepted, limited),
        (N as usize, 0),
        "{:?}",
        &ns[..ns.len().min(3)]
    );
}

//! Delivery scheduling against the real broker: priority overtaking,
//! deadlines, deferral across a restart, retries and max-attempts, status
//! receipts, recall, the timeline CLI, no content kept, policy reload.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{code, drain_notices, envelope, next_within, notices, status, walk, TestHub};
use truc::client::{Credentials, Outgoing, ReceivedKind};
use truc::notice::{Notice, NoticeKind};
use truc::reason::Reason;
use truc::time::{format_rfc3339, now_ms};

const WAIT: Duration = Duration::from_secs(15);

/// An envelope of `priority` to `to`, with further `extra` headers.
fn env(to: &str, priority: u8, body: &[u8], extra: &[(&str, String)]) -> Outgoing {
    extra
        .iter()
        .fold(
            envelope(to)
                .subject(format!("priority {priority}"))
                .priority(priority)
                .body(body),
            |e, (k, v)| e.header(k, v.clone()),
        )
        .build()
}

const FAST_RETRY: &str = "[retry]\nmin = \"1s\"\nmax = \"2s\"\nfactor = 2.0\njitter = 0.2\n\
[priority.0]\nbounce_after = \"3d\"\ndelay_warning_after = \"4h\"\nmax_attempts = 3\n\
[priority.1]\nbounce_after = \"1d\"\ndelay_warning_after = \"2h\"\nmax_attempts = 3\n\
[priority.2]\nbounce_after = \"8h\"\ndelay_warning_after = \"1h\"\nmax_attempts = 3\n\
[priority.3]\nbounce_after = \"2h\"\ndelay_warning_after = \"15m\"\nmax_attempts = 3\n\
[priority.4]\ndelay_warning_after = \"15m\"\nmax_attempts = 3\n";

async fn pair(hub: &mut TestHub) -> (Credentials, Credentials) {
    (
        hub.register("000.00.31.H41").await,
        hub.register("000.00.32.H41").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_overtakes_a_backlog_of_ten_thousand() {
    const BACKLOG: usize = 10_000;
    let mut hub = TestHub::start_with_policies(&[(
        "access.toml",
        "[rate]\nenvelopes_per_s = 100000.0\nburst = 100000\n[permissions]\ndefault = \"allow\"\n",
    )])
    .await;
    let (src, dst) = pair(&mut hub).await;
    let source = Arc::new(hub.client(&src).await);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = source.clone();
        tasks.push(tokio::spawn(async move {
            for _ in (w..BACKLOG).step_by(8) {
                s.send(&env("000.00.32.H41", 0, b"thuong", &[]))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Published behind the whole backlog (some of it still in the ingress queue).
    let flash_id = source
        .send(&env("000.00.32.H41", 3, b"hoa toc", &[]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while hub.depth(&format!("inbox.{}", dst.code)).await < BACKLOG as u32 + 1 {
        assert!(
            Instant::now() < deadline,
            "the router did not route the backlog in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(1).await.unwrap();
    let first = next_within(&mut inbox, WAIT).await.expect("a delivery");
    let r = dest.receive(first).unwrap();
    assert_eq!(r.message_id, flash_id, "the Hỏa tốc envelope comes first");
    assert_eq!(r.priority, 3);
    assert_eq!(r.message.priority, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_bounces_expired_on_time_and_the_destination_never_gets_it() {
    let mut hub = TestHub::start().await;
    let (src, dst) = pair(&mut hub).await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(16).await.unwrap();
    let deadline = now_ms() + 3000;
    let id = source
        .send(&env(
            "000.00.32.H41",
            4,
            b"hen gio",
            &[("lgsp-deliver-by", format_rfc3339(deadline))],
        ))
        .await
        .unwrap();
    let ns = notices(&source, &mut notify, 2, WAIT).await;
    let bounced: Vec<&Notice> = ns
        .iter()
        .filter(|n| n.notice == NoticeKind::Bounced)
        .collect();
    assert_eq!(bounced.len(), 1, "{ns:?}");
    assert_eq!(bounced[0].reason, Some(Reason::Expired));
    let late_ms = now_ms() - deadline;
    eprintln!("expired notice {late_ms} ms after the deadline");
    assert!(late_ms >= 0);
    // The destination comes later: the stale delivery is gone (or marked stale).
    let mut dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(4).await.unwrap();
    if let Some(d) = next_within(&mut inbox, Duration::from_secs(2)).await {
        let r = dest.receive(d).unwrap();
        assert!(r.stale, "a stale copy is marked for its adapter to drop");
        assert_eq!(r.message_id, id);
    }
    let rec = hub.envelope_record(src.code.as_str(), &id).await;
    assert_eq!(rec["dests"][0]["state"], "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_delivery_survives_a_restart_and_arrives_on_time() {
    let mut hub = TestHub::start().await;
    let (src, dst) = pair(&mut hub).await;
    let source = hub.client(&src).await;
    let not_before = now_ms() + 6000;
    let id = source
        .send(&env(
            "000.00.32.H41",
            1,
            b"sau 6 giay",
            &[("lgsp-not-before", format_rfc3339(not_before))],
        ))
        .await
        .unwrap();
    let mut dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(4).await.unwrap();
    assert!(
        next_within(&mut inbox, Duration::from_secs(2))
            .await
            .is_none(),
        "not before its time"
    );
    let rec = hub.envelope_record(src.code.as_str(), &id).await;
    assert_eq!(rec["dests"][0]["state"], "deferred");
    assert!(hub.terminate().success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    hub.spawn().await;
    let got = next_within(&mut inbox, WAIT)
        .await
        .expect("delivered after the restart");
    let late_ms = now_ms() - not_before;
    eprintln!("deferred envelope delivered {late_ms} ms after lgsp-not-before");
    assert!(late_ms >= -600, "not early: {late_ms} ms");
    let r = dest.receive(got).unwrap();
    assert_eq!(r.message_id, id);
    assert_eq!(&*r.message.body, b"sau 6 giay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_deliveries_are_retried_then_bounced_max_attempts() {
    let mut hub = TestHub::start_with_policies(&[("delivery.toml", FAST_RETRY)]).await;
    let (src, dst) = pair(&mut hub).await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(16).await.unwrap();
    let id = source
        .send(&env("000.00.32.H41", 0, b"reject me", &[]))
        .await
        .unwrap();
    let mut dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(4).await.unwrap();
    let mut attempts = Vec::new();
    let mut times = Vec::new();
    for _ in 0..3 {
        let d = next_within(&mut inbox, WAIT).await.expect("a (re)delivery");
        times.push(Instant::now());
        let tag = d.delivery_tag;
        let r = dest.receive(d).unwrap();
        attempts.push(r.attempt);
        inbox.reject(tag, false).await.unwrap();
    }
    assert_eq!(
        attempts,
        vec![1, 2, 3],
        "lgsp-attempt counts the tries; the hub signature still verifies"
    );
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(700),
        "retried after a backoff, not at once: {gap:?}"
    );
    assert!(
        next_within(&mut inbox, Duration::from_secs(4))
            .await
            .is_none(),
        "no fourth try"
    );
    let ns = notices(&source, &mut notify, 2, WAIT).await;
    assert_eq!(ns[1].notice, NoticeKind::Bounced);
    assert_eq!(ns[1].reason, Some(Reason::MaxAttempts));
    let states = hub.dest_states(src.code.as_str(), &id).await;
    assert_eq!(
        states,
        [
            "accepted", "queued", "rejected", "retry", "queued", "rejected", "retry", "queued",
            "rejected", "bounced"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rejections_at_once_are_spread_out() {
    const N: usize = 200;
    let mut hub = TestHub::start_with_policies(&[(
        "delivery.toml",
        &FAST_RETRY
            .replace("min = \"1s\"\nmax = \"2s\"", "min = \"4s\"\nmax = \"8s\"")
            .replace("jitter = 0.2", "jitter = 0.5"),
    )])
    .await;
    let (src, dst) = pair(&mut hub).await;
    let source = Arc::new(hub.client(&src).await);
    for _ in 0..N {
        source
            .send(&env("000.00.32.H41", 0, b"x", &[]))
            .await
            .unwrap();
    }
    let mut dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(500).await.unwrap();
    for _ in 0..N {
        let d = next_within(&mut inbox, WAIT).await.expect("first delivery");
        inbox.reject(d.delivery_tag, false).await.unwrap();
    }
    let start = Instant::now();
    let mut arrivals = Vec::new();
    while arrivals.len() < N {
        let d = next_within(&mut inbox, WAIT).await.expect("a retry");
        arrivals.push(start.elapsed());
        let r = dest.receive(d.clone()).unwrap();
        assert_eq!(r.attempt, 2);
        inbox.ack(d.delivery_tag).await.unwrap();
    }
    let secs: std::collections::BTreeSet<u64> = arrivals.iter().map(|d| d.as_secs()).collect();
    eprintln!(
        "{N} rejected at once came back over {} distinct seconds: {secs:?}",
        secs.len()
    );
    assert!(
        secs.len() >= 3,
        "retries are spread over time, not one burst: {secs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_receipts_recall_and_refusal() {
    let mut hub = TestHub::start().await;
    let (src, dst) = pair(&mut hub).await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(32).await.unwrap();
    let mut dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(4).await.unwrap();
    let p = hub.prefix.clone();

    // 02: the destination refuses the document.
    let refused = source
        .send(&env("000.00.32.H41", 0, b"sai mau", &[]))
        .await
        .unwrap();
    let d = next_within(&mut inbox, WAIT).await.unwrap();
    inbox.ack(d.delivery_tag).await.unwrap();
    dest.send_status(&refused, "02", None, Some("sai thể thức"))
        .await
        .unwrap();
    let ns = notices(&source, &mut notify, 3, WAIT).await;
    assert!(
        ns.iter()
            .any(|n| n.notice == NoticeKind::Bounced
                && n.reason == Some(Reason::RejectedByDestination)),
        "{ns:?}"
    );
    assert!(ns.iter().any(|n| n.notice == NoticeKind::Status
        && n.status.as_deref() == Some("02")
        && n.detail == "sai thể thức"));

    // 13 on a deferred envelope: prevented, the destination never sees it.
    let later = source
        .send(&env(
            "000.00.32.H41",
            0,
            b"hoan",
            &[("lgsp-not-before", format_rfc3339(now_ms() + 4000))],
        ))
        .await
        .unwrap();
    source
        .publish(&status(&later, "13").reason("gửi nhầm").signed(&p, &src))
        .await
        .unwrap();
    let ns = notices(&source, &mut notify, 2, WAIT).await;
    assert!(
        ns.iter().any(|n| n.notice == NoticeKind::Bounced
            && n.reason == Some(Reason::Recalled)
            && n.reference == later),
        "{ns:?}"
    );
    assert!(
        next_within(&mut inbox, Duration::from_secs(6))
            .await
            .is_none(),
        "a recalled deferred envelope is never delivered"
    );

    // 13 on a delivered envelope: relayed to the destination, whose 16 comes back.
    let taken = source
        .send(&env("000.00.32.H41", 0, b"da nhan", &[]))
        .await
        .unwrap();
    let d = next_within(&mut inbox, WAIT).await.unwrap();
    let r = dest.receive(d.clone()).unwrap();
    assert_eq!(r.message_id, taken);
    inbox.ack(d.delivery_tag).await.unwrap();
    source
        .publish(&status(&taken, "13").signed(&p, &src))
        .await
        .unwrap();
    let d = next_within(&mut inbox, WAIT)
        .await
        .expect("the recall request");
    let r = dest.receive(d.clone()).unwrap();
    assert_eq!(
        r.kind,
        ReceivedKind::Recall {
            already_received: true
        }
    );
    assert_eq!(r.message_id, taken);
    inbox.ack(d.delivery_tag).await.unwrap();
    dest.send_status(&taken, "16", Some(&src.code), Some("đã xử lý"))
        .await
        .unwrap();
    let ns = notices(&source, &mut notify, 2, WAIT).await;
    assert!(
        ns.iter().any(|n| n.notice == NoticeKind::Status
            && n.status.as_deref() == Some("16")
            && n.reference == taken),
        "{ns:?}"
    );

    // A status about someone else's envelope is refused.
    let outsider = hub.register("000.00.40.H41").await;
    let o = hub.client(&outsider).await;
    let mut onotify = o.notices(4).await.unwrap();
    o.publish(&status(&taken, "01").signed(&p, &outsider))
        .await
        .unwrap();
    let ns = notices(&o, &mut onotify, 1, WAIT).await;
    assert_eq!(
        (ns[0].notice, ns[0].reason),
        (NoticeKind::Rejected, Some(Reason::Forbidden))
    );
    assert!(
        drain_notices(&source, &mut notify, Duration::from_millis(500))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_cli_and_no_content_kept_after_receipt() {
    let mut hub = TestHub::start().await;
    let (src, dst) = pair(&mut hub).await;
    let source = hub.client(&src).await;
    let marker = "MARKER-noi-dung-mat-7f3a9c";
    let id = source
        .send(&env("000.00.32.H41", 2, marker.as_bytes(), &[]))
        .await
        .unwrap();
    let mut dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(4).await.unwrap();
    let d = next_within(&mut inbox, WAIT).await.unwrap();
    let r = dest.receive(d.clone()).unwrap();
    inbox.ack(d.delivery_tag).await.unwrap();
    dest.send_status(&r.message_id, "01", None, None)
        .await
        .unwrap();
    // Wait for the receipt to be recorded.
    let deadline = Instant::now() + WAIT;
    loop {
        let rec = hub.envelope_record(src.code.as_str(), &id).await;
        if rec["dests"][0]["state"] == "delivered" {
            break;
        }
        assert!(Instant::now() < deadline, "receipt not recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = hub.cli(&["envelope", "show", &id, "--from", "000.00.31.H41", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dests"][0]["state"], "delivered");
    let out = hub.cli(&[
        "envelope",
        "list",
        "--to",
        "000.00.32.H41",
        "--state",
        "delivered",
        "--since",
        "1h",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    let out = hub.cli(&["envelope", "list", "--state", "bounced", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.as_array().unwrap().is_empty());
    let out = hub.cli(&["envelope", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));

    // Nothing of the body remains in truc's store (flushed by a clean stop) or delay queues.
    assert!(hub.terminate().success());
    let mut found = Vec::new();
    for entry in walk(&hub.data.path().join("data")) {
        let bytes = std::fs::read(&entry).unwrap();
        if bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            found.push(entry);
        }
    }
    assert!(found.is_empty(), "body found in {found:?}");
    for (name, _) in truc::scheduler::BUCKETS {
        assert_eq!(hub.depth(&format!("delay.{name}")).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_policies_and_rates_are_enforced() {
    // One token per 100 s: the three sends below always fall within one
    // refill, however slowly a loaded broker confirms them (the rate is
    // measured on their signing times).
    let mut hub = TestHub::start_with_policies(&[(
        "access.toml",
        "[rate]\nenvelopes_per_s = 0.01\nburst = 2\n[permissions]\ndefault = \"allow\"\n[[permissions.rule]]\nfrom = \"*\"\nto = \"000.00.33.H41\"\naction = \"deny\"\n",
    )])
    .await;
    let (src, _dst) = pair(&mut hub).await;
    let _other = hub.register("000.00.33.H41").await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(16).await.unwrap();
    let mut two = env("000.00.32.H41", 0, b"x", &[]);
    two.to.push(code("000.00.33.H41"));
    source.send(&two).await.unwrap();
    for _ in 0..2 {
        source
            .send(&env("000.00.32.H41", 0, b"x", &[]))
            .await
            .unwrap();
    }
    let ns = notices(&source, &mut notify, 4, WAIT).await;
    assert!(
        ns.iter().any(|n| n.notice == NoticeKind::Bounced
            && n.reason == Some(Reason::Forbidden)
            && n.dest == Some(code("000.00.33.H41"))),
        "{ns:?}"
    );
    assert!(
        ns.iter()
            .any(|n| n.notice == NoticeKind::Rejected && n.reason == Some(Reason::RateLimited)),
        "{ns:?}"
    );

    // Raise the rate and reload without a restart.
    std::fs::write(
        hub.policies.join("access.toml"),
        "[rate]\nenvelopes_per_s = 1000.0\nburst = 1000\n[permissions]\ndefault = \"allow\"\n",
    )
    .unwrap();
    // An invalid file is refused and the old policies stay.
    std::fs::write(
        hub.policies.join("ingress.toml"),
        "[ingress]\nclock_skew = \"forever\"\n",
    )
    .unwrap();
    hub.hangup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(hub.log().contains("policies not reloaded"), "{}", hub.log());
    std::fs::write(
        hub.policies.join("ingress.toml"),
        truc::policy::DEFAULT_POLICY,
    )
    .unwrap();
    hub.hangup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(hub.log().contains("policies reloaded"));
    for _ in 0..5 {
        source
            .send(&env("000.00.33.H41", 0, b"x", &[]))
            .await
            .unwrap();
    }
    let ns = notices(&source, &mut notify, 5, WAIT).await;
    assert_eq!(
        ns.iter()
            .filter(|n| n.notice == NoticeKind::Accepted
                && n.destinations == vec![code("000.00.33.H41")])
            .count(),
        5,
        "{ns:?}"
    );
}

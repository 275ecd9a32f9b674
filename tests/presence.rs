//! Presence against the real broker: a destination that never connects is
//! warned about and bounced once, also across restarts; one that returns in
//! time causes no notice; flapping warns once; heartbeat-only agencies.

mod common;

use std::time::{Duration, Instant};

use common::{code, drain_notices, envelope, notices, BrokerGuard, TestHub};
use truc::client::{presence_message, Client, Credentials, Outgoing};
use truc::notice::{Notice, NoticeKind};
use truc::reason::Reason;

const WAIT: Duration = Duration::from_secs(15);

const PRESENCE: &str =
    "[presence]\nheartbeat_window = \"3s\"\npoll_interval = \"1s\"\nreturn_on_bounce = false\n";

/// The built-in delivery policy with priority 1 (Khẩn) warning after `warn`.
fn delivery(warn: &str) -> String {
    let d = truc::policy::DEFAULT_DELIVERY;
    let old = "[priority.1] # Khẩn\nbounce_after = \"1d\"\ndelay_warning_after = \"2h\"";
    assert!(d.contains(old));
    d.replace(
        old,
        &format!("[priority.1] # Khẩn\nbounce_after = \"1d\"\ndelay_warning_after = \"{warn}\""),
    )
}

async fn hub_with(warn: &str) -> TestHub {
    TestHub::start_with_policies(&[
        ("presence.toml", PRESENCE),
        ("delivery.toml", &delivery(warn)),
    ])
    .await
}

/// A Khẩn invitation to `to`, bounced after `bounce_after` when given.
fn invitation(to: &str, bounce_after: Option<&str>) -> Outgoing {
    let e = envelope(to).subject("Giấy mời họp").priority(1);
    match bounce_after {
        Some(b) => e.header("lgsp-bounce-after", b),
        None => e,
    }
    .build()
}

fn kinds(ns: &[Notice]) -> Vec<NoticeKind> {
    ns.iter().map(|n| n.notice).collect()
}

fn presence_notices(ns: &[Notice]) -> Vec<&Notice> {
    ns.iter()
        .filter(|n| matches!(n.notice, NoticeKind::DelayWarning | NoticeKind::Bounced))
        .collect()
}

/// The presence entry of `c` from the admin API.
async fn presence_of(hub: &TestHub, c: &str) -> serde_json::Value {
    let (status, v) = hub.api("GET", "/v1/presence", None).await;
    assert_eq!(status, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == c)
        .cloned()
        .unwrap_or_default()
}

/// Waits until `c` is in `state` (with `cause`, when given).
async fn wait_state(hub: &TestHub, c: &str, state: &str, cause: Option<&str>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let p = presence_of(hub, c).await;
        if p["state"] == state && cause.is_none_or(|k| p["cause"] == k) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{c} never became {state} ({cause:?}); last {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The history events of `c`.
async fn events(hub: &TestHub, c: &str) -> Vec<(String, String)> {
    let (status, v) = hub
        .api("GET", &format!("/v1/presence/{c}/history"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["cause"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_connected_destination_is_warned_then_bounced_once_and_stays_queued() {
    let mut hub = hub_with("1s").await;
    let src = hub.register("000.00.31.H41").await;
    let dst = hub.register("000.00.32.H41").await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(16).await.unwrap();
    let id = source
        .send(&invitation("000.00.32.H41", Some("3s")))
        .await
        .unwrap();

    let ns = notices(&source, &mut notify, 3, WAIT).await;
    assert_eq!(
        kinds(&ns),
        [
            NoticeKind::Accepted,
            NoticeKind::DelayWarning,
            NoticeKind::Bounced
        ],
        "{ns:?}"
    );
    for n in &ns[1..] {
        assert_eq!(n.reference, id);
        assert_eq!(n.dest, Some(code("000.00.32.H41")));
        assert_eq!(n.reason, Some(Reason::DestinationOffline));
        assert!(n.detail.contains("offline"), "{}", n.detail);
    }
    let more = drain_notices(&source, &mut notify, Duration::from_millis(2500)).await;
    assert!(more.is_empty(), "nothing more: {more:?}");
    assert_eq!(
        hub.dest_states("000.00.31.H41", &id).await,
        ["accepted", "queued", "delay-warning", "bounced"]
    );

    // Presence through the CLI, as operators and scripts see it.
    let out = hub.cli(&["presence", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "000.00.32.H41")
        .unwrap();
    assert_eq!(d["state"], "offline");
    assert_eq!(d["cause"], "no-consumer");
    let out = hub.cli(&["presence"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("CODE"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("000.00.32.H41") && l.contains("offline")),
        "{text}"
    );
    let out = hub.cli(&[
        "presence",
        "history",
        "000.00.32.H41",
        "--since",
        "1h",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h["entries"][0]["event"], "first-seen-offline");
    let out = hub.cli(&["presence", "history", "NOT.REGISTERED"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // return_on_bounce is false: the envelope is still in the inbox when the destination comes.
    let dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(4).await.unwrap();
    let got = common::next_within(&mut inbox, WAIT)
        .await
        .expect("still queued");
    assert_eq!(got.message.message_id.as_deref(), Some(id.as_str()));
    inbox.ack(got.delivery_tag).await.unwrap();
    wait_state(&hub, "000.00.32.H41", "online", Some("consumer")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_do_not_repeat_notices() {
    let mut hub = hub_with("1s").await;
    let src = hub.register("H37.DN.001").await;
    hub.register("H37.DN.002").await;
    let source = hub.client(&src).await;
    let mut notify = source
        .notices(16)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", hub.log()));
    let id = source
        .send(&invitation("H37.DN.002", Some("6s")))
        .await
        .unwrap();
    let ns = notices(&source, &mut notify, 2, WAIT).await;
    assert_eq!(
        kinds(&ns),
        [NoticeKind::Accepted, NoticeKind::DelayWarning],
        "{ns:?}"
    );
    // Once the warning's timeline write is durable (the hub says so only
    // then), crash.
    hub.wait_log(&["presence notice sent", "delay-warning"], 1)
        .await;
    hub.kill9();
    hub.spawn().await;
    let ns = notices(&source, &mut notify, 1, WAIT).await;
    assert_eq!(kinds(&ns), [NoticeKind::Bounced], "{ns:?}");
    assert_eq!(ns[0].reference, id);
    // A clean restart once the bounce is recorded: nothing is sent again.
    hub.wait_log(&["presence notice sent", "bounced"], 1).await;
    assert!(hub.terminate().success());
    hub.spawn().await;
    let more = drain_notices(&source, &mut notify, Duration::from_secs(3)).await;
    assert!(more.is_empty(), "{more:?}");
    assert_eq!(
        hub.dest_states("H37.DN.001", &id).await,
        ["accepted", "queued", "delay-warning", "bounced"]
    );
    // The presence state survived the restarts.
    let (ev, _) = events(&hub, "H37.DN.002").await.remove(0);
    assert_eq!(ev, "first-seen-offline");
    assert_eq!(events(&hub, "H37.DN.002").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_that_returns_in_time_causes_no_notice() {
    let mut hub = hub_with("3s").await;
    let src = hub.register("000.00.41.H41").await;
    let dst = hub.register("000.00.42.H41").await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(64).await.unwrap();
    let mut dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(4).await.unwrap();
    wait_state(&hub, "000.00.42.H41", "online", Some("consumer")).await;

    let first = source
        .send(&invitation("000.00.42.H41", Some("5s")))
        .await
        .unwrap();
    let got = common::next_within(&mut inbox, WAIT)
        .await
        .expect("delivery");
    let r = dest.receive(got).unwrap();
    assert_eq!(r.message_id, first);
    inbox.ack(r.delivery_tag).await.unwrap();
    dest.send_status(&first, "01", None, None).await.unwrap();

    // The destination goes away mid-stream…
    dest.close().await;
    wait_state(&hub, "000.00.42.H41", "offline", Some("no-consumer")).await;
    let second = source
        .send(&invitation("000.00.42.H41", Some("5s")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // …and comes back before the 3 s warning.
    let mut dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(4).await.unwrap();
    let got = common::next_within(&mut inbox, WAIT)
        .await
        .expect("delivery");
    let r = dest.receive(got).unwrap();
    assert_eq!(r.message_id, second);
    inbox.ack(r.delivery_tag).await.unwrap();
    dest.send_status(&second, "01", None, None).await.unwrap();

    // Well past the bounce threshold: only accepted / delivered / status.
    let ns = drain_notices(&source, &mut notify, Duration::from_secs(6)).await;
    assert!(presence_notices(&ns).is_empty(), "{ns:?}");
    assert_eq!(
        ns.iter()
            .filter(|n| n.notice == NoticeKind::Delivered)
            .count(),
        2,
        "{ns:?}"
    );
    let (status, h) = hub
        .api("GET", "/v1/presence/000.00.42.H41/history", None)
        .await;
    assert_eq!(status, 200);
    let to: Vec<&str> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap())
        .collect();
    assert!(to.ends_with(&["online", "offline", "online"]), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_destination_is_warned_once() {
    let mut hub = hub_with("2s").await;
    let src = hub.register("000.00.51.H41").await;
    let dst = hub.register("000.00.52.H41").await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(64).await.unwrap();
    let id = source
        .send(&invitation("000.00.52.H41", None))
        .await
        .unwrap();
    let mut seen = 0;
    for _ in 0..3 {
        // Offline longer than the 2 s warning, then online without answering.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let dest = hub.client(&dst).await;
        let mut inbox = dest.inbox(4).await.unwrap();
        if let Some(got) = common::next_within(&mut inbox, Duration::from_secs(2)).await {
            assert_eq!(got.message.message_id.as_deref(), Some(id.as_str()));
            seen += 1;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Closing without an ack puts the envelope back in the inbox.
        dest.close().await;
    }
    assert_eq!(seen, 3, "the envelope was offered at every return");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let ns = drain_notices(&source, &mut notify, Duration::from_millis(500)).await;
    let p = presence_notices(&ns);
    assert_eq!(p.len(), 1, "{ns:?}");
    assert_eq!(p[0].notice, NoticeKind::DelayWarning);
    assert_eq!(p[0].reference, id);
    let connects = events(&hub, "000.00.52.H41")
        .await
        .into_iter()
        .filter(|(e, _)| e == "connected")
        .count();
    assert_eq!(connects, 3);
}

async fn heartbeat(client: &Client, online: bool) {
    client.heartbeat(online).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_only_agencies() {
    let mut hub = hub_with("1s").await;
    let src = hub.register("H37.HB.001").await;
    let hb = hub.register("H37.HB.002").await;
    let other = hub.register("H37.HB.003").await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(16).await.unwrap();
    let agent = hub.client(&hb).await;

    heartbeat(&agent, true).await;
    wait_state(&hub, "H37.HB.002", "online", Some("heartbeat")).await;
    assert_eq!(presence_of(&hub, "H37.HB.002").await["consumers"], 0);

    // Online by heartbeats alone: an envelope to it waits without a warning.
    let id = source
        .send(&invitation("H37.HB.002", Some("2s")))
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        heartbeat(&agent, true).await;
    }
    let ns = drain_notices(&source, &mut notify, Duration::from_millis(200)).await;
    assert_eq!(kinds(&ns), [NoticeKind::Accepted], "{ns:?}");

    // A signed offline heartbeat: offline at once, not after the window.
    heartbeat(&agent, false).await;
    wait_state(&hub, "H37.HB.002", "offline", Some("heartbeat-offline")).await;
    // Back, then silent: offline when the 3 s window runs out.
    heartbeat(&agent, true).await;
    wait_state(&hub, "H37.HB.002", "online", Some("heartbeat")).await;
    wait_state(&hub, "H37.HB.002", "offline", Some("heartbeat-expired")).await;
    let causes: Vec<(String, String)> = events(&hub, "H37.HB.002").await;
    let tail: Vec<&str> = causes.iter().map(|(_, c)| c.as_str()).collect();
    assert!(
        tail.ends_with(&[
            "heartbeat",
            "heartbeat-offline",
            "heartbeat",
            "heartbeat-expired"
        ]),
        "{causes:?}"
    );
    // The envelope waited on an online destination, so the clock started when it went silent:
    // warned and bounced (2 s) only now.
    let ns = notices(&source, &mut notify, 2, WAIT).await;
    assert_eq!(
        kinds(&ns),
        [NoticeKind::DelayWarning, NoticeKind::Bounced],
        "{ns:?}"
    );
    assert!(ns.iter().all(|n| n.reference == id));

    // A heartbeat with a wrong secret does not count.
    let forged = Credentials {
        secret: "not-the-secret-0000000000".into(),
        ..other.clone()
    };
    let m = presence_message(&hub.prefix, &forged, true);
    agent.publish(&m).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(presence_of(&hub, "H37.HB.003").await["state"], "offline");
}

/// CPU seconds the broker (beam.smp) has used so far, from /proc.
fn broker_cpu_s() -> Option<f64> {
    let out = std::process::Command::new("ps")
        .args(["-C", "beam.smp", "-o", "pid="])
        .output()
        .ok()?;
    let pid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .next()?
        .trim()
        .to_owned();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Polling cost at 2,000 agencies: `cargo test --test presence -- --ignored --nocapture polling_cost`.
/// Prints the duration of one poll of every inbox and the broker CPU it costs;
/// asserts only that every answer is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn polling_cost_at_2000_agencies() {
    const N: usize = 2000;
    let link = truc::broker::Link::connect(&common::amqp_url(), "truc poll cost")
        .await
        .unwrap();
    let prefix = format!("pcost{}.", std::process::id());
    let mut declared = BrokerGuard::new();
    let names: Vec<String> = (0..N)
        .map(|i| declared.queue(format!("{prefix}inbox.A{i:04}")))
        .collect();
    let topo = truc::topology::Topology::load(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/queues")),
        &prefix,
    )
    .unwrap();
    let spec = topo.agency_queues(&code("A0000"))[0].clone();
    for n in &names {
        let mut q = spec.clone();
        q.name = n.clone();
        q.bind.clear();
        link.declare_queue(&q).await.unwrap();
    }
    let missing: Vec<String> = (0..N).map(|i| format!("{prefix}missing.{i}")).collect();
    for (label, conc, set) in [
        ("pooled, 4 channels", 4, &names),
        ("pooled, 1 channel", 1, &names),
    ] {
        let rounds = 5;
        let cpu0 = broker_cpu_s();
        let t = Instant::now();
        for _ in 0..rounds {
            let r = link.probe_queues(set, conc).await;
            assert_eq!(r.len(), N);
            assert!(r.iter().all(|a| matches!(a, Ok(i) if i.consumers == 0)));
        }
        let per = t.elapsed() / rounds;
        let cpu = match (cpu0, broker_cpu_s()) {
            (Some(a), Some(b)) => format!("{:.3}", (b - a) / rounds as f64),
            _ => "n/a".into(),
        };
        println!("{label}: {per:?} per poll of {N} queues; broker CPU {cpu} s per poll");
    }
    let r = link.probe_queues(&missing, 4).await;
    assert!(matches!(r[0], Err(truc::broker::AmqpError::NoSuchQueue(_))));
    let link = truc::broker::Link::connect(&common::amqp_url(), "truc poll cost")
        .await
        .unwrap();
    // One-at-a-time queue_info (also pooled now), for comparison with the admin path.
    let t = Instant::now();
    for n in names.iter().take(200) {
        link.queue_info(n).await.unwrap();
    }
    println!("queue_info x200 sequential: {:?}", t.elapsed());
    link.close().await;
    // `declared` deletes the queues.
}

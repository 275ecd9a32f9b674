//! Operator commands against the real broker, through the `truc` CLI:
//! agency lifecycle, queues, dead letters, audit log, reports, metrics and
//! store statistics, with their JSON shapes, exit codes and refusals.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{code, envelope, next_within, notices, stderr, stdout, walk, TestHub};
use truc::client::{Credentials, KeyPair, Outgoing};
use truc::message::Message;
use truc::notice::NoticeKind;
use truc::reason::Reason;

const WAIT: Duration = Duration::from_secs(10);

/// The envelope these tests send: a weekly report.
fn out(to: &str, body: &[u8]) -> Outgoing {
    envelope(to).subject("Báo cáo tuần").body(body).build()
}

/// Runs the CLI and expects exit `code`; returns stdout.
fn run(hub: &TestHub, args: &[&str], code: i32) -> String {
    stdout(&hub.cli_expect(args, code))
}

fn json(hub: &TestHub, args: &[&str]) -> serde_json::Value {
    let text = run(hub, args, 0);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agency_lifecycle_disable_rotate_remove_import_and_sealed_secrets() {
    let mut hub = TestHub::start().await;
    let a = hub.register("H37.DN.001").await;
    let b = hub.register("H37.DN.002").await;

    // Wrong token: 5. Unknown code: 3. Bad code: 2.
    let o = hub.cli_with_token("not-the-token-0123456789", &["agency", "list"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    run(&hub, &["agency", "disable", "H37.DN.999"], 3);
    run(&hub, &["agency", "disable", "not a code"], 2);

    let v = json(&hub, &["agency", "disable", "H37.DN.002", "--json"]);
    assert_eq!(v["enabled"], false);
    assert_eq!(v["code"], "H37.DN.002");
    let source = hub.client(&a).await;
    let mut notify = source.notices(16).await.unwrap();
    source
        .send(&out("H37.DN.002", b"to a disabled agency"))
        .await
        .unwrap();
    let ns = notices(&source, &mut notify, 2, WAIT).await;
    assert_eq!(ns[1].notice, NoticeKind::Bounced);
    assert_eq!(ns[1].reason, Some(Reason::DestinationDisabled));
    assert!(run(&hub, &["agency", "enable", "H37.DN.002"], 0).contains("enabled"));

    // Rotation with no grace: the old key stops working, the new one works.
    let v = json(
        &hub,
        &[
            "agency",
            "rotate-key",
            "H37.DN.001",
            "--grace",
            "0s",
            "--json",
        ],
    );
    let new_key = v["access_key"].as_str().unwrap().to_owned();
    let new_secret = v["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_key, a.access_key);
    assert_eq!(v["old_keys"][0]["access_key"], a.access_key.as_str());
    assert!(v["old_keys"][0]["expires_at"].is_string());
    source.send(&out("H37.DN.002", b"old key")).await.unwrap();
    let rotated = Credentials {
        code: a.code.clone(),
        access_key: new_key.clone(),
        secret: new_secret.clone(),
        previous_keys: Vec::new(),
    };
    let source2 = hub.client(&rotated).await;
    source2.send(&out("H37.DN.002", b"new key")).await.unwrap();
    let ns = notices(&source2, &mut notify, 1, WAIT).await;
    assert_eq!(
        ns[0].notice,
        NoticeKind::Accepted,
        "new key accepted, notice signed with the new secret"
    );
    hub.wait_depth("rejected", 1).await;
    // Grace: a second rotation keeps the previous key for the grace period.
    let v = json(&hub, &["agency", "rotate-key", "H37.DN.001", "--json"]);
    let third = Credentials {
        code: a.code.clone(),
        access_key: v["access_key"].as_str().unwrap().to_owned(),
        secret: v["secret"].as_str().unwrap().to_owned(),
        previous_keys: Vec::new(),
    };
    let old = v["old_keys"].as_array().unwrap();
    let kept = old
        .iter()
        .find(|k| k["access_key"] == new_key.as_str())
        .unwrap();
    let until = truc::time::parse_rfc3339(kept["expires_at"].as_str().unwrap()).unwrap();
    let week = truc::time::now_ms() + 7 * 86_400_000;
    assert!((until - week).abs() < 60_000, "default grace is 7d");

    // Remove: refused without --yes (2), refused with a non-empty inbox (3), forced.
    let o = hub.cli(&["agency", "remove", "H37.DN.002"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("would remove agency H37.DN.002"),
        "{}",
        stderr(&o)
    );
    // The accepted "new key" envelope (its notice may come before it).
    hub.wait_depth("inbox.H37.DN.002", 1).await;
    let o = hub.cli(&["agency", "remove", "H37.DN.002", "--yes"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("purge it first"), "{}", stderr(&o));
    let v = json(
        &hub,
        &[
            "agency",
            "remove",
            "H37.DN.002",
            "--yes",
            "--force",
            "--json",
        ],
    );
    assert_eq!(v["deleted_queues"].as_array().unwrap().len(), 3);
    run(&hub, &["agency", "show", "H37.DN.002"], 3);
    let link = hub.link().await;
    assert!(link
        .queue_info(&format!("{}inbox.H37.DN.002", hub.prefix))
        .await
        .is_err());
    link.close().await;
    let _ = b;

    // Import: a bad row refuses the whole file, naming the line.
    let csv = hub.data.path().join("agencies.csv");
    std::fs::write(
        &csv,
        "code,name\nH37.DN.010,\"UBND xã A, huyện B\"\nH37.DN.011,Sở Tư pháp\nbad code,X\n",
    )
    .unwrap();
    let o = hub.cli(&["agency", "import", csv.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("line 4"), "{}", stderr(&o));
    run(&hub, &["agency", "show", "H37.DN.010"], 3);
    std::fs::write(&csv, "H37.DN.010,Sở A\nH37.DN.001,already there\n").unwrap();
    let o = hub.cli(&["agency", "import", csv.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("line 2") && stderr(&o).contains("already registered"),
        "{}",
        stderr(&o)
    );
    std::fs::write(
        &csv,
        "code,name\nH37.DN.010,\"UBND xã A, huyện B\"\nH37.DN.011,Sở Tư pháp\n",
    )
    .unwrap();
    let text = run(&hub, &["agency", "import", csv.to_str().unwrap()], 0);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "code,name,access_key,secret,broker_user,broker_password"
    );
    assert!(
        lines[1].starts_with("H37.DN.010,\"UBND xã A, huyện B\",AK"),
        "{text}"
    );
    assert_eq!(lines.len(), 3);
    hub.agencies.push(code("H37.DN.010"));
    hub.agencies.push(code("H37.DN.011"));
    std::fs::write(&csv, "H37.DN.012,Sở C\n").unwrap();
    let v = json(
        &hub,
        &[
            "agency",
            "import",
            csv.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    hub.agencies.push(code("H37.DN.012"));
    assert_eq!(v[0]["code"], "H37.DN.012");
    assert!(v[0]["secret"].as_str().unwrap().len() >= 40);
    assert!(hub.depth("inbox.H37.DN.012").await == 0, "queues declared");

    let v = json(&hub, &["agency", "rabbitmq-definitions"]);
    let users: Vec<&str> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert!(users.contains(&"H37.DN.012"));
    assert!(v["topic_permissions"][0]["exchange"]
        .as_str()
        .unwrap()
        .ends_with("ingress"));

    // Secrets are sealed at rest, the master key is private, and both survive a restart.
    let key_file = hub.data.path().join("data/master.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    source.close().await;
    source2.close().await;
    hub.terminate();
    for entry in walk(&hub.data.path().join("data/db")) {
        let bytes = std::fs::read(&entry).unwrap();
        for secret in [&new_secret, &a.secret, &third.secret] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "plaintext secret in {}",
                entry.display()
            );
        }
    }
    hub.spawn().await;
    // The grace key still authenticates after the restart (secrets opened
    // with the master key); notices are signed with the key the agency last
    // used (the grace key, named in lgsp-hub-key), so an adapter holding the
    // newest key and the grace key among its previous keys verifies them.
    let grace = hub.client(&rotated).await;
    let mut both = third.clone();
    both.previous_keys.push(KeyPair {
        access_key: rotated.access_key.clone(),
        secret: rotated.secret.clone(),
    });
    let newest = hub.client(&both).await;
    let mut notify = newest.notices(16).await.unwrap();
    grace
        .send(&out("H37.DN.010", b"after restart"))
        .await
        .unwrap();
    let i = next_within(&mut notify, WAIT).await.expect("a notice");
    assert_eq!(
        i.message.header("lgsp-hub-key"),
        Some(rotated.access_key.as_str())
    );
    assert_eq!(newest.notice(&i).unwrap().notice, NoticeKind::Accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_list_peek_shape_and_purge_with_bounces() {
    let mut hub = TestHub::start().await;
    let s = hub.register("000.00.31.H41").await;
    let _d = hub.register("000.00.32.H41").await;
    let source = hub.client(&s).await;
    let mut notify = source.notices(16).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            source
                .send(&out("000.00.32.H41", format!("doc {i}").as_bytes()))
                .await
                .unwrap(),
        );
    }
    let ns = notices(&source, &mut notify, 3, WAIT).await;
    assert!(ns.iter().all(|n| n.notice == NoticeKind::Accepted));
    // The hub publishes a delivery and its `accepted` notice at once
    // (PROTOCOL §5.3 step 5): the notice may come first.
    hub.wait_depth("inbox.000.00.32.H41", 3).await;

    let v = json(&hub, &["queue", "list", "--json"]);
    let row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "000.00.32.H41")
        .unwrap()
        .clone();
    assert_eq!(row["messages"], 3);
    assert_eq!(row["consumers"], 0);
    assert_eq!(row["online"], false);
    assert_eq!(row["queued_tracked"], 3);
    assert!(row["oldest_age_s"].as_i64().unwrap() < 60);
    assert!(row["oldest_queued_at"].is_string());
    assert_eq!(row["notify_messages"], 0);
    let table = run(&hub, &["queue", "list", "--sort", "depth"], 0);
    let first_row = table.lines().nth(1).unwrap();
    assert!(
        first_row.starts_with("000.00.32.H41") && first_row.contains("offline"),
        "{table}"
    );

    let v = json(
        &hub,
        &["queue", "peek", "000.00.32.H41", "-n", "2", "--json"],
    );
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["from"], "000.00.31.H41");
    // Envelopes are routed concurrently: the inbox holds them in some order.
    assert!(ids.iter().any(|id| items[0]["message_id"] == id.as_str()));
    assert_eq!(items[0]["subject"], "Báo cáo tuần");
    assert!(items[0]["accepted_at"].is_string());
    assert_eq!(
        hub.depth("inbox.000.00.32.H41").await,
        3,
        "peek consumes nothing"
    );
    run(&hub, &["queue", "peek", "000.00.99.H41"], 3);

    let v = json(&hub, &["queue", "shape", "--json"]);
    assert_eq!(v["buckets"][0], "0-5m");
    let d = v["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "000.00.32.H41")
        .unwrap()
        .clone();
    assert_eq!(d["total"], 3);
    assert_eq!(d["buckets"]["0-5m"], 3);
    assert_eq!(d["buckets"][">3d"], 0);
    assert!(run(&hub, &["queue", "shape"], 0).contains("30m-2h"));

    let o = hub.cli(&["queue", "purge", "000.00.32.H41"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("would remove every envelope"),
        "{}",
        stderr(&o)
    );
    assert_eq!(hub.depth("inbox.000.00.32.H41").await, 3);
    run(&hub, &["queue", "purge", "000.00.99.H41", "--yes"], 3);
    let v = json(
        &hub,
        &["queue", "purge", "000.00.32.H41", "--yes", "--json"],
    );
    assert_eq!(v["purged"], 3);
    assert_eq!(v["notices"], 3);
    assert_eq!(v["reason"], "rejected-by-destination");
    assert_eq!(hub.depth("inbox.000.00.32.H41").await, 0);
    let ns = notices(&source, &mut notify, 3, WAIT).await;
    assert_eq!(ns.len(), 3);
    for n in &ns {
        assert_eq!(n.notice, NoticeKind::Bounced);
        assert_eq!(n.reason, Some(Reason::RejectedByDestination));
        assert_eq!(n.dest, Some(code("000.00.32.H41")));
        assert!(n.detail.contains("purged"), "{}", n.detail);
    }
    let mut refs: Vec<String> = ns.iter().map(|n| n.reference.clone()).collect();
    refs.sort();
    ids.sort();
    assert_eq!(refs, ids);
    let v = json(
        &hub,
        &[
            "envelope",
            "show",
            &ids[0],
            "--from",
            "000.00.31.H41",
            "--json",
        ],
    );
    assert_eq!(v["dests"][0]["state"], "purged");
    let v = json(&hub, &["queue", "shape", "--json"]);
    assert!(v["destinations"].as_array().unwrap().is_empty(), "{v}");
    let v = json(&hub, &["audit", "tail", "-n", "4", "--json"]);
    let kinds: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["purged", "purged", "purged", "admin"]);
    assert_eq!(v[3]["fields"]["action"], "queue-purge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_filter_drop_and_rate_limited_retry() {
    let mut hub = TestHub::start().await;
    let s = hub.register("H41.001").await;
    let d = hub.register("H41.002").await;
    let source = hub.client(&s).await;
    let mut dest = hub.client(&d).await;
    let mut inbox = dest.inbox(8).await.unwrap();
    for i in 0..2 {
        // One try only: the first rejection makes the router give up and park it.
        let mut e = out("H41.002", format!("refused {i}").as_bytes());
        e.extra.push(("lgsp-max-attempts".into(), "1".into()));
        source.send(&e).await.unwrap();
    }
    for _ in 0..2 {
        let got = next_within(&mut inbox, WAIT).await.expect("delivery");
        inbox.reject(got.delivery_tag, false).await.unwrap();
    }
    // Unauthenticated input: no headers at all.
    let raw = Message {
        exchange: format!("{}ingress", hub.prefix),
        routing_key: "envelope.H41.001".into(),
        message_id: Some("RAW-1".into()),
        body: b"junk".to_vec().into(),
        ..Message::default()
    };
    source.publish(&raw).await.unwrap();
    hub.wait_depth("undelivered", 2).await;
    hub.wait_depth("rejected", 1).await;

    let v = json(&hub, &["dead", "list", "--json"]);
    assert_eq!(v["action"], "list");
    assert_eq!(v["scanned"], 3);
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    let dead: Vec<_> = items.iter().filter(|i| i["queue"] == "dead").collect();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["reason"], "max-attempts");
    assert_eq!(dead[0]["source"], "H41.001");
    assert_eq!(dead[0]["dest"], "H41.002");
    assert_eq!(dead[0]["deaths"], 1);
    assert!(dead[0]["died_at"].is_string());
    let rej = items.iter().find(|i| i["queue"] == "rejected").unwrap();
    assert_eq!(rej["reason"], "malformed");
    assert_eq!(rej["routing_key"], "envelope.H41.001");
    assert_eq!(hub.depth("undelivered").await, 2, "listing takes nothing");
    let n = |args: &[&str]| json(&hub, args)["items"].as_array().unwrap().len();
    assert_eq!(
        n(&[
            "dead",
            "list",
            "--queue",
            "dead",
            "--reason",
            "max-attempts",
            "--json"
        ]),
        2
    );
    assert_eq!(n(&["dead", "list", "--source", "H41.001", "--json"]), 2);
    assert_eq!(n(&["dead", "list", "--dest", "H41.009", "--json"]), 0);
    assert_eq!(n(&["dead", "list", "--older-than", "1h", "--json"]), 0);
    assert_eq!(n(&["dead", "list", "--reason", "malformed", "--json"]), 1);
    assert_eq!(n(&["dead", "list", "--limit", "1", "--json"]), 1);
    assert!(run(&hub, &["dead", "list"], 0).contains("3 selected of 3 looked at"));
    run(&hub, &["dead", "list", "--older-than", "soon"], 2);

    let o = hub.cli(&["dead", "drop", "--queue", "rejected"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("would drop 1 dead letter"),
        "{}",
        stderr(&o)
    );
    assert_eq!(hub.depth("rejected").await, 1);
    let v = json(
        &hub,
        &["dead", "drop", "--queue", "rejected", "--yes", "--json"],
    );
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(hub.depth("rejected").await, 0);
    assert_eq!(
        hub.depth("undelivered").await,
        2,
        "drop touched only its selection"
    );

    // Retry at 4/s: two messages need at least a quarter of a second.
    run(&hub, &["dead", "retry", "--rate", "0/s"], 2);
    let t = Instant::now();
    let v = json(
        &hub,
        &[
            "dead", "retry", "--queue", "dead", "--rate", "4/s", "--json",
        ],
    );
    let took = t.elapsed();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert!(
        took >= Duration::from_millis(250),
        "rate limit: took {took:?}"
    );
    assert_eq!(hub.depth("undelivered").await, 0);
    for _ in 0..2 {
        let got = next_within(&mut inbox, WAIT)
            .await
            .expect("retried delivery");
        assert!(got
            .message
            .headers
            .keys()
            .all(|k| !k.starts_with("x-death") && !k.starts_with("x-first-death")));
        let r = dest
            .receive(got.clone())
            .expect("hub signature still verifies");
        assert!(String::from_utf8_lossy(&r.message.body).starts_with("refused"));
        inbox.ack(got.delivery_tag).await.unwrap();
    }
    // Unauthenticated input is audited as one summary per (minute, reason),
    // written when the minute is over or at shutdown: stop and start the hub.
    assert!(hub.terminate().success());
    hub.spawn().await;
    let v = json(&hub, &["audit", "tail", "-n", "20", "--json"]);
    let kinds: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "dead-retried").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "dead-dropped").count(),
        1,
        "{kinds:?}"
    );
    let summary: Vec<&serde_json::Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "quarantine-summary")
        .collect();
    assert_eq!(summary.len(), 1, "{kinds:?}");
    assert_eq!(summary[0]["fields"]["reason"], "malformed");
    assert_eq!(summary[0]["fields"]["count"], 1);
    assert_eq!(
        summary[0]["fields"]["samples"][0]["routing_key"],
        "envelope.H41.001"
    );
    assert_eq!(summary[0]["fields"]["samples"][0]["message_id"], "RAW-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_finds_an_edited_record() {
    let mut hub = TestHub::start().await;
    hub.register("A1.01").await;
    hub.register("A1.02").await;
    // `tail --follow` prints the last entry, then each new one as a JSON line.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_truc"))
        .args(["audit", "tail", "-n", "1", "--follow", "--json"])
        .env("TRUC_ADMIN_ADDR", &hub.admin_addr)
        .env("TRUC_ADMIN_TOKEN", &hub.token)
        .env_remove("TRUC_CONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = {
        use std::io::BufRead;
        let stdout = follow.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        rx
    };
    let first = lines.recv_timeout(WAIT).expect("first line");
    run(&hub, &["agency", "disable", "A1.02"], 0);
    run(&hub, &["agency", "enable", "A1.02"], 0);
    let mut seen = vec![first];
    while seen.len() < 3 {
        seen.push(lines.recv_timeout(WAIT).expect("followed entry"));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let seqs: Vec<u64> = seen
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    let v = json(&hub, &["audit", "verify", "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["entries"], 4);
    assert!(run(&hub, &["audit", "verify"], 0).contains("verifies: 4 entries"));
    let v = json(&hub, &["audit", "tail", "-n", "2", "--json"]);
    assert_eq!(v[0]["seq"], 3);
    assert_eq!(v[0]["kind"], "admin");
    assert_eq!(v[0]["fields"]["action"], "agency-disable");
    assert_eq!(v[1]["fields"]["target"], "A1.02");
    assert_eq!(v[1]["hash"].as_str().unwrap().len(), 64);
    let o = hub.cli_with_token("wrong-token-000000000000", &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(5));

    // Edit entry 2 offline (sled needs exclusive access).
    hub.terminate();
    {
        let store = truc::store::Store::open(&hub.data.path().join("data")).unwrap();
        let k = 2u64.to_be_bytes();
        let mut raw = store.audit().get(k).unwrap().unwrap().to_vec();
        let pos = raw
            .windows(5)
            .position(|w| w == b"A1.02")
            .expect("target in entry 2");
        raw[pos + 4] = b'9';
        store.audit().insert(k, raw).unwrap();
        store.flush().unwrap();
    }
    hub.spawn().await;
    let o = hub.cli(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("broken at entry 2"), "{}", stderr(&o));
    let o = hub.cli(&["audit", "verify", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["broken"]["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_metrics_and_store_stats() {
    let mut hub = TestHub::start_with_policies(&[(
        "presence.toml",
        "[presence]\nheartbeat_window = \"90s\"\npoll_interval = \"1s\"\nreturn_on_bounce = false\n",
    )])
    .await;
    let s = hub.register("R1.01").await;
    let d = hub.register("R1.02").await;
    let source = hub.client(&s).await;
    let mut dest = hub.client(&d).await;
    let mut notify = source.notices(16).await.unwrap();
    let mut inbox = dest.inbox(8).await.unwrap();
    for i in 0..2 {
        source
            .send(&out("R1.02", format!("r {i}").as_bytes()))
            .await
            .unwrap();
    }
    source.send(&out("R1.99", b"nowhere")).await.unwrap();
    for _ in 0..2 {
        let got = next_within(&mut inbox, WAIT).await.expect("delivery");
        let r = dest.receive(got.clone()).unwrap();
        inbox.ack(got.delivery_tag).await.unwrap();
        dest.send_status(&r.message_id, "01", None, None)
            .await
            .unwrap();
    }
    // accepted ×3, bounced ×1, delivered ×2, status ×2
    let ns = notices(&source, &mut notify, 8, WAIT).await;
    assert_eq!(
        ns.iter()
            .filter(|n| n.notice == NoticeKind::Delivered)
            .count(),
        2
    );

    let v = json(&hub, &["report", "--format", "json"]);
    assert_eq!(v["by"], "day");
    // Days are cut in the operator's time zone (Vietnam unless configured).
    assert_eq!(v["time_zone"], "Asia/Ho_Chi_Minh");
    let rows = v["rows"].as_array().unwrap();
    let today = truc::report::period(
        truc::time::now_ms(),
        truc::report::By::Day,
        &truc::zone::Zone::default(),
    );
    let row = |a: &str| {
        rows.iter()
            .find(|r| r["agency"] == a && r["period"] == today.as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(row("R1.01")["sent"], 3);
    assert_eq!(row("R1.01")["bounced"], 1);
    assert_eq!(row("R1.02")["received"], 2);
    assert_eq!(row("R1.02")["retries"], 0);
    assert_eq!(row("R1.02")["delivered"], 2);
    assert!(row("R1.02")["latency_median_s"].as_f64().unwrap() < 30.0);
    assert!(row("R1.02")["latency_p95_s"].is_number());
    let now = v["connections_now"].as_array().unwrap();
    let r2 = now.iter().find(|c| c["agency"] == "R1.02").unwrap();
    assert_eq!(
        (r2["inbox_consumers"].as_u64(), r2["online"].as_bool()),
        (Some(1), Some(true))
    );
    let r1 = now.iter().find(|c| c["agency"] == "R1.01").unwrap();
    assert_eq!(r1["online"], false);
    // The connection history of the period comes from the presence tracker.
    let deadline = Instant::now() + WAIT;
    loop {
        let v = json(&hub, &["report", "--format", "json"]);
        let hist = v["connections"].as_array().unwrap();
        if hist.iter().any(|c| {
            c["agency"] == "R1.02"
                && (c["event"] == "connected" || c["event"] == "first-seen-online")
                && c["at"].is_string()
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no connect of R1.02 in {hist:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(run(&hub, &["report"], 0).contains("Connects and disconnects in the period"));
    let csv = run(&hub, &["report", "--by", "month", "--format", "csv"], 0);
    assert_eq!(
        csv.lines().next().unwrap(),
        "period,agency,sent,received,retries,delivered,bounced,expired,latency_median_s,latency_p95_s"
    );
    assert!(
        csv.lines().any(|l| l.contains(",R1.01,3,0,0,0,1,0,,")),
        "{csv}"
    );
    let v = json(
        &hub,
        &[
            "report",
            "--since",
            "2000-01-01",
            "--until",
            "2000-01-31",
            "--format",
            "json",
        ],
    );
    assert!(v["rows"].as_array().unwrap().is_empty());
    run(&hub, &["report", "--since", "yesterday"], 2);
    let bad_zone = hub.cli_expect(&["report", "--tz", "Mars/Olympus"], 2);
    assert!(common::stderr(&bad_zone).contains("unknown time zone"));
    let utc = json(&hub, &["report", "--tz", "UTC", "--format", "json"]);
    assert_eq!(utc["time_zone"], "UTC");
    let table = run(&hub, &["report"], 0);
    assert!(
        table.contains("MEDIAN s") && table.contains("Connections now"),
        "{table}"
    );

    let v = json(&hub, &["store", "stats", "--json"]);
    let entries = |t: &str| {
        v["trees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == t)
            .unwrap()["entries"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(entries("envelopes"), 3);
    assert_eq!(entries("agencies"), 2);
    assert!(entries("audit") >= 7, "2 adds, 3 accepts, 2 statuses");
    assert_eq!(v["audit_retention"], "60d");
    assert!(v["bytes_on_disk"].as_u64().unwrap() > 0);

    // Metrics: delivered and latency at once; inbox gauges within one sampling interval.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let r = truc::cli::http::request(&hub.admin_addr, "GET", "/metrics", "", None)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert!(
            text.contains("truc_envelopes_delivered_total{priority=\"0\"} 2"),
            "{text}"
        );
        assert!(text.contains("truc_delivery_latency_seconds"), "{text}");
        if text.contains("truc_inbox_consumers{agency=\"R1.02\"} 1")
            && text.contains("truc_agencies_online 1")
        {
            assert!(
                text.contains("truc_inbox_messages{agency=\"R1.02\"} 0"),
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inbox gauges not sampled:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

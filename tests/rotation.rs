//! Key rotation without loss, adapters that never acknowledge what they
//! cannot verify, and `truc send` waiting for the hub's answer — against the
//! real broker, through the client library and the `truc` CLI.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{envelope, next_within, stderr, stdout, TestHub};
use truc::client::{ClientError, Credentials, KeyPair};
use truc::notice::NoticeKind;

const WAIT: Duration = Duration::from_secs(20);

/// Writes `creds` as a credentials file in the hub's data directory
/// (removed with it).
fn creds_file(hub: &TestHub, name: &str, creds: &Credentials) -> String {
    let path = hub.data.path().join(name);
    std::fs::write(&path, serde_json::to_string(creds).unwrap()).unwrap();
    path.display().to_string()
}

/// Waits (bounded) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_traffic_loses_nothing_for_adapters_holding_only_the_old_secret() {
    const N: usize = 40;
    let mut hub = TestHub::start().await;
    let src = hub.register("H37.RT.001").await;
    let dst = hub.register("H37.RT.002").await;
    // Both adapters hold only the secrets issued at registration, throughout.
    let source = Arc::new(hub.client(&src).await);
    let mut dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(64).await.unwrap();
    let mut notify = source.notices(256).await.unwrap();

    // Traffic: N envelopes signed with the old key; both agencies' keys are
    // rotated (grace 7d) after the first N/4 were published.
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (source, sent) = (source.clone(), sent.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..N {
                let out = envelope("H37.RT.002")
                    .subject(format!("traffic {i}"))
                    .build();
                ids.push(source.send(&out).await.unwrap());
                sent.fetch_add(1, Ordering::SeqCst);
            }
            ids
        })
    };
    let rotated = {
        let (sent, hub_cli) = (sent.clone(), &hub);
        tokio::task::block_in_place(|| {
            wait_until("the first envelopes", || {
                sent.load(Ordering::SeqCst) >= N / 4
            });
            ["H37.RT.001", "H37.RT.002"].map(|code| {
                let o = hub_cli.cli_expect(
                    &["agency", "rotate-key", code, "--grace", "7d", "--json"],
                    0,
                );
                let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
                assert_eq!(v["hub_signs_with"], key_in_use(code, &src, &dst), "{v}");
                (
                    v["access_key"].as_str().unwrap().to_owned(),
                    v["secret"].as_str().unwrap().to_owned(),
                )
            })
        })
    };
    let ids = sender.await.unwrap();
    assert_eq!(ids.len(), N);

    // The destination takes every delivery with its old secret and answers 01.
    let mut delivered = 0;
    while delivered < N {
        let i = next_within(&mut inbox, WAIT)
            .await
            .unwrap_or_else(|| panic!("{delivered} of {N} deliveries; log:\n{}", hub.log()));
        assert_eq!(
            i.message.header("lgsp-hub-key"),
            Some(dst.access_key.as_str())
        );
        let r = dest
            .receive(i)
            .expect("the delivery verifies with the old secret");
        assert!(!r.repeat);
        dest.send_status(&r.message_id, "01", Some(&r.from), None)
            .await
            .unwrap();
        inbox.ack(r.delivery_tag).await.unwrap();
        delivered += 1;
    }

    // The source reads every notice with its old secret: accepted, delivered
    // and status for each envelope, none refused.
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    while counts.values().sum::<usize>() < 3 * N {
        let i = next_within(&mut notify, WAIT)
            .await
            .unwrap_or_else(|| panic!("notices so far {counts:?}; log:\n{}", hub.log()));
        assert_eq!(
            i.message.header("lgsp-hub-key"),
            Some(src.access_key.as_str())
        );
        let n = source
            .notice(&i)
            .expect("the notice verifies with the old secret");
        assert!(ids.contains(&n.reference), "{n:?}");
        *counts.entry(n.notice.as_str()).or_default() += 1;
        notify.ack(i.delivery_tag).await.unwrap();
    }
    for kind in [
        NoticeKind::Accepted,
        NoticeKind::Delivered,
        NoticeKind::Status,
    ] {
        assert_eq!(counts.get(kind.as_str()), Some(&N), "{kind:?}: {counts:?}");
    }
    hub.wait_depth("rejected", 0).await;
    assert_eq!(hub.depth("inbox.H37.RT.002").await, 0);

    // The source switches to its new key: from then on the hub signs with it.
    let [(new_key, new_secret), _] = rotated;
    let new_creds = Credentials::new(src.code.clone(), new_key.clone(), new_secret.clone());
    let switched = hub.client(&new_creds).await;
    let id = switched
        .send(&envelope("H37.RT.002").build())
        .await
        .unwrap();
    let i = next_within(&mut notify, WAIT).await.expect("accepted");
    assert_eq!(i.message.header("lgsp-ref"), Some(id.as_str()));
    assert_eq!(i.message.header("lgsp-hub-key"), Some(new_key.as_str()));
    // The adapter still holding only the old secret cannot verify it, and
    // says which key was named and which it holds.
    match source.notice(&i) {
        Err(ClientError::Verify { why, .. }) => {
            assert!(
                why.contains(&new_key) && why.contains(&src.access_key),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
    notify.reject(i.delivery_tag, true).await.unwrap();
    notify.cancel().await.unwrap();
    drop(notify);
    match Arc::try_unwrap(source) {
        Ok(c) => c.close().await,
        Err(_) => panic!("the sender task still holds the client"),
    }
    switched.close().await;
    dest.close().await;

    // truc notices with the old secret only: exit 6, the notice stays queued.
    hub.wait_depth("notify.H37.RT.001", 1).await;
    let old_only = creds_file(&hub, "old.json", &src);
    let o = hub.cli_expect(
        &[
            "notices",
            "H37.RT.001",
            "--credentials",
            &old_only,
            "--idle",
            "10s",
        ],
        6,
    );
    let err = stderr(&o);
    assert!(
        err.contains(&new_key) && err.contains(&src.access_key) && err.contains("left it queued"),
        "{err}"
    );
    hub.wait_depth("notify.H37.RT.001", 1).await;
    // With both keys (previous_keys in the file) it verifies and is taken.
    let mut both = new_creds.clone();
    both.previous_keys.push(KeyPair {
        access_key: src.access_key.clone(),
        secret: src.secret.clone(),
    });
    let both = creds_file(&hub, "both.json", &both);
    let o = hub.cli_expect(
        &[
            "notices",
            "H37.RT.001",
            "--credentials",
            &both,
            "--count",
            "1",
            "--idle",
            "10s",
        ],
        0,
    );
    assert!(
        stdout(&o).contains(&format!("accepted  ref {id}")),
        "{}",
        stdout(&o)
    );
    hub.wait_depth("notify.H37.RT.001", 0).await;
}

/// The key the hub signs with right after a rotation: the one in use before.
fn key_in_use(code: &str, src: &Credentials, dst: &Credentials) -> String {
    if code == src.code.as_str() {
        src.access_key.clone()
    } else {
        dst.access_key.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_with_a_wrong_secret_leave_notices_and_deliveries_queued() {
    let mut hub = TestHub::start().await;
    let src = hub.register("H37.WS.001").await;
    let dst = hub.register("H37.WS.002").await;
    let source = hub.client(&src).await;
    let id = source
        .send(&envelope("H37.WS.002").subject("giữ lại").build())
        .await
        .unwrap();
    source.close().await;
    hub.wait_depth("inbox.H37.WS.002", 1).await;
    hub.wait_depth("notify.H37.WS.001", 1).await;

    let wrong = "not-the-secret-000000000000000000000000000";
    let o = hub.cli_expect(
        &[
            "notices",
            "H37.WS.001",
            "--access-key",
            &src.access_key,
            "--secret",
            wrong,
            "--idle",
            "10s",
        ],
        6,
    );
    let err = stderr(&o);
    assert!(
        err.contains("signature")
            && err.contains(&src.access_key)
            && err.contains("left it queued"),
        "{err}"
    );
    hub.wait_depth("notify.H37.WS.001", 1).await;

    let o = hub.cli_expect(
        &[
            "recv",
            "H37.WS.002",
            "--access-key",
            &dst.access_key,
            "--secret",
            wrong,
            "--idle",
            "10s",
        ],
        6,
    );
    let err = stderr(&o);
    assert!(
        err.contains("cannot verify delivery") && err.contains(&dst.access_key),
        "{err}"
    );
    hub.wait_depth("inbox.H37.WS.002", 1).await;

    // Intact: the right secrets take both.
    let o = hub.cli_expect(
        &[
            "recv",
            "H37.WS.002",
            "--access-key",
            &dst.access_key,
            "--secret",
            &dst.secret,
            "--count",
            "1",
            "--idle",
            "10s",
        ],
        0,
    );
    assert!(stdout(&o).contains(&id), "{}", stdout(&o));
    let o = hub.cli_expect(
        &[
            "notices",
            "H37.WS.001",
            "--access-key",
            &src.access_key,
            "--secret",
            &src.secret,
            "--count",
            "1",
            "--idle",
            "10s",
        ],
        0,
    );
    assert!(
        stdout(&o).contains(&format!("accepted  ref {id}")),
        "{}",
        stdout(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truc_send_waits_for_the_answer_and_leaves_other_notices_queued() {
    let mut hub = TestHub::start().await;
    let src = hub.register("H37.SD.001").await;
    hub.register("H37.SD.002").await;
    let file = hub.data.path().join("doc.txt");
    std::fs::write(&file, "Xin chào").unwrap();
    let file = file.display().to_string();
    let good = creds_file(&hub, "src.json", &src);
    let send = |extra: &[&str], creds: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "send",
            "--from",
            "H37.SD.001",
            "--to",
            "H37.SD.002",
            "--file",
            &file,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(creds.iter().map(|s| s.to_string()));
        v
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    // Local checks exit 2 before connecting: the broker URL is unreachable
    // (a connection attempt would exit 4).
    for (extra, says) in [
        (&["--priority", "4"][..], "--deliver-by"),
        (&["--deliver-by", "2020-01-01T00:00:00Z"][..], "in the past"),
        (&["--deliver-by", "next week"][..], "RFC 3339"),
    ] {
        let v = send(extra, &["--credentials", &good]);
        let o = Command::new(env!("CARGO_BIN_EXE_truc"))
            .args(args(&v))
            .env("TRUC_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env("TRUC_PREFIX", &hub.prefix)
            .env_remove("TRUC_CONFIG")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{extra:?}: {}", stderr(&o));
    }
    let v = send(&[], &["--credentials", &good]);
    let mut empty = args(&v);
    empty[4] = ",";
    assert!(stderr(&hub.cli_expect(&empty, 2)).contains("no destination"));

    // --no-wait: the id, exit 0, no answer read; its accepted notice stays queued.
    let o = hub.cli_expect(&args(&send(&["--no-wait"], &["--credentials", &good])), 0);
    let first = stdout(&o).trim().to_owned();
    assert_eq!(first.lines().count(), 1, "{first}");
    hub.wait_depth("notify.H37.SD.001", 1).await;

    // A wrong secret: no answer (the hub does not answer the unauthenticated),
    // exit 7 naming the likely causes; the other notice is untouched.
    let wrong = send(
        &["--wait", "3s"],
        &[
            "--access-key",
            &src.access_key,
            "--secret",
            "wrong-secret-0000000000",
        ],
    );
    let o = hub.cli_expect(&args(&wrong), 7);
    let err = stderr(&o);
    for cause in ["wrong access key or secret", "clock", "hub is down"] {
        assert!(err.contains(cause), "{cause}: {err}");
    }
    hub.wait_depth("rejected", 1).await;
    hub.wait_depth("notify.H37.SD.001", 1).await;

    // A good send: accepted printed, exit 0; only its own notice is taken.
    let o = hub.cli_expect(&args(&send(&[], &["--credentials", &good])), 0);
    let out = stdout(&o);
    let id = out.lines().next().unwrap().to_owned();
    assert!(
        out.contains(&format!("accepted  ref {id}  destinations H37.SD.002")),
        "{out}"
    );
    hub.wait_depth("notify.H37.SD.001", 1).await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(8).await.unwrap();
    let left = next_within(&mut notify, WAIT)
        .await
        .expect("the first notice");
    let n = source.notice(&left).unwrap();
    assert_eq!(
        (n.notice, n.reference.as_str()),
        (NoticeKind::Accepted, first.as_str())
    );
    notify.ack(left.delivery_tag).await.unwrap();
    source.close().await;

    // Refused by the hub (the source is disabled): exit 3 with the reason.
    hub.cli_expect(&["agency", "disable", "H37.SD.001"], 0);
    let o = hub.cli_expect(&args(&send(&[], &["--credentials", &good])), 3);
    let err = stderr(&o);
    assert!(
        err.contains("rejected") && err.contains("forbidden"),
        "{err}"
    );
}

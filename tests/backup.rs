//! Backup and restore against the real broker: a running hub with two
//! agencies (one HMAC, one RSA) and a few envelopes, some delivered, is
//! backed up with `truc store backup`; the hub stops; its data directory is
//! replaced by an empty one holding only the master key; a tampered or
//! truncated file is refused; `truc store restore` fills the empty store;
//! a plain `truc serve` starts on it (the restore superseded the old
//! checkpoints, in the file and in the broker); the old credentials still
//! authenticate, the old timelines are intact, `truc audit verify` passes
//! and names the restore; a second restore into the now non-empty store is
//! refused and changes nothing.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{code, envelope, next_within, stderr, stdout, TestHub};
use truc::broker::Subscription;
use truc::client::Client;

/// Signs with HMAC.
const A: &str = "000.00.31.H41";
/// Signs with RSA.
const B: &str = "000.00.32.H41";

/// Takes deliveries from `inbox` (checking the hub's signature with the
/// client's secret, acking them) until `id` came; returns every id taken.
async fn take_until(client: &mut Client, inbox: &mut Subscription, id: &str) -> Vec<String> {
    let mut ids = Vec::new();
    while !ids.iter().any(|i| i == id) {
        let got = next_within(inbox, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{id} not delivered; got {ids:?}"));
        let tag = got.delivery_tag;
        // Said on failure: a repeat is told apart from a copy the broker
        // kept (its ack lost) by these two.
        eprintln!(
            "took {:?} (lgsp-attempt {:?}, broker redelivered {})",
            got.message.message_id,
            got.message.header("lgsp-attempt"),
            got.redelivered
        );
        let r = client.receive(got).expect("the hub's signature verifies");
        inbox.ack(tag).await.unwrap();
        ids.push(r.message_id);
    }
    ids
}

/// State and events of every destination of an envelope.
async fn timeline(hub: &TestHub, from: &str, id: &str) -> Vec<serde_json::Value> {
    let rec = hub.envelope_record(from, id).await;
    rec["dests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| serde_json::json!({"dest": d["dest"], "state": d["state"], "events": d["events"]}))
        .collect()
}

async fn wait_state(hub: &TestHub, from: &str, id: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rec = hub.envelope_record(from, id).await;
        if rec["dests"][0]["state"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: {rec}; log:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every audit entry (`truc audit tail --json`).
fn audit_entries(hub: &TestHub) -> Vec<serde_json::Value> {
    let o = hub.cli_expect(&["audit", "tail", "-n", "10000", "--json"], 0);
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn file_mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_hub_is_backed_up_and_restored_into_a_new_data_dir() {
    let mut hub = TestHub::start().await;
    let (rsa_key, pem) = common::rsa_key();
    let a = hub.register(A).await;
    let b = hub.register_with_key(B, Some(pem)).await;

    // A → B: three envelopes; B takes them and says "received" for two.
    let ca = hub.client(&a).await;
    for i in 0..3 {
        ca.send(&envelope(B).id(format!("BK-A{i}")).build())
            .await
            .unwrap();
    }
    let mut cb = hub.client(&b).await;
    let mut inbox_b = cb.inbox(8).await.unwrap();
    take_until(&mut cb, &mut inbox_b, "BK-A2").await;
    for id in ["BK-A0", "BK-A1"] {
        cb.send_status(id, "01", Some(&code(A)), None)
            .await
            .unwrap();
    }
    // B → A, signed with RSA: left queued in A's inbox.
    let mut m = envelope(A).id("BK-B0").signed(&hub.prefix, &b);
    common::sign_rsa(&mut m, &rsa_key);
    cb.publish(&m).await.unwrap();
    hub.wait_depth(&format!("inbox.{A}"), 1).await;
    wait_state(&hub, A, "BK-A0", "delivered").await;
    wait_state(&hub, A, "BK-A1", "delivered").await;
    wait_state(&hub, B, "BK-B0", "queued").await;
    let mut before = Vec::new();
    for (from, id) in [(A, "BK-A0"), (A, "BK-A1"), (A, "BK-A2"), (B, "BK-B0")] {
        before.push(timeline(&hub, from, id).await);
    }
    assert_eq!(before[2][0]["state"], "queued", "{:?}", before[2]);

    // Backed up while running.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.truc-backup");
    let file_s = file.to_str().unwrap();
    let o = hub.cli_expect(&["store", "backup", file_s], 0);
    let out = stdout(&o);
    assert!(
        out.contains("agencies") && out.contains("envelopes"),
        "{out}"
    );
    assert!(out.contains("bytes"), "{out}");
    assert_eq!(file_mode(&file), 0o600);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"truc-backup 1 "));
    assert!(out.contains(&format!("{} bytes", bytes.len())), "{out}");
    let backups: Vec<serde_json::Value> = audit_entries(&hub)
        .into_iter()
        .filter(|e| e["kind"] == "admin" && e["fields"]["action"] == "store-backup")
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    // Without the token, no backup.
    let o = hub.cli_with_token(
        "wrong-token-wrong-token-wrong",
        &["store", "backup", file_s],
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "file unchanged");
    ca.close().await;
    cb.close().await;

    // The hub stops; a new, empty data directory with the same master key.
    assert!(hub.terminate().success());
    let data = hub.data.path().join("data");
    let old = hub.data.path().join("old-data");
    std::fs::rename(&data, &old).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(old.join("master.key"), data.join("master.key")).unwrap();

    // A tampered or truncated file is refused, naming which; nothing is written.
    let mut tampered = bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x20;
    let bad = dir.path().join("tampered");
    std::fs::write(&bad, &tampered).unwrap();
    let o = hub.cli(&["store", "restore", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("altered"), "{}", stderr(&o));
    let short = dir.path().join("short");
    std::fs::write(&short, &bytes[..bytes.len() - 100]).unwrap();
    let o = hub.cli(&["store", "restore", short.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
    assert!(!data.join("db").exists(), "no store was created");

    // Restored into the empty store.
    let o = hub.cli_expect(&["store", "restore", file_s], 0);
    let out = stdout(&o);
    assert!(out.contains("store-restored"), "{out}");
    assert!(out.contains("superseded"), "{out}");
    let anchor = std::fs::read(data.join("store.anchor")).unwrap();

    // A second restore into the now non-empty store is refused, untouched.
    let o = hub.cli(&["store", "restore", file_s]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    assert_eq!(std::fs::read(data.join("store.anchor")).unwrap(), anchor);

    // A plain start is accepted.
    hub.spawn().await;
    let mut after = Vec::new();
    for (from, id) in [(A, "BK-A0"), (A, "BK-A1"), (A, "BK-A2"), (B, "BK-B0")] {
        after.push(timeline(&hub, from, id).await);
    }
    assert_eq!(after, before, "timelines intact");

    // The old credentials authenticate: A (HMAC) sends to B, B (RSA) to A;
    // each delivery carries the hub's signature with the old secret.
    let mut ca = hub.client(&a).await;
    let mut cb = hub.client(&b).await;
    ca.send(&envelope(B).id("BK-A9").build()).await.unwrap();
    let mut inbox_b = cb.inbox(8).await.unwrap();
    let got = take_until(&mut cb, &mut inbox_b, "BK-A9").await;
    assert_eq!(got, ["BK-A9"], "log:\n{}", hub.log());
    let mut m = envelope(A).id("BK-B9").signed(&hub.prefix, &b);
    common::sign_rsa(&mut m, &rsa_key);
    cb.publish(&m).await.unwrap();
    let mut inbox_a = ca.inbox(8).await.unwrap();
    let got = take_until(&mut ca, &mut inbox_a, "BK-B9").await;
    // The envelope left in A's inbox at the backup is still there, first.
    assert_eq!(got, ["BK-B0", "BK-B9"]);
    wait_state(&hub, A, "BK-A9", "queued").await;

    // The audit chain verifies and names the restore.
    let o = hub.cli_expect(&["audit", "verify"], 0);
    let out = stdout(&o);
    assert!(out.contains("restored from a backup at entry"), "{out}");
    assert!(out.contains("hub.truc-backup"), "{out}");
    let restored: Vec<serde_json::Value> = audit_entries(&hub)
        .into_iter()
        .filter(|e| e["kind"] == "store-restored")
        .collect();
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert!(
        restored[0]["fields"]["file"]
            .as_str()
            .unwrap()
            .ends_with("hub.truc-backup"),
        "{restored:?}"
    );
    // Run on the hub's machine: named after the local user.
    assert!(
        restored[0]["fields"]["account"]
            .as_str()
            .is_some_and(|a| a.starts_with("@local:")),
        "{restored:?}"
    );
    ca.close().await;
    cb.close().await;

    // Settled: the next plain start goes on from the restore's anchor.
    assert!(hub.terminate().success());
    hub.spawn().await;
    hub.cli_expect(&["audit", "verify"], 0);
}

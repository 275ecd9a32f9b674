//! The store's disk fills up under load and empties again: `/healthz` says
//! so with a `store` reason and `truc_store_writable` drops to 0; once there
//! is room the hub resumes by itself (no restart), every envelope is
//! delivered (exactly once after the destination's dedupe by message id),
//! none is refused `clock-skew` though the outage outlasts the skew, the
//! audit log holds every accept and still verifies, the log said it once
//! rather than once per failed message, and the `store` alert fired once and
//! resolved.
//!
//! Needs root (it mounts a tmpfs for the hub's data directory, unmounted on
//! `Drop`, after the hub is stopped, even when the test panics).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{envelope, next_within, TestHub};
use truc::notice::NoticeKind;
use truc::reason::Reason;

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs for the hub's data directory and must run as root \
             (or with CAP_SYS_ADMIN); mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it: detach it now, freed when released.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Fills the file system of `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    // The last partial pages too.
    for _ in 0..64 {
        if f.write(&[0u8; 512]).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    path
}

fn has_reason(v: &serde_json::Value, check: &str) -> bool {
    v["reasons"]
        .as_array()
        .is_some_and(|rs| rs.iter().any(|r| r["check"] == check))
}

const SKEW: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stalls_then_resumes_by_itself_losing_nothing() {
    // Declared first, so dropped last: the hub is stopped before unmounting.
    let fs = Tmpfs::mount("48m");
    let policy = truc::policy::DEFAULT_POLICY.replace(
        "clock_skew = \"300s\"",
        &format!("clock_skew = \"{}s\"", SKEW.as_secs()),
    );
    assert!(policy.contains("clock_skew = \"5s\""), "policy edited");
    let mut hub = TestHub::unstarted(Some(&policy));
    std::os::unix::fs::symlink(fs.path(), hub.data.path().join("data")).unwrap();
    // The store alert goes to a local webhook (no email relay: port 1).
    let (hook_url, hooks, hook_task) = common::alerts::webhook().await;
    std::fs::write(
        hub.policies.join("alerts.toml"),
        common::alerts::policy(&hook_url, "127.0.0.1:1")
            .replace("smtp = \"127.0.0.1:1\"", "smtp = \"\""),
    )
    .unwrap();
    hub.spawn().await;
    let src = hub.register("000.00.31.H41").await;
    let dst = hub.register("000.00.32.H41").await;
    let source = hub.client(&src).await;
    let dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(64).await.unwrap();
    let mut notify = source.notices(64).await.unwrap();

    let mut sent: Vec<String> = Vec::new();
    let mut n = 0;
    let send = |n: &mut u32| {
        *n += 1;
        let m = envelope("000.00.32.H41")
            .id(format!("FULL-{n:04}"))
            .body(vec![b'x'; 2048])
            .signed(&hub.prefix, &src);
        (m.message_id.clone().unwrap(), m)
    };
    // The hub works.
    for _ in 0..5 {
        let (id, m) = send(&mut n);
        source.publish(&m).await.unwrap();
        sent.push(id);
    }
    let mut got: HashMap<String, usize> = HashMap::new();
    let take = |i: truc::message::Inbound, got: &mut HashMap<String, usize>| {
        *got.entry(i.message.message_id.clone().unwrap_or_default())
            .or_default() += 1;
        i.delivery_tag
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 5 {
        let i = next_within(
            &mut inbox,
            deadline.saturating_duration_since(Instant::now()),
        )
        .await
        .expect("the first deliveries");
        let tag = take(i, &mut got);
        inbox.ack(tag).await.unwrap();
    }

    // The disk fills up; envelopes keep coming until the hub says it is unhealthy.
    let filler = fill(fs.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    let unhealthy = loop {
        let (id, m) = send(&mut n);
        source.publish(&m).await.unwrap();
        sent.push(id);
        let (status, v) = hub.healthz().await;
        if status == 503 && has_reason(&v, "store") {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never said the store cannot write: {status} {v}\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(unhealthy["status"], "unhealthy");
    let detail = unhealthy["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == "store")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("No space left on device"),
        "the store reason says why: {detail}"
    );
    // More load during the outage, signed now.
    for _ in 0..10 {
        let (id, m) = send(&mut n);
        source.publish(&m).await.unwrap();
        sent.push(id);
    }
    let last_signed = Instant::now();
    // The gauges say it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = hub.metrics_text().await;
        if text.contains("truc_store_writable 0")
            && text.contains("truc_healthy{check=\"store\"} 0")
        {
            break;
        }
        assert!(Instant::now() < deadline, "gauges not set:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The outage lasts longer than the clock skew after the last envelope
    // was signed, still unhealthy throughout (a plain skew rule would now
    // refuse every envelope waiting).
    while last_signed.elapsed() < SKEW + Duration::from_secs(2) {
        let (status, v) = hub.healthz().await;
        assert_eq!(status, 503, "still unhealthy while the disk is full: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    hooks.wait("ALERT", "store:store", || hub.log()).await;

    // Room again: the hub resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = hub.healthz().await;
        if status == 200 {
            assert_eq!(v["status"], "ok");
            assert_eq!(v["reasons"], serde_json::json!([]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hub did not recover by itself: {status} {v}\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hooks.wait("RESOLVED", "store:store", || hub.log()).await;
    assert_eq!(hooks.about("ALERT", "store:store"), 1, "{:#?}", hooks.all());
    hook_task.abort();

    // Every envelope delivered; repeats (lgsp-attempt 2) only of ones whose
    // first delivery went out before the store failed them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < sent.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(i) = next_within(&mut inbox, left).await else {
            let missing: Vec<&String> = sent.iter().filter(|s| !got.contains_key(*s)).collect();
            let (_, queues) = hub.api("GET", "/v1/queues", None).await;
            panic!(
                "not delivered: {missing:?}\nqueues: {queues}\n{}",
                hub.log()
            );
        };
        let tag = take(i, &mut got);
        inbox.ack(tag).await.unwrap();
    }
    let want: BTreeSet<&String> = sent.iter().collect();
    let have: BTreeSet<&String> = got.keys().collect();
    assert_eq!(have, want, "exactly the envelopes sent were delivered");

    // An accepted notice for each, and no refusal at all (no clock-skew).
    let mut accepted: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.len() < sent.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(i) = next_within(&mut notify, left).await else {
            panic!(
                "accepted notices missing: have {}/{}",
                accepted.len(),
                sent.len()
            );
        };
        let notice = source.notice(&i).unwrap();
        notify.ack(i.delivery_tag).await.unwrap();
        assert_ne!(
            notice.notice,
            NoticeKind::Rejected,
            "refused ({:?}): {}",
            notice.reason,
            notice.detail
        );
        assert_ne!(notice.reason, Some(Reason::ClockSkew));
        if notice.notice == NoticeKind::Accepted {
            accepted.insert(notice.reference.clone());
        }
    }
    assert!(!hub.metrics_text().await.contains("reason=\"clock-skew\""));

    // The audit log holds an accept for every envelope and verifies. Entries
    // whose write failed during the outage are written again by the hub's
    // housekeeping within seconds of the store recovering.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, entries) = hub.api("GET", "/v1/audit?n=100000", None).await;
        assert_eq!(code, 200, "{entries}");
        let audited: BTreeSet<String> = entries
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "accepted")
            .filter_map(|e| e["fields"]["message_id"].as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = sent.iter().filter(|id| !audited.contains(*id)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit entry for {missing:?}: {}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, report) = hub.api("GET", "/v1/audit/verify", None).await;
    assert_eq!(code, 200);
    assert_eq!(report["ok"], true, "{report}");

    // Said once, not once per failed message.
    let log = hub.log();
    assert_eq!(
        log.matches("store cannot write").count(),
        1,
        "one warning when the store failed:\n{log}"
    );
    assert!(log.contains("store reopened after a write failure"));
    assert!(log.contains("store writable again"));
    let failures = log
        .lines()
        .filter(|l| {
            l.contains(" WARN ")
                && (l.contains("message not handled") || l.contains("messages still not handled"))
        })
        .count();
    assert!(
        (1..=3).contains(&failures),
        "failed messages are said when they start and at most every 30 s after, not each: \
         {failures} lines\n{log}"
    );
}

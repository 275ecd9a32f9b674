//! Every `--json` output of the CLI parses into its `truc::admin_types`
//! type — and re-serializes to the very same JSON, so no field is lost or
//! invented — against a real hub; plus the one CLI convention: unknown
//! `--state`/`--reason` refused with exit 2, `envelope show` without
//! `--from`, `--since`/`--until` as a duration or a date, `-n`/`--limit`.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{code, notices, stderr, stdout, TestHub};
use serde::de::DeserializeOwned;
use serde::Serialize;
use truc::admin_types as t;
use truc::client::{Client, Outgoing};
use truc::envelope::Priority;
use truc::notice::NoticeKind;

const WAIT: Duration = Duration::from_secs(10);

fn out(to: &str, message_id: Option<&str>) -> Outgoing {
    Outgoing {
        to: vec![code(to)],
        subject: "Công văn".into(),
        priority: Priority::new(0).unwrap(),
        data_type: "edoc".into(),
        content_type: "text/plain".into(),
        body: b"noi dung".to_vec(),
        message_id: message_id.map(str::to_owned),
        extra: vec![],
    }
}

/// Runs the CLI and expects exit `code`.
fn run(hub: &TestHub, args: &[&str], code: i32) -> Output {
    hub.cli_expect(args, code)
}

/// Runs the CLI (exit 0), parses stdout into `T`, and checks that `T`
/// serializes back to exactly the JSON printed.
fn typed<T: DeserializeOwned + Serialize>(hub: &TestHub, args: &[&str]) -> T {
    let o = run(hub, args, 0);
    let v: T = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "truc {args:?} does not parse into {}: {e}\n{}",
            std::any::type_name::<T>(),
            stdout(&o)
        )
    });
    let raw: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        serde_json::to_value(&v).unwrap(),
        raw,
        "truc {args:?}: the type does not carry exactly the printed fields"
    );
    v
}

/// Asserts `s` is an RFC 3339 time.
fn rfc3339(s: &str) {
    truc::time::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"));
}

async fn accepted(client: &Client, n: usize) {
    let mut sub = client.notices(16).await.unwrap();
    let ns = notices(client, &mut sub, n, WAIT).await;
    assert_eq!(ns.len(), n);
    assert!(ns.iter().all(|n| n.notice == NoticeKind::Accepted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_output_parses_into_its_type() {
    let mut hub = TestHub::start().await;
    let s = hub.register("000.00.31.H41").await;
    let _d = hub.register("000.00.32.H41").await;

    // Agencies.
    let added: t::Added = typed(
        &hub,
        &[
            "agency",
            "add",
            "000.00.33.H41",
            "--name",
            "Sở Nội vụ",
            "--json",
        ],
    );
    hub.agencies.push(code("000.00.33.H41"));
    assert_eq!(added.issued.code, code("000.00.33.H41"));
    assert!(added.inbox.ends_with("inbox.000.00.33.H41"));
    assert_eq!(added.issued.broker_user, "000.00.33.H41");
    assert!(added.issued.broker_password.len() >= 40);
    let list: Vec<t::AgencyView> = typed(&hub, &["agency", "list", "--json"]);
    assert_eq!(list.len(), 3);
    for a in &list {
        rfc3339(&a.created_at);
    }
    let shown: t::AgencyView = typed(&hub, &["agency", "show", "000.00.32.H41", "--json"]);
    assert_eq!(shown.inbox_messages, Some(0));
    let off: t::AgencyView = typed(&hub, &["agency", "disable", "000.00.33.H41", "--json"]);
    assert!(!off.enabled);
    let on: t::AgencyView = typed(&hub, &["agency", "enable", "000.00.33.H41", "--json"]);
    assert!(on.enabled);
    let rotated: t::Rotated = typed(
        &hub,
        &[
            "agency",
            "rotate-key",
            "000.00.33.H41",
            "--grace",
            "1h",
            "--json",
        ],
    );
    assert_eq!(rotated.old_keys.len(), 1);
    rfc3339(rotated.old_keys[0].expires_at.as_deref().unwrap());
    let broker: t::BrokerIssued = typed(
        &hub,
        &[
            "agency",
            "rotate-broker-password",
            "000.00.33.H41",
            "--json",
        ],
    );
    assert_eq!(broker.broker_user, "000.00.33.H41");
    assert_ne!(broker.broker_password, added.issued.broker_password);
    let removed: t::Removed = typed(
        &hub,
        &["agency", "remove", "000.00.33.H41", "--yes", "--json"],
    );
    assert_eq!(removed.deleted_queues.len(), 3);
    let csv = hub.data.path().join("import.csv");
    std::fs::write(&csv, "code,name\nH37.DN.020,Sở A\n").unwrap();
    let issued: Vec<t::Issued> =
        typed(&hub, &["agency", "import", csv.to_str().unwrap(), "--json"]);
    hub.agencies.push(code("H37.DN.020"));
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].code, code("H37.DN.020"));
    let defs: t::RabbitDefinitions = typed(&hub, &["agency", "rabbitmq-definitions", "--json"]);
    assert_eq!(defs.users.len(), 3);

    // Envelopes, waiting in 000.00.32.H41's inbox (no consumer).
    let source = hub.client(&s).await;
    let id = source
        .send(&out("000.00.32.H41", Some("cv-001")))
        .await
        .unwrap();
    source
        .send(&out("000.00.32.H41", Some("cv-002")))
        .await
        .unwrap();
    accepted(&source, 2).await;
    let envs: Vec<t::EnvelopeView> = typed(&hub, &["envelope", "list", "--json"]);
    assert_eq!(envs.len(), 2);
    for e in &envs {
        rfc3339(&e.accepted_at);
        assert_eq!(
            truc::time::parse_rfc3339(&e.accepted_at).unwrap(),
            e.accepted_at_ms,
            "accepted_at and accepted_at_ms are the same time"
        );
        for ev in e.dests.iter().flat_map(|d| &d.events) {
            rfc3339(&ev.at);
        }
    }
    let env: t::EnvelopeView = typed(
        &hub,
        &["envelope", "show", &id, "--from", "000.00.31.H41", "--json"],
    );
    assert_eq!(env.message_id, "cv-001");
    assert_eq!(env.dests[0].code, code("000.00.32.H41"));

    // Presence.
    let presence: Vec<t::PresenceView> = typed(&hub, &["presence", "--json"]);
    assert_eq!(presence.len(), 3);
    let history: t::PresenceHistory =
        typed(&hub, &["presence", "history", "000.00.32.H41", "--json"]);
    rfc3339(&history.since);
    for e in &history.entries {
        rfc3339(&e.at);
    }

    // Queues. A delivery and its `accepted` notice go out at once
    // (PROTOCOL §5.3 step 5): the notice may come first.
    hub.wait_depth("inbox.000.00.32.H41", 2).await;
    let queues: Vec<t::QueueRow> = typed(&hub, &["queue", "list", "--json"]);
    let row = queues.iter().find(|r| r.code == "000.00.32.H41").unwrap();
    assert_eq!(row.messages, Some(2));
    rfc3339(row.oldest_queued_at.as_deref().unwrap());
    let peeked: Vec<t::MessageView> = typed(
        &hub,
        &["queue", "peek", "000.00.32.H41", "-n", "1", "--json"],
    );
    assert_eq!(peeked.len(), 1, "-n is honoured");
    let shape: t::Shape = typed(&hub, &["queue", "shape", "--json"]);
    let dest = shape
        .destinations
        .iter()
        .find(|d| d.code == "000.00.32.H41")
        .unwrap();
    assert_eq!(dest.total, 2);

    // Dead letters (none), audit, report, store.
    let dead: t::DeadOutcome = typed(&hub, &["dead", "list", "--json"]);
    assert_eq!(dead.action, "list");
    assert!(dead.items.is_empty());
    let tail: Vec<t::AuditEntry> = typed(&hub, &["audit", "tail", "-n", "3", "--json"]);
    assert_eq!(tail.len(), 3, "-n is honoured");
    for e in &tail {
        rfc3339(&e.at);
    }
    let tail: Vec<t::AuditEntry> = typed(&hub, &["audit", "tail", "--limit", "2", "--json"]);
    assert_eq!(tail.len(), 2, "--limit is honoured");
    let verify: t::VerifyReport = typed(&hub, &["audit", "verify", "--json"]);
    assert!(verify.ok);
    let report: t::FullReport = typed(&hub, &["report", "--json"]);
    let sent: u64 = report
        .report
        .rows
        .iter()
        .filter(|r| r.agency == "000.00.31.H41")
        .map(|r| r.sent)
        .sum();
    assert_eq!(sent, 2);
    for c in &report.connections_now {
        rfc3339(&c.at);
    }
    let same: t::FullReport = typed(&hub, &["report", "--format", "json"]);
    assert_eq!(same.report.rows, report.report.rows);
    let stats: t::StoreStats = typed(&hub, &["store", "stats", "--json"]);
    assert!(stats.trees.iter().any(|t| t.entries > 0));

    // A purge last: it empties the inbox the listings above looked at.
    let purged: t::PurgeReport = typed(
        &hub,
        &["queue", "purge", "000.00.32.H41", "--yes", "--json"],
    );
    assert_eq!(purged.purged, 2);
    source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_convention_for_every_command() {
    let mut hub = TestHub::start().await;
    let a = hub.register("000.00.41.H41").await;
    let b = hub.register("000.00.42.H41").await;
    let _c = hub.register("000.00.43.H41").await;
    let (ca, cb) = (hub.client(&a).await, hub.client(&b).await);
    ca.send(&out("000.00.43.H41", Some("only-a")))
        .await
        .unwrap();
    ca.send(&out("000.00.43.H41", Some("both"))).await.unwrap();
    accepted(&ca, 2).await;
    cb.send(&out("000.00.43.H41", Some("both"))).await.unwrap();
    accepted(&cb, 1).await;

    // Unknown --state / --reason: exit 2, naming the valid values.
    let o = run(&hub, &["envelope", "list", "--state", "deliverd"], 2);
    assert!(
        stderr(&o).contains("delivered") && stderr(&o).contains("bounced"),
        "{}",
        stderr(&o)
    );
    let o = run(&hub, &["dead", "list", "--reason", "exploded"], 2);
    assert!(
        stderr(&o).contains("max-attempts") && stderr(&o).contains("malformed"),
        "{}",
        stderr(&o)
    );
    let o = run(&hub, &["heartbeat", "000.00.41.H41", "--state", "away"], 2);
    assert!(stderr(&o).contains("online"), "{}", stderr(&o));
    let queued: Vec<t::EnvelopeView> =
        typed(&hub, &["envelope", "list", "--state", "queued", "--json"]);
    assert_eq!(queued.len(), 3);
    let none: Vec<t::EnvelopeView> = typed(
        &hub,
        &["envelope", "list", "--state", "status-03", "--json"],
    );
    assert!(none.is_empty());

    // envelope show without --from: unambiguous works, ambiguous is exit 3 naming both.
    let env: t::EnvelopeView = typed(&hub, &["envelope", "show", "only-a", "--json"]);
    assert_eq!(env.from, code("000.00.41.H41"));
    let o = run(&hub, &["envelope", "show", "both"], 3);
    assert!(
        stderr(&o).contains("000.00.41.H41") && stderr(&o).contains("000.00.42.H41"),
        "{}",
        stderr(&o)
    );
    let env: t::EnvelopeView = typed(
        &hub,
        &[
            "envelope",
            "show",
            "both",
            "--from",
            "000.00.42.H41",
            "--json",
        ],
    );
    assert_eq!(env.from, code("000.00.42.H41"));
    run(&hub, &["envelope", "show", "nothing-like-it"], 3);

    // -n / --limit.
    let one: Vec<t::EnvelopeView> = typed(&hub, &["envelope", "list", "-n", "1", "--json"]);
    assert_eq!(one.len(), 1);
    let two: Vec<t::EnvelopeView> = typed(&hub, &["envelope", "list", "--limit", "2", "--json"]);
    assert_eq!(two.len(), 2);

    // --since / --until: a duration, a date or an RFC 3339 time.
    let recent: Vec<t::EnvelopeView> =
        typed(&hub, &["envelope", "list", "--since", "7d", "--json"]);
    assert_eq!(recent.len(), 3);
    let later: Vec<t::EnvelopeView> = typed(
        &hub,
        &["envelope", "list", "--since", "2999-01-01", "--json"],
    );
    assert!(later.is_empty());
    let before: Vec<t::EnvelopeView> =
        typed(&hub, &["envelope", "list", "--until", "7d", "--json"]);
    assert!(before.is_empty());
    let old: Vec<t::EnvelopeView> = typed(
        &hub,
        &[
            "envelope",
            "list",
            "--until",
            "2000-01-01T00:00:00Z",
            "--json",
        ],
    );
    assert!(old.is_empty());
    let report: t::FullReport = typed(&hub, &["report", "--since", "7d", "--json"]);
    assert!(report.report.rows.iter().any(|r| r.sent > 0));
    rfc3339(report.report.since.as_deref().unwrap());
    let empty: t::FullReport = typed(
        &hub,
        &[
            "report",
            "--since",
            "2000-01-01",
            "--until",
            "2000-01-02",
            "--json",
        ],
    );
    assert!(empty.report.rows.is_empty());
    let h: t::PresenceHistory = typed(
        &hub,
        &[
            "presence",
            "history",
            "000.00.43.H41",
            "--since",
            "7d",
            "--json",
        ],
    );
    rfc3339(&h.since);
    let h: t::PresenceHistory = typed(
        &hub,
        &[
            "presence",
            "history",
            "000.00.43.H41",
            "--since",
            "2026-01-01",
            "--until",
            "2000-01-01",
            "--json",
        ],
    );
    assert!(h.entries.is_empty());
    run(&hub, &["envelope", "list", "--since", "last week"], 2);
    run(&hub, &["report", "--until", "soon"], 2);

    ca.close().await;
    cb.close().await;
}

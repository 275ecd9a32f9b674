//! Alerts against a real hub, a local webhook receiver and a local SMTP
//! sink: each rule fires once and resolves once — a dead letter, an agency
//! offline, an inbox too deep, a burst of clock-skew refusals, an agency
//! still on a key about to expire, and the hub's broker link cut — and the
//! open and resolved alerts are listed by the admin API. (The store rule is
//! driven by tests/full_disk.rs, which fills the store's disk.)

mod common;

use std::time::Duration;

use common::alerts::{smtp, webhook};
use common::proxy::{through, Proxy};
use common::{envelope, next_within, TestHub};
use truc::client::Credentials;

const WAIT: Duration = Duration::from_secs(20);

const PRESENCE: &str =
    "[presence]\nheartbeat_window = \"3s\"\npoll_interval = \"1s\"\nreturn_on_bounce = false\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_fires_once_and_resolves_once() {
    let (url, hooks, hook_task) = webhook().await;
    let (smtp_addr, mails, smtp_task) = smtp().await;
    let (_, upstream) = through("127.0.0.1:1".parse().unwrap());
    let proxy = Proxy::start(upstream).await;
    let (amqp, _) = through(proxy.addr);
    let mut hub = TestHub::unstarted(None);
    hub.hub_amqp_url = Some(amqp);
    std::fs::write(
        hub.policies.join("alerts.toml"),
        common::alerts::policy(&url, &smtp_addr),
    )
    .unwrap();
    std::fs::write(hub.policies.join("presence.toml"), PRESENCE).unwrap();
    hub.spawn().await;
    let s = hub.register("H37.AL.001").await;
    let d = hub.register("H37.AL.002").await;
    let e = hub.register("H37.AL.003").await;
    let log = || hub.log();

    // The source is online from the start (its inbox has a consumer).
    let source = hub.client(&s).await;
    let _source_inbox = source.inbox(1).await.unwrap();

    // agency-offline: D never connected; it fires, then D connects.
    hooks.wait("ALERT", "agency-offline:H37.AL.002", log).await;
    let dest = hub.client(&d).await;
    let mut d_inbox = dest.inbox(4).await.unwrap();
    hooks
        .wait("RESOLVED", "agency-offline:H37.AL.002", log)
        .await;

    // undelivered: one try only, rejected by D; then dropped.
    let mut refused = envelope("H37.AL.002").subject("Bị từ chối").build();
    refused.extra.push(("lgsp-max-attempts".into(), "1".into()));
    source.send(&refused).await.unwrap();
    let got = next_within(&mut d_inbox, WAIT).await.expect("a delivery");
    d_inbox.reject(got.delivery_tag, false).await.unwrap();
    hooks.wait("ALERT", "undelivered:undelivered", log).await;
    let (st, v) = hub
        .api(
            "POST",
            "/v1/dead/drop",
            Some(serde_json::json!({"queue": "dead"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    hooks.wait("RESOLVED", "undelivered:undelivered", log).await;

    // inbox-depth: two envelopes to E (no consumer; threshold 1); purged.
    for i in 0..2 {
        source
            .send(&envelope("H37.AL.003").subject(format!("Số {i}")).build())
            .await
            .unwrap();
    }
    hooks.wait("ALERT", "inbox-depth:H37.AL.003", log).await;
    let (st, v) = hub.api("POST", "/v1/queues/H37.AL.003/purge", None).await;
    assert_eq!(st, 200, "{v}");
    hooks.wait("RESOLVED", "inbox-depth:H37.AL.003", log).await;

    // refusals: three envelopes signed two hours ago (clock skew) within
    // the 3 s window; it resolves when they leave the window.
    for _ in 0..3 {
        let mut m = envelope("H37.AL.002").signed(&hub.prefix, &s);
        m.set_header(
            "lgsp-time",
            truc::time::format_rfc3339(truc::time::now_ms() - 7_200_000),
        );
        common::resign(&mut m, &s.secret);
        source.publish(&m).await.unwrap();
    }
    hooks.wait("ALERT", "refusals:hub", log).await;
    hooks.wait("RESOLVED", "refusals:hub", log).await;

    // expiry: S's key is rotated with a one-hour grace while S still uses
    // the old one; S then signs with the new key.
    let (st, rotated) = hub
        .api(
            "POST",
            "/v1/agencies/H37.AL.001/rotate-key",
            Some(serde_json::json!({"grace_s": 3600})),
        )
        .await;
    assert_eq!(st, 200, "{rotated}");
    hooks.wait("ALERT", "expiry:key:H37.AL.001", log).await;
    let renewed = Credentials {
        access_key: rotated["access_key"].as_str().unwrap().to_owned(),
        secret: rotated["secret"].as_str().unwrap().to_owned(),
        ..s.clone()
    };
    let source2 = hub.client(&renewed).await;
    source2
        .send(&envelope("H37.AL.002").subject("Khóa mới").build())
        .await
        .unwrap();
    hooks.wait("RESOLVED", "expiry:key:H37.AL.001", log).await;

    // broker-disconnected: the hub's link is cut, then restored.
    let instance = hub.healthz().await.1["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = format!("broker-disconnected:{instance}");
    proxy.cut();
    hooks.wait("ALERT", &key, log).await;
    proxy.restore();
    hooks.wait("RESOLVED", &key, log).await;

    // Once each: one announcement and one resolution per alert.
    for key in [
        "agency-offline:H37.AL.002",
        "undelivered:undelivered",
        "inbox-depth:H37.AL.003",
        "refusals:hub",
        "expiry:key:H37.AL.001",
        key.as_str(),
    ] {
        assert_eq!(hooks.about("ALERT", key), 1, "{key}: {:#?}", hooks.all());
        assert_eq!(hooks.about("RESOLVED", key), 1, "{key}: {:#?}", hooks.all());
    }
    // The same by email.
    mails.wait("RESOLVED", &key, log).await;
    let mail = mails
        .all()
        .into_iter()
        .find(|m| m.contains("key: undelivered:undelivered") && m.contains("/ ALERT:"))
        .expect("the undelivered alert by email");
    assert!(mail.contains("To: truc-ops@tinh.example"), "{mail}");
    assert!(mail.contains("Subject:"), "{mail}");

    // Listed: the resolved ones with their times; E is still offline (it
    // never connected), so that alert is open.
    let (st, listed) = hub.api("GET", "/v1/alerts", None).await;
    assert_eq!(st, 200);
    let open: Vec<&str> = listed["open"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap())
        .collect();
    assert!(open.contains(&"agency-offline:H37.AL.003"), "{listed}");
    let resolved: Vec<&str> = listed["resolved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap())
        .collect();
    for k in [
        "undelivered:undelivered",
        "refusals:hub",
        "expiry:key:H37.AL.001",
    ] {
        assert!(resolved.contains(&k), "{k}: {listed}");
    }
    // The CLI lists the same.
    let o = hub.cli(&["alerts"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    let text = common::stdout(&o);
    assert!(
        text.contains("agency-offline:H37.AL.003") && text.contains("resolved"),
        "{text}"
    );
    let _ = e;
    dest.close().await;
    source.close().await;
    source2.close().await;
    hook_task.abort();
    smtp_task.abort();
}

//! Held deliveries outlive the loss of the hub's store: copies waiting in
//! the delay buckets when the store directory is deleted are, once a hub
//! runs on a fresh store with the agencies registered again, each delivered
//! when due (their record rebuilt from the copy) or parked in `undelivered`
//! and reported to their source — none is dropped silently.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{envelope, next_within, notices, TestHub};
use truc::client::Credentials;
use truc::notice::NoticeKind;
use truc::reason::Reason;
use truc::time::{format_rfc3339, now_ms};

/// Envelopes from the source that signs with RSA (its public key is
/// registered again after the loss: delivered).
const SIGNED_RSA: usize = 60;
/// Envelopes from the source that signs with HMAC (a new secret after the
/// loss: the hub cannot check them, so they are parked and reported).
const SIGNED_HMAC: usize = 40;

const SOURCE_RSA: &str = "000.00.31.H41";
const SOURCE_HMAC: &str = "000.00.33.H41";
const DEST: &str = "000.00.32.H41";

/// Waits until the source's `accepted` notices for all `n` envelopes came.
async fn accepted(hub: &TestHub, creds: &Credentials, n: usize) {
    let client = hub.client(creds).await;
    let mut sub = client.notices(64).await.unwrap();
    let ns = notices(&client, &mut sub, n, Duration::from_secs(30)).await;
    assert_eq!(ns.len(), n, "accepted notices; log:\n{}", hub.log());
    assert!(
        ns.iter().all(|n| n.notice == NoticeKind::Accepted),
        "{ns:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_deliveries_are_delivered_or_parked_and_reported_after_the_store_is_lost() {
    let mut hub = TestHub::start().await;
    let (rsa_key, pem) = common::rsa_key();
    let a = hub.register_with_key(SOURCE_RSA, Some(pem.clone())).await;
    let b = hub.register(SOURCE_HMAC).await;
    hub.register(DEST).await;

    // Deferred: every copy waits in a delay bucket.
    let not_before = now_ms() + 12_000;
    let deferred = |id: String| {
        envelope(DEST)
            .id(id)
            .body(b"hen gio")
            .header("lgsp-not-before", format_rfc3339(not_before))
    };
    let sender = hub.client(&a).await;
    let mut rsa_ids = BTreeSet::new();
    for i in 0..SIGNED_RSA {
        let id = format!("RSA{i:03}");
        let mut m = deferred(id.clone()).signed(&hub.prefix, &a);
        common::sign_rsa(&mut m, &rsa_key);
        sender.publish(&m).await.unwrap();
        rsa_ids.insert(id);
    }
    let sender_b = hub.client(&b).await;
    let mut hmac_ids = BTreeSet::new();
    for i in 0..SIGNED_HMAC {
        let id = format!("HMAC{i:03}");
        sender_b
            .publish(&deferred(id.clone()).signed(&hub.prefix, &b))
            .await
            .unwrap();
        hmac_ids.insert(id);
    }
    accepted(&hub, &a, SIGNED_RSA).await;
    accepted(&hub, &b, SIGNED_HMAC).await;
    let rec = hub.envelope_record(SOURCE_RSA, "RSA000").await;
    assert_eq!(rec["dests"][0]["state"], "deferred");

    // The store is lost: the hub stops, its data directory goes.
    assert!(hub.terminate().success());
    std::fs::remove_dir_all(hub.data.path().join("data")).unwrap();
    // The broker's copy of the store checkpoint still says the store held
    // data: a plain start is refused; the operator accepts the loss.
    let refused = hub.serve_refused();
    assert!(refused.contains("--accept-loss"), "{refused}");
    hub.spawn_accepting_loss().await;
    // The operator registers the agencies again: the RSA source with its
    // public key, the others with new secrets.
    hub.register_with_key(SOURCE_RSA, Some(pem)).await;
    let b = hub.register(SOURCE_HMAC).await;
    let d = hub.register(DEST).await;

    // Every RSA-signed copy is delivered, when due, signed for the
    // destination's new secret, marked as a possible repeat.
    let mut dest = hub.client(&d).await;
    let mut inbox = dest.inbox(64).await.unwrap();
    let mut delivered = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.len() < SIGNED_RSA {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(got) = next_within(&mut inbox, left).await else {
            panic!(
                "{} of {SIGNED_RSA} delivered; log:\n{}",
                delivered.len(),
                hub.log()
            );
        };
        let arrived = now_ms();
        let tag = got.delivery_tag;
        let r = dest
            .receive(got)
            .expect("hub signature with the new secret");
        assert!(arrived >= not_before - 600, "not early");
        assert_eq!(
            r.attempt, 2,
            "{}: a possible repeat is marked",
            r.message_id
        );
        assert_eq!(&*r.message.body, b"hen gio");
        assert!(delivered.insert(r.message_id), "delivered twice");
        inbox.ack(tag).await.unwrap();
    }
    assert_eq!(delivered, rsa_ids);

    // Every HMAC-signed copy is parked and its source told.
    hub.wait_depth("undelivered", SIGNED_HMAC as u32).await;
    let source_b = hub.client(&b).await;
    let mut notify = source_b.notices(64).await.unwrap();
    let ns = notices(&source_b, &mut notify, SIGNED_HMAC, Duration::from_secs(30)).await;
    let reported: BTreeSet<String> = ns
        .iter()
        .filter(|n| n.notice == NoticeKind::Bounced && n.reason == Some(Reason::RecordLost))
        .map(|n| n.reference.clone())
        .collect();
    assert_eq!(reported, hmac_ids);
    assert_eq!(delivered.len() + reported.len(), SIGNED_RSA + SIGNED_HMAC);
    assert!(
        next_within(&mut inbox, Duration::from_millis(500))
            .await
            .is_none(),
        "nothing more in the inbox"
    );

    // The rebuilt record carries the timeline on.
    let rec = hub.envelope_record(SOURCE_RSA, "RSA000").await;
    let events = rec["dests"][0]["events"].as_array().unwrap();
    assert!(
        events[0]["detail"]
            .as_str()
            .unwrap()
            .contains("record rebuilt"),
        "{rec}"
    );
    assert_eq!(rec["dests"][0]["state"], "queued");
    let log = hub.log();
    assert!(log.contains("rebuilt from the held copy"));
    assert!(log.contains("held copy parked in undelivered"));
    let metrics = truc::cli::http::request(&hub.admin_addr, "GET", "/metrics", &hub.token, None)
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    let counted = |outcome: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("truc_held_without_record_total")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
    };
    assert_eq!(counted("rebuilt"), Some(SIGNED_RSA), "{metrics}");
    assert_eq!(counted("parked"), Some(SIGNED_HMAC), "{metrics}");
}

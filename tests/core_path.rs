//! The core path against the real broker: round trip, rejections, duplicates,
//! fan-out with an unknown destination, the rejected queue.

mod common;

use std::time::Duration;

use common::{
    code, drain_notices, envelope, next_within, notices, resign, status, BrokerGuard, Envelope,
    TestHub,
};
use truc::auth::body_digest;
use truc::client::{verify_hub_signature, Credentials};
use truc::message::Message;
use truc::notice::NoticeKind;
use truc::reason::Reason;

const WAIT: Duration = Duration::from_secs(10);

/// The envelope these tests send: a Khẩn EDXML document.
fn outgoing(to: &[&str], body: &[u8]) -> Envelope {
    to[1..]
        .iter()
        .fold(envelope(to[0]), |e, c| e.also_to(c))
        .subject("Công văn số 12/SYT-VP")
        .priority(1)
        .content_type("application/edxml+xml")
        .body(body)
        .header("lgsp-bounce-after", "4h")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_body_and_headers_and_is_hub_signed() {
    let mut hub = TestHub::start().await;
    let src = hub.register("000.00.31.H41").await;
    let dst = hub.register("000.00.32.H41").await;
    let source = hub.client(&src).await;
    let mut dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(16).await.unwrap();
    let mut notify = source.notices(16).await.unwrap();

    let body = "Xin chào, Sở Tư pháp! — nội dung công văn".as_bytes();
    let mut sent = outgoing(&["000.00.32.H41"], body).signed(&hub.prefix, &src);
    sent.set_header("x-adapter-trace", "abc");
    // Re-sign after adding the extra (non-lgsp, unsigned) header: the signature does not cover it.
    source.publish(&sent).await.unwrap();

    let got = next_within(&mut inbox, WAIT).await.expect("delivery");
    let m = &got.message;
    assert_eq!(&*m.body, body);
    assert_eq!(m.message_id, sent.message_id);
    assert_eq!(m.content_type.as_deref(), Some("application/edxml+xml"));
    assert_eq!(m.priority, Some(2), "AMQP priority = Priority code + 1");
    for (k, v) in &sent.headers {
        assert_eq!(m.headers.get(k), Some(v), "header {k} kept");
    }
    assert_eq!(m.header("lgsp-dest"), Some("000.00.32.H41"));
    assert_eq!(m.header("lgsp-attempt"), Some("1"));
    assert!(m.header("lgsp-accepted-at").is_some());
    verify_hub_signature(m, "deliver.000.00.32.H41", &dst.secret)
        .expect("hub signature verifies with the destination's secret");
    assert!(verify_hub_signature(m, "deliver.000.00.32.H41", &src.secret).is_err());
    let r = dest.receive(got.clone()).unwrap();
    assert!(!r.repeat);
    inbox.ack(got.delivery_tag).await.unwrap();
    dest.send_status(&r.message_id, "01", None, None)
        .await
        .unwrap();

    let ns = notices(&source, &mut notify, 3, WAIT).await;
    let kinds: Vec<NoticeKind> = ns.iter().map(|n| n.notice).collect();
    assert_eq!(
        kinds,
        vec![
            NoticeKind::Accepted,
            NoticeKind::Delivered,
            NoticeKind::Status
        ]
    );
    assert!(ns
        .iter()
        .all(|n| Some(&n.reference) == sent.message_id.as_ref()));
    assert_eq!(ns[0].destinations, vec![code("000.00.32.H41")]);
    assert_eq!(ns[2].status.as_deref(), Some("01"));

    // The timeline shows the delivery.
    let states = hub
        .dest_states("000.00.31.H41", sent.message_id.as_ref().unwrap())
        .await;
    assert_eq!(states, vec!["accepted", "queued", "delivered"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_not_delivered_again_but_accepted_again() {
    let mut hub = TestHub::start().await;
    let src = hub.register("H37.DN.001").await;
    let dst = hub.register("H37.DN.002").await;
    let source = hub.client(&src).await;
    let dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(16).await.unwrap();
    let mut notify = source.notices(16).await.unwrap();
    let out = outgoing(&["H37.DN.002"], b"once only")
        .id("DUP-0001")
        .build();
    for _ in 0..3 {
        // Fresh nonce and time each time: a resend, not a replay.
        source.send(&out).await.unwrap();
    }
    let first = next_within(&mut inbox, WAIT).await.expect("one delivery");
    inbox.ack(first.delivery_tag).await.unwrap();
    assert!(
        next_within(&mut inbox, Duration::from_secs(2))
            .await
            .is_none(),
        "no second delivery"
    );
    let ns = notices(&source, &mut notify, 3, WAIT).await;
    assert_eq!(ns.len(), 3);
    assert!(ns
        .iter()
        .all(|n| n.notice == NoticeKind::Accepted && n.reference == "DUP-0001"));
    assert!(ns[1].detail.contains("already accepted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_delivers_to_known_and_bounces_unknown() {
    let mut hub = TestHub::start().await;
    let src = hub.register("000.00.31.H41").await;
    let mut dests = Vec::new();
    for c in ["000.00.32.H41", "000.00.33.H41", "000.00.34.H41"] {
        dests.push(hub.register(c).await);
    }
    let source = hub.client(&src).await;
    let mut notify = source.notices(16).await.unwrap();
    let id = source
        .send(
            &outgoing(
                &[
                    "000.00.32.H41",
                    "000.00.99.H41",
                    "000.00.33.H41",
                    "000.00.34.H41",
                ],
                b"fan",
            )
            .build(),
        )
        .await
        .unwrap();
    for d in &dests {
        let mut c = hub.client(d).await;
        let mut inbox = c.inbox(4).await.unwrap();
        let got = next_within(&mut inbox, WAIT)
            .await
            .unwrap_or_else(|| panic!("delivery to {}", d.code));
        let r = c.receive(got).unwrap();
        assert_eq!(r.message_id, id);
        assert_eq!(&*r.message.body, b"fan");
    }
    let ns = notices(&source, &mut notify, 2, WAIT).await;
    assert_eq!(ns[0].notice, NoticeKind::Accepted);
    assert_eq!(ns[0].destinations.len(), 3);
    assert_eq!(ns[1].notice, NoticeKind::Bounced);
    assert_eq!(ns[1].dest, Some(code("000.00.99.H41")));
    assert_eq!(ns[1].reason, Some(Reason::UnknownDestination));
}

/// A correctly signed envelope from `creds`, edited by `edit` before signing.
fn signed_with(prefix: &str, creds: &Credentials, edit: impl FnOnce(&mut Message)) -> Message {
    outgoing(&["000.00.32.H41"], b"payload").signed_with(prefix, creds, edit)
}

/// A correctly signed envelope, edited after signing.
fn tampered(prefix: &str, creds: &Credentials, edit: impl FnOnce(&mut Message)) -> Message {
    let mut m = signed_with(prefix, creds, |_| {});
    edit(&mut m);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authenticated_rejection_reaches_the_notify_queue() {
    let mut hub = TestHub::start_with_policy(Some(
        "[ingress]\nclock_skew = \"300s\"\nmax_body_bytes = 1024\n",
    ))
    .await;
    let src = hub.register("000.00.31.H41").await;
    let other = hub.register("000.00.35.H41").await;
    let _dst = hub.register("000.00.32.H41").await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(32).await.unwrap();
    let p = hub.prefix.clone();

    let mut cases: Vec<(Message, Reason)> = Vec::new();
    // forbidden: signed with another agency's key while claiming to be the source.
    let mut m = outgoing(&["000.00.32.H41"], b"x").signed(&p, &src);
    m.set_header("lgsp-key", &other.access_key);
    resign(&mut m, &other.secret);
    cases.push((m, Reason::Forbidden));
    // clock-skew: signed ten minutes ago.
    let mut m = outgoing(&["000.00.32.H41"], b"x").signed(&p, &src);
    m.set_header(
        "lgsp-time",
        truc::time::format_rfc3339(truc::time::now_ms() - 600_000),
    );
    resign(&mut m, &src.secret);
    cases.push((m, Reason::ClockSkew));
    // digest-mismatch
    cases.push((
        signed_with(&p, &src, |m| {
            m.set_header("lgsp-digest", body_digest(b"other"))
        }),
        Reason::DigestMismatch,
    ));
    // too-large (policy: 1024 bytes)
    cases.push((
        signed_with(&p, &src, |m| {
            m.body = vec![b'a'; 2048].into();
            m.set_header("lgsp-digest", body_digest(&m.body));
        }),
        Reason::TooLarge,
    ));
    // malformed after authentication: no lgsp-type.
    cases.push((
        signed_with(&p, &src, |m| {
            m.headers.remove("lgsp-type");
        }),
        Reason::Malformed,
    ));
    for (m, _) in &cases {
        source.publish(m).await.unwrap();
    }
    // replay: the same signed message under a new message id is a different message with a used nonce.
    let first = signed_with(&p, &src, |_| {});
    source.publish(&first).await.unwrap();
    let mut replay = first.clone();
    replay.message_id = Some("REPLAYED-ID".into());
    resign(&mut replay, &src.secret);
    source.publish(&replay).await.unwrap();
    // A status about an envelope the sender never received.
    source
        .publish(&status("NEVER-SEEN", "01").signed(&p, &src))
        .await
        .unwrap();

    // The key's owner signed the forbidden one: it gets that notice.
    let other_client = hub.client(&other).await;
    let mut other_notify = other_client.notices(4).await.unwrap();
    let on = notices(&other_client, &mut other_notify, 1, WAIT).await;
    assert_eq!(on.len(), 1);
    assert_eq!(
        (on[0].notice, on[0].reason),
        (NoticeKind::Rejected, Some(Reason::Forbidden))
    );

    let ns = notices(&source, &mut notify, cases.len() + 2, WAIT).await;
    let rejected: Vec<Reason> = ns
        .iter()
        .filter(|n| n.notice == NoticeKind::Rejected)
        .filter_map(|n| n.reason)
        .collect();
    for (_, reason) in &cases[1..] {
        assert!(
            rejected.contains(reason),
            "{reason} missing from {rejected:?}"
        );
    }
    assert!(rejected.contains(&Reason::Replay), "{rejected:?}");
    assert_eq!(
        rejected.iter().filter(|r| **r == Reason::Forbidden).count(),
        1,
        "status about an unknown envelope: {rejected:?}"
    );
    assert!(
        ns.iter().any(|n| n.notice == NoticeKind::Accepted),
        "the first of the pair was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_input_gets_no_notice_and_is_quarantined() {
    let mut hub = TestHub::start().await;
    let src = hub.register("000.00.31.H41").await;
    let _dst = hub.register("000.00.32.H41").await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(16).await.unwrap();
    let p = hub.prefix.clone();
    let cases: Vec<(Message, Reason)> = vec![
        (
            tampered(&p, &src, |m| m.set_header("lgsp-key", "AKUNKNOWN000")),
            Reason::UnknownKey,
        ),
        (
            {
                let mut m = signed_with(&p, &src, |_| {});
                m.set_header("lgsp-subject", "tampered after signing");
                m
            },
            Reason::BadSignature,
        ),
        (
            tampered(&p, &src, |m| m.set_header("lgsp-version", "2")),
            Reason::UnsupportedVersion,
        ),
        (
            signed_with(&p, &src, |m| m.message_id = None),
            Reason::Malformed,
        ),
    ];
    for (m, _) in &cases {
        source.publish(m).await.unwrap();
    }
    let link = hub.link().await;
    let mut rejected = link
        .subscribe(&format!("{p}rejected"), 16, "")
        .await
        .unwrap();
    let mut reasons = Vec::new();
    for _ in 0..cases.len() {
        let got = next_within(&mut rejected, WAIT)
            .await
            .unwrap_or_else(|| panic!("quarantined copy; log:\n{}", hub.log()));
        reasons.push(got.message.header("x-truc-reason").unwrap().to_owned());
        assert_eq!(
            got.message.header("x-truc-routing-key"),
            Some("envelope.000.00.31.H41")
        );
        assert_eq!(&*got.message.body, b"payload");
        rejected.ack(got.delivery_tag).await.unwrap();
    }
    for (_, r) in &cases {
        assert!(
            reasons.iter().any(|x| x == r.as_str()),
            "{r} not in {reasons:?}"
        );
    }
    assert!(
        drain_notices(&source, &mut notify, Duration::from_secs(2))
            .await
            .is_empty(),
        "no reflection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_queue_does_not_keep_the_hub_off_the_broker() {
    let mut hub = TestHub::start().await;
    // Someone declared an inbox by hand, without the contract's arguments.
    let mut declared = BrokerGuard::new();
    let link = hub.link().await;
    let squatted = truc::topology::QueueSpec {
        name: declared.queue(format!("{}inbox.000.00.50.H41", hub.prefix)),
        bind: Vec::new(),
        arguments: Default::default(),
    };
    link.declare_queue(&squatted).await.unwrap();
    link.close().await;
    let (status, v) = hub
        .api(
            "POST",
            "/v1/agencies",
            Some(serde_json::json!({"code": "000.00.50.H41", "name": "Xã A"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    hub.agencies.push(code("000.00.50.H41"));
    assert_eq!(v["queues_declared"], false);
    // A restart still connects (spawn waits for the broker link), and others still exchange.
    hub.kill9();
    hub.spawn().await;
    let src = hub.register("000.00.31.H41").await;
    let dst = hub.register("000.00.32.H41").await;
    let source = hub.client(&src).await;
    let dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(4).await.unwrap();
    source
        .send(&outgoing(&["000.00.32.H41"], b"still works").build())
        .await
        .unwrap();
    assert!(next_within(&mut inbox, WAIT).await.is_some());
    assert!(hub.log().contains("agency queues not declared"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_about_a_missing_queue_leaves_the_link_usable() {
    let hub = TestHub::start().await;
    let mut declared = BrokerGuard::new();
    let link = hub.link().await;
    for i in 0..3 {
        let missing = format!("{}missing.{i}", hub.prefix);
        assert!(matches!(
            link.queue_info(&missing).await,
            Err(truc::broker::AmqpError::NoSuchQueue(_))
        ));
    }
    let q = truc::topology::QueueSpec {
        name: declared.queue(format!("{}probe", hub.prefix)),
        bind: Vec::new(),
        arguments: Default::default(),
    };
    link.declare_queue(&q).await.unwrap();
    let mut sub = link.subscribe(&q.name, 1, "").await.unwrap();
    let m = truc::message::Message {
        routing_key: q.name.clone(),
        body: b"ping".to_vec().into(),
        ..Default::default()
    };
    link.publish(&m).await.unwrap();
    let got = next_within(&mut sub, WAIT)
        .await
        .expect("published after the 404s");
    assert_eq!(&*got.message.body, b"ping");
    sub.ack(got.delivery_tag).await.unwrap();
    link.delete_queue(&q.name).await.unwrap();
}

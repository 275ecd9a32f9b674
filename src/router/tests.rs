//! Unit tests of the router, the scheduler's broker side and the holding
//! logic, with an in-memory [`Outbox`] instead of a broker.

use std::sync::{Arc, Mutex};

use crate::core::code::AgencyCode;
use crate::core::envelope::Priority;
use crate::core::message::{Inbound, Message};
use crate::core::notice::{Notice, NoticeKind};
use crate::core::outgoing::{envelope_message, sign, status_message, Credentials, Outgoing};
use crate::core::policy::Policies;
use crate::core::reason::Reason;
use crate::core::time::{format_rfc3339, now_ms};
use crate::core::topology::Topology;
use crate::router::{Outbox, Outcome, PublishError, Router};
use crate::state::registry::Registry;
use crate::state::store::Store;

/// Records what the router publishes; can refuse the first publish as unroutable.
#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<Message>>,
    declared: Mutex<Vec<AgencyCode>>,
    unroutable_once: Mutex<bool>,
}

impl Outbox for Recorder {
    async fn publish(&self, msg: &Message) -> Result<(), PublishError> {
        let mut once = self.unroutable_once.lock().unwrap();
        if *once {
            *once = false;
            return Err(PublishError::Unroutable);
        }
        self.sent.lock().unwrap().push(msg.clone());
        Ok(())
    }

    async fn declare_agency(&self, code: &AgencyCode) -> Result<(), PublishError> {
        self.declared.lock().unwrap().push(code.clone());
        Ok(())
    }
}

impl Recorder {
    fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    router: Router,
    src: Credentials,
    dst: Credentials,
}

fn creds(reg: &Registry, code: &str) -> Credentials {
    let i = reg
        .add(AgencyCode::parse(code).unwrap(), "test", None)
        .unwrap();
    Credentials {
        code: i.code,
        access_key: i.access_key,
        secret: i.secret,
    }
}

fn fixture(policies: Policies) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.start_flusher();
    let master = crate::core::secrets::MasterKey::parse(&"11".repeat(32)).unwrap();
    let reg = Registry::open(store.clone(), master).unwrap();
    let src = creds(&reg, "000.00.31.H41");
    let dst = creds(&reg, "000.00.32.H41");
    let router = Router::new(store, reg, Arc::new(Topology::builtin("u.")), policies);
    Fixture {
        _dir: dir,
        router,
        src,
        dst,
    }
}

fn out(to: &[&str], extra: Vec<(String, String)>) -> Outgoing {
    Outgoing {
        to: to.iter().map(|c| AgencyCode::parse(c).unwrap()).collect(),
        subject: "s".into(),
        priority: Priority::new(1).unwrap(),
        data_type: "edoc".into(),
        content_type: "text/plain".into(),
        body: b"body".to_vec(),
        message_id: Some("M1".into()),
        extra,
    }
}

fn inbound(m: Message) -> Inbound {
    Inbound {
        message: m,
        delivery_tag: 1,
        redelivered: false,
    }
}

fn notices(sent: &[Message]) -> Vec<Notice> {
    sent.iter()
        .filter(|m| m.exchange == "u.notify")
        .map(|m| serde_json::from_slice(&m.body).unwrap())
        .collect()
}

#[tokio::test]
async fn accepts_delivers_and_dedupes() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let m = envelope_message(
        "u.",
        &f.src,
        &out(&["000.00.32.H41", "000.00.99.H41"], vec![]),
    );
    let outcome = f.router.handle(&inbound(m.clone()), &o).await.unwrap();
    assert!(
        matches!(outcome, Outcome::Accepted { ref delivered, ref bounced }
        if delivered.len() == 1 && bounced == &vec![(AgencyCode::parse("000.00.99.H41").unwrap(), Reason::UnknownDestination)])
    );
    let sent = o.take();
    let deliveries: Vec<&Message> = sent.iter().filter(|m| m.exchange == "u.deliver").collect();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].routing_key, "000.00.32.H41");
    crate::core::outgoing::verify_hub_signature(
        deliveries[0],
        "deliver.000.00.32.H41",
        &f.dst.secret,
    )
    .unwrap();
    let ns = notices(&sent);
    assert_eq!(
        ns.iter().map(|n| n.notice).collect::<Vec<_>>(),
        vec![NoticeKind::Accepted, NoticeKind::Bounced]
    );

    // The same envelope re-signed (fresh nonce): accepted again, not delivered again.
    let mut again = m.clone();
    sign(&mut again, &f.src, crate::core::auth::Alg::HmacSha256);
    assert_eq!(
        f.router.handle(&inbound(again), &o).await.unwrap(),
        Outcome::Duplicate
    );
    let sent = o.take();
    assert!(sent.iter().all(|m| m.exchange == "u.notify"));
    // The broker redelivering the very same message is not a replay either.
    assert_eq!(
        f.router.handle(&inbound(m), &o).await.unwrap(),
        Outcome::Duplicate
    );
}

#[tokio::test]
async fn missing_queue_is_declared_and_the_publish_retried() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    *o.unroutable_once.lock().unwrap() = true;
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    f.router.handle(&inbound(m), &o).await.unwrap();
    assert_eq!(o.declared.lock().unwrap().len(), 1);
    assert_eq!(
        o.take()
            .iter()
            .filter(|m| m.exchange == "u.deliver")
            .count(),
        1
    );
}

#[tokio::test]
async fn tampering_is_quarantined_without_notice() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let mut m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    m.set_header("lgsp-subject", "changed");
    let outcome = f.router.handle(&inbound(m), &o).await.unwrap();
    assert_eq!(outcome, Outcome::Quarantined(Reason::BadSignature));
    let sent = o.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].routing_key, "u.rejected");
    assert_eq!(sent[0].header("x-truc-reason"), Some("bad-signature"));
}

#[tokio::test]
async fn clock_skew_and_rate_limit_are_refused_with_notices() {
    let access = "[rate]\nenvelopes_per_s = 1.0\nburst = 1\n[permissions]\ndefault = \"allow\"\n";
    let p = Policies::from_texts(
        (
            crate::core::policy::DEFAULT_POLICY,
            std::path::Path::new("i"),
        ),
        (
            crate::core::policy::DEFAULT_DELIVERY,
            std::path::Path::new("d"),
        ),
        (access, std::path::Path::new("a")),
        (
            crate::core::policy::DEFAULT_PRESENCE,
            std::path::Path::new("p"),
        ),
    )
    .unwrap();
    let f = fixture(p);
    let o = Recorder::default();
    let mut old = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    old.set_header("lgsp-time", format_rfc3339(now_ms() - 3_600_000));
    old.headers.remove("lgsp-signature");
    let c = crate::core::canonical::canonical_form(&old, &old.routing_key).unwrap();
    old.set_header(
        "lgsp-signature",
        crate::core::auth::sign_hmac(
            crate::core::auth::Alg::HmacSha256,
            &f.src.secret,
            c.as_bytes(),
        ),
    );
    assert_eq!(
        f.router.handle(&inbound(old), &o).await.unwrap(),
        Outcome::Rejected(Reason::ClockSkew)
    );
    let mut first = out(&["000.00.32.H41"], vec![]);
    first.message_id = Some("R1".into());
    let mut second = first.clone();
    second.message_id = Some("R2".into());
    assert!(matches!(
        f.router
            .handle(&inbound(envelope_message("u.", &f.src, &first)), &o)
            .await
            .unwrap(),
        Outcome::Accepted { .. }
    ));
    assert_eq!(
        f.router
            .handle(&inbound(envelope_message("u.", &f.src, &second)), &o)
            .await
            .unwrap(),
        Outcome::Rejected(Reason::RateLimited)
    );
}

#[tokio::test]
async fn deferral_holds_then_releases_when_due() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let due = now_ms() + 3_000;
    let m = envelope_message(
        "u.",
        &f.src,
        &out(
            &["000.00.32.H41"],
            vec![("lgsp-not-before".into(), format_rfc3339(due))],
        ),
    );
    f.router.handle(&inbound(m), &o).await.unwrap();
    let sent = o.take();
    let held: Vec<&Message> = sent
        .iter()
        .filter(|m| m.routing_key.starts_with("u.delay."))
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].routing_key, "u.delay.1s",
        "3 s remaining: the 1 s bucket, re-bucketed until due"
    );
    assert_eq!(
        held[0].header(crate::router::holding::DUE_HEADER),
        Some(due.to_string().as_str())
    );
    // Back from the bucket too early: held again.
    let back = held[0].clone();
    assert_eq!(
        f.router.release(&inbound(back.clone()), &o).await.unwrap(),
        Outcome::Held
    );
    assert_eq!(o.take().len(), 1);
    // Due: delivered, without the due marker, hub signature intact.
    let mut due_now = back;
    due_now.set_header(
        crate::router::holding::DUE_HEADER,
        (now_ms() - 1).to_string(),
    );
    assert_eq!(
        f.router.release(&inbound(due_now), &o).await.unwrap(),
        Outcome::Released
    );
    let sent = o.take();
    assert_eq!(sent[0].exchange, "u.deliver");
    assert!(sent[0].header(crate::router::holding::DUE_HEADER).is_none());
    crate::core::outgoing::verify_hub_signature(&sent[0], "deliver.000.00.32.H41", &f.dst.secret)
        .unwrap();
}

#[tokio::test]
async fn rejections_retry_with_backoff_then_bounce() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let m = envelope_message(
        "u.",
        &f.src,
        &out(
            &["000.00.32.H41"],
            vec![("lgsp-max-attempts".into(), "2".into())],
        ),
    );
    f.router.handle(&inbound(m), &o).await.unwrap();
    let delivery = o
        .take()
        .into_iter()
        .find(|m| m.exchange == "u.deliver")
        .unwrap();
    let mut dead = delivery.clone();
    dead.set_header("x-first-death-reason", "rejected");
    let t0 = now_ms();
    assert_eq!(
        f.router.dead(&inbound(dead.clone()), &o).await.unwrap(),
        Outcome::Held
    );
    let held = o.take();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].header("lgsp-attempt"), Some("2"));
    assert!(held[0].header("x-first-death-reason").is_none());
    let due: i64 = held[0]
        .header(crate::router::holding::DUE_HEADER)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (t0 + 3_700..=t0 + 6_500).contains(&due),
        "5 s ± 25 %: {}",
        due - t0
    );
    crate::core::outgoing::verify_hub_signature(&held[0], "deliver.000.00.32.H41", &f.dst.secret)
        .unwrap();
    // Second rejection reaches lgsp-max-attempts 2: bounced.
    assert_eq!(
        f.router.dead(&inbound(dead.clone()), &o).await.unwrap(),
        Outcome::Dropped("max attempts")
    );
    let ns = notices(&o.take());
    assert_eq!(
        (ns[0].notice, ns[0].reason),
        (NoticeKind::Bounced, Some(Reason::MaxAttempts))
    );
    // A late copy changes nothing.
    assert!(matches!(
        f.router.dead(&inbound(dead), &o).await.unwrap(),
        Outcome::Dropped(_)
    ));
    assert!(o.take().is_empty());
}

#[tokio::test]
async fn deadlines_expire_undelivered_destinations_once() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let deadline = now_ms() + 60_000;
    let m = envelope_message(
        "u.",
        &f.src,
        &out(
            &["000.00.32.H41"],
            vec![("lgsp-deliver-by".into(), format_rfc3339(deadline))],
        ),
    );
    f.router.handle(&inbound(m), &o).await.unwrap();
    let delivery = o
        .take()
        .into_iter()
        .find(|m| m.exchange == "u.deliver")
        .unwrap();
    assert!(
        delivery
            .expiration
            .as_deref()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            <= 60_000,
        "AMQP expiration as a second line"
    );
    assert_eq!(f.router.sweep_deadlines(&o, deadline - 1).await.unwrap(), 0);
    assert_eq!(f.router.sweep_deadlines(&o, deadline).await.unwrap(), 1);
    let ns = notices(&o.take());
    assert_eq!(
        (ns[0].notice, ns[0].reason),
        (NoticeKind::Bounced, Some(Reason::Expired))
    );
    assert_eq!(
        f.router
            .sweep_deadlines(&o, deadline + 5_000)
            .await
            .unwrap(),
        0,
        "swept once"
    );
}

#[tokio::test]
async fn status_receipts_and_recall() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    f.router.handle(&inbound(m), &o).await.unwrap();
    o.take();
    let st = status_message("u.", &f.dst, "M1", "01", None, None);
    assert_eq!(
        f.router.handle(&inbound(st), &o).await.unwrap(),
        Outcome::StatusRelayed
    );
    let ns = notices(&o.take());
    assert_eq!(
        ns.iter().map(|n| n.notice).collect::<Vec<_>>(),
        vec![NoticeKind::Delivered, NoticeKind::Status]
    );
    // The source recalls it: already delivered, so the destination is asked.
    let recall = status_message("u.", &f.src, "M1", "13", None, None);
    f.router.handle(&inbound(recall), &o).await.unwrap();
    let sent = o.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header("lgsp-kind"), Some("recall"));
    assert_eq!(sent[0].priority, Some(5));
    crate::core::outgoing::verify_hub_signature(&sent[0], "deliver.000.00.32.H41", &f.dst.secret)
        .unwrap();
    // A recall of an unknown envelope is refused.
    let unknown = status_message("u.", &f.src, "NOPE", "13", None, None);
    assert_eq!(
        f.router.handle(&inbound(unknown), &o).await.unwrap(),
        Outcome::Rejected(Reason::Forbidden)
    );
}

#[tokio::test]
async fn copies_are_signed_with_the_destination_key_in_force_after_a_rotation() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let dest = AgencyCode::parse("000.00.32.H41").unwrap();
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    f.router.handle(&inbound(m), &o).await.unwrap();
    let delivery = o
        .take()
        .into_iter()
        .find(|m| m.exchange == "u.deliver")
        .unwrap();
    let (new, _) = f
        .router
        .registry
        .rotate_key(&dest, std::time::Duration::from_secs(3600))
        .unwrap();
    assert_ne!(new.secret, f.dst.secret);
    let verifies = |m: &Message, secret: &str| {
        crate::core::outgoing::verify_hub_signature(m, "deliver.000.00.32.H41", secret).is_ok()
    };
    assert!(
        verifies(&delivery, &f.dst.secret),
        "signed before the rotation"
    );

    // An operator's retry of the copy parked in `undelivered`.
    let mut parked = delivery.clone();
    parked.exchange = String::new();
    parked.routing_key = "u.undelivered".into();
    parked.expiration = Some("1000".into());
    parked.set_header("x-truc-reason", "max-attempts");
    parked.set_header("x-truc-deaths", "5");
    let retried = f.router.parked_retry(&parked, "000.00.32.H41");
    assert_eq!(
        (retried.exchange.as_str(), retried.routing_key.as_str()),
        ("u.deliver", "000.00.32.H41")
    );
    assert!(retried.expiration.is_none());
    assert!(retried.header("x-truc-reason").is_none());
    assert_eq!(retried.body, delivery.body);
    assert!(verifies(&retried, &new.secret), "signed with the new key");
    assert!(!verifies(&retried, &f.dst.secret), "not with the old one");

    // A held copy released after the rotation.
    let mut held = delivery.clone();
    held.set_header(
        crate::router::holding::DUE_HEADER,
        (now_ms() - 1).to_string(),
    );
    assert_eq!(
        f.router.release(&inbound(held), &o).await.unwrap(),
        Outcome::Released
    );
    let released = o.take();
    assert!(verifies(&released[0], &new.secret));
    assert!(!verifies(&released[0], &f.dst.secret));

    // A retry after a rejection.
    let mut dead = delivery;
    dead.set_header("x-first-death-reason", "rejected");
    assert_eq!(
        f.router.dead(&inbound(dead), &o).await.unwrap(),
        Outcome::Held
    );
    let retry = o.take();
    assert_eq!(retry[0].header("lgsp-attempt"), Some("2"));
    assert!(verifies(&retry[0], &new.secret));
}

/// Envelope `id` from the fixture's source, signed as if at `time_ms`, with
/// `nonce` when given.
fn signed_at(f: &Fixture, id: &str, time_ms: i64, nonce: Option<&str>) -> Message {
    let mut o = out(&["000.00.32.H41"], vec![]);
    o.message_id = Some(id.into());
    let mut m = envelope_message("u.", &f.src, &o);
    m.set_header("lgsp-time", format_rfc3339(time_ms));
    if let Some(n) = nonce {
        m.set_header("lgsp-nonce", n);
    }
    m.headers.remove("lgsp-signature");
    let c = crate::core::canonical::canonical_form(&m, &m.routing_key).unwrap();
    m.set_header(
        "lgsp-signature",
        crate::core::auth::sign_hmac(
            crate::core::auth::Alg::HmacSha256,
            &f.src.secret,
            c.as_bytes(),
        ),
    );
    m
}

/// Handles `m` as read from its source's queue last seen empty at `seen_empty`.
async fn handle_seen(f: &Fixture, o: &Recorder, m: Message, seen_empty: Option<i64>) -> Outcome {
    f.router
        .handle_in_turn(&inbound(m), o, None, seen_empty)
        .await
        .unwrap()
}

const HOUR: i64 = 3_600_000;

#[tokio::test(start_paused = true)]
async fn a_backlog_hours_old_behind_an_older_drain_is_accepted() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let now = now_ms();
    // The queue was last seen empty 3 h ago; the envelope was signed just after.
    let drained = now - 3 * HOUR;
    let m = signed_at(&f, "OLD1", drained + 60_000, None);
    assert!(matches!(
        handle_seen(&f, &o, m.clone(), Some(drained)).await,
        Outcome::Accepted { .. }
    ));
    // Without the drained time (the rule when unknown) the same age is refused.
    let m2 = signed_at(&f, "OLD2", drained + 60_000, None);
    assert_eq!(
        handle_seen(&f, &o, m2, None).await,
        Outcome::Rejected(Reason::ClockSkew)
    );
}

#[tokio::test(start_paused = true)]
async fn older_than_the_drain_minus_the_skew_or_in_the_future_is_refused() {
    let f = fixture(Policies::default());
    let skew = Policies::default().clock_skew.as_millis() as i64;
    let o = Recorder::default();
    let now = now_ms();
    let drained = now - 3 * HOUR;
    let behind = signed_at(&f, "B1", drained - skew - 1_000, None);
    assert_eq!(
        handle_seen(&f, &o, behind, Some(drained)).await,
        Outcome::Rejected(Reason::ClockSkew)
    );
    let n: Notice = notices(&o.take()).pop().unwrap();
    assert!(
        n.detail.contains("could first have seen it"),
        "{}",
        n.detail
    );
    let ahead = signed_at(&f, "F1", now + skew + 60_000, None);
    assert_eq!(
        handle_seen(&f, &o, ahead, Some(drained)).await,
        Outcome::Rejected(Reason::ClockSkew)
    );
    // Just inside the floor: accepted.
    let inside = signed_at(&f, "I1", drained - skew + 1_000, None);
    assert!(matches!(
        handle_seen(&f, &o, inside, Some(drained)).await,
        Outcome::Accepted { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_nonce_reused_in_an_old_backlog_is_still_a_replay() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let now = now_ms();
    let drained = now - 3 * HOUR;
    let signed = drained + 1_000;
    // Both signed hours ago (their nonce expiry, signed + 2 × skew, is long
    // past in hub time), both behind the same drain.
    let first = signed_at(&f, "N1", signed, Some("nonce-backlog-0001"));
    let again = signed_at(&f, "N2", signed, Some("nonce-backlog-0001"));
    assert!(matches!(
        handle_seen(&f, &o, first, Some(drained)).await,
        Outcome::Accepted { .. }
    ));
    assert_eq!(
        handle_seen(&f, &o, again.clone(), Some(drained)).await,
        Outcome::Rejected(Reason::Replay)
    );
    // And the nonce is not swept while the source was not seen empty since.
    f.router.source_drained(&f.src.code, drained);
    assert_eq!(f.router.sweep_nonces(now_ms()).unwrap(), 0);
    assert_eq!(
        handle_seen(&f, &o, again, Some(drained)).await,
        Outcome::Rejected(Reason::Replay)
    );
}

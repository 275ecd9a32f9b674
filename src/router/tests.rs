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
use crate::router::{Outbox, Outcome, PublishError, Router, SessionRefused};
use crate::state::registry::Registry;
use crate::state::store::Store;

/// Records what the router publishes; can refuse the first publish as
/// unroutable, or lose the confirm of the next delivery (the broker took it,
/// the router hears `Failed`).
#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<Message>>,
    declared: Mutex<Vec<AgencyCode>>,
    unroutable_once: Mutex<bool>,
    lose_delivery_confirm_once: Mutex<bool>,
    /// The agency whose inbox is unavailable (its broker node is down).
    unavailable: Mutex<Option<String>>,
}

impl Outbox for Recorder {
    async fn publish(&self, msg: &Message) -> Result<(), PublishError> {
        if msg.exchange == "u.deliver"
            && self.unavailable.lock().unwrap().as_deref() == Some(msg.routing_key.as_str())
        {
            return Err(PublishError::Unroutable);
        }
        let mut once = self.unroutable_once.lock().unwrap();
        if *once {
            *once = false;
            return Err(PublishError::Unroutable);
        }
        self.sent.lock().unwrap().push(msg.clone());
        let mut lose = self.lose_delivery_confirm_once.lock().unwrap();
        if *lose && msg.exchange == "u.deliver" {
            *lose = false;
            return Err(PublishError::Failed(
                "connection lost before the confirm".into(),
            ));
        }
        Ok(())
    }

    async fn declare_agency(&self, code: &AgencyCode) -> Result<(), PublishError> {
        if self.unavailable.lock().unwrap().as_deref() == Some(code.as_str()) {
            return Err(PublishError::Unavailable(format!(
                "home node of inbox.{code} is down"
            )));
        }
        self.declared.lock().unwrap().push(code.clone());
        Ok(())
    }

    fn is_usable(&self) -> bool {
        true
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
        previous_keys: Vec::new(),
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
        content_space: None,
    }
}

/// The same message as the broker hands it out again (`redelivered`).
fn redelivered(m: Message) -> Inbound {
    Inbound {
        message: m,
        delivery_tag: 1,
        redelivered: true,
        content_space: None,
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
    let deliveries: Vec<Message> = o
        .take()
        .into_iter()
        .filter(|m| m.exchange == "u.deliver")
        .collect();
    assert_eq!(deliveries.len(), 1);
    // The returned publish reached no queue: the one that did is the first.
    assert_eq!(deliveries[0].header("lgsp-attempt"), Some("1"));
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
    resign(&mut old, &f.src.secret);
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

/// `M1` from the source to `000.00.32.H41`, routed; what it sent is taken.
async fn m1_sent(f: &Fixture, o: &Recorder) {
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    f.router.handle(&inbound(m), o).await.unwrap();
    o.take();
}

/// Status `st` handled and relayed: the kinds of the notices it sent.
async fn relayed(f: &Fixture, o: &Recorder, st: Message) -> Vec<NoticeKind> {
    assert_eq!(
        f.router.handle(&inbound(st), o).await.unwrap(),
        Outcome::StatusRelayed
    );
    notices(&o.take()).iter().map(|n| n.notice).collect()
}

#[tokio::test]
async fn status_receipts_and_recall() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    m1_sent(&f, &o).await;
    let st = status_message("u.", &f.dst, "M1", "01", None, None);
    assert_eq!(
        relayed(&f, &o, st).await,
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
async fn a_status_naming_its_source_is_recorded_only_from_a_destination() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    m1_sent(&f, &o).await;
    let (src, dst) = (f.src.code.clone(), f.dst.code.clone());
    let timeline = |code: &AgencyCode| {
        let rec = f.router.tracking.get(&src, "M1").unwrap().unwrap();
        let d = rec.dests.iter().find(|d| &d.code == code).cloned();
        d.map(|d| d.events.iter().map(|e| e.state).collect::<Vec<_>>())
    };
    let before = timeline(&dst).unwrap();

    // Not a destination of the envelope it names: refused, nothing recorded.
    let st = status_message("u.", &f.src, "M1", "01", Some(&src), None);
    assert_eq!(
        f.router.handle(&inbound(st), &o).await.unwrap(),
        Outcome::Rejected(Reason::Forbidden)
    );
    assert_eq!(timeline(&src), None);
    assert_eq!(timeline(&dst).unwrap(), before);
    // A source that never sent that envelope: refused.
    let st = status_message("u.", &f.dst, "M1", "01", Some(&dst), None);
    assert_eq!(
        f.router.handle(&inbound(st), &o).await.unwrap(),
        Outcome::Rejected(Reason::Forbidden)
    );
    assert_eq!(timeline(&dst).unwrap(), before);
    o.take();

    // The destination naming the source: recorded and relayed.
    let st = status_message("u.", &f.dst, "M1", "01", Some(&src), None);
    assert_eq!(
        relayed(&f, &o, st).await,
        vec![NoticeKind::Delivered, NoticeKind::Status]
    );
    let after = timeline(&dst).unwrap();
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(
        after.last(),
        Some(&crate::core::timeline::DeliveryState::Delivered)
    );
}

/// A status naming its source has its nonce inserted with the record's
/// update: a nonce used before by another message is refused as a replay
/// (before a digest mismatch, as B4 comes first) and records nothing.
#[tokio::test]
async fn a_status_with_a_used_nonce_is_a_replay_and_records_nothing() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    m1_sent(&f, &o).await;
    let (src, dst) = (f.src.code.clone(), f.dst.code.clone());
    let events = || {
        let rec = f.router.tracking.get(&src, "M1").unwrap().unwrap();
        rec.dests
            .iter()
            .find(|d| d.code == dst)
            .unwrap()
            .events
            .len()
    };
    let first = status_message("u.", &f.dst, "M1", "01", Some(&src), None);
    let used = first.header("lgsp-nonce").unwrap().to_owned();
    assert_eq!(
        relayed(&f, &o, first).await,
        vec![NoticeKind::Delivered, NoticeKind::Status]
    );
    let before = events();
    let with_used_nonce = |status: &str| {
        let mut m = status_message("u.", &f.dst, "M1", status, Some(&src), None);
        m.set_header("lgsp-nonce", used.clone());
        resign(&mut m, &f.dst.secret);
        m
    };
    assert_eq!(
        f.router
            .handle(&inbound(with_used_nonce("02")), &o)
            .await
            .unwrap(),
        Outcome::Rejected(Reason::Replay)
    );
    let mut tampered = with_used_nonce("04");
    tampered.body = b"not what the digest says".to_vec().into();
    assert_eq!(
        f.router.handle(&inbound(tampered), &o).await.unwrap(),
        Outcome::Rejected(Reason::Replay)
    );
    assert_eq!(events(), before, "a replay recorded nothing");
    o.take();
    // A fresh nonce is recorded as usual.
    let next = status_message("u.", &f.dst, "M1", "03", Some(&src), None);
    assert_eq!(relayed(&f, &o, next).await, vec![NoticeKind::Status]);
    assert_eq!(events(), before + 1);
}

#[tokio::test]
async fn copies_are_signed_with_the_key_the_destination_last_used() {
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
    assert_eq!(
        delivery.header("lgsp-hub-key"),
        Some(f.dst.access_key.as_str())
    );
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

    // An operator's retry of the copy parked in `undelivered`, in the grace
    // period: the destination has only used its old key, which signs.
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
    assert_eq!(
        retried.header("lgsp-hub-key"),
        Some(f.dst.access_key.as_str())
    );
    assert!(verifies(&retried, &f.dst.secret), "signed with the old key");
    assert!(!verifies(&retried, &new.secret), "not with the new one yet");

    // The destination authenticates with its new key (a heartbeat): from now
    // on what the hub sends it is signed with the new key.
    let rotated = Credentials::new(dest.clone(), new.access_key.clone(), new.secret.clone());
    let hb = crate::core::outgoing::presence_message("u.", &rotated, true);
    assert_eq!(
        f.router.handle(&inbound(hb), &o).await.unwrap(),
        Outcome::Heartbeat
    );
    o.take();

    // A held copy released after the switch.
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
    assert_eq!(
        released[0].header("lgsp-hub-key"),
        Some(new.access_key.as_str())
    );
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

#[tokio::test]
async fn notices_are_signed_with_the_key_the_source_last_used() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let src = f.src.code.clone();
    let (new, _) = f
        .router
        .registry
        .rotate_key(&src, std::time::Duration::from_secs(3600))
        .unwrap();
    let verifies = |m: &Message, secret: &str| {
        crate::core::outgoing::verify_hub_signature(m, "notice.000.00.31.H41", secret).is_ok()
    };
    let notice_of = |sent: Vec<Message>| {
        sent.into_iter()
            .find(|m| m.exchange == "u.notify")
            .expect("a notice")
    };
    // The old key, in the grace period: the notice is signed with it.
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    f.router.handle(&inbound(m), &o).await.unwrap();
    let n = notice_of(o.take());
    assert_eq!(n.header("lgsp-hub-key"), Some(f.src.access_key.as_str()));
    assert!(verifies(&n, &f.src.secret) && !verifies(&n, &new.secret));
    // The new key: its own rejection notice is signed with the new key.
    let rotated = Credentials::new(src.clone(), new.access_key.clone(), new.secret.clone());
    let mut bad = out(&["000.00.32.H41"], vec![]);
    bad.priority = Priority::FLASH_APPOINTED;
    let m = envelope_message("u.", &rotated, &bad);
    assert_eq!(
        f.router.handle(&inbound(m), &o).await.unwrap(),
        Outcome::Rejected(Reason::Malformed)
    );
    let n = notice_of(o.take());
    assert_eq!(n.header("lgsp-hub-key"), Some(new.access_key.as_str()));
    assert!(verifies(&n, &new.secret) && !verifies(&n, &f.src.secret));
}

// ---- Every copy that may repeat is marked (docs/PROTOCOL.md §6.2) ----

/// The deliveries among `sent`.
fn deliveries(sent: Vec<Message>) -> Vec<Message> {
    sent.into_iter()
        .filter(|m| m.exchange == "u.deliver")
        .collect()
}

/// A deferred envelope handled by `f`: its held copy (in a delay bucket).
async fn held_copy(f: &Fixture, o: &Recorder, extra: Vec<(String, String)>) -> Message {
    let mut headers = vec![(
        "lgsp-not-before".to_owned(),
        format_rfc3339(now_ms() + 60_000),
    )];
    headers.extend(extra);
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], headers));
    f.router.handle(&inbound(m), o).await.unwrap();
    o.take()
        .into_iter()
        .find(|m| m.routing_key.starts_with("u.delay."))
        .expect("a held copy")
}

/// `copy` back from its bucket, due.
fn due(mut copy: Message) -> Message {
    copy.set_header(
        crate::router::holding::DUE_HEADER,
        (now_ms() - 1).to_string(),
    );
    copy
}

#[tokio::test(start_paused = true)]
async fn a_release_repeated_after_a_crash_is_marked() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let copy = due(held_copy(&f, &o, vec![]).await);
    assert_eq!(copy.header("lgsp-attempt"), Some("1"));
    // First release: the first copy in the inbox.
    f.router.release(&inbound(copy.clone()), &o).await.unwrap();
    assert_eq!(deliveries(o.take())[0].header("lgsp-attempt"), Some("1"));
    // Crash between publish and ack: the broker redelivers the release.
    f.router
        .release(&redelivered(copy.clone()), &o)
        .await
        .unwrap();
    assert_eq!(deliveries(o.take())[0].header("lgsp-attempt"), Some("2"));
    // A second held copy (put back twice before a crash), not flagged
    // redelivered: the timeline already records copies in the inbox.
    f.router.release(&inbound(copy), &o).await.unwrap();
    assert_eq!(deliveries(o.take())[0].header("lgsp-attempt"), Some("3"));
}

#[tokio::test(start_paused = true)]
async fn a_copy_put_back_by_a_redelivered_release_is_marked() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let copy = held_copy(&f, &o, vec![]).await;
    // Not due yet: back to a bucket; the release was redelivered, so the
    // bucket may already hold the copy put back before the crash.
    assert_eq!(
        f.router
            .release(&redelivered(copy.clone()), &o)
            .await
            .unwrap(),
        Outcome::Held
    );
    let again = o.take();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].header("lgsp-attempt"), Some("2"));
    // Not redelivered: put back as it was.
    f.router.release(&inbound(copy), &o).await.unwrap();
    assert_eq!(o.take()[0].header("lgsp-attempt"), Some("1"));
}

#[tokio::test(start_paused = true)]
async fn a_retry_released_twice_is_marked_the_second_time() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    f.router.handle(&inbound(m), &o).await.unwrap();
    let mut dead = deliveries(o.take()).remove(0);
    assert_eq!(dead.header("lgsp-attempt"), Some("1"));
    dead.set_header("x-first-death-reason", "rejected");
    assert_eq!(
        f.router.dead(&inbound(dead), &o).await.unwrap(),
        Outcome::Held
    );
    let retry = due(o.take().remove(0));
    assert_eq!(retry.header("lgsp-attempt"), Some("2"));
    f.router.release(&inbound(retry.clone()), &o).await.unwrap();
    assert_eq!(deliveries(o.take())[0].header("lgsp-attempt"), Some("2"));
    // The same retry copy again (a crash after it was put in its bucket).
    f.router.release(&inbound(retry), &o).await.unwrap();
    assert_eq!(deliveries(o.take())[0].header("lgsp-attempt"), Some("3"));
}

#[tokio::test(start_paused = true)]
async fn an_operators_retry_is_marked() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    f.router.handle(&inbound(m), &o).await.unwrap();
    let mut parked = deliveries(o.take()).remove(0);
    parked.exchange = String::new();
    parked.routing_key = "u.undelivered".into();
    parked.set_header("x-truc-reason", "expired");
    // An expired copy (attempt 1) may have sat in the inbox: marked.
    let first = f.router.parked_retry(&parked, "000.00.32.H41");
    assert_eq!(first.header("lgsp-attempt"), Some("2"));
    parked.set_header("lgsp-attempt", "5");
    let again = f.router.parked_retry(&parked, "000.00.32.H41");
    assert_eq!(again.header("lgsp-attempt"), Some("6"));
    crate::core::outgoing::verify_hub_signature(&again, "deliver.000.00.32.H41", &f.dst.secret)
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_publish_whose_confirm_was_lost_is_marked_when_repeated() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    // Ingress: the broker took the delivery, the confirm was lost; the
    // message is not acked and comes back flagged redelivered.
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    *o.lose_delivery_confirm_once.lock().unwrap() = true;
    assert!(f.router.handle(&inbound(m.clone()), &o).await.is_err());
    assert_eq!(deliveries(o.take())[0].header("lgsp-attempt"), Some("1"));
    f.router.handle(&redelivered(m), &o).await.unwrap();
    assert_eq!(deliveries(o.take())[0].header("lgsp-attempt"), Some("2"));

    // Release: the same.
    let mut deferred = out(
        &["000.00.32.H41"],
        vec![(
            "lgsp-not-before".to_owned(),
            format_rfc3339(now_ms() + 60_000),
        )],
    );
    deferred.message_id = Some("M2".into());
    f.router
        .handle(&inbound(envelope_message("u.", &f.src, &deferred)), &o)
        .await
        .unwrap();
    let copy = due(o
        .take()
        .into_iter()
        .find(|m| m.routing_key.starts_with("u.delay."))
        .unwrap());
    *o.lose_delivery_confirm_once.lock().unwrap() = true;
    assert!(f.router.release(&inbound(copy.clone()), &o).await.is_err());
    assert_eq!(deliveries(o.take())[0].header("lgsp-attempt"), Some("1"));
    f.router.release(&redelivered(copy), &o).await.unwrap();
    assert_eq!(deliveries(o.take())[0].header("lgsp-attempt"), Some("2"));
}

// ---- Held copies after the store lost their records ----

/// What a lost store takes with it, the registry aside (an operator
/// restores the agencies; their records are gone).
fn lose_records(f: &Fixture) {
    let s = &f.router.store;
    for t in [&s.envelopes(), &s.by_dest(), &s.deadlines(), &s.pending()] {
        t.clear().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_held_copy_without_record_is_delivered_on_a_rebuilt_record() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let copy = due(held_copy(&f, &o, vec![("lgsp-max-attempts".into(), "7".into())]).await);
    lose_records(&f);
    let from = AgencyCode::parse("000.00.31.H41").unwrap();
    assert!(f.router.tracking.get(&from, "M1").unwrap().is_none());
    assert_eq!(
        f.router.release(&inbound(copy), &o).await.unwrap(),
        Outcome::Released
    );
    let sent = deliveries(o.take());
    assert_eq!(sent.len(), 1);
    // The hub cannot know whether a copy went out before the loss: marked.
    assert_eq!(sent[0].header("lgsp-attempt"), Some("2"));
    assert_eq!(&*sent[0].body, b"body");
    crate::core::outgoing::verify_hub_signature(&sent[0], "deliver.000.00.32.H41", &f.dst.secret)
        .unwrap();
    let rec = f
        .router
        .tracking
        .get(&from, "M1")
        .unwrap()
        .expect("rebuilt");
    assert_eq!(rec.max_attempts, 7, "the envelope's own fields apply");
    assert_eq!(rec.subject, "s");
    let states: Vec<_> = rec.dests[0].events.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        vec![
            crate::core::timeline::DeliveryState::Accepted,
            crate::core::timeline::DeliveryState::Queued
        ]
    );
    assert_eq!(rec.dests[0].events[0].detail, super::rebuild::REBUILT);
    // Later status messages find it.
    let st = status_message("u.", &f.dst, "M1", "01", None, None);
    assert_eq!(
        f.router.handle(&inbound(st), &o).await.unwrap(),
        Outcome::StatusRelayed
    );
}

#[tokio::test(start_paused = true)]
async fn a_rebuilt_record_still_enforces_the_deadline() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    // A copy as the hub held it, of an envelope whose deadline has passed
    // while the hub was being restored.
    let mut copy = envelope_message(
        "u.",
        &f.src,
        &out(
            &["000.00.32.H41"],
            vec![("lgsp-deliver-by".into(), format_rfc3339(now_ms() - 1_000))],
        ),
    );
    copy.set_header("lgsp-accepted-at", format_rfc3339(now_ms() - 60_000));
    copy.set_header("lgsp-attempt", "1");
    let copy = due(f.router.held(
        f.router.deliver_to(
            super::delivery::Delivery::again(&copy),
            &AgencyCode::parse("000.00.32.H41").unwrap(),
        ),
        now_ms(),
        now_ms(),
    ));
    assert_eq!(
        f.router.release(&inbound(copy), &o).await.unwrap(),
        Outcome::Dropped("expired")
    );
    let sent = o.take();
    assert!(deliveries(sent.clone()).is_empty(), "never delivered late");
    let parked: Vec<&Message> = sent
        .iter()
        .filter(|m| m.routing_key == "u.undelivered")
        .collect();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].header("x-truc-reason"), Some("expired"));
    let ns = notices(&sent);
    assert_eq!(
        (ns[0].notice, ns[0].reason),
        (NoticeKind::Bounced, Some(Reason::Expired))
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_copy_that_cannot_be_checked_is_parked_and_reported() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let mut copy = due(held_copy(&f, &o, vec![]).await);
    lose_records(&f);
    // Not what the source signed: never delivered on a rebuilt record.
    copy.set_header("lgsp-subject", "changed");
    assert_eq!(
        f.router.release(&inbound(copy.clone()), &o).await.unwrap(),
        Outcome::Dropped("record lost; parked")
    );
    let sent = o.take();
    assert!(deliveries(sent.clone()).is_empty());
    let parked: Vec<&Message> = sent
        .iter()
        .filter(|m| m.routing_key == "u.undelivered")
        .collect();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].header("x-truc-reason"), Some("record-lost"));
    assert!(parked[0]
        .header("x-truc-detail")
        .unwrap()
        .contains("signature does not verify"));
    let ns = notices(&sent);
    assert_eq!(ns.len(), 1);
    assert_eq!(
        (
            ns[0].notice,
            ns[0].reason,
            ns[0].dest.as_ref().map(|d| d.as_str())
        ),
        (
            NoticeKind::Bounced,
            Some(Reason::RecordLost),
            Some("000.00.32.H41")
        )
    );
    // A source no longer registered: parked, nobody to tell.
    f.router
        .registry
        .remove(&AgencyCode::parse("000.00.31.H41").unwrap())
        .unwrap();
    assert_eq!(
        f.router.release(&inbound(copy), &o).await.unwrap(),
        Outcome::Dropped("record lost; parked")
    );
    let sent = o.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].routing_key, "u.undelivered");
    assert!(sent[0]
        .header("x-truc-detail")
        .unwrap()
        .contains("not registered"));
}

#[tokio::test(start_paused = true)]
async fn a_retry_without_record_is_scheduled_on_a_rebuilt_record() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    f.router.handle(&inbound(m), &o).await.unwrap();
    let first = deliveries(o.take()).remove(0);
    lose_records(&f);
    // The destination rejects the second try, after the loss.
    let mut dead = f.router.deliver_to(
        super::delivery::Delivery::again(&first).attempt(2),
        &AgencyCode::parse("000.00.32.H41").unwrap(),
    );
    dead.set_header("x-first-death-reason", "rejected");
    assert_eq!(
        f.router.dead(&inbound(dead), &o).await.unwrap(),
        Outcome::Held
    );
    let held = o.take();
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].header("lgsp-attempt"),
        Some("3"),
        "counted from the copy"
    );
    let rec = f
        .router
        .tracking
        .get(&AgencyCode::parse("000.00.31.H41").unwrap(), "M1")
        .unwrap()
        .expect("rebuilt");
    assert_eq!(
        rec.dests[0].state,
        crate::core::timeline::DeliveryState::Retry
    );
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
    resign(&mut m, &f.src.secret);
    m
}

/// Signs `m` again (HMAC-SHA256 with `secret`) after its headers changed.
fn resign(m: &mut Message, secret: &str) {
    m.headers.remove("lgsp-signature");
    let c = crate::core::canonical::canonical_form(m, &m.routing_key).unwrap();
    m.set_header(
        "lgsp-signature",
        crate::core::auth::sign_hmac(crate::core::auth::Alg::HmacSha256, secret, c.as_bytes()),
    );
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

/// An envelope's nonce is judged with its routing claim, in one round trip:
/// a replay is refused as such and leaves no claim, and B4 still comes
/// before B5–B7 (a replayed nonce on a body that does not match its digest
/// is a replay; a fresh one, a digest mismatch).
#[tokio::test(start_paused = true)]
async fn a_replayed_envelope_gives_its_claim_back_and_b4_comes_first() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let now = now_ms();
    let first = signed_at(&f, "R1", now, Some("nonce-replay-00001"));
    assert!(matches!(
        handle_seen(&f, &o, first, None).await,
        Outcome::Accepted { .. }
    ));
    let again = signed_at(&f, "R2", now, Some("nonce-replay-00001"));
    assert_eq!(
        handle_seen(&f, &o, again, None).await,
        Outcome::Rejected(Reason::Replay)
    );
    assert!(
        f.router.store.routing().is_empty().unwrap(),
        "a claim was left"
    );
    assert!(f.router.tracking.get(&f.src.code, "R2").unwrap().is_none());
    let mut tampered = signed_at(&f, "R3", now, Some("nonce-replay-00001"));
    tampered.body = b"not what the digest says".to_vec().into();
    assert_eq!(
        handle_seen(&f, &o, tampered, None).await,
        Outcome::Rejected(Reason::Replay)
    );
    let mut tampered = signed_at(&f, "R4", now, Some("nonce-replay-00002"));
    tampered.body = b"not what the digest says".to_vec().into();
    assert_eq!(
        handle_seen(&f, &o, tampered, None).await,
        Outcome::Rejected(Reason::DigestMismatch)
    );
    // R2 with a nonce of its own goes through, as new.
    let fresh = signed_at(&f, "R2", now, Some("nonce-replay-00003"));
    assert!(matches!(
        handle_seen(&f, &o, fresh, None).await,
        Outcome::Accepted { .. }
    ));
    assert!(f.router.tracking.get(&f.src.code, "R2").unwrap().is_some());
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

#[tokio::test(start_paused = true)]
async fn a_record_left_half_routed_is_routed_again_not_taken_for_a_duplicate() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    let mid = m.message_id.clone().unwrap();
    // The publish fails after the record was written: readers find the
    // envelope, and it stays marked as being routed.
    *o.lose_delivery_confirm_once.lock().unwrap() = true;
    assert!(f.router.handle(&inbound(m.clone()), &o).await.is_err());
    o.take();
    assert!(f.router.tracking.get(&f.src.code, &mid).unwrap().is_some());
    assert!(f.router.tracking.is_routing(&f.src.code, &mid).unwrap());
    // Even without the broker's redelivered flag (the hub restarted), the
    // marked record is routed again as a possible repeat.
    assert!(matches!(
        f.router.handle(&inbound(m.clone()), &o).await.unwrap(),
        Outcome::Accepted { .. }
    ));
    let sent = o.take();
    assert_eq!(
        deliveries(sent.clone())[0].header("lgsp-attempt"),
        Some("2")
    );
    assert!(!f.router.tracking.is_routing(&f.src.code, &mid).unwrap());
    // Finished: the next copy is a duplicate.
    assert_eq!(
        f.router.handle(&inbound(m), &o).await.unwrap(),
        Outcome::Duplicate
    );
}

#[tokio::test(start_paused = true)]
async fn a_delivery_to_an_unavailable_inbox_is_held_and_tried_again() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    *o.unavailable.lock().unwrap() = Some("000.00.32.H41".into());
    let m = envelope_message("u.", &f.src, &out(&["000.00.32.H41"], vec![]));
    let mid = m.message_id.clone().unwrap();
    // Accepted (the ingress message can be acked): the delivery waits in a
    // delay bucket, the timeline says why, nothing reached the inbox.
    assert!(matches!(
        f.router.handle(&inbound(m), &o).await.unwrap(),
        Outcome::Accepted { .. }
    ));
    let sent = o.take();
    assert!(deliveries(sent.clone()).is_empty());
    let held: Vec<Message> = sent
        .into_iter()
        .filter(|m| m.routing_key.starts_with("u.delay."))
        .collect();
    assert_eq!(held.len(), 1, "one held copy");
    let rec = f.router.tracking.get(&f.src.code, &mid).unwrap().unwrap();
    let t = &rec.dests[0];
    assert_eq!(t.state, crate::core::timeline::DeliveryState::Retry);
    assert!(t
        .events
        .last()
        .unwrap()
        .detail
        .contains("inbox unavailable"));
    // Due while still unavailable: held again.
    let copy = due(held[0].clone());
    assert_eq!(
        f.router.release(&inbound(copy.clone()), &o).await.unwrap(),
        Outcome::Held
    );
    assert_eq!(o.take().len(), 1);
    // The node is back: delivered.
    *o.unavailable.lock().unwrap() = None;
    assert_eq!(
        f.router.release(&inbound(copy), &o).await.unwrap(),
        Outcome::Released
    );
    assert_eq!(deliveries(o.take()).len(), 1);
}

/// A signed session request of `c` (routing key `session.<from>`, empty body).
fn session_request(c: &Credentials) -> Message {
    let mut m = Message {
        routing_key: format!("session.{}", c.code),
        message_id: Some(crate::core::outgoing::new_message_id()),
        ..Message::default()
    };
    m.set_header("lgsp-digest", crate::core::auth::body_digest(b""));
    sign(&mut m, c, crate::core::auth::Alg::HmacSha256);
    m
}

#[tokio::test]
async fn a_session_is_granted_once_per_request_and_never_over_amqp() {
    let f = fixture(Policies::default());
    let o = Recorder::default();
    let req = session_request(&f.src);
    let grant = f.router.open_session(&req).unwrap().unwrap();
    assert_eq!(
        (grant.agency.as_str(), grant.access_key.as_str()),
        ("000.00.31.H41", f.src.access_key.as_str())
    );
    // The same request again is a replay (a broker redelivers; HTTP does not).
    match f.router.open_session(&req).unwrap() {
        Err(SessionRefused::Refused(r)) => assert_eq!(r.reason, Reason::Replay),
        other => panic!("{other:?}"),
    }
    let mut forged = session_request(&f.src);
    forged.set_header("lgsp-from", "000.00.32.H41");
    forged.routing_key = "session.000.00.32.H41".into();
    match f.router.open_session(&forged).unwrap() {
        Err(SessionRefused::Unauthenticated(r)) => assert_eq!(r.reason, Reason::BadSignature),
        other => panic!("{other:?}"),
    }
    // Published on AMQP, a session request is refused with a notice.
    let outcome = f
        .router
        .handle(&inbound(session_request(&f.src)), &o)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Rejected(Reason::Malformed));
    let ns = notices(&o.take());
    assert_eq!(ns[0].notice, NoticeKind::Rejected);
    assert!(ns[0].detail.contains("HTTPS gateway"), "{}", ns[0].detail);
}

/// An envelope of `f.src` to `f.dst` whose content is in `space` (digest
/// `digest`), with `body`.
fn in_space(f: &Fixture, id: &str, space: &str, digest: &str, body: &[u8]) -> Message {
    let mut o = out(&["000.00.32.H41"], vec![]);
    o.message_id = Some(id.into());
    o.body = body.to_vec();
    o.extra = vec![
        ("lgsp-space".into(), space.into()),
        ("lgsp-digest".into(), digest.into()),
    ];
    envelope_message("u.", &f.src, &o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_naming_a_space_is_checked_bound_and_its_space_freed_when_delivered() {
    use crate::state::spaces::Spaces;
    let f = fixture(Policies::default());
    let o = Recorder::default();
    // Without spaces, a router refuses the envelope.
    let doc = b"a large document, in short";
    let digest = crate::core::auth::body_digest(doc);
    let m = in_space(&f, "M0", &"ab".repeat(16), &digest, b"");
    assert_eq!(
        f.router.handle(&inbound(m), &o).await.unwrap(),
        Outcome::Rejected(Reason::Malformed)
    );
    let dir = tempfile::tempdir().unwrap();
    let spaces = Spaces::open(f.router.store.clone(), dir.path(), [3; 32]).unwrap();
    f.router.set_spaces(spaces.clone());
    let policy = Policies::default().spaces;
    let src = f.src.code.clone();
    let space = spaces
        .create(&src, doc.len() as u64, &digest, false, &policy, 0)
        .unwrap();

    // Not complete yet; then complete, but with a body beside it; then the
    // wrong digest.
    let refused = |id: &str, digest: &str, body: &[u8]| in_space(&f, id, &space.id, digest, body);
    assert_eq!(
        f.router
            .handle(&inbound(refused("M1", &digest, b"")), &o)
            .await
            .unwrap(),
        Outcome::Rejected(Reason::Malformed)
    );
    spaces.put_chunk(&space, 0, doc).unwrap();
    spaces.complete(&space).unwrap();
    assert_eq!(
        f.router
            .handle(&inbound(refused("M1", &digest, b"x")), &o)
            .await
            .unwrap(),
        Outcome::Rejected(Reason::Malformed)
    );
    let other = crate::core::auth::body_digest(b"other");
    assert_eq!(
        f.router
            .handle(&inbound(refused("M1", &other, b"")), &o)
            .await
            .unwrap(),
        Outcome::Rejected(Reason::DigestMismatch)
    );
    // A refused envelope's nonce is kept: the same message again is a replay.
    let once = refused("M1", &other, b"");
    f.router.handle(&inbound(once.clone()), &o).await.unwrap();
    let mut again = in_space(&f, "M9", &space.id, &digest, b"");
    again.set_header("lgsp-nonce", once.header("lgsp-nonce").unwrap());
    resign(&mut again, &f.src.secret);
    assert_eq!(
        f.router.handle(&inbound(again), &o).await.unwrap(),
        Outcome::Rejected(Reason::Replay)
    );
    o.take();
    // No refusal used the space up.
    assert_eq!(spaces.get(&space.id).unwrap().unwrap().message_id, None);

    // Accepted: the delivery names the space, with an empty body, hub-signed.
    let m = in_space(&f, "M1", &space.id, &digest, b"");
    assert!(matches!(
        f.router.handle(&inbound(m), &o).await.unwrap(),
        Outcome::Accepted { .. }
    ));
    let d = deliveries(o.take());
    assert_eq!(d.len(), 1);
    assert!(d[0].body.is_empty());
    assert_eq!(d[0].header("lgsp-content-space"), Some(space.id.as_str()));
    crate::core::outgoing::verify_hub_signature(&d[0], "deliver.000.00.32.H41", &f.dst.secret)
        .unwrap();
    let rec = f.router.tracking.get(&src, "M1").unwrap().unwrap();
    assert_eq!(rec.size, doc.len() as u64);
    // One space, one envelope.
    assert_eq!(
        f.router
            .handle(&inbound(in_space(&f, "M2", &space.id, &digest, b"")), &o)
            .await
            .unwrap(),
        Outcome::Rejected(Reason::Malformed)
    );

    // The destination confirms: the space is deleted.
    let st = status_message("u.", &f.dst, "M1", "01", None, None);
    f.router.handle(&inbound(st), &o).await.unwrap();
    for _ in 0..100 {
        if spaces.get(&space.id).unwrap().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(spaces.get(&space.id).unwrap().is_none());
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    // Sent again after its space is gone: a repeat, as always.
    assert_eq!(
        f.router
            .handle(&inbound(in_space(&f, "M1", &space.id, &digest, b"")), &o)
            .await
            .unwrap(),
        Outcome::Duplicate
    );
}

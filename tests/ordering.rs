//! Per-source order at ingress: a message that depends on an earlier one from
//! the same source (a recall right after its envelope) is handled after it,
//! however many ingress messages the router works on at once.

mod common;

use std::time::Duration;

use common::{code, notices, TestHub};
use truc::client::{envelope_message, status_message, Outgoing};
use truc::envelope::Priority;
use truc::notice::NoticeKind;

const PAIRS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_followed_at_once_by_their_recall_are_never_forbidden() {
    let mut hub = TestHub::start().await;
    let src = hub.register("000.00.31.H41").await;
    hub.register("000.00.32.H41").await;
    let source = hub.client(&src).await;
    let mut notify = source.notices(256).await.unwrap();

    // Envelope then its recall, back to back, without waiting for either.
    let mut sent = Vec::with_capacity(PAIRS);
    for i in 0..PAIRS {
        let out = Outgoing {
            to: vec![code("000.00.32.H41")],
            subject: format!("ordering {i}"),
            priority: Priority::NORMAL,
            data_type: "edoc".into(),
            content_type: "text/plain".into(),
            body: format!("body {i}").into_bytes(),
            message_id: None,
            extra: Vec::new(),
        };
        let env = envelope_message(&hub.prefix, &src, &out);
        let id = env.message_id.clone().unwrap();
        let recall = status_message(&hub.prefix, &src, &id, "13", None, Some("gửi nhầm"));
        source.publish(&env).await.unwrap();
        source.publish(&recall).await.unwrap();
        sent.push(id);
    }

    // Every envelope is accepted; no recall is refused.
    let ns = notices(&source, &mut notify, PAIRS, Duration::from_secs(60)).await;
    let accepted = ns
        .iter()
        .filter(|n| n.notice == NoticeKind::Accepted)
        .count();
    let refused: Vec<_> = ns
        .iter()
        .filter(|n| n.notice == NoticeKind::Rejected)
        .collect();
    assert!(refused.is_empty(), "recalls refused: {refused:?}");
    assert_eq!(accepted, PAIRS, "{} notices", ns.len());
    // Stragglers: a refusal would come right after its envelope's acceptance.
    let late = notices(&source, &mut notify, 1, Duration::from_secs(2)).await;
    assert!(
        late.iter().all(|n| n.notice != NoticeKind::Rejected),
        "{late:?}"
    );
    assert_eq!(sent.len(), PAIRS);
}

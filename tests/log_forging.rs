//! Logs cannot be forged: wire text holding line breaks, carriage returns
//! or terminal escapes (in the routing key, the message id, the content type
//! and `lgsp-*` header values) is written to the hub's log escaped, so it can
//! never start a line of its own.

mod common;

use common::{envelope, TestHub};
use truc::message::Message;

const FORGED: &str = "INFO truc::admin: agency registered";
const ANSI: &str = "\x1b[2K\x1b[1A\x1b[32m";

/// Lines of `log` that begin (after at most one leading token, the
/// timestamp) with the forged level and target.
fn forged_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| {
            let rest = line.trim_start();
            let after_token = rest
                .split_once(char::is_whitespace)
                .map(|(_, r)| r.trim_start())
                .unwrap_or("");
            rest.starts_with(FORGED) || after_token.starts_with(FORGED)
        })
        .collect()
}

fn raw(prefix: &str, routing_key: &str) -> Message {
    Message {
        exchange: format!("{prefix}ingress"),
        routing_key: routing_key.to_owned(),
        body: b"junk".to_vec().into(),
        ..Message::default()
    }
}

#[test]
fn the_forgery_detector_sees_a_forged_line() {
    let raw_log = format!("2026-11-30T10:00:00Z  WARN x: y routing_key=a\n{FORGED} z\n");
    assert_eq!(forged_lines(&raw_log).len(), 1);
    let stamped = format!("2026-11-30T10:00:00Z  {FORGED}\n");
    assert_eq!(forged_lines(&stamped).len(), 1);
    let escaped = format!("2026-11-30T10:00:00Z  WARN x: y routing_key=a\\n{FORGED} z\n");
    assert!(forged_lines(&escaped).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_text_cannot_forge_log_lines() {
    let mut hub = TestHub::start().await;
    let creds = hub.register("000.00.31.H41").await;
    hub.register("000.00.32.H41").await;
    let p = hub.prefix.clone();
    let mut sent = Vec::new();

    // 1. Routing key with a line break: unauthenticated, quarantined.
    sent.push(raw(&p, &format!("envelope.000.00.31.H41\n{FORGED}")));
    // 2. Carriage return and ANSI escapes in the routing key.
    sent.push(raw(&p, &format!("envelope.000.00.31.H41\r{FORGED}{ANSI}")));
    // 3. message_id and content type with line breaks.
    let mut m = raw(&p, "envelope.000.00.31.H41");
    m.message_id = Some(format!("M1\r\n{FORGED}"));
    m.content_type = Some(format!("text/plain\n{FORGED}"));
    sent.push(m);
    // 4. lgsp-* header values from a registered agency's message, tampered
    //    after signing (bad signature) or unparsable (malformed).
    let headers = [
        "lgsp-from",
        "lgsp-key",
        "lgsp-ref",
        "lgsp-reason",
        "lgsp-subject",
        "lgsp-time",
        "lgsp-to",
    ];
    for h in headers {
        let mut m = envelope("000.00.32.H41").subject("ok").signed(&p, &creds);
        m.set_header(h, format!("x{ANSI}\n{FORGED}\r\n{FORGED}"));
        sent.push(m);
    }
    let link = hub.link().await;
    for m in &sent {
        link.publish(m).await.unwrap();
    }
    link.close().await;
    hub.wait_depth("rejected", sent.len() as u32).await;
    // The hub logs before it publishes the quarantined copy: every line is in.
    let log = hub.log();
    let forged = forged_lines(&log);
    assert!(forged.is_empty(), "forged lines {forged:?}; log:\n{log}");
    assert!(!log.contains('\r'), "raw carriage return in log:\n{log}");
    assert!(!log.contains('\x1b'), "raw escape sequence in log:\n{log}");
    assert!(
        log.contains(&format!("envelope.000.00.31.H41\\n{FORGED}")),
        "escaped routing key; log:\n{log}"
    );
    assert!(
        log.contains(&format!("envelope.000.00.31.H41\\r{FORGED}\\u{{001b}}[2K")),
        "escaped CR and ANSI; log:\n{log}"
    );
    assert!(
        log.contains(&format!("M1\\r\\n{FORGED}")),
        "escaped message_id; log:\n{log}"
    );
}

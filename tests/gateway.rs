//! The agencies' HTTPS gateway, against a real hub and broker: an agency
//! that speaks only HTTP opens a session with a signed request and sends an
//! envelope to an agency on AMQP, which receives it as any delivery; the
//! answers are synchronous (accepted, a repeat, the contract's reason
//! codes); a session ends at once when its agency's key is rotated or the
//! agency is disabled.

mod common;

use std::time::Duration;

use common::{envelope, next_within, TestHub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use truc::auth::{body_digest, Alg};
use truc::client::{new_message_id, sign, Credentials};
use truc::message::Message;

const WAIT: Duration = Duration::from_secs(15);

/// A hub with its gateway on a loopback port; the gateway's address.
async fn gateway_hub() -> (TestHub, String) {
    let mut hub = TestHub::unstarted(None);
    let mut text = std::fs::read_to_string(hub.config_file()).unwrap();
    text.push_str("gateway_addr = \"127.0.0.1:0\"\n");
    std::fs::write(hub.config_file(), text).unwrap();
    hub.spawn().await;
    let addr = std::fs::read_to_string(hub.data.path().join("data").join("gateway.addr"))
        .unwrap()
        .trim()
        .to_owned();
    (hub, addr)
}

/// An HTTP answer.
struct Answer {
    status: u16,
    head: String,
    body: serde_json::Value,
}

/// Bodies from this size on are sent as curl sends them: `Expect:
/// 100-continue`, and only once the server asks for them.
const EXPECT_FROM: usize = 1024 * 1024;

/// One HTTP/1.1 request on its own connection (`Connection: close`).
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        // Values as UTF-8 bytes, as curl sends them.
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    let expect = body.len() >= EXPECT_FROM;
    if expect {
        req.extend_from_slice(b"Expect: 100-continue\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let mut raw = Vec::new();
    if expect {
        s.write_all(&req).await.unwrap();
        // The interim answer, or the final one (the body is not wanted).
        let mut buf = [0u8; 4096];
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap();
            assert!(n > 0, "closed without an answer");
            raw.extend_from_slice(&buf[..n]);
        }
        if raw.starts_with(b"HTTP/1.1 100") {
            raw.clear();
            s.write_all(body).await.unwrap();
        }
    } else {
        req.extend_from_slice(body);
        s.write_all(&req).await.unwrap();
    }
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head: head.to_owned(),
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}

/// The HTTP headers that carry `m`: its `lgsp-*` headers, `Message-Id`,
/// and `Content-Type` when it has one.
fn carried(m: &Message) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = m
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("lgsp-"))
        .map(|(k, v)| (k.clone(), v.as_text().unwrap().to_owned()))
        .collect();
    if let Some(id) = &m.message_id {
        h.push(("Message-Id".into(), id.clone()));
    }
    if let Some(ct) = &m.content_type {
        h.push(("Content-Type".into(), ct.clone()));
    }
    h
}

/// A signed session request of `creds` (routing key `session.<from>`, empty body).
fn session_request(creds: &Credentials) -> Message {
    let mut m = Message {
        routing_key: format!("session.{}", creds.code),
        message_id: Some(new_message_id()),
        ..Message::default()
    };
    m.set_header("lgsp-digest", body_digest(b""));
    sign(&mut m, creds, Alg::HmacSha256);
    m
}

/// A session request of `creds`, posted.
async fn ask(gw: &str, creds: &Credentials) -> Answer {
    http(
        gw,
        "POST",
        "/v1/sessions",
        &carried(&session_request(creds)),
        b"",
    )
    .await
}

/// Opens a session for `creds`: the token.
async fn open(gw: &str, creds: &Credentials) -> String {
    let a = ask(gw, creds).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["agency"], creds.code.as_str());
    assert_eq!(a.body["expires_in_s"], 900, "default 15m");
    a.body["token"].as_str().unwrap().to_owned()
}

/// `m` posted to `/v1/envelopes` with `token`.
async fn post(gw: &str, token: &str, m: &Message) -> Answer {
    let mut h = carried(m);
    h.push(("Authorization".into(), format!("Bearer {token}")));
    http(gw, "POST", "/v1/envelopes", &h, &m.body).await
}

async fn whoami(gw: &str, token: &str) -> Answer {
    let h = [("Authorization".to_owned(), format!("Bearer {token}"))];
    http(gw, "GET", "/v1/session", &h, b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_agency_sends_to_an_amqp_agency() {
    let (mut hub, gw) = gateway_hub().await;
    let web = hub.register("000.00.61.H41").await;
    let amqp = hub.register("000.00.62.H41").await;
    let mut dest = hub.client(&amqp).await;
    let mut inbox = dest.inbox(8).await.unwrap();

    let token = open(&gw, &web).await;
    let me = whoami(&gw, &token).await;
    assert_eq!(
        (me.status, me.body["agency"].as_str()),
        (200, Some("000.00.61.H41"))
    );

    // An envelope with a Vietnamese subject, signed as on AMQP.
    let m = envelope("000.00.62.H41")
        .subject("Công văn số 12")
        .body("nội dung văn bản")
        .signed(&hub.prefix, &web);
    let a = post(&gw, &token, &m).await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["outcome"], "accepted");
    assert_eq!(a.body["message_id"], m.message_id.clone().unwrap());
    assert_eq!(a.body["destinations"], serde_json::json!(["000.00.62.H41"]));
    let got = next_within(&mut inbox, WAIT).await.expect("the delivery");
    let r = dest
        .receive(got.clone())
        .expect("hub-signed as any delivery");
    inbox.ack(got.delivery_tag).await.unwrap();
    assert_eq!(r.message_id, m.message_id.clone().unwrap());
    assert_eq!(got.message.header("lgsp-subject"), Some("Công văn số 12"));
    assert_eq!(&*got.message.body, "nội dung văn bản".as_bytes());

    // The same call again (a timeout, say): accepted again, not delivered again.
    let again = post(&gw, &token, &m).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.body["detail"],
        "already accepted; not delivered again"
    );
    assert!(next_within(&mut inbox, Duration::from_secs(2))
        .await
        .is_none());

    // Refusals carry the contract's reason code.
    let mut tampered = envelope("000.00.62.H41")
        .body("signed")
        .signed(&hub.prefix, &web);
    tampered.body = b"changed".to_vec().into();
    let a = post(&gw, &token, &tampered).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (422, Some("digest-mismatch")),
        "{}",
        a.body
    );
    assert_eq!(a.body["outcome"], "rejected");
    let mut altered = envelope("000.00.62.H41").signed(&hub.prefix, &web);
    altered.set_header("lgsp-subject", "not what was signed");
    let a = post(&gw, &token, &altered).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (422, Some("bad-signature")),
        "{}",
        a.body
    );
    // Another agency's envelope on this session.
    let theirs = envelope("000.00.61.H41").signed(&hub.prefix, &amqp);
    let a = post(&gw, &token, &theirs).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (403, Some("forbidden")),
        "{}",
        a.body
    );
    // Too large, refused from its declared length.
    let big = envelope("000.00.62.H41")
        .body(vec![b'x'; 16 * 1024 * 1024 + 1])
        .signed(&hub.prefix, &web);
    let a = post(&gw, &token, &big).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (413, Some("too-large")),
        "{}",
        a.body
    );
    assert!(next_within(&mut inbox, Duration::from_secs(1))
        .await
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_refused_alike_and_end_with_the_key() {
    let (mut hub, gw) = gateway_hub().await;
    let web = hub.register("000.00.71.H41").await;

    // A request signed with a wrong secret, a garbled token, no token: the same 401.
    let mut wrong = web.clone();
    wrong.secret = "not-the-secret-0123456789abcdef".into();
    let a = ask(&gw, &wrong).await;
    assert_eq!(a.status, 401, "{}", a.body);
    let refused = a.body.clone();
    assert!(!refused.to_string().contains("signature"), "{refused}");
    assert!(
        a.head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        a.head
    );
    assert_eq!(whoami(&gw, "v1.garbage.token").await.body, refused);
    assert_eq!(
        http(&gw, "GET", "/v1/session", &[], b"").await.body,
        refused
    );
    // The same signed request twice: the second is a replay.
    let req = session_request(&web);
    assert_eq!(
        http(&gw, "POST", "/v1/sessions", &carried(&req), b"")
            .await
            .status,
        201
    );
    let a = http(&gw, "POST", "/v1/sessions", &carried(&req), b"").await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (422, Some("replay")),
        "{}",
        a.body
    );

    // Renewed: a new token, the old one still good until it expires.
    let token = open(&gw, &web).await;
    let h = [("Authorization".to_owned(), format!("Bearer {token}"))];
    let renewed = http(&gw, "POST", "/v1/session/renew", &h, b"").await;
    assert_eq!(renewed.status, 201, "{}", renewed.body);
    let renewed = renewed.body["token"].as_str().unwrap().to_owned();
    assert_ne!(renewed, token);
    assert_eq!(whoami(&gw, &renewed).await.status, 200);

    // A rotation ends both at once, though the old key keeps its grace on AMQP.
    let o = hub.cli_expect(
        &[
            "agency",
            "rotate-key",
            "000.00.71.H41",
            "--grace",
            "1h",
            "--json",
        ],
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for t in [&token, &renewed] {
        assert_eq!(whoami(&gw, t).await.body, refused);
    }
    let rotated = Credentials {
        code: web.code.clone(),
        access_key: v["access_key"].as_str().unwrap().to_owned(),
        secret: v["secret"].as_str().unwrap().to_owned(),
        previous_keys: Vec::new(),
    };
    let token = open(&gw, &rotated).await;
    assert_eq!(whoami(&gw, &token).await.status, 200);

    // Disabled: refused at once, sessions and new requests alike.
    hub.cli_expect(&["agency", "disable", "000.00.71.H41"], 0);
    assert_eq!(whoami(&gw, &token).await.body, refused);
    let a = ask(&gw, &rotated).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (403, Some("forbidden")),
        "{}",
        a.body
    );
    assert!(!hub.log().contains(&token), "no token in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_gateway_is_https_only() {
    let mut hub = TestHub::unstarted(None);
    let base = std::fs::read_to_string(hub.config_file()).unwrap();
    std::fs::write(
        hub.config_file(),
        format!("{base}gateway_addr = \"0.0.0.0:0\"\n"),
    )
    .unwrap();
    let err = hub.serve_refused();
    assert!(
        err.contains("gateway_addr") && err.contains("not loopback"),
        "{err}"
    );

    // Certificates from the ops script.
    let certs = hub.data.path().join("certs");
    common::server_certs(&certs);
    std::fs::write(
        hub.config_file(),
        format!(
            "{base}gateway_addr = \"0.0.0.0:0\"\ngateway_tls_cert = {:?}\ngateway_tls_key = {:?}\n",
            certs.join("server.pem").display().to_string(),
            certs.join("server.key").display().to_string()
        ),
    )
    .unwrap();
    hub.spawn().await;
    let bound = std::fs::read_to_string(hub.data.path().join("data").join("gateway.addr")).unwrap();
    let port = bound.trim().rsplit(':').next().unwrap();
    let local = format!("127.0.0.1:{port}");
    let tls = truc::cli::tls::AdminClientTls::from_ca_file(&certs.join("ca.pem")).unwrap();
    // HTTPS answers (no session: 401); plain HTTP gets no answer.
    let r = truc::cli::http::request_tls(Some(&tls), &local, "GET", "/v1/session", "", None)
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(
        truc::cli::http::request(&local, "GET", "/v1/session", "", None)
            .await
            .is_err()
    );
}

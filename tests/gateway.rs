//! The agencies' HTTPS gateway, against a real hub and broker: an agency
//! that speaks only HTTP opens a session with a signed request and sends an
//! envelope to an agency on AMQP, which receives it as any delivery; the
//! answers are synchronous (accepted, a repeat, the contract's reason
//! codes); a session ends at once when its agency's key is rotated or the
//! agency is disabled.

mod common;

use std::time::Duration;

use common::gateway::{
    ask, bearer, carried, deliveries, get, http, open, post, post_json, post_status,
    session_request, whoami, WAIT,
};
use common::{envelope, next_within, TestHub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use truc::client::Credentials;
use truc::message::Message;

/// A hub with its gateway on a loopback port; the gateway's address.
/// Documents up to 16 MiB (so that one just over is refused unread).
async fn gateway_hub() -> (TestHub, String) {
    let ingress = format!(
        "{}\n[spaces]\nmax_document_bytes = 16777216\nbytes_per_agency = 67108864\n",
        INGRESS
    );
    TestHub::start_with_gateway("", &[("ingress.toml", &ingress)]).await
}

/// The `[ingress]` section of the built-in policy.
const INGRESS: &str =
    "[ingress]\nclock_skew = \"300s\"\nmax_body_bytes = 16777216\ndefault_priority = 0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_agency_sends_to_an_amqp_agency() {
    let (mut hub, gw) = gateway_hub().await;
    let web = hub.register("000.00.61.H41").await;
    let amqp = hub.register("000.00.62.H41").await;
    let mut dest = hub.client(&amqp).await;
    let mut inbox = dest.inbox(8).await.unwrap();

    // The OpenAPI document is served without a session, and is the committed one.
    let doc = http(&gw, "GET", "/openapi.json", &[], b"").await;
    assert_eq!(doc.status, 200);
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(doc.body, committed);

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
    // Larger than the largest document, refused from its declared length
    // before a byte of it is read.
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
    // Enabled again: the sessions it had stay ended; a new one works.
    hub.cli_expect(&["agency", "enable", "000.00.71.H41"], 0);
    assert_eq!(whoami(&gw, &token).await.body, refused);
    let fresh = open(&gw, &rotated).await;
    assert_eq!(whoami(&gw, &fresh).await.status, 200);
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

/// Notices listed for `token` until `n` arrived (or `WAIT` passed); each is
/// acknowledged. Their JSON bodies.
async fn take_notices(gw: &str, token: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + WAIT;
    let mut out = Vec::new();
    while out.len() < n && std::time::Instant::now() < deadline {
        let a = get(gw, token, "/v1/notices?wait=2").await;
        assert_eq!(a.status, 200, "{}", a.body);
        let listed = a.body["notices"].as_array().unwrap().clone();
        let ids: Vec<_> = listed.iter().map(|n| n["id"].clone()).collect();
        if ids.is_empty() {
            continue;
        }
        let acked = post_json(
            gw,
            token,
            "/v1/notices/ack",
            serde_json::json!({ "ids": ids }),
        )
        .await;
        assert_eq!(acked.status, 200, "{}", acked.body);
        assert_eq!(
            acked.body["acknowledged"].as_array().unwrap().len(),
            ids.len()
        );
        out.extend(listed.into_iter().map(|n| n["notice"].clone()));
    }
    out
}

/// The delivery listed as `d`, fetched, as the message the hub signed.
async fn fetched(gw: &str, token: &str, d: &serde_json::Value) -> Message {
    let a = get(
        gw,
        token,
        &format!("/v1/deliveries/{}", d["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.raw));
    assert_eq!(a.header("message-id").as_deref(), d["message_id"].as_str());
    let mut m = Message {
        message_id: d["message_id"].as_str().map(str::to_owned),
        content_type: d["content_type"].as_str().map(str::to_owned),
        body: a.raw.into(),
        ..Message::default()
    };
    for (k, v) in d["headers"].as_object().unwrap() {
        m.set_header(k, v.as_str().unwrap());
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_agency_receives_settles_and_reads_notices() {
    let (mut hub, gw) = gateway_hub().await;
    let web = hub.register("000.00.63.H41").await;
    let amqp = hub.register("000.00.64.H41").await;
    let src = hub.client(&amqp).await;
    let mut src_inbox = src.inbox(8).await.unwrap();
    let mut src_notices = src.notices(16).await.unwrap();
    let token = open(&gw, &web).await;
    let a = get(&gw, &token, "/v1/deliveries").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["deliveries"], serde_json::json!([]));
    // Its calls count as heartbeats: online, with no AMQP connection at all.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, v) = hub.api("GET", "/v1/presence", None).await;
        assert_eq!(status, 200, "{v}");
        let me = v
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["code"] == "000.00.63.H41")
            .cloned();
        if me.as_ref().is_some_and(|p| p["state"] == "online") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never online: {me:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // AMQP → HTTPS: listed with its signed headers, fetched, checked.
    let e1 = envelope("000.00.63.H41")
        .subject("Giấy mời họp")
        .body("nội dung")
        .signed(&hub.prefix, &amqp);
    src.publish(&e1).await.unwrap();
    let listed = deliveries(&gw, &token, 10).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let d = &listed[0];
    let e1_id = e1.message_id.clone().unwrap();
    assert_eq!(d["id"], format!("000.00.64.H41/{e1_id}"));
    assert_eq!(
        (d["kind"].as_str(), d["attempt"].as_u64()),
        (Some("envelope"), Some(1))
    );
    assert_eq!(d["subject"], "Giấy mời họp");
    let m = fetched(&gw, &token, d).await;
    assert_eq!(&*m.body, "nội dung".as_bytes());
    truc::client::verify_hub_signature(&m, "deliver.000.00.63.H41", &web.secret)
        .expect("the hub signature verifies over the listed headers");
    // Listing and fetching change nothing.
    assert_eq!(deliveries(&gw, &token, 0).await.len(), 1);

    // Status 01 over HTTPS settles it; the source hears of it.
    let s = common::status(&e1_id, "01")
        .source(&amqp.code)
        .signed(&hub.prefix, &web);
    let a = post_status(&gw, &token, &s).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["settled"], serde_json::json!([d["id"].clone()]));
    assert!(deliveries(&gw, &token, 0).await.is_empty());
    let got = common::notices(&src, &mut src_notices, 3, WAIT).await;
    let kinds: Vec<String> = got.iter().map(|n| format!("{:?}", n.notice)).collect();
    assert!(kinds.contains(&"Delivered".to_owned()), "{kinds:?}");
    // Settling again (a timeout) is answered, not an error.
    let path = format!("/v1/deliveries/{}/ack", d["id"].as_str().unwrap());
    let a = http(&gw, "POST", &path, &bearer(&token), b"").await;
    assert_eq!(
        (a.status, a.body["settled"].as_str()),
        (200, Some("before")),
        "{}",
        a.body
    );
    let a = get(
        &gw,
        &token,
        &format!("/v1/deliveries/{}", d["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(a.status, 410, "{}", a.body);

    // HTTPS → AMQP: the answer and the destination's status come as notices.
    let e2 = envelope("000.00.64.H41").signed(&hub.prefix, &web);
    assert_eq!(post(&gw, &token, &e2).await.status, 202);
    let got = next_within(&mut src_inbox, WAIT)
        .await
        .expect("the delivery");
    src_inbox.ack(got.delivery_tag).await.unwrap();
    let e2_id = e2.message_id.clone().unwrap();
    src.send_status(&e2_id, "01", Some(&web.code), None)
        .await
        .unwrap();
    let seen = take_notices(&gw, &token, 3).await;
    let kinds: Vec<&str> = seen.iter().map(|n| n["notice"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["accepted", "delivered", "status"], "{seen:?}");
    assert!(seen.iter().all(|n| n["ref"] == e2_id.as_str()));
    let a = post_json(
        &gw,
        &token,
        "/v1/notices/ack",
        serde_json::json!({ "ids": ["n0"] }),
    )
    .await;
    assert_eq!(a.body["not_held"], serde_json::json!(["n0"]), "{}", a.body);

    // A recall: the envelope and the recall request are both listed; 15
    // settles both and the source hears it.
    let e3 = envelope("000.00.63.H41").signed(&hub.prefix, &amqp);
    src.publish(&e3).await.unwrap();
    let e3_id = e3.message_id.clone().unwrap();
    let first = get(&gw, &token, "/v1/deliveries?wait=10").await;
    assert_eq!(
        first.body["deliveries"].as_array().map(Vec::len),
        Some(1),
        "{}",
        first.body
    );
    // With the cursor, a listing waits for what is new, though e3 is held.
    let after = first.body["next"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let a = get(&gw, &token, &format!("/v1/deliveries?wait=1&after={after}")).await;
    assert_eq!(a.body["deliveries"], serde_json::json!([]), "{}", a.body);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let bad = get(&gw, &token, "/v1/deliveries?after=nonsense").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let recall = common::status(&e3_id, "13").signed(&hub.prefix, &amqp);
    src.publish(&recall).await.unwrap();
    let new = get(
        &gw,
        &token,
        &format!("/v1/deliveries?wait=10&after={after}"),
    )
    .await;
    let new = new.body["deliveries"].as_array().unwrap().clone();
    assert_eq!(new.len(), 1, "only the recall request: {new:?}");
    assert_eq!(new[0]["kind"], "recall");
    assert_eq!(new[0]["ref"], e3_id.as_str());
    let listed = deliveries(&gw, &token, 0).await;
    assert_eq!(listed.len(), 2, "both still held: {listed:?}");
    let s = common::status(&e3_id, "15")
        .source(&amqp.code)
        .signed(&hub.prefix, &web);
    let a = post_status(&gw, &token, &s).await;
    assert_eq!(
        a.body["settled"].as_array().map(Vec::len),
        Some(2),
        "{}",
        a.body
    );
    assert!(deliveries(&gw, &token, 0).await.is_empty());

    // A rejected delivery comes back after the retry backoff, as attempt 2.
    let e4 = envelope("000.00.63.H41").signed(&hub.prefix, &amqp);
    src.publish(&e4).await.unwrap();
    let d = deliveries(&gw, &token, 10).await.remove(0);
    let path = format!("/v1/deliveries/{}/reject", d["id"].as_str().unwrap());
    let a = http(&gw, "POST", &path, &bearer(&token), b"").await;
    assert_eq!(
        (a.status, a.body["settled"].as_str()),
        (200, Some("rejected")),
        "{}",
        a.body
    );
    let again = deliveries(&gw, &token, 20).await;
    assert_eq!(again.len(), 1, "retried within the 5 s (±25%) backoff");
    assert_eq!(
        (again[0]["id"].clone(), again[0]["attempt"].as_u64()),
        (d["id"].clone(), Some(2))
    );
    let path = format!("/v1/deliveries/{}/ack", d["id"].as_str().unwrap());
    let a = http(&gw, "POST", &path, &bearer(&token), b"").await;
    assert_eq!(a.body["settled"], "acknowledged", "{}", a.body);

    // A deferred envelope is listed once it is due.
    let at = truc::time::format_rfc3339(truc::time::now_ms() + 2_000);
    let e5 = envelope("000.00.63.H41")
        .header("lgsp-not-before", at)
        .signed(&hub.prefix, &amqp);
    src.publish(&e5).await.unwrap();
    let e5_id = e5.message_id.clone().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !deliveries(&gw, &token, 2)
        .await
        .iter()
        .any(|d| d["message_id"] == e5_id.as_str())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the deferred envelope came"
        );
    }
    assert!(!hub.log().contains(&token), "no token in the log");
}

/// An open event stream (`GET /v1/stream`, HTTP/1.0 so the body is the
/// bare event text until the connection closes).
struct Events {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Events {
    async fn open(gw: &str, token: &str) -> Self {
        let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
        let req = format!("GET /v1/stream HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut ev = Self { s, buf: Vec::new() };
        let head = ev.block(b"\r\n\r\n", WAIT).await.expect("an answer");
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert!(head.contains("text/event-stream"), "{head}");
        ev
    }

    /// The text up to the next `sep`, read within `wait`.
    async fn block(&mut self, sep: &[u8], wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(at) = self.buf.windows(sep.len()).position(|w| w == sep) {
                let text = String::from_utf8(self.buf[..at].to_vec()).unwrap();
                self.buf.drain(..at + sep.len());
                return Some(text);
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut chunk))
                .await
                .ok()?
                .unwrap();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next event (name, data) within `wait`; comments are skipped.
    async fn next(&mut self, wait: Duration) -> Option<(String, serde_json::Value)> {
        loop {
            let block = self.block(b"\n\n", wait).await?;
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(str::to_owned))
            };
            let (Some(event), Some(data)) = (field("event: "), field("data: ")) else {
                continue;
            };
            let data = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
            return Some((event, data));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_ten_times_loses_nothing() {
    const SENT: usize = 60;
    let (mut hub, gw) = gateway_hub().await;
    let web = hub.register("000.00.65.H41").await;
    let amqp = hub.register("000.00.66.H41").await;
    let token = open(&gw, &web).await;
    let mut ids = std::collections::BTreeSet::new();
    let mut batch = Vec::new();
    for i in 0..SENT {
        let m = envelope("000.00.65.H41")
            .subject(format!("số {i}"))
            .signed(&hub.prefix, &amqp);
        ids.insert(m.message_id.clone().unwrap());
        batch.push(m);
    }
    let src = hub.client(&amqp).await;
    let publisher = tokio::spawn(async move {
        for m in batch {
            src.publish(&m).await.unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        src
    });

    let mut settled = std::collections::BTreeSet::new();
    let mut left = std::collections::BTreeSet::new();
    let (mut came_again, mut again_settled) = (0, 0);
    let mut cuts = 0;
    while settled.len() < SENT {
        let mut ev = Events::open(&gw, &token).await;
        let mut taken = 0;
        // Up to four deliveries per stream; the fourth is left unsettled
        // when the stream is cut, so it must come again.
        while let Some((event, d)) = ev.next(Duration::from_secs(5)).await {
            assert_eq!(event, "delivery", "{d}");
            let id = d["message_id"].as_str().unwrap().to_owned();
            if settled.contains(&id) {
                again_settled += 1;
                continue;
            }
            if left.remove(&id) {
                came_again += 1;
            }
            taken += 1;
            if taken == 4 && cuts < 10 {
                left.insert(id);
                break;
            }
            let s = common::status(&id, "01")
                .source(&amqp.code)
                .signed(&hub.prefix, &web);
            let a = post_status(&gw, &token, &s).await;
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(
                a.body["settled"].as_array().map(Vec::len),
                Some(1),
                "{}",
                a.body
            );
            settled.insert(id);
            if settled.len() == SENT {
                break;
            }
        }
        drop(ev);
        if cuts < 10 {
            cuts += 1;
        } else if settled.len() < SENT {
            panic!("stream ended with {} of {SENT} settled", settled.len());
        }
    }
    publisher.await.unwrap();
    assert_eq!(cuts, 10);
    assert_eq!(settled, ids, "every delivery came and was settled");
    assert_eq!(again_settled, 0, "nothing settled came again");
    assert_eq!(came_again, 10, "each delivery left unsettled came again");
    hub.wait_depth("inbox.000.00.65.H41", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_stalled_bodies_and_idle_connections_are_limited() {
    let access = truc::policy::DEFAULT_ACCESS.replace(
        "[gateway]\ncalls_per_s = 500.0\nburst = 1000\n",
        "[gateway]\ncalls_per_s = 0.2\nburst = 3\n",
    );
    assert_ne!(access, truc::policy::DEFAULT_ACCESS);
    let (mut hub, gw) = TestHub::start_with_gateway(
        "admin_header_timeout = \"2s\"\n",
        &[("access.toml", &access)],
    )
    .await;
    let web = hub.register("000.00.67.H41").await;
    let other = hub.register("000.00.68.H41").await;

    // Opening the session is the first of three calls; the fourth is refused.
    let token = open(&gw, &web).await;
    assert_eq!(whoami(&gw, &token).await.status, 200);
    assert_eq!(whoami(&gw, &token).await.status, 200);
    let a = whoami(&gw, &token).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (429, Some("rate-limited")),
        "{}",
        a.body
    );
    assert_eq!(a.header("retry-after").as_deref(), Some("1"));
    // Another agency has its own bucket.
    let token2 = open(&gw, &other).await;
    assert_eq!(whoami(&gw, &token2).await.status, 200);

    // A body that stalls is refused once nothing came for the idle time.
    let mut s = tokio::net::TcpStream::connect(&gw).await.unwrap();
    let m = envelope("000.00.67.H41").signed(&hub.prefix, &other);
    let mut req = format!(
        "POST /v1/envelopes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token2}\r\nContent-Length: 1000\r\n"
    );
    for (k, v) in carried(&m) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\nonly a part");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(read.is_ok(), "the stalled request was not ended");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // A connection that sends nothing is closed after the header timeout.
    let mut idle = tokio::net::TcpStream::connect(&gw).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .expect("closed by the hub")
        .unwrap_or(0);
    assert!(
        n == 0 || buf.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        &buf[..n]
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Calls are counted by route in the metrics.
    let metrics = hub.metrics_text().await;
    assert!(
        metrics.contains("truc_gateway_requests_total{route=\"/v1/session\",status=\"429\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("truc_gateway_rate_limited_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_mailbox_gives_back_what_it_held_and_a_stream_ends_with_its_session() {
    let presence =
        "[presence]\nheartbeat_window = \"2s\"\npoll_interval = \"1s\"\nreturn_on_bounce = false\n";
    let (mut hub, gw) = TestHub::start_with_gateway("", &[("presence.toml", presence)]).await;
    let web = hub.register("000.00.69.H41").await;
    let amqp = hub.register("000.00.70.H41").await;
    let src = hub.client(&amqp).await;
    let token = open(&gw, &web).await;

    // Held by the mailbox: nothing ready in the inbox.
    let e = envelope("000.00.69.H41").signed(&hub.prefix, &amqp);
    src.publish(&e).await.unwrap();
    let listed = deliveries(&gw, &token, 10).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["redelivered"], false);
    let inbox = "inbox.000.00.69.H41";
    hub.wait_depth(inbox, 0).await;
    // No call for the heartbeat window: the mailbox closes and the delivery
    // goes back to the inbox, then comes again, marked redelivered.
    hub.wait_log(&["gateway mailbox closed", "idle"], 1).await;
    hub.wait_depth(inbox, 1).await;
    let again = deliveries(&gw, &token, 10).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (again[0]["id"].clone(), again[0]["redelivered"].clone()),
        (listed[0]["id"].clone(), true.into())
    );

    // An open stream ends as soon as its agency is disabled.
    let mut ev = Events::open(&gw, &token).await;
    let (event, _) = ev.next(WAIT).await.expect("the held delivery");
    assert_eq!(event, "delivery");
    hub.cli_expect(&["agency", "disable", "000.00.69.H41"], 0);
    let (event, data) = ev.next(WAIT).await.expect("the stream's end");
    assert_eq!(event, "closed", "{data}");
    assert!(
        ev.next(Duration::from_secs(2)).await.is_none(),
        "nothing after closed"
    );
    // And what the stream showed is back in the inbox once the mailbox closes.
    hub.wait_depth(inbox, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_refused() {
    let (mut hub, gw) = TestHub::start_with_gateway("gateway_session_ttl = \"10s\"\n", &[]).await;
    let web = hub.register("000.00.72.H41").await;
    let refused = whoami(&gw, "v1.garbage.token").await.body;
    let a = ask(&gw, &web).await;
    assert_eq!(
        (a.status, a.body["expires_in_s"].as_i64()),
        (201, Some(10)),
        "{}",
        a.body
    );
    let token = a.body["token"].as_str().unwrap().to_owned();
    assert_eq!(whoami(&gw, &token).await.status, 200);
    let a = get(&gw, &token, "/v1/deliveries").await;
    assert_eq!(a.status, 200, "{}", a.body);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let late = whoami(&gw, &token).await;
    assert_eq!((late.status, &late.body), (401, &refused));
    assert_eq!(get(&gw, &token, "/v1/deliveries").await.status, 401);
    // Renewing needs a session still good.
    let h = bearer(&token);
    assert_eq!(
        http(&gw, "POST", "/v1/session/renew", &h, b"").await.status,
        401
    );
}

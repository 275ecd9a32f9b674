//! Hostile input at the AMQP level: messages no AMQP library would build
//! (invalid UTF-8 in properties, a field table nested thousands deep), written
//! byte by byte to the broker, must not stop the hub: each ends in the
//! `rejected` queue while good envelopes keep flowing. They are published
//! through the source agency's own confined broker user.

mod common;

use std::time::{Duration, Instant};

use common::users::{export, import, url_as, BrokerUsers};
use common::{code, next_within, TestHub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use truc::client::Outgoing;
use truc::envelope::Priority;

/// A minimal AMQP 0-9-1 publisher that writes properties as raw bytes.
struct RawPublisher {
    sock: TcpStream,
}

fn short(s: &[u8]) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s);
    v
}

fn long(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

fn method(class: u16, id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(args);
    p
}

impl RawPublisher {
    /// Connects as the login of `url` (an agency's own broker user), retrying
    /// while an import of definitions is still being applied.
    async fn connect_as(url: &str) -> Self {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), Self::connect(url)).await {
                Ok(Some(p)) => return p,
                _ if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                _ => panic!("cannot log in as {url}"),
            }
        }
    }

    async fn connect(url: &str) -> Option<Self> {
        let hostport = url
            .split('@')
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or("127.0.0.1:5672")
            .to_owned();
        let (user, pass) = url
            .split("://")
            .nth(1)
            .and_then(|s| s.split('@').next())
            .and_then(|s| s.split_once(':'))
            .map(|(u, p)| (u.to_owned(), p.to_owned()))
            .unwrap_or(("guest".into(), "guest".into()));
        let mut p = Self {
            sock: TcpStream::connect(hostport).await.ok()?,
        };
        p.sock.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        p.expect(10, 10).await; // connection.start
        let mut args = long(b""); // client properties
        args.extend(short(b"PLAIN"));
        let mut resp = vec![0];
        resp.extend_from_slice(user.as_bytes());
        resp.push(0);
        resp.extend_from_slice(pass.as_bytes());
        args.extend(long(&resp));
        args.extend(short(b"en_US"));
        p.send(1, 0, &method(10, 11, &args)).await;
        // A refused login closes the socket: no tune comes.
        let tune = p.try_expect(10, 30).await?; // connection.tune
        let mut args = tune[4..6].to_vec(); // channel max
        args.extend_from_slice(&131072u32.to_be_bytes());
        args.extend_from_slice(&0u16.to_be_bytes());
        p.send(1, 0, &method(10, 31, &args)).await;
        let mut args = short(b"/");
        args.extend(short(b""));
        args.push(0);
        p.send(1, 0, &method(10, 40, &args)).await;
        p.expect(10, 41).await;
        p.send(1, 1, &method(20, 10, &short(b""))).await;
        p.expect(20, 11).await;
        p.send(1, 1, &method(85, 10, &[0])).await; // confirm.select
        p.expect(85, 11).await;
        Some(p)
    }

    /// [`RawPublisher::expect`], or `None` when the broker hangs up.
    async fn try_expect(&mut self, class: u16, id: u16) -> Option<Vec<u8>> {
        loop {
            let mut head = [0u8; 7];
            self.sock.read_exact(&mut head).await.ok()?;
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            self.sock.read_exact(&mut payload).await.ok()?;
            payload.pop();
            if head[0] == 1
                && payload[..4] == [(class >> 8) as u8, class as u8, (id >> 8) as u8, id as u8]
            {
                return Some(payload);
            }
        }
    }

    async fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut f = vec![kind];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(0xCE);
        self.sock.write_all(&f).await.unwrap();
    }

    /// Reads frames until the method `class.id` arrives; returns its payload.
    async fn expect(&mut self, class: u16, id: u16) -> Vec<u8> {
        loop {
            let mut head = [0u8; 7];
            self.sock.read_exact(&mut head).await.unwrap();
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            self.sock.read_exact(&mut payload).await.unwrap();
            payload.pop();
            if head[0] == 1 {
                let c = u16::from_be_bytes([payload[0], payload[1]]);
                let m = u16::from_be_bytes([payload[2], payload[3]]);
                if (c, m) == (class, id) {
                    return payload;
                }
                assert!(
                    !(c == 10 && m == 50 || c == 20 && m == 40),
                    "broker closed: {}",
                    String::from_utf8_lossy(&payload)
                );
            }
        }
    }

    /// Publishes `body` with raw property `flags` and bytes; waits for the confirm.
    async fn publish(&mut self, exchange: &str, key: &[u8], flags: u16, props: &[u8], body: &[u8]) {
        let mut args = 0u16.to_be_bytes().to_vec();
        args.extend(short(exchange.as_bytes()));
        args.extend(short(key));
        args.push(0);
        self.send(1, 1, &method(60, 40, &args)).await;
        let mut h = 60u16.to_be_bytes().to_vec();
        h.extend_from_slice(&0u16.to_be_bytes());
        h.extend_from_slice(&(body.len() as u64).to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(props);
        self.send(2, 1, &h).await;
        self.send(3, 1, body).await;
        self.expect(60, 80).await; // basic.ack
    }
}

const CONTENT_TYPE: u16 = 1 << 15;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const MESSAGE_ID: u16 = 1 << 7;

fn lgsp_headers(extra: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in [("lgsp-version", "1"), ("lgsp-from", "T.HOS")] {
        body.extend(short(k.as_bytes()));
        body.push(b'S');
        body.extend(long(v.as_bytes()));
    }
    body.extend_from_slice(extra);
    long(&body)
}

fn nesting_bomb(depth: usize) -> Vec<u8> {
    let mut inner = long(b"");
    for _ in 0..depth {
        let mut t = short(b"a");
        t.push(b'F');
        t.extend(inner);
        inner = long(&t);
    }
    let mut entry = short(b"x-bomb");
    entry.push(b'F');
    entry.extend(inner);
    lgsp_headers(&entry)
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_end_in_rejected_while_good_envelopes_flow() {
    let mut users = BrokerUsers::default();
    let mut hub = TestHub::start().await;
    // The source publishes through its own confined broker user, as a real
    // agency would (codes of this process: broker users are not prefixed).
    let src_code = format!("T{}.HOS", std::process::id());
    let (status, v) = hub
        .api(
            "POST",
            "/v1/agencies",
            Some(serde_json::json!({"code": src_code, "name": "hostile source"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    hub.agencies.push(code(&src_code));
    let src: truc::client::Credentials = serde_json::from_value(v.clone()).unwrap();
    let broker_password = v["broker_password"].as_str().unwrap().to_owned();
    let file = hub.data.path().join("definitions.json");
    export(&hub, &file, &mut users);
    import(&file);
    let dst = hub.register("000.00.32.H41").await;
    let source = hub.client(&src).await;
    let dest = hub.client(&dst).await;
    let mut inbox = dest.inbox(16).await.unwrap();
    let pid = hub.pid();

    let exchange = format!("{}ingress", hub.prefix);
    let key = format!("envelope.{src_code}");
    let key = key.as_bytes();
    let mut raw = RawPublisher::connect_as(&url_as(&src_code, &broker_password)).await;
    let id = |s: &[u8]| {
        let mut p = vec![2u8];
        p.extend(short(s));
        p
    };
    let bomb = {
        let mut p = nesting_bomb(5000);
        p.push(2);
        p
    };
    let bad_name = {
        let mut extra = short(b"lgsp-\xffname");
        extra.push(b'S');
        extra.extend(long(b"x"));
        let mut p = lgsp_headers(&extra);
        p.push(2);
        p
    };
    let bad_content_type = {
        let mut p = short(b"text/\xc3\x28");
        p.push(2);
        p
    };
    let hostile: Vec<(&str, u16, Vec<u8>)> = vec![
        ("nesting bomb", HEADERS | DELIVERY_MODE, bomb),
        (
            "message_id",
            DELIVERY_MODE | MESSAGE_ID,
            id(b"\xff\xfe\xfd"),
        ),
        (
            "content_type",
            CONTENT_TYPE | DELIVERY_MODE,
            bad_content_type,
        ),
        ("header name", HEADERS | DELIVERY_MODE, bad_name),
    ];
    for (what, flags, props) in &hostile {
        raw.publish(&exchange, key, *flags, props, what.as_bytes())
            .await;
    }

    // Good envelopes sent after them all arrive, and the hub stays up.
    let started = Instant::now();
    let mut sent = Vec::new();
    for i in 0..20 {
        let out = Outgoing {
            to: vec![code("000.00.32.H41")],
            subject: format!("good {i}"),
            priority: Priority::NORMAL,
            data_type: "edoc".into(),
            content_type: "text/plain".into(),
            body: format!("good {i}").into_bytes(),
            message_id: None,
            extra: Vec::new(),
        };
        sent.push(source.send(&out).await.unwrap());
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let d = next_within(&mut inbox, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("only {} of {} delivered", got.len(), sent.len()));
        inbox.ack(d.delivery_tag).await.unwrap();
        got.push(d.message.message_id.clone().unwrap());
    }
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
    assert!(alive(pid), "the hub process died");

    // Every hostile message was set aside in `rejected`, none is left in ingress.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rejected = hub.depth("rejected").await;
        let ingress = hub.depth("ingress").await + hub.depth(&format!("ingress.{src_code}")).await;
        if rejected as usize == hostile.len() && ingress == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rejected {rejected}, ingress {ingress}\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(alive(pid), "the hub process died");
    println!(
        "4 malformed messages set aside, 20 good delivered in {:?}",
        started.elapsed()
    );
}

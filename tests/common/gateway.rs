//! The HTTPS gateway as a client sees it: one HTTP/1.1 request per
//! connection, written and read by hand (so the tests see exactly what goes
//! over the wire), session requests, and envelopes posted.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use truc::client::Credentials;
use truc::message::Message;

/// How long a test waits for an answer.
pub const WAIT: Duration = Duration::from_secs(15);

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: serde_json::Value,
    pub raw: Vec<u8>,
}

impl Answer {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Bodies from this size on are sent as curl sends them: `Expect:
/// 100-continue`, and only once the server asks for them.
pub const EXPECT_FROM: usize = 1024 * 1024;

/// One HTTP/1.1 request on its own connection (`Connection: close`).
pub async fn http(
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
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let body = raw[end + 4..].to_vec();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        raw: body,
    }
}

/// The HTTP headers that carry `m`: its `lgsp-*` headers, `Message-Id`,
/// and `Content-Type` when it has one.
pub fn carried(m: &Message) -> Vec<(String, String)> {
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
pub fn session_request(creds: &Credentials) -> Message {
    truc::client::session_message(creds)
}

/// A session request of `creds`, posted.
pub async fn ask(gw: &str, creds: &Credentials) -> Answer {
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
pub async fn open(gw: &str, creds: &Credentials) -> String {
    let a = ask(gw, creds).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["agency"], creds.code.as_str());
    assert_eq!(a.body["expires_in_s"], 900, "default 15m");
    a.body["token"].as_str().unwrap().to_owned()
}

/// `m` posted to `/v1/envelopes` with `token`.
pub async fn post(gw: &str, token: &str, m: &Message) -> Answer {
    let mut h = carried(m);
    h.push(("Authorization".into(), format!("Bearer {token}")));
    http(gw, "POST", "/v1/envelopes", &h, &m.body).await
}

pub async fn whoami(gw: &str, token: &str) -> Answer {
    let h = [("Authorization".to_owned(), format!("Bearer {token}"))];
    http(gw, "GET", "/v1/session", &h, b"").await
}

/// `Authorization` for `token`.
pub fn bearer(token: &str) -> Vec<(String, String)> {
    vec![("Authorization".to_owned(), format!("Bearer {token}"))]
}

/// `GET path` with `token`.
pub async fn get(gw: &str, token: &str, path: &str) -> Answer {
    http(gw, "GET", path, &bearer(token), b"").await
}

/// `POST path` with `token` and a JSON body.
pub async fn post_json(gw: &str, token: &str, path: &str, body: serde_json::Value) -> Answer {
    let mut h = bearer(token);
    h.push(("Content-Type".into(), "application/json".into()));
    http(gw, "POST", path, &h, body.to_string().as_bytes()).await
}

/// The signed status `m` posted to `/v1/statuses`.
pub async fn post_status(gw: &str, token: &str, m: &Message) -> Answer {
    let mut h = carried(m);
    h.extend(bearer(token));
    http(gw, "POST", "/v1/statuses", &h, &m.body).await
}

/// The deliveries listed for `token`, waiting up to `wait_s` for one.
pub async fn deliveries(gw: &str, token: &str, wait_s: u64) -> Vec<serde_json::Value> {
    let a = get(gw, token, &format!("/v1/deliveries?wait={wait_s}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["deliveries"].as_array().unwrap().clone()
}

//! The agencies' HTTPS gateway under load, and the `gateway` scenario.
//!
//! - a minimal HTTP/1.1 client over `tokio::net::TcpStream`: keep-alive
//!   connections opened as needed (as many as there are calls in flight),
//!   bodies by `Content-Length` or chunked;
//! - a Server-Sent Events reader for `GET /v1/stream` (chunked in HTTP/1.1);
//! - agencies that work through the gateway only ([`GwAgency`]): a session,
//!   envelopes posted to `/v1/envelopes`, and one event stream each; a
//!   delivery on the stream is fetched (`GET /v1/deliveries/{id}`), checked
//!   (hub signature over the listed headers, digest over the body) and
//!   answered with a signed status `01` (`POST /v1/statuses`), which settles
//!   it; notices are checked, counted as the AMQP sources count theirs, and
//!   acknowledged in batches (`POST /v1/notices/ack`);
//! - the scenario: the same fixed rate of 1 KiB envelopes, one source to one
//!   destination, over AMQP and then through the gateway, on the same hub in
//!   the same run; send → receive latency of both and their ratios.
//!
//! The gateway carries only `lgsp-*` headers, so the send time of an
//! envelope is kept here by `message_id` ([`GwState::in_flight`]) instead of
//! travelling in `x-bench-sent-ns`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use truc::auth::body_digest;
use truc::client::{envelope_message, status_message, verify_hub_signature, Credentials};
use truc::code::AgencyCode;
use truc::envelope::Priority;
use truc::message::Message;

use crate::hub::Registered;
use crate::load::{self, Mix, Pending, Route, Sample, Shared, RELEASE_NONE};
use crate::run::{Ctx, Mode, PhaseResult, PhaseSpec};
use crate::scenarios::{body, close_all, phase_json, ratio, register_group};
use crate::stats::{now_ns, percentiles, round1, round3, Pct};

/// Locks `m` through a poisoning.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An HTTP answer.
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names in lower case.
    headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// The body ran until the server closed the connection.
    until_close: bool,
}

impl Resp {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The start of the body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(300)
            .collect()
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The longest answer head (and chunk-size line) read.
const MAX_HEAD: usize = 64 * 1024;

/// A connection idle for longer is not used again: the gateway closes idle
/// connections after its header timeout (10 s by default).
const IDLE_REUSE: Duration = Duration::from_secs(5);

/// One HTTP/1.1 connection and the bytes read from it and not yet used.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    /// Bytes read from the socket so far.
    read_total: u64,
    idle_since: Instant,
}

impl Conn {
    async fn connect(addr: &str) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Self {
            s,
            buf: Vec::with_capacity(16 * 1024),
            read_total: 0,
            idle_since: Instant::now(),
        })
    }

    /// Reads more bytes; the end of the stream is an error.
    async fn fill(&mut self) -> std::io::Result<()> {
        self.buf.reserve(16 * 1024);
        let n = self.s.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.read_total += n as u64;
        Ok(())
    }

    /// One line, without its CRLF.
    async fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return Ok(l);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("line too long"));
            }
            self.fill().await?;
        }
    }

    /// The next `n` bytes.
    async fn exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// An answer's head (interim `1xx` answers skipped): status and headers.
    async fn head(&mut self) -> std::io::Result<(u16, Vec<(String, String)>)> {
        loop {
            let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                if self.buf.len() > MAX_HEAD {
                    return Err(bad("answer head too long"));
                }
                self.fill().await?;
                continue;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let status: u16 = lines
                .next()
                .filter(|l| l.starts_with("HTTP/1."))
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| bad("not an HTTP answer"))?;
            if (100..200).contains(&status) {
                continue;
            }
            let headers = lines
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                })
                .collect();
            return Ok((status, headers));
        }
    }

    /// One chunk of a chunked body; empty for the last one (its trailer read).
    async fn chunk(&mut self) -> std::io::Result<Vec<u8>> {
        let size_line = self.line().await?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            while !self.line().await?.is_empty() {}
            return Ok(Vec::new());
        }
        let data = self.exact(size).await?;
        if !self.line().await?.is_empty() {
            return Err(bad("chunk not followed by CRLF"));
        }
        Ok(data)
    }

    /// A whole body as `headers` describe it; true when it ran until the
    /// server closed the connection.
    async fn body(
        &mut self,
        status: u16,
        headers: &[(String, String)],
    ) -> std::io::Result<(Vec<u8>, bool)> {
        if status == 204 || status == 304 {
            return Ok((Vec::new(), false));
        }
        if let Some(n) = header(headers, "content-length") {
            let n: usize = n.parse().map_err(|_| bad("bad Content-Length"))?;
            return Ok((self.exact(n).await?, false));
        }
        if header(headers, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            let mut out = Vec::new();
            loop {
                let c = self.chunk().await?;
                if c.is_empty() {
                    return Ok((out, false));
                }
                out.extend_from_slice(&c);
            }
        }
        loop {
            match self.fill().await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok((std::mem::take(&mut self.buf), true))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `req` and reads the answer. On an error, whether any byte of
    /// an answer had come.
    async fn exchange(&mut self, req: &[u8]) -> Result<Resp, (std::io::Error, bool)> {
        let before = self.read_total;
        let got = |c: &Self| c.read_total > before;
        if let Err(e) = self.s.write_all(req).await {
            return Err((e, false));
        }
        let (status, headers) = match self.head().await {
            Ok(h) => h,
            Err(e) => return Err((e, got(self))),
        };
        let (body, until_close) = match self.body(status, &headers).await {
            Ok(b) => b,
            Err(e) => return Err((e, true)),
        };
        Ok(Resp {
            status,
            headers,
            body,
            until_close,
        })
    }

    /// Sends the request `head` followed by `body` (written from where it
    /// is, not copied), then reads the answer: a `2xx` body is handed to
    /// `sink` piece by piece as it arrives and never held whole (the
    /// answer's `body` stays empty); any other answer's body is kept, for
    /// its error message. On an error, whether any byte of an answer had
    /// come.
    async fn exchange_streamed(
        &mut self,
        head: &[u8],
        body: &[u8],
        sink: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Resp, (std::io::Error, bool)> {
        let before = self.read_total;
        let got = |c: &Self| c.read_total > before;
        if let Err(e) = self.s.write_all(head).await {
            return Err((e, false));
        }
        if let Err(e) = self.s.write_all(body).await {
            return Err((e, got(self)));
        }
        let (status, headers) = match self.head().await {
            Ok(h) => h,
            Err(e) => return Err((e, got(self))),
        };
        if !(200..300).contains(&status) || status == 204 {
            let (body, until_close) = self.body(status, &headers).await.map_err(|e| (e, true))?;
            return Ok(Resp {
                status,
                headers,
                body,
                until_close,
            });
        }
        let until_close = self
            .stream_body(&headers, sink)
            .await
            .map_err(|e| (e, true))?;
        Ok(Resp {
            status,
            headers,
            body: Vec::new(),
            until_close,
        })
    }

    /// Reads a body as `headers` describe it into `sink`, in the pieces the
    /// socket gives (up to 256 KiB); true when it ran until the server
    /// closed the connection.
    async fn stream_body(
        &mut self,
        headers: &[(String, String)],
        sink: &mut (dyn FnMut(&[u8]) + Send),
    ) -> std::io::Result<bool> {
        const PIECE: usize = 256 * 1024;
        if let Some(n) = header(headers, "content-length") {
            let mut left: u64 = n.parse().map_err(|_| bad("bad Content-Length"))?;
            while left > 0 {
                if self.buf.is_empty() {
                    self.buf.reserve(PIECE);
                    let n = self.s.read_buf(&mut self.buf).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.read_total += n as u64;
                }
                let take = (self.buf.len() as u64).min(left) as usize;
                sink(&self.buf[..take]);
                self.buf.drain(..take);
                left -= take as u64;
            }
            return Ok(false);
        }
        if header(headers, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let c = self.chunk().await?;
                if c.is_empty() {
                    return Ok(false);
                }
                sink(&c);
            }
        }
        loop {
            if !self.buf.is_empty() {
                sink(&self.buf);
                self.buf.clear();
            }
            self.buf.reserve(PIECE);
            match self.s.read_buf(&mut self.buf).await? {
                0 => return Ok(true),
                n => self.read_total += n as u64,
            }
        }
    }
}

/// An HTTP/1.1 request.
fn request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = request_head(method, path, host, headers, body.len());
    r.extend_from_slice(body);
    r
}

/// The head of an HTTP/1.1 request whose body is `body_len` bytes.
fn request_head(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(String, String)],
    body_len: usize,
) -> Vec<u8> {
    let mut r = Vec::with_capacity(1024 + if body_len <= 1 << 21 { body_len } else { 0 });
    r.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
    if method != "GET" || body_len > 0 {
        r.extend_from_slice(format!("Content-Length: {body_len}\r\n").as_bytes());
    }
    for (k, v) in headers {
        // Values as UTF-8 bytes, verbatim (the gateway takes them so).
        r.extend_from_slice(k.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(v.as_bytes());
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

/// What one call sends and how it reads the answer ([`Http::call`],
/// [`Http::call_streamed`]).
enum Exchange<'a> {
    /// The whole request in one piece; the answer held.
    Whole(&'a [u8]),
    /// The head, then the body from where it is; a `2xx` answer's body
    /// into `sink`.
    Streamed {
        head: &'a [u8],
        body: &'a [u8],
        sink: &'a mut (dyn FnMut(&[u8]) + Send),
    },
}

/// Keep-alive connections to one address, opened as calls need them.
pub struct Http {
    addr: String,
    idle: Mutex<Vec<Conn>>,
    /// Connections opened.
    pub opened: AtomicU64,
}

impl Http {
    /// No connection yet.
    pub fn new(addr: &str) -> Arc<Self> {
        Arc::new(Self {
            addr: addr.to_owned(),
            idle: Mutex::new(Vec::new()),
            opened: AtomicU64::new(0),
        })
    }

    /// An idle connection still worth using.
    fn take(&self) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        while let Some(c) = idle.pop() {
            if c.idle_since.elapsed() < IDLE_REUSE && c.buf.is_empty() {
                return Some(c);
            }
        }
        None
    }

    /// One call on an idle connection, or a new one. A kept-alive connection
    /// that fails before any byte of an answer came (the server had closed
    /// it) is replaced by a fresh one, once.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Resp, String> {
        let req = request(method, path, &self.addr, headers, body);
        self.on_conn(method, path, Exchange::Whole(&req)).await
    }

    /// [`Http::call`] for large bodies: the request's `body` is written
    /// from where it is (not copied into the request), and a `2xx`
    /// answer's body goes to `sink` as it arrives, never held whole (the
    /// answer's `body` is then empty; another answer's body is kept).
    pub async fn call_streamed(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
        sink: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Resp, String> {
        let head = request_head(method, path, &self.addr, headers, body.len());
        let how = Exchange::Streamed {
            head: &head,
            body,
            sink,
        };
        self.on_conn(method, path, how).await
    }

    /// Runs the exchange `how` on an idle connection, or a new one, and keeps the
    /// connection for the next call unless the answer closes it. A
    /// kept-alive connection that fails before any byte of an answer came
    /// (the server had closed it) is replaced by a fresh one, once.
    async fn on_conn(
        &self,
        method: &str,
        path: &str,
        mut how: Exchange<'_>,
    ) -> Result<Resp, String> {
        let mut attempt = 0;
        loop {
            let reused = if attempt == 0 { self.take() } else { None };
            let fresh = reused.is_none();
            let mut conn = match reused {
                Some(c) => c,
                None => {
                    self.opened.fetch_add(1, Ordering::Relaxed);
                    Conn::connect(&self.addr)
                        .await
                        .map_err(|e| format!("connect {}: {e}", self.addr))?
                }
            };
            let answer = match &mut how {
                Exchange::Whole(req) => conn.exchange(req).await,
                Exchange::Streamed { head, body, sink } => {
                    conn.exchange_streamed(head, body, &mut **sink).await
                }
            };
            match answer {
                Ok(r) => {
                    let close = r.until_close
                        || r.header("connection")
                            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
                    if !close {
                        conn.idle_since = Instant::now();
                        lock(&self.idle).push(conn);
                    }
                    return Ok(r);
                }
                Err((_, false)) if !fresh && attempt == 0 => attempt += 1,
                Err((e, _)) => return Err(format!("{method} {path}: {e}")),
            }
        }
    }
}

/// The headers of `POST /v1/sessions` for `creds`: a signed session
/// request (docs/GATEWAY.md).
pub fn session_request(creds: &Credentials) -> Vec<(String, String)> {
    carried(&truc::client::session_message(creds))
}

/// Opens a session for `creds` over `http` (no event stream, no mailbox):
/// its bearer token.
pub async fn open_session(http: &Http, creds: &Credentials) -> Result<String, String> {
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        http.call("POST", "/v1/sessions", &session_request(creds), b""),
    )
    .await
    .map_err(|_| "POST /v1/sessions: no answer within 15 s".to_owned())??;
    session_token(&r, creds)
}

/// The token of a `POST /v1/sessions` answer.
fn session_token(r: &Resp, creds: &Credentials) -> Result<String, String> {
    match (r.status, r.json()["token"].as_str()) {
        (201, Some(t)) => Ok(t.to_owned()),
        _ => Err(format!(
            "session of {}: HTTP {}: {}",
            creds.code,
            r.status,
            r.text()
        )),
    }
}

/// One Server-Sent Event.
pub struct Event {
    /// `event:` (`message` when absent).
    pub event: String,
    /// `data:` lines, joined by newlines.
    pub data: String,
}

/// `GET /v1/stream`, being read.
struct EventStream {
    conn: Conn,
    chunked: bool,
    /// Body bytes not yet split into lines.
    text: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    ended: bool,
}

impl EventStream {
    /// Opens the stream of the session `token`.
    async fn open(addr: &str, token: &str) -> Result<Self, String> {
        let mut conn = Conn::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = request(
            "GET",
            "/v1/stream",
            addr,
            &[
                ("Authorization".into(), format!("Bearer {token}")),
                ("Accept".into(), "text/event-stream".into()),
            ],
            b"",
        );
        conn.s
            .write_all(&req)
            .await
            .map_err(|e| format!("GET /v1/stream: {e}"))?;
        let (status, headers) = conn
            .head()
            .await
            .map_err(|e| format!("GET /v1/stream: {e}"))?;
        if status != 200 {
            let body = match header(&headers, "content-length") {
                Some(_) => conn.body(status, &headers).await.map(|b| b.0),
                None => Ok(Vec::new()),
            }
            .unwrap_or_default();
            return Err(format!(
                "GET /v1/stream: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let chunked = header(&headers, "transfer-encoding").is_some_and(|t| t.contains("chunked"));
        Ok(Self {
            conn,
            chunked,
            text: Vec::new(),
            event: String::new(),
            data: String::new(),
            has_data: false,
            ended: false,
        })
    }

    /// The next event; `None` once the stream ended.
    async fn next(&mut self) -> std::io::Result<Option<Event>> {
        loop {
            while let Some(nl) = self.text.iter().position(|&b| b == b'\n') {
                let mut raw: Vec<u8> = self.text.drain(..=nl).collect();
                raw.pop();
                if raw.last() == Some(&b'\r') {
                    raw.pop();
                }
                let line = String::from_utf8_lossy(&raw);
                if line.is_empty() {
                    if self.has_data || !self.event.is_empty() {
                        let event = std::mem::take(&mut self.event);
                        self.has_data = false;
                        return Ok(Some(Event {
                            event: if event.is_empty() {
                                "message".into()
                            } else {
                                event
                            },
                            data: std::mem::take(&mut self.data),
                        }));
                    }
                    continue;
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (&*line, ""),
                };
                match field {
                    "event" => self.event = value.to_owned(),
                    "data" => {
                        if self.has_data {
                            self.data.push('\n');
                        }
                        self.data.push_str(value);
                        self.has_data = true;
                    }
                    _ => {}
                }
            }
            if self.ended {
                return Ok(None);
            }
            if self.chunked {
                let c = self.conn.chunk().await?;
                if c.is_empty() {
                    self.ended = true;
                } else {
                    self.text.extend_from_slice(&c);
                }
            } else if !self.conn.buf.is_empty() {
                self.text.append(&mut self.conn.buf);
            } else {
                match self.conn.fill().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => self.ended = true,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// The HTTP headers that carry `m`: its `lgsp-*` headers, `Message-Id`,
/// and `Content-Type` when it has one (docs/GATEWAY.md).
pub fn carried(m: &Message) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = m
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("lgsp-"))
        .filter_map(|(k, v)| Some((k.clone(), v.as_text()?.to_owned())))
        .collect();
    if let Some(id) = &m.message_id {
        h.push(("Message-Id".into(), id.clone()));
    }
    if let Some(ct) = &m.content_type {
        h.push(("Content-Type".into(), ct.clone()));
    }
    h
}

/// A message made of the `lgsp-*` headers a listing gives (JSON object),
/// to check the hub signature over.
fn listed(message_id: &str, content_type: Option<&str>, headers: &Value) -> Message {
    let mut m = Message {
        message_id: Some(message_id.to_owned()),
        content_type: content_type.map(str::to_owned),
        ..Message::default()
    };
    for (k, v) in headers.as_object().into_iter().flatten() {
        if let Some(v) = v.as_str() {
            m.set_header(k, v);
        }
    }
    m
}

/// What the scenario keeps about its gateway traffic.
#[derive(Default)]
pub struct GwState {
    /// Envelopes posted and not yet seen on their destination's stream:
    /// message id → (sent ns, phase).
    pub in_flight: Pending,
    /// Answer time of `POST /v1/envelopes` (`202`).
    pub posted: Mutex<Vec<Sample>>,
    /// Send → the delivery's body fetched.
    pub fetched: Mutex<Vec<Sample>>,
    /// Send → its status `01` answered (the delivery settled).
    pub settled: Mutex<Vec<Sample>>,
    /// Answers by call and status (`POST /v1/envelopes 202` → count).
    pub answers: Mutex<BTreeMap<String, u64>>,
    /// Statuses posted again after a `503`.
    pub status_retries: AtomicU64,
    /// Deliveries on a stream whose envelope was not waited for (a repeat).
    pub repeats: AtomicU64,
    /// Event streams opened (more than one per agency: a stream ended).
    pub streams_opened: AtomicU64,
}

impl GwState {
    fn count(&self, call: &str, status: u16) {
        *lock(&self.answers)
            .entry(format!("{call} {status}"))
            .or_insert(0) += 1;
    }
}

/// An agency that works through the gateway only: its session, its
/// connections, its event stream and notice acknowledger.
pub struct GwAgency {
    /// Credentials.
    pub creds: Credentials,
    token: String,
    http: Arc<Http>,
    /// Envelopes sent and not yet `accepted`.
    pending: Pending,
    /// Stops the stream and the acknowledger.
    stop: CancellationToken,
    acks: mpsc::UnboundedSender<String>,
}

impl GwAgency {
    /// Opens a session for `reg` at `addr` and its event stream (waits
    /// until the stream answered).
    pub async fn open(
        addr: &str,
        reg: &Registered,
        shared: &Arc<Shared>,
        state: &Arc<GwState>,
    ) -> Result<Arc<Self>, String> {
        let http = Http::new(addr);
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            http.call("POST", "/v1/sessions", &session_request(&reg.creds), b""),
        )
        .await
        .map_err(|_| "POST /v1/sessions: no answer within 15 s".to_owned())??;
        state.count("POST /v1/sessions", r.status);
        let token = session_token(&r, &reg.creds)?;
        let (acks, rx) = mpsc::unbounded_channel();
        let me = Arc::new(Self {
            creds: reg.creds.clone(),
            token,
            http,
            pending: Mutex::new(HashMap::new()),
            stop: shared.cancel.child_token(),
            acks,
        });
        tokio::spawn(acknowledge(
            shared.clone(),
            state.clone(),
            me.http.clone(),
            me.auth(),
            me.stop.clone(),
            rx,
        ));
        let (tx, opened) = oneshot::channel();
        tokio::spawn(stream_loop(shared.clone(), state.clone(), me.clone(), tx));
        match tokio::time::timeout(Duration::from_secs(15), opened).await {
            Ok(Ok(Ok(()))) => Ok(me),
            Ok(Ok(Err(e))) => {
                me.close();
                Err(e)
            }
            _ => {
                me.close();
                Err(format!("{}: the event stream did not open", reg.creds.code))
            }
        }
    }

    fn auth(&self) -> (String, String) {
        ("Authorization".into(), format!("Bearer {}", self.token))
    }

    /// Stops its stream and acknowledger (the connections close).
    pub fn close(&self) {
        self.stop.cancel();
    }
}

/// How long the acknowledger waits after a notice for more to batch.
const ACK_GATHER: Duration = Duration::from_millis(10);

/// Acknowledges the notices whose ids come on `rx`, as many per call as
/// have come meanwhile.
async fn acknowledge(
    shared: Arc<Shared>,
    state: Arc<GwState>,
    http: Arc<Http>,
    auth: (String, String),
    stop: CancellationToken,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    let headers = [auth, ("Content-Type".into(), "application/json".into())];
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            id = rx.recv() => match id { Some(id) => id, None => return },
        };
        // A few milliseconds to gather what follows (an envelope's
        // notices come close together; a mailbox holds 32 unacknowledged).
        tokio::time::sleep(ACK_GATHER).await;
        let mut ids = vec![first];
        while ids.len() < 1000 {
            match rx.try_recv() {
                Ok(id) => ids.push(id),
                Err(_) => break,
            }
        }
        let body = json!({ "ids": ids }).to_string();
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(shared.publish_timeout, http.call("POST", "/v1/notices/ack", &headers, body.as_bytes())) => r,
        };
        match r {
            Ok(Ok(r)) if r.status == 200 => {
                state.count("POST /v1/notices/ack", 200);
                let not_held = r.json()["not_held"].as_array().map_or(0, Vec::len);
                if not_held > 0 {
                    shared.error(
                        "gateway-notice-not-held",
                        format!(
                            "{not_held} of {} notices acknowledged were not held",
                            ids.len()
                        ),
                    );
                }
            }
            Ok(Ok(r)) => {
                state.count("POST /v1/notices/ack", r.status);
                shared.error(
                    &format!("gateway-notice-ack-{}", r.status),
                    format!("HTTP {}: {}", r.status, r.text()),
                );
            }
            Ok(Err(e)) => shared.error("gateway-notice-ack", e),
            Err(_) => shared.error("gateway-notice-ack", "no answer in time"),
        }
    }
}

/// Reads the agency's event stream until stopped, opening it again when it
/// ends; `opened` learns how the first opening went.
async fn stream_loop(
    shared: Arc<Shared>,
    state: Arc<GwState>,
    me: Arc<GwAgency>,
    opened: oneshot::Sender<Result<(), String>>,
) {
    let mut opened = Some(opened);
    let addr = me.http.addr.clone();
    loop {
        let s = tokio::select! {
            _ = me.stop.cancelled() => return,
            s = EventStream::open(&addr, &me.token) => s,
        };
        let mut s = match s {
            Ok(s) => s,
            Err(e) => {
                if let Some(tx) = opened.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                shared.error("gateway-stream-open", e);
                tokio::select! {
                    _ = me.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        state.streams_opened.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = opened.take() {
            let _ = tx.send(Ok(()));
        }
        loop {
            let ev = tokio::select! {
                _ = me.stop.cancelled() => return,
                ev = s.next() => ev,
            };
            match ev {
                Ok(Some(ev)) => match ev.event.as_str() {
                    "delivery" => on_delivery(&shared, &state, &me, &ev.data).await,
                    "notice" => on_notice(&shared, &me, &ev.data),
                    "closed" => shared.error("gateway-stream-closed", ev.data),
                    other => shared.error("gateway-stream-event", other),
                },
                Ok(None) => {
                    shared.error("gateway-stream-ended", "the event stream ended");
                    break;
                }
                Err(e) => {
                    shared.error("gateway-stream", e);
                    break;
                }
            }
        }
    }
}

/// A delivery on the stream: its latency, then (in a task of its own) its
/// body fetched and checked, and status `01` posted.
async fn on_delivery(shared: &Arc<Shared>, state: &Arc<GwState>, me: &Arc<GwAgency>, data: &str) {
    let now = now_ns();
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let (Some(id), Some(message_id), Some(from)) = (
        v["id"].as_str(),
        v["message_id"].as_str(),
        v["from"].as_str().and_then(|f| AgencyCode::parse(f).ok()),
    ) else {
        shared.error(
            "gateway-delivery-fields",
            data.chars().take(200).collect::<String>(),
        );
        return;
    };
    let found = lock(&state.in_flight).remove(message_id);
    let stamp = match found {
        Some((sent, phase)) => {
            let prio = v["headers"]["lgsp-priority"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            load::record_sample(shared, phase, prio, sent, now);
            Some((sent, phase))
        }
        None => {
            state.repeats.fetch_add(1, Ordering::Relaxed);
            shared.error(
                "gateway-delivery-repeat",
                format!("{id} (redelivered {})", v["redelivered"]),
            );
            None
        }
    };
    if v["attempt"].as_u64() != Some(1) {
        shared.error("delivery-repeat", format!("attempt {}", v["attempt"]));
    }
    let permit = tokio::select! {
        _ = me.stop.cancelled() => return,
        p = shared.status_permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
    };
    let (shared, state, me) = (shared.clone(), state.clone(), me.clone());
    let (id, message_id) = (id.to_owned(), message_id.to_owned());
    tokio::spawn(async move {
        answer(&shared, &state, &me, &v, &id, &message_id, &from, stamp).await;
        drop(permit);
    });
}

/// Fetches delivery `id`, checks it as a destination must, and posts status
/// `01` about it (again after a `503`).
#[allow(clippy::too_many_arguments)]
async fn answer(
    shared: &Shared,
    state: &GwState,
    me: &GwAgency,
    listing: &Value,
    id: &str,
    message_id: &str,
    from: &AgencyCode,
    stamp: Option<(u64, u16)>,
) {
    let sample = |to: &Mutex<Vec<Sample>>| {
        if let Some((sent, phase)) = stamp {
            lock(to).push(Sample {
                phase,
                prio: 0,
                sent_ns: sent,
                lat_ns: now_ns().saturating_sub(sent),
            });
        }
    };
    let auth = [me.auth()];
    let fetched = tokio::time::timeout(
        shared.publish_timeout,
        me.http
            .call("GET", &format!("/v1/deliveries/{id}"), &auth, b""),
    )
    .await;
    match fetched {
        Ok(Ok(r)) if r.status == 200 => {
            state.count("GET /v1/deliveries/{id}", 200);
            sample(&state.fetched);
            let m = listed(
                message_id,
                listing["content_type"].as_str(),
                &listing["headers"],
            );
            let deliver_key = format!("deliver.{}", me.creds.code);
            if let Err(e) = verify_hub_signature(&m, &deliver_key, &me.creds.secret) {
                shared.error("delivery-verify", format!("hub signature: {e}"));
            } else if m.header("lgsp-digest") != Some(body_digest(&r.body).as_str()) {
                shared.error("delivery-verify", "body does not match lgsp-digest");
            }
        }
        Ok(Ok(r)) => {
            state.count("GET /v1/deliveries/{id}", r.status);
            shared.error(
                &format!("gateway-fetch-{}", r.status),
                format!("{id}: {}", r.text()),
            );
        }
        Ok(Err(e)) => shared.error("gateway-fetch", e),
        Err(_) => shared.error("gateway-fetch", "no answer in time"),
    }
    for attempt in 0..10 {
        if attempt > 0 {
            state.status_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Signed afresh each time: a second post of the same is a replay.
        let msg = status_message(
            &shared.prefix(),
            &me.creds,
            message_id,
            "01",
            Some(from),
            None,
        );
        let mut headers = carried(&msg);
        headers.push(me.auth());
        let r = tokio::time::timeout(
            shared.publish_timeout,
            me.http.call("POST", "/v1/statuses", &headers, &msg.body),
        )
        .await;
        match r {
            Ok(Ok(r)) if r.status == 200 => {
                state.count("POST /v1/statuses", 200);
                shared.totals.statuses_sent.fetch_add(1, Ordering::Relaxed);
                sample(&state.settled);
                let settled = r.json()["settled"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x.as_str() == Some(id)));
                if !settled {
                    shared.error("gateway-status-not-settled", format!("{id}: {}", r.text()));
                }
                return;
            }
            Ok(Ok(r)) if r.status == 503 => state.count("POST /v1/statuses", 503),
            Ok(Ok(r)) => {
                state.count("POST /v1/statuses", r.status);
                shared.error(
                    &format!("gateway-status-{}", r.status),
                    format!("{id}: {}", r.text()),
                );
                return;
            }
            Ok(Err(e)) => {
                shared.error("gateway-status", e);
                return;
            }
            Err(_) => {
                shared.error("gateway-status", "no answer in time");
                return;
            }
        }
    }
    shared.error(
        "gateway-status-503",
        format!("{id}: still 503 after 10 tries"),
    );
}

/// A notice on the stream: checked, counted as an AMQP source counts its
/// notices, and queued for acknowledgement.
fn on_notice(shared: &Shared, me: &GwAgency, data: &str) {
    let now = now_ns();
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let Some(id) = v["id"].as_str() else {
        shared.error(
            "gateway-notice-fields",
            data.chars().take(200).collect::<String>(),
        );
        return;
    };
    let m = listed(id, Some("application/json"), &v["headers"]);
    if load::take_notice(shared, &me.creds, &me.pending, &m, now)
        && m.header("lgsp-digest")
            != Some(body_digest(v["body"].as_str().unwrap_or("").as_bytes()).as_str())
    {
        shared.error("notice-verify", "body does not match lgsp-digest");
    }
    let _ = me.acks.send(id.to_owned());
}

/// Posts envelope number `seq` of `phase` to `/v1/envelopes`, from the
/// sources in turn to the destinations in turn; true when it was accepted.
pub async fn send_one(
    shared: &Shared,
    state: &GwState,
    sources: &[Arc<GwAgency>],
    dests: &[AgencyCode],
    body: &[u8],
    seq: u64,
    phase: u16,
) -> bool {
    let slot = shared.slot(phase);
    let m_src = sources.len() as u64;
    let src_idx = (seq % m_src) as usize;
    let src = &sources[src_idx];
    let mut d = ((seq / m_src + src_idx as u64) % dests.len() as u64) as usize;
    if dests[d] == src.creds.code {
        d = (d + 1) % dests.len();
    }
    let out = load::outgoing(vec![dests[d].clone()], Priority::NORMAL, body.to_vec());
    let msg = envelope_message(&shared.prefix(), &src.creds, &out);
    let id = msg.message_id.clone().unwrap_or_default();
    let mut headers = carried(&msg);
    headers.push(src.auth());
    let sent = now_ns();
    lock(&state.in_flight).insert(id.clone(), (sent, phase));
    lock(&src.pending).insert(id.clone(), (sent, phase));
    slot.sent.fetch_add(1, Ordering::Relaxed);
    shared.totals.sent.fetch_add(1, Ordering::Relaxed);
    slot.publishing.fetch_add(1, Ordering::Relaxed);
    let r = tokio::time::timeout(
        shared.publish_timeout,
        src.http.call("POST", "/v1/envelopes", &headers, &msg.body),
    )
    .await;
    let answered = now_ns();
    slot.publishing.fetch_sub(1, Ordering::Relaxed);
    let (kind, failure) = match r {
        Ok(Ok(a)) => {
            state.count("POST /v1/envelopes", a.status);
            match a.status {
                202 => {
                    lock(&state.posted).push(Sample {
                        phase,
                        prio: 0,
                        sent_ns: sent,
                        lat_ns: answered.saturating_sub(sent),
                    });
                    let v = a.json();
                    let delivered = v["destinations"].as_array().is_some_and(|d| d.len() == 1);
                    if !delivered {
                        shared.error("gateway-post-bounced", a.text());
                    }
                    return true;
                }
                200 => {
                    shared.error("gateway-post-repeat", a.text());
                    return true;
                }
                s => (format!("gateway-post-{s}"), a.text()),
            }
        }
        Ok(Err(e)) => ("gateway-post".to_owned(), e),
        Err(_) => (
            "gateway-post".to_owned(),
            format!("no answer within {:?}", shared.publish_timeout),
        ),
    };
    shared.error(&kind, failure);
    slot.failed.fetch_add(1, Ordering::Relaxed);
    if slot.release.load(Ordering::Relaxed) != RELEASE_NONE {
        slot.window.add_permits(1);
    }
    lock(&state.in_flight).remove(&id);
    lock(&src.pending).remove(&id);
    false
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Percentiles of the samples of phase `p` sent in its measured window.
fn in_window(samples: &Mutex<Vec<Sample>>, p: &PhaseResult) -> Option<Pct> {
    let (from, to) = ((p.t_measure_s * 1e9) as u64, (p.t_end_s * 1e9) as u64);
    let mut lat: Vec<u64> = lock(samples)
        .iter()
        .filter(|s| s.phase == p.id && s.sent_ns >= from && s.sent_ns <= to)
        .map(|s| s.lat_ns)
        .collect();
    percentiles(&mut lat)
}

/// `(sum, count)` of `truc_gateway_request_seconds` by route, from the
/// hub's `/metrics`.
async fn gateway_times(ctx: &Ctx) -> BTreeMap<String, (f64, f64)> {
    let mut out = BTreeMap::new();
    let Ok(Ok(r)) = tokio::time::timeout(
        Duration::from_secs(3),
        truc::cli::http::request(&ctx.hub.admin_addr, "GET", "/metrics", &ctx.hub.token, None),
    )
    .await
    else {
        return out;
    };
    for line in String::from_utf8_lossy(&r.body).lines() {
        let (which, rest) = if let Some(r) = line.strip_prefix("truc_gateway_request_seconds_sum{")
        {
            (0, r)
        } else if let Some(r) = line.strip_prefix("truc_gateway_request_seconds_count{") {
            (1, r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(route) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("route=\""))
            .map(|r| r.trim_end_matches('"').to_owned())
        else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let e = out.entry(route).or_insert((0.0, 0.0));
        if which == 0 {
            e.0 += v;
        } else {
            e.1 += v;
        }
    }
    out
}

/// Waits until truc's router has handled nothing for two seconds (work an
/// earlier scenario left behind, e.g. a flood nobody waited for, would
/// weigh on the first phase only), up to `within`. Returns how long it
/// waited and whether the router went quiet.
pub async fn wait_router_quiet(ctx: &Ctx, within: Duration) -> (f64, bool) {
    let start = Instant::now();
    let mut last = None;
    let mut quiet = 0;
    while start.elapsed() < within && !ctx.shared.cancel.is_cancelled() {
        // Absent until the router handled its first message.
        let m = ctx.hub.metrics().await;
        let handled =
            (!m.is_empty()).then(|| m.get("truc_ingress_seconds_count").copied().unwrap_or(0.0));
        if handled.is_some() && handled == last {
            quiet += 1;
            if quiet >= 4 {
                return (round1(start.elapsed().as_secs_f64()), true);
            }
        } else {
            quiet = 0;
        }
        last = handled;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (round1(start.elapsed().as_secs_f64()), false)
}

/// What one phase of the scenario reports.
fn phase_summary(p: &PhaseResult) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("e2e".into(), json!(p.e2e));
    m.insert("accept".into(), json!(p.accept));
    m.insert("sent".into(), json!(p.sent));
    m.insert("received".into(), json!(p.received));
    m.insert("failed".into(), json!(p.failed));
    m.insert("lost".into(), json!(p.sent.saturating_sub(p.received)));
    m.insert("msgs_per_s".into(), json!(p.msgs_per_s));
    m.insert("behind_schedule".into(), json!(p.behind_schedule));
    m.insert("drained".into(), json!(p.drained));
    m.insert("truc_cpu_pct".into(), json!(p.truc_cpu_pct));
    m.insert("truc_cpu_us_per_msg".into(), json!(p.truc_cpu_us_per_msg));
    m.insert("broker_cpu_pct".into(), json!(p.broker_cpu_pct));
    m.insert("bench_cpu_pct".into(), json!(p.bench_cpu_pct));
    m
}

/// (f) `gateway`: one source sends 1 KiB envelopes at a fixed rate to one
/// destination, over AMQP (the destination consumes its inbox and answers
/// `01` over AMQP), then through the HTTPS gateway (posted to
/// `/v1/envelopes`; the destination reads `/v1/stream`, fetches each body
/// and posts status `01`); send → receive latency of both and the ratios.
pub async fn gateway(ctx: &mut Ctx) -> Result<Value, String> {
    let addr = ctx.hub.gateway_addr(Duration::from_secs(10)).await?;
    let url = ctx.s.amqp_url.clone();
    let rate = ctx.s.gateway_rate;
    let warmup = secs(ctx.s.warmup_s);
    let measure = secs(ctx.s.gateway_measure_s);
    let size = 1024;
    let amqp_src = register_group(ctx, "GA", 1, None).await?;
    let amqp_dst = register_group(ctx, "GB", 1, None).await?;
    let gw_src = register_group(ctx, "GS", 1, None).await?;
    let gw_dst = register_group(ctx, "GD", 1, None).await?;
    let (a_src, f1) =
        load::connect_agencies(&url, &amqp_src, &ctx.shared, None, 1, 1, secs(15.0)).await;
    let (a_dst, f2) = load::connect_agencies(
        &url,
        &amqp_dst,
        &ctx.shared,
        Some(ctx.s.prefetch),
        1,
        1,
        secs(15.0),
    )
    .await;
    let amqp: Vec<_> = a_src.iter().chain(&a_dst).cloned().collect();
    if let Some(f) = f1.first().or(f2.first()) {
        close_all(&amqp).await;
        return Err(format!("AMQP agencies could not connect: {f}"));
    }
    let state = Arc::new(GwState::default());
    let mut gw = Vec::new();
    for reg in gw_src.iter().chain(&gw_dst) {
        match GwAgency::open(&addr, reg, &ctx.shared, &state).await {
            Ok(a) => gw.push(a),
            Err(e) => {
                gw.iter().for_each(|a: &Arc<GwAgency>| a.close());
                close_all(&amqp).await;
                return Err(format!("gateway agency {}: {e}", reg.creds.code));
            }
        }
    }
    ctx.monitor.set_label("gateway: waiting for an idle hub");
    let (waited_s, quiet) = wait_router_quiet(ctx, secs(ctx.s.drain_timeout_s)).await;
    if !quiet {
        let note = format!(
            "gateway: truc's router was still handling messages after {waited_s} s; the phases ran anyway"
        );
        eprintln!("warning: {note}");
        ctx.notes.push(note);
    }
    eprintln!(
        "== gateway: {addr}; {rate}/s of {} for {:.0}+{:.0} s, over AMQP then through the gateway",
        crate::scenarios::size_label(size),
        warmup.as_secs_f64(),
        measure.as_secs_f64()
    );
    let spec = |name: String, path: &'static str| PhaseSpec {
        scenario: "gateway",
        name,
        path,
        body_bytes: size,
        mode: Mode::Rate(rate),
        warmup,
        measure,
        stop_early: None,
        drain_timeout_s: None,
    };
    let p_amqp = ctx
        .phase(
            spec(format!("amqp 1 KiB @{rate:.0}/s"), "truc"),
            Arc::new(Route::Truc {
                sources: a_src.clone(),
                dests: vec![a_dst[0].creds.code.clone()],
                body: body(size),
                mix: Mix::only(0),
                pool: None,
            }),
        )
        .await;
    let times_a = gateway_times(ctx).await;
    let p_gw = ctx
        .phase(
            spec(format!("gateway 1 KiB @{rate:.0}/s"), "gateway"),
            Arc::new(Route::Gateway {
                sources: vec![gw[0].clone()],
                dests: vec![gw[1].creds.code.clone()],
                body: body(size),
                state: state.clone(),
            }),
        )
        .await;
    let times_b = gateway_times(ctx).await;
    for a in &gw {
        a.close();
    }
    close_all(&amqp).await;
    let unseen = lock(&state.in_flight)
        .values()
        .filter(|(_, phase)| *phase == p_gw.id)
        .count();
    // The hub's own time per gateway call over the phase (warm-up included).
    let server: serde_json::Map<String, Value> = times_b
        .iter()
        .filter_map(|(route, (sum, n))| {
            let (sum0, n0) = times_a.get(route).copied().unwrap_or((0.0, 0.0));
            let calls = n - n0;
            (calls > 0.0).then(|| {
                (
                    route.clone(),
                    json!({ "calls": calls, "mean_ms": round3((sum - sum0) / calls * 1e3) }),
                )
            })
        })
        .collect();
    let mut a = phase_summary(&p_amqp);
    a.insert("phase".into(), phase_json(&p_amqp));
    let mut g = phase_summary(&p_gw);
    g.insert(
        "e2e_after_fetch".into(),
        json!(in_window(&state.fetched, &p_gw)),
    );
    g.insert(
        "e2e_settled".into(),
        json!(in_window(&state.settled, &p_gw)),
    );
    g.insert("post_answer".into(), json!(in_window(&state.posted, &p_gw)));
    g.insert("not_seen_on_stream".into(), json!(unseen));
    g.insert(
        "http".into(),
        json!({
            "answers": *lock(&state.answers),
            "connections_opened": gw.iter().map(|a| a.http.opened.load(Ordering::Relaxed)).sum::<u64>(),
            "streams_opened": state.streams_opened.load(Ordering::Relaxed),
            "status_retries_after_503": state.status_retries.load(Ordering::Relaxed),
            "repeated_deliveries": state.repeats.load(Ordering::Relaxed),
            "hub_time_per_call": server,
        }),
    );
    g.insert("phase".into(), phase_json(&p_gw));
    let vs = match (&p_amqp.e2e, &p_gw.e2e) {
        (Some(a), Some(g)) => json!({
            "p50_ratio": ratio(g.p50_ms, a.p50_ms),
            "p99_ratio": ratio(g.p99_ms, a.p99_ms),
            "max_ratio": ratio(g.max_ms, a.max_ms),
        }),
        _ => Value::Null,
    };
    let line = |name: &str, p: &PhaseResult| {
        match &p.e2e {
        Some(e) => eprintln!(
            "== gateway scenario, {name}: p50 {:.2} p99 {:.2} max {:.1} ms ({} samples); sent {}, received {}, lost {}",
            e.p50_ms,
            e.p99_ms,
            e.max_ms,
            e.count,
            p.sent,
            p.received,
            p.sent.saturating_sub(p.received)
        ),
        None => eprintln!("== gateway scenario, {name}: no latency sample"),
    }
    };
    line("amqp", &p_amqp);
    line("gateway", &p_gw);
    if let Some(pa) = in_window(&state.posted, &p_gw) {
        eprintln!(
            "== gateway scenario: POST /v1/envelopes answered in p50 {:.2} p99 {:.2} ms; gateway/amqp {vs}",
            pa.p50_ms, pa.p99_ms
        );
    }
    Ok(json!({
        "rate": rate,
        "body_bytes": size,
        "warmup_s": round1(warmup.as_secs_f64()),
        "measure_s": round1(measure.as_secs_f64()),
        "gateway_addr": addr,
        "waited_for_idle_router_s": waited_s,
        "amqp": a,
        "gateway": g,
        "gateway_vs_amqp": vs,
    }))
}

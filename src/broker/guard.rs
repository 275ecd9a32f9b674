//! The frame guard: what the broker sends truc is checked frame by frame
//! before lapin parses it, so that no message can stop the hub.
//!
//! RabbitMQ forwards whatever a publisher wrote into a message's properties:
//! invalid UTF-8 in `message_id`, `content_type` or a header name, field
//! tables nested thousands deep, unknown field types. lapin treats each of
//! these as a broken connection (and deep nesting overflows the stack of its
//! I/O thread), so one such message, redelivered after every reconnect, would
//! stall or crash the hub for good. The guard sits between lapin and the
//! broker as an in-process relay on a loopback socket and rewrites exactly
//! the frames lapin would refuse:
//! - a content header whose properties do not parse strictly is replaced by
//!   one with only `delivery_mode` (when valid) and the header
//!   [`MALFORMED_HEADER`] naming the problem; the body is untouched, so the
//!   router can quarantine the message like any other malformed input;
//! - a `basic.deliver`, `basic.get-ok` or `basic.return` whose exchange or
//!   routing key is not UTF-8 gets the routing key [`MALFORMED_ROUTING_KEY`].
//!
//! Invariants: frames are forwarded whole and in order; a frame that parses
//! strictly is forwarded byte for byte; the parser here never recurses deeper
//! than [`MAX_DEPTH`] and never allocates more than the frame it reads; bytes
//! from truc to the broker are copied unchanged.

use std::net::SocketAddr;

use std::sync::Arc;

use lapin::uri::{AMQPScheme, AMQPUri};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use super::{AmqpError, BrokerTls};

use crate::core::metrics;

/// Header the guard sets on a message whose properties it had to replace.
pub const MALFORMED_HEADER: &str = "x-truc-malformed";

/// Routing key the guard gives a delivery whose routing key was not UTF-8.
pub const MALFORMED_ROUTING_KEY: &str = "malformed.routing-key";

/// Deepest nesting of field tables and arrays the guard lets through.
pub const MAX_DEPTH: usize = 8;

/// Largest frame the guard buffers (the broker never sends more than the
/// negotiated `frame_max`, 128 KiB by default; bodies come in many frames).
const MAX_FRAME: usize = 16 * 1024 * 1024;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_END: u8 = 0xCE;
const CLASS_BASIC: u16 = 60;

/// Why a frame's content fails the strict parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem(pub(crate) String);

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Problem> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| Problem(format!("{what}: truncated")))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, Problem> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, Problem> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, Problem> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn short_str(&mut self, what: &str) -> Result<&'a str, Problem> {
        let n = self.u8(what)? as usize;
        let b = self.take(n, what)?;
        std::str::from_utf8(b).map_err(|_| Problem(format!("{what}: not UTF-8")))
    }

    fn long_bytes(&mut self, what: &str) -> Result<&'a [u8], Problem> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// Checks one field value of type `tag` the way lapin will parse it.
fn value(r: &mut Reader<'_>, tag: u8, depth: usize) -> Result<(), Problem> {
    let fixed = match tag {
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => 0,
        b'S' | b'x' => {
            r.long_bytes("string value")?;
            return Ok(());
        }
        b'F' => return table(r, depth + 1),
        b'A' => return array(r, depth + 1),
        other => return Err(Problem(format!("unknown field type {other:#04x}"))),
    };
    r.take(fixed, "field value")?;
    Ok(())
}

fn nested<'a>(r: &mut Reader<'a>, depth: usize, what: &str) -> Result<Reader<'a>, Problem> {
    if depth > MAX_DEPTH {
        return Err(Problem(format!("{what} nested deeper than {MAX_DEPTH}")));
    }
    Ok(Reader::new(r.long_bytes(what)?))
}

fn table(r: &mut Reader<'_>, depth: usize) -> Result<(), Problem> {
    let mut t = nested(r, depth, "field table")?;
    while !t.is_empty() {
        t.short_str("header name")?;
        let tag = t.u8("field type")?;
        value(&mut t, tag, depth)?;
    }
    Ok(())
}

fn array(r: &mut Reader<'_>, depth: usize) -> Result<(), Problem> {
    let mut a = nested(r, depth, "field array")?;
    while !a.is_empty() {
        let tag = a.u8("field type")?;
        value(&mut a, tag, depth)?;
    }
    Ok(())
}

/// The basic properties in flag order (bit 15 first) and how each is read.
const PROPERTIES: [(&str, u8); 14] = [
    ("content_type", b's'),
    ("content_encoding", b's'),
    ("headers", b'F'),
    ("delivery_mode", 1),
    ("priority", 1),
    ("correlation_id", b's'),
    ("reply_to", b's'),
    ("expiration", b's'),
    ("message_id", b's'),
    ("timestamp", 8),
    ("type", b's'),
    ("user_id", b's'),
    ("app_id", b's'),
    ("cluster_id", b's'),
];

/// Checks the payload of a content header frame; returns the delivery mode
/// when one was set, so a rewrite can keep it.
fn content_header(payload: &[u8]) -> Result<(), Problem> {
    let mut r = Reader::new(payload);
    let class = r.u16("class id")?;
    r.take(10, "weight and body size")?;
    let flags = r.u16("property flags")?;
    if class != CLASS_BASIC {
        return Ok(());
    }
    if flags & 0b11 != 0 {
        return Err(Problem("property flags: reserved bits set".into()));
    }
    for (i, (name, kind)) in PROPERTIES.iter().enumerate() {
        if flags & (1 << (15 - i)) == 0 {
            continue;
        }
        match kind {
            b's' => {
                r.short_str(name)?;
            }
            b'F' => table(&mut r, 1)?,
            n => {
                r.take(*n as usize, name)?;
            }
        }
    }
    if !r.is_empty() {
        return Err(Problem("trailing bytes after properties".into()));
    }
    Ok(())
}

fn delivery_mode_of(payload: &[u8]) -> Option<u8> {
    // Only called after a failed strict parse: read leniently up to the mode.
    let mut r = Reader::new(payload);
    r.take(12, "").ok()?;
    let flags = r.u16("").ok()?;
    if flags & (1 << 12) == 0 {
        return None;
    }
    for (i, (_, kind)) in PROPERTIES.iter().enumerate().take(3) {
        if flags & (1 << (15 - i)) == 0 {
            continue;
        }
        match kind {
            b's' => {
                let n = r.u8("").ok()? as usize;
                r.take(n, "").ok()?;
            }
            _ => {
                r.long_bytes("").ok()?;
            }
        }
    }
    r.u8("").ok().filter(|m| *m == 1 || *m == 2)
}

/// A content header payload with only the malformed marker (and the delivery
/// mode when it could be read), for the body of `payload`.
fn rewritten_header(payload: &[u8], why: &Problem) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + why.0.len());
    out.extend_from_slice(&payload[..12.min(payload.len())]);
    out.resize(12, 0);
    let mode = delivery_mode_of(payload);
    let flags: u16 = (1 << 13) | if mode.is_some() { 1 << 12 } else { 0 };
    out.extend_from_slice(&flags.to_be_bytes());
    let mut entry = Vec::new();
    entry.push(MALFORMED_HEADER.len() as u8);
    entry.extend_from_slice(MALFORMED_HEADER.as_bytes());
    entry.push(b'S');
    let text = why.0.as_bytes();
    entry.extend_from_slice(&(text.len() as u32).to_be_bytes());
    entry.extend_from_slice(text);
    out.extend_from_slice(&(entry.len() as u32).to_be_bytes());
    out.extend_from_slice(&entry);
    if let Some(m) = mode {
        out.push(m);
    }
    out
}

/// For `basic.deliver`, `basic.get-ok` and `basic.return`: the byte range of
/// the routing key when the exchange or routing key is not UTF-8.
fn bad_routing_key(payload: &[u8]) -> Option<(usize, usize)> {
    let mut r = Reader::new(payload);
    let class = r.u16("").ok()?;
    let method = r.u16("").ok()?;
    if class != CLASS_BASIC {
        return None;
    }
    match method {
        // deliver: consumer-tag, delivery-tag, redelivered
        60 => {
            let n = r.u8("").ok()? as usize;
            r.take(n + 9, "").ok()?;
        }
        // get-ok: delivery-tag, redelivered
        71 => {
            r.take(9, "").ok()?;
        }
        // return: reply-code, reply-text
        50 => {
            r.take(2, "").ok()?;
            let n = r.u8("").ok()? as usize;
            r.take(n, "").ok()?;
        }
        _ => return None,
    }
    let exchange_ok = r.short_str("").is_ok();
    let start = r.pos;
    let n = r.u8("").ok()? as usize;
    let key = r.take(n, "").ok()?;
    if exchange_ok && std::str::from_utf8(key).is_ok() {
        return None;
    }
    Some((start, r.pos))
}

/// Checks one whole frame (`type`, channel, size, payload, end marker) and
/// returns it unchanged, or rewritten when lapin could not parse it.
pub(crate) fn check_frame(frame: &[u8]) -> Vec<u8> {
    let payload = &frame[7..frame.len() - 1];
    let rebuilt = |payload: &[u8]| {
        let mut out = Vec::with_capacity(payload.len() + 8);
        out.extend_from_slice(&frame[..3]);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(FRAME_END);
        out
    };
    match frame[0] {
        FRAME_HEADER => match content_header(payload) {
            Ok(()) => frame.to_vec(),
            Err(why) => {
                tracing::debug!(problem = ?why.0, "malformed message properties rewritten");
                metrics::malformed_frame("properties");
                rebuilt(&rewritten_header(payload, &why))
            }
        },
        FRAME_METHOD => match bad_routing_key(payload) {
            None => frame.to_vec(),
            Some((start, end)) => {
                tracing::debug!("non-UTF-8 exchange or routing key rewritten");
                metrics::malformed_frame("routing-key");
                let mut p = payload[..start].to_vec();
                p.push(MALFORMED_ROUTING_KEY.len() as u8);
                p.extend_from_slice(MALFORMED_ROUTING_KEY.as_bytes());
                p.extend_from_slice(&payload[end..]);
                rebuilt(&p)
            }
        },
        _ => frame.to_vec(),
    }
}

/// Splits complete frames off the front of `buf`: returns how many bytes
/// they take, or an error when the stream is not AMQP frames.
fn next_frame(buf: &[u8]) -> Result<Option<usize>, Problem> {
    if buf.starts_with(b"AMQP") {
        // The broker answers a protocol mismatch with its own header.
        return Ok((buf.len() >= 8).then_some(8));
    }
    if buf.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size > MAX_FRAME {
        return Err(Problem(format!("frame of {size} bytes")));
    }
    let total = 7 + size + 1;
    if buf.len() < total {
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(Problem("frame end marker missing".into()));
    }
    Ok(Some(total))
}

/// Copies broker → truc, frame by frame through [`check_frame`].
async fn guard_stream<R, W>(mut from: R, mut to: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        let mut out = Vec::new();
        loop {
            match next_frame(&buf[used..]) {
                Ok(Some(len)) => {
                    let frame = &buf[used..used + len];
                    if frame.starts_with(b"AMQP") {
                        out.extend_from_slice(frame);
                    } else {
                        out.extend_from_slice(&check_frame(frame));
                    }
                    used += len;
                }
                Ok(None) => break,
                // Not AMQP framing: close the link (the broker redelivers).
                Err(p) => return Err(std::io::Error::other(p.0)),
            }
        }
        buf.drain(..used);
        if !out.is_empty() {
            to.write_all(&out).await?;
        }
    }
}

/// Where the guard connects: the broker's address, and TLS for `amqps://`.
pub(crate) struct Upstream {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Upstream {
    /// The broker of `uri`; for `amqps://` a TLS client that verifies the
    /// broker's certificate against `trust` and the URL's host name.
    pub(crate) async fn for_uri(uri: &AMQPUri, trust: &BrokerTls) -> Result<Self, AmqpError> {
        let host = uri.authority.host.as_str();
        let addr = tokio::net::lookup_host((host, uri.authority.port))
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| AmqpError::Connect(format!("cannot resolve broker host {host}")))?;
        let tls = match uri.scheme {
            AMQPScheme::AMQP => {
                trust.check_plaintext()?;
                None
            }
            AMQPScheme::AMQPS => {
                let mut roots = crate::core::pem::web_roots();
                if let Some(ca) = trust.ca_file() {
                    crate::core::pem::add_ca_file(&mut roots, ca)
                        .map_err(|e| AmqpError::Tls(format!("CA file {e}")))?;
                }
                let config = crate::core::pem::client_config(roots).map_err(AmqpError::Tls)?;
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| AmqpError::Tls(format!("broker host {host:?}: {e}")))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(Self { addr, tls })
    }
}

/// Joins `client` to the broker: truc's bytes go up unchanged, the broker's
/// come back through [`guard_stream`].
async fn join<S>(client: TcpStream, upstream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_rd, client_wr) = client.into_split();
    let (up_rd, mut up_wr) = tokio::io::split(upstream);
    let outbound = async move {
        let r = tokio::io::copy(&mut client_rd, &mut up_wr).await;
        let _ = up_wr.shutdown().await;
        r
    };
    let inbound = guard_stream(up_rd, client_wr);
    let _ = tokio::join!(outbound, inbound);
}

/// Starts a one-connection relay on a loopback port to `upstream`: lapin
/// connects to the returned address, and the first connection accepted is
/// joined to a fresh connection to the broker, guarded on the way back.
pub(crate) async fn relay(upstream: Upstream) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let accepted =
            tokio::time::timeout(std::time::Duration::from_secs(30), listener.accept()).await;
        drop(listener);
        let Ok(Ok((client, _))) = accepted else {
            return;
        };
        let _ = client.set_nodelay(true);
        let tcp = match TcpStream::connect(upstream.addr).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "guarded broker connection failed");
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        match upstream.tls {
            None => join(client, tcp).await,
            Some((connector, name)) => match connector.connect(name, tcp).await {
                Ok(tls) => join(client, tls).await,
                // lapin sees the connection close and reports the failure.
                Err(e) => tracing::warn!(error = %e, "TLS to the broker failed"),
            },
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 1];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(FRAME_END);
        f
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

    /// A basic content header with the given flags and raw property bytes.
    fn header(flags: u16, props: &[u8]) -> Vec<u8> {
        let mut p = CLASS_BASIC.to_be_bytes().to_vec();
        p.extend_from_slice(&0u16.to_be_bytes());
        p.extend_from_slice(&5u64.to_be_bytes());
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(props);
        frame(FRAME_HEADER, &p)
    }

    fn table(entries: &[(&[u8], u8, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, t, v) in entries {
            body.extend(short(k));
            body.push(*t);
            body.extend_from_slice(v);
        }
        long(&body)
    }

    fn marker(out: &[u8]) -> Option<String> {
        let s = String::from_utf8_lossy(out);
        s.find(MALFORMED_HEADER)
            .map(|i| s[i + MALFORMED_HEADER.len()..].to_string())
    }

    #[test]
    fn a_valid_header_passes_byte_for_byte() {
        let mut props = short(b"text/plain");
        props.extend(table(&[
            (b"lgsp-version", b'S', long(b"1")),
            (b"lgsp-subject", b'S', long("Công văn".as_bytes())),
            (
                b"n",
                b'F',
                table(&[(b"deep", b'A', long(&[b'I', 0, 0, 0, 7]))]),
            ),
        ]));
        props.push(2);
        props.extend(short(b"01JD0000000000000000000001"));
        let flags = (1 << 15) | (1 << 13) | (1 << 12) | (1 << 7);
        let f = header(flags, &props);
        assert_eq!(check_frame(&f), f);
    }

    #[test]
    fn invalid_utf8_in_message_id_content_type_or_header_name_is_rewritten() {
        let cases: Vec<(u16, Vec<u8>)> = vec![
            (1 << 7, short(b"id\xff\xfe")),
            (1 << 15, short(b"text/\xc3")),
            (1 << 13, table(&[(b"lgsp-\xffname", b'S', long(b"x"))])),
        ];
        for (flags, props) in cases {
            let out = check_frame(&header(flags | (1 << 12), &{
                // delivery mode comes after content-type/headers in flag order
                let mut p = props.clone();
                if flags & (1 << 7) != 0 {
                    // message_id comes after delivery_mode: put the mode first
                    p = vec![2];
                    p.extend(props.clone());
                } else {
                    p.push(2);
                }
                p
            }));
            let why = marker(&out).expect("rewritten");
            assert!(why.contains("not UTF-8"), "{why}");
            // delivery mode 2 (persistent) is kept, body size is kept
            assert_eq!(out[out.len() - 2], 2);
            assert_eq!(&out[11..19], &5u64.to_be_bytes());
            assert_eq!(content_header(&out[7..out.len() - 1]), Ok(()));
        }
    }

    #[test]
    fn a_nesting_bomb_is_rewritten_without_recursing() {
        let mut inner = long(b"");
        for _ in 0..5000 {
            let mut t = short(b"a");
            t.push(b'F');
            t.extend(inner);
            inner = long(&t);
        }
        let f = header(1 << 13, &inner);
        assert!(f.len() > 30_000);
        let out = check_frame(&f);
        let why = marker(&out).unwrap();
        assert!(why.contains("nested deeper than 8"), "{why}");
        assert!(out.len() < 200);
    }

    #[test]
    fn unknown_types_truncation_and_reserved_flags_are_rewritten() {
        for f in [
            header(1 << 13, &table(&[(b"k", b'Z', vec![])])),
            header(1 << 15, &[200, b'a']),
            header(1, &[]),
            header(1 << 6, &[1, 2, 3]),
        ] {
            assert!(marker(&check_frame(&f)).is_some());
        }
    }

    #[test]
    fn a_non_utf8_routing_key_in_a_delivery_is_replaced() {
        let mut p = CLASS_BASIC.to_be_bytes().to_vec();
        p.extend_from_slice(&60u16.to_be_bytes());
        p.extend(short(b"ctag"));
        p.extend_from_slice(&7u64.to_be_bytes());
        p.push(0);
        p.extend(short(b"lgsp.ingress"));
        p.extend(short(b"envelope.\xff"));
        let out = check_frame(&frame(FRAME_METHOD, &p));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(MALFORMED_ROUTING_KEY), "{text}");
        assert!(text.contains("lgsp.ingress"));
        // delivery tag kept
        assert!(out.windows(8).any(|w| w == 7u64.to_be_bytes()));
        let good = {
            let mut p = p.clone();
            let n = p.len();
            p.truncate(n - 11);
            p.extend(short(b"envelope.A"));
            frame(FRAME_METHOD, &p)
        };
        assert_eq!(check_frame(&good), good);
    }

    #[test]
    fn frames_are_split_whole() {
        let f = header(0, &[]);
        let mut two = f.clone();
        two.extend_from_slice(&f);
        assert_eq!(next_frame(&two).unwrap(), Some(f.len()));
        assert_eq!(next_frame(&f[..5]).unwrap(), None);
        let mut bad = f.clone();
        *bad.last_mut().unwrap() = 0;
        assert!(next_frame(&bad).is_err());
        assert_eq!(next_frame(b"AMQP\0\0\x09\x01").unwrap(), Some(8));
    }
}

//! Upload spaces for large documents, against a real hub and broker: a
//! source uploads a document in chunks (out of order, resumed), completes
//! it, and sends an envelope that names the space to an AMQP agency and an
//! HTTPS agency; each fetches the content with its own session (by ranges)
//! and confirms; then not a byte of it is left on disk. A gigabyte document
//! and a 50 MB body sent inline cross with the hub's memory bounded.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::gateway::{
    bearer, deliveries, get, http, open, post, post_json, post_status, Answer, WAIT,
};
use common::{envelope, next_within, status, TestHub};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use truc::auth::body_digest;
use truc::client::Credentials;
use truc::message::Message;

const CHUNK: usize = 1 << 20;

/// A hub whose spaces hold up to `max_document` bytes, `quota` per agency.
async fn hub(max_document: u64, quota: u64) -> (TestHub, String) {
    let ingress = format!(
        "[ingress]\nclock_skew = \"300s\"\nmax_body_bytes = 16777216\ndefault_priority = 0\n\
         [spaces]\nmax_document_bytes = {max_document}\nbytes_per_agency = {quota}\n"
    );
    TestHub::start_with_gateway("", &[("ingress.toml", &ingress)]).await
}

fn sha256(b: &[u8]) -> String {
    format!("sha256={}", hex::encode(Sha256::digest(b)))
}

/// Byte `i` of the test documents: not constant, not all text.
fn doc(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// `PUT` chunk `n` of `data` into space `id`.
async fn put_chunk(gw: &str, token: &str, id: &str, n: usize, data: &[u8]) -> Answer {
    let part = &data[n * CHUNK..((n + 1) * CHUNK).min(data.len())];
    http(
        gw,
        "PUT",
        &format!("/v1/spaces/{id}/chunks/{n}"),
        &bearer(token),
        part,
    )
    .await
}

/// Asks for a space for `data` with `token`: its id.
async fn ask_space(gw: &str, token: &str, data: &[u8]) -> String {
    let body = serde_json::json!({"size": data.len(), "digest": sha256(data)});
    let a = post_json(gw, token, "/v1/spaces", body).await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["id"].as_str().unwrap().to_owned()
}

/// `POST /v1/spaces/{id}/complete` with `token`.
async fn complete(gw: &str, token: &str, id: &str) -> Answer {
    let path = format!("/v1/spaces/{id}/complete");
    http(gw, "POST", &path, &bearer(token), b"").await
}

/// A space holding `data`, uploaded in order and completed: its id.
async fn upload(gw: &str, token: &str, data: &[u8]) -> String {
    let id = ask_space(gw, token, data).await;
    for n in 0..data.len().div_ceil(CHUNK) {
        assert_eq!(put_chunk(gw, token, &id, n, data).await.status, 200);
    }
    let a = complete(gw, token, &id).await;
    assert_eq!(a.status, 200, "{}", a.body);
    id
}

/// An envelope of `creds` to `to` whose content is `data` in space `id`.
fn naming(prefix: &str, creds: &Credentials, to: &str, id: &str, data: &[u8]) -> Message {
    envelope(to).body(b"").signed_with(prefix, creds, |m| {
        m.set_header("lgsp-space", id);
        m.set_header("lgsp-digest", sha256(data));
    })
}

/// Every file under `dir`, read whole.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

/// Waits until `dir` holds no file.
async fn wait_empty(dir: &Path) {
    let deadline = Instant::now() + WAIT;
    while !files(dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{:?} still holds {:?}",
            dir,
            files(dir).iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_in_a_space_reaches_amqp_and_https_agencies_then_leaves_no_byte() {
    let (mut hub, gw) = hub(64 << 20, 128 << 20).await;
    let src = hub.register("000.00.81.H41").await;
    let amqp = hub.register("000.00.82.H41").await;
    let web = hub.register("000.00.83.H41").await;
    let other = hub.register("000.00.84.H41").await;
    let mut dest = hub.client(&amqp).await;
    let mut inbox = dest.inbox(8).await.unwrap();
    let (t_src, t_web, t_other) = (
        open(&gw, &src).await,
        open(&gw, &web).await,
        open(&gw, &other).await,
    );
    let spaces_dir = hub.data.path().join("data").join("spaces");

    // 3.5 MiB: four chunks, the last one short.
    let data = doc(3 * CHUNK + CHUNK / 2, 0x5a);
    let id = ask_space(&gw, &t_src, &data).await;
    let a = get(&gw, &t_src, &format!("/v1/spaces/{id}")).await;
    assert_eq!(
        (a.body["chunks"].as_u64(), a.body["chunk_size"].as_u64()),
        (Some(4), Some(CHUNK as u64))
    );
    assert_eq!(a.body["missing"], serde_json::json!([0, 1, 2, 3]));

    // Out of order, interrupted: the space says what is missing.
    for n in [3, 1] {
        let a = put_chunk(&gw, &t_src, &id, n, &data).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let a = complete(&gw, &t_src, &id).await;
    assert_eq!(a.status, 409, "{}", a.body);
    let a = get(&gw, &t_src, &format!("/v1/spaces/{id}")).await;
    assert_eq!(a.body["missing"], serde_json::json!([0, 2]), "{}", a.body);
    // Not the owner: as if it did not exist. A chunk of the wrong length: refused.
    assert_eq!(put_chunk(&gw, &t_other, &id, 0, &data).await.status, 404);
    assert_eq!(
        get(&gw, &t_other, &format!("/v1/spaces/{id}")).await.status,
        404
    );
    let a = http(
        &gw,
        "PUT",
        &format!("/v1/spaces/{id}/chunks/0"),
        &bearer(&t_src),
        b"short",
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    // Resumed; a chunk sent twice (a timeout, say) replaces itself.
    for n in [0, 2, 2] {
        assert_eq!(put_chunk(&gw, &t_src, &id, n, &data).await.status, 200);
    }
    let a = complete(&gw, &t_src, &id).await;
    assert_eq!(
        (a.status, &a.body["complete"]),
        (200, &serde_json::json!(true)),
        "{}",
        a.body
    );

    // Sealed at rest: no 64-byte run of the document is in any file.
    let on_disk = files(&spaces_dir);
    assert_eq!(on_disk.len(), 4, "one file per chunk");
    let probe = &data[CHUNK + 1000..CHUNK + 1064];
    assert!(on_disk
        .iter()
        .all(|(_, b)| !b.windows(64).any(|w| w == probe)));

    // The envelope names the space; its body is empty, its digest the document's.
    let space_envelope = |id: &str| {
        envelope("000.00.82.H41")
            .also_to("000.00.83.H41")
            .body(b"")
            .signed_with(&hub.prefix, &src, |m| {
                m.set_header("lgsp-space", id);
                m.set_header("lgsp-digest", sha256(&data));
            })
    };
    // A body beside a space is refused.
    let both = envelope("000.00.82.H41")
        .body(b"x")
        .signed_with(&hub.prefix, &src, |m| {
            m.set_header("lgsp-space", id.as_str());
        });
    let a = post(&gw, &t_src, &both).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (400, Some("malformed")),
        "{}",
        a.body
    );
    // Another agency cannot name it.
    let theirs = envelope("000.00.82.H41")
        .body(b"")
        .signed_with(&hub.prefix, &other, |m| {
            m.set_header("lgsp-space", id.as_str());
            m.set_header("lgsp-digest", sha256(&data));
        });
    let a = post(&gw, &t_other, &theirs).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (400, Some("malformed")),
        "{}",
        a.body
    );
    let m = space_envelope(&id);
    let a = post(&gw, &t_src, &m).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let mid = m.message_id.clone().unwrap();
    // One space, one envelope.
    let a = post(&gw, &t_src, &space_envelope(&id)).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (400, Some("malformed")),
        "{}",
        a.body
    );
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("rejected notice"),
        "{}",
        a.body
    );

    // The AMQP agency: a hub-signed delivery with an empty body, naming the space.
    let got = next_within(&mut inbox, WAIT).await.expect("the delivery");
    let r = dest.receive(got.clone()).expect("hub-signed");
    assert_eq!(r.content_space.as_deref(), Some(id.as_str()));
    assert!(got.message.body.is_empty());
    assert_eq!(
        got.message.header("lgsp-digest"),
        Some(sha256(&data).as_str())
    );
    // It fetches with a session of its own, in two ranges (a resumed download).
    let t_amqp = open(&gw, &amqp).await;
    let path = format!("/v1/spaces/{id}/content");
    let mut h = bearer(&t_amqp);
    h.push(("Range".into(), "bytes=0-999999".into()));
    let first = http(&gw, "GET", &path, &h, b"").await;
    assert_eq!(first.status, 206, "{}", first.head);
    assert_eq!(
        first.header("content-range").as_deref(),
        Some(format!("bytes 0-999999/{}", data.len()).as_str())
    );
    let mut h = bearer(&t_amqp);
    h.push(("Range".into(), "bytes=1000000-".into()));
    let rest = http(&gw, "GET", &path, &h, b"").await;
    assert_eq!(rest.status, 206);
    let whole = [first.raw, rest.raw].concat();
    assert_eq!(
        sha256(&whole),
        sha256(&data),
        "the document, checked against lgsp-digest"
    );
    // An agency the envelope was not for cannot fetch it.
    assert_eq!(get(&gw, &t_other, &path).await.status, 404);
    inbox.ack(got.delivery_tag).await.unwrap();
    dest.send_status(&mid, "01", Some(&src.code), None)
        .await
        .unwrap();

    // The HTTPS agency: listed, fetched whole, confirmed.
    let listed = deliveries(&gw, &t_web, 10).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0]["headers"]["lgsp-content-space"],
        id.as_str(),
        "{}",
        listed[0]
    );
    let a = get(&gw, &t_web, &path).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("lgsp-digest"), Some(sha256(&data)));
    assert_eq!(a.raw, data);
    // Not gone while a destination may still need it.
    assert_eq!(files(&spaces_dir).len(), 4);
    let st = status(&mid, "01")
        .source(&src.code)
        .signed(&hub.prefix, &web);
    let a = post_status(&gw, &t_web, &st).await;
    assert!(a.status < 300, "{}", a.body);

    // Every destination confirmed: the space is gone, and no byte of it
    // (plain or sealed) is anywhere in the hub's data directory.
    wait_empty(&spaces_dir).await;
    assert_eq!(get(&gw, &t_web, &path).await.status, 404);
    assert_eq!(
        get(&gw, &t_src, &format!("/v1/spaces/{id}")).await.status,
        404
    );
    for (p, b) in files(hub.data.path()) {
        assert!(
            !b.windows(64).any(|w| w == probe),
            "{p:?} holds the document"
        );
        for (_, sealed) in &on_disk {
            assert!(
                !b.windows(64).any(|w| w == &sealed[100..164]),
                "{p:?} holds sealed content"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_sizes_and_refused_bodies_leave_nothing_behind() {
    let (mut hub, gw) = hub(8 << 20, 12 << 20).await;
    let src = hub.register("000.00.85.H41").await;
    let _dest = hub.register("000.00.86.H41").await;
    let token = open(&gw, &src).await;
    let spaces_dir = hub.data.path().join("data").join("spaces");
    let ask = |size: u64| {
        post_json(
            &gw,
            &token,
            "/v1/spaces",
            serde_json::json!({"size": size, "digest": sha256(b"x")}),
        )
    };
    let a = ask((8 << 20) + 1).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (413, Some("too-large")),
        "{}",
        a.body
    );
    let a = post_json(
        &gw,
        &token,
        "/v1/spaces",
        serde_json::json!({"size": 10, "digest": "md5=abc"}),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let big = ask(8 << 20).await;
    assert_eq!(big.status, 201);
    let a = ask(5 << 20).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (507, Some("too-large")),
        "{}",
        a.body
    );
    // Given up: deleted by its owner, the quota is free again.
    let id = big.body["id"].as_str().unwrap();
    let a = http(
        &gw,
        "DELETE",
        &format!("/v1/spaces/{id}"),
        &bearer(&token),
        b"",
    )
    .await;
    assert_eq!(a.status, 204);
    assert_eq!(ask(5 << 20).await.status, 201);

    // A chunk number that is not one: the same JSON error as any refusal.
    let a = http(
        &gw,
        "PUT",
        &format!("/v1/spaces/{id}/chunks/-1"),
        &bearer(&token),
        b"x",
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"].is_string(),
        "{}",
        String::from_utf8_lossy(&a.raw)
    );

    // A document that does not match its digest is deleted at completion.
    let data = doc(1000, 1);
    let a = post_json(
        &gw,
        &token,
        "/v1/spaces",
        serde_json::json!({"size": 1000, "digest": sha256(b"other")}),
    )
    .await;
    let id = a.body["id"].as_str().unwrap().to_owned();
    assert_eq!(put_chunk(&gw, &token, &id, 0, &data).await.status, 200);
    let a = complete(&gw, &token, &id).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (422, Some("digest-mismatch")),
        "{}",
        a.body
    );
    assert!(!spaces_dir.join(&id).exists());

    // A large body sent inline: over the largest document, refused before
    // it is read; within it but not matching its digest, refused by the
    // router (with a rejected notice) and its space deleted.
    let over = envelope("000.00.86.H41")
        .body(vec![7u8; (8 << 20) + 1])
        .signed(&hub.prefix, &src);
    let a = post(&gw, &token, &over).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (413, Some("too-large")),
        "{}",
        a.body
    );
    let body = doc(6 << 20, 3);
    let wrong = envelope("000.00.86.H41")
        .body(&body)
        .signed_with(&hub.prefix, &src, |m| {
            m.set_header("lgsp-digest", sha256(b"not this"));
        });
    let before = files(&spaces_dir).len();
    let a = post(&gw, &token, &wrong).await;
    assert_eq!(
        (a.status, a.body["reason"].as_str()),
        (422, Some("digest-mismatch")),
        "{}",
        a.body
    );
    assert_eq!(
        files(&spaces_dir).len(),
        before,
        "the refused body's space is gone"
    );
    // A body shorter than it declared is refused and leaves nothing.
    let mut s = tokio::net::TcpStream::connect(&gw).await.unwrap();
    let ok = envelope("000.00.86.H41")
        .body(&body)
        .signed(&hub.prefix, &src);
    let mut req = format!("POST /v1/envelopes HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nAuthorization: Bearer {token}\r\n", body.len());
    for (k, v) in common::gateway::carried(&ok) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(&body[..CHUNK + 10]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await;
    let deadline = Instant::now() + WAIT;
    while files(&spaces_dir).len() != before {
        assert!(Instant::now() < deadline, "a cut body left its space");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The digest over the empty body is no way around the check.
    assert_ne!(body_digest(b""), sha256(&body));
}

/// The hub's resident memory and its peak (kB), from /proc.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Streams `GET path` (the whole answer body through `sha256`, never
/// held): status and digest.
async fn fetch_hashed(gw: &str, token: &str, path: &str) -> (u16, String, u64) {
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut head = Vec::new();
    let mut hasher = Sha256::new();
    let mut n_body = 0u64;
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("data in time")
            .unwrap();
        if n == 0 {
            break;
        }
        if n_body == 0 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = head.split_off(end + 4);
                hasher.update(&rest);
                n_body += rest.len() as u64;
            }
        } else {
            hasher.update(&buf[..n]);
            n_body += n as u64;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        format!("sha256={}", hex::encode(hasher.finalize())),
        n_body,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_document_and_a_50_mb_inline_body_cross_in_bounded_memory() {
    const GB: usize = 1 << 30;
    let (mut hub, gw) = hub(GB as u64, 2 * GB as u64).await;
    let src = hub.register("000.00.87.H41").await;
    let web = hub.register("000.00.88.H41").await;
    let (t_src, t_web) = (open(&gw, &src).await, open(&gw, &web).await);
    let spaces_dir = hub.data.path().join("data").join("spaces");
    // One chunk of pattern, stamped with its number: a gigabyte never held.
    let block = doc(CHUNK, 9);
    let chunk = |n: usize| {
        let mut c = block.clone();
        c[..8].copy_from_slice(&(n as u64).to_be_bytes());
        c
    };
    let mut whole = Sha256::new();
    for n in 0..GB / CHUNK {
        whole.update(chunk(n));
    }
    let digest = format!("sha256={}", hex::encode(whole.finalize()));
    let (rss_before, _) = memory(hub.pid());
    let started = Instant::now();

    let a = post_json(
        &gw,
        &t_src,
        "/v1/spaces",
        serde_json::json!({"size": GB, "digest": digest}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    for n in 0..GB / CHUNK {
        let path = format!("/v1/spaces/{id}/chunks/{n}");
        let a = http(&gw, "PUT", &path, &bearer(&t_src), &chunk(n)).await;
        assert_eq!(a.status, 200, "chunk {n}: {}", a.body);
    }
    eprintln!("1 GiB uploaded in {:?}", started.elapsed());
    let a = complete(&gw, &t_src, &id).await;
    assert_eq!(a.status, 200, "{}", a.body);
    eprintln!("completed at {:?}", started.elapsed());
    let m = envelope("000.00.88.H41")
        .body(b"")
        .signed_with(&hub.prefix, &src, |m| {
            m.set_header("lgsp-space", id.as_str());
            m.set_header("lgsp-digest", digest.clone());
        });
    let a = post(&gw, &t_src, &m).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let (code, got, len) = fetch_hashed(&gw, &t_web, &format!("/v1/spaces/{id}/content")).await;
    assert_eq!((code, len), (200, GB as u64));
    assert_eq!(got, digest);
    eprintln!("fetched at {:?}", started.elapsed());

    // 50 MB inline: the hub streams it into a space of its own.
    let body = doc(50_000_000, 4);
    let inline = envelope("000.00.88.H41")
        .body(&body)
        .signed(&hub.prefix, &src);
    let a = post(&gw, &t_src, &inline).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let listed = deliveries(&gw, &t_web, 10).await;
    let d = listed
        .iter()
        .find(|d| d["message_id"] == inline.message_id.clone().unwrap().as_str())
        .expect("the inline envelope listed");
    let space = d["headers"]["lgsp-content-space"]
        .as_str()
        .expect("its content in a space");
    let (code, got, len) = fetch_hashed(&gw, &t_web, &format!("/v1/spaces/{space}/content")).await;
    assert_eq!((code, len), (200, body.len() as u64));
    assert_eq!(got, sha256(&body));

    eprintln!("50 MB inline sent and fetched at {:?}", started.elapsed());
    let (_, peak) = memory(hub.pid());
    let grew_mb = (peak.saturating_sub(rss_before)) as f64 / 1024.0;
    eprintln!(
        "hub RSS before {} kB, peak {} kB: grew {grew_mb:.1} MB",
        rss_before, peak
    );
    assert!(grew_mb < 50.0, "the hub's memory grew {grew_mb:.1} MB");

    // Both confirmed: both spaces deleted.
    for mid in [
        m.message_id.clone().unwrap(),
        inline.message_id.clone().unwrap(),
    ] {
        let st = status(&mid, "01")
            .source(&src.code)
            .signed(&hub.prefix, &web);
        assert!(post_status(&gw, &t_web, &st).await.status < 300);
    }
    wait_empty(&spaces_dir).await;
}

/// The gateway address `hub` listens on.
fn gateway_of(hub: &TestHub) -> String {
    std::fs::read_to_string(hub.data.path().join("data").join("gateway.addr"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_store_and_one_spaces_directory_serve_the_same_spaces() {
    let shared = tempfile::tempdir().unwrap();
    let mut a = TestHub::on_postgres();
    let mut text = std::fs::read_to_string(a.config_file()).unwrap();
    text.push_str(&format!(
        "gateway_addr = \"127.0.0.1:0\"\nspaces_dir = \"{}\"\n",
        shared.path().display()
    ));
    std::fs::write(a.config_file(), text).unwrap();
    a.spawn().await;
    let src = a.register("000.00.91.H41").await;
    let dst = a.register("000.00.92.H41").await;
    let mut b = a.sibling();
    b.agencies = a.agencies.clone();
    b.spawn().await;
    let (gw_a, gw_b) = (gateway_of(&a), gateway_of(&b));
    let (t_src, t_dst) = (open(&gw_a, &src).await, open(&gw_b, &dst).await);

    // Asked for and partly uploaded on one instance, finished on the other.
    let data = doc(2 * CHUNK + 17, 0x33);
    let id = ask_space(&gw_a, &t_src, &data).await;
    assert_eq!(put_chunk(&gw_a, &t_src, &id, 0, &data).await.status, 200);
    let t_src_b = open(&gw_b, &src).await;
    let seen = get(&gw_b, &t_src_b, &format!("/v1/spaces/{id}")).await;
    assert_eq!(
        seen.body["missing"],
        serde_json::json!([1, 2]),
        "{}",
        seen.body
    );
    for n in [1, 2] {
        assert_eq!(put_chunk(&gw_b, &t_src_b, &id, n, &data).await.status, 200);
    }
    assert_eq!(complete(&gw_a, &t_src, &id).await.status, 200);
    let m = naming(&a.prefix, &src, "000.00.92.H41", &id, &data);
    assert_eq!(post(&gw_a, &t_src, &m).await.status, 202);

    // The destination, on the other instance, fetches it and confirms.
    let got = get(&gw_b, &t_dst, &format!("/v1/spaces/{id}/content")).await;
    assert_eq!((got.status, sha256(&got.raw)), (200, sha256(&data)));
    let st = status(&m.message_id.clone().unwrap(), "01")
        .source(&src.code)
        .signed(&a.prefix, &dst);
    assert!(post_status(&gw_b, &t_dst, &st).await.status < 300);
    wait_empty(shared.path()).await;
    for h in [&gw_a, &gw_b] {
        assert_eq!(
            get(h, &t_src_b, &format!("/v1/spaces/{id}")).await.status,
            404
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_adapter_fetches_a_space_before_it_confirms_and_an_amqp_source_names_one() {
    let (mut hub, gw) = hub(64 << 20, 128 << 20).await;
    let src = hub.register("000.00.93.H41").await;
    let dst = hub.register("000.00.94.H41").await;
    let token = open(&gw, &src).await;
    let spaces_dir = hub.data.path().join("data").join("spaces");
    let data = doc(2 * CHUNK + CHUNK / 2, 0x77);
    let id = upload(&gw, &token, &data).await;
    // The envelope goes over AMQP.
    let m = naming(&hub.prefix, &src, "000.00.94.H41", &id, &data);
    hub.client(&src).await.publish(&m).await.unwrap();
    hub.wait_depth("inbox.000.00.94.H41", 1).await;

    let recv = |extra: &[&str]| {
        let mut args = vec![
            "recv",
            "000.00.94.H41",
            "--access-key",
            &dst.access_key,
            "--secret",
            &dst.secret,
            "--count",
            "1",
            "--idle",
            "10s",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    // Without a gateway it cannot check the document: left queued, exit 8.
    let args = recv(&[]);
    let o = hub.cli_expect(&args.iter().map(String::as_str).collect::<Vec<_>>(), 8);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&id),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    hub.wait_depth("inbox.000.00.94.H41", 1).await;
    assert_eq!(files(&spaces_dir).len(), 3);

    // With it: fetched, checked, stored, confirmed; then the space is gone.
    let out = hub.data.path().join("received");
    let url = format!("http://{gw}");
    let args = recv(&["--gateway", &url, "--out", out.to_str().unwrap()]);
    let o = hub.cli_expect(&args.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("{} bytes", data.len())),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let stored =
        std::fs::read(out.join(format!("000.00.93.H41_{}", m.message_id.clone().unwrap())))
            .unwrap();
    assert!(stored == data, "the stored document is the one sent");
    wait_empty(&spaces_dir).await;

    // `truc send --gateway`: the file goes into a space, the envelope over AMQP.
    let file = hub.data.path().join("scan.pdf");
    let scan = doc(3 * CHUNK + 5, 0x21);
    std::fs::write(&file, &scan).unwrap();
    let o = hub.cli_expect(
        &[
            "send",
            "--from",
            "000.00.93.H41",
            "--to",
            "000.00.94.H41",
            "--file",
            file.to_str().unwrap(),
            "--access-key",
            &src.access_key,
            "--secret",
            &src.secret,
            "--gateway",
            &url,
        ],
        0,
    );
    let sent = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(sent.contains("accepted"), "{sent}");
    let id = sent.lines().next().unwrap().trim().to_owned();
    let o = hub.cli_expect(&args.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&id),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(std::fs::read(out.join(format!("000.00.93.H41_{id}"))).unwrap() == scan);
    wait_empty(&spaces_dir).await;
}

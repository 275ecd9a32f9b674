//! Store integrity against the real broker: a hub that accepted envelopes
//! and wrote audit entries is stopped, its store is damaged (bytes flipped,
//! truncated), rolled back (an older copy swapped in, with and without its
//! checkpoint file) or rewritten (an audit entry edited and the chain
//! recomputed, as someone with file access but without the master key
//! could); each start is refused naming the problem, and `--accept-loss`
//! starts and records the loss in the audit log.

mod common;

use std::path::{Path, PathBuf};

use common::{envelope, stdout, TestHub};
use sha2::{Digest, Sha256};

const SRC: &str = "000.00.31.H41";
const DST: &str = "000.00.32.H41";

/// Registers a source and a destination, sends `n` envelopes (delivered),
/// and returns how many audit entries the hub holds.
async fn traffic(hub: &mut TestHub, from: usize, n: usize) -> u64 {
    let creds = if hub.agencies.is_empty() {
        hub.register(DST).await;
        let c = hub.register(SRC).await;
        std::fs::write(
            hub.data.path().join("src.json"),
            serde_json::to_vec(&c).unwrap(),
        )
        .unwrap();
        c
    } else {
        serde_json::from_slice(&std::fs::read(hub.data.path().join("src.json")).unwrap()).unwrap()
    };
    let client = hub.client(&creds).await;
    for i in from..from + n {
        client
            .send(
                &envelope(DST)
                    .id(format!("INTEGRITY-{i:05}"))
                    .body(format!("body {i}"))
                    .build(),
            )
            .await
            .unwrap();
    }
    client.close().await;
    hub.wait_depth(&format!("inbox.{DST}"), (from + n) as u32)
        .await;
    audit_entries(hub).await.len() as u64
}

/// Every audit entry (`truc audit tail --json`).
async fn audit_entries(hub: &TestHub) -> Vec<serde_json::Value> {
    let o = hub.cli_expect(&["audit", "tail", "-n", "10000", "--json"], 0);
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn store_dir(hub: &TestHub) -> PathBuf {
    hub.data.path().join("data/db")
}

fn sled_file(hub: &TestHub) -> PathBuf {
    store_dir(hub).join("db")
}

fn anchor_file(hub: &TestHub) -> PathBuf {
    hub.data.path().join("data/store.anchor")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// `--accept-loss` starts, the loss is one `store-loss-accepted` entry
/// naming `what`, and the next plain start is accepted.
async fn accept_loss(hub: &mut TestHub, what: &str) {
    hub.spawn_accepting_loss().await;
    let entries = audit_entries(hub).await;
    let losses: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["kind"] == "store-loss-accepted")
        .collect();
    assert!(!losses.is_empty(), "no loss recorded: {entries:?}");
    let problem = losses[0]["fields"]["problem"].as_str().unwrap();
    assert!(problem.contains(what), "{problem}");
    assert!(
        !losses[0]["fields"]["expected"].as_str().unwrap().is_empty()
            && !losses[0]["fields"]["found"].as_str().unwrap().is_empty(),
        "{:?}",
        losses[0]
    );
    assert_eq!(hub.terminate().code(), Some(0));
    // Settled: a plain start goes on from the new anchor.
    hub.spawn().await;
    hub.cli_expect(&["audit", "verify"], 0);
}

fn refused_naming(hub: &TestHub, what: &str) -> String {
    let err = hub.serve_refused();
    assert!(err.contains("store integrity"), "{err}");
    assert!(err.contains(what), "{err}");
    assert!(err.contains("--accept-loss"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A damaged store: the start is refused with a clear message (no panic),
/// and `--accept-loss` starts and records the loss in the audit log.
async fn refused_as_damaged_then_accepted(hub: &mut TestHub) {
    let err = hub.serve_refused();
    assert!(err.contains("store integrity"), "{err}");
    assert!(
        err.contains("does not open") || err.contains("behind its checkpoint"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    hub.spawn_accepting_loss().await;
    let entries = audit_entries(hub).await;
    assert!(
        entries.iter().any(|e| e["kind"] == "store-loss-accepted"),
        "{entries:?}"
    );
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_the_store_refuse_the_start() {
    let mut hub = TestHub::start().await;
    assert!(traffic(&mut hub, 0, 30).await >= 32);
    assert_eq!(hub.terminate().code(), Some(0));
    // 20 bytes flipped in the middle of what sled wrote.
    let path = sled_file(&hub);
    let mut bytes = std::fs::read(&path).unwrap();
    let used = bytes.iter().rposition(|b| *b != 0).unwrap();
    for b in &mut bytes[used / 2..used / 2 + 20] {
        *b ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
    refused_as_damaged_then_accepted(&mut hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_truncated_to_half_refuses_the_start() {
    let mut hub = TestHub::start().await;
    assert!(traffic(&mut hub, 0, 30).await >= 32);
    assert_eq!(hub.terminate().code(), Some(0));
    let path = sled_file(&hub);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    refused_as_damaged_then_accepted(&mut hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_of_the_store_refuses_the_start() {
    let mut hub = TestHub::start().await;
    traffic(&mut hub, 0, 10).await;
    assert_eq!(hub.terminate().code(), Some(0));
    let old = hub.data.path().join("old");
    copy_dir(&store_dir(&hub), &old.join("db"));
    std::fs::copy(anchor_file(&hub), old.join("store.anchor")).unwrap();
    hub.spawn().await;
    traffic(&mut hub, 10, 10).await;
    assert_eq!(hub.terminate().code(), Some(0));

    // The older store alone: the checkpoint file sees it.
    std::fs::remove_dir_all(store_dir(&hub)).unwrap();
    copy_dir(&old.join("db"), &store_dir(&hub));
    let err = refused_naming(&hub, "behind its checkpoint");
    assert!(err.contains("store.anchor"), "{err}");
    // The older store with its own checkpoint file: the broker's copy sees it.
    std::fs::copy(old.join("store.anchor"), anchor_file(&hub)).unwrap();
    let err = refused_naming(&hub, "behind its checkpoint");
    assert!(err.contains("broker queue"), "{err}");
    // Refused starts left the anchors as they were.
    refused_naming(&hub, "broker queue");
    accept_loss(&mut hub, "behind its checkpoint").await;
}

/// The stored form of an audit entry, as in `state::audit`: version byte,
/// then bincode of `Sealed { body: Vec<u8>, hash: [u8; 32] }`; the body is
/// a version byte then bincode of `Entry { seq, at_ms, prev: [u8; 32], event }`.
fn sealed_parts(v: &[u8]) -> (Vec<u8>, [u8; 32]) {
    assert_eq!(v[0], 1);
    let len = u64::from_le_bytes(v[1..9].try_into().unwrap()) as usize;
    let body = v[9..9 + len].to_vec();
    let hash: [u8; 32] = v[9 + len..9 + len + 32].try_into().unwrap();
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&body)), hash);
    (body, hash)
}

fn sealed(body: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let hash: [u8; 32] = Sha256::digest(body).into();
    let mut v = vec![1u8];
    v.extend_from_slice(&(body.len() as u64).to_le_bytes());
    v.extend_from_slice(body);
    v.extend_from_slice(&hash);
    (v, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_audit_chain_is_caught_by_the_anchor() {
    let mut hub = TestHub::start().await;
    let n = traffic(&mut hub, 0, 5).await;
    hub.cli_expect(&["audit", "verify"], 0);
    assert_eq!(hub.terminate().code(), Some(0));

    // As an attacker with file access but no master key: change the first
    // `accepted` entry's message id, recompute its hash and every later
    // link, and the head kept in `meta`. The chain alone still verifies.
    let store = truc::store::Store::open(&hub.data.path().join("data")).unwrap();
    let mut prev: Option<[u8; 32]> = None;
    let mut edited = None;
    for seq in 1..=n {
        let k = seq.to_be_bytes();
        let (mut body, _) = sealed_parts(&store.audit().get(k).unwrap().unwrap());
        if let Some(p) = prev {
            body[17..49].copy_from_slice(&p);
        } else if let Some(pos) = body.windows(15).position(|w| w == b"INTEGRITY-00002") {
            body[pos + 14] = b'9';
            edited = Some(seq);
        }
        if edited.is_some() {
            let (v, hash) = sealed(&body);
            store.audit().insert(k, v).unwrap();
            prev = Some(hash);
        }
    }
    let edited = edited.expect("entry found");
    let mut head = n.to_be_bytes().to_vec();
    head.extend_from_slice(&prev.unwrap());
    store.meta().insert(b"audit_head", head).unwrap();
    store.flush().unwrap();
    drop(store);

    // The stopped hub's store checked directly: the anchor names it.
    let o = hub.cli(&["audit", "verify", "--offline"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = common::stderr(&o);
    assert!(err.contains("was rewritten"), "{err} (edited {edited})");
    refused_naming(&hub, "was rewritten");
    accept_loss(&mut hub, "was rewritten").await;
}

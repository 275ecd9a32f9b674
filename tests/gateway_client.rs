//! A client in another language, written from the OpenAPI document alone:
//! `tests/clients/python/exchange.py` (Python 3, standard library only, with
//! the client of `truc_gateway.py` built from `docs/openapi.json` and the
//! signing rules of `docs/PROTOCOL.md`) runs a full exchange between two
//! HTTPS-only agencies against a real hub with its gateway on loopback:
//! sessions, an envelope with a Vietnamese subject, listing, fetching and
//! verifying the delivery, a status that settles it, the source's notices
//! read and acknowledged, and a renewed session.
//!
//! `tests/clients/python/spaces_exchange.py`, with the same client, sends
//! large documents: an upload space filled out of order and resumed, an
//! envelope naming it (and one refused for naming it again), the document
//! fetched in two parts by the destination and checked against the signed
//! digest, the space gone once confirmed; then a 6 MB body sent inline that
//! the destination finds in a space of the hub's.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestHub;
use truc::client::Credentials;

/// Writes `creds` as JSON into `dir/name`; its path.
fn creds_file(dir: &Path, name: &str, creds: &Credentials) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(creds).unwrap()).unwrap();
    path.display().to_string()
}

/// Fails unless `python3` runs: these tests are never skipped.
fn require_python() {
    let version = Command::new("python3").arg("--version").output();
    match &version {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`python3 --version` failed ({}): install python3 to run this test\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("python3 not found ({e}): install python3 to run this test"),
    }
}

/// Starts a hub with its gateway, registers agencies `a` and `b`, and runs
/// `tests/clients/python/<script> GATEWAY A.json B.json`; its exit code and
/// `all checks passed` decide.
async fn run_python_exchange(script: &str, a: &str, b: &str) {
    require_python();
    let (mut hub, gw) = TestHub::start_with_gateway("", &[]).await;
    let a = hub.register(a).await;
    let b = hub.register(b).await;
    let dir = tempfile::tempdir().unwrap();
    let a_file = creds_file(dir.path(), "a.json", &a);
    let b_file = creds_file(dir.path(), "b.json", &b);
    let script = format!(
        "{}/tests/clients/python/{script}",
        env!("CARGO_MANIFEST_DIR")
    );

    // Blocking, on a thread of its own: the hub keeps being served meanwhile.
    let name = script.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([&script, &gw, &a_file, &b_file])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONIOENCODING", "utf-8")
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- hub log\n{}",
        out.status,
        hub.log()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_from_the_openapi_document_exchanges_through_the_gateway() {
    run_python_exchange("exchange.py", "000.00.81.H41", "000.00.82.H41").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_from_the_documents_sends_large_documents_through_upload_spaces() {
    run_python_exchange("spaces_exchange.py", "000.00.83.H41", "000.00.84.H41").await;
}

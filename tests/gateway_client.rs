//! A client in another language, written from the OpenAPI document alone:
//! `tests/clients/python/exchange.py` (Python 3, standard library only, with
//! the client of `truc_gateway.py` built from `docs/openapi.json` and the
//! signing rules of `docs/PROTOCOL.md`) runs a full exchange between two
//! HTTPS-only agencies against a real hub with its gateway on loopback:
//! sessions, an envelope with a Vietnamese subject, listing, fetching and
//! verifying the delivery, a status that settles it, the source's notices
//! read and acknowledged, and a renewed session.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_from_the_openapi_document_exchanges_through_the_gateway() {
    // Never skipped: without python3 the test fails and says so.
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

    let (mut hub, gw) = TestHub::start_with_gateway("", &[]).await;
    let a = hub.register("000.00.81.H41").await;
    let b = hub.register("000.00.82.H41").await;
    let dir = tempfile::tempdir().unwrap();
    let a_file = creds_file(dir.path(), "a.json", &a);
    let b_file = creds_file(dir.path(), "b.json", &b);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/python/exchange.py"
    );

    // Blocking, on a thread of its own: the hub keeps being served meanwhile.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &gw, &a_file, &b_file])
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
        "exchange.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- hub log\n{}",
        out.status,
        hub.log()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    drop(dir);
}

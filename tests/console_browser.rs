//! The web console in a real browser: Debian's chromium, headless, driven
//! by playwright-core (tests/browser/console.mjs) against a real hub. Logs
//! in as each role, finds a sent envelope and reads its timeline, retries a
//! dead letter, shows that an agency account cannot see another agency's
//! envelope, switches the language, fits a phone's width, and saves a
//! screenshot of each page to target/console-screenshots/.
//!
//! Needs `node`, `/usr/bin/chromium` and `npm ci --prefix tests/browser`;
//! `ops/test.sh` installs all three on a fresh Debian.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{envelope, next_within, stderr, stdout, TestHub};

const PW: &str = "mật khẩu đủ dài 2026";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("TRUC_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && root.join("tests/browser/node_modules/playwright-core").exists(),
        "the browser tests need {chromium} and tests/browser/node_modules: run ops/test.sh, which installs them (apt-get install chromium nodejs npm; npm ci --prefix tests/browser)"
    );
    // Alerts evaluated quickly, to a webhook nobody reads: an agency that
    // never connects is an open alert on the pages.
    let alerts = common::alerts::policy("http://127.0.0.1:1/", "127.0.0.1:1")
        .replace("smtp = \"127.0.0.1:1\"", "smtp = \"\"");
    let mut hub = TestHub::start_with_policies(&[
        ("alerts.toml", &alerts),
        (
            "presence.toml",
            "[presence]\nheartbeat_window = \"3s\"\npoll_interval = \"1s\"\nreturn_on_bounce = false\n",
        ),
    ])
    .await;
    let a = hub.register("H37.BR.001").await;
    let b = hub.register("H37.BR.002").await;
    hub.register("H37.BR.003").await;
    let source = hub.client(&a).await;

    // A dead letter: one try only, rejected by B.
    let mut refused = envelope("H37.BR.002").subject("Sẽ bị từ chối").build();
    refused.extra.push(("lgsp-max-attempts".into(), "1".into()));
    let dead_id = source.send(&refused).await.unwrap();
    {
        let dest = hub.client(&b).await;
        let mut inbox = dest.inbox(4).await.unwrap();
        let got = next_within(&mut inbox, Duration::from_secs(10))
            .await
            .expect("the delivery");
        inbox.reject(got.delivery_tag, false).await.unwrap();
        hub.wait_depth("undelivered", 1).await;
        dest.close().await;
    }
    let subject = "Công văn số 12/UBND về lịch tiếp công dân";
    let to_b = source
        .send(&envelope("H37.BR.002").subject(subject).build())
        .await
        .unwrap();
    let other = source
        .send(&envelope("H37.BR.003").subject("Chỉ cho C").build())
        .await
        .unwrap();
    for id in [&to_b, &other] {
        hub.wait_log(&["envelope accepted", id], 1).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = hub.api("GET", "/v1/alerts", None).await;
        if v["open"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["key"] == "agency-offline:H37.BR.003"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no offline alert: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hub.add_account("quan-tri", "admin", None, PW);
    hub.add_account("van-hanh", "operator", None, PW);
    hub.add_account("kiem-toan", "auditor", None, PW);
    hub.add_account("so-noi-vu", "agency", Some("H37.BR.002"), PW);

    let shots = root.join("target/console-screenshots");
    let case = serde_json::json!({
        "base": format!("http://{}", hub.admin_addr),
        "chromium": chromium,
        "shots": shots,
        "accounts": {
            "admin": {"name": "quan-tri", "password": PW},
            "operator": {"name": "van-hanh", "password": PW},
            "auditor": {"name": "kiem-toan", "password": PW},
            "agency": {"name": "so-noi-vu", "password": PW},
        },
        "envelope": {"from": "H37.BR.001", "to": "H37.BR.002", "id": to_b, "subject": subject},
        "other": {"from": "H37.BR.001", "id": other},
        "dead": {"id": dead_id},
    });
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("tests/browser/console.mjs")
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
            .env("TRUC_BROWSER_CASE", case.to_string())
            .output()
            .expect("node runs (ops/test.sh installs nodejs)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "browser checks failed:\nstdout: {}\nstderr: {}\nhub log:\n{}",
        stdout(&out),
        stderr(&out),
        hub.log()
    );
    println!("{}", stdout(&out).trim());
    // The retried letter went back to B's inbox; the audit log names who.
    hub.wait_depth("undelivered", 0).await;
    let (_, tail) = hub.api("GET", "/v1/audit?n=100", None).await;
    assert!(tail
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "dead-retried"
            && e["fields"]["account"] == "van-hanh"
            && e["fields"]["message_id"] == dead_id.as_str()));
    for name in [
        "overview-admin",
        "envelope-timeline",
        "dead-retry-done",
        "agency-other-envelope",
        "overview-en",
        "phone-overview",
    ] {
        assert!(shots.join(format!("{name}.png")).exists(), "{name}.png");
    }
    source.close().await;
}

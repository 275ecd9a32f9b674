//! `/healthz` follows the hub's own broker link: the hub reaches the broker
//! through a TCP proxy of the test's, which the test cuts (every connection
//! dropped, new ones closed at once) without touching the shared broker.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{through, Proxy};
use common::TestHub;

async fn wait_health(hub: &TestHub, want: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = hub.healthz().await;
        if status == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz stayed {status} {v}, wanted {want}\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_with_a_broker_reason_while_the_link_is_down() {
    let (_, upstream) = through("127.0.0.1:1".parse().unwrap());
    let proxy = Proxy::start(upstream).await;
    let (url, _) = through(proxy.addr);
    let mut hub = TestHub::unstarted(None);
    hub.hub_amqp_url = Some(url);
    hub.spawn().await;

    let ok = wait_health(&hub, 200).await;
    assert_eq!(ok["status"], "ok");
    assert_eq!(ok["broker_connected"], true);
    assert_eq!(ok["reasons"], serde_json::json!([]));

    wait_gauge(&hub, "truc_healthy{check=\"all\"} 1").await;
    proxy.cut();
    let down = wait_health(&hub, 503).await;
    assert_eq!(down["status"], "unhealthy");
    assert_eq!(down["broker_connected"], false);
    let reasons = down["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{down}");
    assert_eq!(reasons[0]["check"], "broker");
    assert!(reasons[0]["detail"].as_str().unwrap().contains("broker"));
    assert!(down["agencies"].is_number(), "the existing fields are kept");
    // The gauge says so too (set every 2 s).
    wait_gauge(&hub, "truc_healthy{check=\"broker\"} 0").await;
    wait_gauge(&hub, "truc_healthy{check=\"all\"} 0").await;

    proxy.restore();
    let back = wait_health(&hub, 200).await;
    assert_eq!(back["broker_connected"], true);
    wait_gauge(&hub, "truc_healthy{check=\"all\"} 1").await;
    let log = hub.log();
    assert_eq!(
        log.matches("WARN truc::serve: unhealthy").count(),
        2,
        "{log}"
    );
    assert!(log.contains("healthy again"), "{log}");
}

async fn wait_gauge(hub: &TestHub, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = hub.metrics_text().await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

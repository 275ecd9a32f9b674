//! `TRUC_AMQP_URL` may list the nodes of a cluster: the hub and the CLI
//! connect to the first node that answers.

mod common;

use common::{stdout, TestHub};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_and_the_cli_use_the_first_node_of_a_list_that_answers() {
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port());
    let mut hub = TestHub::unstarted(None);
    hub.hub_amqp_url = Some(format!("{dead},{}", common::amqp_url()));
    hub.spawn().await;
    let src = hub.register("H37.ND.001").await;
    hub.register("H37.ND.002").await;
    let creds = hub.data.path().join("src.json");
    std::fs::write(&creds, serde_json::to_string(&src).unwrap()).unwrap();
    let file = hub.data.path().join("doc.txt");
    std::fs::write(&file, "Xin chào").unwrap();
    let send = [
        "send",
        "--from",
        "H37.ND.001",
        "--to",
        "H37.ND.002",
        "--file",
        file.to_str().unwrap(),
        "--credentials",
        creds.to_str().unwrap(),
    ];
    // truc send (through the same list) waits for the hub's answer.
    let o = hub.cli_expect(&send, 0);
    assert!(stdout(&o).contains("accepted"), "{}", stdout(&o));
    // The hub said which node it skipped, without the password.
    let log = hub.log();
    assert!(log.contains("broker node not reachable"), "{log}");
    assert!(!log.contains("guest:guest"), "{log}");

    // A list where no node answers: the CLI names each node and exits 4.
    hub.hub_amqp_url = Some(format!("{dead},{dead}"));
    let o = hub.cli(&send);
    assert_eq!(o.status.code(), Some(4), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("no broker node answered"),
        "{}",
        common::stderr(&o)
    );
}

//! Two `truc serve` instances on one PostgreSQL store and one broker act as
//! one hub: they compete for ingress, an envelope sent twice at once is
//! delivered once, and both show the same registry and one audit chain.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{envelope, next_within, stdout, TestHub};
use truc::client::Credentials;

const WAIT: Duration = Duration::from_secs(15);

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", common::stderr(o));
    serde_json::from_str(&stdout(o)).unwrap()
}

/// `truc_envelopes_accepted_total` summed over priorities, from `/metrics`.
async fn accepted(hub: &TestHub) -> u64 {
    hub.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("truc_envelopes_accepted_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_work_and_deliver_each_envelope_once() {
    let mut a = TestHub::on_postgres();
    a.spawn().await;
    let src = a.register("000.00.31.H41").await;
    let dst = a.register("000.00.32.H41").await;
    let mut b = a.sibling();
    b.agencies = a.agencies.clone();
    b.spawn().await;

    // Both on the database, not on an embedded store.
    for h in [&a, &b] {
        let stats = json(&h.cli(&["store", "stats", "--json"]));
        assert!(
            stats["path"].as_str().unwrap().starts_with("postgres://"),
            "{stats}"
        );
    }
    // A server without autovacuum is said at start, by each instance.
    let url = a.store_url.clone().unwrap();
    let autovacuum = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query_one("SHOW autovacuum", &[])
            .unwrap()
            .get::<_, String>(0)
    })
    .join()
    .unwrap();
    for h in [&a, &b] {
        assert_eq!(
            h.log().contains("PostgreSQL autovacuum is off"),
            autovacuum == "off",
            "autovacuum {autovacuum}:\n{}",
            h.log()
        );
    }
    // The same agencies, read through either instance.
    let list = |h: &TestHub| json(&h.cli(&["agency", "list", "--json"]));
    assert_eq!(list(&a), list(&b));

    // Competing consumers share only once both compete: each instance's
    // consumer on the source's queue is there before anything is sent.
    a.wait_consumers("ingress.000.00.31.H41", 2).await;
    let source = a.client(&src).await;
    let mut dest = a.client(&dst).await;
    let mut inbox = dest.inbox(64).await.unwrap();

    // One envelope published twice at once: whichever instances take the
    // two copies, it is delivered once.
    let twice = envelope("000.00.32.H41")
        .id("twice-1")
        .body("một lần")
        .signed(&a.prefix, &src);
    let (r1, r2) = tokio::join!(source.publish(&twice), source.publish(&twice));
    r1.unwrap();
    r2.unwrap();
    // A stream both instances take part in.
    const N: usize = 300;
    for i in 0..N {
        let m = envelope("000.00.32.H41")
            .id(format!("stream-{i}"))
            .body(format!("văn bản {i}"))
            .signed(&a.prefix, &src);
        source.publish(&m).await.unwrap();
    }
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    while seen.len() < N + 1 {
        let got = next_within(&mut inbox, WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} of {} delivered", seen.len(), N + 1));
        let r = dest.receive(got.clone()).unwrap();
        seen.entry(r.message_id.clone())
            .or_default()
            .push(got.message.header("lgsp-attempt").unwrap_or("").to_owned());
        inbox.ack(got.delivery_tag).await.unwrap();
    }
    // Nothing more comes: no second copy of anything.
    if let Some(extra) = next_within(&mut inbox, Duration::from_secs(3)).await {
        panic!(
            "a second delivery of {:?} (attempt {:?})",
            extra.message.message_id,
            extra.message.header("lgsp-attempt")
        );
    }
    for (id, attempts) in &seen {
        assert_eq!(attempts.len(), 1, "{id}: {attempts:?}");
    }
    // Both instances routed a share (competing consumers on one queue).
    let (na, nb) = (accepted(&a).await, accepted(&b).await);
    assert_eq!(na + nb, N as u64 + 1, "a {na}, b {nb}");
    assert!(
        na > 0 && nb > 0,
        "a {na}, b {nb}\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    eprintln!("accepted by a: {na}, by b: {nb}");

    // An agency added through one instance is known to the other (its
    // registry reloads within a second): it lists it and routes its mail.
    let extra = b.register("000.00.37.H41").await;
    let added = std::time::Instant::now();
    loop {
        let (status, _) = a.api("GET", "/v1/agencies/000.00.37.H41", None).await;
        if status == 200 {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(10),
            "instance a never saw it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "agency added through b seen by a after {} ms",
        added.elapsed().as_millis()
    );
    a.agencies.push(common::code("000.00.37.H41"));
    let from_new = a.client(&extra).await;
    let m = envelope("000.00.32.H41")
        .id("from-new")
        .signed(&a.prefix, &extra);
    from_new.publish(&m).await.unwrap();
    let got = next_within(&mut inbox, WAIT)
        .await
        .expect("delivery from the new agency");
    assert_eq!(got.message.message_id.as_deref(), Some("from-new"));
    inbox.ack(got.delivery_tag).await.unwrap();

    // Timelines and the audit log are the same through either instance.
    let rec = |h: &TestHub| json(&h.cli(&["envelope", "show", "twice-1", "--json"]));
    assert_eq!(rec(&a)["dests"], rec(&b)["dests"]);
    for h in [&a, &b] {
        let v = json(&h.cli(&["audit", "verify", "--json"]));
        assert_eq!(v["ok"], true, "{v}");
    }
}

/// Sends one envelope from `src` to `dst` through `hub` and waits for it.
async fn round_trip(hub: &TestHub, src: &Credentials, dst: &Credentials, id: &str) {
    let source = hub.client(src).await;
    let mut dest = hub.client(dst).await;
    let mut inbox = dest.inbox(8).await.unwrap();
    let m = envelope(dst.code.as_str())
        .id(id)
        .body(format!("văn bản {id}"))
        .signed(&hub.prefix, src);
    source.publish(&m).await.unwrap();
    let got = next_within(&mut inbox, WAIT)
        .await
        .unwrap_or_else(|| panic!("{id} not delivered: {}", hub.log()));
    let r = dest.receive(got.clone()).unwrap();
    assert_eq!(r.message_id, id);
    inbox.ack(got.delivery_tag).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_moves_to_postgres_and_a_postgres_store_is_backed_up() {
    let mut hub = TestHub::start().await;
    let src = hub.register("000.00.31.H41").await;
    let dst = hub.register("000.00.32.H41").await;
    round_trip(&hub, &src, &dst, "before-move").await;
    let show =
        |h: &TestHub, id: &str| json(&h.cli(&["envelope", "show", id, "--json"]))["dests"].clone();
    let timeline = show(&hub, "before-move");
    hub.terminate();

    // Moved to an empty database; a second move into it is refused.
    let db = std::sync::Arc::new(truc::testing::TestDb::new());
    let o = hub.cli_expect(&["store", "migrate", "--to", db.url()], 0);
    assert!(stdout(&o).contains("keys checked"), "{}", stdout(&o));
    let o = hub.cli(&["store", "migrate", "--to", db.url()]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("must be empty"),
        "{}",
        common::stderr(&o)
    );

    // The hub on PostgreSQL: the same timeline, the old keys, one chain.
    hub.store_url = Some(db.url().to_owned());
    hub.db = Some(db);
    hub.spawn().await;
    assert_eq!(show(&hub, "before-move"), timeline);
    round_trip(&hub, &src, &dst, "after-move").await;
    let v = json(&hub.cli(&["audit", "verify", "--json"]));
    assert_eq!(v["ok"], true, "{v}");

    // Backed up while running, restored into another empty database.
    let file = hub.data.path().join("pg.backup");
    hub.cli_expect(&["store", "backup", file.to_str().unwrap()], 0);
    hub.terminate();
    let db2 = std::sync::Arc::new(truc::testing::TestDb::new());
    hub.store_url = Some(db2.url().to_owned());
    hub.db = Some(db2);
    let o = hub.cli_expect(&["store", "restore", file.to_str().unwrap()], 0);
    assert!(stdout(&o).contains("store-restored"), "{}", stdout(&o));
    hub.spawn().await;
    assert_eq!(show(&hub, "before-move"), timeline);
    round_trip(&hub, &src, &dst, "after-restore").await;
    let v = json(&hub.cli(&["audit", "verify", "--json"]));
    assert_eq!(v["ok"], true, "{v}");

    // The database's own drill (docs/CLUSTER.md): pg_dump of the running
    // hub's database, pg_restore into an empty one, the hub moved onto it.
    let dump = hub.data.path().join("truc.dump");
    let url = hub.store_url.clone().unwrap();
    let o = std::process::Command::new("pg_dump")
        .args(["--format=custom", "--file", dump.to_str().unwrap(), &url])
        .output()
        .unwrap();
    assert!(o.status.success(), "pg_dump: {}", common::stderr(&o));
    hub.terminate();
    // The chain checked on the stopped hub's database itself.
    let v = json(&hub.cli(&["audit", "verify", "--offline", "--json"]));
    assert_eq!(v["ok"], true, "{v}");
    let db3 = std::sync::Arc::new(truc::testing::TestDb::new());
    let o = std::process::Command::new("pg_restore")
        .args(["--no-owner", "--dbname", db3.url(), dump.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "pg_restore: {}", common::stderr(&o));
    hub.store_url = Some(db3.url().to_owned());
    hub.db = Some(db3);
    hub.spawn().await;
    assert_eq!(show(&hub, "before-move"), timeline);
    round_trip(&hub, &src, &dst, "after-pg-restore").await;
    let v = json(&hub.cli(&["audit", "verify", "--json"]));
    assert_eq!(v["ok"], true, "{v}");
}

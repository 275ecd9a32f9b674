//! Several machines as one, on real services: a three-node RabbitMQ cluster
//! (`ops/broker-cluster.sh`, on ports of its own beside the standard broker),
//! one PostgreSQL store and two truc instances on the cluster topology
//! profile. A stream of 3,000 envelopes from three sources to three
//! destinations runs while one instance or the other is SIGKILLed three
//! times and the node an instance is connected to is stopped twice; then the
//! leader is killed while a destination is offline.
//!
//! Checked: every confirmed envelope is delivered, a repeat only ever marked
//! (`lgsp-attempt` > 1, or the broker's redelivered flag after a consumer's
//! connection dropped before its ack); each envelope to the offline destination gets exactly
//! one delay warning and one `bounced destination-offline`; the audit chain
//! verifies and both instances show the same registry. The cluster (nodes
//! and data) and the database are removed on `Drop`, also on failure.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{envelope, stdout, TestHub};
use tokio_util::sync::CancellationToken;
use truc::client::{Client, Credentials};
use truc::notice::NoticeKind;
use truc::reason::Reason;

/// Envelopes in the stream.
const STREAM: usize = 3_000;
/// Envelopes to the offline destination.
const OFFLINE: usize = 10;

const PRESENCE: &str =
    "[presence]\nheartbeat_window = \"3s\"\npoll_interval = \"1s\"\nreturn_on_bounce = false\n";

/// A RabbitMQ cluster of three nodes of this test's own.
struct Cluster {
    dir: String,
    base: u16,
    urls: Vec<String>,
}

impl Cluster {
    fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/ops/broker-cluster.sh"
            ))
            .args(args)
            .env("TRUC_CLUSTER_DIR", &self.dir)
            .env("TRUC_CLUSTER_BASE_PORT", self.base.to_string())
            .env("TRUC_CLUSTER_DIST_BASE", (self.base + 20_000).to_string())
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> String {
        let o = self.script(args);
        assert!(
            o.status.success(),
            "broker-cluster.sh {args:?}: {}{}",
            stdout(&o),
            common::stderr(&o)
        );
        stdout(&o)
    }

    fn start() -> Self {
        let mut c = Self {
            dir: format!("/var/tmp/truc-cluster-t{}", std::process::id()),
            // Ports of its own: a cluster an operator started stays untouched.
            base: 5690,
            urls: Vec::new(),
        };
        c.run(&["start", "3"]);
        c.urls = c
            .run(&["urls"])
            .trim()
            .split(',')
            .map(str::to_owned)
            .collect();
        assert_eq!(c.urls.len(), 3, "{:?}", c.urls);
        c
    }

    /// The node URLs in this order (1-based), as `TRUC_AMQP_URL`.
    fn list(&self, order: [usize; 3]) -> String {
        order
            .iter()
            .map(|i| self.urls[i - 1].clone())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let o = self.script(&["purge"]);
        if !o.status.success() {
            eprintln!("cluster purge failed: {}", common::stderr(&o));
        }
    }
}

/// Deliveries seen: message id → the `lgsp-attempt` of each delivery.
type Seen = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// Consumes `creds`'s inbox until `stop`, reconnecting through the node
/// list whenever the connection or the queue's node goes away. Each change
/// of state is printed (time since `t0`), so a failed run shows where a
/// destination stood. A refusal the client library calls final (not
/// retryable) ends it, with the refusal: an inbox whose node is down must
/// read as unavailable, never as missing.
async fn receive(
    urls: String,
    prefix: String,
    creds: Credentials,
    seen: Seen,
    stop: CancellationToken,
    t0: Instant,
) -> Option<String> {
    let who = creds.code.to_string();
    let say = |what: String| {
        eprintln!(
            "{:>5.1}s  receiver {who}: {what}",
            t0.elapsed().as_secs_f64()
        )
    };
    // A refusal repeated while a node is down is printed once.
    let mut last_refusal = String::new();
    // `None`: consuming again, so the next refusal is printed.
    let mut refused = |what: Option<String>| match what {
        Some(what) if what != last_refusal => {
            say(what.clone());
            last_refusal = what;
        }
        Some(_) => {}
        None => last_refusal.clear(),
    };
    while !stop.is_cancelled() {
        let subscribed = match Client::connect(&urls, &prefix, creds.clone()).await {
            Err(e) => Err(("connect failed", e)),
            Ok(client) => match client.inbox(64).await {
                Ok(inbox) => Ok((client, inbox)),
                Err(e) => Err(("subscribe failed", e)),
            },
        };
        let (mut client, mut inbox) = match subscribed {
            Ok(both) => both,
            Err((what, e)) if !e.is_retryable() => {
                let why = format!("{what}, for good: {e}");
                say(why.clone());
                return Some(why);
            }
            Err((what, e)) => {
                let what = format!("{what}: {e}");
                refused(Some(what));
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        refused(None);
        say("consuming".into());
        let mut got_here = 0usize;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return None,
                n = tokio::time::timeout(Duration::from_secs(5), inbox.next()) => n,
            };
            match next {
                // Quiet: the subscription stays (a cancelled one ends the stream).
                Err(_) => continue,
                Ok(Some(Ok(got))) => {
                    let id = got.message.message_id.clone().unwrap_or_default();
                    // A broker redelivery (the connection dropped before the
                    // ack) is flagged by the broker, as PROTOCOL §7 says.
                    let mut attempt = got.message.header("lgsp-attempt").unwrap_or("").to_owned();
                    if got.redelivered {
                        attempt.push_str(" redelivered");
                    }
                    // The hub's signature and the digest are checked.
                    client.receive(got.clone()).expect("a valid delivery");
                    if inbox.ack(got.delivery_tag).await.is_err() {
                        // Not acked: it comes again (marked or not), and the
                        // first sighting is what counts here.
                    }
                    seen.lock().unwrap().entry(id).or_default().push(attempt);
                    got_here += 1;
                }
                Ok(Some(Err(e))) => {
                    say(format!("stream failed after {got_here} deliveries: {e}"));
                    break;
                }
                Ok(None) => {
                    say(format!("consumer cancelled after {got_here} deliveries"));
                    break;
                }
            }
        }
    }
    None
}

/// Publishes `m` until the broker confirms it, reconnecting on failure.
async fn publish_confirmed(
    client: &mut Option<Client>,
    urls: &str,
    prefix: &str,
    creds: &Credentials,
    m: &truc::message::Message,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "no node took {:?} for 120 s",
            m.message_id
        );
        if client.is_none() {
            *client = Client::connect(urls, prefix, creds.clone()).await.ok();
        }
        if let Some(c) = client.as_ref() {
            if c.publish(m).await.is_ok() {
                return;
            }
        }
        *client = None;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", common::stderr(o));
    serde_json::from_str(&stdout(o)).unwrap()
}

/// Kills `hub` with SIGKILL and starts it again at once.
async fn kill_and_restart(hub: &mut TestHub, what: &str, t0: Instant) {
    hub.kill9();
    eprintln!("{:>5.1}s  SIGKILL {what}", t0.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hub.spawn().await;
    eprintln!("{:>5.1}s  {what} back", t0.elapsed().as_secs_f64());
}

/// Waits until `hub`'s log shows it lost its broker link after `lines`
/// (the log's length before the node was stopped) and connected again;
/// prints the time between the two, from the log's own timestamps.
/// Stops cluster node `node`, the one `hub` is connected to, and waits
/// until `hub` is connected to another.
async fn stop_node_under(cluster: &Cluster, node: &str, hub: &TestHub, what: &str, t0: Instant) {
    let lines = hub.log().lines().count();
    cluster.run(&["stop-node", node]);
    eprintln!(
        "{:>5.1}s  node {node} ({what}'s) stopped",
        t0.elapsed().as_secs_f64()
    );
    reconnected(hub, what, lines).await;
}

async fn reconnected(hub: &TestHub, what: &str, lines: usize) {
    let at = |l: &str| {
        l.split_whitespace()
            .next()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = hub.log();
        let new: Vec<&str> = log.lines().skip(lines).collect();
        let lost = new.iter().position(|l| l.contains("broker link lost"));
        let back = lost.and_then(|i| {
            new[i..]
                .iter()
                .find(|l| l.contains("broker connected"))
                .copied()
                .map(|b| (new[i], b))
        });
        if let Some((lost, back)) = back {
            if let (Some(a), Some(b)) = (at(lost), at(back)) {
                let gap = b.duration_since(a);
                eprintln!(
                    "        {what}: link lost, connected to another node {:.1}s later",
                    gap.as_secs_f64()
                );
            }
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not reconnect: {log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which of the two instances leads now (by `/healthz`).
async fn leader(a: &TestHub, b: &TestHub) -> Option<usize> {
    for (i, h) in [a, b].into_iter().enumerate() {
        if h.healthz().await.1["role"] == "leader" {
            return Some(i);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_cluster_lose_nothing_through_kills_and_node_losses() {
    let cluster = Cluster::start();
    let mut a = TestHub::on_postgres();
    std::fs::write(
        a.config_file(),
        format!(
            "policies_dir = {:?}\nqueues_dir = {:?}\n",
            a.policies.display().to_string(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/queues/cluster")
        ),
    )
    .unwrap();
    std::fs::write(a.policies.join("presence.toml"), PRESENCE).unwrap();
    let d = truc::policy::DEFAULT_DELIVERY;
    let old = "[priority.1] # Khẩn\nbounce_after = \"1d\"\ndelay_warning_after = \"2h\"";
    assert!(d.contains(old));
    std::fs::write(
        a.policies.join("delivery.toml"),
        d.replace(
            old,
            "[priority.1] # Khẩn\nbounce_after = \"1d\"\ndelay_warning_after = \"4s\"",
        ),
    )
    .unwrap();
    // Each instance connects to its own first node.
    a.hub_amqp_url = Some(cluster.list([1, 2, 3]));
    a.spawn().await;
    let sources = [
        a.register("000.00.31.H41").await,
        a.register("000.00.33.H41").await,
        a.register("000.00.35.H41").await,
    ];
    let dests = [
        a.register("000.00.32.H41").await,
        a.register("000.00.34.H41").await,
        a.register("000.00.36.H41").await,
    ];
    let offline = a.register("000.00.39.H41").await;
    let mut b = a.sibling();
    b.hub_amqp_url = Some(cluster.list([2, 3, 1]));
    b.agencies = a.agencies.clone();
    b.spawn().await;

    // Destinations consume all along, through the node list.
    let seen: Seen = Arc::default();
    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let mut receivers = Vec::new();
    for d in &dests {
        receivers.push(tokio::spawn(receive(
            cluster.list([2, 3, 1]),
            a.prefix.clone(),
            d.clone(),
            seen.clone(),
            stop.clone(),
            t0,
        )));
    }

    // The stream: each source sends its share in order, ~100/s in all.
    let mut senders = Vec::new();
    for (s, src) in sources.iter().enumerate() {
        let (urls, prefix, src) = (cluster.list([1, 2, 3]), a.prefix.clone(), src.clone());
        let to = dests[s].code.to_string();
        senders.push(tokio::spawn(async move {
            let mut client = None;
            let mut confirmed = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(30));
            for i in (s..STREAM).step_by(3) {
                tick.tick().await;
                let id = format!("stream-{i}");
                let m = envelope(&to)
                    .id(&id)
                    .body(format!("văn bản {i}"))
                    .signed(&prefix, &src);
                publish_confirmed(&mut client, &urls, &prefix, &src, &m).await;
                confirmed.push(id);
            }
            confirmed
        }));
    }
    // Meanwhile: three SIGKILLs, two nodes lost (each the one an instance is on).
    tokio::time::sleep(Duration::from_secs(3)).await;
    kill_and_restart(&mut a, "instance a", t0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_node_under(&cluster, "2", &b, "instance b", t0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    kill_and_restart(&mut b, "instance b", t0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.run(&["start-node", "2"]);
    eprintln!("{:>5.1}s  node 2 back", t0.elapsed().as_secs_f64());
    stop_node_under(&cluster, "1", &a, "instance a", t0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill_and_restart(&mut a, "instance a", t0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.run(&["start-node", "1"]);
    eprintln!("{:>5.1}s  node 1 back", t0.elapsed().as_secs_f64());

    let mut confirmed = HashSet::new();
    for s in senders {
        confirmed.extend(s.await.unwrap());
    }
    assert_eq!(confirmed.len(), STREAM);
    eprintln!(
        "{:>5.1}s  all {STREAM} confirmed by the broker",
        t0.elapsed().as_secs_f64()
    );
    // Every confirmed envelope arrives (deliveries held while their inbox's
    // node was down come back at the next retry, every 30 s).
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let missing: Vec<String> = {
            let seen = seen.lock().unwrap();
            confirmed
                .iter()
                .filter(|id| !seen.contains_key(*id))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        if let Some(gone) = receivers.iter_mut().find(|r| r.is_finished()) {
            panic!("a receiver gave up: {:?}", gone.await.unwrap());
        }
        // Stream envelope i goes to dests[i % 3].
        let by_dest = |k: usize| {
            missing
                .iter()
                .filter(|id| {
                    id.trim_start_matches("stream-")
                        .parse::<usize>()
                        .ok()
                        .map(|i| i % 3)
                        == Some(k)
                })
                .count()
        };
        assert!(
            Instant::now() < deadline,
            "{} confirmed envelopes not delivered ({} to 32, {} to 34, {} to 36), e.g. {:?}\n--- a ---\n{}\n--- b ---\n{}",
            missing.len(),
            by_dest(0),
            by_dest(1),
            by_dest(2),
            &missing[..missing.len().min(5)],
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{:>5.1}s  all {STREAM} delivered",
        t0.elapsed().as_secs_f64()
    );
    // A few seconds for any late repeat, then: a repeat is always marked.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let repeats = {
        let seen = seen.lock().unwrap();
        let mut repeats = 0;
        for (id, attempts) in seen.iter() {
            let firsts = attempts.iter().filter(|a| a.as_str() == "1").count();
            assert!(firsts <= 1, "{id} delivered unmarked twice: {attempts:?}");
            repeats += attempts.len() - 1;
        }
        repeats
    };
    eprintln!("marked repeats: {repeats}");

    // The leader dies while a destination is offline: one warning and one
    // bounce per envelope all the same.
    let source = Client::connect(&cluster.list([3, 2, 1]), &a.prefix, sources[0].clone())
        .await
        .unwrap();
    let mut ids = HashSet::new();
    for i in 0..OFFLINE {
        let id = format!("offline-{i}");
        let m = envelope(offline.code.as_str())
            .id(&id)
            .priority(1)
            .header("lgsp-bounce-after", "14s")
            .signed(&a.prefix, &sources[0]);
        source.publish(&m).await.unwrap();
        ids.insert(id);
    }
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let lead = leader(&a, &b).await.expect("a leader");
    if lead == 0 {
        a.kill9();
    } else {
        b.kill9();
    }
    let killed = Instant::now();
    eprintln!(
        "{:>5.1}s  leader ({}) killed",
        t1.elapsed().as_secs_f64(),
        ["a", "b"][lead]
    );
    let survivor = if lead == 0 { &b } else { &a };
    while survivor.healthz().await.1["role"] != "leader" {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no takeover: {}",
            survivor.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "        the other instance leads {:.1}s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let mut notify = source.notices(256).await.unwrap();
    let mut warned: HashMap<String, usize> = HashMap::new();
    let mut bounced: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let Some(got) = common::next_within(&mut notify, Duration::from_secs(2)).await else {
            if bounced.len() == OFFLINE {
                break;
            }
            continue;
        };
        let n = source.notice(&got).unwrap();
        notify.ack(got.delivery_tag).await.unwrap();
        if !ids.contains(&n.reference) {
            continue;
        }
        match n.notice {
            NoticeKind::DelayWarning => *warned.entry(n.reference).or_default() += 1,
            NoticeKind::Bounced => {
                assert_eq!(n.reason, Some(Reason::DestinationOffline), "{n:?}");
                *bounced.entry(n.reference).or_default() += 1;
            }
            _ => {}
        }
    }
    eprintln!(
        "{:>5.1}s  bounces: {}",
        t1.elapsed().as_secs_f64(),
        bounced.len()
    );
    for id in &ids {
        assert_eq!(warned.get(id), Some(&1), "{id}: warnings {warned:?}");
        assert_eq!(bounced.get(id), Some(&1), "{id}: bounces {bounced:?}");
    }
    if lead == 0 {
        a.spawn().await;
    } else {
        b.spawn().await;
    }
    stop.cancel();
    for r in receivers {
        assert_eq!(r.await.unwrap(), None, "every refusal was retryable");
    }

    // One chain, one registry, through either instance.
    for h in [&a, &b] {
        let v = json(&h.cli(&["audit", "verify", "--json"]));
        assert_eq!(v["ok"], true, "{v}");
    }
    let list = |h: &TestHub| json(&h.cli(&["agency", "list", "--json"]));
    assert_eq!(list(&a), list(&b));
}

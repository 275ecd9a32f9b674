//! TLS to the broker, against a RabbitMQ node this test starts for itself
//! (own node name, ports, data and log directories, and a private CA made by
//! `ops/tls-broker.sh` with openssl), stopped and removed on `Drop`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use truc::broker::{AmqpError, BrokerTls, Link};
use truc::client::{Client, Outgoing};
use truc::code::AgencyCode;
use truc::envelope::Priority;
use truc::message::Message;

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

fn require_tools() {
    let openssl = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        matches!(openssl, Ok(s) if s.success()),
        "the openssl command is missing: install it (Debian: apt-get install openssl; ops/test.sh does it)"
    );
    assert!(
        Path::new(RABBITMQ_SERVER).exists(),
        "{RABBITMQ_SERVER} is missing: install RabbitMQ (Debian: apt-get install rabbitmq-server; ops/ensure-broker.sh does it)"
    );
}

fn tls_broker_sh(args: &[&str]) {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/tls-broker.sh"))
        .args(args)
        .env("TRUC_TLS_KEY_BITS", "2048")
        .env("TRUC_TLS_DAYS", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tls-broker.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A RabbitMQ node of this test with a plaintext and a TLS listener.
struct TlsNode {
    dir: tempfile::TempDir,
    node: String,
    amqp_port: u16,
    tls_port: u16,
    child: Option<Child>,
}

impl TlsNode {
    fn start() -> Self {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tls_broker_sh(&[
            "certs",
            &d.join("ca").to_string_lossy(),
            "localhost",
            "127.0.0.1",
        ]);
        tls_broker_sh(&["certs", &d.join("other-ca").to_string_lossy(), "localhost"]);
        let [amqp_port, tls_port, dist_port] = free_ports::<3>();
        let conf = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/tls-broker.sh"))
            .args([
                "conf",
                &d.join("ca").to_string_lossy(),
                &tls_port.to_string(),
            ])
            .output()
            .unwrap();
        assert!(conf.status.success());
        let conf = String::from_utf8(conf.stdout).unwrap().replace(
            &format!("listeners.ssl.default = {tls_port}"),
            &format!("listeners.ssl.default = 127.0.0.1:{tls_port}"),
        );
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{amqp_port}\nloopback_users.guest = true\n{conf}"),
        )
        .unwrap();
        std::fs::write(d.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(d.join("rabbitmq-env.conf"), "").unwrap();
        let node = format!("truc-tls-{}-{amqp_port}@localhost", std::process::id());
        let log = std::fs::File::create(d.join("node.out")).unwrap();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(RABBITMQ_SERVER)
                .current_dir(d)
                .env("HOME", d)
                .env("RABBITMQ_NODENAME", &node)
                .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
                .env("RABBITMQ_DIST_PORT", dist_port.to_string())
                .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", d.join("log"))
                .env("RABBITMQ_PID_FILE", d.join("node.pid"))
                .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
                .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
                .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
                .env("ERL_EPMD_ADDRESS", "127.0.0.1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("start rabbitmq-server")
        };
        let mut me = Self {
            dir,
            node,
            amqp_port,
            tls_port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", me.tls_port)).is_err() {
            if let Some(st) = me.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("test node exited ({st}): {}", me.output());
            }
            assert!(
                Instant::now() < deadline,
                "test node did not listen: {}",
                me.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        me
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.out")).unwrap_or_default()
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca/ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca/ca.pem")
    }

    fn amqps_url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.tls_port)
    }

    fn plain_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }
}

fn group_alive(pgid: u32) -> bool {
    Command::new("kill")
        .args(["-0", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id();
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{pgid}")])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while group_alive(pgid) && Instant::now() < deadline {
            let _ = child.try_wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        if group_alive(pgid) {
            let _ = Command::new("rabbitmqctl")
                .args(["-n", &self.node, "stop"])
                .env("HOME", self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
        }
        let _ = child.wait();
    }
}

/// A `truc serve` process against the test node, killed on `Drop`.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(node: &TlsNode, data: &Path, admin_addr: &str, token: &str) -> Serve {
    let config = data.join("truc.toml");
    std::fs::write(
        &config,
        format!(
            "queues_dir = {:?}\npolicies_dir = {:?}\n",
            concat!(env!("CARGO_MANIFEST_DIR"), "/queues"),
            data.join("no-policies").display().to_string(),
        ),
    )
    .unwrap();
    let log = data.join("serve.log");
    let child = Command::new(env!("CARGO_BIN_EXE_truc"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("TRUC_CONFIG")
        .env("TRUC_AMQP_URL", node.amqps_url())
        .env("TRUC_AMQP_CA_FILE", node.ca())
        .env("TRUC_DATA_DIR", data.join("data"))
        .env("TRUC_ADMIN_ADDR", admin_addr)
        .env("TRUC_ADMIN_TOKEN", token)
        .env("TRUC_PREFIX", "tls.")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn truc serve");
    Serve { child, log }
}

fn outgoing(to: &str) -> Outgoing {
    Outgoing {
        to: vec![AgencyCode::parse(to).unwrap()],
        subject: "Công văn qua TLS".into(),
        priority: Priority::NORMAL,
        data_type: "edoc".into(),
        content_type: "text/plain".into(),
        body: b"over amqps".to_vec(),
        message_id: None,
        extra: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_is_verified_and_never_plaintext() {
    let started = Instant::now();
    let node = TlsNode::start();
    let right = BrokerTls::new(Some(node.ca()));

    // The right CA: connect, publish with confirm, consume.
    let link = Link::connect_tls(&node.amqps_url(), "tls test", 1, &right)
        .await
        .expect("amqps with the node's CA connects");
    let queue = truc::topology::QueueSpec {
        name: "tls.test".into(),
        bind: Vec::new(),
        arguments: Default::default(),
    };
    link.declare_queue(&queue).await.unwrap();
    let msg = Message {
        routing_key: "tls.test".into(),
        message_id: Some("M-TLS-1".into()),
        body: b"over tls".to_vec().into(),
        ..Message::default()
    };
    link.publish(&msg).await.expect("confirmed over TLS");
    let mut sub = link.subscribe("tls.test", 1, "tls-test").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("delivery in time")
        .expect("consumer open")
        .unwrap();
    assert_eq!(&*got.message.body, b"over tls");
    assert_eq!(got.message.message_id.as_deref(), Some("M-TLS-1"));
    sub.ack(got.delivery_tag).await.unwrap();
    sub.cancel().await.unwrap();
    assert_eq!(link.delete_queue("tls.test").await.unwrap(), 0);
    link.close().await;

    // Another CA, or only the public roots: the handshake fails.
    for tls in [BrokerTls::new(Some(node.other_ca())), BrokerTls::default()] {
        let e = Link::connect_tls(&node.amqps_url(), "tls test", 1, &tls)
            .await
            .err()
            .expect("an untrusted broker certificate must not connect");
        assert!(matches!(e, AmqpError::Connect(_)), "{e}");
        assert!(e.to_string().contains("certificate"), "{e}");
    }

    // amqps:// to the plaintext port: fails, never falls back to plaintext.
    let plain_port_amqps = format!("amqps://guest:guest@localhost:{}/%2f", node.amqp_port);
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        Link::connect_tls(&plain_port_amqps, "tls test", 1, &right),
    )
    .await
    .expect("fails promptly")
    .err()
    .expect("amqps:// to a plaintext port must fail");
    assert!(e.to_string().contains("TLS"), "{e}");
    // The same port is a working plaintext AMQP port (so the failure above is TLS's).
    Link::connect_tls(&node.plain_url(), "tls test", 1, &BrokerTls::default())
        .await
        .expect("plain port answers amqp://")
        .close()
        .await;
    // A CA file with a plaintext URL is refused before connecting.
    let e = Link::connect_tls(&node.plain_url(), "tls test", 1, &right)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, AmqpError::Tls(_)) && !e.is_retryable(), "{e}");

    // `truc serve` over amqps:// with the CA file, end to end.
    let data = tempfile::tempdir().unwrap();
    let token = "tls-test-admin-token-0123456789";
    let mut hub = serve(&node, data.path(), "127.0.0.1:0", token);
    let admin_addr = common::bound_admin_addr(&mut hub.child, &data.path().join("data"), || {
        std::fs::read_to_string(&hub.log).unwrap_or_default()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = truc::cli::http::request(&admin_addr, "GET", "/healthz", token, None).await {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            if v["broker_connected"] == true {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "truc serve did not connect over TLS: {}",
            std::fs::read_to_string(&hub.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut creds = Vec::new();
    for code in ["000.00.31.H41", "000.00.32.H41"] {
        let body = serde_json::to_vec(&serde_json::json!({"code": code, "name": code})).unwrap();
        let r = truc::cli::http::request(&admin_addr, "POST", "/v1/agencies", token, Some(&body))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        creds.push(serde_json::from_slice::<truc::client::Credentials>(&r.body).unwrap());
    }
    let source = Client::connect_tls(&node.amqps_url(), "tls.", creds[0].clone(), &right)
        .await
        .unwrap();
    let mut dest = Client::connect_tls(&node.amqps_url(), "tls.", creds[1].clone(), &right)
        .await
        .unwrap();
    let mut inbox = dest.inbox(4).await.unwrap();
    let id = source.send(&outgoing("000.00.32.H41")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), inbox.next())
        .await
        .expect("delivery through the hub over TLS")
        .unwrap()
        .unwrap();
    let r = dest.receive(got.clone()).expect("hub-signed delivery");
    assert_eq!(r.message_id, id);
    inbox.ack(got.delivery_tag).await.unwrap();
    source.close().await;
    dest.close().await;
    drop(hub);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

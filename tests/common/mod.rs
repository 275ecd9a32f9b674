//! Test helpers: each test gets its own hub process, queue prefix, data
//! directory and admin port, and everything is removed on `Drop`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use truc::broker::{Link, Subscription};
use truc::client::{Client, Credentials};
use truc::code::AgencyCode;
use truc::message::Inbound;
use truc::notice::Notice;

/// The broker the tests use.
pub fn amqp_url() -> String {
    std::env::var("TRUC_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `truc serve` process of its own.
pub struct TestHub {
    /// Queue prefix, e.g. `t1234x1.`.
    pub prefix: String,
    /// Data directory.
    pub data: tempfile::TempDir,
    /// Policies directory (a copy the test may edit).
    pub policies: PathBuf,
    /// Admin address.
    pub admin_addr: String,
    /// Admin token.
    pub token: String,
    child: Option<Child>,
    /// Agencies registered through this hub.
    pub agencies: Vec<AgencyCode>,
}

impl TestHub {
    /// Starts a hub with the default policies.
    pub async fn start() -> Self {
        Self::start_with_policy(None).await
    }

    /// Starts a hub with these policy files written into `policies/` first
    /// (e.g. `("presence.toml", text)`); absent files fall back to the built-ins.
    pub async fn start_with_policies(files: &[(&str, &str)]) -> Self {
        let mut hub = Self::prepare(None);
        for (name, text) in files {
            std::fs::write(hub.policies.join(name), text).unwrap();
        }
        hub.spawn().await;
        hub
    }

    /// Starts a hub whose `policies/ingress.toml` is `ingress` when given.
    pub async fn start_with_policy(ingress: Option<&str>) -> Self {
        let mut hub = Self::prepare(ingress);
        hub.spawn().await;
        hub
    }

    fn prepare(ingress: Option<&str>) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let data = tempfile::tempdir().unwrap();
        let policies = data.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(
            policies.join("ingress.toml"),
            ingress.unwrap_or(truc::policy::DEFAULT_POLICY),
        )
        .unwrap();
        Self {
            prefix: format!("t{}x{n}.", std::process::id()),
            data,
            policies,
            admin_addr: format!("127.0.0.1:{}", free_port()),
            token: format!("test-token-{}-{n}-0123456789", std::process::id()),
            child: None,
            agencies: Vec::new(),
        }
    }

    /// Starts the process and waits until it is connected to the broker.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("serve.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_truc"))
            .arg("serve")
            .env("TRUC_AMQP_URL", amqp_url())
            .env("TRUC_DATA_DIR", self.data.path().join("data"))
            .env("TRUC_ADMIN_ADDR", &self.admin_addr)
            .env("TRUC_ADMIN_TOKEN", &self.token)
            .env("TRUC_PREFIX", &self.prefix)
            .env("TRUC_CONFIG", self.config_file())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn truc serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) =
                truc::cli::http::request(&self.admin_addr, "GET", "/healthz", &self.token, None)
                    .await
            {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                if v["broker_connected"] == true {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "hub did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn config_file(&self) -> PathBuf {
        let path = self.data.path().join("truc.toml");
        std::fs::write(
            &path,
            format!(
                "policies_dir = {:?}\nqueues_dir = {:?}\n",
                self.policies.display().to_string(),
                concat!(env!("CARGO_MANIFEST_DIR"), "/queues")
            ),
        )
        .unwrap();
        path
    }

    /// The hub's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("serve.log")).unwrap_or_default()
    }

    /// Process id of the running hub.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("hub did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Calls the admin API.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        let r =
            truc::cli::http::request(&self.admin_addr, method, path, &self.token, body.as_deref())
                .await
                .unwrap();
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or_default(),
        )
    }

    /// Registers `code` and returns its credentials.
    pub async fn register(&mut self, code: &str) -> Credentials {
        self.register_with_key(code, None).await
    }

    /// Registers `code` with an RSA public key.
    pub async fn register_with_key(&mut self, code: &str, pem: Option<String>) -> Credentials {
        let (status, v) = self
            .api("POST", "/v1/agencies", Some(serde_json::json!({"code": code, "name": format!("Agency {code}"), "public_key_pem": pem})))
            .await;
        assert_eq!(status, 201, "{v}");
        self.agencies.push(AgencyCode::parse(code).unwrap());
        serde_json::from_value(v).unwrap()
    }

    /// A connected adapter for `creds`.
    pub async fn client(&self, creds: &Credentials) -> Client {
        Client::connect(&amqp_url(), &self.prefix, creds.clone())
            .await
            .unwrap()
    }

    /// A raw link (for queues the adapters do not read).
    pub async fn link(&self) -> Link {
        Link::connect(&amqp_url(), "truc test").await.unwrap()
    }

    /// Sends SIGHUP (policy reload).
    pub fn hangup(&self) {
        let _ = Command::new("kill")
            .arg("-HUP")
            .arg(self.pid().to_string())
            .status();
    }

    /// Depth of a queue of this hub (`short` without the prefix).
    pub async fn depth(&self, short: &str) -> u32 {
        let link = self.link().await;
        let n = link
            .queue_info(&format!("{}{short}", self.prefix))
            .await
            .map(|i| i.messages)
            .unwrap_or(0);
        link.close().await;
        n
    }

    /// Runs a `truc` CLI command against this hub.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_truc"))
            .args(args)
            .env("TRUC_AMQP_URL", amqp_url())
            .env("TRUC_DATA_DIR", self.data.path().join("data"))
            .env("TRUC_ADMIN_ADDR", &self.admin_addr)
            .env("TRUC_ADMIN_TOKEN", &self.token)
            .env("TRUC_PREFIX", &self.prefix)
            .env_remove("TRUC_CONFIG")
            .output()
            .unwrap()
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.kill9();
        let prefix = self.prefix.clone();
        let agencies = self.agencies.clone();
        // Remove this test's queues; a thread with its own runtime, since Drop is sync.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(link) = Link::connect(&amqp_url(), "truc test cleanup").await else {
                    return;
                };
                let buckets = truc::scheduler::BUCKETS
                    .iter()
                    .map(|(n, _)| format!("delay.{n}"));
                for q in ["ingress", "dead", "release", "rejected", "undelivered"]
                    .into_iter()
                    .map(String::from)
                    .chain(buckets)
                {
                    let _ = link.delete_queue(&format!("{prefix}{q}")).await;
                }
                for a in agencies {
                    let _ = link.delete_queue(&format!("{prefix}inbox.{a}")).await;
                    let _ = link.delete_queue(&format!("{prefix}notify.{a}")).await;
                }
                link.close().await;
            })
        })
        .join();
    }
}

/// The next delivery on `sub` within `wait`, or `None`.
pub async fn next_within(sub: &mut Subscription, wait: Duration) -> Option<Inbound> {
    match tokio::time::timeout(wait, sub.next()).await {
        Ok(Some(Ok(i))) => Some(i),
        _ => None,
    }
}

/// Reads notices for `client` until `n` arrived or `wait` passed; acks them.
pub async fn notices(
    client: &Client,
    sub: &mut Subscription,
    n: usize,
    wait: Duration,
) -> Vec<Notice> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(i) = next_within(sub, left).await else {
            break;
        };
        out.push(client.notice(&i).expect("notice verifies"));
        sub.ack(i.delivery_tag).await.unwrap();
    }
    out
}

/// Waits `wait` and returns every further notice (to prove none came).
pub async fn drain_notices(client: &Client, sub: &mut Subscription, wait: Duration) -> Vec<Notice> {
    notices(client, sub, usize::MAX, wait).await
}

/// Codes for tests.
pub fn code(s: &str) -> AgencyCode {
    AgencyCode::parse(s).unwrap()
}

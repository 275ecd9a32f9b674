//! Test helpers: each test gets its own hub process, queue prefix, data
//! directory and admin port (port 0: the hub says which it got, see
//! [`bound_admin_addr`]), and everything is removed on `Drop`: the data
//! directory, and on the broker every exchange and queue of the hub's
//! topology (fixed queues, delay buckets, the queues of every agency it knows).
//! Queues and exchanges a test declares itself go into a [`BrokerGuard`].
//!
//! Signed messages are built in one way: [`envelope`] and [`status`] (on top of
//! `truc::client::{envelope_message, status_message}`), [`resign`] after an edit.

#![allow(dead_code)]

pub mod alerts;
pub mod gateway;
pub mod proxy;
pub mod users;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use truc::auth::{sign_hmac, Alg};
use truc::broker::{AmqpError, Link, Subscription};
use truc::client::{envelope_message, sign, status_message, Client, Credentials, Outgoing};
use truc::code::AgencyCode;
use truc::envelope::Priority;
use truc::message::{Inbound, Message};
use truc::notice::Notice;
use truc::topology::Topology;

/// The broker the tests use.
pub fn amqp_url() -> String {
    std::env::var("TRUC_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Waits for `truc serve` (`child`) to write the address its admin API
/// listens on (`admin_addr` on port 0: the system chose a free port, so no
/// other test or socket can hold it) to `<data_dir>/admin.addr`.
pub fn bound_admin_addr(
    child: &mut std::process::Child,
    data_dir: &std::path::Path,
    log: impl Fn() -> String,
) -> String {
    let path = data_dir.join("admin.addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&path) {
            return addr.trim().to_owned();
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("truc serve exited ({st}) before listening: {}", log());
        }
        assert!(
            Instant::now() < deadline,
            "truc serve did not listen within 30 s: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh 1024-bit RSA key (quick to make; tests only) and its public key as PEM.
pub fn rsa_key() -> (rsa::RsaPrivateKey, String) {
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
    let pem = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    (key, pem)
}

/// `m` signed again with `key` as `rsa-sha256`.
pub fn sign_rsa(m: &mut Message, key: &rsa::RsaPrivateKey) {
    use base64::Engine;
    use rsa::signature::{SignatureEncoding, Signer};
    m.set_header("lgsp-alg", "rsa-sha256");
    m.headers.remove("lgsp-signature");
    let canon = truc::canonical::canonical_form(m, &m.routing_key).unwrap();
    let sig =
        rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(key.clone()).sign(canon.as_bytes());
    m.set_header(
        "lgsp-signature",
        base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    );
}

/// 32 random bytes as hex: a master key for hubs that share one.
fn hex_key() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
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
    /// The broker URL the hub process is given, when not [`amqp_url`]
    /// (e.g. through a proxy the test can cut); set before [`TestHub::spawn`].
    pub hub_amqp_url: Option<String>,
    /// The shared store the hub runs on (`TRUC_STORE_URL`), when not the
    /// embedded one; set before [`TestHub::spawn`].
    pub store_url: Option<String>,
    /// The master key given to the hub (`TRUC_MASTER_KEY`), when not the
    /// one it generates in its data directory (instances of one hub share it).
    pub master_key: Option<String>,
    /// The database of [`TestHub::on_postgres`], dropped with the hub.
    pub db: Option<std::sync::Arc<truc::testing::TestDb>>,
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

    /// A hub prepared (directories, configuration) but not started, whose
    /// `policies/ingress.toml` is `ingress` when given: the test may arrange
    /// its data directory (`data/data`) before [`TestHub::spawn`].
    pub fn unstarted(ingress: Option<&str>) -> Self {
        Self::prepare(ingress)
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
        std::fs::write(
            data.path().join("truc.toml"),
            format!(
                "policies_dir = {:?}\nqueues_dir = {:?}\n",
                policies.display().to_string(),
                concat!(env!("CARGO_MANIFEST_DIR"), "/queues")
            ),
        )
        .unwrap();
        Self {
            prefix: format!("t{}x{n}.", std::process::id()),
            data,
            policies,
            // Known once the hub listens (see bound_admin_addr).
            admin_addr: "127.0.0.1:0".to_owned(),
            token: format!("test-token-{}-{n}-0123456789", std::process::id()),
            child: None,
            agencies: Vec::new(),
            hub_amqp_url: None,
            store_url: None,
            master_key: None,
            db: None,
        }
    }

    /// Starts a hub with its HTTPS gateway on a loopback port (plain HTTP),
    /// `config` added to its configuration and these policy files; the
    /// gateway's address.
    pub async fn start_with_gateway(config: &str, policies: &[(&str, &str)]) -> (Self, String) {
        let mut hub = Self::prepare(None);
        let mut text = std::fs::read_to_string(hub.config_file()).unwrap();
        text.push_str("gateway_addr = \"127.0.0.1:0\"\n");
        text.push_str(config);
        std::fs::write(hub.config_file(), text).unwrap();
        for (name, text) in policies {
            std::fs::write(hub.policies.join(name), text).unwrap();
        }
        hub.spawn().await;
        let addr = std::fs::read_to_string(hub.data.path().join("data").join("gateway.addr"))
            .unwrap()
            .trim()
            .to_owned();
        (hub, addr)
    }

    /// A hub prepared to run on a fresh PostgreSQL database (dropped with the
    /// last hub that uses it), with a master key its siblings share; not started.
    pub fn on_postgres() -> Self {
        let mut hub = Self::prepare(None);
        let db = truc::testing::TestDb::new();
        hub.store_url = Some(db.url().to_owned());
        hub.db = Some(std::sync::Arc::new(db));
        hub.master_key = Some(hex_key());
        hub
    }

    /// Another instance of this hub: its own process, data directory and
    /// admin port; the same broker prefix, shared store, master key, admin
    /// token and policies. Not started.
    pub fn sibling(&self) -> Self {
        let mut twin = Self::prepare(None);
        std::fs::copy(self.config_file(), twin.config_file()).unwrap();
        twin.prefix = self.prefix.clone();
        twin.token = self.token.clone();
        twin.policies = self.policies.clone();
        twin.store_url = self.store_url.clone();
        twin.master_key = self.master_key.clone();
        twin.db = self.db.clone();
        twin.hub_amqp_url = self.hub_amqp_url.clone();
        twin
    }

    /// Starts the process and waits until it is connected to the broker.
    pub async fn spawn(&mut self) {
        self.spawn_with(&[]).await
    }

    /// Starts the process with `truc serve --accept-loss` (it starts on a
    /// store that does not match its checkpoint, recording the loss in the
    /// audit log) and waits until it is connected to the broker.
    pub async fn spawn_accepting_loss(&mut self) {
        self.spawn_with(&["--accept-loss"]).await
    }

    /// The `truc serve` command this hub runs, with `args` after `serve`.
    fn serve_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_truc"));
        c.arg("serve")
            .args(args)
            .env(
                "TRUC_AMQP_URL",
                self.hub_amqp_url.clone().unwrap_or_else(amqp_url),
            )
            .env("TRUC_DATA_DIR", self.data.path().join("data"))
            .env("TRUC_ADMIN_ADDR", "127.0.0.1:0")
            .env("TRUC_ADMIN_TOKEN", &self.token)
            .env("TRUC_PREFIX", &self.prefix)
            .env("TRUC_CONFIG", self.config_file())
            .env("TRUC_STORE_URL", self.store_url.clone().unwrap_or_default())
            .env(
                "TRUC_MASTER_KEY",
                self.master_key.clone().unwrap_or_default(),
            )
            .env(
                "RUST_LOG",
                std::env::var("TRUC_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        c
    }

    /// Runs `truc serve` (stopped hub) and expects it to refuse to start:
    /// it must exit non-zero by itself within 60 s. Returns its stderr.
    pub fn serve_refused(&self) -> String {
        assert!(self.child.is_none(), "already running");
        let mut child = self
            .serve_command(&[])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn truc serve");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                assert!(!st.success(), "serve exited 0: {err}");
                return err;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("truc serve did not refuse to start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process with `truc serve ARGS` and waits until it is
    /// connected to the broker.
    pub async fn spawn_with(&mut self, args: &[&str]) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("serve.log"))
            .unwrap();
        let data_dir = self.data.path().join("data");
        let _ = std::fs::remove_file(data_dir.join("admin.addr"));
        let mut child = self
            .serve_command(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn truc serve");
        let addr = bound_admin_addr(&mut child, &data_dir, || self.log());
        self.child = Some(child);
        self.admin_addr = addr;
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

    /// The configuration file the hub runs with (`TRUC_CONFIG`).
    pub fn config_file(&self) -> PathBuf {
        self.data.path().join("truc.toml")
    }

    /// The hub's configuration, read as `truc serve` reads it (file, then
    /// environment) with the test's prefix.
    pub fn config(&self) -> truc::config::Config {
        let mut c = truc::config::Config::load(Some(&self.config_file())).expect("test config");
        c.prefix = self.prefix.clone();
        c
    }

    /// The router's ingress prefetch (config key `prefetch`).
    pub fn prefetch(&self) -> u16 {
        self.config().prefetch
    }

    /// The topology the hub declares, under the test's prefix.
    pub fn topology(&self) -> Topology {
        Topology::load(&self.config().queues_dir, &self.prefix).expect("the hub's topology")
    }

    /// The hub's log so far (every run of it, in order).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("serve.log")).unwrap_or_default()
    }

    /// Waits (up to 10 s) until `count` lines of the hub's log each contain
    /// every one of `parts`: for what the hub says only once it is done
    /// (e.g. durable), where nothing else shows it.
    pub async fn wait_log(&self, parts: &[&str], count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            let n = log
                .lines()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .count();
            if n >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} of {count} log lines with {parts:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
                // What it was doing when it hung: the end of its log.
                let log = self.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(60)..].join("\n");
                panic!("hub did not stop on SIGTERM within 40 s; the end of its log:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /healthz` (open): the status code and the JSON body.
    pub async fn healthz(&self) -> (u16, serde_json::Value) {
        let r = truc::cli::http::request(&self.admin_addr, "GET", "/healthz", "", None)
            .await
            .unwrap();
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or_default(),
        )
    }

    /// `GET /metrics` (with the token): the Prometheus text.
    pub async fn metrics_text(&self) -> String {
        let r = truc::cli::http::request(&self.admin_addr, "GET", "/metrics", &self.token, None)
            .await
            .unwrap();
        String::from_utf8_lossy(&r.body).into_owned()
    }

    /// Calls the admin API.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.api_as(&self.token, method, path, body).await
    }

    /// Calls the admin API with bearer token `token`.
    pub async fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        let r = truc::cli::http::request(&self.admin_addr, method, path, token, body.as_deref())
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
        // The hub is connected: the agency's queues exist when this returns.
        assert_eq!(v["queues_declared"], true, "{v}\n{}", self.log());
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

    /// Depth and consumers of a queue of this hub (`short` without the
    /// prefix); the queue must exist.
    async fn queue(&self, short: &str) -> truc::broker::QueueInfo {
        let link = self.link().await;
        let info = link
            .queue_info(&format!("{}{short}", self.prefix))
            .await
            .unwrap_or_else(|e| panic!("{short}: {e}"));
        link.close().await;
        info
    }

    /// Depth of a queue of this hub (`short` without the prefix); the queue must exist.
    pub async fn depth(&self, short: &str) -> u32 {
        self.queue(short).await.messages
    }

    /// Waits (up to 10 s) until `count` of queue `short` is `want`.
    async fn wait_queue(
        &self,
        short: &str,
        (what, count): (&str, fn(&truc::broker::QueueInfo) -> u32),
        want: u32,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = count(&self.queue(short).await);
            if n == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{short} has {n} {what}, want {want}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 10 s) until queue `short` has `want` consumers: for a
    /// test about competing consumers, which must not begin before every
    /// instance consumes.
    pub async fn wait_consumers(&self, short: &str, want: u32) {
        self.wait_queue(short, ("consumers", |q| q.consumers), want)
            .await
    }

    /// Waits (up to 10 s) until queue `short` holds `want` messages.
    pub async fn wait_depth(&self, short: &str, want: u32) {
        self.wait_queue(short, ("messages", |q| q.messages), want)
            .await
    }

    /// Runs a `truc` CLI command and expects exit `code` (stdout and
    /// stderr in the failure message).
    pub fn cli_expect(&self, args: &[&str], code: i32) -> Output {
        let o = self.cli(args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "truc {args:?}\nstdout: {}\nstderr: {}",
            stdout(&o),
            stderr(&o)
        );
        o
    }

    /// Runs a `truc` CLI command against this hub.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_token(&self.token, args)
    }

    /// Runs a `truc` CLI command against this hub with admin token `token`.
    pub fn cli_with_token(&self, token: &str, args: &[&str]) -> Output {
        self.cli_command(token, args).output().unwrap()
    }

    /// Runs a `truc` CLI command with admin token `token` and `input` on
    /// its standard input.
    pub fn cli_with_input(&self, token: &str, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cli_command(token, args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Adds account `name` with `role` (and `agency`) through the CLI, its
    /// password `password` on standard input.
    pub fn add_account(&self, name: &str, role: &str, agency: Option<&str>, password: &str) {
        let mut args = vec!["account", "add", name, "--role", role];
        if let Some(a) = agency {
            args.extend(["--agency", a]);
        }
        let o = self.cli_with_input(&self.token, &args, &format!("{password}\n"));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }

    /// The `truc` CLI command against this hub, with admin token `token`.
    fn cli_command(&self, token: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_truc"));
        c.args(args)
            .env(
                "TRUC_AMQP_URL",
                self.hub_amqp_url.clone().unwrap_or_else(amqp_url),
            )
            .env("TRUC_DATA_DIR", self.data.path().join("data"))
            .env("TRUC_ADMIN_ADDR", &self.admin_addr)
            .env("TRUC_ADMIN_TOKEN", token)
            .env("TRUC_PREFIX", &self.prefix)
            .env("TRUC_STORE_URL", self.store_url.clone().unwrap_or_default())
            .env(
                "TRUC_MASTER_KEY",
                self.master_key.clone().unwrap_or_default(),
            )
            .env_remove("TRUC_CONFIG");
        c
    }

    /// The timeline record of envelope `id` from `from` (`GET /v1/envelopes`).
    pub async fn envelope_record(&self, from: &str, id: &str) -> serde_json::Value {
        let (status, rec) = self
            .api("GET", &format!("/v1/envelopes?from={from}&id={id}"), None)
            .await;
        assert_eq!(status, 200, "{rec}");
        rec
    }

    /// The states of the first destination of envelope `id` from `from`, in order.
    pub async fn dest_states(&self, from: &str, id: &str) -> Vec<String> {
        self.envelope_record(from, id).await["dests"][0]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["state"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Codes of the agencies the running hub has registered (its admin API).
    fn listed_agencies(&self) -> Vec<AgencyCode> {
        if self.child.is_none() {
            return Vec::new();
        }
        let (addr, token) = (self.admin_addr.clone(), self.token.clone());
        block_on_thread(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                truc::cli::http::request(&addr, "GET", "/v1/agencies", &token, None),
            )
            .await;
            let Ok(Ok(r)) = r else {
                return Vec::new();
            };
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| AgencyCode::parse(a["code"].as_str()?).ok())
                .collect()
        })
    }
}

impl Drop for TestHub {
    /// Stops the hub, then deletes every exchange and queue of its topology:
    /// fixed queues, delay buckets, and the inbox and notify queues of every
    /// agency it registered (asked from the hub while it runs, plus
    /// [`TestHub::agencies`]). Runs when a test panics too.
    fn drop(&mut self) {
        let mut agencies = self.listed_agencies();
        self.kill9();
        agencies.extend(self.agencies.iter().cloned());
        agencies.sort();
        agencies.dedup();
        let topo = self.topology();
        delete_on_broker(topo.queue_names(&agencies), topo.exchange_names());
    }
}

/// Runs `f` to completion on a runtime of its own in a thread of its own (for
/// `Drop`, which is synchronous and may run inside a test's runtime).
fn block_on_thread<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .expect("cleanup thread")
}

/// Deletes `queues`, then `exchanges` (missing ones count as deleted); each
/// step is bounded in time, and a failure reconnects for the next one.
pub fn delete_on_broker(queues: Vec<String>, exchanges: Vec<String>) {
    if queues.is_empty() && exchanges.is_empty() {
        return;
    }
    block_on_thread(async move {
        let step = Duration::from_secs(5);
        let url = amqp_url();
        let mut link: Option<Link> = None;
        let names = queues
            .iter()
            .map(|q| (q, true))
            .chain(exchanges.iter().map(|e| (e, false)));
        let mut failed = Vec::new();
        'names: for (name, is_queue) in names {
            let mut why = String::new();
            for _ in 0..2 {
                if !link.as_ref().is_some_and(Link::is_connected) {
                    if let Some(old) = link.take() {
                        old.close().await;
                    }
                    match tokio::time::timeout(step, Link::connect(&url, "truc test cleanup")).await
                    {
                        Ok(Ok(l)) => link = Some(l),
                        Ok(Err(e)) => {
                            why = e.to_string();
                            continue;
                        }
                        Err(_) => {
                            why = "connect timeout".into();
                            continue;
                        }
                    }
                }
                let l = link.as_ref().expect("connected");
                let done = if is_queue {
                    tokio::time::timeout(step, async { l.delete_queue(name).await.map(drop) }).await
                } else {
                    tokio::time::timeout(step, l.delete_exchange(name)).await
                };
                match done {
                    Ok(Ok(())) | Ok(Err(AmqpError::NoSuchQueue(_))) => continue 'names,
                    Ok(Err(e)) => why = e.to_string(),
                    Err(_) => why = "timeout".into(),
                }
            }
            failed.push(format!("{name} ({why})"));
        }
        if !failed.is_empty() {
            eprintln!("cleanup: not deleted: {}", failed.join(", "));
        }
        if let Some(l) = link {
            l.close().await;
        }
    });
}

/// Queues and exchanges a test declares itself, deleted on `Drop` (also when
/// the test panics).
#[derive(Debug, Default)]
#[must_use = "dropping the guard deletes what it holds"]
pub struct BrokerGuard {
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl BrokerGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deletes queue `name` on drop; returns `name`.
    pub fn queue(&mut self, name: impl Into<String>) -> String {
        let name = name.into();
        self.queues.push(name.clone());
        name
    }

    /// Deletes exchange `name` on drop; returns `name`.
    pub fn exchange(&mut self, name: impl Into<String>) -> String {
        let name = name.into();
        self.exchanges.push(name.clone());
        name
    }
}

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        delete_on_broker(
            std::mem::take(&mut self.queues),
            std::mem::take(&mut self.exchanges),
        );
    }
}

/// A command's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// An envelope under construction: one destination, subject "Công văn thử",
/// priority 0 (Thường), type `edoc`, `text/plain`, body "noi dung", a fresh
/// message id, no further header.
#[derive(Debug, Clone)]
pub struct Envelope(Outgoing);

/// An envelope to `to` (see [`Envelope`] for the defaults).
pub fn envelope(to: &str) -> Envelope {
    Envelope(Outgoing {
        to: vec![code(to)],
        subject: "Công văn thử".into(),
        priority: Priority::NORMAL,
        data_type: "edoc".into(),
        content_type: "text/plain".into(),
        body: b"noi dung".to_vec(),
        message_id: None,
        extra: Vec::new(),
    })
}

impl Envelope {
    /// Adds a destination.
    pub fn also_to(mut self, to: &str) -> Self {
        self.0.to.push(code(to));
        self
    }

    /// `lgsp-subject`.
    pub fn subject(mut self, s: impl Into<String>) -> Self {
        self.0.subject = s.into();
        self
    }

    /// QCVN 102 priority code (0–4).
    pub fn priority(mut self, p: u8) -> Self {
        self.0.priority = Priority::new(p).unwrap();
        self
    }

    /// `lgsp-type`.
    pub fn data_type(mut self, t: &str) -> Self {
        self.0.data_type = t.into();
        self
    }

    /// AMQP content type.
    pub fn content_type(mut self, t: &str) -> Self {
        self.0.content_type = t.into();
        self
    }

    /// Body.
    pub fn body(mut self, b: impl AsRef<[u8]>) -> Self {
        self.0.body = b.as_ref().to_vec();
        self
    }

    /// Message id (instead of a fresh one).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.0.message_id = Some(id.into());
        self
    }

    /// A further `lgsp-` header (`lgsp-bounce-after`, `lgsp-not-before`…).
    pub fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.0.extra.push((k.into(), v.into()));
        self
    }

    /// What `Client::send` takes.
    pub fn build(&self) -> Outgoing {
        self.0.clone()
    }

    /// The signed message from `creds` under hub prefix `prefix`.
    pub fn signed(&self, prefix: &str, creds: &Credentials) -> Message {
        envelope_message(prefix, creds, &self.0)
    }

    /// The signed message, edited by `edit` before it is signed (fresh time and nonce).
    pub fn signed_with(
        &self,
        prefix: &str,
        creds: &Credentials,
        edit: impl FnOnce(&mut Message),
    ) -> Message {
        let mut m = self.signed(prefix, creds);
        edit(&mut m);
        sign(&mut m, creds, Alg::HmacSha256);
        m
    }
}

/// Signs `m` again with `secret` over its canonical form as it is now (time,
/// nonce and key kept): a message edited after signing that still verifies.
pub fn resign(m: &mut Message, secret: &str) {
    m.headers.remove("lgsp-signature");
    let canon = truc::canonical::canonical_form(m, &m.routing_key).unwrap();
    m.set_header(
        "lgsp-signature",
        sign_hmac(Alg::HmacSha256, secret, canon.as_bytes()),
    );
}

/// A status message under construction.
#[derive(Debug, Clone)]
pub struct Status {
    reference: String,
    status: String,
    source: Option<AgencyCode>,
    reason: Option<String>,
}

/// Status `status` (`01`, `13`…) about envelope `reference`.
pub fn status(reference: &str, status: &str) -> Status {
    Status {
        reference: reference.into(),
        status: status.into(),
        source: None,
        reason: None,
    }
}

impl Status {
    /// The envelope's source (`lgsp-to`).
    pub fn source(mut self, c: &AgencyCode) -> Self {
        self.source = Some(c.clone());
        self
    }

    /// `lgsp-reason`.
    pub fn reason(mut self, r: &str) -> Self {
        self.reason = Some(r.into());
        self
    }

    /// The signed message from `creds` under hub prefix `prefix`.
    pub fn signed(&self, prefix: &str, creds: &Credentials) -> Message {
        status_message(
            prefix,
            creds,
            &self.reference,
            &self.status,
            self.source.as_ref(),
            self.reason.as_deref(),
        )
    }
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 in `dir`
/// (`ca.pem`, `server.pem`, `server.key`), made by the ops script with
/// openssl (2048-bit keys, for speed).
pub fn server_certs(dir: &Path) {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/tls-broker.sh"))
        .args(["certs", &dir.to_string_lossy(), "localhost", "127.0.0.1"])
        .env("TRUC_TLS_KEY_BITS", "2048")
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "certificates (is openssl installed? apt-get install openssl): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

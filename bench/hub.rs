//! The truc under test: a `truc serve` child with its own prefix, data
//! directory, admin port and token (and optional extra environment, e.g. a
//! shared PostgreSQL store and master key), or a running truc reached through
//! its admin API; agency registration through `POST /v1/agencies`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use tokio::process::{Child, Command};
use truc::client::Credentials;

/// An agency registered for the run.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Credentials issued by the hub.
    pub creds: Credentials,
    /// Its inbox queue.
    pub inbox: String,
    /// Its notify queue.
    pub notify: String,
}

/// The hub under test.
pub struct Hub {
    /// Admin API address.
    pub admin_addr: String,
    /// Admin bearer token.
    pub token: String,
    /// Exchange and queue prefix.
    pub prefix: String,
    /// The child process, when the benchmark started it.
    child: Option<Child>,
    /// Process id to sample (child or `--truc-pid`).
    pub pid: Option<u32>,
    /// Temporary directory of the child (data and log).
    pub work_dir: Option<PathBuf>,
    /// The benchmark started this truc (still true after [`Hub::stop`]).
    pub started: bool,
    /// Configuration file given to the child (`--config`), if any.
    config: Option<PathBuf>,
    /// Admin addresses and tokens of other instances of the same hub (same
    /// prefix and store) whose `/metrics` are added to this one's.
    pub peers: Vec<(String, String)>,
    /// The agencies' gateway of a running truc (`--gateway-addr`); a child
    /// writes its own to `<data_dir>/gateway.addr`.
    pub gateway: Option<String>,
}

/// Children started by this run so far (each gets its own work directory).
static SPAWNED: AtomicU32 = AtomicU32::new(0);

/// A free loopback port (bound then released).
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The configuration the child would read without `--config`: the file
/// `TRUC_CONFIG` names, else an empty table.
fn base_config() -> Result<toml::Table, String> {
    let Some(path) = std::env::var_os("TRUC_CONFIG").filter(|p| !p.is_empty()) else {
        return Ok(toml::Table::new());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("TRUC_CONFIG {}: {e}", Path::new(&path).display()))?;
    toml::from_str(&text).map_err(|e| format!("TRUC_CONFIG {}: {e}", Path::new(&path).display()))
}

/// Writes the policy files the child would read (the `policies_dir` of
/// `config`, `policies/` by default; a file absent there stays absent, so
/// the built-in one applies) into `dir`, with `[gateway]` of `access.toml`
/// set to `calls_per_s` and `burst`. Returns `dir`, absolute.
fn policies_copy(
    config: &toml::Table,
    dir: &Path,
    (calls_per_s, burst): (f64, u32),
) -> Result<PathBuf, String> {
    let from = config
        .get("policies_dir")
        .and_then(toml::Value::as_str)
        .map_or_else(|| PathBuf::from("policies"), PathBuf::from);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for name in ["ingress.toml", "delivery.toml", "presence.toml"] {
        match std::fs::read(from.join(name)) {
            Ok(b) => std::fs::write(dir.join(name), b).map_err(|e| e.to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", from.join(name).display())),
        }
    }
    let access = match std::fs::read_to_string(from.join("access.toml")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            truc::policy::DEFAULT_ACCESS.to_owned()
        }
        Err(e) => return Err(format!("{}: {e}", from.join("access.toml").display())),
    };
    let mut access: toml::Table =
        toml::from_str(&access).map_err(|e| format!("access.toml: {e}"))?;
    let gateway = access
        .entry("gateway")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(gateway) = gateway else {
        return Err("access.toml: [gateway] is not a table".into());
    };
    gateway.insert("calls_per_s".into(), toml::Value::Float(calls_per_s));
    gateway.insert("burst".into(), toml::Value::Integer(i64::from(burst)));
    let text = toml::to_string(&access).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("access.toml"), text).map_err(|e| e.to_string())?;
    std::path::absolute(dir).map_err(|e| e.to_string())
}

impl Hub {
    /// Starts `bin serve` with a fresh prefix, data dir, admin port and token
    /// (and an ingress `prefetch` when given); `env` is set last, after the
    /// benchmark's own variables (e.g. `TRUC_STORE_URL`, `TRUC_MASTER_KEY`,
    /// `TRUC_GATEWAY_ADDR`). With `gateway_rate` (calls per second, burst),
    /// the child gets its own policies directory: copies of the policy files
    /// it would read, with that rate in `[gateway]` of `access.toml`.
    pub async fn spawn(
        bin: &Path,
        amqp_url: &str,
        prefix: &str,
        log_level: &str,
        prefetch: Option<u16>,
        env: &[(String, String)],
        gateway_rate: Option<(f64, u32)>,
    ) -> Result<Self, String> {
        if !bin.exists() {
            return Err(format!(
                "{} not found: build it first with `cargo build --release --bin truc --bin truc-bench`",
                bin.display()
            ));
        }
        let n = SPAWNED.fetch_add(1, Ordering::Relaxed);
        let name = match n {
            0 => format!("truc-bench-{}", std::process::id()),
            n => format!("truc-bench-{}-{n}", std::process::id()),
        };
        let work_dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&work_dir);
        std::fs::create_dir_all(&work_dir).map_err(|e| format!("{}: {e}", work_dir.display()))?;
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let admin_addr = format!("127.0.0.1:{port}");
        let token = hex::encode(rand::thread_rng().gen::<[u8; 16]>());
        let log = std::fs::File::create(work_dir.join("truc.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        let mut config = None;
        if prefetch.is_some() || gateway_rate.is_some() {
            // Everything else comes from the configuration the child would
            // read (TRUC_CONFIG, which `--config` replaces), the defaults and
            // the environment below.
            let mut table = base_config()?;
            if let Some(p) = prefetch {
                table.insert("prefetch".into(), toml::Value::Integer(i64::from(p)));
            }
            if let Some(rate) = gateway_rate {
                let dir = policies_copy(&table, &work_dir.join("policies"), rate)?;
                table.insert(
                    "policies_dir".into(),
                    toml::Value::String(dir.display().to_string()),
                );
            }
            let path = work_dir.join("truc.toml");
            let text = toml::to_string(&table).map_err(|e| e.to_string())?;
            std::fs::write(&path, text).map_err(|e| e.to_string())?;
            cmd.arg("--config").arg(&path);
            config = Some(path);
        }
        let child = cmd
            .arg("serve")
            .env("TRUC_PREFIX", prefix)
            .env("TRUC_DATA_DIR", work_dir.join("data"))
            .env("TRUC_ADMIN_ADDR", &admin_addr)
            .env("TRUC_ADMIN_TOKEN", &token)
            .env("TRUC_AMQP_URL", amqp_url)
            .env("RUST_LOG", log_level)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        let hub = Self {
            admin_addr,
            token,
            prefix: prefix.to_owned(),
            child: Some(child),
            pid,
            work_dir: Some(work_dir),
            started: true,
            config,
            peers: Vec::new(),
            gateway: None,
        };
        Ok(hub)
    }

    /// A truc that already runs.
    pub fn external(admin_addr: &str, token: &str, prefix: &str, pid: Option<u32>) -> Self {
        Self {
            admin_addr: admin_addr.to_owned(),
            token: token.to_owned(),
            prefix: prefix.to_owned(),
            child: None,
            pid,
            work_dir: None,
            started: false,
            config: None,
            peers: Vec::new(),
            gateway: None,
        }
    }

    /// True when the benchmark started the hub.
    pub fn spawned(&self) -> bool {
        self.child.is_some()
    }

    /// The topology the child declares: its configuration (`--config`, else
    /// `TRUC_CONFIG`, else the defaults) names the `queues/` directory; the
    /// built-in topology when that cannot be read.
    pub fn topology(&self) -> truc::topology::Topology {
        let path = self
            .config
            .clone()
            .or_else(|| std::env::var_os("TRUC_CONFIG").map(PathBuf::from));
        let dir = match truc::config::Config::load(path.as_deref()) {
            Ok(c) => c.queues_dir,
            Err(e) => {
                eprintln!("warning: {e}; assuming queues/");
                PathBuf::from("queues")
            }
        };
        truc::topology::Topology::load(&dir, &self.prefix).unwrap_or_else(|e| {
            eprintln!("warning: {e}; using the built-in topology for the cleanup");
            truc::topology::Topology::builtin(&self.prefix)
        })
    }

    /// The address of the agencies' gateway: the one given for a running
    /// truc, else the one the child wrote to `<data_dir>/gateway.addr` at
    /// start-up (waited for up to `within`).
    pub async fn gateway_addr(&self, within: Duration) -> Result<String, String> {
        if let Some(a) = &self.gateway {
            return Ok(a.clone());
        }
        let Some(dir) = self.work_dir.as_ref().filter(|_| self.started) else {
            return Err(
                "the gateway address of a running truc is not known: give --gateway-addr".into(),
            );
        };
        let path = dir.join("data").join("gateway.addr");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(t) = std::fs::read_to_string(&path) {
                if !t.trim().is_empty() {
                    return Ok(t.trim().to_owned());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not written within {within:?}: is the gateway on (TRUC_GATEWAY_ADDR)?",
                    path.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Codes of every agency the hub has registered (`GET /v1/agencies`);
    /// empty when it does not answer.
    pub async fn list_agencies(&self) -> Vec<truc::code::AgencyCode> {
        let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(10),
            truc::cli::http::request(&self.admin_addr, "GET", "/v1/agencies", &self.token, None),
        )
        .await
        else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| truc::code::AgencyCode::parse(a["code"].as_str()?).ok())
            .collect()
    }

    /// Waits until `/healthz` says the broker is connected.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "truc exited with {status} at start-up:\n{}",
                        self.log_tail(20)
                    ));
                }
            }
            match tokio::time::timeout(
                Duration::from_secs(2),
                truc::cli::http::request(&self.admin_addr, "GET", "/healthz", &self.token, None),
            )
            .await
            {
                Ok(Ok(r)) if r.status == 200 => {
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    if v["broker_connected"] == json!(true) {
                        return Ok(());
                    }
                    last = String::from_utf8_lossy(&r.body).into_owned();
                }
                Ok(Ok(r)) => last = format!("HTTP {}", r.status),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timeout".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "truc not ready within {within:?}: {last}\n{}",
            self.log_tail(20)
        ))
    }

    /// Registers agency `code` (with an RSA public key when given).
    pub async fn register(
        &self,
        code: &str,
        name: &str,
        public_key_pem: Option<&str>,
    ) -> Result<Registered, String> {
        let mut body = json!({ "code": code, "name": name });
        if let Some(pem) = public_key_pem {
            body["public_key_pem"] = json!(pem);
        }
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            truc::cli::http::request(
                &self.admin_addr,
                "POST",
                "/v1/agencies",
                &self.token,
                Some(&body),
            ),
        )
        .await
        .map_err(|_| format!("registering {code}: admin API timeout"))?
        .map_err(|e| format!("registering {code}: {e}"))?;
        if r.status != 201 {
            return Err(format!(
                "registering {code}: HTTP {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        let creds: Credentials = serde_json::from_slice(&r.body)
            .map_err(|e| format!("registering {code}: bad answer: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if v["queues_declared"] == json!(false) {
            return Err(format!(
                "registering {code}: the hub did not declare its queues"
            ));
        }
        let queue = |k: &str, default: String| v[k].as_str().map(str::to_owned).unwrap_or(default);
        Ok(Registered {
            inbox: queue("inbox", format!("{}inbox.{code}", self.prefix)),
            notify: queue("notify", format!("{}notify.{code}", self.prefix)),
            creds,
        })
    }

    /// Unlabelled samples of `/metrics` (Prometheus text), by name; with
    /// [`Hub::peers`], the sum over every instance (sums and counts add up).
    pub async fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let mut out = std::collections::HashMap::new();
        let me = (self.admin_addr.clone(), self.token.clone());
        for (addr, token) in std::iter::once(&me).chain(&self.peers) {
            let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(3),
                truc::cli::http::request(addr, "GET", "/metrics", token, None),
            )
            .await
            else {
                continue;
            };
            for line in String::from_utf8_lossy(&r.body).lines() {
                if line.starts_with('#') || line.contains('{') {
                    continue;
                }
                if let Some((k, v)) = line.rsplit_once(' ') {
                    if let Ok(v) = v.trim().parse::<f64>() {
                        *out.entry(k.trim().to_owned()).or_insert(0.0) += v;
                    }
                }
            }
        }
        out
    }

    /// Stops the child: SIGTERM, then SIGKILL after `grace`. Returns a note on how it went.
    pub async fn stop(&mut self, grace: Duration) -> String {
        let Some(mut child) = self.child.take() else {
            return "external truc left running".into();
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(s)) => format!("truc stopped ({s})"),
            Ok(Err(e)) => format!("truc wait failed: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                format!("truc did not stop within {grace:?} after SIGTERM; killed")
            }
        }
    }

    /// The last `n` lines of the child's log.
    pub fn log_tail(&self, n: usize) -> String {
        let Some(dir) = &self.work_dir else {
            return String::new();
        };
        let text = std::fs::read_to_string(dir.join("truc.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Counts log lines at WARN and ERROR level in the child's log.
    pub fn log_problems(&self) -> (u64, u64, Vec<String>) {
        let Some(dir) = &self.work_dir else {
            return (0, 0, Vec::new());
        };
        let text = std::fs::read_to_string(dir.join("truc.log")).unwrap_or_default();
        let (mut warn, mut error) = (0, 0);
        let mut examples = Vec::new();
        for l in text.lines() {
            let is_warn = l.contains(" WARN ");
            let is_error = l.contains(" ERROR ");
            if is_warn {
                warn += 1;
            }
            if is_error {
                error += 1;
            }
            if (is_warn || is_error) && examples.len() < 5 {
                examples.push(l.chars().take(300).collect());
            }
        }
        (warn, error, examples)
    }

    /// Removes the child's temporary directory.
    pub fn remove_work_dir(&self) {
        if let Some(dir) = &self.work_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

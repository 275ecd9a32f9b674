//! Configuration of `truc serve` and of the CLI: a TOML file with working
//! defaults, then environment overrides (`TRUC_AMQP_URL`, `TRUC_AMQP_CA_FILE`,
//! `TRUC_DATA_DIR`, `TRUC_ADMIN_ADDR`, `TRUC_ADMIN_TOKEN`, `TRUC_ADMIN_TLS_CERT`,
//! `TRUC_ADMIN_TLS_KEY`, `TRUC_ADMIN_CA_FILE`, `TRUC_METRICS_REQUIRE_TOKEN`,
//! `TRUC_PREFIX`, `TRUC_MASTER_KEY`, `TRUC_STORE_ANCHOR_FILE`, `TRUC_TIME_ZONE`,
//! `TRUC_INSTANCE_ID`, `TRUC_GATEWAY_ADDR`, `TRUC_GATEWAY_TLS_CERT`,
//! `TRUC_GATEWAY_TLS_KEY`, `TRUC_SPACES_DIR`).
//!
//! Invariants: a [`Config`] returned by [`Config::load`] is validated; a CA
//! file named for `amqps://` holds at least one PEM certificate, and one named
//! with a plaintext `amqp://` URL is refused (it would otherwise be ignored);
//! an admin token, configured or read from `admin.token`, is at least 16
//! characters without whitespace (an empty or short one is an error, never
//! "no token"); a non-loopback `admin_addr` needs HTTPS (`admin_tls_cert` and
//! `admin_tls_key` to serve it, or `admin_ca_file` for the CLI to call it), and
//! so does a non-loopback `gateway_addr` (`gateway_tls_cert` and
//! `gateway_tls_key`).
//! Files truc writes into `data_dir` are created whole (written to a temporary
//! name, synced, then renamed) and mode 0600, in a directory of mode 0700.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is invalid.
    #[error("config {key}: {problem}")]
    Invalid {
        /// The key (or environment variable).
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn default_store_connections() -> usize {
    8
}

/// Whether `url` looks like a PostgreSQL connection string (a URL, or
/// `key=value` words naming a host); the client parses it fully at start.
pub fn is_store_url(url: &str) -> bool {
    let url = url.trim();
    url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || url.split_whitespace().any(|w| w.starts_with("host="))
}

/// `url` with the password replaced by `***`, for logs and errors, in
/// either syntax: the
/// `user:password@` part and a `password` query parameter of a URL, or a
/// `password=` pair (quoted or not) of the `key=value` form.
pub fn redact_store_url(url: &str) -> String {
    // Any `scheme://` URL (a mistyped one too: it is named in errors).
    let scheme = url.find("://").filter(|&i| {
        i > 0
            && url[..i]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    });
    if let Some(scheme_end) = scheme.map(|i| i + 3) {
        let rest = &url[scheme_end..];
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let mut out = url[..scheme_end].to_owned();
        match rest[..auth_end].rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&rest[at..auth_end]);
            }
            None => out.push_str(&rest[..auth_end]),
        }
        let tail = &rest[auth_end..];
        match tail.find('?') {
            Some(q) => {
                out.push_str(&tail[..=q]);
                let params: Vec<String> = tail[q + 1..]
                    .split('&')
                    .map(|p| match p.split_once('=') {
                        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                        _ => p.to_owned(),
                    })
                    .collect();
                out.push_str(&params.join("&"));
            }
            None => out.push_str(tail),
        }
        out
    } else {
        redact_key_values(url)
    }
}

/// The `key=value` form with the value of `password` replaced.
fn redact_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            out.push(c);
            chars.next();
            continue;
        }
        // A key runs to '=' or whitespace.
        let mut key_end = s.len();
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                key_end = i;
                break;
            }
            chars.next();
        }
        let key = &s[start..key_end];
        out.push_str(key);
        // Whitespace and '=' between key and value.
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                out.push(c);
                chars.next();
                if c == '=' {
                    break;
                }
            } else {
                break;
            }
        }
        while let Some(&(_, c)) = chars.peek() {
            if c.is_whitespace() {
                out.push(c);
                chars.next();
            } else {
                break;
            }
        }
        // The value: quoted (with backslash escapes) or up to whitespace.
        let value_start = chars.peek().map_or(s.len(), |&(i, _)| i);
        let mut value_end = s.len();
        if chars.peek().is_some_and(|&(_, c)| c == '\'') {
            chars.next();
            while let Some((i, c)) = chars.next() {
                if c == '\\' {
                    chars.next();
                } else if c == '\'' {
                    value_end = i + 1;
                    break;
                }
            }
        } else {
            while let Some(&(i, c)) = chars.peek() {
                if c.is_whitespace() {
                    value_end = i;
                    break;
                }
                chars.next();
            }
        }
        if key.eq_ignore_ascii_case("password") {
            out.push_str("***");
        } else {
            out.push_str(&s[value_start..value_end]);
        }
    }
    out
}

/// The broker nodes of an AMQP URL setting: one URL, or several separated by
/// commas (the nodes of one RabbitMQ cluster), in the order given.
pub fn broker_nodes(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// The virtual host named by an AMQP URL's path (`/` when absent; `%2f`
/// decoded); for a list of nodes, the first node's.
pub fn vhost(url: &str) -> String {
    let first = broker_nodes(url).first().copied().unwrap_or("");
    let rest = first.split_once("://").map(|(_, r)| r).unwrap_or(first);
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() {
        "/".into()
    } else {
        path.replace("%2f", "/").replace("%2F", "/")
    }
}

/// Default broker URL.
pub fn default_amqp_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}
/// Default sled directory.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
/// Default admin API address.
pub fn default_admin_addr() -> String {
    "127.0.0.1:7070".into()
}
/// Default name prefix.
pub fn default_prefix() -> String {
    "lgsp.".into()
}
/// Default topology directory.
pub fn default_queues_dir() -> PathBuf {
    PathBuf::from("queues")
}
/// Default policy directory.
pub fn default_policies_dir() -> PathBuf {
    PathBuf::from("policies")
}
/// Default ingress prefetch (messages in flight in the router).
pub fn default_prefetch() -> u16 {
    32
}
/// Default retention of audit entries (the regulations ask for two months).
pub fn default_audit_retention() -> String {
    "60d".into()
}
/// Default retention of envelope metadata (timelines).
pub fn default_envelope_retention() -> String {
    "180d".into()
}
/// Default lifetime of a gateway session.
pub fn default_gateway_session_ttl() -> String {
    "15m".into()
}

/// Default time a client has to send a request head to the admin API (also
/// the idle time after which a keep-alive connection is closed).
pub fn default_admin_header_timeout() -> String {
    "10s".into()
}
/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// Default interval between samples of inbox depths for `/metrics`.
pub fn default_depth_sample_interval() -> String {
    "15s".into()
}

/// Default operator time zone.
pub fn default_time_zone() -> String {
    crate::core::zone::DEFAULT_ZONE.into()
}

/// `truc serve` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// RabbitMQ URL (`TRUC_AMQP_URL`).
    #[serde(default = "default_amqp_url")]
    pub amqp_url: String,
    /// PEM file of CA certificates trusted for an `amqps://` broker, in
    /// addition to the bundled web PKI roots (`TRUC_AMQP_CA_FILE`).
    #[serde(default)]
    pub amqp_ca_file: Option<PathBuf>,
    /// sled directory (`TRUC_DATA_DIR`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Admin API listen address (`TRUC_ADMIN_ADDR`); anything but loopback
    /// needs HTTPS. Port 0 lets the system choose; the address listened on
    /// is written to `<data_dir>/admin.addr` at every start.
    #[serde(default = "default_admin_addr")]
    pub admin_addr: String,
    /// PEM certificate chain the admin API serves HTTPS with
    /// (`TRUC_ADMIN_TLS_CERT`); needs `admin_tls_key`.
    #[serde(default)]
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key of `admin_tls_cert` (`TRUC_ADMIN_TLS_KEY`).
    #[serde(default)]
    pub admin_tls_key: Option<PathBuf>,
    /// For the CLI: PEM CA certificate(s) the admin API's HTTPS certificate
    /// is verified against; when set the CLI calls the admin API over HTTPS
    /// (`TRUC_ADMIN_CA_FILE`).
    #[serde(default)]
    pub admin_ca_file: Option<PathBuf>,
    /// Time a client has to send a request head (and idle time of a
    /// keep-alive connection) before the admin API closes it.
    #[serde(default = "default_admin_header_timeout")]
    pub admin_header_timeout: String,
    /// The agencies' HTTPS gateway listen address (`TRUC_GATEWAY_ADDR`); off
    /// when unset. Anything but loopback needs `gateway_tls_cert` and
    /// `gateway_tls_key`. Port 0 lets the system choose; the address
    /// listened on is written to `<data_dir>/gateway.addr` at every start.
    #[serde(default)]
    pub gateway_addr: Option<String>,
    /// PEM certificate chain the gateway serves HTTPS with
    /// (`TRUC_GATEWAY_TLS_CERT`); needs `gateway_tls_key`.
    #[serde(default)]
    pub gateway_tls_cert: Option<PathBuf>,
    /// PEM private key of `gateway_tls_cert` (`TRUC_GATEWAY_TLS_KEY`).
    #[serde(default)]
    pub gateway_tls_key: Option<PathBuf>,
    /// Where upload spaces keep their sealed content (`TRUC_SPACES_DIR`;
    /// default `<data_dir>/spaces`). Instances that share a store and serve
    /// the gateway share this directory too (a shared file system mounted
    /// at the same path on each machine).
    #[serde(default)]
    pub spaces_dir: Option<PathBuf>,
    /// How long a gateway session lasts before it must be renewed, from
    /// `10s` to `1d` (default `15m`).
    #[serde(default = "default_gateway_session_ttl")]
    pub gateway_session_ttl: String,
    /// Whether `/metrics` needs the admin token; default: yes unless
    /// `admin_addr` is loopback (`TRUC_METRICS_REQUIRE_TOKEN`).
    #[serde(default)]
    pub metrics_require_token: Option<bool>,
    /// Admin bearer token (`TRUC_ADMIN_TOKEN`); when unset one is generated
    /// into `<data_dir>/admin.token` at first start.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Prefix of every exchange and queue name (`TRUC_PREFIX`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Directory holding `topology.toml` (built-in when absent).
    #[serde(default = "default_queues_dir")]
    pub queues_dir: PathBuf,
    /// Directory holding the policy files (built-in when absent).
    #[serde(default = "default_policies_dir")]
    pub policies_dir: PathBuf,
    /// Ingress messages the router works on at once (AMQP prefetch).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Master key sealing the agencies' secrets at rest, 32 bytes as base64
    /// or hex (`TRUC_MASTER_KEY`); when unset one is generated into
    /// `<data_dir>/master.key` (mode 0600) at first start.
    #[serde(default)]
    pub master_key: Option<String>,
    /// How long audit entries are kept (at least `1d`), e.g. `60d`.
    #[serde(default = "default_audit_retention")]
    pub audit_retention: String,
    /// How long envelope metadata is kept (at least `1d`), e.g. `180d`.
    #[serde(default = "default_envelope_retention")]
    pub envelope_retention: String,
    /// How often inbox depths are sampled for `/metrics` (`1s`–`1h`).
    #[serde(default = "default_depth_sample_interval")]
    pub depth_sample_interval: String,
    /// The store's checkpoint file (`TRUC_STORE_ANCHOR_FILE`); default
    /// `<data_dir>/store.anchor`, beside the sled directory `<data_dir>/db`
    /// and never inside it.
    #[serde(default)]
    pub store_anchor_file: Option<PathBuf>,
    /// The shared store (`TRUC_STORE_URL`): a PostgreSQL connection string,
    /// `postgres://user:password@host1,host2/db?target_session_attrs=read-write`
    /// or `host=a,b dbname=truc user=truc target_session_attrs=read-write`
    /// (several hosts: truc follows the one that takes writes). Unset: the
    /// embedded sled store in `data_dir`, for one instance.
    #[serde(default)]
    pub store_url: Option<String>,
    /// Connections to the shared store each instance keeps (1–64).
    #[serde(default = "default_store_connections")]
    pub store_connections: usize,
    /// Start even if the store does not match its checkpoint, recording the
    /// loss in the audit log (`truc serve --accept-loss`). Never read from
    /// the file or the environment: it is a decision for one start.
    #[serde(skip)]
    pub accept_loss: bool,
    /// The operator's time zone, an IANA name (`TRUC_TIME_ZONE`): where
    /// reports cut days, weeks and months, and how they show times.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// This instance's id among the `truc serve` processes sharing one
    /// store (`TRUC_INSTANCE_ID`): 1-64 of `A-Z a-z 0-9 . _ -`, unique
    /// among them; shown by `truc instances`, `/healthz` and the
    /// `truc_instance_info` metric. Default `<hostname>-<pid>` (a new id at
    /// every start).
    #[serde(default)]
    pub instance_id: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("empty config takes every default")
    }
}

impl Config {
    /// Reads `path` (if given) then applies the environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            None => Self::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_owned(),
                    message: e.to_string(),
                })?
            }
        };
        cfg.apply_env(|k| std::env::var(k).ok());
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies environment overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("TRUC_AMQP_URL") {
            self.amqp_url = v;
        }
        if let Some(v) = get("TRUC_AMQP_CA_FILE").filter(|v| !v.is_empty()) {
            self.amqp_ca_file = Some(v.into());
        }
        if let Some(v) = get("TRUC_TIME_ZONE").filter(|v| !v.is_empty()) {
            self.time_zone = v;
        }
        if let Some(v) = get("TRUC_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("TRUC_ADMIN_ADDR") {
            self.admin_addr = v;
        }
        // Set but empty is kept (and refused by `validate`): an empty token
        // must never mean "no token".
        if let Some(v) = get("TRUC_ADMIN_TOKEN") {
            self.admin_token = Some(v);
        }
        for (var, slot) in [
            ("TRUC_ADMIN_TLS_CERT", &mut self.admin_tls_cert),
            ("TRUC_ADMIN_TLS_KEY", &mut self.admin_tls_key),
            ("TRUC_ADMIN_CA_FILE", &mut self.admin_ca_file),
        ] {
            if let Some(v) = get(var).filter(|v| !v.is_empty()) {
                *slot = Some(v.into());
            }
        }
        if let Some(v) = get("TRUC_GATEWAY_ADDR").filter(|v| !v.is_empty()) {
            self.gateway_addr = Some(v);
        }
        for (var, slot) in [
            ("TRUC_GATEWAY_TLS_CERT", &mut self.gateway_tls_cert),
            ("TRUC_GATEWAY_TLS_KEY", &mut self.gateway_tls_key),
            ("TRUC_SPACES_DIR", &mut self.spaces_dir),
        ] {
            if let Some(v) = get(var).filter(|v| !v.is_empty()) {
                *slot = Some(v.into());
            }
        }
        if let Some(v) = get("TRUC_METRICS_REQUIRE_TOKEN").filter(|v| !v.is_empty()) {
            self.metrics_require_token = match v.as_str() {
                "1" | "true" | "yes" => Some(true),
                "0" | "false" | "no" => Some(false),
                // Anything else: the safe side.
                _ => Some(true),
            };
        }
        if let Some(v) = get("TRUC_PREFIX") {
            self.prefix = v;
        }
        if let Some(v) = get("TRUC_MASTER_KEY").filter(|v| !v.is_empty()) {
            self.master_key = Some(v);
        }
        if let Some(v) = get("TRUC_STORE_ANCHOR_FILE").filter(|v| !v.is_empty()) {
            self.store_anchor_file = Some(v.into());
        }
        if let Some(v) = get("TRUC_STORE_URL").filter(|v| !v.is_empty()) {
            self.store_url = Some(v);
        }
        if let Some(v) = get("TRUC_INSTANCE_ID").filter(|v| !v.is_empty()) {
            self.instance_id = Some(v);
        }
    }

    /// This instance's id: `instance_id`, else `<hostname>-<pid>`.
    pub fn instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| default_instance_id(&hostname(), std::process::id()))
    }

    /// The upload spaces' content directory (`spaces_dir`, default
    /// `<data_dir>/spaces`).
    pub fn spaces_path(&self) -> PathBuf {
        self.spaces_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("spaces"))
    }

    /// The sled directory: `<data_dir>/db`.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    /// The store's checkpoint file (`store_anchor_file`, default
    /// `<data_dir>/store.anchor`).
    pub fn anchor_path(&self) -> PathBuf {
        self.store_anchor_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("store.anchor"))
    }

    /// `audit_retention` as a duration (validated).
    pub fn audit_retention(&self) -> std::time::Duration {
        crate::core::time::parse_duration(&self.audit_retention).unwrap_or(DAY * 60)
    }

    /// `envelope_retention` as a duration (validated).
    pub fn envelope_retention(&self) -> std::time::Duration {
        crate::core::time::parse_duration(&self.envelope_retention).unwrap_or(DAY * 180)
    }

    /// The operator's time zone (validated; the default if it is not).
    pub fn zone(&self) -> crate::core::zone::Zone {
        crate::core::zone::Zone::parse(&self.time_zone).unwrap_or_default()
    }

    /// `depth_sample_interval` as a duration (validated).
    pub fn depth_sample_interval(&self) -> std::time::Duration {
        crate::core::time::parse_duration(&self.depth_sample_interval)
            .unwrap_or(std::time::Duration::from_secs(15))
    }

    /// `admin_header_timeout` as a duration (validated).
    pub fn admin_header_timeout(&self) -> std::time::Duration {
        crate::core::time::parse_duration(&self.admin_header_timeout)
            .unwrap_or(std::time::Duration::from_secs(10))
    }

    /// True when `admin_addr` is a loopback address.
    pub fn admin_is_loopback(&self) -> bool {
        self.admin_socket().is_ok_and(|a| a.ip().is_loopback())
    }

    /// Whether `/metrics` needs the admin token.
    pub fn metrics_token_required(&self) -> bool {
        self.metrics_require_token
            .unwrap_or_else(|| !self.admin_is_loopback())
    }

    /// Creates `data_dir` (mode 0700) if needed and tightens it to 0700.
    pub fn prepare_data_dir(&self) -> std::io::Result<()> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(&self.data_dir)?;
        secure_tree(&self.data_dir)
    }

    /// Sets every directory under `data_dir` to 0700 and every file to 0600
    /// (sled creates its files with the process umask).
    pub fn secure_data_dir(&self) -> std::io::Result<()> {
        secure_tree(&self.data_dir)
    }

    /// Path of the generated master key.
    pub fn master_key_path(&self) -> PathBuf {
        self.data_dir.join("master.key")
    }

    /// The master key text: configured, else the one in the data dir
    /// (generated, 32 random bytes as hex, when absent).
    pub fn resolve_master_key(&self) -> std::io::Result<String> {
        if let Some(k) = &self.master_key {
            return Ok(k.clone());
        }
        let path = self.master_key_path();
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(t.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use rand::Rng;
                self.prepare_data_dir()?;
                let bytes: [u8; 32] = rand::thread_rng().gen();
                let key = hex::encode(bytes);
                write_private(&path, &key)?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.store_url {
            if !is_store_url(url) {
                return Err(ConfigError::Invalid {
                    key: "store_url",
                    problem: format!(
                        "{} is not a PostgreSQL connection string (postgres://… or host=… dbname=…)",
                        redact_store_url(url)
                    ),
                });
            }
        }
        if !(1..=64).contains(&self.store_connections) {
            return Err(ConfigError::Invalid {
                key: "store_connections",
                problem: "must be 1 to 64".into(),
            });
        }
        if self.anchor_path().starts_with(self.store_dir()) {
            return Err(ConfigError::Invalid {
                key: "store_anchor_file",
                problem: format!(
                    "must not be inside the store directory {} (a copy of the store would carry its anchor)",
                    self.store_dir().display()
                ),
            });
        }
        let nodes = broker_nodes(&self.amqp_url);
        if nodes.is_empty()
            || !nodes
                .iter()
                .all(|u| u.starts_with("amqp://") || u.starts_with("amqps://"))
        {
            return Err(ConfigError::Invalid {
                key: "amqp_url",
                problem: "must be one amqp:// or amqps:// URL, or several separated by commas"
                    .into(),
            });
        }
        if nodes.iter().any(|u| u.starts_with("amqps://"))
            != nodes.iter().all(|u| u.starts_with("amqps://"))
        {
            return Err(ConfigError::Invalid {
                key: "amqp_url",
                problem: "mixes amqp:// and amqps:// nodes; use TLS for all of them or none".into(),
            });
        }
        if nodes.iter().any(|u| vhost(u) != vhost(nodes[0])) {
            return Err(ConfigError::Invalid {
                key: "amqp_url",
                problem: "names different virtual hosts; the nodes of one cluster share one".into(),
            });
        }
        if let Some(ca) = &self.amqp_ca_file {
            if !self.amqp_url.starts_with("amqps://") {
                return Err(ConfigError::Invalid {
                    key: "amqp_ca_file",
                    problem: "is set but amqp_url is plaintext amqp://; use amqps:// (TLS, usually port 5671)".into(),
                });
            }
            if let Err(problem) = crate::core::pem::read_ca_text(ca) {
                return Err(ConfigError::Invalid {
                    key: "amqp_ca_file",
                    problem,
                });
            }
        }
        self.admin_socket()?;
        if self.prefix.len() > 64
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ConfigError::Invalid {
                key: "prefix",
                problem: "must be up to 64 of A-Z a-z 0-9 . _ -".into(),
            });
        }
        if self.prefetch == 0 {
            return Err(ConfigError::Invalid {
                key: "prefetch",
                problem: "must be at least 1".into(),
            });
        }
        for (key, text) in [
            ("audit_retention", &self.audit_retention),
            ("envelope_retention", &self.envelope_retention),
        ] {
            match crate::core::time::parse_duration(text) {
                Ok(d) if d >= DAY => {}
                Ok(_) => {
                    return Err(ConfigError::Invalid {
                        key,
                        problem: "must be at least 1d".into(),
                    })
                }
                Err(e) => {
                    return Err(ConfigError::Invalid {
                        key,
                        problem: e.to_string(),
                    })
                }
            }
        }
        match crate::core::time::parse_duration(&self.depth_sample_interval) {
            Ok(d) if d >= std::time::Duration::from_secs(1) && d <= DAY / 24 => {}
            _ => {
                return Err(ConfigError::Invalid {
                    key: "depth_sample_interval",
                    problem: "must be a duration from 1s to 1h".into(),
                })
            }
        }
        if let Some(k) = &self.master_key {
            if let Err(e) = crate::core::secrets::MasterKey::parse(k) {
                return Err(ConfigError::Invalid {
                    key: "master_key",
                    problem: e.to_string(),
                });
            }
        }
        if let Some(t) = &self.admin_token {
            if let Err(problem) = check_admin_token(t) {
                return Err(ConfigError::Invalid {
                    key: "admin_token",
                    problem: format!("(or TRUC_ADMIN_TOKEN) {problem}"),
                });
            }
        }
        match crate::core::time::parse_duration(&self.admin_header_timeout) {
            Ok(d) if d >= std::time::Duration::from_millis(100) && d <= DAY / 144 => {}
            _ => {
                return Err(ConfigError::Invalid {
                    key: "admin_header_timeout",
                    problem: "must be a duration from 100ms to 10m".into(),
                })
            }
        }
        check_tls_pair(
            ("admin_tls_cert", "admin_tls_key"),
            self.admin_tls_cert.as_deref(),
            self.admin_tls_key.as_deref(),
        )?;
        self.validate_gateway()?;
        if let Some(ca) = &self.admin_ca_file {
            if let Err(problem) = crate::core::pem::read_certificates(ca) {
                return Err(ConfigError::Invalid {
                    key: "admin_ca_file",
                    problem,
                });
            }
        }
        if let Some(id) = &self.instance_id {
            if let Err(problem) = check_instance_id(id) {
                return Err(ConfigError::Invalid {
                    key: "instance_id",
                    problem: format!("(or TRUC_INSTANCE_ID) {problem}"),
                });
            }
        }
        if let Err(e) = crate::core::zone::Zone::parse(&self.time_zone) {
            return Err(ConfigError::Invalid {
                key: "time_zone",
                problem: e.to_string(),
            });
        }
        if !self.admin_is_loopback()
            && self.admin_tls_cert.is_none()
            && self.admin_ca_file.is_none()
        {
            return Err(ConfigError::Invalid {
                key: "admin_addr",
                problem: format!(
                    "{} is not loopback: the admin API then needs HTTPS (admin_tls_cert and admin_tls_key to serve it, admin_ca_file / TRUC_ADMIN_CA_FILE for the CLI to call it), or listen on 127.0.0.1",
                    self.admin_addr
                ),
            });
        }
        Ok(())
    }

    /// The gateway's settings: a valid address, certificate and key
    /// together, HTTPS off loopback, a session lifetime in range.
    fn validate_gateway(&self) -> Result<(), ConfigError> {
        match crate::core::time::parse_duration(&self.gateway_session_ttl) {
            Ok(d) if d >= std::time::Duration::from_secs(10) && d <= DAY => {}
            _ => {
                return Err(ConfigError::Invalid {
                    key: "gateway_session_ttl",
                    problem: "must be a duration from 10s to 1d".into(),
                })
            }
        }
        check_tls_pair(
            ("gateway_tls_cert", "gateway_tls_key"),
            self.gateway_tls_cert.as_deref(),
            self.gateway_tls_key.as_deref(),
        )?;
        if let Some(addr) = self.gateway_socket()? {
            if !addr.ip().is_loopback() && self.gateway_tls_cert.is_none() {
                return Err(ConfigError::Invalid {
                    key: "gateway_addr",
                    problem: format!(
                        "{addr} is not loopback: the gateway then needs HTTPS (gateway_tls_cert and gateway_tls_key), or listen on 127.0.0.1"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The gateway's address, or `None` when the gateway is off.
    pub fn gateway_socket(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.gateway_addr
            .as_deref()
            .map(|a| {
                a.parse().map_err(|e| ConfigError::Invalid {
                    key: "gateway_addr",
                    problem: format!("{a:?}: {e}"),
                })
            })
            .transpose()
    }

    /// How long a gateway session lasts.
    pub fn gateway_session_ttl(&self) -> std::time::Duration {
        crate::core::time::parse_duration(&self.gateway_session_ttl)
            .unwrap_or(std::time::Duration::from_secs(900))
    }

    /// Where the gateway's bound address is written at every start.
    pub fn gateway_addr_path(&self) -> PathBuf {
        self.data_dir.join("gateway.addr")
    }

    /// The admin address as a socket address.
    pub fn admin_socket(&self) -> Result<SocketAddr, ConfigError> {
        self.admin_addr.parse().map_err(|e| ConfigError::Invalid {
            key: "admin_addr",
            problem: format!("{e}"),
        })
    }

    /// Path of the generated admin token.
    pub fn token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    /// Path of the file naming the address the admin API listens on.
    pub fn admin_addr_path(&self) -> PathBuf {
        self.data_dir.join("admin.addr")
    }

    /// Writes `addr` (the admin API's bound address: with `admin_addr` on
    /// port 0, the port the system chose) to [`Config::admin_addr_path`],
    /// whole or not at all (a temporary file renamed into place).
    pub fn write_admin_addr_file(&self, addr: &str) -> std::io::Result<()> {
        write_addr_file(&self.admin_addr_path(), addr)
    }

    /// Writes `addr` (the gateway's bound address) to
    /// [`Config::gateway_addr_path`], like [`Config::write_admin_addr_file`].
    pub fn write_gateway_addr_file(&self, addr: &str) -> std::io::Result<()> {
        write_addr_file(&self.gateway_addr_path(), addr)
    }

    /// The admin token: configured, else the one in the data dir (generated
    /// when `create` and absent).
    pub fn resolve_admin_token(&self, create: bool) -> std::io::Result<String> {
        if let Some(t) = &self.admin_token {
            check_admin_token(t).map_err(|problem| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("admin_token (or TRUC_ADMIN_TOKEN) {problem}"),
                )
            })?;
            return Ok(t.clone());
        }
        let path = self.token_path();
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                let t = t.trim();
                check_admin_token(t).map_err(|problem| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "admin token file {}: {problem}; write a token of at least {MIN_ADMIN_TOKEN_LEN} characters into it, or delete it to have one generated",
                            path.display()
                        ),
                    )
                })?;
                Ok(t.to_owned())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                use rand::Rng;
                self.prepare_data_dir()?;
                let bytes: [u8; 24] = rand::thread_rng().gen();
                let token = hex::encode(bytes);
                write_private(&path, &token)?;
                Ok(token)
            }
            Err(e) => Err(e),
        }
    }
}

/// Why `t` cannot be the admin token, if it cannot.
pub fn check_admin_token(t: &str) -> Result<(), String> {
    if t.trim().is_empty() {
        return Err("is empty".into());
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    if t.chars().count() < MIN_ADMIN_TOKEN_LEN {
        return Err(format!("is shorter than {MIN_ADMIN_TOKEN_LEN} characters"));
    }
    Ok(())
}

/// Longest instance id.
pub const MAX_INSTANCE_ID_LEN: usize = 64;

/// Checks an instance id: 1-64 of `A-Z a-z 0-9 . _ -`.
pub fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN {
        return Err(format!("must be 1-{MAX_INSTANCE_ID_LEN} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err("may hold only A-Z a-z 0-9 . _ -".into());
    }
    Ok(())
}

/// The default instance id from a host name and a process id:
/// `<host>-<pid>`, the host's characters outside `A-Z a-z 0-9 . _ -`
/// replaced by `-` and the host shortened so the id fits
/// [`MAX_INSTANCE_ID_LEN`] (`host` when the host name is empty).
pub fn default_instance_id(hostname: &str, pid: u32) -> String {
    let tail = format!("-{pid}");
    let host: String = hostname
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(MAX_INSTANCE_ID_LEN - tail.len())
        .collect();
    let host = if host.is_empty() { "host".into() } else { host };
    format!("{host}{tail}")
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else
/// `/etc/hostname`, else `$HOSTNAME`); empty when none can be read.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .find(|h| !h.is_empty())
        .unwrap_or_default()
}

/// A server's certificate and key: both or neither, the certificate
/// readable; `cert_key` and `key_key` are their configuration keys.
fn check_tls_pair(
    (cert_key, key_key): (&'static str, &'static str),
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<(), ConfigError> {
    match (cert, key) {
        (Some(cert), Some(_)) => crate::core::pem::read_certificates(cert)
            .map(|_| ())
            .map_err(|problem| ConfigError::Invalid {
                key: cert_key,
                problem,
            }),
        (None, None) => Ok(()),
        (Some(_), None) | (None, Some(_)) => Err(ConfigError::Invalid {
            key: key_key,
            problem: format!("{cert_key} and {key_key} go together"),
        }),
    }
}

/// Writes `addr` and a newline to `path`, whole or not at all.
fn write_addr_file(path: &Path, addr: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("addr.tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Writes `text` to a new file `path`, mode 0600, whole or not at all: it is
/// written to a temporary name, synced and renamed, so a full disk leaves no
/// empty or partial file behind. Fails if `path` exists.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} appeared meanwhile", path.display()),
            ));
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    let res = write();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Directories 0700, files 0600, under and including `root`.
fn secure_tree(root: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(root)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.permissions().mode() & 0o777 != want {
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(want))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(root)? {
                match secure_tree(&entry?.path()) {
                    Ok(()) => {}
                    // A file sled removed meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = root;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_the_password_in_both_syntaxes() {
        assert_eq!(
            redact_store_url(
                "postgres://truc:s3cr%40t@a:5432,b:5433/truc?target_session_attrs=read-write"
            ),
            "postgres://truc:***@a:5432,b:5433/truc?target_session_attrs=read-write"
        );
        assert_eq!(
            redact_store_url("postgresql://u@h/db"),
            "postgresql://u@h/db"
        );
        assert_eq!(redact_store_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_store_url("postgres://u@h/db?sslmode=disable&password=x&connect_timeout=3"),
            "postgres://u@h/db?sslmode=disable&password=***&connect_timeout=3"
        );
        assert_eq!(
            redact_store_url(
                "host=a,b user=u password=secret dbname=truc target_session_attrs=read-write"
            ),
            "host=a,b user=u password=*** dbname=truc target_session_attrs=read-write"
        );
        assert_eq!(
            redact_store_url("host=a password = 'se cr\\'et' dbname=truc"),
            "host=a password = *** dbname=truc"
        );
        assert_eq!(redact_store_url("host=a user=u"), "host=a user=u");
        assert_eq!(
            redact_store_url("host=a password=x://y dbname=truc"),
            "host=a password=*** dbname=truc"
        );
    }

    #[test]
    fn store_url_is_postgres_and_its_password_never_shows() {
        let mut c = Config::default();
        c.apply_env(|k| {
            (k == "TRUC_STORE_URL").then(|| {
                "postgres://truc:s3cret@db1,db2/truc?target_session_attrs=read-write".to_owned()
            })
        });
        c.validate().unwrap();
        assert_eq!(
            redact_store_url(c.store_url.as_deref().unwrap()),
            "postgres://truc:***@db1,db2/truc?target_session_attrs=read-write"
        );
        assert_eq!(
            redact_store_url("host=a,b dbname=truc password=s3cret"),
            "host=a,b dbname=truc password=***"
        );
        assert_eq!(
            redact_store_url("postgresql://u@h/db?password=s3cret&sslmode=require"),
            "postgresql://u@h/db?password=***&sslmode=require"
        );
        for bad in ["mysql://u:s3cret@h/db", "truc.db", ""] {
            let c = Config {
                store_url: Some(bad.into()),
                ..Config::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("store_url") && !e.contains("s3cret"),
                "{bad}: {e}"
            );
        }
        let c = Config {
            store_connections: 0,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("store_connections"));
    }

    #[test]
    fn instance_id_is_checked_and_defaults_to_host_and_pid() {
        let with = |id: &str| Config {
            instance_id: Some(id.into()),
            ..Config::default()
        };
        for good in ["a", "hub-1", "node_2.example.vn", &"x".repeat(64)] {
            with(good).validate().unwrap();
            assert_eq!(with(good).instance_id(), good);
        }
        for bad in ["", "two words", "hub/1", "ổ", &"x".repeat(65), "a\0b"] {
            let e = with(bad).validate().unwrap_err().to_string();
            assert!(e.contains("instance_id"), "{bad:?}: {e}");
        }
        let mut c = Config::default();
        c.apply_env(|k| (k == "TRUC_INSTANCE_ID").then(|| "from-env".to_string()));
        assert_eq!(c.instance_id(), "from-env");
        // The default: the host name, made valid, and the pid.
        assert_eq!(default_instance_id("web01", 42), "web01-42");
        assert_eq!(default_instance_id("máy chủ\n", 7), "m-y-ch--7");
        assert_eq!(default_instance_id("", 7), "host-7");
        let long = default_instance_id(&"h".repeat(100), 4_194_304);
        assert_eq!(long.len(), 64);
        assert!(long.ends_with("-4194304"));
        let own = Config::default().instance_id();
        check_instance_id(&own).unwrap();
        assert!(own.ends_with(&format!("-{}", std::process::id())), "{own}");
    }

    #[test]
    fn amqp_url_may_list_the_nodes_of_a_cluster() {
        let c = Config {
            amqp_url: "amqp://u:p@10.0.0.1:5672/%2f, amqp://u:p@10.0.0.2:5672/%2f".into(),
            ..Config::default()
        };
        c.validate().unwrap();
        assert_eq!(
            broker_nodes(&c.amqp_url),
            [
                "amqp://u:p@10.0.0.1:5672/%2f",
                "amqp://u:p@10.0.0.2:5672/%2f"
            ]
        );
        let refused = |url: &str, why: &str| {
            let c = Config {
                amqp_url: url.into(),
                ..Config::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        };
        refused(
            "amqp://a:5672/%2f,amqps://b:5671/%2f",
            "mixes amqp:// and amqps://",
        );
        refused(
            "amqp://a:5672/%2f,amqp://b:5672/other",
            "different virtual hosts",
        );
        refused("amqp://a:5672/%2f,http://b", "several separated by commas");
        refused(" , ", "several separated by commas");
    }

    /// The sample the systemd unit uses parses and validates.
    #[test]
    fn shipped_sample_is_valid() {
        let text = include_str!("../../ops/truc.toml");
        let c: Config = toml::from_str(text).expect("ops/truc.toml parses");
        c.validate().expect("ops/truc.toml validates");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/truc"));
    }

    #[test]
    fn defaults_env_and_validation() {
        let mut c = Config::default();
        assert_eq!(c.prefix, "lgsp.");
        assert_eq!(c.admin_addr, "127.0.0.1:7070");
        c.apply_env(|k| match k {
            "TRUC_PREFIX" => Some("t1.".into()),
            "TRUC_ADMIN_ADDR" => Some("127.0.0.1:7171".into()),
            _ => None,
        });
        assert_eq!(c.prefix, "t1.");
        c.validate().unwrap();
        c.prefix = "bad prefix".into();
        assert!(c.validate().is_err());
        let c2: Result<Config, _> = toml::from_str("amqp_urll = 'x'");
        assert!(c2.is_err());
    }

    #[test]
    fn admin_token_addr_and_metrics_rules() {
        let mut c = Config::default();
        for bad in ["", "   ", "short-token", "a token with spaces 0123"] {
            c.admin_token = Some(bad.into());
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("admin_token"), "{bad:?}: {e}");
            assert!(c.resolve_admin_token(false).is_err(), "{bad:?}");
        }
        c.admin_token = None;
        c.apply_env(|k| (k == "TRUC_ADMIN_TOKEN").then(String::new));
        assert!(
            c.validate().is_err(),
            "a set but empty TRUC_ADMIN_TOKEN is refused"
        );
        c.admin_token = Some("x".repeat(16));
        c.validate().unwrap();
        assert!(!c.metrics_token_required());
        c.admin_addr = "0.0.0.0:7443".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("not loopback"), "{e}");
        assert!(c.metrics_token_required());
        c.admin_addr = "[::1]:7070".into();
        c.validate().unwrap();
        c.apply_env(|k| (k == "TRUC_METRICS_REQUIRE_TOKEN").then(|| "true".to_owned()));
        assert!(c.metrics_token_required());
        c.admin_tls_cert = Some("/etc/truc/admin.pem".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
        c.admin_tls_cert = None;
        c.admin_header_timeout = "0s".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_gateway_is_off_unless_asked_and_needs_https_off_loopback() {
        let mut c = Config {
            admin_token: Some("x".repeat(16)),
            ..Config::default()
        };
        c.validate().unwrap();
        assert_eq!(c.gateway_socket().unwrap(), None, "off by default");
        assert_eq!(c.gateway_session_ttl(), std::time::Duration::from_secs(900));
        c.apply_env(|k| (k == "TRUC_GATEWAY_ADDR").then(|| "127.0.0.1:0".to_owned()));
        c.validate().unwrap();
        assert!(c.gateway_socket().unwrap().is_some());
        for (addr, words) in [
            ("0.0.0.0:8443", "not loopback"),
            ("nowhere", "gateway_addr"),
        ] {
            c.gateway_addr = Some(addr.into());
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(words), "{addr}: {e}");
        }
        c.gateway_addr = Some("127.0.0.1:8443".into());
        c.gateway_tls_key = Some("/etc/truc/gateway.key".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
        c.gateway_tls_key = None;
        for ttl in ["5s", "2d", "soon"] {
            c.gateway_session_ttl = ttl.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("gateway_session_ttl"), "{ttl}: {e}");
        }
        c.gateway_session_ttl = "1h".into();
        c.validate().unwrap();
        assert_eq!(
            c.gateway_session_ttl(),
            std::time::Duration::from_secs(3600)
        );
    }

    #[test]
    fn an_empty_or_short_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        for (text, why) in [("", "empty"), (" \n\t\n", "empty"), ("abc\n", "shorter")] {
            std::fs::write(c.token_path(), text).unwrap();
            for create in [true, false] {
                let e = c.resolve_admin_token(create).unwrap_err().to_string();
                assert!(
                    e.contains("admin.token") && e.contains(why),
                    "{text:?}: {e}"
                );
            }
        }
        std::fs::remove_file(c.token_path()).unwrap();
        let t = c.resolve_admin_token(true).unwrap();
        assert_eq!(std::fs::read_to_string(c.token_path()).unwrap(), t);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[cfg(unix)]
    #[test]
    fn data_dir_is_created_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = Config {
            data_dir: dir.path().join("a/data"),
            ..Config::default()
        };
        c.prepare_data_dir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&c.data_dir), 0o700);
        std::fs::create_dir(c.data_dir.join("blobs")).unwrap();
        std::fs::set_permissions(
            c.data_dir.join("blobs"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(c.data_dir.join("blobs/1"), "x").unwrap();
        std::fs::set_permissions(
            c.data_dir.join("blobs/1"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::set_permissions(&c.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        c.secure_data_dir().unwrap();
        assert_eq!(mode(&c.data_dir), 0o700);
        assert_eq!(mode(&c.data_dir.join("blobs")), 0o700);
        assert_eq!(mode(&c.data_dir.join("blobs/1")), 0o600);
        c.resolve_admin_token(true).unwrap();
        assert_eq!(mode(&c.token_path()), 0o600);
    }

    #[test]
    fn a_broker_ca_file_needs_amqps_and_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.apply_env(|k| (k == "TRUC_AMQP_CA_FILE").then(|| "/nonexistent/ca.pem".to_owned()));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("amqp_ca_file") && e.contains("amqps://"), "{e}");
        c.amqp_url = "amqps://u:p@broker.example:5671/%2f".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "").unwrap();
        c.amqp_ca_file = Some(empty);
        assert!(c.validate().is_err());
        c.amqp_ca_file = None;
        c.validate().unwrap();
    }

    #[test]
    fn operator_keys_are_validated() {
        let mut c = Config::default();
        assert_eq!(
            c.audit_retention(),
            std::time::Duration::from_secs(60 * 86_400)
        );
        assert_eq!(
            c.envelope_retention(),
            std::time::Duration::from_secs(180 * 86_400)
        );
        c.audit_retention = "12h".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("audit_retention"));
        c.audit_retention = "90d".into();
        c.envelope_retention = "forever".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("envelope_retention"));
        c.envelope_retention = "1d".into();
        c.depth_sample_interval = "2h".into();
        assert!(c.validate().is_err());
        c.depth_sample_interval = "5s".into();
        c.validate().unwrap();
        c.apply_env(|k| (k == "TRUC_MASTER_KEY").then(|| "short".to_owned()));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("master_key") && !e.contains("short"), "{e}");
        c.master_key = Some("ab".repeat(32));
        c.validate().unwrap();
        // The operator's time zone: Vietnam unless set, an unknown one refused.
        assert_eq!(c.zone().name(), "Asia/Ho_Chi_Minh");
        c.time_zone = "Asia/Saigon_Typo".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("time_zone") && e.contains("Asia/Saigon_Typo"),
            "{e}"
        );
        c.apply_env(|k| (k == "TRUC_TIME_ZONE").then(|| "UTC".to_owned()));
        c.validate().unwrap();
        assert_eq!(c.zone().name(), "UTC");
    }

    #[test]
    fn master_key_is_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let k1 = c.resolve_master_key().unwrap();
        assert_eq!(k1, c.resolve_master_key().unwrap());
        crate::core::secrets::MasterKey::parse(&k1).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(c.master_key_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn token_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let t1 = c.resolve_admin_token(true).unwrap();
        let t2 = c.resolve_admin_token(false).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 48);
    }
}

//! The `truc` command line: `serve`, operator commands over the admin API,
//! and a reference adapter (`send`, `recv`, `notices`).
//!
//! Exit codes: 0 success, 1 failure, 2 usage error, 3 refused by the hub
//! (unknown code, conflict, bad input), 4 hub or broker unreachable,
//! 5 wrong admin token.

mod adapter;
pub mod http;
mod ops;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::core::code::AgencyCode;
use crate::core::config::Config;
use crate::core::envelope::Priority;

/// A CLI failure with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// Exit code.
    pub code: i32,
    /// What to print.
    pub message: String,
}

impl CliError {
    /// A failure with exit `code`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// truc: the provincial integration axis (LGSP) envelope router.
#[derive(Debug, Parser)]
#[command(name = "truc", version, about)]
pub struct Cli {
    /// Configuration file (TOML); environment variables override it.
    #[arg(long, global = true, env = "TRUC_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router and the admin API.
    Serve,
    /// Manage agencies.
    #[command(subcommand)]
    Agency(AgencyCmd),
    /// Inspect envelopes.
    #[command(subcommand)]
    Envelope(EnvelopeCmd),
    /// Send a document as an agency (reference adapter).
    Send(SendArgs),
    /// Receive deliveries as an agency (reference adapter).
    Recv(RecvArgs),
    /// Agency queues: depth, age, peek, purge, shape.
    #[command(subcommand)]
    Queue(crate::cli::ops::QueueCmd),
    /// Dead letters: the dead and rejected queues.
    #[command(subcommand)]
    Dead(crate::cli::ops::DeadCmd),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(crate::cli::ops::AuditCmd),
    /// Statistics per agency and period.
    Report(crate::cli::ops::ReportArgs),
    /// The embedded store.
    #[command(subcommand)]
    Store(crate::cli::ops::StoreCmd),
    /// Read an agency's notices (reference adapter).
    Notices(NoticesArgs),
    /// Show which agencies are online, or one agency's connection history.
    Presence(PresenceArgs),
    /// Send a signed presence heartbeat as an agency (reference adapter).
    Heartbeat(HeartbeatArgs),
}

/// `truc presence [history CODE]`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PresenceArgs {
    /// `history CODE`; without it, every agency's state.
    #[command(subcommand)]
    pub command: Option<PresenceCmd>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `truc presence …`
#[derive(Debug, Subcommand)]
pub enum PresenceCmd {
    /// List an agency's connects and disconnects, oldest first.
    History {
        /// Agency code.
        code: String,
        /// Only this recent (e.g. 24h, 7d); everything when absent.
        #[arg(long)]
        since: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `truc heartbeat`
#[derive(Debug, Args)]
pub struct HeartbeatArgs {
    /// The agency's code.
    pub code: String,
    /// `online` or `offline`.
    #[arg(long, value_parser = ["online", "offline"], default_value = "online")]
    pub state: String,
    /// Keep sending one every this long (e.g. 30s) until interrupted.
    #[arg(long)]
    pub every: Option<String>,
    /// Credentials.
    #[command(flatten)]
    pub creds: CredArgs,
}

/// `truc agency …`
#[derive(Debug, Subcommand)]
pub enum AgencyCmd {
    /// Register an agency; prints its access key and secret once.
    Add {
        /// Agency code (QCVN 102), e.g. 000.00.31.H41.
        code: String,
        /// Agency name.
        #[arg(long)]
        name: String,
        /// PEM RSA public key file, for rsa-sha256 signatures.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List agencies.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one agency.
    Show {
        /// Agency code.
        code: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lifecycle: disable, enable, rotate-key, remove, import, rabbitmq-definitions.
    #[command(flatten)]
    Ops(crate::cli::ops::AgencyOpsCmd),
}

/// `truc envelope …`
#[derive(Debug, Subcommand)]
pub enum EnvelopeCmd {
    /// List envelopes, newest first.
    List {
        /// Only from this source.
        #[arg(long)]
        from: Option<String>,
        /// Only with this destination.
        #[arg(long)]
        to: Option<String>,
        /// Only with a destination in this state (queued, deferred, retry, delivered, bounced, expired, recalled…).
        #[arg(long)]
        state: Option<String>,
        /// Only accepted within this long (e.g. 2h, 1d).
        #[arg(long)]
        since: Option<String>,
        /// Most envelopes to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an envelope's per-destination timeline.
    Show {
        /// The source's message id.
        id: String,
        /// Source agency code.
        #[arg(long)]
        from: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Credentials of the reference adapter.
#[derive(Debug, Args)]
pub struct CredArgs {
    /// Credentials file: the JSON printed by `truc agency add --json`.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Access key (else TRUC_ACCESS_KEY).
    #[arg(long, env = "TRUC_ACCESS_KEY", hide_env_values = true)]
    pub access_key: Option<String>,
    /// Secret (else TRUC_SECRET).
    #[arg(long, env = "TRUC_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

/// `truc send`
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Source agency code.
    #[arg(long)]
    pub from: String,
    /// Destination codes, comma-separated.
    #[arg(long)]
    pub to: String,
    /// File to send.
    #[arg(long)]
    pub file: PathBuf,
    /// Priority 0-4 (QCVN 102).
    #[arg(long, default_value_t = 0)]
    pub priority: u8,
    /// Subject.
    #[arg(long, default_value = "")]
    pub subject: String,
    /// Data type token.
    #[arg(long = "type", default_value = "edoc")]
    pub data_type: String,
    /// MIME type of the file.
    #[arg(long, default_value = "application/octet-stream")]
    pub content_type: String,
    /// Message id (generated when absent).
    #[arg(long)]
    pub message_id: Option<String>,
    /// Deadline (RFC 3339), required for priority 4.
    #[arg(long)]
    pub deliver_by: Option<String>,
    /// Credentials.
    #[command(flatten)]
    pub creds: CredArgs,
}

/// `truc recv`
#[derive(Debug, Args)]
pub struct RecvArgs {
    /// The receiving agency's code.
    pub code: String,
    /// Stop after this many deliveries.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long without a delivery (e.g. 30s).
    #[arg(long)]
    pub idle: Option<String>,
    /// Write each body to this directory as <from>_<message_id>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object per delivery.
    #[arg(long)]
    pub json: bool,
    /// Credentials.
    #[command(flatten)]
    pub creds: CredArgs,
}

/// `truc notices`
#[derive(Debug, Args)]
pub struct NoticesArgs {
    /// The agency whose notices to read.
    pub code: String,
    /// Stop after this many notices.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long without a notice (e.g. 5s).
    #[arg(long, default_value = "5s")]
    pub idle: String,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Credentials.
    #[command(flatten)]
    pub creds: CredArgs,
}

pub(crate) fn config(path: &Option<PathBuf>) -> Result<Config, CliError> {
    Config::load(path.as_deref()).map_err(|e| CliError::new(2, e.to_string()))
}

/// GETs a JSON array from `path` and prints it: as JSON with `json`, else
/// as a table of `(header, field)` columns. Returns the value.
pub(crate) async fn listing(
    cfg: &Config,
    path: &str,
    json: bool,
    columns: &[(&str, &str)],
) -> Result<Value, CliError> {
    let v = api(cfg, "GET", path, None).await?;
    if json {
        print_json(&v);
        return Ok(v);
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| columns.iter().map(|(_, f)| s(&item[*f])).collect())
        .collect();
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    table(&headers, &rows);
    Ok(v)
}

pub(crate) async fn api(
    cfg: &Config,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, CliError> {
    let token = cfg.resolve_admin_token(false).map_err(|e| {
        CliError::new(
            5,
            format!(
                "no admin token: set TRUC_ADMIN_TOKEN or run where {} is readable ({e})",
                cfg.token_path().display()
            ),
        )
    })?;
    let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
    let tls = crate::cli::tls::admin_client(cfg).map_err(|e| CliError::new(2, e))?;
    let resp = crate::cli::http::request_tls(
        tls.as_ref(),
        &cfg.admin_addr,
        method,
        path,
        &token,
        body.as_deref(),
    )
    .await
    .map_err(|e| CliError::new(4, e.to_string()))?;
    let value: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    match resp.status {
        200..=299 => Ok(value),
        401 => Err(CliError::new(5, "the hub refused the admin token")),
        502 | 503 => Err(CliError::new(
            4,
            value["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {}", resp.status)),
        )),
        _ => Err(CliError::new(
            3,
            value["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {}", resp.status)),
        )),
    }
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(w[i] - c.chars().count())))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Parses an agency code argument.
pub fn parse_code(c: &str) -> Result<AgencyCode, CliError> {
    AgencyCode::parse(c).map_err(|e| CliError::new(2, format!("{c:?}: {e}")))
}

/// Runs an operator command (everything but `serve`).
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let cfg = config(&cli.config)?;
    match cli.command {
        Command::Serve => Err(CliError::new(2, "serve is run by main")),
        Command::Agency(cmd) => agency(&cfg, cmd).await,
        Command::Envelope(EnvelopeCmd::List {
            from,
            to,
            state,
            since,
            limit,
            json,
        }) => {
            let mut q = format!("/v1/envelopes/list?limit={limit}");
            if let Some(f) = from {
                q.push_str(&format!("&from={}", parse_code(&f)?));
            }
            if let Some(t) = to {
                q.push_str(&format!("&to={}", parse_code(&t)?));
            }
            if let Some(st) = state {
                if !st.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(CliError::new(
                        2,
                        format!("--state {st:?} is not a state name"),
                    ));
                }
                q.push_str(&format!("&state={st}"));
            }
            if let Some(d) = since {
                duration("--since", &d)?;
                q.push_str(&format!("&since={d}"));
            }
            let v = api(&cfg, "GET", &q, None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let mut rows = Vec::new();
            for e in v.as_array().into_iter().flatten() {
                let accepted = e["accepted_at_ms"]
                    .as_i64()
                    .map(crate::core::time::format_rfc3339)
                    .unwrap_or_default();
                for d in e["dests"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        s(&e["message_id"]),
                        s(&e["from"]),
                        s(&d["code"]),
                        s(&d["state"]),
                        s(&e["priority"]),
                        accepted.clone(),
                        s(&e["subject"]),
                    ]);
                }
            }
            table(
                &["ID", "FROM", "TO", "STATE", "PRIO", "ACCEPTED", "SUBJECT"],
                &rows,
            );
            Ok(())
        }
        Command::Envelope(EnvelopeCmd::Show { id, from, json }) => {
            let from = parse_code(&from)?;
            let v = api(
                &cfg,
                "GET",
                &format!("/v1/envelopes?from={from}&id={id}"),
                None,
            )
            .await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "envelope {} from {}  subject {:?}  priority {}  size {} B  digest {}",
                s(&v["message_id"]),
                s(&v["from"]),
                s(&v["subject"]),
                s(&v["priority"]),
                s(&v["size"]),
                s(&v["digest"])
            );
            let mut rows = Vec::new();
            for d in v["dests"].as_array().into_iter().flatten() {
                for e in d["events"].as_array().into_iter().flatten() {
                    let at = e["at_ms"]
                        .as_i64()
                        .map(crate::core::time::format_rfc3339)
                        .unwrap_or_default();
                    rows.push(vec![
                        s(&d["code"]),
                        at,
                        s(&e["state"]),
                        s(&e["reason"]),
                        s(&e["detail"]),
                    ]);
                }
            }
            table(&["DEST", "AT", "STATE", "REASON", "DETAIL"], &rows);
            Ok(())
        }
        Command::Send(a) => crate::cli::adapter::send(&cfg, a).await,
        Command::Recv(a) => crate::cli::adapter::recv(&cfg, a).await,
        Command::Notices(a) => crate::cli::adapter::notices(&cfg, a).await,
        Command::Queue(c) => crate::cli::ops::queue(&cfg, c).await,
        Command::Dead(c) => crate::cli::ops::dead(&cfg, c).await,
        Command::Audit(c) => crate::cli::ops::audit(&cfg, c).await,
        Command::Report(a) => crate::cli::ops::report(&cfg, a).await,
        Command::Store(c) => crate::cli::ops::store(&cfg, c).await,
        Command::Presence(a) => presence(&cfg, a).await,
        Command::Heartbeat(a) => crate::cli::adapter::heartbeat(&cfg, a).await,
    }
}

async fn presence(cfg: &Config, a: PresenceArgs) -> Result<(), CliError> {
    match a.command {
        None => {
            listing(
                cfg,
                "/v1/presence",
                a.json,
                &[
                    ("CODE", "code"),
                    ("NAME", "name"),
                    ("STATE", "state"),
                    ("SINCE", "since"),
                    ("CAUSE", "cause"),
                    ("CONSUMERS", "consumers"),
                    ("LAST HEARTBEAT", "last_heartbeat"),
                ],
            )
            .await?;
            Ok(())
        }
        Some(PresenceCmd::History { code, since, json }) => {
            let code = parse_code(&code)?;
            let mut path = format!("/v1/presence/{code}/history");
            if let Some(d) = &since {
                duration("--since", d)?;
                path.push_str(&format!("?since={d}"));
            }
            let v = api(cfg, "GET", &path, None).await?;
            if json || a.json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    vec![
                        s(&e["at"]),
                        s(&e["event"]),
                        s(&e["from"]),
                        s(&e["to"]),
                        s(&e["cause"]),
                    ]
                })
                .collect();
            table(&["AT", "EVENT", "FROM", "TO", "CAUSE"], &rows);
            Ok(())
        }
    }
}

async fn agency(cfg: &Config, cmd: AgencyCmd) -> Result<(), CliError> {
    match cmd {
        AgencyCmd::Ops(c) => crate::cli::ops::agency(cfg, c).await,
        AgencyCmd::Add {
            code,
            name,
            public_key,
            json,
        } => {
            let code = parse_code(&code)?;
            let pem = match public_key {
                None => None,
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .map_err(|e| CliError::new(2, format!("{}: {e}", p.display())))?,
                ),
            };
            let body = serde_json::json!({ "code": code, "name": name, "public_key_pem": pem });
            let v = api(cfg, "POST", "/v1/agencies", Some(&body)).await?;
            if json {
                print_json(&v);
            } else {
                println!("registered {} ({})", s(&v["code"]), s(&v["name"]));
                println!("access key: {}", s(&v["access_key"]));
                println!("secret:     {}", s(&v["secret"]));
                println!("inbox:      {}", s(&v["inbox"]));
                println!("notify:     {}", s(&v["notify"]));
                println!(
                    "The secret is shown only now: hand it to the agency over a safe channel."
                );
            }
            Ok(())
        }
        AgencyCmd::List { json } => {
            let v = api(cfg, "GET", "/v1/agencies", None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    let keys: Vec<String> = a["access_keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|k| s(&k["access_key"]))
                        .collect();
                    vec![
                        s(&a["code"]),
                        s(&a["name"]),
                        if a["enabled"].as_bool() == Some(true) {
                            "enabled".into()
                        } else {
                            "disabled".into()
                        },
                        keys.join(","),
                        s(&a["created_at"]),
                    ]
                })
                .collect();
            table(
                &["CODE", "NAME", "STATE", "ACCESS KEYS", "REGISTERED"],
                &rows,
            );
            Ok(())
        }
        AgencyCmd::Show { code, json } => {
            let code = parse_code(&code)?;
            let v = api(cfg, "GET", &format!("/v1/agencies/{code}"), None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            for (k, label) in [
                ("code", "code"),
                ("name", "name"),
                ("enabled", "enabled"),
                ("created_at", "registered"),
                ("rsa_public_key", "rsa key"),
                ("inbox", "inbox"),
                ("inbox_messages", "inbox depth"),
                ("inbox_consumers", "consumers"),
                ("notify", "notify"),
            ] {
                println!("{label:<12} {}", s(&v[k]));
            }
            for key in v["access_keys"].as_array().into_iter().flatten() {
                println!(
                    "{:<12} {} (issued {}, expires {})",
                    "access key",
                    s(&key["access_key"]),
                    s(&key["created_at"]),
                    s(&key["expires_at"])
                );
            }
            Ok(())
        }
    }
}

/// Parses `--priority`.
pub fn priority(n: u8) -> Result<Priority, CliError> {
    Priority::new(n).ok_or_else(|| CliError::new(2, "--priority must be 0-4"))
}

/// Parses a duration flag.
pub fn duration(flag: &str, v: &str) -> Result<Duration, CliError> {
    crate::core::time::parse_duration(v).map_err(|e| CliError::new(2, format!("{flag}: {e}")))
}

//! Layer 9 — **cli**: the `truc` command line: `serve` (run by `main`),
//! operator commands over the admin API through the typed client
//! [`admin`], and a reference adapter (`send`, `recv`, `notices`,
//! `heartbeat`) over [`crate::client`]. One file per subcommand; this file
//! holds the clap definitions, the dispatch and the shared helpers.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error, 3 refused by the hub
//! (unknown code, conflict, bad input; for `truc send`, a `rejected`
//! notice), 4 hub or broker unreachable, 5 wrong admin token, 6 the
//! reference adapter received a delivery or notice it cannot verify (left
//! queued, not acknowledged), 7 `truc send` got no answer from the hub in
//! time.
//!
//! Invariants: every listing prints a table for people and, with `--json`,
//! the API's typed body for scripts (times RFC 3339); the CLI never looks
//! into untyped JSON; `--since`/`--until` take a duration or a date
//! everywhere.
//!
//! May use: every layer beneath it (notably [`crate::api::types`]).

mod account;
pub(crate) mod admin;
mod agency;
mod alerts;
mod audit;
mod creds;
mod dead;
mod envelope;
mod heartbeat;
pub mod http;
mod instances;
mod notices;
mod presence;
mod queue;
mod recv;
mod report;
mod send;
mod spaces;
mod store;
pub mod tls;

use std::fmt::Display;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::core::code::AgencyCode;
use crate::core::config::Config;
use crate::core::envelope::Priority;
use crate::core::zone::Zone;

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

    /// Whether trying again may succeed: only when the hub or the broker
    /// could not be reached (exit 4).
    pub fn is_retryable(&self) -> bool {
        self.code == 4
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

/// `truc serve` options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Start even though the store is damaged, rolled back or rewritten
    /// (does not match its checkpoint): the loss is recorded in the audit log
    /// and the store is anchored as it is. A store that does not open is
    /// moved aside to `<data_dir>/db.damaged-<ms>` and an empty one is used.
    #[arg(long)]
    pub accept_loss: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router and the admin API.
    Serve(ServeArgs),
    /// Manage agencies.
    #[command(subcommand)]
    Agency(agency::AgencyCmd),
    /// Operators' named accounts: add, list, disable, enable, passwd, token.
    #[command(subcommand)]
    Account(account::AccountCmd),
    /// The alerts open now and those resolved in the last week.
    Alerts(alerts::AlertsArgs),
    /// Inspect envelopes.
    #[command(subcommand)]
    Envelope(envelope::EnvelopeCmd),
    /// Send a document as an agency (reference adapter).
    Send(send::SendArgs),
    /// Receive deliveries as an agency (reference adapter).
    Recv(recv::RecvArgs),
    /// Agency queues: depth, age, peek, purge, shape.
    #[command(subcommand)]
    Queue(queue::QueueCmd),
    /// Dead letters: the dead and rejected queues.
    #[command(subcommand)]
    Dead(dead::DeadCmd),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Statistics per agency and period.
    Report(report::ReportArgs),
    /// The embedded store.
    #[command(subcommand)]
    Store(store::StoreCmd),
    /// Read an agency's notices (reference adapter).
    Notices(notices::NoticesArgs),
    /// Show which agencies are online, or one agency's connection history.
    Presence(presence::PresenceArgs),
    /// Send a signed presence heartbeat as an agency (reference adapter).
    Heartbeat(heartbeat::HeartbeatArgs),
    /// List the running `truc serve` instances of this hub, the leader marked.
    Instances(instances::InstancesArgs),
    /// Print the OpenAPI document of the agencies' HTTPS gateway (JSON).
    Openapi,
}

/// Runs a command (everything but `serve`).
pub async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Openapi = cli.command {
        let doc = crate::gateway::openapi();
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| CliError::new(1, format!("OpenAPI document: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    let cfg = config(&cli.config)?;
    match cli.command {
        Command::Serve(_) => Err(CliError::new(2, "serve is run by main")),
        Command::Agency(c) => agency::run(&cfg, c).await,
        Command::Account(c) => account::run(&cfg, c).await,
        Command::Alerts(a) => alerts::run(&cfg, a).await,
        Command::Envelope(c) => envelope::run(&cfg, c).await,
        Command::Send(a) => send::run(&cfg, a).await,
        Command::Recv(a) => recv::run(&cfg, a).await,
        Command::Notices(a) => notices::run(&cfg, a).await,
        Command::Heartbeat(a) => heartbeat::run(&cfg, a).await,
        Command::Queue(c) => queue::run(&cfg, c).await,
        Command::Dead(c) => dead::run(&cfg, c).await,
        Command::Audit(c) => audit::run(&cfg, c).await,
        Command::Report(a) => report::run(&cfg, a).await,
        Command::Store(c) => store::run(&cfg, c).await,
        Command::Presence(a) => presence::run(&cfg, a).await,
        Command::Instances(a) => instances::run(&cfg, a).await,
        Command::Openapi => unreachable!("answered above"),
    }
}

pub(crate) fn config(path: &Option<PathBuf>) -> Result<Config, CliError> {
    Config::load(path.as_deref()).map_err(|e| CliError::new(2, e.to_string()))
}

/// Prints `v` as pretty JSON.
pub(crate) fn print_json<T: Serialize + ?Sized>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints an aligned table.
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

/// A table cell of an optional value: `-` when absent.
pub(crate) fn opt<T: Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}

/// Parses an agency code argument.
pub fn parse_code(c: &str) -> Result<AgencyCode, CliError> {
    AgencyCode::parse(c).map_err(|e| CliError::new(2, format!("{c:?}: {e}")))
}

/// Parses `--priority`.
pub fn priority(n: u8) -> Result<Priority, CliError> {
    Priority::new(n).ok_or_else(|| CliError::new(2, "--priority must be 0-4"))
}

/// Parses a duration flag.
pub fn duration(flag: &str, v: &str) -> Result<Duration, CliError> {
    crate::core::time::parse_duration(v).map_err(|e| CliError::new(2, format!("{flag}: {e}")))
}

/// Parses `--since`/`--until`: `YYYY-MM-DD` (midnight of that local day of
/// `zone`; `end_of_day` moves to the next local midnight) or RFC 3339.
pub fn parse_date(flag: &str, text: &str, end_of_day: bool, zone: &Zone) -> Result<i64, CliError> {
    let bad = || {
        CliError::new(
            2,
            format!("{flag} {text:?}: expected YYYY-MM-DD or RFC 3339"),
        )
    };
    if text.len() == 10 {
        let mut parts = text.splitn(3, '-').map(|p| p.parse::<u32>().ok());
        let (Some(Some(y)), Some(Some(m)), Some(Some(d))) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let start = zone.midnight(i64::from(y), m, d).map_err(|_| bad())?;
        if !end_of_day {
            return Ok(start);
        }
        // The next local midnight (a local day need not last 24 hours).
        let (ny, nm, nd) = zone.date(start + 36 * 3_600_000);
        return zone.midnight(ny, nm, nd).map_err(|_| bad());
    }
    crate::core::time::parse_rfc3339(text).map_err(|_| bad())
}

pub(crate) fn refuse_without_yes(what: String) -> CliError {
    CliError::new(2, format!("{what}\nNothing was done: add --yes to do it."))
}

/// The `--since` / `--until` window in ms (each a duration back from now,
/// or a date or time; a date is a local day of `zone`, the operator's time
/// zone, and `--until` of a date means the end of that day).
pub(crate) fn window(
    since: Option<&str>,
    until: Option<&str>,
    zone: &Zone,
) -> Result<(Option<i64>, Option<i64>), CliError> {
    Ok((
        since
            .map(|t| parse_when("--since", t, false, zone))
            .transpose()?,
        until
            .map(|t| parse_when("--until", t, true, zone))
            .transpose()?,
    ))
}

/// Parses a `--since`/`--until` value: a duration back from now (`7d`,
/// `2h`), a date `YYYY-MM-DD` (a local day of `zone`, see [`parse_date`]) or
/// an RFC 3339 time. Milliseconds since the epoch.
pub fn parse_when(flag: &str, text: &str, end_of_day: bool, zone: &Zone) -> Result<i64, CliError> {
    if let Ok(d) = crate::core::time::parse_duration(text) {
        return Ok(crate::core::time::now_ms() - d.as_millis() as i64);
    }
    parse_date(flag, text, end_of_day, zone).map_err(|_| {
        CliError::new(
            2,
            format!("{flag} {text:?}: expected a duration (7d, 2h), YYYY-MM-DD or RFC 3339"),
        )
    })
}

/// Refuses `value` unless it is one of `valid` (exit 2, listing them).
pub(crate) fn one_of(flag: &str, value: &str, valid: &[&str], extra: &str) -> Result<(), CliError> {
    if valid.contains(&value) {
        return Ok(());
    }
    Err(CliError::new(
        2,
        format!(
            "{flag} {value:?} is not valid; valid values: {}{extra}",
            valid.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_date() {
        let utc = Zone::parse("UTC").unwrap();
        let parse_when = |flag, text, end| super::parse_when(flag, text, end, &utc);
        let now = crate::core::time::now_ms();
        let d = parse_when("--since", "7d", false).unwrap();
        assert!((now - 7 * 86_400_000 - d).abs() < 60_000, "{d}");
        assert_eq!(
            parse_when("--since", "2026-11-22", false).unwrap(),
            1_795_305_600_000
        );
        assert_eq!(
            parse_when("--until", "2026-11-22", true).unwrap(),
            1_795_305_600_000 + 86_400_000
        );
        assert_eq!(
            parse_when("--since", "2026-11-22T01:00:00Z", false).unwrap(),
            1_795_305_600_000 + 3_600_000
        );
        // Reports take dates as local days of the operator's time zone.
        let vn = Zone::default();
        assert_eq!(
            window(Some("2026-11-22"), Some("2026-11-22"), &vn).unwrap(),
            (
                Some(1_795_305_600_000 - 7 * 3_600_000),
                Some(1_795_305_600_000 + 17 * 3_600_000)
            )
        );
        assert!(window(Some("2026-02-30"), None, &vn).is_err());
        let e = parse_when("--since", "yesterday", false).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("duration"), "{}", e.message);
    }

    #[test]
    fn unknown_values_are_refused_with_the_valid_ones() {
        assert!(one_of("--state", "queued", &["queued", "delivered"], "").is_ok());
        let e = one_of("--state", "lost", &["queued", "delivered"], "").unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("queued, delivered"), "{}", e.message);
    }
}

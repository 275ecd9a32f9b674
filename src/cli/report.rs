//! `truc report`: statistics per agency and period with the connects and
//! disconnects, over the typed admin client; a table, CSV or JSON.
//!
//! Invariants: `--since`/`--until` take a duration, a date (a local day of
//! the operator's time zone; `--until` includes that whole day) or an RFC
//! 3339 time; periods are cut and times shown in the operator's time zone
//! (`--tz`, else the config's `time_zone`, default `Asia/Ho_Chi_Minh`);
//! `received` counts envelopes, `retries` the further copies; CSV has a
//! header line and quotes cells when needed.

use clap::{Args, ValueEnum};

use crate::api::types::{By, ReportQuery, ReportRow};
use crate::cli::admin::Admin;
use crate::cli::agency::csv_cell;
use crate::cli::{print_json, table, window, CliError};
use crate::core::config::Config;
use crate::core::zone::Zone;

/// Report output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Aligned table.
    Table,
    /// CSV with a header line.
    Csv,
    /// JSON.
    Json,
}

/// Report period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ByArg {
    /// Day (local).
    Day,
    /// ISO week.
    Week,
    /// Month.
    Month,
}

/// `truc report`
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// From: a duration back from now (7d), a date (YYYY-MM-DD, a local
    /// day) or an RFC 3339 time, inclusive.
    #[arg(long)]
    pub since: Option<String>,
    /// Up to: a duration back from now, a date (YYYY-MM-DD: the whole day
    /// included) or an RFC 3339 time (exclusive).
    #[arg(long)]
    pub until: Option<String>,
    /// Period.
    #[arg(long, value_enum, default_value_t = ByArg::Day)]
    pub by: ByArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Print JSON (same as --format json).
    #[arg(long)]
    pub json: bool,
    /// Time zone (IANA name) to cut periods in and show times in; default:
    /// the config's `time_zone` (Asia/Ho_Chi_Minh unless set).
    #[arg(long)]
    pub tz: Option<String>,
}

const REPORT_COLUMNS: [&str; 10] = [
    "period",
    "agency",
    "sent",
    "received",
    "retries",
    "delivered",
    "bounced",
    "expired",
    "latency_median_s",
    "latency_p95_s",
];

fn cells(r: &ReportRow) -> Vec<String> {
    let lat = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_default();
    vec![
        r.period.clone(),
        r.agency.clone(),
        r.sent.to_string(),
        r.received.to_string(),
        r.retries.to_string(),
        r.delivered.to_string(),
        r.bounced.to_string(),
        r.expired.to_string(),
        lat(r.latency_median_s),
        lat(r.latency_p95_s),
    ]
}

/// Runs `truc report`.
pub async fn run(cfg: &Config, a: ReportArgs) -> Result<(), CliError> {
    let zone = match a.tz.as_deref() {
        Some(name) => Zone::parse(name).map_err(|e| CliError::new(2, format!("--tz: {e}")))?,
        None => cfg.zone(),
    };
    let (since_ms, until_ms) = window(a.since.as_deref(), a.until.as_deref(), &zone)?;
    let q = ReportQuery {
        tz: Some(zone.name().to_owned()),
        since_ms,
        until_ms,
        by: match a.by {
            ByArg::Day => By::Day,
            ByArg::Week => By::Week,
            ByArg::Month => By::Month,
        },
    };
    let v = Admin::new(cfg)?.report(&q).await?;
    let format = if a.json { ReportFormat::Json } else { a.format };
    let rows: Vec<Vec<String>> = v.report.rows.iter().map(cells).collect();
    match format {
        ReportFormat::Json => print_json(&v),
        ReportFormat::Csv => {
            println!("{}", REPORT_COLUMNS.join(","));
            for r in rows {
                println!(
                    "{}",
                    r.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(",")
                );
            }
        }
        ReportFormat::Table => {
            println!("Periods and times in {}.", v.report.time_zone);
            table(
                &[
                    "PERIOD",
                    "AGENCY",
                    "SENT",
                    "RECEIVED",
                    "RETRIES",
                    "DELIVERED",
                    "BOUNCED",
                    "EXPIRED",
                    "MEDIAN s",
                    "P95 s",
                ],
                &rows,
            );
            let now: Vec<Vec<String>> = v
                .connections_now
                .iter()
                .map(|c| {
                    vec![
                        c.agency.to_string(),
                        c.inbox_consumers.to_string(),
                        if c.online { "online" } else { "offline" }.into(),
                    ]
                })
                .collect();
            let history: Vec<Vec<String>> = v
                .connections
                .iter()
                .map(|c| {
                    vec![
                        c.agency.to_string(),
                        c.at.clone(),
                        c.event.clone(),
                        c.cause.clone(),
                    ]
                })
                .collect();
            if !history.is_empty() {
                println!();
                println!("Connects and disconnects in the period:");
                table(&["AGENCY", "AT", "EVENT", "CAUSE"], &history);
            }
            if !now.is_empty() {
                println!();
                println!("Connections now:");
                table(&["AGENCY", "CONSUMERS", "STATE"], &now);
            }
        }
    }
    Ok(())
}

//! `truc dead list|retry|drop`: the dead and rejected queues over the typed
//! admin client.
//!
//! Invariants: `--reason` must be a reason a dead letter can carry (exit 2
//! listing them otherwise); `drop` without `--yes` says what it would drop
//! and changes nothing (exit 2); `--rate` is 0 < N <= 1000 per second.

use clap::{Args, Subcommand, ValueEnum};

use crate::api::types::{DeadBody, DeadFilter, DeadOutcome, Which};
use crate::cli::admin::Admin;
use crate::cli::queue::age;
use crate::cli::{
    duration, one_of, opt, parse_code, print_json, refuse_without_yes, table, CliError,
};
use crate::core::config::Config;

/// Which dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WhichArg {
    /// Both.
    All,
    /// `<prefix>undelivered`: deliveries the hub gave up on (max-attempts,
    /// expired, unknown-destination, record-lost).
    Dead,
    /// `<prefix>rejected`: unauthenticated input.
    Rejected,
}

/// Selection of dead letters.
#[derive(Debug, Args)]
pub struct DeadFilterArgs {
    /// Queue.
    #[arg(long, value_enum, default_value_t = WhichArg::All)]
    pub queue: WhichArg,
    /// Destination code.
    #[arg(long)]
    pub dest: Option<String>,
    /// Source code.
    #[arg(long)]
    pub source: Option<String>,
    /// Reason: max-attempts, expired, unknown-destination, record-lost
    /// (dead); unknown-key, bad-signature,
    /// unsupported-version, malformed, not-a-delivery… (rejected).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only messages that died at least this long ago (e.g. 1h, 2d).
    #[arg(long)]
    pub older_than: Option<String>,
    /// At most this many messages.
    #[arg(short = 'n', long)]
    pub limit: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `truc dead …`
#[derive(Debug, Subcommand)]
pub enum DeadCmd {
    /// List dead letters (they stay where they are).
    List(DeadFilterArgs),
    /// Republish dead letters where they were going, rate-limited.
    Retry {
        /// Selection.
        #[command(flatten)]
        filter: DeadFilterArgs,
        /// Rate, e.g. 10/s or 5.
        #[arg(long, default_value = "10/s")]
        rate: String,
    },
    /// Remove dead letters for good (needs --yes).
    Drop {
        /// Selection.
        #[command(flatten)]
        filter: DeadFilterArgs,
        /// Really drop.
        #[arg(long)]
        yes: bool,
    },
}

/// Parses `10/s`, `10` or `0.5/s`.
pub fn parse_rate(text: &str) -> Result<f64, CliError> {
    let n = text.strip_suffix("/s").unwrap_or(text);
    match n.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1000.0 => Ok(r),
        _ => Err(CliError::new(
            2,
            format!("--rate {text:?}: expected N/s with 0 < N <= 1000"),
        )),
    }
}

fn filter(f: &DeadFilterArgs) -> Result<DeadFilter, CliError> {
    let queue = match f.queue {
        WhichArg::All => Which::All,
        WhichArg::Dead => Which::Dead,
        WhichArg::Rejected => Which::Rejected,
    };
    let older = f
        .older_than
        .as_deref()
        .map(|t| duration("--older-than", t))
        .transpose()?;
    for c in [&f.dest, &f.source].into_iter().flatten() {
        parse_code(c)?;
    }
    if let Some(r) = &f.reason {
        one_of("--reason", r, &crate::operator::dead::reasons(), "")?;
    }
    if f.limit == Some(0) {
        return Err(CliError::new(2, "-n/--limit must be at least 1"));
    }
    Ok(DeadFilter {
        queue,
        dest: f.dest.clone(),
        source: f.source.clone(),
        reason: f.reason.clone(),
        older_than_s: older.map(|d| d.as_secs()),
        limit: f.limit,
    })
}

fn print_dead(v: &DeadOutcome, json: bool) {
    if json {
        print_json(v);
        return;
    }
    let rows: Vec<Vec<String>> = v
        .items
        .iter()
        .map(|i| {
            vec![
                i.queue.clone(),
                opt(&i.message_id),
                opt(&i.source),
                opt(&i.dest),
                i.reason.clone(),
                age(i.age_s),
                i.detail.clone(),
            ]
        })
        .collect();
    table(
        &[
            "QUEUE",
            "MESSAGE ID",
            "SOURCE",
            "DEST",
            "REASON",
            "AGE",
            "DETAIL",
        ],
        &rows,
    );
    println!(
        "{} {} of {} looked at",
        rows.len(),
        match v.action.as_str() {
            "retry" => "retried",
            "drop" => "dropped",
            _ => "selected",
        },
        v.scanned
    );
}

/// Runs `truc dead …`.
pub async fn run(cfg: &Config, cmd: DeadCmd) -> Result<(), CliError> {
    let admin = Admin::new(cfg)?;
    match cmd {
        DeadCmd::List(f) => {
            let v = admin.dead(&filter(&f)?).await?;
            print_dead(&v, f.json);
            Ok(())
        }
        DeadCmd::Retry { filter: f, rate } => {
            let rate = parse_rate(&rate)?;
            let body = DeadBody {
                filter: filter(&f)?,
                rate: Some(rate),
            };
            let v = admin.dead_retry(&body).await?;
            print_dead(&v, f.json);
            Ok(())
        }
        DeadCmd::Drop { filter: f, yes } => {
            let sel = filter(&f)?;
            if !yes {
                let v = admin.dead(&sel).await?;
                return Err(refuse_without_yes(format!(
                    "would drop {} dead letter(s) for good (of {} looked at)",
                    v.items.len(),
                    v.scanned
                )));
            }
            let v = admin
                .dead_drop(&DeadBody {
                    filter: sel,
                    rate: None,
                })
                .await?;
            print_dead(&v, f.json);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cli::admin::query_string;
    use crate::core::zone::Zone;

    #[test]
    fn rates_and_dates() {
        assert_eq!(parse_rate("10/s").unwrap(), 10.0);
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        assert_eq!(parse_rate("0/s").unwrap_err().code, 2);
        assert_eq!(parse_rate("fast").unwrap_err().code, 2);
        let utc = Zone::parse("UTC").unwrap();
        let parse_date = |flag, text, end| crate::cli::parse_date(flag, text, end, &utc);
        let d = parse_date("--since", "2026-11-22", false).unwrap();
        assert_eq!(d, 1_795_305_600_000);
        assert_eq!(
            parse_date("--until", "2026-11-22", true).unwrap(),
            d + 86_400_000
        );
        assert_eq!(
            parse_date("--since", "22/11/2026", false).unwrap_err().code,
            2
        );
        assert_eq!(
            query_string(&json!({"a": "x y", "b": null, "c": 3})),
            "a=x%20y&c=3"
        );
    }
}

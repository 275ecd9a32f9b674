//! `truc envelope list|show`: envelope timelines over the typed admin
//! client.
//!
//! Invariants: `--state` must be a state the router writes (exit 2 listing
//! them otherwise); `show` without `--from` works when one source sent the
//! id and is refused (exit 3, naming the sources) when several did.

use clap::Subcommand;

use crate::api::types::{EnvelopeQuery, ListQuery, STATES};
use crate::cli::admin::Admin;
use crate::cli::{one_of, opt, parse_code, print_json, table, window, CliError};
use crate::core::config::Config;

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
        /// Only with a destination in this state (accepted, queued, deferred,
        /// retry, delivered, delay-warning, bounced, expired, recalled,
        /// purged, rejected, status-NN).
        #[arg(long)]
        state: Option<String>,
        /// Only accepted since: a duration back from now (2h, 7d), a date
        /// (YYYY-MM-DD, a local day of `time_zone`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only accepted before: a duration back from now, a date (the whole
        /// day included) or an RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Most envelopes to list (1-10000).
        #[arg(short = 'n', long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an envelope's per-destination timeline.
    Show {
        /// The source's message id.
        id: String,
        /// Source agency code; needed only when several sources sent this id.
        #[arg(long)]
        from: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Checks a `--state` value.
fn check_state(st: &str) -> Result<(), CliError> {
    if crate::operator::envelopes::is_state(st) {
        return Ok(());
    }
    one_of("--state", st, &STATES, ", status-NN")
}

/// Runs `truc envelope …`.
pub async fn run(cfg: &Config, cmd: EnvelopeCmd) -> Result<(), CliError> {
    match cmd {
        EnvelopeCmd::List {
            from,
            to,
            state,
            since,
            until,
            limit,
            json,
        } => {
            if let Some(st) = &state {
                check_state(st)?;
            }
            if limit == 0 || limit > 10_000 {
                return Err(CliError::new(2, "-n/--limit must be 1-10000"));
            }
            let (since_ms, until_ms) = window(since.as_deref(), until.as_deref(), &cfg.zone())?;
            let q = ListQuery {
                from: from
                    .as_deref()
                    .map(parse_code)
                    .transpose()?
                    .map(|c| c.to_string()),
                to: to
                    .as_deref()
                    .map(parse_code)
                    .transpose()?
                    .map(|c| c.to_string()),
                state,
                since: None,
                since_ms,
                until_ms,
                limit: Some(limit),
            };
            let list = Admin::new(cfg)?.envelopes(&q).await?;
            if json {
                print_json(&list);
                return Ok(());
            }
            let mut rows = Vec::new();
            for e in &list {
                for d in &e.dests {
                    rows.push(vec![
                        e.message_id.clone(),
                        e.from.to_string(),
                        d.code.to_string(),
                        d.state.to_string(),
                        e.priority.to_string(),
                        e.accepted_at.clone(),
                        e.subject.clone(),
                    ]);
                }
            }
            table(
                &["ID", "FROM", "TO", "STATE", "PRIO", "ACCEPTED", "SUBJECT"],
                &rows,
            );
            Ok(())
        }
        EnvelopeCmd::Show { id, from, json } => {
            let q = EnvelopeQuery {
                from: from
                    .as_deref()
                    .map(parse_code)
                    .transpose()?
                    .map(|c| c.to_string()),
                id,
            };
            let v = Admin::new(cfg)?.envelope(&q).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "envelope {} from {}  subject {:?}  priority {}  size {} B  digest {}",
                v.message_id, v.from, v.subject, v.priority, v.size, v.digest
            );
            let mut rows = Vec::new();
            for d in &v.dests {
                for e in &d.events {
                    rows.push(vec![
                        d.code.to_string(),
                        e.at.clone(),
                        e.state.to_string(),
                        opt(&e.reason),
                        e.detail.clone(),
                    ]);
                }
            }
            table(&["DEST", "AT", "STATE", "REASON", "DETAIL"], &rows);
            Ok(())
        }
    }
}

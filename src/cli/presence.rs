//! `truc presence [history CODE]`: which agencies are online, or one
//! agency's connects and disconnects, over the typed admin client.
//!
//! Invariants: read-only; `--since`/`--until` take a duration or a date.

use clap::{Args, Subcommand};

use crate::api::types::HistoryQuery;
use crate::cli::admin::Admin;
use crate::cli::{opt, parse_code, print_json, table, window, CliError};
use crate::core::config::Config;

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
        /// Only since: a duration back from now (24h, 7d), a date
        /// (YYYY-MM-DD, a local day of `time_zone`) or an RFC 3339 time. everything when absent.
        #[arg(long)]
        since: Option<String>,
        /// Only before: a duration back from now, a date (the whole day
        /// included) or an RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `truc presence …`.
pub async fn run(cfg: &Config, a: PresenceArgs) -> Result<(), CliError> {
    match a.command {
        None => {
            let list = Admin::new(cfg)?.presence().await?;
            if a.json {
                print_json(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|p| {
                    vec![
                        p.code.clone(),
                        p.name.clone(),
                        p.state.clone(),
                        opt(&p.since),
                        opt(&p.cause),
                        opt(&p.consumers),
                        opt(&p.last_heartbeat),
                    ]
                })
                .collect();
            table(
                &[
                    "CODE",
                    "NAME",
                    "STATE",
                    "SINCE",
                    "CAUSE",
                    "CONSUMERS",
                    "LAST HEARTBEAT",
                ],
                &rows,
            );
            Ok(())
        }
        Some(PresenceCmd::History {
            code,
            since,
            until,
            json,
        }) => {
            let code = parse_code(&code)?;
            let (since_ms, until_ms) = window(since.as_deref(), until.as_deref(), &cfg.zone())?;
            let q = HistoryQuery {
                since: None,
                since_ms,
                until_ms,
            };
            let h = Admin::new(cfg)?.presence_history(&code, &q).await?;
            if json || a.json {
                print_json(&h);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = h
                .entries
                .iter()
                .map(|e| {
                    vec![
                        e.at.clone(),
                        e.event.clone(),
                        opt(&e.from),
                        e.to.clone(),
                        e.cause.clone(),
                    ]
                })
                .collect();
            table(&["AT", "EVENT", "FROM", "TO", "CAUSE"], &rows);
            Ok(())
        }
    }
}

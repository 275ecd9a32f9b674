//! `truc audit verify|tail`: the hash-chained audit log over the typed
//! admin client.
//!
//! Invariants: `verify` exits 1 naming the first broken entry; `tail
//! --follow` prints each entry once, in order, until interrupted.

use std::time::Duration;

use clap::Subcommand;

use crate::api::types::AuditEntry;
use crate::cli::admin::Admin;
use crate::cli::{opt, print_json, CliError};
use crate::core::config::Config;

/// `truc audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain; exit 1 and name the first broken entry if any.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The last entries.
    Tail {
        /// How many (1-10000).
        #[arg(short = 'n', long = "limit", alias = "n", default_value_t = 20)]
        n: usize,
        /// Keep printing new entries (poll every second) until interrupted.
        #[arg(long)]
        follow: bool,
        /// Print JSON (one object per line with --follow).
        #[arg(long)]
        json: bool,
    },
}

fn field(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(t) => t.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_entries(entries: &[AuditEntry], json: bool) {
    for e in entries {
        if json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            let fields: Vec<String> = e
                .fields
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", field(v)))
                .collect();
            println!(
                "{:>8}  {}  {:<13} {}",
                e.seq,
                e.at,
                e.kind,
                fields.join(" ")
            );
        }
    }
}

/// Runs `truc audit …`.
pub async fn run(cfg: &Config, cmd: AuditCmd) -> Result<(), CliError> {
    let admin = Admin::new(cfg)?;
    match cmd {
        AuditCmd::Verify { json } => {
            let v = admin.audit_verify().await?;
            if json {
                print_json(&v);
            } else if v.ok {
                println!(
                    "audit chain verifies: {} entries ({} to {}){}",
                    v.entries,
                    opt(&v.first_seq),
                    opt(&v.last_seq),
                    v.anchor_seq
                        .map(|a| format!(", anchored after swept entry {a}"))
                        .unwrap_or_default()
                );
            }
            if v.ok {
                Ok(())
            } else {
                Err(CliError::new(
                    1,
                    format!(
                        "audit chain broken at entry {}: {}",
                        opt(&v.broken.as_ref().map(|b| b.seq)),
                        opt(&v.broken.as_ref().map(|b| b.problem.clone()))
                    ),
                ))
            }
        }
        AuditCmd::Tail { n, follow, json } => {
            if n == 0 || n > crate::operator::audit::MAX_TAIL {
                return Err(CliError::new(2, "-n/--limit must be 1-10000"));
            }
            let entries = admin.audit_tail(n, None).await?;
            if json && !follow {
                print_json(&entries);
                return Ok(());
            }
            print_entries(&entries, json);
            if !follow {
                return Ok(());
            }
            let mut last = entries.last().map_or(0, |e| e.seq);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let entries = admin.audit_tail(1000, Some(last)).await?;
                print_entries(&entries, json);
                if let Some(e) = entries.last() {
                    last = e.seq;
                }
            }
        }
    }
}

//! `truc notices`: reads an agency's notices through the reference adapter
//! (verifying the hub's signature) and prints one line or JSON object each.
//!
//! Invariants: a notice is acked only once it verified; one that does not
//! verify is requeued (nack with requeue), the reason (the key it names, the
//! keys held) goes to stderr and the command stops with exit 6. Otherwise it
//! stops after `--count` notices or `--idle` without one.

use std::time::Duration;

use clap::Args;

use crate::cli::creds::{connect, credentials, lost, unverified, CredArgs};
use crate::cli::{duration, parse_code, CliError};
use crate::core::config::Config;

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

/// Runs `truc notices`.
pub async fn run(cfg: &Config, a: NoticesArgs) -> Result<(), CliError> {
    let code = parse_code(&a.code)?;
    let idle: Duration = duration("--idle", &a.idle)?;
    let client = connect(cfg, credentials(&code, &a.creds)?).await?;
    let mut sub = client.notices(64).await.map_err(lost)?;
    let mut count = 0u64;
    while a.count.is_none_or(|n| count < n) {
        let inbound = match tokio::time::timeout(idle, sub.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(Err(e))) => return Err(lost(e)),
            Ok(Some(Ok(i))) => i,
        };
        match client.notice(&inbound) {
            Ok(n) => {
                if a.json {
                    println!("{}", serde_json::to_string(&n).unwrap_or_default());
                } else {
                    let mut line = format!("{}  {}  ref {}", n.at, n.notice.as_str(), n.reference);
                    if let Some(d) = &n.dest {
                        line.push_str(&format!("  dest {d}"));
                    }
                    if let Some(st) = &n.status {
                        line.push_str(&format!("  status {st}"));
                    }
                    if let Some(r) = n.reason {
                        line.push_str(&format!("  reason {r}"));
                    }
                    if !n.detail.is_empty() {
                        line.push_str(&format!("  ({})", n.detail));
                    }
                    println!("{line}");
                }
                count += 1;
            }
            Err(e) => {
                sub.reject(inbound.delivery_tag, true).await.map_err(lost)?;
                client.close().await;
                return Err(unverified(e));
            }
        }
        sub.ack(inbound.delivery_tag).await.map_err(lost)?;
    }
    client.close().await;
    Ok(())
}

//! `truc heartbeat`: sends a signed presence heartbeat as an agency, once
//! or every `--every` until interrupted.
//!
//! Invariants: `--state` is `online` or `offline` (anything else is a usage
//! error listing both); the heartbeat is signed by [`crate::client`].

use clap::Args;

use crate::cli::creds::{connect, credentials, lost, CredArgs};
use crate::cli::{duration, parse_code, CliError};
use crate::core::config::Config;

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

/// Runs `truc heartbeat`.
pub async fn run(cfg: &Config, a: HeartbeatArgs) -> Result<(), CliError> {
    let code = parse_code(&a.code)?;
    let online = a.state == "online";
    let every = a
        .every
        .as_deref()
        .map(|e| duration("--every", e))
        .transpose()?;
    let client = connect(cfg, credentials(&code, &a.creds)?).await?;
    loop {
        client.heartbeat(online).await.map_err(lost)?;
        println!("{code}: heartbeat {} sent", a.state);
        let Some(every) = every else { break };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    client.close().await;
    Ok(())
}

//! `truc send`: sends a file as an agency through the reference adapter and
//! prints the message id.
//!
//! Invariants: every destination code is checked before connecting; the
//! envelope is signed by [`crate::client`], never here.

use std::path::PathBuf;

use clap::Args;

use crate::cli::creds::{connect, credentials, CredArgs};
use crate::cli::{parse_code, priority, CliError};
use crate::client::Outgoing;
use crate::core::config::Config;

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

/// Runs `truc send`.
pub async fn run(cfg: &Config, a: SendArgs) -> Result<(), CliError> {
    let from = parse_code(&a.from)?;
    let to =
        a.to.split(',')
            .map(parse_code)
            .collect::<Result<Vec<_>, _>>()?;
    let body = std::fs::read(&a.file)
        .map_err(|e| CliError::new(2, format!("{}: {e}", a.file.display())))?;
    let mut extra = Vec::new();
    if let Some(d) = &a.deliver_by {
        extra.push(("lgsp-deliver-by".to_owned(), d.clone()));
    }
    let out = Outgoing {
        to,
        subject: a.subject.clone(),
        priority: priority(a.priority)?,
        data_type: a.data_type.clone(),
        content_type: a.content_type.clone(),
        body,
        message_id: a.message_id.clone(),
        extra,
    };
    let client = connect(cfg, credentials(&from, &a.creds)?).await?;
    let id = client
        .send(&out)
        .await
        .map_err(|e| CliError::new(1, e.to_string()))?;
    println!("{id}");
    client.close().await;
    Ok(())
}

//! `truc recv`: receives deliveries as an agency through the reference
//! adapter, answers status `01` for each new one and recall requests with
//! `15`/`16`, and prints a line (or a JSON object) per delivery.
//!
//! Invariants: a delivery is acked only after its status was sent; a repeat
//! is acked without a second status; a stale delivery is rejected without
//! requeue. A delivery that does not verify is never acked or dropped: it
//! is requeued (nack with requeue), the reason (the key it names, the keys
//! held) goes to stderr and the command stops with exit 6. A delivery whose
//! document is in an upload space is confirmed only once the document was
//! fetched over the gateway and matched its digest; otherwise it is
//! requeued and the command stops with exit 8.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::cli::creds::{connect, credentials, lost, unverified, CredArgs};
use crate::cli::spaces::{Gateway, EXIT_SPACE};
use crate::cli::{duration, parse_code, CliError};
use crate::client::ReceivedKind;
use crate::core::config::Config;

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
    /// The HTTPS gateway to fetch documents kept in upload spaces from
    /// (`http://<loopback ip>:<port>` or `https://<ip>:<port>`). Without it
    /// a delivery whose document is in a space is requeued and the command
    /// stops (exit 8): its document cannot be checked.
    #[arg(long, env = "TRUC_GATEWAY_URL")]
    pub gateway: Option<String>,
    /// PEM CA certificate(s) the gateway's HTTPS certificate is verified against.
    #[arg(long, env = "TRUC_GATEWAY_CA_FILE")]
    pub gateway_ca: Option<PathBuf>,
    /// Credentials.
    #[command(flatten)]
    pub creds: CredArgs,
}

/// A recall answered, as printed with `--json`.
#[derive(Debug, Serialize)]
struct RecallLine<'a> {
    recall: &'a str,
    from: &'a str,
    answer: &'a str,
}

/// A delivery, as printed with `--json`.
#[derive(Debug, Serialize)]
struct DeliveryLine<'a> {
    from: &'a str,
    message_id: &'a str,
    subject: &'a str,
    priority: u8,
    attempt: u32,
    repeat: bool,
    size: u64,
}

/// Runs `truc recv`.
pub async fn run(cfg: &Config, a: RecvArgs) -> Result<(), CliError> {
    let code = parse_code(&a.code)?;
    let idle = a
        .idle
        .as_deref()
        .map(|i| duration("--idle", i))
        .transpose()?;
    let creds = credentials(&code, &a.creds)?;
    let mut gateway = a
        .gateway
        .as_deref()
        .map(|g| Gateway::new(g, a.gateway_ca.as_deref()))
        .transpose()?;
    let mut client = connect(cfg, creds.clone()).await?;
    let mut sub = client.inbox(64).await.map_err(lost)?;
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::new(2, format!("{}: {e}", dir.display())))?;
    }
    let (mut count, mut repeats) = (0u64, 0u64);
    while a.count.is_none_or(|n| count < n) {
        let next = match idle {
            Some(d) => match tokio::time::timeout(d, sub.next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => sub.next().await,
        };
        let inbound = match next {
            Some(Ok(i)) => i,
            Some(Err(e)) => return Err(lost(e)),
            None => break,
        };
        let tag = inbound.delivery_tag;
        match client.receive(inbound) {
            Err(e) => {
                sub.reject(tag, true).await.map_err(lost)?;
                if !a.json {
                    eprintln!("received {count}, dropped {repeats} repeats");
                }
                client.close().await;
                return Err(unverified(e));
            }
            Ok(r) if matches!(r.kind, ReceivedKind::Recall { .. }) => {
                let ReceivedKind::Recall { already_received } = r.kind else {
                    continue;
                };
                let answer = if already_received { "16" } else { "15" };
                client
                    .send_status(
                        &r.message_id,
                        answer,
                        Some(&r.from),
                        Some(if already_received {
                            "already received"
                        } else {
                            "dropped before receipt"
                        }),
                    )
                    .await
                    .map_err(lost)?;
                if a.json {
                    let line = RecallLine {
                        recall: &r.message_id,
                        from: r.from.as_str(),
                        answer,
                    };
                    println!("{}", serde_json::to_string(&line).unwrap_or_default());
                } else {
                    println!(
                        "recall of {} from {}: answered {answer}",
                        r.message_id, r.from
                    );
                }
                sub.ack(tag).await.map_err(lost)?;
            }
            Ok(r) if r.stale => {
                eprintln!(
                    "dropped stale {} from {} (lgsp-deliver-by passed)",
                    r.message_id, r.from
                );
                sub.reject(tag, false).await.map_err(lost)?;
            }
            Ok(r) => {
                let mut size = r.message.body.len() as u64;
                if r.repeat {
                    repeats += 1;
                } else {
                    let path = a
                        .out
                        .as_ref()
                        .map(|dir| dir.join(format!("{}_{}", r.from, r.message_id)));
                    if let Some(space) = &r.content_space {
                        // The document is in an upload space: fetched and
                        // checked before it is confirmed, or left queued.
                        let digest = r.message.header("lgsp-digest").unwrap_or_default();
                        let fetched = match gateway.as_mut() {
                            None => Err(CliError::new(
                                EXIT_SPACE,
                                format!(
                                    "delivery {} from {}: its document is in upload space {space}; give --gateway to fetch it",
                                    r.message_id, r.from
                                ),
                            )),
                            Some(g) => g.fetch(&creds, space, digest, path.as_deref()).await,
                        };
                        match fetched {
                            Ok(n) => size = n,
                            Err(e) => {
                                sub.reject(tag, true).await.map_err(lost)?;
                                client.close().await;
                                return Err(e);
                            }
                        }
                    } else if let Some(path) = &path {
                        std::fs::write(path, &r.message.body)
                            .map_err(|e| CliError::new(1, format!("{}: {e}", path.display())))?;
                    }
                    client
                        .send_status(&r.message_id, "01", Some(&r.from), None)
                        .await
                        .map_err(lost)?;
                    count += 1;
                }
                if a.json {
                    let line = DeliveryLine {
                        from: r.from.as_str(),
                        message_id: &r.message_id,
                        subject: &r.subject,
                        priority: r.priority,
                        attempt: r.attempt,
                        repeat: r.repeat,
                        size,
                    };
                    println!("{}", serde_json::to_string(&line).unwrap_or_default());
                } else if !r.repeat {
                    println!(
                        "from {}  id {}  priority {}  {} bytes  subject {:?}",
                        r.from, r.message_id, r.priority, size, r.subject
                    );
                }
                sub.ack(tag).await.map_err(lost)?;
            }
        }
    }
    if !a.json {
        eprintln!("received {count}, dropped {repeats} repeats");
    }
    client.close().await;
    Ok(())
}

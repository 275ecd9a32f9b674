//! `truc send`: sends a file as an agency through the reference adapter,
//! prints the message id, then waits for the hub's answer (`accepted` or
//! `rejected`) and prints it.
//!
//! Invariants: everything that can be checked locally is checked before
//! connecting (exit 2): the destination list, the priority, the deadline
//! (well-formed, not past), the message id, and the envelope's headers as the
//! hub checks them (B5, [`crate::core::envelope::Payload::parse`]). The
//! envelope is signed by [`crate::client`], never here. Waiting
//! ([`crate::client::Client::await_answer`]) acknowledges only the answer
//! about this message; every other notice stays queued for the agency's
//! adapter. With `--gateway`, the file is uploaded into an upload space and
//! the envelope names it. Exit codes: 0 accepted (or sent, with
//! `--no-wait`), 3 rejected by the hub, 6 the answer does not verify (left
//! queued), 7 no answer in time, 8 the upload failed.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cli::creds::{connect, credentials, lost, unverified, CredArgs};
use crate::cli::spaces::Gateway;
use crate::cli::{duration, parse_code, priority, CliError};
use crate::client::{envelope_message, ClientError, Outgoing};
use crate::core::config::Config;
use crate::core::envelope::{valid_message_id, Kind, Payload, Priority, SPACE};
use crate::core::notice::{Notice, NoticeKind};
use crate::core::time::{format_duration, now_ms, parse_rfc3339};

/// Exit code when the hub refused the envelope (`rejected` notice).
const EXIT_REJECTED: i32 = 3;
/// Exit code when no answer came within `--wait`.
const EXIT_NO_ANSWER: i32 = 7;

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
    /// How long to wait for the hub's accepted/rejected notice (e.g. 30s).
    #[arg(long, default_value = "30s")]
    pub wait: String,
    /// Do not wait for the hub's answer: exit 0 once the broker confirmed.
    #[arg(long, conflicts_with = "wait")]
    pub no_wait: bool,
    /// Upload the file into an upload space through this HTTPS gateway
    /// (`http://<loopback ip>:<port>` or `https://<ip>:<port>`) and send an
    /// envelope that names it: for documents larger than the hub takes in
    /// a message. The file is never read into memory whole.
    #[arg(long, env = "TRUC_GATEWAY_URL")]
    pub gateway: Option<String>,
    /// PEM CA certificate(s) the gateway's HTTPS certificate is verified against.
    #[arg(long, env = "TRUC_GATEWAY_CA_FILE")]
    pub gateway_ca: Option<PathBuf>,
    /// Credentials.
    #[command(flatten)]
    pub creds: CredArgs,
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::new(2, message)
}

/// The checks made before connecting; returns the wait (`None`: do not wait).
fn check_locally(a: &SendArgs, prio: Priority) -> Result<Option<Duration>, CliError> {
    let wait = if a.no_wait {
        None
    } else {
        Some(duration("--wait", &a.wait)?)
    };
    if let Some(id) = &a.message_id {
        if !valid_message_id(id) {
            return Err(usage(format!(
                "--message-id {id:?}: 1-128 characters of A-Z a-z 0-9 - _ . : (docs/PROTOCOL.md §2.2)"
            )));
        }
    }
    match &a.deliver_by {
        None if prio == Priority::FLASH_APPOINTED => {
            return Err(usage(
                "--priority 4 (Hỏa tốc hẹn giờ) needs --deliver-by (an RFC 3339 deadline)",
            ))
        }
        None => {}
        Some(d) => {
            let t = parse_rfc3339(d).map_err(|e| {
                usage(format!(
                    "--deliver-by {d:?}: {e} (expected RFC 3339, e.g. 2026-11-22T17:00:00+07:00)"
                ))
            })?;
            if t <= now_ms() {
                return Err(usage(format!("--deliver-by {d} is in the past")));
            }
        }
    }
    Ok(wait)
}

fn describe(n: &Notice) -> String {
    let mut line = format!("{}  ref {}", n.notice.as_str(), n.reference);
    if !n.destinations.is_empty() {
        let d: Vec<&str> = n.destinations.iter().map(|c| c.as_str()).collect();
        line.push_str(&format!("  destinations {}", d.join(",")));
    }
    if let Some(r) = n.reason {
        line.push_str(&format!("  reason {r}"));
    }
    if !n.detail.is_empty() {
        line.push_str(&format!("  ({})", n.detail));
    }
    line
}

/// The envelope `a` asks for, with `body` and `extra` headers.
fn outgoing(
    a: &SendArgs,
    to: &[crate::core::code::AgencyCode],
    prio: Priority,
    body: Vec<u8>,
    extra: Vec<(String, String)>,
) -> Outgoing {
    Outgoing {
        to: to.to_vec(),
        subject: a.subject.clone(),
        priority: prio,
        data_type: a.data_type.clone(),
        content_type: a.content_type.clone(),
        body,
        message_id: a.message_id.clone(),
        extra,
    }
}

/// Runs `truc send`.
pub async fn run(cfg: &Config, a: SendArgs) -> Result<(), CliError> {
    let from = parse_code(&a.from)?;
    if a.to.split(',').all(|c| c.trim().is_empty()) {
        return Err(usage("--to names no destination"));
    }
    let to =
        a.to.split(',')
            .map(parse_code)
            .collect::<Result<Vec<_>, _>>()?;
    let prio = priority(a.priority)?;
    let wait = check_locally(&a, prio)?;
    let creds = credentials(&from, &a.creds)?;
    let mut extra = Vec::new();
    if let Some(d) = &a.deliver_by {
        extra.push(("lgsp-deliver-by".to_owned(), d.clone()));
    }
    let body = match &a.gateway {
        None => std::fs::read(&a.file).map_err(|e| usage(format!("{}: {e}", a.file.display())))?,
        Some(g) => {
            // The hub's header checks first, on the envelope as it will be
            // but for the space's id and digest; then the upload.
            let mut probe = extra.clone();
            probe.push((SPACE.to_owned(), "0".repeat(32)));
            let m = envelope_message(
                &cfg.prefix,
                &creds,
                &outgoing(&a, &to, prio, Vec::new(), probe),
            );
            Payload::parse(Kind::Envelope, &m, prio)
                .map_err(|r| usage(format!("the hub would refuse this envelope: {r}")))?;
            // The document goes into a space; the envelope names it.
            let mut gw = Gateway::new(g, a.gateway_ca.as_deref())?;
            let (space, digest) = gw.upload(&creds, &a.file).await?;
            extra.push((SPACE.to_owned(), space));
            extra.push(("lgsp-digest".to_owned(), digest));
            Vec::new()
        }
    };
    let out = outgoing(&a, &to, prio, body, extra);
    // The hub's own header checks (B5), before anything leaves this machine.
    let m = envelope_message(&cfg.prefix, &creds, &out);
    Payload::parse(Kind::Envelope, &m, prio)
        .map_err(|r| usage(format!("the hub would refuse this envelope: {r}")))?;
    let client = connect(cfg, creds).await?;
    client
        .publish(&m)
        .await
        .map_err(|e| CliError::new(1, e.to_string()))?;
    let id = m.message_id.clone().unwrap_or_default();
    println!("{id}");
    let Some(wait) = wait else {
        client.close().await;
        return Ok(());
    };
    let answer = client.await_answer(&id, wait).await;
    client.close().await;
    match answer {
        Ok(Some(n)) if n.notice == NoticeKind::Accepted => {
            println!("{}", describe(&n));
            Ok(())
        }
        Ok(Some(n)) => Err(CliError::new(
            EXIT_REJECTED,
            format!("refused by the hub: {}", describe(&n)),
        )),
        Ok(None) => Err(CliError::new(
            EXIT_NO_ANSWER,
            format!(
                "no answer from the hub within {} for {id}. Likely causes: a wrong access key or \
                 secret, or an expired key (the hub does not answer what it cannot authenticate; \
                 the operator sees it in the rejected queue); this machine's clock is off; the \
                 hub is down or has a backlog; or another adapter of {from} took the notice",
                format_duration(wait)
            ),
        )),
        Err(e @ ClientError::Verify { .. }) => Err(unverified(e)),
        Err(e) => Err(lost(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> SendArgs {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            send: SendArgs,
        }
        let mut argv = vec!["send", "--from", "A1", "--to", "B1", "--file", "x"];
        argv.extend_from_slice(extra);
        let m = <Cli as clap::CommandFactory>::command().get_matches_from(argv);
        Cli::from_arg_matches(&m).unwrap().send
    }

    /// A generated secret may start with `-` (base64url): still a value.
    #[test]
    fn a_secret_starting_with_a_hyphen_is_a_value() {
        let a = args(&["--access-key", "AK1", "--secret", "-AZy0_secret"]);
        assert_eq!(a.creds.secret.as_deref(), Some("-AZy0_secret"));
    }

    fn check(extra: &[&str]) -> Result<Option<Duration>, CliError> {
        let a = args(extra);
        check_locally(&a, priority(a.priority).unwrap())
    }

    #[test]
    fn local_checks_refuse_before_connecting() {
        let code = |extra: &[&str]| check(extra).err().map(|e| (e.code, e.message));
        let (c, m) = code(&["--priority", "4"]).unwrap();
        assert_eq!(c, 2);
        assert!(m.contains("--deliver-by"), "{m}");
        let (c, m) = code(&["--deliver-by", "tomorrow"]).unwrap();
        assert_eq!(c, 2);
        assert!(m.contains("RFC 3339"), "{m}");
        let (c, m) = code(&["--deliver-by", "2020-01-01T00:00:00Z"]).unwrap();
        assert_eq!(c, 2);
        assert!(m.contains("in the past"), "{m}");
        assert_eq!(code(&["--wait", "soon"]).unwrap().0, 2);
        assert_eq!(code(&["--message-id", "bad id"]).unwrap().0, 2);
        assert_eq!(
            check(&["--priority", "4", "--deliver-by", "2999-01-01T00:00:00Z"]).unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(check(&["--no-wait"]).unwrap(), None);
        assert_eq!(
            check(&["--wait", "2m"]).unwrap(),
            Some(Duration::from_secs(120))
        );
    }
}

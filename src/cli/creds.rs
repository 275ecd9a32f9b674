//! The reference adapter's credentials (`--credentials FILE`, or
//! `TRUC_ACCESS_KEY` and `TRUC_SECRET`) and its connection, shared by
//! `send`, `recv`, `notices` and `heartbeat`.
//!
//! Invariants: a credentials file must belong to the agency named on the
//! command line; missing credentials are a usage error (2); a broker that
//! cannot be reached is exit 4.

use std::path::PathBuf;

use clap::Args;

use crate::cli::CliError;
use crate::client::{Client, Credentials};
use crate::core::code::AgencyCode;
use crate::core::config::Config;

/// Credentials of the reference adapter.
#[derive(Debug, Args)]
pub struct CredArgs {
    /// Credentials file: the JSON printed by `truc agency add --json`, with
    /// an optional `previous_keys` list of `{access_key, secret}` still held.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Access key (else TRUC_ACCESS_KEY).
    #[arg(long, env = "TRUC_ACCESS_KEY", hide_env_values = true)]
    pub access_key: Option<String>,
    /// Secret (else TRUC_SECRET). Generated secrets may start with `-`.
    #[arg(
        long,
        env = "TRUC_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub secret: Option<String>,
}

/// The credentials of `code` given by `a`.
pub(crate) fn credentials(code: &AgencyCode, a: &CredArgs) -> Result<Credentials, CliError> {
    if let Some(path) = &a.credentials {
        let c = Credentials::from_file(path).map_err(|e| CliError::new(2, e.to_string()))?;
        if &c.code != code {
            return Err(CliError::new(
                2,
                format!(
                    "{} holds the credentials of {}, not {code}",
                    path.display(),
                    c.code
                ),
            ));
        }
        return Ok(c);
    }
    match (&a.access_key, &a.secret) {
        (Some(k), Some(s)) => Ok(Credentials {
            code: code.clone(),
            access_key: k.clone(),
            secret: s.clone(),
            previous_keys: Vec::new(),
        }),
        _ => Err(CliError::new(
            2,
            "credentials needed: --credentials FILE, or TRUC_ACCESS_KEY and TRUC_SECRET",
        )),
    }
}

/// A connected adapter.
pub(crate) async fn connect(cfg: &Config, creds: Credentials) -> Result<Client, CliError> {
    let tls = crate::broker::BrokerTls::new(cfg.amqp_ca_file.clone());
    Client::connect_tls(&cfg.amqp_url, &cfg.prefix, creds, &tls)
        .await
        .map_err(|e| CliError::new(4, e.to_string()))
}

/// An adapter failure once connected: the broker went away (exit 4).
pub(crate) fn lost(e: impl std::fmt::Display) -> CliError {
    CliError::new(4, e.to_string())
}

/// Exit code of a delivery or notice that does not verify (left queued).
pub(crate) const EXIT_UNVERIFIED: i32 = 6;

/// The failure for something received that does not verify: it was left
/// queued (not acknowledged) and the command stops (exit 6).
pub(crate) fn unverified(e: impl std::fmt::Display) -> CliError {
    CliError::new(
        EXIT_UNVERIFIED,
        format!("{e}; left it queued (not acknowledged) and stopped: give the adapter the secret of that key (previous_keys in the credentials file)"),
    )
}

//! `truc instances [--json]`: the `truc serve` processes sharing this hub's
//! store (each seen within the last 10 s), the one holding the leader lease
//! marked, over the typed admin client.
//!
//! Invariants: read-only; `--json` prints the API's body
//! ([`crate::api::types::InstanceView`]).

use clap::Args;

use crate::cli::admin::Admin;
use crate::cli::{print_json, table, CliError};
use crate::core::config::Config;

/// `truc instances`
#[derive(Debug, Args)]
pub struct InstancesArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `truc instances`.
pub async fn run(cfg: &Config, a: InstancesArgs) -> Result<(), CliError> {
    let list = Admin::new(cfg)?.instances().await?;
    if a.json {
        print_json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.host.clone(),
                i.pid.to_string(),
                i.version.clone(),
                i.started.clone(),
                i.last_seen.clone(),
                match i.term {
                    Some(t) if i.leader => format!("leader (term {t})"),
                    _ if i.leader => "leader".into(),
                    _ => String::new(),
                },
                i.admin_addr.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "HOST",
            "PID",
            "VERSION",
            "STARTED",
            "LAST SEEN",
            "LEADER",
            "ADMIN",
        ],
        &rows,
    );
    Ok(())
}

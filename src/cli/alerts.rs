//! `truc alerts [--json]`: the alerts open now and those resolved in the
//! last week, over the typed admin client.
//!
//! Invariants: read-only; `--json` prints the API's body
//! ([`crate::api::types::AlertsView`]); times are shown in the hub's zone.

use clap::Args;

use crate::cli::admin::Admin;
use crate::cli::{print_json, table, CliError};
use crate::core::config::Config;

/// `truc alerts`
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `truc alerts`.
pub async fn run(cfg: &Config, a: AlertsArgs) -> Result<(), CliError> {
    let v = Admin::new(cfg)?.alerts().await?;
    if a.json {
        print_json(&v);
        return Ok(());
    }
    let zone = cfg.zone();
    let row = |x: &crate::api::types::Alert, state: &str| {
        vec![
            state.to_owned(),
            zone.format(x.since_ms),
            x.resolved_ms.map(|t| zone.format(t)).unwrap_or_default(),
            x.key.clone(),
            x.text_en.clone(),
        ]
    };
    let rows: Vec<Vec<String>> = v
        .open
        .iter()
        .map(|x| row(x, "open"))
        .chain(v.resolved.iter().map(|x| row(x, "resolved")))
        .collect();
    table(&["STATE", "SINCE", "RESOLVED", "ALERT", "WHAT"], &rows);
    Ok(())
}

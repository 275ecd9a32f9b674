//! `truc store stats`: entries per tree and bytes on disk, over the typed
//! admin client.
//!
//! Invariants: read-only.

use clap::Subcommand;

use crate::cli::admin::Admin;
use crate::cli::{print_json, table, CliError};
use crate::core::config::Config;

/// `truc store …`
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Entries per tree and bytes on disk.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `truc store …`.
pub async fn run(cfg: &Config, cmd: StoreCmd) -> Result<(), CliError> {
    match cmd {
        StoreCmd::Stats { json } => {
            let v = Admin::new(cfg)?.store_stats().await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            println!("path          {}", v.path);
            println!("bytes on disk {}", v.bytes_on_disk);
            println!(
                "retention     envelopes {}, audit {}",
                v.envelope_retention, v.audit_retention
            );
            let rows: Vec<Vec<String>> = v
                .trees
                .iter()
                .map(|t| vec![t.name.clone(), t.entries.to_string()])
                .collect();
            table(&["TREE", "ENTRIES"], &rows);
            Ok(())
        }
    }
}

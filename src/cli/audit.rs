//! `truc audit verify|tail`: the hash-chained audit log over the typed
//! admin client.
//!
//! Invariants: `verify` exits 1 naming the first broken entry (or the
//! checkpoint the store does not match); `verify --offline` reads the store
//! itself, never writes it, and never creates a master key; `tail --follow`
//! prints each entry once, in order, until interrupted.

use std::time::Duration;

use clap::Subcommand;

use crate::api::types::{AuditEntry, VerifyReport};
use crate::cli::admin::Admin;
use crate::cli::{opt, print_json, CliError};
use crate::core::config::Config;
use crate::core::secrets::MasterKey;
use crate::state::store::Store;

/// `truc audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain and the store against its checkpoint; exit 1
    /// and name the first problem if any.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Read the store directly instead of asking the hub (the hub must be
        /// stopped, e.g. after it refused to start): needs the data directory
        /// and the master key.
        #[arg(long)]
        offline: bool,
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

/// Prints a verification and turns a failure into exit 1.
fn report(v: VerifyReport, json: bool) -> Result<(), CliError> {
    if json {
        print_json(&v);
    } else if v.ok {
        println!(
            "audit chain verifies: {} entries ({} to {}){}{}",
            v.entries,
            opt(&v.first_seq),
            opt(&v.last_seq),
            v.anchor_seq
                .map(|a| format!(", anchored after swept entry {a}"))
                .unwrap_or_default(),
            v.checkpoint
                .as_ref()
                .map(|c| format!(
                    "; matches the checkpoint in {} (generation {}, entry {}, {})",
                    c.place, c.generation, c.audit_seq, c.at
                ))
                .unwrap_or_default()
        );
        for r in &v.restores {
            println!(
                "restored from a backup at entry {} ({}): file {}, backup of {}",
                r.seq, r.at, r.file, r.backup_created_at
            );
        }
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

/// The configured master key (`master_key`, `TRUC_MASTER_KEY` or
/// `<data_dir>/master.key`), never generated: for commands that read the
/// store themselves with the hub stopped.
pub(crate) fn offline_master_key(cfg: &Config) -> Result<MasterKey, CliError> {
    let key_text = match &cfg.master_key {
        Some(k) => k.clone(),
        None => std::fs::read_to_string(cfg.master_key_path())
            .map(|t| t.trim().to_owned())
            .map_err(|e| {
                CliError::new(
                    1,
                    format!(
                        "master key: {}: {e} (set TRUC_MASTER_KEY or master_key)",
                        cfg.master_key_path().display()
                    ),
                )
            })?,
    };
    MasterKey::parse(&key_text).map_err(|e| CliError::new(1, format!("master key: {e}")))
}

/// Opens the configured store for a command run with the hub stopped: the
/// shared PostgreSQL store when `store_url` is set, else the embedded one in
/// `data_dir` (created if missing).
pub(crate) fn open_offline(cfg: &Config) -> Result<Store, CliError> {
    match &cfg.store_url {
        Some(url) => Store::open_postgres(url, 2)
            .map_err(|e| CliError::new(1, format!("the PostgreSQL store: {e}"))),
        None => open_embedded(cfg),
    }
}

/// Opens the embedded store in `data_dir` of a stopped hub (created if missing).
pub(crate) fn open_embedded(cfg: &Config) -> Result<Store, CliError> {
    std::panic::catch_unwind(|| Store::open(&cfg.data_dir))
        .map_err(|_| CliError::new(1, "the store does not open: sled panicked"))?
        .map_err(|e| {
            CliError::new(
                1,
                format!(
                    "the store at {} does not open: {e} (is truc serve running on it? stop it first)",
                    cfg.store_dir().display()
                ),
            )
        })
}

/// The chain and checkpoint check on the store itself (the hub stopped).
/// A shared store has no checkpoint file: its chain is checked end to end,
/// its integrity otherwise is the database's.
fn verify_offline(cfg: &Config) -> Result<VerifyReport, CliError> {
    use crate::core::checkpoint::CheckpointKey;
    use crate::state::integrity::{verify_audit, AnchorFile};
    let master = offline_master_key(cfg)?;
    if cfg.store_url.is_none() && !cfg.store_dir().exists() {
        return Err(CliError::new(
            1,
            format!("no store at {}", cfg.store_dir().display()),
        ));
    }
    let store = open_offline(cfg)?;
    let audit = crate::state::audit::Audit::new(store.clone());
    let file = cfg
        .store_url
        .is_none()
        .then(|| AnchorFile::new(cfg.anchor_path(), CheckpointKey::from_master(&master)));
    verify_audit(&store, &audit, file.as_ref()).map_err(|e| CliError::new(1, e.to_string()))
}

/// Runs `truc audit …`.
pub async fn run(cfg: &Config, cmd: AuditCmd) -> Result<(), CliError> {
    if let AuditCmd::Verify {
        json,
        offline: true,
    } = cmd
    {
        return report(verify_offline(cfg)?, json);
    }
    let admin = Admin::new(cfg)?;
    match cmd {
        AuditCmd::Verify { json, .. } => report(admin.audit_verify().await?, json),
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

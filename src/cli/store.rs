//! `truc store stats|backup|restore`: entries per tree and bytes on disk,
//! and backups of the store.
//!
//! Invariants: `stats` is read-only; `backup` asks the running hub (the
//! admin API) and writes FILE whole or not at all (temporary file in the
//! same directory, mode 0600, `fsync`, rename, `fsync` of the directory);
//! `restore` runs with the hub stopped, opens the configured store itself,
//! never generates a master key, checks the file (MAC) before it opens the
//! store, and writes nothing into a store that holds data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;

use crate::broker::{BrokerTls, Link};
use crate::cli::admin::Admin;
use crate::cli::{print_json, table, CliError};
use crate::core::checkpoint::{Checkpoint, CheckpointKey};
use crate::core::config::Config;
use crate::core::topology::Topology;
use crate::state::backup::{restore, Backup, BackupKey, Header};
use crate::state::integrity::{describe, AnchorFile, Snapshot};
use crate::state::store::Store;

/// `truc store …`
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Entries per tree and bytes on disk.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Back up the running hub's store into FILE (sealed with a key derived
    /// from the master key; keep the master key apart from the backups).
    Backup {
        /// The file to write (replaced whole).
        file: PathBuf,
    },
    /// Restore FILE into the configured data directory's store, which must
    /// be empty, with the hub stopped and the broker reachable; then start
    /// the hub with `truc serve`.
    Restore {
        /// A file written by `truc store backup`.
        file: PathBuf,
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
        StoreCmd::Backup { file } => backup(cfg, &file).await,
        StoreCmd::Restore { file } => restore_file(cfg, &file).await,
    }
}

fn print_trees(header: &Header) {
    let rows: Vec<Vec<String>> = header
        .trees
        .iter()
        .map(|t| vec![t.name.clone(), t.entries.to_string()])
        .collect();
    table(&["TREE", "ENTRIES"], &rows);
}

async fn backup(cfg: &Config, file: &Path) -> Result<(), CliError> {
    let bytes = Admin::new(cfg)?.store_backup().await?;
    let (header, _) = Header::peek(&bytes)
        .map_err(|e| CliError::new(1, format!("the hub answered something else: {e}")))?;
    write_atomically(file, &bytes)
        .map_err(|e| CliError::new(1, format!("{}: {e}", file.display())))?;
    print_trees(&header);
    println!(
        "backup of {} written to {}: {} entries, {} bytes (generation {}, audit entry {})",
        header.created_at,
        file.display(),
        header.entries(),
        bytes.len(),
        header.generation.unwrap_or(0),
        header.audit_head.as_ref().map_or(0, |h| h.seq)
    );
    Ok(())
}

/// Writes `bytes` to `path` whole or not at all: a temporary file beside
/// it (mode 0600), `fsync`, rename, `fsync` of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("backup");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The broker's copy of the checkpoint (the hub's `anchor` queue), decoded;
/// `None` when the queue is empty.
async fn broker_copy(cfg: &Config, key: &CheckpointKey) -> Result<Option<Checkpoint>, CliError> {
    let topology = Topology::load(&cfg.queues_dir, &cfg.prefix)
        .map_err(|e| CliError::new(2, e.to_string()))?;
    let spec = crate::serve::integrity::anchor_queue(&topology);
    let unreachable = |e: String| {
        CliError::new(
            4,
            format!(
                "the broker's copy of the store checkpoint (queue {}) cannot be read: {e}. The restore must read it to supersede it: start the broker (with its definitions) first",
                spec.name
            ),
        )
    };
    let text = tokio::time::timeout(Duration::from_secs(20), async {
        let link = Link::connect_tls(
            &cfg.amqp_url,
            &format!("truc store restore {}", cfg.prefix),
            1,
            &BrokerTls::new(cfg.amqp_ca_file.clone()),
        )
        .await?;
        let res = async {
            link.declare_queue(&spec).await?;
            crate::serve::integrity::read_copy(&link, &spec.name).await
        }
        .await;
        link.close().await;
        res
    })
    .await
    .map_err(|_| unreachable("timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let Some(text) = text else {
        return Ok(None);
    };
    match Checkpoint::decode(&text, key) {
        Ok(cp) => Ok(Some(cp)),
        Err(e) => {
            eprintln!(
                "warning: the broker's copy in queue {} is not valid ({e}): the first start will refuse it; see docs/OPERATIONS.md, \"Store integrity\"",
                spec.name
            );
            Ok(None)
        }
    }
}

async fn restore_file(cfg: &Config, file: &Path) -> Result<(), CliError> {
    let bytes =
        std::fs::read(file).map_err(|e| CliError::new(1, format!("{}: {e}", file.display())))?;
    let master = crate::cli::audit::offline_master_key(cfg)?;
    let backup = Backup::decode(&bytes, &BackupKey::from_master(&master))
        .map_err(|e| CliError::new(1, format!("{}: {e}; nothing was restored", file.display())))?;
    cfg.prepare_data_dir()
        .map_err(|e| CliError::new(1, format!("{}: {e}", cfg.data_dir.display())))?;
    let store = std::panic::catch_unwind(|| Store::open(&cfg.data_dir))
        .map_err(|_| CliError::new(1, "the store does not open: sled panicked"))?
        .map_err(|e| {
            CliError::new(
                1,
                format!(
                    "the store at {} does not open: {e} (is truc serve running on it? stop it first)",
                    cfg.store_dir().display()
                ),
            )
        })?;
    let snap = Snapshot::of(&store).map_err(|e| CliError::new(1, e.to_string()))?;
    if snap.has_data {
        return Err(CliError::new(
            1,
            format!(
                "the store at {} is not empty ({}): a backup is only restored into an empty store; nothing was restored",
                cfg.store_dir().display(),
                snap.describe()
            ),
        ));
    }
    let ckey = CheckpointKey::from_master(&master);
    let anchor = AnchorFile::new(cfg.anchor_path(), ckey.clone());
    let mut copies = Vec::new();
    match anchor.read() {
        Ok(Some(cp)) => copies.push(cp),
        Ok(None) => {}
        Err(e) => eprintln!("warning: {e}; it is replaced"),
    }
    copies.extend(broker_copy(cfg, &ckey).await?);
    let source = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    let done = restore(
        &backup,
        &store,
        anchor,
        &copies,
        &source.display().to_string(),
    )
    .map_err(|e| {
        CliError::new(
            1,
            format!(
                "restore failed: {e}; the store at {} may hold part of the backup: move it aside before trying again",
                cfg.store_dir().display()
            ),
        )
    })?;
    drop(store);
    cfg.secure_data_dir()
        .map_err(|e| CliError::new(1, format!("{}: {e}", cfg.data_dir.display())))?;
    let header = backup.header(&BackupKey::from_master(&master));
    print_trees(&header);
    println!(
        "restored {} entries from {} (backup of {}) into {}",
        backup.entries(),
        file.display(),
        header.created_at,
        cfg.store_dir().display()
    );
    println!(
        "recorded as audit entry {} (store-restored); checkpoint: {}",
        done.audit_seq,
        describe(&done.checkpoint)
    );
    for cp in &copies {
        println!("superseded: {}", describe(cp));
    }
    println!("start the hub with `truc serve`");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_file_is_written_whole_private_and_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.truc-backup");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left, after a success or a failure.
        let missing = dir.path().join("no-such-dir").join("b");
        assert!(write_atomically(&missing, b"x").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["b.truc-backup"]);
    }
}

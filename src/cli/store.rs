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
use crate::cli::audit::{open_embedded, open_offline};
use crate::cli::{print_json, table, CliError};
use crate::core::checkpoint::{Checkpoint, CheckpointKey};
use crate::core::config::redact_store_url;
use crate::core::config::Config;
use crate::core::topology::Topology;
use crate::state::audit::{Audit, AuditEvent};
use crate::state::backup;
use crate::state::backup::{restore, restore_shared, Backup, BackupKey, Header};
use crate::state::integrity::{describe, AnchorFile, Snapshot};
use crate::state::registry::Registry;
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
    /// Copy this data directory's embedded store (the hub stopped) into an
    /// empty PostgreSQL database, check the copy (every table, the audit
    /// chain, every agency's keys), and record it in the audit log; then
    /// set `store_url` (or TRUC_STORE_URL) to it and start the hub.
    Migrate {
        /// The PostgreSQL connection string
        /// (`postgres://user:password@host/db`, or `host=… dbname=…`).
        #[arg(long)]
        to: String,
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
        StoreCmd::Migrate { to } => migrate(cfg, &to),
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

fn migrate(cfg: &Config, to: &str) -> Result<(), CliError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| CliError::new(1, format!("{what}: {e}"));
    if !crate::core::config::is_store_url(to) {
        return Err(CliError::new(
            2,
            format!(
                "--to {}: not a PostgreSQL connection string",
                redact_store_url(to)
            ),
        ));
    }
    let master = crate::cli::audit::offline_master_key(cfg)?;
    let from = open_embedded(cfg)?;
    // A damaged chain is not carried into the shared store unnoticed.
    let before = Audit::new(from.clone())
        .verify()
        .map_err(|e| fail("the audit log of the embedded store does not read", &e))?;
    if !before.ok {
        return Err(CliError::new(
            1,
            format!(
                "the audit chain of the embedded store does not verify ({:?}); run `truc audit verify --offline`; nothing was migrated",
                before.broken
            ),
        ));
    }
    let old = Registry::open(from.clone(), master.clone())
        .map_err(|e| fail("the embedded store's registry", &e))?;
    let to_store = Store::open_postgres(to, 4).map_err(|e| fail("the PostgreSQL store", &e))?;
    let copy = backup::collect(&from).map_err(|e| fail("reading the embedded store", &e))?;
    let loaded = backup::load(&copy, &to_store).map_err(|e| {
        CliError::new(
            1,
            format!(
                "{e}; the target database must be empty (a migration is done once; a partial one is emptied with DROP/CREATE DATABASE)"
            ),
        )
    })?;
    // The copy, checked table by table against what was read.
    for (name, table) in to_store.trees() {
        let want = copy
            .trees
            .iter()
            .find(|t| t.name == name)
            .map_or(0, |t| t.records.len());
        let got = table.len().map_err(|e| fail(name, &e))?;
        // `meta` gains the store's own keys (the flush marker).
        if got != want && !(name == "meta" && got > want) {
            return Err(CliError::new(
                1,
                format!("table {name}: {got} entries in PostgreSQL, {want} in the embedded store"),
            ));
        }
    }
    let audit = Audit::new(to_store.clone());
    let seq = audit
        .append(
            AuditEvent::admin(
                "store-migrate",
                redact_store_url(to),
                format!(
                    "from {} ({} entries)",
                    cfg.store_dir().display(),
                    copy.entries()
                ),
            )
            .by(&local_account()),
        )
        .map_err(|e| fail("recording the migration", &e))?;
    to_store.flush().map_err(|e| fail("PostgreSQL", &e))?;
    let after = audit.verify().map_err(|e| fail("audit verify", &e))?;
    if !after.ok {
        return Err(CliError::new(
            1,
            format!(
                "the migrated audit chain does not verify: {:?}",
                after.broken
            ),
        ));
    }
    // Every agency authenticates with its old keys.
    let new =
        Registry::open(to_store.clone(), master).map_err(|e| fail("the migrated registry", &e))?;
    let now = crate::core::time::now_ms();
    let mut keys = 0;
    for agency in old.list() {
        for key in &agency.keys {
            let same = new
                .by_key(&key.access_key, now)
                .is_some_and(|(e, k)| e.agency.code == agency.code && k.secret == key.secret);
            if !same && old.by_key(&key.access_key, now).is_some() {
                return Err(CliError::new(
                    1,
                    format!(
                        "agency {}: key {} does not authenticate on the migrated store",
                        agency.code, key.access_key
                    ),
                ));
            }
            keys += 1;
        }
    }
    let rows: Vec<Vec<String>> = loaded
        .trees
        .iter()
        .map(|(n, c)| vec![n.clone(), c.to_string()])
        .collect();
    table(&["TREE", "ENTRIES"], &rows);
    println!(
        "migrated {} entries from {} to {}; audit chain verified ({} entries, the migration is entry {seq}); {} agencies, {keys} keys checked",
        copy.entries(),
        cfg.store_dir().display(),
        redact_store_url(to),
        after.entries,
        old.len(),
    );
    println!(
        "next: set store_url (or TRUC_STORE_URL) to this database and start truc serve; keep {} until it runs",
        cfg.store_dir().display()
    );
    Ok(())
}

async fn restore_file(cfg: &Config, file: &Path) -> Result<(), CliError> {
    let bytes =
        std::fs::read(file).map_err(|e| CliError::new(1, format!("{}: {e}", file.display())))?;
    let master = crate::cli::audit::offline_master_key(cfg)?;
    let backup = Backup::decode(&bytes, &BackupKey::from_master(&master))
        .map_err(|e| CliError::new(1, format!("{}: {e}; nothing was restored", file.display())))?;
    let source = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    let source = source.display().to_string();
    let place = match &cfg.store_url {
        Some(url) => redact_store_url(url),
        None => {
            cfg.prepare_data_dir()
                .map_err(|e| CliError::new(1, format!("{}: {e}", cfg.data_dir.display())))?;
            cfg.store_dir().display().to_string()
        }
    };
    let store = open_offline(cfg)?;
    let snap = Snapshot::of(&store).map_err(|e| CliError::new(1, e.to_string()))?;
    if snap.has_data {
        return Err(CliError::new(
            1,
            format!(
                "the store at {place} is not empty ({}): a backup is only restored into an empty store; nothing was restored",
                snap.describe()
            ),
        ));
    }
    let partial = |e: crate::state::backup::BackupError| {
        CliError::new(
            1,
            format!(
                "restore failed: {e}; the store at {place} may hold part of the backup: empty it before trying again"
            ),
        )
    };
    let mut copies = Vec::new();
    let done = if store.is_shared() {
        // Instances of a shared store stay stopped: its integrity is the
        // database's, there is no checkpoint to supersede.
        restore_shared(&backup, &store, &source, &local_account()).map_err(partial)?
    } else {
        let ckey = CheckpointKey::from_master(&master);
        let anchor = AnchorFile::new(cfg.anchor_path(), ckey.clone());
        match anchor.read() {
            Ok(Some(cp)) => copies.push(cp),
            Ok(None) => {}
            Err(e) => eprintln!("warning: {e}; it is replaced"),
        }
        copies.extend(broker_copy(cfg, &ckey).await?);
        let done = restore(&backup, &store, anchor, &copies, &source, &local_account())
            .map_err(partial)?;
        drop(store);
        cfg.secure_data_dir()
            .map_err(|e| CliError::new(1, format!("{}: {e}", cfg.data_dir.display())))?;
        done
    };
    let header = backup.header(&BackupKey::from_master(&master));
    print_trees(&header);
    println!(
        "restored {} entries from {} (backup of {}) into {place}",
        backup.entries(),
        file.display(),
        header.created_at,
    );
    match &done.checkpoint {
        Some(cp) => println!(
            "recorded as audit entry {} (store-restored); checkpoint: {}",
            done.audit_seq,
            describe(cp)
        ),
        None => println!(
            "recorded as audit entry {} (store-restored)",
            done.audit_seq
        ),
    }
    for cp in &copies {
        println!("superseded: {}", describe(cp));
    }
    println!("start the hub with `truc serve`");
    Ok(())
}

/// The name a command run on the hub's own machine acts under in the audit
/// log: `@local:` and the operating-system user.
fn local_account() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("@local:{user}")
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

//! The store's integrity at start and its anchor outside the store: opening
//! the store (a store sled cannot open is a finding, never a panic), checking
//! it against the checkpoint file before anything runs and against the
//! broker's copy on the first connection (before any consumer starts), and
//! keeping the broker's copy current (every few seconds and at shutdown).
//!
//! Invariants: a finding refuses the start unless the operator passed
//! `--accept-loss`, in which case each finding is one `store-loss-accepted`
//! audit entry (what was expected, what was found) and the store is anchored
//! as it is; a refused start writes no checkpoint (the anchor stays as it was
//! found); the broker's copy is never written before it was read and checked.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::{AmqpError, BrokerTls, Link};
use crate::core::checkpoint::{Checkpoint, CheckpointKey};
use crate::core::config::Config;
use crate::core::message::Message;
use crate::core::secrets::MasterKey;
use crate::core::topology::{ArgValue, QueueSpec, Topology};
use crate::state::audit::Audit;
use crate::state::integrity::{
    check, describe, record_loss, AnchorFile, Anchoring, IntegrityError, Snapshot,
};
use crate::state::store::{Store, StoreError};

/// How often the broker's copy is brought up to date.
pub const BROKER_COPY_EVERY: Duration = Duration::from_secs(2);

/// What the start-up check leaves for the first broker connection.
pub struct StartCheck {
    accept_loss: bool,
    snap: Snapshot,
    /// Epoch of the file's checkpoint at start (0: none or invalid).
    file_epoch: u64,
    /// The store says it was anchored but the file was missing.
    file_missing: bool,
    /// Losses were accepted at start (the file's copy was judged).
    accepted: bool,
    anchor_file: PathBuf,
    key: CheckpointKey,
    /// Set once the broker's copy was read and checked.
    pub checked: Arc<AtomicBool>,
}

/// The anchored store and what the broker check needs.
pub struct Opened {
    /// The store, anchored.
    pub store: Store,
    /// For [`check_broker_copy`].
    pub check: StartCheck,
    /// The newest checkpoint written (for [`keep_broker_copy`]).
    pub latest: watch::Receiver<Option<Checkpoint>>,
}

fn damaged(e: &StoreError) -> bool {
    match e {
        StoreError::Sled(sled::Error::Io(io)) => {
            !(io.kind() == std::io::ErrorKind::WouldBlock
                || io.kind() == std::io::ErrorKind::PermissionDenied
                || io.to_string().contains("could not acquire lock"))
        }
        StoreError::Sled(_) | StoreError::Codec(_) => true,
        StoreError::Pg(_) => false,
        StoreError::Closed | StoreError::Reopened | StoreError::Anchor { .. } => false,
    }
}

/// Opens the store under `data_dir`; damage (an error sled reports for a
/// damaged file, or a panic inside sled) is [`IntegrityError::Unopenable`].
fn open(data_dir: &Path, db: &Path) -> Result<Store, IntegrityError> {
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Store::open(data_dir).and_then(|s| {
            // Reading every tree end to end finds what sled only reports when
            // it reaches a damaged page.
            for (_, t) in s.trees() {
                for item in t.iter() {
                    item?;
                }
            }
            Ok(s)
        })
    }));
    match opened {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) if damaged(&e) => Err(IntegrityError::Unopenable {
            path: db.to_owned(),
            detail: e.to_string(),
        }),
        Ok(Err(e)) => Err(e.into()),
        Err(panic) => Err(IntegrityError::Unopenable {
            path: db.to_owned(),
            detail: format!(
                "sled panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            ),
        }),
    }
}

/// Opens the store, checks it against the checkpoint file, records the
/// losses an operator accepted, and anchors it (writing a checkpoint now).
pub fn open_store(config: &Config, master: &MasterKey) -> Result<Opened, IntegrityError> {
    let key = CheckpointKey::from_master(master);
    if let Some(url) = &config.store_url {
        return open_shared(url, config, key);
    }
    let file = AnchorFile::new(config.anchor_path(), key.clone());
    let db = config.store_dir();
    let accept = config.accept_loss;
    let mut losses: Vec<(IntegrityError, String, String)> = Vec::new();
    // The file's copy is read first: its expectations go into a loss record.
    let file_cp = file.read();
    let store = match open(&config.data_dir, &db) {
        Ok(s) => s,
        Err(e @ IntegrityError::Unopenable { .. }) if accept => {
            let aside = config
                .data_dir
                .join(format!("db.damaged-{}", crate::core::time::now_ms()));
            std::fs::rename(&db, &aside).map_err(|source| IntegrityError::Unreadable {
                path: db.clone(),
                source,
            })?;
            tracing::warn!(moved_to = %aside.display(), error = %e, "--accept-loss: the damaged store was moved aside; starting with an empty store");
            let expected = match &file_cp {
                Ok(Some(cp)) => describe(cp),
                _ => "a store that opens".into(),
            };
            losses.push((
                e,
                expected,
                format!("the store did not open; moved to {}", aside.display()),
            ));
            Store::open(&config.data_dir)?
        }
        Err(e) => return Err(e),
    };
    let snap = Snapshot::of(&store)?;
    let mut file_serial = 0;
    let mut file_epoch = 0;
    let mut file_missing = false;
    match file_cp {
        Err(e @ IntegrityError::Checkpoint { .. }) if accept => {
            losses.push((
                e,
                "a checkpoint sealed with this master key".into(),
                snap.describe(),
            ));
        }
        Err(e) => return Err(e),
        Ok(Some(cp)) => {
            file_serial = cp.serial;
            file_epoch = cp.epoch;
            if losses.is_empty() {
                let place = format!("file {}", file.path.display());
                match check(&store, &snap, &cp, &place) {
                    Ok(()) => {}
                    Err(e) if accept => losses.push((e, describe(&cp), snap.describe())),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(None) if snap.anchored => {
            tracing::warn!(file = %file.path.display(), "the checkpoint file is missing; the broker's copy decides at the first connection");
            file_missing = true;
        }
        Ok(None) if snap.has_data => tracing::info!(
            file = %file.path.display(),
            "the store has no anchor yet (first start of this version on it): anchoring it now"
        ),
        Ok(None) => tracing::info!(file = %file.path.display(), "new store: anchoring it"),
    }
    let accepted = !losses.is_empty();
    if accepted {
        let audit = Audit::new(store.clone());
        for (e, expected, found) in losses {
            let seq = record_loss(&audit, &e, expected, found)?;
            tracing::warn!(error = %e, audit_seq = seq, "--accept-loss: starting despite this; recorded in the audit log");
        }
    }
    let (tx, latest) = watch::channel(None);
    // An accepted loss starts a new epoch: copies of the old one are given up.
    let epoch = file_epoch + u64::from(accepted);
    store.anchor(Anchoring::new(file.clone(), file_serial, epoch, tx));
    store.flush()?;
    Ok(Opened {
        store,
        check: StartCheck {
            accept_loss: accept,
            snap,
            file_epoch,
            file_missing,
            accepted,
            anchor_file: file.path,
            key,
            checked: Arc::new(AtomicBool::new(false)),
        },
        latest,
    })
}

/// Opens the shared PostgreSQL store. Its integrity is the database's (WAL,
/// page checksums, its own backups and standbys): the checkpoint file and the
/// broker's copy belong to the embedded store, and several instances share
/// this one, so none is written or checked (`checked` is set at once).
fn open_shared(url: &str, config: &Config, key: CheckpointKey) -> Result<Opened, IntegrityError> {
    let store = Store::open_postgres(url, config.store_connections)?;
    let snap = Snapshot::of(&store)?;
    let (_tx, latest) = watch::channel(None);
    Ok(Opened {
        store,
        check: StartCheck {
            accept_loss: config.accept_loss,
            snap,
            file_epoch: 0,
            file_missing: false,
            accepted: false,
            anchor_file: config.anchor_path(),
            key,
            checked: Arc::new(AtomicBool::new(true)),
        },
        latest,
    })
}

/// The queue holding the broker's copy: the topology's `anchor` queue, or
/// the built-in one when an operator's topology file lacks it.
pub fn anchor_queue(topology: &Topology) -> QueueSpec {
    let name = topology.name("anchor");
    topology
        .queues
        .iter()
        .find(|q| q.name == name)
        .cloned()
        .unwrap_or_else(|| QueueSpec {
            name,
            bind: Vec::new(),
            arguments: [
                ("x-max-length".to_owned(), ArgValue::Int(1)),
                ("x-overflow".to_owned(), ArgValue::Str("drop-head".into())),
            ]
            .into_iter()
            .collect(),
        })
}

/// Why the broker's copy could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum BrokerCheckError {
    /// The broker failed: try again on the next connection.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// The store does not match the broker's copy: refuse.
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
}

/// Reads the broker's copy (leaving it in its queue).
pub async fn read_copy(link: &Link, queue: &str) -> Result<Option<String>, AmqpError> {
    let browser = link.browse(queue).await?;
    let got = browser.get().await;
    let text = match got {
        Ok(Some(g)) => {
            let text = String::from_utf8_lossy(&g.inbound.message.body).into_owned();
            let _ = browser.reject(g.inbound.delivery_tag, true).await;
            Some(text)
        }
        Ok(None) => None,
        Err(e) => {
            browser.close().await;
            return Err(e);
        }
    };
    browser.close().await;
    Ok(text)
}

/// On the first connection, before any consumer starts: checks the store as
/// found at start against the broker's copy, unless that copy belongs to an
/// epoch given up (older than the file's, or the file's own epoch when this
/// start accepted a loss). With `--accept-loss` a finding is recorded in
/// `audit` instead.
pub async fn check_broker_copy(
    link: &Link,
    topology: &Topology,
    store: &Store,
    audit: &Audit,
    check_state: &StartCheck,
) -> Result<(), BrokerCheckError> {
    let spec = anchor_queue(topology);
    link.declare_queue(&spec).await?;
    let place = format!("broker queue {}", spec.name);
    let found = match read_copy(link, &spec.name).await? {
        None => None,
        Some(text) => match Checkpoint::decode(&text, &check_state.key) {
            Ok(cp) => Some(Ok(cp)),
            Err(source) => Some(Err(IntegrityError::Checkpoint {
                place: place.clone(),
                source,
            })),
        },
    };
    let found_cp: Option<Checkpoint> = found.as_ref().and_then(|r| r.as_ref().ok().copied());
    let finding = match found {
        Some(Err(e)) => Some((
            e,
            "a checkpoint sealed with this master key".to_owned(),
            check_state.snap.describe(),
        )),
        Some(Ok(cp)) => {
            store.raise_serial(cp.serial);
            let given_up = cp.epoch < check_state.file_epoch
                || (check_state.accepted && cp.epoch == check_state.file_epoch);
            if check_state.accepted {
                store.raise_epoch(cp.epoch + 1);
            }
            match given_up {
                true => None,
                false => check(store, &check_state.snap, &cp, &place)
                    .err()
                    .map(|e| (e, describe(&cp), check_state.snap.describe())),
            }
        }
        None if check_state.file_missing => Some((
            IntegrityError::AnchorMissing {
                file: check_state.anchor_file.clone(),
                queue: spec.name.clone(),
            },
            "a checkpoint in the file or the broker".to_owned(),
            check_state.snap.describe(),
        )),
        None => None,
    };
    if let Some((e, expected, found)) = finding {
        if !check_state.accept_loss {
            store.disarm_anchor();
            return Err(e.into());
        }
        let seq = record_loss(audit, &e, expected, found)?;
        tracing::warn!(error = %e, audit_seq = seq, "--accept-loss: starting despite this; recorded in the audit log");
        if let Some(cp) = found_cp {
            store.raise_epoch(cp.epoch + 1);
        }
        store.flush().map_err(IntegrityError::from)?;
    }
    check_state.checked.store(true, Ordering::SeqCst);
    Ok(())
}

/// Publishes `cp` as the broker's copy.
async fn publish(
    link: &Link,
    queue: &str,
    cp: &Checkpoint,
    key: &CheckpointKey,
) -> Result<(), AmqpError> {
    let msg = Message {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        content_type: Some("text/plain".into()),
        timestamp: Some((cp.at_ms / 1000).max(0) as u64),
        body: cp.encode(key).into_bytes().into(),
        ..Message::default()
    };
    link.publish(&msg).await
}

/// Keeps the broker's copy current: every [`BROKER_COPY_EVERY`] the newest
/// checkpoint, if it changed, goes to the anchor queue over the hub's link,
/// while this instance leads (one writer of the copy).
pub async fn keep_broker_copy(
    hub: Arc<crate::operator::Hub>,
    mut latest: watch::Receiver<Option<Checkpoint>>,
    queue: String,
    check_state: (Arc<AtomicBool>, CheckpointKey),
    shutdown: CancellationToken,
) {
    let (checked, key) = check_state;
    let mut tick = tokio::time::interval(BROKER_COPY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(cp) = *latest.borrow_and_update() else {
            continue;
        };
        // One writer of the broker's copy: the leader (serve::leader).
        if cp.serial == published || !checked.load(Ordering::SeqCst) || !hub.leads() {
            continue;
        }
        let Some(l) = hub.link.borrow().clone() else {
            continue;
        };
        match publish(&l, &queue, &cp, &key).await {
            Ok(()) => published = cp.serial,
            Err(e) => {
                tracing::warn!(error = %e, "broker copy of the store checkpoint not updated; will retry")
            }
        }
    }
}

/// At shutdown, after the last flush: the newest checkpoint to the broker
/// over a link of its own (bounded in time), if the broker's copy was
/// checked in this run.
pub async fn final_broker_copy(
    config: &Config,
    queue: &str,
    latest: &watch::Receiver<Option<Checkpoint>>,
    check_state: &StartCheck,
) {
    if !check_state.checked.load(Ordering::SeqCst) {
        return;
    }
    let Some(cp) = *latest.borrow() else {
        return;
    };
    let done = tokio::time::timeout(Duration::from_secs(5), async {
        let link = Link::connect_tls(
            &config.amqp_url,
            &format!("truc anchor {}", config.prefix),
            1,
            &BrokerTls::new(config.amqp_ca_file.clone()),
        )
        .await?;
        let r = publish(&link, queue, &cp, &check_state.key).await;
        link.close().await;
        r
    })
    .await;
    match done {
        Ok(Ok(())) => tracing::info!(
            serial = cp.serial,
            "broker copy of the store checkpoint updated"
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "broker copy of the store checkpoint not updated at shutdown")
        }
        Err(_) => {
            tracing::warn!("broker copy of the store checkpoint not updated at shutdown (timeout)")
        }
    }
}

impl StartCheck {
    /// The key checkpoints are sealed with.
    pub fn key(&self) -> &CheckpointKey {
        &self.key
    }
}

//! Backing up the running hub's store (`GET /v1/store/backup`): a snapshot
//! of every tree ([`crate::state::backup`]) sealed with a key derived from
//! the master key, so a hub whose store another process cannot open (sled
//! locks it) is backed up while it runs.
//!
//! Invariants: every backup taken is one `store-backup` admin audit entry
//! (entries, bytes, generation); the bytes are never written here (the
//! caller decides where), and hold no message content and no secret in the
//! clear (agency secrets stay sealed with the master key).

use crate::operator::Hub;
use crate::state::audit::AuditEvent;
use crate::state::backup::{collect, BackupError, BackupKey};

/// The sealed snapshot of `hub`'s store, recorded in the audit log.
/// Blocking (reads every tree): run it off the async runtime.
pub fn backup(hub: &Hub, by: &str) -> Result<Vec<u8>, BackupError> {
    let snapshot = collect(&hub.store)?;
    let key = BackupKey::from_master(hub.registry.master_key());
    let bytes = snapshot.encode(&key);
    hub.router.audit().record(
        AuditEvent::admin(
            "store-backup",
            "store",
            format!(
                "{} entries in {} trees, {} bytes, generation {}, audit head {}",
                snapshot.entries(),
                snapshot.trees.len(),
                bytes.len(),
                snapshot.generation().unwrap_or(0),
                snapshot.audit_head().map_or(0, |h| h.0)
            ),
        )
        .by(by),
    );
    Ok(bytes)
}

//! The audit log and the store as an operator sees them: the last entries,
//! the chain check, and the store statistics. Read-only.
//!
//! Invariants: a tail returns at most 10,000 entries, oldest first; the
//! chain check reads every entry still kept and checks the newest against
//! the checkpoint outside the store.

use crate::operator::Hub;
use crate::state::audit::{AuditError, EntryView, VerifyReport};
use crate::state::retention::{stats, StoreStats};

/// The most entries one tail returns.
pub const MAX_TAIL: usize = 10_000;

/// The last `n` entries (clamped to 1..=[`MAX_TAIL`]), or those after `after`.
pub fn tail(hub: &Hub, n: usize, after: Option<u64>) -> Result<Vec<EntryView>, AuditError> {
    hub.router.audit().tail(n.clamp(1, MAX_TAIL), after)
}

/// Checks the hash chain, then the store against its checkpoint file
/// (rolled back or rewritten since the checkpoint).
pub fn verify(hub: &Hub) -> Result<VerifyReport, AuditError> {
    crate::state::integrity::verify_audit(
        &hub.store,
        hub.router.audit(),
        hub.store.anchor_file().as_ref(),
    )
}

/// Entries per tree, bytes on disk and the configured retentions.
pub fn store_stats(hub: &Hub) -> StoreStats {
    stats(
        &hub.store,
        &hub.config.envelope_retention,
        &hub.config.audit_retention,
    )
}

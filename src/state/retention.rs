//! Retention: envelope metadata older than `envelope_retention` and audit
//! entries older than `audit_retention` are removed in small batches by the
//! housekeeping task; and the store statistics of `truc store stats`.
//!
//! Invariants: a sweep removes at most [`BATCH`] records per step and yields
//! between steps, so the router is never stalled; an envelope record and its
//! `by_dest` index entries go together; audit sweeps go through
//! [`crate::state::audit::Audit::sweep`], which keeps the chain verifiable.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::audit::{Audit, AuditError};
use crate::state::codec;
use crate::state::store::Table;
use crate::state::store::{Store, StoreError};
use crate::state::tracking::EnvelopeRecord;

/// Records removed per step.
pub const BATCH: usize = 256;
/// Steps per sweep (per housekeeping tick).
pub const MAX_STEPS: usize = 64;

/// Retention errors.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl RetentionError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Audit(e) => e.is_retryable(),
        }
    }
}

impl From<sled::Error> for RetentionError {
    fn from(e: sled::Error) -> Self {
        Self::Store(e.into())
    }
}

/// Removes up to `batch` envelope records accepted before `cutoff_ms`, with
/// their index entries; returns how many.
pub fn sweep_envelopes_step(
    store: &Store,
    cutoff_ms: i64,
    batch: usize,
) -> Result<usize, RetentionError> {
    let mut doomed = Vec::new();
    for item in store.envelopes().iter() {
        let (k, v) = item?;
        let rec: EnvelopeRecord = match codec::decode(&v) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable envelope record skipped by the sweep");
                continue;
            }
        };
        if rec.accepted_at_ms < cutoff_ms {
            doomed.push((k, rec));
            if doomed.len() >= batch {
                break;
            }
        }
    }
    for (k, rec) in &doomed {
        for d in &rec.dests {
            store
                .by_dest()
                .remove(crate::state::tracking::dest_index_key(
                    &d.code,
                    &rec.message_id,
                    &rec.from,
                ))?;
        }
        store.envelopes().remove(k)?;
        // A routing mark left by an envelope that never came back.
        store.routing().remove(k)?;
    }
    Ok(doomed.len())
}

/// One sweep of both: envelopes then audit entries, in batches, yielding
/// between them. Returns `(envelopes, audit entries)` removed.
pub async fn sweep(
    store: &Store,
    audit: &Audit,
    now_ms: i64,
    envelope_retention: Duration,
    audit_retention: Duration,
) -> Result<(usize, usize), RetentionError> {
    let env_cut = now_ms - envelope_retention.as_millis() as i64;
    let audit_cut = now_ms - audit_retention.as_millis() as i64;
    let (mut envs, mut entries) = (0, 0);
    // Each step scans sled synchronously: off the async workers.
    for _ in 0..MAX_STEPS {
        let st = store.clone();
        let n = tokio::task::spawn_blocking(move || sweep_envelopes_step(&st, env_cut, BATCH))
            .await
            .map_err(|e| StoreError::Sled(sled::Error::ReportableBug(e.to_string())))??;
        envs += n;
        if n < BATCH {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..MAX_STEPS {
        let au = audit.clone();
        let n = tokio::task::spawn_blocking(move || au.sweep(audit_cut, BATCH))
            .await
            .map_err(|e| StoreError::Sled(sled::Error::ReportableBug(e.to_string())))??;
        entries += n;
        if n < BATCH {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if envs > 0 {
        crate::core::metrics::swept("envelopes", envs);
    }
    if entries > 0 {
        crate::core::metrics::swept("audit", entries);
    }
    Ok((envs, entries))
}

/// One tree's size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeStats {
    /// Tree name.
    pub name: String,
    /// Entries.
    pub entries: usize,
    /// Bytes of keys and values (logical, without sled's own overhead).
    pub bytes: u64,
}

fn tree_stats(name: &str, t: &Table) -> TreeStats {
    let (mut entries, mut bytes) = (0, 0);
    for (k, v) in t.iter().flatten() {
        entries += 1;
        bytes += (k.len() + v.len()) as u64;
    }
    TreeStats {
        name: name.to_owned(),
        entries,
        bytes,
    }
}

/// `truc store stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreStats {
    /// Database path.
    pub path: String,
    /// Bytes on disk.
    pub bytes_on_disk: u64,
    /// Per tree.
    pub trees: Vec<TreeStats>,
    /// Configured envelope retention.
    pub envelope_retention: String,
    /// Configured audit retention.
    pub audit_retention: String,
}

/// Sizes of `store`.
pub fn stats(store: &Store, envelope_retention: &str, audit_retention: &str) -> StoreStats {
    StoreStats {
        path: store.path().display().to_string(),
        bytes_on_disk: store.size_on_disk(),
        trees: store
            .trees()
            .into_iter()
            .map(|(name, t)| tree_stats(name, &t))
            .collect(),
        envelope_retention: envelope_retention.to_owned(),
        audit_retention: audit_retention.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::code::AgencyCode;
    use crate::core::timeline::DeliveryState;
    use crate::state::tracking::{DestTrack, Tracking};

    #[tokio::test]
    async fn old_envelopes_and_audit_entries_are_swept_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tracking = Tracking::new(store.clone());
        let from = AgencyCode::parse("S").unwrap();
        let dest = AgencyCode::parse("D").unwrap();
        for i in 0..600i64 {
            let rec = EnvelopeRecord::for_test(
                if i < 550 { 1_000 } else { 10_000_000 },
                &format!("m{i:04}"),
                vec![DestTrack::new(
                    dest.clone(),
                    1_000,
                    DeliveryState::Queued,
                    None,
                    "",
                )],
            );
            tracking
                .index(&from, &rec.message_id, std::slice::from_ref(&dest))
                .unwrap();
            tracking.put(&rec).unwrap();
        }
        let audit = Audit::new(store.clone());
        for i in 0..10 {
            audit
                .append_at(
                    crate::state::audit::AuditEvent::admin("t", "x", ""),
                    1_000 + i,
                )
                .unwrap();
        }
        audit
            .append_at(
                crate::state::audit::AuditEvent::admin("t", "x", ""),
                10_000_000,
            )
            .unwrap();
        assert_eq!(sweep_envelopes_step(&store, 5_000, 100).unwrap(), 100);
        let (e, a) = sweep(
            &store,
            &audit,
            10_000_000,
            Duration::from_millis(5_000_000),
            Duration::from_millis(5_000_000),
        )
        .await
        .unwrap();
        assert_eq!((e, a), (450, 10));
        assert_eq!(store.envelopes().len().unwrap(), 50);
        assert_eq!(store.by_dest().len().unwrap(), 50);
        assert!(tracking.sources_of(&dest, "m0001").unwrap().is_empty());
        assert_eq!(tracking.sources_of(&dest, "m0599").unwrap(), vec![from]);
        assert!(audit.verify().unwrap().ok);
        let s = stats(&store, "180d", "60d");
        assert_eq!(
            s.trees.iter().find(|t| t.name == "audit").unwrap().entries,
            1
        );
        let by_dest = s.trees.iter().find(|t| t.name == "by_dest").unwrap();
        assert_eq!(by_dest.entries, 50);
        // dest "D" \0 "m0550".."m0599" \0 from "S", empty values.
        assert_eq!(by_dest.bytes, 50 * 9);
        for name in ["deadlines", "pending", "presence", "presence_log"] {
            assert!(s.trees.iter().any(|t| t.name == name), "{name} reported");
        }
    }
}

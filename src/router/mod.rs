//! Layer 4 — **router**: what truc does with each message it consumes, in
//! named steps, one file each:
//!
//! 1. [`ingress`] — an ingress message: decode → authenticate → authorise →
//!    check digest → dedupe → route → publish (confirmed) → record (durable)
//!    → ack; heartbeats go to the presence task;
//! 2. [`status`] — a status from a destination: record it in the timeline
//!    and relay it to the source (a recall, `13`, goes to [`holding`]);
//! 3. [`delivery`] — the one signed-delivery builder, used for every copy
//!    put into an inbox;
//! 4. [`notify`] — notices to sources (publishing with queue declaration)
//!    and the presence notices (`delay-warning`, `bounced`);
//! 5. [`holding`] — deliveries the hub holds or takes back: deferral,
//!    retries, deadlines, recall;
//! 6. [`rebuild`] — the record of a held copy whose record the store lost,
//!    rebuilt from the copy.
//!
//! Beside them: [`session`] (a gateway session request, checked like an
//! ingress message and answered at once), [`space`] (the upload space an
//! envelope's content is in, checked and bound; released once delivered), [`order`] (a message waits for
//! the one it depends on) and [`progress`] (whether a source's messages are
//! being handled, for `/healthz`).
//!
//! This file keeps the [`Router`] (the state every step reads), its errors
//! and outcomes, and the per-envelope locks.
//!
//! Invariants:
//! - an ingress message is acknowledged only after every publish it caused
//!   was confirmed by the broker and its record is on disk;
//! - the envelope record is written *after* its deliveries are confirmed, so a
//!   crash in between makes the broker redeliver it and truc publish again,
//!   marked `lgsp-attempt: 2` (a possible repeat the client library drops);
//!   every copy that may repeat carries `lgsp-attempt` > 1 (docs/PROTOCOL.md
//!   §6.2; a publish the broker returned as unroutable reached no queue and
//!   is published again unchanged, [`notify`]);
//! - a sender that cannot be authenticated gets no notice: its message goes
//!   to the bounded `rejected` queue, and is counted and sampled in the audit
//!   log once per (minute, reason), never one entry per message;
//! - the router never holds a body anywhere but in the message being handled;
//! - copies of one envelope are handled one at a time ([`KeyLocks`]).
//!
//! May use: [`crate::core`], [`crate::state`], [`crate::broker`]. The broker
//! is reached through the [`Outbox`] trait, so the whole pipeline runs in unit
//! tests without one.

mod delivery;
mod holding;
mod ingress;
mod notify;
pub(crate) mod order;
pub(crate) mod progress;
mod rebuild;
mod session;
mod space;
mod status;
#[cfg(test)]
mod tests;

use std::sync::{Arc, RwLock};

use crate::core::code::AgencyCode;
use crate::core::policy::Policies;
use crate::core::reason::Reason;
use crate::core::topology::Topology;
use crate::state::audit::{Audit, QuarantineTally};
use crate::state::drained::Drained;
use crate::state::registry::Registry;
use crate::state::replay::Nonces;
use crate::state::store::{Store, StoreError};
use crate::state::tracking::Tracking;

pub use crate::broker::{Outbox, PublishError};
pub use notify::{OfflineFacts, OfflineNotice};
pub use session::{SessionGrant, SessionRefused};

/// Router errors: the ingress message is not acked and will come again.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A publish failed.
    #[error("publish failed: {0}")]
    Publish(#[from] PublishError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The message refers to an envelope still being accepted; try later.
    #[error("{0}")]
    Pending(String),
}

impl RouterError {
    /// Whether handling the same message again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Publish(PublishError::Failed(_)) => true,
            Self::Publish(PublishError::Unroutable) => true,
            Self::Publish(PublishError::Unavailable(_)) => true,
            Self::Store(e) => e.is_retryable(),
            Self::Pending(_) => true,
        }
    }
}

impl RouterError {
    /// Whether the store failed: the message should wait for the store to
    /// write again (held, not requeued at once, so its queue's delivery
    /// limit is not spent on an outage).
    pub fn is_store(&self) -> bool {
        match self {
            Self::Store(_) => true,
            Self::Publish(_) | Self::Pending(_) => false,
        }
    }
}

/// What happened to one ingress message (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; delivered to these destinations.
    Accepted {
        /// Destinations published to.
        delivered: Vec<AgencyCode>,
        /// Destinations bounced at once, with the reason.
        bounced: Vec<(AgencyCode, Reason)>,
    },
    /// A repeat of an accepted envelope; `accepted` was sent again.
    Duplicate,
    /// Refused with a notice to the sender.
    Rejected(Reason),
    /// Refused without a notice (unauthenticated), kept in the rejected queue.
    Quarantined(Reason),
    /// A status message was recorded and relayed.
    StatusRelayed,
    /// A heartbeat was taken.
    Heartbeat,
    /// A delivery was put (back) in a delay bucket.
    Held,
    /// A held delivery went out to its destination.
    Released,
    /// A copy was dropped (why).
    Dropped(&'static str),
}

/// A valid heartbeat, handed to the presence task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The agency that signed it.
    pub code: AgencyCode,
    /// `lgsp-state: online`.
    pub online: bool,
    /// Hub time of arrival (ms).
    pub at_ms: i64,
}

/// The pipeline and the state it reads.
pub struct Router {
    heartbeats: std::sync::OnceLock<tokio::sync::mpsc::Sender<Heartbeat>>,
    /// The upload spaces (none in a router built without them: an envelope
    /// naming a space is refused).
    spaces: std::sync::OnceLock<crate::state::spaces::Spaces>,
    pub(crate) locks: KeyLocks,
    limiter: std::sync::Mutex<crate::core::scheduler::RateLimiter>,
    pub(crate) registry: Registry,
    pub(crate) tracking: Tracking,
    nonces: Nonces,
    pub(crate) store: Store,
    pub(crate) topology: Arc<Topology>,
    policies: RwLock<Arc<Policies>>,
    audit: Audit,
    quarantined: QuarantineTally,
    drained: Drained,
    progress: progress::Progress,
}

/// Striped async locks by `(from, message_id)`.
pub(crate) struct KeyLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl KeyLocks {
    const STRIPES: usize = 4096;

    fn new() -> Self {
        Self {
            stripes: (0..Self::STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    pub(crate) async fn lock(
        &self,
        from: &str,
        message_id: &str,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (from, message_id).hash(&mut h);
        self.stripes[(h.finish() as usize) % Self::STRIPES]
            .lock()
            .await
    }
}

impl Router {
    /// A router over `store`, `registry` and `topology` with `policies`.
    pub fn new(
        store: Store,
        registry: Registry,
        topology: Arc<Topology>,
        policies: Policies,
    ) -> Self {
        let audit = Audit::new(store.clone());
        let drained = Drained::open(store.clone()).unwrap_or_else(|e| {
            // Unknown drained times: the plain clock-skew rule applies until
            // each queue is seen empty again (crate::core::skew).
            tracing::warn!(error = %e, "drained times not read; judging clock skew from now until each queue is seen empty");
            Drained::empty(store.clone())
        });
        let mut limiter = crate::core::scheduler::RateLimiter::new();
        for (code, at) in drained.all() {
            limiter.drained(&code, at);
        }
        Self {
            heartbeats: std::sync::OnceLock::new(),
            spaces: std::sync::OnceLock::new(),
            locks: KeyLocks::new(),
            limiter: std::sync::Mutex::new(limiter),
            tracking: Tracking::new(store.clone()),
            nonces: Nonces::new(store.clone()),
            registry,
            store,
            topology,
            policies: RwLock::new(Arc::new(policies)),
            quarantined: QuarantineTally::new(audit.clone()),
            audit,
            drained,
            progress: progress::Progress::new(),
        }
    }

    /// Records that `source`'s ingress queue was seen empty at `at_ms`: its
    /// later envelopes are rate-limited from then on, whatever their
    /// `lgsp-time` (see [`crate::core::scheduler::measured_at`]).
    /// Also the floor of the clock-skew check ([`crate::core::skew`]),
    /// persisted so that it survives a restart.
    pub fn source_drained(&self, source: &AgencyCode, at_ms: i64) {
        self.limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drained(source, at_ms);
        if let Err(e) = self.drained.seen_empty(source, at_ms) {
            // The persisted time stays older: safe (see crate::state::drained).
            tracing::debug!(agency = %source, error = %e, "drained time not persisted");
        }
    }

    /// The floor of the clock-skew check of a delivery of `message_id` read
    /// from `source`'s queue now: the floor it kept if it failed before,
    /// else when the queue was last seen empty ([`Drained::floor_of`]).
    pub fn floor_of(&self, source: &AgencyCode, message_id: Option<&str>) -> Option<i64> {
        self.drained.floor_of(source, message_id)
    }

    /// Whether messages from `source` failed and are to come again: its
    /// queue's drained time must not move past them meanwhile.
    pub fn source_failing(&self, source: &AgencyCode, now_ms: i64) -> bool {
        self.drained.failing(source, now_ms)
    }

    /// A delivery judged from `floor` failed (it comes again) or was handled.
    pub fn settle_floor(
        &self,
        source: &AgencyCode,
        message_id: Option<&str>,
        floor: Option<i64>,
        handled: bool,
    ) {
        let Some(mid) = message_id else { return };
        match (handled, floor) {
            (true, _) => self.drained.forget_floor(source, mid),
            (false, Some(f)) => {
                self.drained
                    .keep_floor(source, mid, f, crate::core::time::now_ms())
            }
            (false, None) => {}
        }
    }

    /// Ingress progress per source (the `/healthz` `ingress` check).
    pub fn progress(&self) -> &progress::Progress {
        &self.progress
    }

    /// Removes expired nonces (housekeeping): an entry goes only once its
    /// source's persisted drained time passed its expiry ([`Nonces::sweep`]).
    pub fn sweep_nonces(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.nonces.sweep(now_ms, |access_key| {
            let Some((entry, _)) = self.registry.by_key(access_key, now_ms) else {
                // Unknown or expired key: its messages are refused anyway.
                return now_ms;
            };
            let code = &entry.agency.code;
            match (self.drained.at(code), self.drained.persisted(code)) {
                (None, _) => now_ms,
                (Some(at), p) => p.unwrap_or(at).min(at).min(now_ms),
            }
        })
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<Policies> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the policies (SIGHUP).
    pub fn set_policies(&self, p: Policies) {
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
    }

    /// The tracking store.
    pub fn tracking(&self) -> &Tracking {
        &self.tracking
    }

    /// The audit log.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Writes the quarantine summaries of minutes that are over (housekeeping).
    pub fn roll_quarantined(&self, now_ms: i64) -> usize {
        self.quarantined.roll(now_ms)
    }

    /// Writes every pending quarantine summary (shutdown).
    pub fn flush_quarantined(&self, now_ms: i64) -> usize {
        self.quarantined.flush(now_ms)
    }

    /// The nonce table.
    pub fn nonces(&self) -> &Nonces {
        &self.nonces
    }

    /// Where valid heartbeats go (the presence task). Set once; before it is
    /// set, heartbeats are counted and dropped.
    pub fn set_heartbeat_sink(&self, tx: tokio::sync::mpsc::Sender<Heartbeat>) {
        let _ = self.heartbeats.set(tx);
    }
}

//! Which instance leads: ticks the leader lease ([`crate::state::lease`])
//! and writes this instance's record ([`crate::state::instances`]) every
//! [`RENEW_EVERY`], and publishes the role in a [`watch`] channel.
//!
//! What runs where (the decision for every periodic task of `truc serve`):
//! - **leader only** (work on shared state that must happen once): the
//!   retention sweep and the nonce sweep (housekeeping), the `deadlines`
//!   sweep (expiries and their notices), the presence task's polls,
//!   transitions, delay warnings and offline bounces, and the broker copy
//!   of the store checkpoint ([`crate::serve::integrity::keep_broker_copy`]
//!   and the final copy at shutdown);
//! - **every instance** (its own process, link or cache): health and its
//!   gauges, the audit backlog catch-up (entries this process kept back),
//!   the quarantine summaries (this process's tallies), inbox depth
//!   sampling and the store gauges, the data directory's permissions, the
//!   consumers of every source's queue and of the release, dead and unrouted
//!   queues, the registry refresh, policy reload on SIGHUP, the store's
//!   flusher, and heartbeats from agencies (a follower relays them to the
//!   leader through [`crate::state::relay`]).
//!
//! Invariants: the first tick happens before [`start`] returns, so a hub
//! alone on its store leads from its first moment (no start-up delay);
//! leader-only work asks [`crate::operator::Hub::leads`], which holds only while the lease
//! this instance last wrote has more than
//! [`crate::state::lease::SKEW_MARGIN_MS`] to run, even if the loop here
//! stalls; a clean stop releases the lease and removes the instance record
//! ([`Leadership::stop`]), so another instance takes over at its next tick.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::core::config::Config;
use crate::core::metrics;
use crate::core::time::now_ms;
use crate::state::instances::{InstanceBook, InstanceInfo};
use crate::state::lease::{Lease, Role, RENEW_EVERY};
use crate::state::store::Store;

/// This instance's lease, record and published role.
pub struct Leadership {
    /// The lease.
    pub lease: Arc<Lease>,
    /// The instance records.
    pub instances: InstanceBook,
    me: InstanceInfo,
    role: watch::Sender<Role>,
}

/// Takes the first tick (the lease, this instance's record) and returns the
/// leadership with the receiver of its role. On a store only this process
/// can open ([`Store::is_shared`] false: sled), a lease left by an earlier
/// process is taken at once.
pub fn start(
    store: &Store,
    config: &Config,
    admin_addr: &str,
) -> (Leadership, watch::Receiver<Role>) {
    let id = config.instance_id();
    let lease = if store.is_shared() {
        Lease::new(store.clone(), id.clone())
    } else {
        Lease::exclusive(store.clone(), id.clone())
    };
    let now = now_ms();
    let me = InstanceInfo {
        id,
        host: crate::core::config::hostname(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_ms: now,
        seen_ms: now,
        admin_addr: admin_addr.to_owned(),
    };
    let (tx, rx) = watch::channel(Role::Follower { leader: None });
    let l = Leadership {
        lease: Arc::new(lease),
        instances: InstanceBook::new(store.clone()),
        me,
        role: tx,
    };
    l.tick();
    (l, rx)
}

impl Leadership {
    /// This instance's id.
    pub fn id(&self) -> &str {
        &self.me.id
    }

    /// One round: ticks the lease, publishes the role (logged when it
    /// changes), writes this instance's record.
    fn tick(&self) {
        let now = now_ms();
        let role = match self.lease.tick(now) {
            Ok(r) => r,
            Err(e) => {
                let r = self.lease.role_at(now);
                tracing::warn!(error = %e, retryable = e.is_retryable(), role = r.as_str(), "leader lease not ticked");
                r
            }
        };
        metrics::instance_info(&self.me.id, role.as_str());
        metrics::leader(role.is_leader());
        self.role.send_if_modified(|old| {
            if *old == role {
                return false;
            }
            match &role {
                Role::Leader { term } => {
                    tracing::info!(instance = %self.me.id, term, "this instance leads")
                }
                Role::Follower { leader } => tracing::info!(
                    instance = %self.me.id,
                    leader = leader.as_deref().unwrap_or("-"),
                    "this instance follows"
                ),
            }
            *old = role.clone();
            true
        });
        if let Err(e) = self.instances.beat(&self.me, now) {
            tracing::warn!(error = %e, retryable = e.is_retryable(), "instance record not written");
        }
    }

    /// Ticks every [`RENEW_EVERY`] until `shutdown` (the first tick was
    /// taken by [`start`]).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every =
            tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => self.tick(),
            }
        }
    }

    /// Clean stop: releases the lease (if held) and removes this instance's
    /// record; the caller flushes the store after.
    pub fn stop(&self) {
        match self.lease.release(now_ms()) {
            Ok(true) => tracing::info!(instance = %self.me.id, "leader lease released"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader lease not released; it expires by itself"),
        }
        if let Err(e) = self.instances.remove(&self.me.id) {
            tracing::warn!(error = %e, "instance record not removed; it is forgotten after an hour");
        }
        metrics::leader(false);
        self.role.send_replace(Role::Follower { leader: None });
    }
}

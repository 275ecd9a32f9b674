//! The I/O side of presence: polls the broker for the consumer count of every
//! inbox, takes heartbeats from the router, keeps each agency's state and its
//! connection history in sled, and sends the delay warnings and bounces that
//! [`crate::core::presence::due`] finds.
//!
//! Among several instances sharing a store, only the leader
//! ([`crate::serve::leader`]) observes and decides: it polls, records
//! transitions and sends notices. A heartbeat reaches whichever instance
//! consumed it; a follower relays it through the store
//! ([`crate::state::relay`]) and the leader takes relayed heartbeats every
//! [`crate::state::relay::TAKE_EVERY`], applying each with the time the
//! follower received it. An instance that becomes leader first reloads every
//! agency's state from the store, as the previous leader saved it.
//!
//! Invariants:
//! - every transition the state machine produces is written to the
//!   `presence_log` tree with its timestamp before the next observation;
//! - without a broker link nothing is observed (no polls, no heartbeats
//!   arrive) and nothing is decided: states stay as they were;
//! - only while [`Hub::leads`] are observations applied and notices sent;
//!   a heartbeat older than the last one applied for its agency (a relayed
//!   one overtaken by a direct one) is ignored, so the latest signal wins;
//! - a notice is sent only through [`Router::offline_notice`], which checks
//!   and records it in the envelope's timeline under the envelope's lock, so
//!   restarts do not repeat it; the `pending` index flags are a cache of that.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::AmqpError;
use crate::broker::LinkOutbox;
use crate::core::code::AgencyCode;
use crate::core::envelope::Priority;
use crate::core::metrics;
use crate::core::notice::NoticeKind;
use crate::core::presence::{due, AgencyPresence, Due, Observation, Tracker, Transition, Waiting};
use crate::core::time::{format_duration, now_ms};
use crate::operator::Hub;
use crate::router::{Heartbeat, OfflineFacts, OfflineNotice, Router, RouterError};
use crate::state::presence::{PresenceBook, PresenceError as BookError};
use crate::state::relay::{HeartbeatRelay, Relayed, TAKE_EVERY};
use crate::state::store::StoreError;

/// Passive declares in flight at once during a poll (one channel each).
pub const POLL_CONCURRENCY: usize = 4;

/// Heartbeats waiting for the presence task; more are dropped (and logged).
pub const HEARTBEAT_QUEUE: usize = 10_000;

/// Errors of a presence round.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Presence history failed.
    #[error(transparent)]
    Book(#[from] BookError),
    /// Sending a notice failed.
    #[error(transparent)]
    Router(#[from] RouterError),
}

impl PresenceError {
    /// Whether the next round may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Book(e) => e.is_retryable(),
            Self::Router(e) => e.is_retryable(),
        }
    }
}

struct Task {
    /// A connection of presence's own for polls: a passive declare of a
    /// missing queue (404) leaves lapin failing every later `channel.open` on
    /// that connection, so polls never use the router's link, and this one is
    /// replaced when that happens.
    probe: Option<crate::broker::Link>,
    hub: Arc<Hub>,
    book: PresenceBook,
    tracker: Tracker,
    saved: BTreeMap<AgencyCode, AgencyPresence>,
    /// Whether this instance led at the last look (its tracker is current).
    leading: bool,
    /// When the last heartbeat applied for each agency was taken.
    last_heartbeat: HashMap<AgencyCode, i64>,
    relay: HeartbeatRelay,
}

/// Runs presence until `shutdown`: while this instance leads, a poll round
/// every `poll_interval` (read from the policies each round), heartbeats as
/// they come and relayed ones every [`TAKE_EVERY`]; while it follows, the
/// heartbeats it receives are relayed to the leader.
pub async fn run(
    hub: Arc<Hub>,
    mut heartbeats: mpsc::Receiver<Heartbeat>,
    shutdown: CancellationToken,
) {
    let policy = hub.router.policies().presence.clone();
    let mut task = Task {
        probe: None,
        book: hub.presence.clone(),
        relay: HeartbeatRelay::new(hub.store.clone()),
        tracker: Tracker::new(policy.heartbeat_window),
        saved: BTreeMap::new(),
        leading: false,
        last_heartbeat: HashMap::new(),
        hub,
    };
    task.follow_role();
    let mut next = tokio::time::Instant::now();
    let mut take = tokio::time::interval(TAKE_EVERY);
    take.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(hb) = heartbeats.recv() => {
                task.follow_role();
                if task.leading {
                    task.heartbeat(hb);
                } else {
                    task.relay_out(&hb);
                }
            }
            _ = take.tick() => {
                task.follow_role();
                if task.leading {
                    task.take_relayed();
                }
            }
            _ = tokio::time::sleep_until(next) => {
                let interval = task.hub.router.policies().presence.poll_interval;
                task.follow_role();
                if task.leading {
                    task.round().await;
                }
                next = tokio::time::Instant::now() + interval;
            }
        }
    }
}

impl Task {
    /// Notes whether this instance leads; when it just became leader, the
    /// states are reloaded from the store (the previous leader's).
    fn follow_role(&mut self) {
        let leads = self.hub.leads();
        if leads && !self.leading {
            self.load();
        } else if !leads && self.leading {
            tracing::info!("presence decisions left to the leader instance");
        }
        self.leading = leads;
    }

    /// Replaces the tracker with the states persisted in the store.
    fn load(&mut self) {
        let policy = self.hub.router.policies().presence.clone();
        self.tracker = Tracker::new(policy.heartbeat_window);
        self.saved.clear();
        self.last_heartbeat.clear();
        match self.book.load() {
            Ok(all) => {
                for (code, p) in all {
                    self.saved.insert(code.clone(), p.clone());
                    self.tracker.restore(code, p);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "presence states not loaded; starting from observations")
            }
        }
    }

    /// A follower's heartbeat, left in the store for the leader.
    fn relay_out(&self, hb: &Heartbeat) {
        let relayed = Relayed {
            online: hb.online,
            at_ms: hb.at_ms,
        };
        if let Err(e) = self.relay.put(&hb.code, &relayed) {
            // Heartbeats repeat: one lost costs nothing lasting.
            tracing::warn!(from = %hb.code, error = %e, retryable = e.is_retryable(), "heartbeat not relayed to the leader");
        }
    }

    /// Applies the heartbeats followers relayed, but for those older than
    /// the heartbeat window (left over a long leaderless time, or restored
    /// from a backup): they no longer say anything about now.
    fn take_relayed(&mut self) {
        let window = self.hub.router.policies().presence.heartbeat_window;
        let oldest = now_ms() - window.as_millis() as i64;
        match self.relay.take() {
            Ok(all) => {
                for (code, r) in all {
                    if r.at_ms < oldest {
                        continue;
                    }
                    self.heartbeat(Heartbeat {
                        code,
                        online: r.online,
                        at_ms: r.at_ms,
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retryable = e.is_retryable(), "relayed heartbeats not taken; next time")
            }
        }
    }

    fn heartbeat(&mut self, hb: Heartbeat) {
        if self.hub.registry.get(&hb.code).is_none() {
            return;
        }
        match self.last_heartbeat.get(&hb.code) {
            Some(&last) if last > hb.at_ms => return,
            _ => {
                self.last_heartbeat.insert(hb.code.clone(), hb.at_ms);
            }
        }
        let obs = Observation::Heartbeat { online: hb.online };
        let t = self.tracker.observe(&hb.code, obs, hb.at_ms);
        self.record(t.into_iter().collect());
        metrics::agencies_online(self.tracker.online());
    }

    /// Writes transitions and changed states; logs and counts them.
    fn record(&mut self, transitions: Vec<Transition>) {
        for t in &transitions {
            metrics::presence_transition(t.to.as_str());
            tracing::info!(
                agency = %t.code,
                from = t.from.map(|s| s.as_str()).unwrap_or("-"),
                to = t.to.as_str(),
                cause = t.cause.as_str(),
                "presence changed"
            );
            if let Err(e) = self.book.append(t) {
                tracing::error!(agency = %t.code, error = %e, "presence transition not stored");
            }
        }
        let changed: Vec<(AgencyCode, AgencyPresence)> = self
            .tracker
            .iter()
            .filter(|(c, p)| self.saved.get(*c) != Some(*p))
            .map(|(c, p)| (c.clone(), p.clone()))
            .collect();
        for (code, p) in changed {
            match self.book.save(&code, &p) {
                Ok(()) => {
                    self.saved.insert(code, p);
                }
                Err(e) => tracing::error!(agency = %code, error = %e, "presence state not stored"),
            }
        }
    }

    async fn round(&mut self) {
        let policies = self.hub.router.policies();
        self.tracker.set_window(policies.presence.heartbeat_window);
        let agencies = self.hub.registry.list();
        let known: std::collections::HashSet<AgencyCode> =
            agencies.iter().map(|a| a.code.clone()).collect();
        self.tracker.retain(|c| known.contains(c));
        self.last_heartbeat.retain(|c, _| known.contains(c));
        let link = self.hub.link.borrow().clone();
        let Some(link) = link else {
            tracing::debug!("presence round skipped: no broker link");
            return;
        };
        let names: Vec<String> = agencies
            .iter()
            .map(|a| self.hub.topology.inbox(&a.code))
            .collect();
        if self.probe.is_none() {
            let name = format!("truc presence {}", self.hub.config.prefix);
            let tls = crate::broker::BrokerTls::new(self.hub.config.amqp_ca_file.clone());
            match crate::broker::Link::connect_tls(&self.hub.config.amqp_url, &name, 1, &tls).await
            {
                Ok(l) => self.probe = Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "presence poll connection failed; next round retries");
                    return;
                }
            }
        }
        let Some(probe) = self.probe.as_ref() else {
            return;
        };
        let started = std::time::Instant::now();
        let answers = probe.probe_queues(&names, POLL_CONCURRENCY).await;
        metrics::presence_poll(started.elapsed(), names.len());
        let poisoned = !probe.is_connected()
            || answers.iter().any(|a| {
                matches!(
                    a,
                    Err(AmqpError::Broker {
                        op: "channel.open",
                        ..
                    })
                )
            });
        if poisoned {
            if let Some(old) = self.probe.take() {
                old.close().await;
            }
        }
        let now = now_ms();
        let mut transitions = Vec::new();
        let mut failures = 0usize;
        for (a, answer) in agencies.iter().zip(answers) {
            let consumers = match answer {
                Ok(info) => Some(info.consumers),
                Err(AmqpError::NoSuchQueue(_)) => Some(0),
                Err(e) => {
                    failures += 1;
                    tracing::debug!(agency = %a.code, error = %e, "inbox not polled");
                    None
                }
            };
            let obs = Observation::Poll {
                enabled: a.enabled,
                consumers,
            };
            transitions.extend(self.tracker.observe(&a.code, obs, now));
        }
        if failures > 0 {
            tracing::warn!(
                failures,
                polled = names.len(),
                "some inboxes did not answer the presence poll"
            );
        }
        transitions.extend(self.tracker.expire(now));
        self.record(transitions);
        metrics::agencies_online(self.tracker.online());
        let outbox = LinkOutbox::new(link, self.hub.topology.clone());
        if let Err(e) = self.notices(&outbox).await {
            tracing::warn!(error = %e, retryable = e.is_retryable(), "presence notices interrupted; next round retries");
        }
    }

    /// Sends every due delay warning and bounce for destinations not online.
    /// The `pending` index only proposes candidates: whether the delivery
    /// still waits is decided by the router against the timeline
    /// ([`crate::state::tracking::DestTrack::is_waiting`]), and an entry that
    /// no longer waits is dropped from the index.
    async fn notices(&self, outbox: &LinkOutbox) -> Result<(), PresenceError> {
        let policies = self.hub.router.policies();
        let router: &Router = &self.hub.router;
        let tracking = router.tracking();
        for (dest, p) in self.tracker.iter() {
            if p.state == crate::core::presence::State::Online {
                continue;
            }
            if !self.hub.leads() {
                // Lost the lease meanwhile: the new leader goes on.
                return Ok(());
            }
            for (from, mid, mut pend) in tracking.pending_for(dest)? {
                let priority = Priority::new(pend.priority).unwrap_or(Priority::NORMAL);
                let policy = policies.delivery(priority, &from);
                let w = Waiting {
                    queued_at_ms: pend.queued_at_ms,
                    delay_warning_after: policy.delay_warning_after,
                    bounce_after: pend
                        .bounce_after_ms
                        .map(Duration::from_millis)
                        .or(policy.bounce_after),
                    warned: pend.warned,
                    bounced: pend.bounced,
                };
                let now = now_ms();
                let mut changed = false;
                for d in due(Some(p), &w, now) {
                    let (kind, offline, reason) = match d {
                        Due::DelayWarning { offline, reason } => {
                            (NoticeKind::DelayWarning, offline, reason)
                        }
                        Due::Bounce { offline, reason } => (NoticeKind::Bounced, offline, reason),
                    };
                    let detail = detail(kind, dest, p, offline);
                    match router
                        .offline_notice(
                            dest,
                            &from,
                            &mid,
                            OfflineFacts {
                                kind,
                                reason,
                                detail: &detail,
                            },
                            outbox,
                        )
                        .await?
                    {
                        OfflineNotice::Sent | OfflineNotice::AlreadySent => {
                            match kind {
                                NoticeKind::Bounced => pend.bounced = true,
                                _ => pend.warned = true,
                            }
                            changed = true;
                        }
                        OfflineNotice::NotWaiting => {
                            tracking.unpend(dest, &from, &mid)?;
                            changed = false;
                            break;
                        }
                    }
                }
                if changed {
                    tracking.repend(dest, &from, &mid, &pend)?;
                }
            }
        }
        Ok(())
    }
}

fn detail(kind: NoticeKind, dest: &AgencyCode, p: &AgencyPresence, offline: Duration) -> String {
    let state = p.state.as_str();
    let offline = format_duration(Duration::from_secs(offline.as_secs()));
    match kind {
        NoticeKind::Bounced => format!(
            "destination {dest} has been {state} for {offline} since this envelope was queued; it stays queued and is delivered if {dest} returns"
        ),
        _ => format!(
            "destination {dest} has been {state} for {offline} since this envelope was queued; delivery is delayed"
        ),
    }
}

/// Wires the router's heartbeats to a new channel; returns its receiver.
pub fn heartbeat_channel(router: &Router) -> mpsc::Receiver<Heartbeat> {
    let (tx, rx) = mpsc::channel(HEARTBEAT_QUEUE);
    router.set_heartbeat_sink(tx);
    rx
}

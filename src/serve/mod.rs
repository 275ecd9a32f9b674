//! `truc serve`: wires the store, registry, router and admin API together,
//! keeps a broker link alive, and drains on shutdown.
//!
//! Invariants: shutdown is one [`CancellationToken`] that every loop selects
//! on; in-flight ingress work is tracked by a [`TaskTracker`] and awaited
//! before the link closes; a stop ends in bounded time even when the
//! broker stops answering: each broker call made while stopping gets
//! [`STOP_CALL_LIMIT`], the background tasks [`STOP_TASKS_LIMIT`] (those
//! still running are named in the log); after any broker error the link is
//! dropped and rebuilt (the broker redelivers whatever was not acked); a source's
//! consumer that had nothing in hand, settled nothing and got nothing for
//! half a second, or got a first delivery after half a second in which it
//! always had room for more, tells the router that source's queue was empty
//! half a second ago (the floor of its rate limit, see
//! [`crate::core::scheduler::measured_at`], and of its clock-skew check, see
//! [`crate::core::skew`]) unless messages of that source failed and come
//! again; each delivery carries the floor in force when it arrived; a
//! message that failed on the store is held, unacked, until the store can
//! write again; `/healthz` and the `truc_healthy` gauges are one evaluation,
//! every [`HEALTH_EVERY`] for the gauges; work that must happen once across
//! the instances sharing a store runs only while this instance leads
//! ([`leader`] lists which); the registry cache is refreshed every
//! [`crate::state::registry::REFRESH_EVERY`], so a change made through
//! another instance takes effect here within a second.

mod alerts;
pub mod integrity;
pub mod leader;
pub mod presence;
mod tasks;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{declare_agency, AmqpError, BrokerTls, Link, LinkOutbox, Settler};
use crate::core::alarm::{Alarm, Say};
use crate::core::code::AgencyCode;
use crate::core::config::Config;
use crate::core::message::{Inbound, Message};
use crate::core::metrics;
use crate::core::policy::Policies;
use crate::core::topology::Topology;
use crate::operator::Hub;
use crate::router::order::Sequencer;
use crate::router::Router;
use crate::state::registry::Registry;

/// Service start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] crate::core::config::ConfigError),
    /// Policies.
    #[error(transparent)]
    Policy(#[from] crate::core::policy::PolicyError),
    /// Topology.
    #[error(transparent)]
    Topology(#[from] crate::core::topology::TopologyError),
    /// Store.
    #[error(transparent)]
    Store(#[from] crate::state::store::StoreError),
    /// Registry.
    #[error(transparent)]
    Registry(#[from] crate::state::registry::RegistryError),
    /// Admin API.
    #[error("admin API: {0}")]
    Admin(std::io::Error),
    /// The master key cannot be read or generated, or is invalid.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The admin token is empty, short, or cannot be read or generated.
    #[error("admin token: {0}")]
    AdminToken(String),
    /// The admin API cannot be served as configured (TLS files, or a
    /// non-loopback address without TLS).
    #[error("admin API: {0}")]
    AdminTls(String),
    /// The gateway cannot be served as configured (TLS files, or a
    /// non-loopback address without TLS).
    #[error("gateway: {0}")]
    GatewayTls(String),
    /// The gateway's address cannot be listened on.
    #[error("gateway: {0}")]
    Gateway(std::io::Error),
    /// The data directory cannot be created or made private.
    #[error("data dir: {0}")]
    DataDir(std::io::Error),
    /// The store is damaged, rolled back or rewritten (or its checkpoint is).
    #[error("store integrity: {0}. truc will not start on it: restore a backup of the data directory, or start once with `truc serve --accept-loss` to go on with what the store holds (the loss is recorded in the audit log); see docs/OPERATIONS.md, \"Store integrity\"")]
    Integrity(crate::state::integrity::IntegrityError),
}

impl ServiceError {
    /// Whether starting again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Config(_)
            | Self::Policy(_)
            | Self::Topology(_)
            | Self::MasterKey(_)
            | Self::AdminToken(_)
            | Self::AdminTls(_)
            | Self::GatewayTls(_)
            | Self::DataDir(_) => false,
            Self::Integrity(e) => e.is_retryable(),
            Self::Store(e) => e.is_retryable(),
            Self::Registry(e) => e.is_retryable(),
            Self::Admin(_) | Self::Gateway(_) => true,
        }
    }
}

/// Publishing channels of the router's link.
pub const ROUTER_PUBLISH_CHANNELS: usize = 4;

/// How long the background tasks get to stop after the ingress drained.
const STOP_TASKS_LIMIT: Duration = Duration::from_secs(10);

/// How long a broker call made while stopping (cancelling a consumer,
/// closing the link) may take before the stop goes on without it.
const STOP_CALL_LIMIT: Duration = Duration::from_secs(5);

/// Runs the hub until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServiceError> {
    // The metrics recorder before anything can emit a metric.
    crate::api::install_metrics();
    config.validate()?;
    let policies = Policies::load(&config.policies_dir)?;
    let alerts = crate::core::alert_policy::AlertsPolicy::load(&config.policies_dir)?;
    let topology = Arc::new(Topology::load(&config.queues_dir, &config.prefix)?);
    let admin_tls = crate::api::tls::load(&config).map_err(ServiceError::AdminTls)?;
    config.prepare_data_dir().map_err(ServiceError::DataDir)?;
    let master = config
        .resolve_master_key()
        .map_err(|e| ServiceError::MasterKey(e.to_string()))
        .and_then(|k| {
            crate::core::secrets::MasterKey::parse(&k)
                .map_err(|e| ServiceError::MasterKey(e.to_string()))
        })?;
    let integrity::Opened {
        store,
        check: start_check,
        latest: checkpoints,
    } = integrity::open_store(&config, &master).map_err(ServiceError::Integrity)?;
    let flusher = store.start_flusher();
    let gateway_key = master.derive(crate::gateway::TOKEN_PURPOSE);
    let spaces = crate::state::spaces::Spaces::open(
        store.clone(),
        &config.spaces_path(),
        master.derive(crate::state::spaces::SEAL_PURPOSE),
    )
    .map_err(ServiceError::DataDir)?;
    let registry = Registry::open(store.clone(), master)?;
    // Bound before the instance record is written, so that the record names
    // the address really listened on (`admin_addr` may ask for port 0).
    let listener = tokio::net::TcpListener::bind(config.admin_socket()?)
        .await
        .map_err(ServiceError::Admin)?;
    let admin_addr = listener
        .local_addr()
        .map_err(ServiceError::Admin)?
        .to_string();
    config
        .write_admin_addr_file(&admin_addr)
        .map_err(ServiceError::DataDir)?;
    let gateway = match config.gateway_socket()? {
        None => None,
        Some(addr) => {
            let tls = crate::api::tls::load_server(
                crate::api::tls::ServerFiles {
                    what: "gateway",
                    addr: &addr.to_string(),
                    loopback: addr.ip().is_loopback(),
                    cert: config.gateway_tls_cert.as_deref(),
                    key: config.gateway_tls_key.as_deref(),
                },
                "the agencies' gateway (and its session tokens)",
            )
            .map_err(ServiceError::GatewayTls)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(ServiceError::Gateway)?;
            let bound = listener.local_addr().map_err(ServiceError::Gateway)?;
            config
                .write_gateway_addr_file(&bound.to_string())
                .map_err(ServiceError::DataDir)?;
            tracing::info!(addr = %bound, https = tls.is_some(), "gateway listening");
            Some((listener, tls))
        }
    };
    let (leadership, role) = leader::start(&store, &config, &admin_addr);
    let leadership = Arc::new(leadership);
    let admin_token = config
        .resolve_admin_token(true)
        .map_err(|e| ServiceError::AdminToken(e.to_string()))?;
    if admin_token.starts_with(crate::state::accounts::TOKEN_PREFIX) {
        return Err(ServiceError::AdminToken(
            "admin_token (or TRUC_ADMIN_TOKEN) is an account's API token, not the hub's admin token"
                .into(),
        ));
    }
    config.secure_data_dir().map_err(ServiceError::DataDir)?;
    let router = Arc::new(Router::new(
        store.clone(),
        registry.clone(),
        topology.clone(),
        policies,
    ));
    router.set_spaces(spaces);
    let heartbeats = crate::serve::presence::heartbeat_channel(&router);
    let (link_tx, link_rx) = watch::channel(None);
    let hub = Arc::new(Hub {
        presence: crate::state::presence::PresenceBook::new(store.clone()),
        config: config.clone(),
        store: store.clone(),
        registry,
        topology,
        router,
        link: link_rx,
        admin_token,
        accounts: crate::state::accounts::AccountBook::new(store.clone()),
        instance_id: leadership.id().to_owned(),
        lease: leadership.lease.clone(),
        role,
        instances: leadership.instances.clone(),
        alerts: std::sync::RwLock::new(Arc::new(alerts)),
    });
    // The gauges /metrics shows from the start.
    metrics::store_writable(true);
    metrics::agencies(hub.registry.len());
    metrics::store_bytes(hub.store.size_on_disk());
    let tracker = tasks::Tasks::default();
    tracing::info!(addr = %admin_addr, https = admin_tls.is_some(), data_dir = %config.data_dir.display(), prefix = %config.prefix, instance = %hub.instance_id, role = hub.role_now().as_str(), "truc serving");
    tracker.spawn("leadership", leadership.clone().run(shutdown.clone()));
    tracker.spawn(
        "registry sync",
        sync_registry(hub.clone(), shutdown.clone()),
    );
    tracker.spawn(
        "admin API",
        crate::api::serve(hub.clone(), listener, admin_tls, shutdown.clone()),
    );
    if let Some((listener, tls)) = gateway {
        tracker.spawn(
            "gateway",
            crate::gateway::serve(hub.clone(), gateway_key, listener, tls, shutdown.clone()),
        );
    }
    tracker.spawn("housekeeping", housekeeping(hub.clone(), shutdown.clone()));
    tracker.spawn("alerts", alerts::run(hub.clone(), shutdown.clone()));
    tracker.spawn(
        "policy reload",
        reload_on_sighup(hub.clone(), shutdown.clone()),
    );
    let anchor_queue = integrity::anchor_queue(&hub.topology).name;
    tracker.spawn(
        "checkpoint copy",
        integrity::keep_broker_copy(
            hub.clone(),
            checkpoints.clone(),
            anchor_queue.clone(),
            (start_check.checked.clone(), start_check.key().clone()),
            shutdown.clone(),
        ),
    );
    tracker.spawn(
        "presence",
        crate::serve::presence::run(hub.clone(), heartbeats, shutdown.clone()),
    );
    let refused = run_ingress(hub.clone(), link_tx, shutdown.clone(), &start_check).await;
    tracker.stop(STOP_TASKS_LIMIT).await;
    hub.router.flush_quarantined(crate::core::time::now_ms());
    let led = hub.leads();
    leadership.stop();
    store.flush()?;
    flusher.abort();
    if let Some(e) = refused {
        return Err(ServiceError::Integrity(e));
    }
    if led {
        integrity::final_broker_copy(&config, &anchor_queue, &checkpoints, &start_check).await;
    }
    tracing::info!("truc stopped");
    Ok(())
}

async fn reload_on_sighup(hub: Arc<Hub>, shutdown: CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => {
                let dir = &hub.config.policies_dir;
                match (Policies::load(dir), crate::core::alert_policy::AlertsPolicy::load(dir)) {
                    (Ok(p), Ok(a)) => {
                        hub.router.set_policies(p);
                        *hub.alerts.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(a);
                        tracing::info!(dir = %dir.display(), "policies reloaded");
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!(error = %e, "policies not reloaded; keeping the old ones")
                    }
                }
            }
        }
    }
}

/// Reloads the registry cache when another instance changed the registry,
/// every [`crate::state::registry::REFRESH_EVERY`].
async fn sync_registry(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(crate::state::registry::REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let failing = Alarm::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => match hub.registry.refresh() {
                Ok(reloaded) => {
                    if let Some(lasted) = failing.clear(std::time::Instant::now()) {
                        tracing::info!(lasted_s = lasted.as_secs(), "registry refreshed again");
                    }
                    if reloaded {
                        tracing::debug!(agencies = hub.registry.len(), "registry changed on another instance; reloaded");
                        metrics::agencies(hub.registry.len());
                    }
                }
                Err(e) => match failing.raise(std::time::Instant::now()) {
                    Say::Started => tracing::warn!(error = %e, retryable = e.is_retryable(), "registry not refreshed; will retry"),
                    Say::Reminder { suppressed, lasting } => tracing::warn!(error = %e, suppressed, lasting_s = lasting.as_secs(), "registry still not refreshed"),
                    Say::Quiet => {}
                },
            },
        }
    }
}

/// Periodic upkeep. Per instance: health, the audit backlog, quarantine
/// summaries, depth sampling, gauges, the data directory's permissions.
/// Leader only ([`Hub::leads`]): the retention and nonce sweeps.
async fn housekeeping(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    let mut sample = tokio::time::interval(hub.config.depth_sample_interval());
    let mut retention = tokio::time::interval(Duration::from_secs(600));
    let mut health = tokio::time::interval(HEALTH_EVERY);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut spaces = tokio::time::interval(SPACES_SWEEP_EVERY);
    spaces.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let unhealthy = Alarm::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = health.tick() => {
                check_health(&hub, &unhealthy);
                // Audit entries a store failure kept back are written once it can.
                match hub.router.audit().catch_up() {
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "audit backlog not written yet"),
                }
            }
            _ = sample.tick() => crate::operator::queues::sample(&hub).await,
            // Every instance: each may keep content of its own (a spaces
            // directory that is not shared).
            _ = spaces.tick() => {
                let h = hub.clone();
                let swept = tokio::task::spawn_blocking(move || {
                    h.router.sweep_spaces(crate::core::time::now_ms())
                })
                .await;
                if let Ok(Err(e)) = swept {
                    tracing::warn!(error = %e, retryable = e.is_retryable(), "upload space sweep failed");
                }
            }
            _ = retention.tick() => {
                if hub.leads() {
                    match crate::state::retention::sweep(
                        &hub.store,
                        hub.router.audit(),
                        crate::core::time::now_ms(),
                        hub.config.envelope_retention(),
                        hub.config.audit_retention(),
                    )
                    .await
                    {
                        Ok((e, a)) if e + a > 0 => tracing::info!(envelopes = e, audit_entries = a, "retention sweep"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, retryable = e.is_retryable(), "retention sweep failed"),
                    }
                }
                match hub.router.audit().len() {
                    Ok(n) => metrics::audit_entries(n),
                    Err(e) => tracing::warn!(error = %e, "cannot count audit entries"),
                }
            }
            _ = tick.tick() => {
                hub.router.roll_quarantined(crate::core::time::now_ms());
                if hub.leads() {
                    match hub.router.sweep_nonces(crate::core::time::now_ms()) {
                        Ok(n) if n > 0 => tracing::debug!(swept = n, "expired nonces removed"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "nonce sweep failed"),
                    }
                    let logins = crate::state::logins::Logins::new(hub.store.clone(), Default::default());
                    if let Err(e) = logins.sweep(crate::core::time::now_ms()) {
                        tracing::warn!(error = %e, "console session sweep failed");
                    }
                }
                metrics::agencies(hub.registry.len());
                metrics::store_bytes(hub.store.size_on_disk());
                // Files sled created since (it uses the process umask).
                if let Err(e) = hub.config.secure_data_dir() {
                    tracing::warn!(error = %e, "cannot make the data dir private");
                }
            }
        }
    }
}

/// How often upload spaces no destination needs are looked for (a space
/// whose last destination confirms is deleted at once; this catches
/// bounces, expiries, recalls and unused spaces).
const SPACES_SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How often the health gauges are set and the audit backlog retried.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// Sets the `truc_healthy` gauges from [`crate::api::health::evaluate`] and
/// says in the log when the hub turns unhealthy (then a reminder at most
/// every [`crate::core::alarm::REMIND`]) and when it is healthy again.
fn check_health(hub: &Hub, unhealthy: &Alarm) {
    let h = crate::api::health::evaluate(hub, crate::core::time::now_ms());
    // The log line before the gauges, so a reader of the gauge finds it said.
    say_health(&h, unhealthy);
    for check in ["store", "broker", "ingress"] {
        metrics::healthy(check, !h.reasons.iter().any(|r| r.check == check));
    }
    metrics::healthy("all", h.reasons.is_empty());
}

fn say_health(h: &crate::api::types::Health, unhealthy: &Alarm) {
    let now = std::time::Instant::now();
    if h.reasons.is_empty() {
        if let Some(lasted) = unhealthy.clear(now) {
            tracing::info!(lasted_s = lasted.as_secs(), "healthy again");
        }
        return;
    }
    let reasons: Vec<String> = h
        .reasons
        .iter()
        .map(|r| format!("{}: {}", r.check, r.detail))
        .collect();
    let reasons = reasons.join("; ");
    match unhealthy.raise(now) {
        Say::Started => tracing::warn!(reasons = %reasons, "unhealthy"),
        Say::Reminder {
            suppressed,
            lasting,
        } => {
            tracing::warn!(reasons = %reasons, lasting_s = lasting.as_secs(), suppressed, "still unhealthy")
        }
        Say::Quiet => {}
    }
}

/// How the first connection ended the start: the broker's copy of the store
/// checkpoint refused it.
enum Connected {
    Link(Arc<Link>),
    Stopped,
    Refused(crate::state::integrity::IntegrityError),
}

async fn connect(
    hub: &Hub,
    shutdown: &CancellationToken,
    start_check: &integrity::StartCheck,
) -> Connected {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let link = Link::connect_guarded(
                &hub.config.amqp_url,
                &format!("truc router {}", hub.config.prefix),
                ROUTER_PUBLISH_CHANNELS,
                &BrokerTls::new(hub.config.amqp_ca_file.clone()),
            )
            .await?;
            link.declare_topology(&hub.topology).await?;
            if !start_check.checked.load(Ordering::SeqCst) {
                match integrity::check_broker_copy(
                    &link,
                    &hub.topology,
                    &hub.store,
                    hub.router.audit(),
                    start_check,
                )
                .await
                {
                    Ok(()) => {}
                    Err(integrity::BrokerCheckError::Amqp(e)) => return Err(e),
                    Err(integrity::BrokerCheckError::Integrity(e)) => {
                        link.close().await;
                        return Ok(Err(e));
                    }
                }
            }
            for a in hub.registry.list() {
                match declare_agency(&link, &hub.topology, &a.code).await {
                    Ok(()) => {}
                    // One agency's queue declared differently by someone else,
                    // or on a cluster node that is down, must not keep the
                    // whole hub off the broker.
                    Err(
                        e @ (AmqpError::Conflict { .. }
                        | AmqpError::NoSuchQueue(_)
                        | AmqpError::QueueUnavailable(_)),
                    ) => {
                        tracing::error!(agency = %a.code, error = %e, "agency queues not declared")
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, AmqpError>(Ok(link))
        };
        let res = tokio::select! {
            _ = shutdown.cancelled() => return Connected::Stopped,
            r = attempt => r,
        };
        match res {
            Ok(Err(refused)) => {
                tracing::error!(error = %refused, "the store does not match the broker's copy of its checkpoint; stopping");
                return Connected::Refused(refused);
            }
            Ok(Ok(link)) => {
                metrics::broker_connected();
                tracing::info!(url = %crate::broker::redact(&hub.config.amqp_url), "broker connected, topology declared");
                return Connected::Link(Arc::new(link));
            }
            Err(e @ AmqpError::Conflict { .. }) => {
                // An exchange or fixed queue exists with other arguments (an
                // older topology): retrying cannot help until an operator acts.
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "topology conflict: the broker holds this exchange or queue with other arguments; see docs/OPERATIONS.md, \"Upgrading a broker from the single ingress queue\"");
                tokio::select! {
                    _ = shutdown.cancelled() => return Connected::Stopped,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker not reachable");
                tokio::select! {
                    _ = shutdown.cancelled() => return Connected::Stopped,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Which queue a consumer reads, and so which router entry point handles it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Feed {
    /// What one agency publishes (its own ingress queue).
    Source(AgencyCode),
    /// What the ingress exchange routed to no agency's queue.
    Unrouted,
    /// Held deliveries coming out of the delay buckets.
    Release,
    /// Deliveries dead-lettered from inboxes.
    Dead,
}

impl Feed {
    fn queue(&self, topology: &Topology) -> String {
        match self {
            Self::Source(code) => topology.ingress(code),
            Self::Unrouted => topology.name("ingress"),
            Self::Release => topology.name("release"),
            Self::Dead => topology.name("dead"),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Source(_) => "source",
            Self::Unrouted => "ingress",
            Self::Release => "release",
            Self::Dead => "dead",
        }
    }
}

/// What every consumer of one broker link shares.
#[derive(Clone)]
struct Consumers {
    hub: Arc<Hub>,
    link: Arc<Link>,
    outbox: Arc<LinkOutbox>,
    /// In-flight handling, awaited before the link closes.
    work: TaskTracker,
    /// Ingress messages that depend on an earlier one (a recall after its
    /// envelope, a repeat of an envelope) wait for it, across every source.
    sequencer: Sequencer,
    /// Messages failing (the log says so once, then reminds).
    failing: Arc<Alarm>,
}

/// Drops a source's progress entry when its consumer stops.
struct Forget {
    router: Arc<crate::router::Router>,
    code: AgencyCode,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.router.progress().forget(&self.code);
    }
}

/// How long a message that failed waits before it goes back to its queue:
/// longer each time the broker redelivered it (quorum queues count).
fn requeue_delay(m: &Message) -> Duration {
    let count = m
        .header("x-delivery-count")
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(500 * (count + 1)).min(Duration::from_secs(5))
}

/// How long a source's consumer must go without a delivery, with credit to
/// spare, before its queue counts as empty (far above the broker's round trip).
const IDLE: Duration = Duration::from_millis(500);

/// The credit window of one consumer: how many of its deliveries are not yet
/// settled, when it last stopped being full and when one was last settled.
/// A consumer with nothing in hand and nothing settled for [`IDLE`] that got
/// nothing has an empty queue: nothing it failed is on its way back either
/// (a message requeued after a failure was settled, and comes again at once).
#[derive(Debug, Default)]
struct Window {
    unsettled: AtomicUsize,
    freed_ms: AtomicI64,
    settled_ms: AtomicI64,
}

/// One delivery's place in a [`Window`], given back when dropped.
struct Slot {
    window: Arc<Window>,
    size: usize,
}

impl Window {
    fn take(self: &Arc<Self>, size: usize) -> Slot {
        self.unsettled.fetch_add(1, Ordering::SeqCst);
        Slot {
            window: self.clone(),
            size,
        }
    }

    /// Whether at `now_ms` the window has had room for the last [`IDLE`].
    fn had_room(&self, size: usize, now_ms: i64) -> bool {
        self.unsettled.load(Ordering::SeqCst) < size
            && self.freed_ms.load(Ordering::SeqCst) <= now_ms - IDLE.as_millis() as i64
    }

    /// Whether at `now_ms` the window has been empty, with nothing settled,
    /// for the last [`IDLE`].
    fn empty_for_idle(&self, now_ms: i64) -> bool {
        self.unsettled.load(Ordering::SeqCst) == 0
            && self.settled_ms.load(Ordering::SeqCst) <= now_ms - IDLE.as_millis() as i64
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let now = crate::core::time::now_ms();
        self.window.settled_ms.store(now, Ordering::SeqCst);
        if self.window.unsettled.fetch_sub(1, Ordering::SeqCst) >= self.size {
            self.window.freed_ms.store(now, Ordering::SeqCst);
        }
    }
}

impl Consumers {
    /// Consumes one queue until `stop` or a broker error; every delivery is
    /// handled in its own task on `work` and acked only after success.
    async fn consume(self, feed: Feed, stop: CancellationToken) -> Result<(), AmqpError> {
        let queue = feed.queue(&self.hub.topology);
        let prefetch = match feed {
            Feed::Source(_) | Feed::Unrouted => self.hub.config.prefetch,
            Feed::Release | Feed::Dead => 64,
        };
        if let Feed::Source(code) = &feed {
            // An agency just added (here or on another instance) may be in
            // the registry before its queues are declared: declaring its
            // ingress queue first (idempotent) means the consumer never
            // meets a missing queue.
            let [ingress, _, _] = self.hub.topology.agency_queues(code);
            self.link.declare_queue(&ingress).await?;
        }
        let mut sub = self
            .link
            .subscribe(&queue, prefetch, &format!("truc-{}", feed.label()))
            .await?;
        let settler = sub.settler();
        // Counted as full until now: whatever waited in the queue comes first.
        let window = Arc::new(Window::default());
        window
            .freed_ms
            .store(crate::core::time::now_ms(), Ordering::SeqCst);
        window
            .settled_ms
            .store(crate::core::time::now_ms(), Ordering::SeqCst);
        let source = match &feed {
            Feed::Source(code) => Some(code.clone()),
            _ => None,
        };
        // Its progress entry goes with the consumer (see router::progress).
        let _forget = source.clone().map(|code| Forget {
            router: self.hub.router.clone(),
            code,
        });
        // Fires after IDLE without a delivery: the source's queue is empty if
        // the consumer had room all along, which the rate limiter is told.
        let idle = tokio::time::sleep(IDLE);
        tokio::pin!(idle);
        let mut draining = false;
        let drain_limit = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(drain_limit);
        loop {
            tokio::select! {
                _ = &mut drain_limit, if draining => return Ok(()),
                _ = &mut idle, if source.is_some() && !draining => {
                    let now = crate::core::time::now_ms();
                    if let Some(code) = source.as_ref().filter(|c| window.empty_for_idle(now) && !self.hub.router.source_failing(c, now)) {
                        self.hub.router.source_drained(code, now - IDLE.as_millis() as i64);
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
                }
                _ = stop.cancelled(), if !draining => {
                    // Stop the flow, then handle what the broker already sent, so
                    // a clean stop leaves nothing to redeliver as a possible repeat.
                    draining = true;
                    drain_limit.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(10));
                    match tokio::time::timeout(STOP_CALL_LIMIT, sub.cancel()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Ok(()),
                        Err(_) => {
                            tracing::warn!(queue = %queue, "consumer cancel not answered in time; what it holds is redelivered");
                            return Ok(());
                        }
                    }
                }
                next = sub.next() => match next {
                    None if draining => return Ok(()),
                    Some(Ok(inbound)) => {
                        idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
                        // A first delivery while the window had room for the
                        // last IDLE: everything published before then came
                        // already, so the queue was empty IDLE ago.
                        let now = crate::core::time::now_ms();
                        // Not while some of its messages failed and come again
                        // (the time must not pass them; see state::drained).
                        if let Some(code) = source.as_ref().filter(|c| {
                            !inbound.redelivered
                                && window.had_room(usize::from(prefetch), now)
                                && !self.hub.router.source_failing(c, now)
                        }) {
                            self.hub.router.source_drained(code, now - IDLE.as_millis() as i64);
                        }
                        let slot = window.take(usize::from(prefetch));
                        self.dispatch(&feed, inbound, settler.clone(), slot);
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(AmqpError::Broker { op: "basic.consume", message: format!("consumer of {queue} cancelled") }),
                },
            }
        }
    }

    /// Hands one delivery to the router in a task of its own.
    /// `slot` is held until the delivery is settled.
    fn dispatch(&self, feed: &Feed, inbound: Inbound, settler: Settler, slot: Slot) {
        let router = self.hub.router.clone();
        let outbox = self.outbox.clone();
        let label = feed.label();
        let kind = feed.clone();
        let kind_done = feed.clone();
        // The floor of its clock-skew check: when its queue was last seen
        // empty before this delivery (crate::core::skew).
        let mid = inbound.message.message_id.clone();
        let seen_empty = match feed {
            Feed::Source(code) => {
                let now = crate::core::time::now_ms();
                router.progress().received(code, now);
                // Never seen empty: judged from this first delivery (kept if it fails).
                Some(router.floor_of(code, mid.as_deref()).unwrap_or(now))
            }
            _ => None,
        };
        let failing = self.failing.clone();
        let store = self.hub.store.clone();
        let mut ticket = match feed {
            Feed::Source(code) => Some(self.sequencer.admit_from(code, &inbound.message)),
            Feed::Unrouted => Some(self.sequencer.admit(&inbound.message)),
            Feed::Release | Feed::Dead => None,
        };
        self.work.spawn(async move {
            let _slot = slot;
            let ready = match ticket.as_mut() {
                Some(t) => t.ready().await,
                None => true,
            };
            if !ready {
                // What it depends on failed and comes again: so does this,
                // behind it (and its own dependants after).
                let _ = settler.reject(inbound.delivery_tag, true).await;
                drop(ticket);
                return;
            }
            let res = match kind {
                Feed::Source(_) | Feed::Unrouted => {
                    let turn = ticket.as_ref().and_then(|t| t.turn());
                    router
                        .handle_in_turn(&inbound, outbox.as_ref(), turn, seen_empty)
                        .await
                }
                Feed::Release => router.release(&inbound, outbox.as_ref()).await,
                Feed::Dead => router.dead(&inbound, outbox.as_ref()).await,
            };
            match res {
                Ok(_) => {
                    if let Feed::Source(code) = &kind_done {
                        router.progress().handled(code);
                        router.settle_floor(code, mid.as_deref(), seen_empty, true);
                    }
                    if let Some(lasted) = failing.clear(std::time::Instant::now()) {
                        tracing::info!(lasted_s = lasted.as_secs(), "messages handled again");
                    }
                    if let Some(t) = ticket {
                        t.finish(true);
                    }
                    if let Err(e) = settler.ack(inbound.delivery_tag).await {
                        tracing::warn!(error = %e, "ack failed; the broker will redeliver");
                    }
                }
                Err(e) => {
                    if let Feed::Source(code) = &kind_done {
                        router.settle_floor(code, mid.as_deref(), seen_empty, false);
                    }
                    // One line when failures start, then a reminder with a count.
                    match failing.raise(std::time::Instant::now()) {
                        Say::Started => tracing::warn!(error = %crate::core::text::Escaped(&e.to_string()), feed = label, retryable = e.is_retryable(), "message not handled; it will come again"),
                        Say::Reminder { suppressed, lasting } => tracing::warn!(error = %crate::core::text::Escaped(&e.to_string()), feed = label, retryable = e.is_retryable(), suppressed, lasting_s = lasting.as_secs(), "messages still not handled; they will come again"),
                        Say::Quiet => tracing::debug!(error = %crate::core::text::Escaped(&e.to_string()), feed = label, count = ?inbound.message.header("x-delivery-count"), "message not handled"),
                    }
                    if e.is_store() {
                        // Held until the store can write again (a flush
                        // succeeds), so an outage does not spend the queue's
                        // delivery limit; the consumer stalls at its prefetch.
                        store.suspect();
                        let _ = store.durable().await;
                    }
                    tokio::time::sleep(requeue_delay(&inbound.message)).await;
                    let _ = settler.reject(inbound.delivery_tag, true).await;
                    // Released only now, so what depends on it is requeued
                    // behind it, never ahead.
                    if let Some(t) = ticket {
                        t.finish(false);
                    }
                }
            }
        });
    }

    /// Keeps one consumer on the ingress queue of every registered agency:
    /// agencies added (on any instance) are picked up within a second, the
    /// consumers of removed ones are stopped. Ends with the first consumer
    /// that fails (the link is then gone).
    async fn sources(self, stop: CancellationToken) -> Result<(), AmqpError> {
        let mut running: HashMap<AgencyCode, CancellationToken> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(done) = tasks.join_next() => {
                    if let Ok((code, Err(e))) = done {
                        if self.hub.registry.get(&code).is_none() {
                            // Removed: its queue went with it.
                            running.remove(&code);
                            continue;
                        }
                        match e {
                            // Its queue is gone, on a node that is down or
                            // declared differently: retried at the next tick,
                            // the other sources keep flowing.
                            AmqpError::NoSuchQueue(_)
                            | AmqpError::QueueUnavailable(_)
                            | AmqpError::Conflict { .. } => {
                                tracing::error!(agency = %code, error = %e, "ingress queue not consumed");
                                running.remove(&code);
                            }
                            other => {
                                for t in running.values() {
                                    t.cancel();
                                }
                                while tasks.join_next().await.is_some() {}
                                return Err(other);
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    let now: HashSet<AgencyCode> =
                        self.hub.registry.list().into_iter().map(|a| a.code).collect();
                    running.retain(|code, token| {
                        let keep = now.contains(code);
                        if !keep {
                            token.cancel();
                        }
                        keep
                    });
                    for code in now {
                        if running.contains_key(&code) {
                            continue;
                        }
                        let token = stop.child_token();
                        running.insert(code.clone(), token.clone());
                        let me = self.clone();
                        tasks.spawn(async move {
                            let r = me.consume(Feed::Source(code.clone()), token).await;
                            (code, r)
                        });
                    }
                }
            }
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// Consumes until shutdown; returns the refusal if the broker's copy of the
/// store checkpoint refused the start (the hub then stops).
async fn run_ingress(
    hub: Arc<Hub>,
    link_tx: watch::Sender<Option<Arc<Link>>>,
    shutdown: CancellationToken,
    start_check: &integrity::StartCheck,
) -> Option<crate::state::integrity::IntegrityError> {
    loop {
        let link = match connect(&hub, &shutdown, start_check).await {
            Connected::Link(l) => l,
            Connected::Stopped => return None,
            Connected::Refused(e) => {
                shutdown.cancel();
                return Some(e);
            }
        };
        link_tx.send_replace(Some(link.clone()));
        let outbox = Arc::new(LinkOutbox::new(link.clone(), hub.topology.clone()));
        let c = Consumers {
            hub: hub.clone(),
            link: link.clone(),
            outbox: outbox.clone(),
            work: TaskTracker::new(),
            sequencer: Sequencer::new(),
            failing: Arc::new(Alarm::new()),
        };
        // Cancelled on shutdown or when any consumer fails (the link is then gone).
        let stop = shutdown.child_token();
        let mut consumers = tokio::task::JoinSet::new();
        for feed in [Feed::Unrouted, Feed::Release, Feed::Dead] {
            consumers.spawn(c.clone().consume(feed, stop.clone()));
        }
        consumers.spawn(c.clone().sources(stop.clone()));
        consumers.spawn(deadlines(hub.clone(), outbox.clone(), stop.clone()));
        while let Some(res) = consumers.join_next().await {
            if let Ok(Err(e)) = res {
                tracing::warn!(error = %e, "broker link lost");
                stop.cancel();
            }
        }
        // Drain: finish (or fail) everything in flight before closing.
        c.work.close();
        if tokio::time::timeout(Duration::from_secs(30), c.work.wait())
            .await
            .is_err()
        {
            tracing::warn!("in-flight work did not finish in 30s; the broker will redeliver it");
        }
        link_tx.send_replace(None);
        if tokio::time::timeout(STOP_CALL_LIMIT, link.close())
            .await
            .is_err()
        {
            tracing::warn!("broker link close not answered in time; dropped");
        }
        if shutdown.is_cancelled() {
            return None;
        }
    }
}

/// Expires destinations whose `lgsp-deliver-by` passed, once a second,
/// while this instance leads.
async fn deadlines(
    hub: Arc<Hub>,
    outbox: Arc<LinkOutbox>,
    stop: CancellationToken,
) -> Result<(), AmqpError> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {
                if !hub.leads() {
                    continue;
                }
                match hub.router.sweep_deadlines(outbox.as_ref(), crate::core::time::now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => metrics::deadlines_swept(n),
                    Err(e) => tracing::warn!(error = %e, "deadline sweep failed; will retry"),
                }
            }
        }
    }
}

//! The run: settings, the context every scenario works in, the once-a-second
//! monitor (progress line on stderr, timeline for the report), and the phase
//! runner that turns a driver into measured figures.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use truc::broker::Link;

use crate::hub::{Hub, Registered};
use crate::load::{self, Driven, Route, Shared, Stop, RELEASE_ON_ACCEPT, RELEASE_ON_RECEIVE};
use crate::procstat::{self, Snap};
use crate::stats::{now_ns, ns_to_s, percentiles, round1, round3, Pct};

/// Resolved settings of the run (after `--quick` defaults).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Scenarios to run.
    pub scenarios: Vec<String>,
    /// Quick mode.
    pub quick: bool,
    /// Broker URL.
    pub amqp_url: String,
    /// Source agencies (throughput).
    pub sources: usize,
    /// Destination agencies (throughput).
    pub dests: usize,
    /// Body sizes (throughput).
    pub sizes: Vec<usize>,
    /// Warm-up before measuring, s.
    pub warmup_s: f64,
    /// Measured time of each phase, s.
    pub measure_s: f64,
    /// Messages in flight in flat-out phases (raw and truc alike).
    pub window: usize,
    /// Load points as fractions of truc's maximum.
    pub loads: Vec<f64>,
    /// Also measure the raw hop into priority queues (throughput).
    pub raw_priority: bool,
    /// Absolute rates replacing the load points.
    pub rates: Vec<f64>,
    /// Priority mix.
    pub mix: String,
    /// Destination adapters' prefetch.
    pub prefetch: u16,
    /// Agencies connected at once (connections).
    pub connections: usize,
    /// Steady load across them, msg/s (connections).
    pub conn_rate: f64,
    /// Backlog of priority-0 envelopes (flash).
    pub backlog: u64,
    /// Rate of Hỏa tốc envelopes during the drain, msg/s (flash).
    pub flash_rate: f64,
    /// RSA/HMAC sources and destinations (rsa).
    pub rsa_agencies: usize,
    /// Pre-signed envelopes per algorithm (rsa).
    pub rsa_pool: usize,
    /// Longest wait for a phase to drain, s.
    pub drain_timeout_s: f64,
    /// Largest publishes in flight in fixed-rate phases.
    pub max_inflight: usize,
    /// truc binary (for the hubs a scenario starts itself).
    pub truc_bin: std::path::PathBuf,
    /// RUST_LOG of the started hubs.
    pub truc_log: String,
    /// Ingress prefetch of the started hubs.
    pub truc_prefetch: Option<u16>,
    /// Rounds of sled then PostgreSQL (stores).
    pub rounds: usize,
    /// Envelopes per second of both phases (gateway).
    pub gateway_rate: f64,
    /// Measured seconds of each phase (gateway).
    pub gateway_measure_s: f64,
    /// Document sizes, bytes (spaces).
    pub space_sizes: Vec<usize>,
    /// Repetitions of each measurement, the median reported (spaces).
    pub space_reps: usize,
    /// Chunks uploaded at once, each on its own keep-alive connection (spaces).
    pub space_inflight: usize,
}

/// One point of the timeline (one second).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Phase running.
    pub phase: String,
    /// Publishes started per second.
    pub sent_per_s: f64,
    /// Deliveries received per second (end to end).
    pub received_per_s: f64,
    /// `accepted` notices per second.
    pub accepted_per_s: f64,
    /// Status `01` messages confirmed per second.
    pub statuses_per_s: f64,
    /// Errors so far.
    pub errors: u64,
    /// truc CPU, % of one core.
    pub truc_cpu_pct: Option<f64>,
    /// truc resident memory, MiB.
    pub truc_rss_mib: Option<f64>,
    /// truc threads.
    pub truc_threads: Option<u64>,
    /// Broker CPU, % of one core.
    pub broker_cpu_pct: Option<f64>,
    /// Benchmark CPU, % of one core.
    pub bench_cpu_pct: Option<f64>,
    /// Messages ready in truc's ingress queue.
    pub ingress_depth: Option<u32>,
}

/// The processes watched.
#[derive(Debug, Clone, Copy)]
pub struct Pids {
    /// truc (child or `--truc-pid`).
    pub truc: Option<u32>,
    /// A second instance of the same hub, read with `truc` and added to it
    /// (CPU, RSS and threads are the sum of both).
    pub truc2: Option<u32>,
    /// The RabbitMQ node, when local and visible.
    pub broker: Option<u32>,
    /// This benchmark.
    pub me: u32,
}

/// Readings of the three processes at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snaps {
    truc: Option<Snap>,
    broker: Option<Snap>,
    me: Option<Snap>,
}

impl Pids {
    /// Reads all three (truc: both instances, added).
    pub fn snap(&self) -> Snaps {
        let truc = match (self.truc, self.truc2) {
            (Some(a), Some(b)) => procstat::read(a).zip(procstat::read(b)).map(|(a, b)| Snap {
                cpu_ticks: a.cpu_ticks + b.cpu_ticks,
                rss_kib: a.rss_kib + b.rss_kib,
                hwm_kib: a.hwm_kib + b.hwm_kib,
                threads: a.threads + b.threads,
                at: b.at,
            }),
            (a, _) => a.and_then(procstat::read),
        };
        Snaps {
            truc,
            broker: self.broker.and_then(procstat::read),
            me: procstat::read(self.me),
        }
    }
}

fn pct(a: Option<Snap>, b: Option<Snap>) -> Option<f64> {
    Some(round1(procstat::cpu_pct(&a?, &b?)))
}

/// The once-a-second monitor.
pub struct Monitor {
    /// Label of the phase running.
    pub label: Mutex<String>,
    /// The timeline.
    pub points: Mutex<Vec<Point>>,
    /// Watched processes.
    pub pids: Mutex<Pids>,
    /// truc's shared ingress queue, whose depth the progress line shows.
    pub ingress: Mutex<Option<String>>,
}

impl Monitor {
    /// The processes watched now.
    pub fn pids(&self) -> Pids {
        *self.pids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches another hub: its instances' process ids (CPU and memory
    /// added) and its ingress queue.
    pub fn watch_hub(&self, truc: Option<u32>, truc2: Option<u32>, ingress: &str) {
        {
            let mut p = self.pids.lock().unwrap_or_else(|p| p.into_inner());
            p.truc = truc;
            p.truc2 = truc2;
        }
        *self.ingress.lock().unwrap_or_else(|p| p.into_inner()) = Some(ingress.to_owned());
    }

    /// Sets the label shown in the progress line.
    pub fn set_label(&self, s: &str) {
        *self.label.lock().unwrap_or_else(|p| p.into_inner()) = s.to_owned();
    }

    /// Largest truc RSS (MiB) seen between `t0` and `t1` (s).
    pub fn max_rss(&self, t0: f64, t1: f64) -> Option<f64> {
        self.points
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|p| p.t_s >= t0 && p.t_s <= t1 + 1.0)
            .filter_map(|p| p.truc_rss_mib)
            .reduce(f64::max)
    }

    /// Runs until `stop`: one point and one progress line per second.
    pub async fn run(
        self: Arc<Self>,
        shared: Arc<Shared>,
        ctl: Arc<Link>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let t = &shared.totals;
        let read = || {
            [
                t.sent.load(Ordering::Relaxed),
                t.received.load(Ordering::Relaxed),
                t.accepted.load(Ordering::Relaxed),
                t.statuses_sent.load(Ordering::Relaxed),
            ]
        };
        let mut prev = read();
        let mut prev_pids = self.pids();
        let mut prev_snaps = prev_pids.snap();
        let mut prev_at = Instant::now();
        let mut prev_label = self.label.lock().unwrap_or_else(|p| p.into_inner()).clone();
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = read();
            let pids = self.pids();
            let snaps = pids.snap();
            // Another hub since the last reading: no CPU figure for this second.
            let same_truc = (pids.truc, pids.truc2) == (prev_pids.truc, prev_pids.truc2);
            let secs = prev_at.elapsed().as_secs_f64().max(1e-3);
            prev_at = Instant::now();
            let rate = |i: usize| round1((now[i] - prev[i]) as f64 / secs);
            let ingress = self
                .ingress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let depth = match &ingress {
                Some(q) => tokio::time::timeout(Duration::from_secs(2), ctl.queue_info(q))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|i| i.messages),
                None => None,
            };
            // The point covers the last second: label it with the phase running when it began.
            let label = std::mem::replace(
                &mut prev_label,
                self.label.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            );
            let point = Point {
                t_s: round1(ns_to_s(now_ns())),
                phase: label.clone(),
                sent_per_s: rate(0),
                received_per_s: rate(1),
                accepted_per_s: rate(2),
                statuses_per_s: rate(3),
                errors: shared.error_count(),
                truc_cpu_pct: if same_truc {
                    pct(prev_snaps.truc, snaps.truc)
                } else {
                    None
                },
                truc_rss_mib: snaps.truc.map(|s| round1(s.rss_kib as f64 / 1024.0)),
                truc_threads: snaps.truc.map(|s| s.threads),
                broker_cpu_pct: pct(prev_snaps.broker, snaps.broker),
                bench_cpu_pct: pct(prev_snaps.me, snaps.me),
                ingress_depth: depth,
            };
            let opt = |v: Option<f64>, unit: &str| {
                v.map(|v| format!("{v:.0}{unit}"))
                    .unwrap_or_else(|| "-".into())
            };
            eprintln!(
                "[{:>6.1}s] {label:<28} sent {:>7.0}/s  recv {:>7.0}/s  accepted {:>7.0}/s  ingress {:>6}  errors {}  | truc {} cpu {} rss | broker {} | bench {}",
                point.t_s,
                point.sent_per_s,
                point.received_per_s,
                point.accepted_per_s,
                depth.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                point.errors,
                opt(point.truc_cpu_pct, "%"),
                opt(point.truc_rss_mib, "MiB"),
                opt(point.broker_cpu_pct, "%"),
                opt(point.bench_cpu_pct, "%"),
            );
            self.points
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(point);
            prev = now;
            prev_snaps = snaps;
            prev_pids = pids;
        }
    }
}

/// How a phase drives its load.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Flat out with `window` messages in flight (released on receipt).
    Max {
        /// Messages in flight.
        window: usize,
    },
    /// Fixed rate, msg/s.
    Rate(f64),
    /// `n` messages, `window` in flight, released on the `accepted` notice
    /// (for backlogs nobody consumes yet); bounded by `limit`.
    Count {
        /// Messages.
        n: u64,
        /// Messages in flight.
        window: usize,
        /// Time limit.
        limit: Duration,
    },
}

/// A phase to run.
#[derive(Debug, Clone)]
pub struct PhaseSpec {
    /// Scenario it belongs to.
    pub scenario: &'static str,
    /// Human name (`truc 1 KiB max`).
    pub name: String,
    /// `raw`, `truc` (over AMQP) or `gateway` (truc's HTTPS gateway).
    pub path: &'static str,
    /// Body size.
    pub body_bytes: usize,
    /// Driver.
    pub mode: Mode,
    /// Not measured at the start.
    pub warmup: Duration,
    /// Measured after the warm-up.
    pub measure: Duration,
    /// Ends the phase before `measure` is up when cancelled.
    pub stop_early: Option<CancellationToken>,
    /// Drain timeout replacing the run's, s.
    pub drain_timeout_s: Option<f64>,
}

/// The figures of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// Phase id (in `x-bench-phase`).
    pub id: u16,
    /// Scenario.
    pub scenario: String,
    /// Name.
    pub name: String,
    /// `raw`, `truc` or `gateway`.
    pub path: String,
    /// Body size.
    pub body_bytes: usize,
    /// `max`, `rate` or `count`.
    pub mode: String,
    /// Messages in flight (max, count).
    pub window: Option<usize>,
    /// Offered rate (rate), msg/s.
    pub offered_rate: Option<f64>,
    /// Start, s on the run clock.
    pub t_start_s: f64,
    /// Measuring from, s.
    pub t_measure_s: f64,
    /// Driver stopped at, s.
    pub t_end_s: f64,
    /// Seconds measured.
    pub measured_s: f64,
    /// Publishes started.
    pub sent: u64,
    /// Publishes failed.
    pub failed: u64,
    /// Received by destinations.
    pub received: u64,
    /// `accepted` notices.
    pub accepted: u64,
    /// `rejected` notices.
    pub rejected: u64,
    /// Published (confirmed), neither received nor rejected by the end of the drain.
    pub undelivered: u64,
    /// Open loop: messages the driver could not start in time.
    pub behind_schedule: u64,
    /// A pre-signed pool ran out before the time was up.
    pub pool_exhausted: bool,
    /// Messages received by destinations per second inside the measured
    /// window (the driver's own window; truc's status work is still running
    /// when it ends), msg/s.
    pub msgs_per_s: f64,
    /// Sustained rate with the drain included: the messages sent in the
    /// measured window (and received), divided by the time from the start of
    /// the window until the phase's last piece of work arrived (the last
    /// delivery, or for truc the last `accepted`, `delivered` or `status`
    /// notice, i.e. every status `01` of the phase answered); `None` when the
    /// phase did not drain or nothing was received.
    pub sustained_msgs_per_s: Option<f64>,
    /// Seconds from the end of the driver to that last piece of work.
    pub work_done_after_s: Option<f64>,
    /// `accepted` notices per second in the measured window.
    pub accepted_per_s: f64,
    /// End-to-end latency of messages sent in the measured window.
    pub e2e: Option<Pct>,
    /// Acceptance-notice latency of messages sent in the measured window.
    pub accept: Option<Pct>,
    /// End-to-end latency per Priority code.
    pub e2e_by_priority: BTreeMap<String, Pct>,
    /// truc CPU in the measured window, % of one core.
    pub truc_cpu_pct: Option<f64>,
    /// truc CPU time per message received, µs.
    pub truc_cpu_us_per_msg: Option<f64>,
    /// Largest truc RSS during the phase, MiB.
    pub truc_rss_mib_max: Option<f64>,
    /// Broker CPU in the measured window, % of one core.
    pub broker_cpu_pct: Option<f64>,
    /// Broker CPU time per message received, µs.
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Benchmark CPU in the measured window, % of one core.
    pub bench_cpu_pct: Option<f64>,
    /// truc's own account (`/metrics`) in the measured window.
    pub router: Option<RouterTimes>,
    /// Everything sent was received (and accepted) within the drain timeout.
    pub drained: bool,
    /// Seconds the drain took.
    pub drain_s: f64,
}

impl PhaseResult {
    /// The rate to compare phases by: the sustained rate (drain included)
    /// when known, else the in-window rate.
    pub fn rate(&self) -> f64 {
        self.sustained_msgs_per_s.unwrap_or(self.msgs_per_s)
    }
}

/// Where truc's router spends a message's time, from its `/metrics`
/// histograms (sums and counts) over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct RouterTimes {
    /// Ingress messages handled (envelopes, statuses…).
    pub handled: u64,
    /// Mean time to handle one ingress message, ms.
    pub handle_ms_mean: f64,
    /// Publishes confirmed.
    pub confirms: u64,
    /// Mean wait for one publisher confirm, ms.
    pub confirm_ms_mean: f64,
    /// Confirmed publishes per ingress message.
    pub confirms_per_message: f64,
}

fn router_times(a: &HashMap<String, f64>, b: &HashMap<String, f64>) -> Option<RouterTimes> {
    let d = |k: &str| Some(b.get(k)? - a.get(k).copied().unwrap_or(0.0));
    let handled = d("truc_ingress_seconds_count")?;
    let confirms = d("truc_publish_confirm_seconds_count")?;
    if handled <= 0.0 {
        return None;
    }
    Some(RouterTimes {
        handled: handled as u64,
        handle_ms_mean: round3(d("truc_ingress_seconds_sum")? / handled * 1e3),
        confirms: confirms as u64,
        confirm_ms_mean: if confirms > 0.0 {
            round3(d("truc_publish_confirm_seconds_sum")? / confirms * 1e3)
        } else {
            0.0
        },
        confirms_per_message: round3(confirms / handled),
    })
}

/// Everything a scenario works with.
pub struct Ctx {
    /// Settings.
    pub s: Settings,
    /// The hub.
    pub hub: Hub,
    /// Shared load state.
    pub shared: Arc<Shared>,
    /// Control connection (declare, delete, queue depth).
    pub ctl: Arc<Link>,
    /// Monitor.
    pub monitor: Arc<Monitor>,
    /// Phases run.
    pub phases: Vec<PhaseResult>,
    /// Registered agencies (their queues are deleted at the end).
    pub agencies: Vec<Registered>,
    /// Extra queues to delete at the end.
    pub queues: Vec<String>,
    /// Agency code prefix of this run (`B<pid>`).
    pub tag: String,
    /// Raw 1 KiB one-hop maximum measured in this run, msg/s.
    pub baseline: Option<f64>,
    /// Per-scenario results.
    pub results: serde_json::Map<String, Value>,
    /// Notes for the report.
    pub notes: Vec<String>,
    /// truc's peak RSS (`VmHWM`, KiB) as it was before a scenario reset it
    /// (`spaces` does, to measure its own peak): the run's peak is the
    /// larger of this and the `VmHWM` at the end.
    pub truc_hwm_before_reset_kib: u64,
}

impl Ctx {
    /// Registers `codes` (with an optional RSA key), `concurrency` at a time.
    pub async fn register(
        &mut self,
        codes: &[String],
        pem: Option<&str>,
        concurrency: usize,
    ) -> Result<Vec<Registered>, String> {
        use futures_util::stream::{self, StreamExt};
        let hub = &self.hub;
        let results: Vec<Result<Registered, String>> = stream::iter(codes.iter())
            .map(|c| async move { hub.register(c, &format!("Cơ quan thử tải {c}"), pem).await })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        let mut out = Vec::new();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(reg) => {
                    self.agencies.push(reg.clone());
                    out.push(reg);
                }
                Err(e) => {
                    self.shared.error("register", &e);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Waits until everything sent in phase `id` was received (and accepted
    /// when `accept`), then until the hub is idle (empty ingress, no status in flight).
    async fn drain(
        &self,
        id: u16,
        receive: bool,
        accept: bool,
        truc: bool,
        timeout_s: f64,
    ) -> bool {
        let slot = self.shared.slot(id);
        let deadline = Instant::now() + Duration::from_secs_f64(timeout_s);
        let settled = || {
            let sent = slot.sent.load(Ordering::Relaxed);
            let failed = slot.failed.load(Ordering::Relaxed);
            let done = sent - failed.min(sent);
            slot.publishing.load(Ordering::Relaxed) == 0
                && (!receive
                    || slot.received.load(Ordering::Relaxed)
                        + slot.rejected.load(Ordering::Relaxed)
                        >= done)
                && (!accept
                    || slot.accepted.load(Ordering::Relaxed)
                        + slot.rejected.load(Ordering::Relaxed)
                        >= done)
        };
        while !settled() {
            if Instant::now() >= deadline || self.shared.cancel.is_cancelled() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !truc {
            return true;
        }
        // The hub is idle when its ingress stays empty and no status is in flight.
        let ingress = format!("{}ingress", self.hub.prefix);
        let mut quiet = 0;
        while quiet < 3 {
            if Instant::now() >= deadline || self.shared.cancel.is_cancelled() {
                return false;
            }
            let depth = tokio::time::timeout(Duration::from_secs(2), self.ctl.queue_info(&ingress))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|i| i.messages);
            // Every status 01 confirmed has come back to its source as a
            // `delivered` and a `status` notice.
            let t = &self.shared.totals;
            let answered = t.statuses_sent.load(Ordering::Relaxed);
            let statuses_done = t.status_notices.load(Ordering::Relaxed) >= answered
                && t.delivered_notices.load(Ordering::Relaxed) >= answered;
            if depth == Some(0) && self.shared.statuses_in_flight() == 0 && statuses_done {
                quiet += 1;
            } else {
                quiet = 0;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    /// Runs one phase over `route` and records its figures.
    pub async fn phase(&mut self, spec: PhaseSpec, route: Arc<Route>) -> PhaseResult {
        let id = self.phases.len() as u16 + 1;
        self.monitor.set_label(&spec.name);
        let shared = self.shared.clone();
        let t_start = now_ns();
        let driver = {
            let (shared, route) = (shared.clone(), route.clone());
            let early = spec
                .stop_early
                .clone()
                .unwrap_or_else(|| shared.cancel.child_token());
            let total = spec.warmup + spec.measure;
            match spec.mode {
                Mode::Max { window } => tokio::spawn(load::drive_closed(
                    shared,
                    route,
                    id,
                    window,
                    RELEASE_ON_RECEIVE,
                    Stop::After(total),
                    early,
                )),
                Mode::Rate(rate) => {
                    let max = self.s.max_inflight;
                    tokio::spawn(load::drive_rate(shared, route, id, rate, total, max, early))
                }
                Mode::Count { n, window, limit } => tokio::spawn(load::drive_closed(
                    shared,
                    route,
                    id,
                    window,
                    RELEASE_ON_ACCEPT,
                    Stop::Count(n, limit),
                    early,
                )),
            }
        };
        let count_mode = matches!(spec.mode, Mode::Count { .. });
        // Through truc, over AMQP or its gateway: its metrics, its drain.
        let truc = spec.path != "raw";
        let (t_measure, snaps_a) = if count_mode {
            (t_start, self.monitor.pids().snap())
        } else {
            tokio::select! {
                _ = tokio::time::sleep(spec.warmup) => {}
                _ = shared.cancel.cancelled() => {}
            }
            (now_ns(), self.monitor.pids().snap())
        };
        let metrics_a = if truc {
            self.hub.metrics().await
        } else {
            HashMap::new()
        };
        let limit = match spec.mode {
            Mode::Count { limit, .. } => limit,
            _ => spec.warmup + spec.measure,
        } + Duration::from_secs(10);
        let driven = match tokio::time::timeout(limit, driver).await {
            Ok(Ok(d)) => d,
            _ => {
                shared.error("driver", format!("{}: driver did not finish", spec.name));
                shared.cancel.cancel();
                Driven::default()
            }
        };
        let t_end = now_ns().max(t_measure + 1);
        let snaps_b = self.monitor.pids().snap();
        let metrics_b = if truc {
            self.hub.metrics().await
        } else {
            HashMap::new()
        };
        self.monitor.set_label(&format!("{} (drain)", spec.name));
        let drain_start = Instant::now();
        let drain_timeout_s = spec.drain_timeout_s.unwrap_or(self.s.drain_timeout_s);
        let drained = self
            .drain(id, !count_mode, truc, truc, drain_timeout_s)
            .await;
        let drain_s = round1(drain_start.elapsed().as_secs_f64());
        if !drained {
            shared.error(
                "drain",
                format!(
                    "{}: not drained within {}s",
                    spec.name, self.s.drain_timeout_s
                ),
            );
        }
        let window_s = ns_to_s(t_end - t_measure);
        let in_window = |s: &load::Sample| s.sent_ns >= t_measure && s.sent_ns <= t_end;
        let (mut lat, mut by_prio, received_in_window) = {
            let e2e = shared.e2e.lock().unwrap_or_else(|p| p.into_inner());
            let mut lat = Vec::new();
            let mut by_prio: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
            let mut recv = 0u64;
            for s in e2e.iter().filter(|s| s.phase == id) {
                let at = s.sent_ns + s.lat_ns;
                if at >= t_measure && at <= t_end {
                    recv += 1;
                }
                if in_window(s) {
                    lat.push(s.lat_ns);
                    by_prio.entry(s.prio).or_default().push(s.lat_ns);
                }
            }
            (lat, by_prio, recv)
        };
        let (mut acc, accepted_in_window) = {
            let a = shared.accept.lock().unwrap_or_else(|p| p.into_inner());
            let mut acc = Vec::new();
            let mut n = 0u64;
            for s in a.iter().filter(|s| s.phase == id) {
                let at = s.sent_ns + s.lat_ns;
                if at >= t_measure && at <= t_end {
                    n += 1;
                }
                if in_window(s) {
                    acc.push(s.lat_ns);
                }
            }
            (acc, n)
        };
        let slot = shared.slot(id);
        let sent = slot.sent.load(Ordering::Relaxed);
        let failed = slot.failed.load(Ordering::Relaxed);
        let received = slot.received.load(Ordering::Relaxed);
        let msgs_per_s = round1(received_in_window as f64 / window_s);
        // Everything of the phase has arrived once it drained: its last piece
        // of work marks when the work the window started was done.
        let sent_in_window_received = lat.len() as u64;
        let t_done = shared
            .totals
            .last_work_ns
            .load(Ordering::Relaxed)
            .max(t_end);
        let (sustained_msgs_per_s, work_done_after_s) = if drained && sent_in_window_received > 0 {
            (
                Some(round1(
                    sent_in_window_received as f64 / ns_to_s(t_done - t_measure),
                )),
                Some(round3(ns_to_s(t_done - t_end))),
            )
        } else {
            (None, None)
        };
        let accepted_per_s = round1(accepted_in_window as f64 / window_s);
        let per_msg = |a: Option<Snap>, b: Option<Snap>| {
            let (a, b) = (a?, b?);
            let n = if count_mode {
                accepted_in_window
            } else {
                received_in_window
            };
            (n > 0).then(|| round1(procstat::cpu_secs(&a, &b) * 1e6 / n as f64))
        };
        let undelivered = if count_mode {
            0
        } else {
            sent.saturating_sub(failed)
                .saturating_sub(received)
                .saturating_sub(slot.rejected.load(Ordering::Relaxed))
        };
        if undelivered > 0 {
            shared.error(
                "undelivered",
                format!("{}: {undelivered} confirmed but not received", spec.name),
            );
        }
        let result = PhaseResult {
            id,
            scenario: spec.scenario.to_owned(),
            name: spec.name.clone(),
            path: spec.path.to_owned(),
            body_bytes: spec.body_bytes,
            mode: match spec.mode {
                Mode::Max { .. } => "max",
                Mode::Rate(_) => "rate",
                Mode::Count { .. } => "count",
            }
            .to_owned(),
            window: match spec.mode {
                Mode::Max { window } | Mode::Count { window, .. } => Some(window),
                Mode::Rate(_) => None,
            },
            offered_rate: match spec.mode {
                Mode::Rate(r) => Some(round1(r)),
                _ => None,
            },
            t_start_s: round3(ns_to_s(t_start)),
            t_measure_s: round3(ns_to_s(t_measure)),
            t_end_s: round3(ns_to_s(t_end)),
            measured_s: round3(window_s),
            sent,
            failed,
            received,
            accepted: slot.accepted.load(Ordering::Relaxed),
            rejected: slot.rejected.load(Ordering::Relaxed),
            undelivered,
            behind_schedule: driven.behind,
            pool_exhausted: driven.exhausted,
            msgs_per_s,
            sustained_msgs_per_s,
            work_done_after_s,
            accepted_per_s,
            e2e: percentiles(&mut lat),
            accept: percentiles(&mut acc),
            e2e_by_priority: by_prio
                .iter_mut()
                .filter_map(|(p, v)| Some((p.to_string(), percentiles(v)?)))
                .collect(),
            truc_cpu_pct: pct(snaps_a.truc, snaps_b.truc),
            truc_cpu_us_per_msg: if truc {
                per_msg(snaps_a.truc, snaps_b.truc)
            } else {
                None
            },
            truc_rss_mib_max: self
                .monitor
                .max_rss(ns_to_s(t_start), ns_to_s(now_ns()))
                .into_iter()
                .chain(snaps_b.truc.map(|s| round1(s.rss_kib as f64 / 1024.0)))
                .reduce(f64::max),
            broker_cpu_pct: pct(snaps_a.broker, snaps_b.broker),
            broker_cpu_us_per_msg: per_msg(snaps_a.broker, snaps_b.broker),
            bench_cpu_pct: pct(snaps_a.me, snaps_b.me),
            router: router_times(&metrics_a, &metrics_b),
            drained,
            drain_s,
        };
        let e2e = result
            .e2e
            .as_ref()
            .map(|p| {
                format!(
                    "e2e p50 {:.2} p99 {:.2} max {:.1} ms",
                    p.p50_ms, p.p99_ms, p.max_ms
                )
            })
            .unwrap_or_default();
        let router = result
            .router
            .as_ref()
            .map(|r| {
                format!(
                    "; router: {:.1} ms per ingress message, {:.2} confirms of {:.1} ms each",
                    r.handle_ms_mean, r.confirms_per_message, r.confirm_ms_mean
                )
            })
            .unwrap_or_default();
        eprintln!(
            "== {}: {:.0} msg/s over {:.1}s, sustained {} msg/s with the drain (sent {sent}, received {received}, failed {failed}) {e2e}; truc cpu {}%{router}",
            result.name,
            result.msgs_per_s,
            result.measured_s,
            result
                .sustained_msgs_per_s
                .map(|r| format!("{r:.0}"))
                .unwrap_or_else(|| "-".into()),
            result.truc_cpu_pct.map(|c| format!("{c:.0}")).unwrap_or_else(|| "-".into()),
        );
        self.phases.push(result.clone());
        result
    }
}

//! `truc-bench`: the load benchmark of truc against the raw broker, in the
//! same run.
//!
//! It starts `target/release/truc serve` as a child with its own prefix,
//! data directory, admin port and token (or uses a running truc with
//! `--hub-addr`), registers agencies through the admin API, connects them
//! over AMQP, and drives signed envelopes through truc while destination
//! adapters verify, ack and answer status `01`. In the same run it measures
//! the raw one-hop baseline (publisher → durable queue → consumer, same body
//! size, persistent, publisher confirms) and reports truc's throughput as a
//! ratio of it, end-to-end and acceptance-notice latency, and truc's CPU and
//! memory. Results go to a JSON file and a self-contained HTML report; a
//! progress line goes to stderr once a second. See `bench/README.md`.

mod gateway;
mod hub;
mod load;
mod procstat;
mod report;
mod run;
mod scenarios;
mod spaces;
mod stats;
mod stores;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use truc::broker::Link;

use truc::code::AgencyCode;

use crate::hub::{Hub, Registered};
use crate::load::Shared;
use crate::run::{Ctx, Monitor, Pids, Settings};
use crate::stats::round1;

/// A scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Raw one hop vs truc, flat out and at fixed fractions of truc's maximum.
    Throughput,
    /// Thousands of agencies connected at once under a steady load.
    Connections,
    /// Hỏa tốc latency behind a backlog of Thường for one destination.
    Flash,
    /// HMAC-SHA256 vs RSA-SHA256 signed load.
    Rsa,
    /// A quiet source's latency alone and under another source's flood.
    Fairness,
    /// truc on sled, on PostgreSQL, and two instances on one PostgreSQL
    /// store, flat out (needs PostgreSQL; not part of `all`).
    Stores,
    /// Send → receive latency at a fixed rate through the agencies' HTTPS
    /// gateway, against AMQP on the same hub.
    Gateway,
    /// MB/s of 20 MB and 100 MB documents through upload spaces, against
    /// the raw broker and `cp` of the same file, in the same run.
    Spaces,
    /// Every scenario but `stores` (`gateway` before `fairness`, `spaces`
    /// last).
    All,
}

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "truc-bench",
    version,
    about = "Load benchmark of truc against the raw broker, in the same run"
)]
struct Args {
    /// Scenario.
    #[arg(long, value_enum, default_value = "throughput")]
    scenario: Scenario,
    /// Smoke check: short phases, small backlog, fewer connections (a whole run in about a minute).
    #[arg(long)]
    quick: bool,
    /// Print the result object as JSON on stdout (the summary goes to stderr).
    #[arg(long)]
    json: bool,
    /// JSON result file.
    #[arg(long, default_value = "bench/out/result.json")]
    out: PathBuf,
    /// HTML report (default: the result file with `.html`).
    #[arg(long)]
    html: Option<PathBuf>,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "TRUC_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// truc binary to start.
    #[arg(long, default_value = "target/release/truc")]
    truc_bin: PathBuf,
    /// RUST_LOG of the started truc (its default is `info`).
    #[arg(long, default_value = "info")]
    truc_log: String,
    /// Ingress prefetch of the started truc (its `prefetch` setting; default: truc's own, 512).
    #[arg(long)]
    truc_prefetch: Option<u16>,
    /// Use a running truc: its admin API address (no child is started).
    #[arg(long, requires = "token")]
    hub_addr: Option<String>,
    /// Admin token of the running truc.
    #[arg(long)]
    token: Option<String>,
    /// Prefix of the running truc.
    #[arg(long, default_value = "lgsp.")]
    prefix: String,
    /// Process id of the running truc (to sample its CPU and memory).
    #[arg(long)]
    truc_pid: Option<u32>,
    /// Source agencies (throughput, stores; default 50, stores 20).
    #[arg(long)]
    sources: Option<usize>,
    /// Destination agencies (throughput, stores; default 50, stores 20).
    #[arg(long)]
    dests: Option<usize>,
    /// Body sizes in bytes (throughput).
    #[arg(long, value_delimiter = ',', default_value = "1024,65536")]
    sizes: Vec<usize>,
    /// Measured seconds per phase (default 20; quick 2).
    #[arg(long)]
    duration: Option<f64>,
    /// Warm-up seconds before measuring (default 3; quick 1).
    #[arg(long)]
    warmup: Option<f64>,
    /// Messages in flight in flat-out phases, raw and truc alike.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Load points as fractions of truc's maximum.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.9")]
    loads: Vec<f64>,
    /// Also measure the raw one hop into priority queues (x-max-priority 5,
    /// like truc's ingress and inboxes); on by default except in quick mode.
    #[arg(long)]
    raw_priority: Option<bool>,
    /// Fixed rates (msg/s) to use instead of the load points.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Priority mix, code:weight (codes 0-3).
    #[arg(long, default_value = "0:70,1:20,2:9,3:1")]
    priority_mix: String,
    /// Destination adapters' prefetch.
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
    /// Agencies connected at once (connections; default 2000, quick 300).
    #[arg(long)]
    connections: Option<usize>,
    /// Steady load across them, msg/s (default 1000; quick 300).
    #[arg(long)]
    conn_rate: Option<f64>,
    /// Backlog of Thường envelopes (flash; default 100000, quick 5000).
    #[arg(long)]
    backlog: Option<u64>,
    /// Hỏa tốc envelopes per second during the drain (flash).
    #[arg(long, default_value_t = 50.0)]
    flash_rate: f64,
    /// HMAC sources, RSA sources and destinations (rsa; each).
    #[arg(long, default_value_t = 10)]
    rsa_agencies: usize,
    /// Pre-signed envelopes per algorithm (rsa; default 20000, quick 1500); RSA-2048 signing costs the benchmark several ms each.
    #[arg(long)]
    rsa_pool: Option<usize>,
    /// Longest wait for a phase to drain, s (default 60; quick 15).
    #[arg(long)]
    drain_timeout: Option<f64>,
    /// Hard limit on the whole run, s (default 3600; quick 180).
    #[arg(long)]
    max_seconds: Option<f64>,
    /// Rounds of sled then PostgreSQL, back to back (stores): `pg_vs_sled`
    /// is the median of the rounds' ratios, so a drift of the machine
    /// during the run weighs on both sides of each ratio alike.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Envelopes per second in both phases (gateway).
    #[arg(long, default_value_t = 200.0)]
    gateway_rate: f64,
    /// The agencies' gateway of the running truc (`--hub-addr`), host:port,
    /// plain HTTP (gateway).
    #[arg(long, requires = "hub_addr")]
    gateway_addr: Option<String>,
    /// Document sizes in bytes (spaces; decimal MB by default).
    #[arg(long, value_delimiter = ',', default_value = "20000000,100000000")]
    space_sizes: Vec<usize>,
    /// Repetitions of each measurement, the median reported (spaces; default 3, quick 1).
    #[arg(long)]
    space_reps: Option<usize>,
    /// Chunks uploaded at once, each on its own keep-alive connection
    /// (spaces; 1: one after the other on one connection).
    #[arg(long, default_value_t = 1)]
    space_inflight: usize,
}

impl Args {
    fn settings(&self) -> Settings {
        let q = self.quick;
        let scenarios = match self.scenario {
            // `gateway` before `fairness`, whose flood leaves the broker
            // busy for seconds after it ends; `spaces` last (it waits for
            // an idle router first, and its 100 MB messages would weigh on
            // whatever followed it).
            Scenario::All => vec![
                "throughput",
                "connections",
                "flash",
                "rsa",
                "gateway",
                "fairness",
                "spaces",
            ],
            Scenario::Throughput => vec!["throughput"],
            Scenario::Connections => vec!["connections"],
            Scenario::Flash => vec!["flash"],
            Scenario::Rsa => vec!["rsa"],
            Scenario::Fairness => vec!["fairness"],
            Scenario::Stores => vec!["stores"],
            Scenario::Gateway => vec!["gateway"],
            Scenario::Spaces => vec!["spaces"],
        };
        let agencies = if self.scenario == Scenario::Stores {
            20
        } else {
            50
        };
        Settings {
            scenarios: scenarios.into_iter().map(str::to_owned).collect(),
            quick: q,
            amqp_url: self.amqp_url.clone(),
            sources: self.sources.unwrap_or(agencies).max(1),
            dests: self.dests.unwrap_or(agencies).max(1),
            sizes: self.sizes.clone(),
            warmup_s: self.warmup.unwrap_or(if q { 1.0 } else { 3.0 }),
            measure_s: self.duration.unwrap_or(if q { 2.0 } else { 20.0 }),
            window: self.window.max(1),
            loads: self.loads.clone(),
            raw_priority: self.raw_priority.unwrap_or(!q),
            rates: self.rate.clone(),
            mix: self.priority_mix.clone(),
            prefetch: self.prefetch.max(1),
            connections: self.connections.unwrap_or(if q { 300 } else { 2000 }),
            conn_rate: self.conn_rate.unwrap_or(if q { 300.0 } else { 1000.0 }),
            backlog: self.backlog.unwrap_or(if q { 5_000 } else { 100_000 }),
            flash_rate: self.flash_rate,
            rsa_agencies: self.rsa_agencies.max(1),
            rsa_pool: self.rsa_pool.unwrap_or(if q { 1_500 } else { 20_000 }),
            drain_timeout_s: self.drain_timeout.unwrap_or(if q { 15.0 } else { 60.0 }),
            max_inflight: 8192,
            truc_bin: self.truc_bin.clone(),
            truc_log: self.truc_log.clone(),
            truc_prefetch: self.truc_prefetch,
            rounds: self.rounds.max(1),
            gateway_rate: self.gateway_rate.max(1.0),
            gateway_measure_s: self.duration.unwrap_or(if q { 5.0 } else { 25.0 }),
            space_sizes: self
                .space_sizes
                .iter()
                .copied()
                .filter(|&n| n > 0)
                .collect(),
            space_reps: self.space_reps.unwrap_or(if q { 1 } else { 3 }).max(1),
            space_inflight: self.space_inflight.clamp(1, 16),
        }
    }
}

/// `[gateway]` of the started truc's access policy when the gateway
/// scenario runs: calls per second and burst per agency (the default, 20/s,
/// is below the calls of one agency at 200 envelopes/s).
const GATEWAY_CALLS: (f64, u32) = (5000.0, 5000);

/// Kernel release, for the report.
fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_default()
}

/// The run's start time, RFC 3339.
fn started_at() -> String {
    truc::time::format_rfc3339(truc::time::now_ms())
}

/// Runs the selected scenarios; a scenario that fails is recorded and the next one runs.
async fn run_scenarios(ctx: &mut Ctx) {
    for name in ctx.s.scenarios.clone() {
        if ctx.shared.cancel.is_cancelled() {
            break;
        }
        let errors_before = ctx.shared.error_count();
        // Every scenario is reported against a raw baseline measured in
        // this run; `spaces` measures its own, at its documents' sizes.
        if name != "throughput" && name != "spaces" && ctx.baseline.is_none() {
            let (m, k) = (ctx.s.sources, ctx.s.dests);
            match scenarios::raw_baseline(ctx, "baseline", 1024, m, k).await {
                Ok(p) => {
                    ctx.baseline = Some(p.rate());
                    ctx.results
                        .insert("baseline".into(), json!({ "raw_1kib_max": p }));
                }
                Err(e) => ctx.shared.error("baseline", e),
            }
        }
        let res = match name.as_str() {
            "throughput" => scenarios::throughput(ctx).await,
            "connections" => scenarios::connections(ctx).await,
            "flash" => scenarios::flash(ctx).await,
            "rsa" => scenarios::rsa(ctx).await,
            "fairness" => scenarios::fairness(ctx).await,
            "gateway" => gateway::gateway(ctx).await,
            "spaces" => spaces::spaces(ctx).await,
            "stores" => stores::stores(ctx).await,
            _ => Err(format!("unknown scenario {name}")),
        };
        let errors = ctx.shared.error_count() - errors_before;
        let v = match res {
            Ok(mut v) => {
                v["errors"] = json!(errors);
                v
            }
            Err(e) => {
                eprintln!("scenario {name} failed: {e}");
                ctx.shared.error(&format!("scenario-{name}"), &e);
                json!({ "failed": e, "errors": errors + 1 })
            }
        };
        ctx.results.insert(name, v);
    }
}

/// What the run created on the broker, to delete at the end.
struct Leftovers {
    queues: Vec<String>,
    exchanges: Vec<String>,
}

/// Everything the run created on the broker: the raw queues (`raw`), the
/// inbox and notify queues of the agencies it registered, and, for a truc it
/// started, every exchange and queue of that truc's topology under the run's
/// prefix (fixed queues, delay buckets, the queues of every agency the hub
/// knows: `listed`). A running truc (`--hub-addr`) keeps its own.
fn leftovers(
    hub: &Hub,
    agencies: &[Registered],
    listed: &[AgencyCode],
    raw: &[String],
) -> Leftovers {
    let mut queues: Vec<String> = raw.to_vec();
    let mut exchanges = Vec::new();
    for a in agencies {
        queues.push(a.inbox.clone());
        queues.push(a.notify.clone());
    }
    if hub.started {
        let topo = hub.topology();
        let codes: Vec<AgencyCode> = agencies
            .iter()
            .map(|a| a.creds.code.clone())
            .chain(listed.iter().cloned())
            .collect();
        queues.extend(topo.queue_names(&codes));
        exchanges = topo.exchange_names();
    }
    queues.sort();
    queues.dedup();
    exchanges.sort();
    exchanges.dedup();
    Leftovers { queues, exchanges }
}

/// Deletes one queue or exchange, bounded in time; a missing one counts as deleted.
async fn delete_one(link: &Link, name: &str, is_queue: bool) -> bool {
    let step = Duration::from_secs(10);
    let r = if is_queue {
        tokio::time::timeout(step, async { link.delete_queue(name).await.map(drop) }).await
    } else {
        tokio::time::timeout(step, link.delete_exchange(name)).await
    };
    matches!(
        r,
        Ok(Ok(())) | Ok(Err(truc::broker::AmqpError::NoSuchQueue(_)))
    )
}

/// Deletes the queues, then the exchanges, of `l`: over `ctl` while it is
/// connected, then what is left once more on a fresh connection (the control
/// link may have died while the broker was at a limit). Returns how many were
/// deleted and the names that were not.
async fn delete_leftovers(ctl: Option<&Link>, url: &str, l: &Leftovers) -> (usize, Vec<String>) {
    let all: Vec<(&String, bool)> = l
        .queues
        .iter()
        .map(|q| (q, true))
        .chain(l.exchanges.iter().map(|e| (e, false)))
        .collect();
    let mut ok = 0;
    let mut left: Vec<(&String, bool)> = Vec::new();
    for (name, is_queue) in all {
        match ctl.filter(|c| c.is_connected()) {
            Some(c) if delete_one(c, name, is_queue).await => ok += 1,
            _ => left.push((name, is_queue)),
        }
    }
    if !left.is_empty() {
        if ctl.is_some() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let mut link = None;
        let mut still = Vec::new();
        for (name, is_queue) in left {
            if !link.as_ref().is_some_and(Link::is_connected) {
                link = match tokio::time::timeout(
                    Duration::from_secs(15),
                    Link::connect(url, "bench cleanup"),
                )
                .await
                {
                    Ok(Ok(l)) => Some(l),
                    _ => None,
                };
            }
            match &link {
                Some(l) if delete_one(l, name, is_queue).await => ok += 1,
                _ => still.push(name.clone()),
            }
        }
        if let Some(l) = link {
            l.close().await;
        }
        return (ok, still);
    }
    (ok, Vec::new())
}

/// Ends the run on the broker: asks the truc it started for every agency it
/// knows, stops it (so it declares nothing again), then deletes everything
/// the run created. Returns the stop note, how many queues and exchanges were
/// deleted and which were not (also warned about on stderr).
async fn teardown(
    hub: &mut Hub,
    ctl: Option<&Link>,
    url: &str,
    agencies: &[Registered],
    raw: &[String],
) -> (String, usize, Vec<String>) {
    let listed = if hub.spawned() {
        hub.list_agencies().await
    } else {
        Vec::new()
    };
    let stop_note = hub.stop(Duration::from_secs(30)).await;
    let l = leftovers(hub, agencies, &listed, raw);
    let (deleted, failed) = delete_leftovers(ctl, url, &l).await;
    if !failed.is_empty() {
        eprintln!(
            "warning: {} queues or exchanges of this run could not be deleted (prefix {}; e.g. {})",
            failed.len(),
            hub.prefix,
            failed[0]
        );
    }
    (stop_note, deleted, failed)
}

/// The headline: the throughput scenario's 1 KiB figures when it ran, else
/// the scenario's own.
fn headline(ctx: &Ctx) -> (Value, String) {
    let r = &ctx.results;
    let raw = ctx.baseline;
    if let Some(sizes) = r.get("throughput").and_then(|t| t["sizes"].as_array()) {
        let s = sizes
            .iter()
            .find(|s| s["body_bytes"] == json!(1024))
            .or_else(|| sizes.first());
        if let Some(s) = s {
            let first_load = &s["loads"][0]["truc"]["e2e"];
            return (
                json!({
                    "raw_msgs_per_s": s["raw_msgs_per_s"],
                    "truc_msgs_per_s": s["truc_msgs_per_s"],
                    "ratio": s["ratio"],
                    "raw_window_msgs_per_s": s["raw_window_msgs_per_s"],
                    "truc_window_msgs_per_s": s["truc_window_msgs_per_s"],
                    "p50_ms": first_load["p50_ms"],
                    "p95_ms": first_load["p95_ms"],
                    "p99_ms": first_load["p99_ms"],
                    "max_ms": first_load["max_ms"],
                }),
                format!(
                    "throughput scenario, {} B bodies: sustained flat-out rates (until every delivery and notice of the phase arrived); latency at the first load point ({})",
                    s["body_bytes"], s["loads"][0]["load"]
                ),
            );
        }
    }
    let ratio = |t: Option<f64>| match (t, raw) {
        (Some(t), Some(b)) if b > 0.0 => json!(stats::round3(t / b)),
        _ => Value::Null,
    };
    let from = |truc: Option<f64>, lat: &Value, basis: &str| {
        (
            json!({
                "raw_msgs_per_s": raw,
                "truc_msgs_per_s": truc,
                "ratio": ratio(truc),
                "p50_ms": lat["p50_ms"],
                "p95_ms": lat["p95_ms"],
                "p99_ms": lat["p99_ms"],
                "max_ms": lat["max_ms"],
            }),
            basis.to_owned(),
        )
    };
    if let Some(x) = r.get("stores").filter(|x| x.get("failed").is_none()) {
        return (
            json!({
                "raw_msgs_per_s": x["raw_msgs_per_s"],
                "truc_msgs_per_s": x["pg_msgs_per_s"],
                "ratio": x["pg_vs_raw"],
                "pg_vs_sled": x["pg_vs_sled"],
                "two_vs_one_pg": x["two_vs_one_pg"],
                "p50_ms": x["postgres"]["e2e"]["p50_ms"],
                "p95_ms": x["postgres"]["e2e"]["p95_ms"],
                "p99_ms": x["postgres"]["e2e"]["p99_ms"],
                "max_ms": x["postgres"]["e2e"]["max_ms"],
            }),
            "stores scenario: truc_msgs_per_s is truc on PostgreSQL (one instance), sustained flat out; latency of that phase (queueing included); see pg_vs_sled and two_vs_one_pg".to_owned(),
        );
    }
    if let Some(c) = r
        .get("connections")
        .filter(|c| c.get("failed").is_none() || c["held"].is_number())
    {
        return from(
            c["msgs_per_s"].as_f64(),
            &c["phase"]["e2e"],
            "connections scenario: truc_msgs_per_s is the steady offered load achieved across the connected agencies (not a maximum); latency of that load",
        );
    }
    if let Some(f) = r.get("flash") {
        return from(
            f["backlog_drain_msgs_per_s"].as_f64(),
            &f["flash_during_backlog"],
            "flash scenario: truc_msgs_per_s is the backlog drain rate; latency of the Hỏa tốc envelopes sent while the backlog lasted",
        );
    }
    if let Some(f) = r.get("fairness") {
        return from(
            None,
            &f["flood"]["quiet_e2e"],
            "fairness scenario: latency of the quiet source under the flood (see flood_vs_baseline)",
        );
    }
    if let Some(g) = r.get("gateway").filter(|g| g.get("failed").is_none()) {
        return from(
            None,
            &g["gateway"]["e2e"],
            "gateway scenario: send → receive latency through the HTTPS gateway at a fixed rate (see gateway_vs_amqp for the same rate over AMQP)",
        );
    }
    if let Some(x) = r.get("rsa") {
        return from(
            x["rsa-sha256"]["msgs_per_s"].as_f64(),
            &x["rsa-sha256"]["phase"]["e2e"],
            "rsa scenario: RSA-SHA256 flat-out rate; latency at that maximum (queueing included)",
        );
    }
    if let Some(x) = r.get("spaces").filter(|x| x.get("failed").is_none()) {
        // The largest document's figures.
        let largest = x["sizes"].as_array().and_then(|s| {
            s.iter()
                .max_by_key(|s| s["bytes"].as_u64().unwrap_or(0))
                .cloned()
        });
        if let Some(s) = largest {
            return (
                json!({
                    "raw_mb_per_s": s["raw"]["mb_per_s"],
                    "truc_mb_per_s": s["truc"]["mb_per_s"],
                    "cp_mb_per_s": s["cp"]["mb_per_s"],
                    "inline_mb_per_s": s["inline"]["mb_per_s"],
                    "ratio": s["truc_vs_raw"],
                    "truc_vs_cp": s["truc_vs_cp"],
                }),
                format!(
                    "spaces scenario, {} documents: MB/s through an upload space end to end (create, chunks, complete, envelope, delivery, fetch checked), medians; ratio = truc over the raw broker (one persistent message of the same size)",
                    s["label"].as_str().unwrap_or("")
                ),
            );
        }
    }
    from(None, &Value::Null, "no scenario result")
}

/// The targets of the issue, evaluated on what ran.
fn targets(ctx: &Ctx, head: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let q = if ctx.s.quick { " (quick mode)" } else { "" };
    if ctx.results.contains_key("throughput") {
        let ratio = head["ratio"].as_f64();
        out.push(json!({
            "target": "truc end to end ≥ 0.45 × raw one hop, 1 KiB",
            "measured": format!("{} × ({} vs {} msg/s){q}", ratio.map(|r| format!("{r:.3}")).unwrap_or("–".into()), head["truc_msgs_per_s"], head["raw_msgs_per_s"]),
            "met": ratio.map(|r| r >= 0.45),
        }));
        let p99 = head["p99_ms"].as_f64();
        out.push(json!({
            "target": "p99 end to end ≤ 25 ms at 50 % of truc's maximum, 1 KiB",
            "measured": format!("p99 {} ms{q}", p99.map(|p| format!("{p:.2}")).unwrap_or("–".into())),
            "met": p99.map(|p| p <= 25.0),
        }));
    }
    if let Some(x) = ctx.results.get("stores") {
        let r = x["pg_vs_sled"].as_f64();
        out.push(json!({
            "target": "truc on PostgreSQL sustains ≥ 0.8 × truc on sled, 1 KiB flat out",
            "measured": format!(
                "{} × ({} vs {} msg/s){q}",
                r.map(|r| format!("{r:.3}")).unwrap_or("–".into()),
                x["pg_msgs_per_s"],
                x["sled_msgs_per_s"]
            ),
            "met": r.map(|r| r >= 0.8),
        }));
    }
    if let Some(f) = ctx.results.get("flash") {
        let p99 = f["flash_during_backlog"]["p99_ms"].as_f64();
        let full = f["backlog"].as_u64() == Some(100_000);
        out.push(json!({
            "target": "Hỏa tốc p99 ≤ 50 ms behind a backlog of 100,000 Thường",
            "measured": format!(
                "p99 {} ms over {} Hỏa tốc envelopes, backlog {}",
                p99.map(|p| format!("{p:.1}")).unwrap_or("–".into()),
                f["flash_received_during_backlog"], f["backlog"]
            ),
            "met": if full { p99.map(|p| p <= 50.0) } else { None },
        }));
    }
    if let Some(c) = ctx.results.get("connections") {
        let rss = c["truc_rss_mib_max"].as_f64();
        let held = c["held"].as_u64().unwrap_or(0);
        let errors = c["errors"].as_u64().unwrap_or(1);
        let requested = c["requested"].as_u64().unwrap_or(0);
        out.push(json!({
            "target": "2,000 connections with truc RSS ≤ 300 MiB and no error",
            "measured": format!(
                "{held} of {requested} connected, truc RSS max {} MiB, {errors} errors",
                rss.map(|r| format!("{r:.0}")).unwrap_or("–".into())
            ),
            "met": if requested >= 2000 { Some(held >= 2000 && errors == 0 && rss.is_some_and(|r| r <= 300.0)) } else { None },
        }));
    }
    out
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    stats::start_clock();
    let s = args.settings();
    let cancel = CancellationToken::new();
    // Hard limit and Ctrl-C: cancel everything, then clean up.
    {
        let cancel = cancel.clone();
        let limit = args
            .max_seconds
            .unwrap_or(if s.quick { 180.0 } else { 3600.0 });
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => eprintln!("interrupted: stopping and cleaning up"),
                _ = tokio::time::sleep(Duration::from_secs_f64(limit)) => eprintln!("run limit of {limit}s reached: stopping and cleaning up"),
            }
            cancel.cancel();
        });
    }
    let run_pid = std::process::id();
    let started = started_at();
    // The gateway and spaces scenarios need the agencies' gateway, on a
    // loopback port the system chooses, with a call rate far above what
    // they send.
    let with_gateway = s.scenarios.iter().any(|n| n == "gateway" || n == "spaces");
    let (gateway_env, gateway_rate) = if with_gateway {
        (
            vec![("TRUC_GATEWAY_ADDR".to_owned(), "127.0.0.1:0".to_owned())],
            Some(GATEWAY_CALLS),
        )
    } else {
        (Vec::new(), None)
    };
    let mut hub = match &args.hub_addr {
        Some(addr) => {
            let mut h = Hub::external(
                addr,
                args.token.as_deref().unwrap_or(""),
                &args.prefix,
                args.truc_pid,
            );
            h.gateway = args.gateway_addr.clone();
            h
        }
        None => match Hub::spawn(
            &args.truc_bin,
            &s.amqp_url,
            &format!("bench{run_pid}."),
            &args.truc_log,
            args.truc_prefetch,
            &gateway_env,
            gateway_rate,
        )
        .await
        {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    if let Err(e) = hub.wait_ready(Duration::from_secs(30)).await {
        eprintln!("error: {e}");
        // It may have declared its topology before failing.
        teardown(&mut hub, None, &s.amqp_url, &[], &[]).await;
        hub.remove_work_dir();
        return ExitCode::FAILURE;
    }
    eprintln!(
        "truc ready at {} (prefix {}, pid {:?}); scenarios {:?}{}",
        hub.admin_addr,
        hub.prefix,
        hub.pid,
        s.scenarios,
        if s.quick { ", quick" } else { "" }
    );
    let ctl = match tokio::time::timeout(
        Duration::from_secs(15),
        Link::connect(&s.amqp_url, "bench control"),
    )
    .await
    {
        Ok(Ok(l)) => Arc::new(l),
        other => {
            let e = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timeout".into(),
            };
            eprintln!("error: cannot connect to the broker: {e}");
            teardown(&mut hub, None, &s.amqp_url, &[], &[]).await;
            hub.remove_work_dir();
            return ExitCode::FAILURE;
        }
    };
    let shared = Shared::new(&hub.prefix, cancel.clone());
    let pids = Pids {
        truc: hub.pid,
        truc2: None,
        broker: procstat::find_broker_pid(&s.amqp_url),
        me: run_pid,
    };
    if let Some(pid) = pids.broker {
        eprintln!("broker CPU read from pid {pid}");
    }
    let monitor = Arc::new(Monitor {
        label: Mutex::new("setup".into()),
        points: Mutex::new(Vec::new()),
        pids: Mutex::new(pids),
        ingress: Mutex::new(Some(format!("{}ingress", hub.prefix))),
    });
    let monitor_stop = CancellationToken::new();
    let monitor_task = tokio::spawn(monitor.clone().run(
        shared.clone(),
        ctl.clone(),
        monitor_stop.clone(),
    ));
    let tag = format!("B{run_pid}");
    let mut ctx = Ctx {
        s: s.clone(),
        hub,
        shared: shared.clone(),
        ctl: ctl.clone(),
        monitor: monitor.clone(),
        phases: Vec::new(),
        agencies: Vec::new(),
        queues: Vec::new(),
        tag,
        baseline: None,
        results: serde_json::Map::new(),
        notes: Vec::new(),
        truc_hwm_before_reset_kib: 0,
    };
    run_scenarios(&mut ctx).await;
    monitor_stop.cancel();

    // Stop truc first (so it does not declare queues again), then delete
    // every queue and exchange of the run; also after an error or Ctrl-C
    // (both cancel the scenarios, which then end here).
    monitor.set_label("cleanup");
    let truc_peak_rss = ctx
        .hub
        .pid
        .and_then(procstat::read)
        .map(|s| round1(s.hwm_kib.max(ctx.truc_hwm_before_reset_kib) as f64 / 1024.0));
    let (log_warn, log_error, log_examples) = ctx.hub.log_problems();
    let (stop_note, deleted, not_deleted) = teardown(
        &mut ctx.hub,
        Some(&ctl),
        &s.amqp_url,
        &ctx.agencies,
        &ctx.queues,
    )
    .await;
    ctl.close().await;
    shared.cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), monitor_task).await;
    ctx.hub.remove_work_dir();
    if ctx.hub.started {
        ctx.notes.push(format!(
            "{deleted} queues and exchanges deleted at the end ({} not{})",
            not_deleted.len(),
            not_deleted
                .first()
                .map(|n| format!(", e.g. {n}"))
                .unwrap_or_default()
        ));
    } else {
        ctx.notes.push(format!(
            "external truc: {deleted} queues deleted; the {} agencies registered by this run stay in its registry (codes {}.*) and its exchanges are kept",
            ctx.agencies.len(),
            ctx.tag
        ));
    }
    ctx.notes.push(stop_note);
    if ctx.hub.work_dir.is_some() || ctx.hub.pid.is_some() {
        ctx.notes.push(format!(
            "truc log: {log_warn} WARN and {log_error} ERROR lines (RUST_LOG={})",
            args.truc_log
        ));
    }

    let (head, basis) = headline(&ctx);
    let tgts = targets(&ctx, &head);
    let errors = shared.error_count();
    let error_kinds: serde_json::Map<String, Value> = shared
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, (n, first))| (k.clone(), json!({ "count": n, "first": first })))
        .collect();
    let timeline = monitor
        .points
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let busiest = ctx
        .phases
        .iter()
        .filter_map(|p| p.truc_cpu_pct)
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
    let rss_max = timeline
        .iter()
        .filter_map(|p| p.truc_rss_mib)
        .chain(truc_peak_rss)
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
    let mut result = json!({
        "schema": "truc-bench/1",
        "started_at": started,
        "machine": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": kernel(),
            "broker": procstat::broker_limits(pids.broker),
        },
        "truc": {
            "spawned": ctx.hub.work_dir.is_some(),
            "prefix": ctx.hub.prefix,
            "pid": ctx.hub.pid,
            "log_level": args.truc_log,
            "prefetch": args.truc_prefetch.unwrap_or(512),
            "log_warn_lines": log_warn,
            "log_error_lines": log_error,
            "log_examples": log_examples,
            "peak_rss_mib": truc_peak_rss,
        },
        "headline_basis": basis,
        "errors": errors,
        "error_kinds": error_kinds,
        "truc_cpu_pct_max_phase": busiest,
        "truc_rss_mib_max": rss_max,
        "targets": tgts,
        "scenarios": Value::Object(ctx.results.clone()),
        "phases": ctx.phases,
        "notes": ctx.notes,
        "settings": s,
        "timeline": timeline,
    });
    if let (Value::Object(r), Value::Object(h)) = (&mut result, head) {
        for (k, v) in h {
            r.insert(k, v);
        }
    }
    let html = args
        .html
        .clone()
        .unwrap_or_else(|| args.out.with_extension("html"));
    if let Err(e) = report::write_json(&args.out, &result) {
        eprintln!("error: cannot write {}: {e}", args.out.display());
    }
    if let Err(e) = report::write_html(&html, &result, &ctx.phases, &timeline) {
        eprintln!("error: cannot write {}: {e}", html.display());
    }
    summary(&result);
    eprintln!("result: {}  report: {}", args.out.display(), html.display());
    if args.json {
        let mut compact = result.clone();
        if let Value::Object(m) = &mut compact {
            m.remove("timeline");
        }
        println!("{}", serde_json::to_string(&compact).unwrap_or_default());
    }
    let failed = ctx.results.values().any(|v| v.get("failed").is_some());
    if failed || cancel.is_cancelled() && ctx.results.len() < s.scenarios.len() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The human summary on stderr.
fn summary(r: &Value) {
    eprintln!();
    eprintln!("== result ({})", r["headline_basis"].as_str().unwrap_or(""));
    if r.get("raw_mb_per_s").is_some() {
        eprintln!(
            "   raw {} MB/s, truc {} MB/s, ratio {}; cp {} MB/s, truc/cp {}; errors {}",
            r["raw_mb_per_s"],
            r["truc_mb_per_s"],
            r["ratio"],
            r["cp_mb_per_s"],
            r["truc_vs_cp"],
            r["errors"]
        );
    } else {
        eprintln!(
            "   raw {} msg/s, truc {} msg/s, ratio {}; p50 {} ms, p99 {} ms; errors {}",
            r["raw_msgs_per_s"],
            r["truc_msgs_per_s"],
            r["ratio"],
            r["p50_ms"],
            r["p99_ms"],
            r["errors"]
        );
    }
    if let Some(x) = r["scenarios"].get("spaces") {
        if let Some(e) = x["failed"].as_str() {
            eprintln!("   spaces: FAILED: {e}");
        }
        for s in x["sizes"].as_array().into_iter().flatten() {
            let rate = |k: &str| match s[k]["failed"].as_str() {
                Some(_) => "failed".to_owned(),
                None => format!("{} MB/s", s[k]["mb_per_s"]),
            };
            eprintln!(
                "   spaces {}: cp {}, raw {}, truc {} (upload {} MB/s, fetch {} MB/s), inline {}; truc/raw {}, truc/cp {}, inline/raw {}, inline/cp {}; truc RSS growth max {} MiB",
                s["label"].as_str().unwrap_or(""),
                rate("cp"),
                rate("raw"),
                rate("truc"),
                s["truc"]["upload_mb_per_s"],
                s["truc"]["fetch_mb_per_s"],
                rate("inline"),
                s["truc_vs_raw"],
                s["truc_vs_cp"],
                s["inline_vs_raw"],
                s["inline_vs_cp"],
                s["truc"]["rss_growth_mib_max"],
            );
        }
    }
    if let Some(t) = r["targets"].as_array() {
        for t in t {
            let met = match t["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "n/a",
            };
            eprintln!(
                "   target: {} — {} — {met}",
                t["target"].as_str().unwrap_or(""),
                t["measured"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(e) = r["error_kinds"].as_object() {
        for (k, v) in e {
            eprintln!(
                "   error {k}: {} (first: {})",
                v["count"],
                v["first"].as_str().unwrap_or("")
            );
        }
    }
}

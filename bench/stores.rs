//! The `stores` scenario: truc flat out on its two store backends, in one
//! run, on the same broker, body size (1 KiB), sources, destinations and
//! window, against the raw one-hop baseline of the same run:
//!
//! 1. raw 1 KiB max (the run's baseline phase);
//! 2. truc on the embedded sled store (the run's own child, which stays up,
//!    idle, during the PostgreSQL phases and is cleaned up at the end of the
//!    run as usual);
//! 3. truc on PostgreSQL: a second child with `TRUC_STORE_URL` pointing at a
//!    fresh database (`truc::testing::TestDb`, dropped afterwards) and its
//!    own prefix;
//! 4. two children on one fresh PostgreSQL database, same prefix and master
//!    key: the agencies are registered through the first, the second starts
//!    afterwards (and loads them); both consume every ingress queue, so the
//!    broker spreads the work between them. CPU and RSS are the sum of both,
//!    the router times (`/metrics`) are summed over both.
//!
//! For each PostgreSQL phase it also reads the database's own account
//! (`pg_stat_database`: transactions and rows, from the end of registration
//! and start-up until all instances stopped) and the CPU
//! of the database's server processes during the phase (`/proc` of the
//! backends `pg_stat_activity` lists for it), per envelope received.
//!
//! Each PostgreSQL phase cleans up after itself: children stopped, every
//! queue and exchange under its prefix deleted, the database dropped. The
//! ratios: `pg_vs_sled` (the target is ≥ 0.8), `two_vs_one_pg`, and
//! each truc phase against raw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};
use truc::code::AgencyCode;
use truc::testing::TestDb;

use crate::hub::{Hub, Registered};
use crate::load::{Mix, Route};
use crate::procstat;
use crate::run::{Ctx, Mode, PhaseResult, PhaseSpec};
use crate::scenarios::{self, body, close_all, phase_json, ratio, raw_baseline, register_group};
use crate::stats::{round1, round3};

/// Body size of every phase.
const BODY: usize = 1024;

/// Target of the issue: PostgreSQL sustains at least this share of sled.
const PG_VS_SLED_TARGET: f64 = 0.8;

/// Runs `f` with a session on the database `url`, on its own thread (the
/// synchronous client must not run on a runtime thread); `None` on any error.
async fn with_db<T: Send + 'static>(
    url: &str,
    f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
) -> Option<T> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).ok()?;
            f(&mut c).ok()
        })
        .join()
        .ok()
        .flatten()
    })
    .await
    .ok()
    .flatten()
}

/// The database's counters in `pg_stat_database` (commits + rollbacks, rows).
async fn db_counters(url: &str) -> Option<[i64; 6]> {
    with_db(url, |c| {
        let r = c.query_one(
            "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted \
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )?;
        Ok([r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)])
    })
    .await
}

/// Process ids of the server processes serving the database (other than the asking one).
async fn backend_pids(url: &str) -> Vec<u32> {
    with_db(url, |c| {
        let rows = c.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
    })
    .await
    .unwrap_or_default()
}

/// CPU clock ticks of `pids` together (the ones still running).
fn ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| procstat::read(*p))
        .map(|s| s.cpu_ticks)
        .sum()
}

/// The database's work over a phase: its transactions and rows per envelope
/// (counters from `setup`, after registration and start-up, until `after`,
/// once every instance stopped) and its backends' CPU; `before` (at the
/// first start) gives what registration and start-up took.
fn db_work(
    before: Option<[i64; 6]>,
    setup: Option<[i64; 6]>,
    after: Option<[i64; 6]>,
    received: u64,
    cpu: Value,
) -> Value {
    let per = |i: usize| match (setup, after) {
        (Some(b), Some(a)) if received > 0 => Some(round3((a[i] - b[i]) as f64 / received as f64)),
        _ => None,
    };
    json!({
        "transactions": setup.zip(after).map(|(b, a)| a[0] - b[0]),
        "transactions_registration_and_startup": before.zip(setup).map(|(b, a)| a[0] - b[0]),
        "transactions_per_envelope": per(0),
        "rows_returned_per_envelope": per(1),
        "rows_fetched_per_envelope": per(2),
        "rows_inserted_per_envelope": per(3),
        "rows_updated_per_envelope": per(4),
        "rows_deleted_per_envelope": per(5),
        "backends": cpu,
        "counted": "pg_stat_database from the end of registration and start-up until every instance stopped (the phase's warm-up, window and drain, and the stop), per envelope received in the phase; backends' CPU over the phase (warm-up, window, drain)",
    })
}

/// The figures of one phase the scenario reports.
fn summary(p: &PhaseResult) -> Value {
    let lat = |x: &Option<crate::stats::Pct>| {
        x.as_ref().map(|x| {
            json!({ "p50_ms": x.p50_ms, "p95_ms": x.p95_ms, "p99_ms": x.p99_ms, "max_ms": x.max_ms })
        })
    };
    json!({
        "name": p.name,
        "sustained_msgs_per_s": p.sustained_msgs_per_s,
        "window_msgs_per_s": p.msgs_per_s,
        "work_done_after_s": p.work_done_after_s,
        "e2e": lat(&p.e2e),
        "accept": lat(&p.accept),
        "truc_cpu_pct": p.truc_cpu_pct,
        "truc_cpu_us_per_msg": p.truc_cpu_us_per_msg,
        "truc_rss_mib_max": p.truc_rss_mib_max,
        "broker_cpu_pct": p.broker_cpu_pct,
        "broker_cpu_us_per_msg": p.broker_cpu_us_per_msg,
        "bench_cpu_pct": p.bench_cpu_pct,
        "router": p.router,
        "drained": p.drained,
        "phase": phase_json(p),
    })
}

/// Connects `srcs` and `dsts` (registered on the hub in `ctx.hub`), drives
/// 1 KiB envelopes flat out through it, closes them.
async fn flat_out(
    ctx: &mut Ctx,
    name: &str,
    srcs: &[Registered],
    dsts: &[Registered],
) -> Result<PhaseResult, String> {
    let (sources, dests) = scenarios::connect_pair(ctx, srcs, dsts).await?;
    let mix = match Mix::parse(&ctx.s.mix) {
        Ok(m) => m,
        Err(e) => {
            close_all(&sources).await;
            close_all(&dests).await;
            return Err(e);
        }
    };
    let route = Arc::new(Route::Truc {
        sources: sources.clone(),
        dests: dests
            .iter()
            .map(|d| d.creds.code.clone())
            .collect::<Vec<AgencyCode>>(),
        body: body(BODY),
        mix,
        pool: None,
    });
    let spec = PhaseSpec {
        scenario: "stores",
        name: name.to_owned(),
        path: "truc",
        body_bytes: BODY,
        mode: Mode::Max {
            window: ctx.s.window,
        },
        warmup: Duration::from_secs_f64(ctx.s.warmup_s),
        measure: Duration::from_secs_f64(ctx.s.measure_s),
        stop_early: None,
        // The sustained rate needs the drain to finish, whatever the store.
        drain_timeout_s: Some(ctx.s.drain_timeout_s.max(60.0)),
    };
    let r = ctx.phase(spec, route).await;
    close_all(&sources).await;
    close_all(&dests).await;
    Ok(r)
}

/// Registers the sources and destinations on the hub in `ctx.hub`.
async fn register_all(ctx: &mut Ctx) -> Result<(Vec<Registered>, Vec<Registered>), String> {
    let (m, k) = (ctx.s.sources, ctx.s.dests);
    let srcs = register_group(ctx, "SS", m, None).await?;
    let dsts = register_group(ctx, "SD", k, None).await?;
    Ok((srcs, dsts))
}

/// A fresh PostgreSQL database on the test server (`TRUC_TEST_PG_URL`).
async fn fresh_db() -> Result<TestDb, String> {
    tokio::task::spawn_blocking(TestDb::new)
        .await
        .map_err(|e| {
            format!("cannot create a PostgreSQL database (is it running? ops/ensure-postgres.sh, TRUC_TEST_PG_URL): {e}")
        })
}

/// Starts one instance of the PostgreSQL-backed hub and waits until it is ready.
async fn start_instance(ctx: &Ctx, prefix: &str, env: &[(String, String)]) -> Result<Hub, String> {
    let s = &ctx.s;
    let mut hub = Hub::spawn(
        &s.truc_bin,
        &s.amqp_url,
        prefix,
        &s.truc_log,
        s.truc_prefetch,
        env,
        None,
    )
    .await?;
    if let Err(e) = hub.wait_ready(Duration::from_secs(60)).await {
        // It may have declared its topology before failing.
        crate::teardown(&mut hub, Some(ctx.ctl.as_ref()), &s.amqp_url, &[], &[]).await;
        hub.remove_work_dir();
        return Err(e);
    }
    Ok(hub)
}

/// With the first instance in `ctx.hub`: registers the agencies through it,
/// starts the other instances (kept in `others`), then runs the phase.
async fn on_first(
    ctx: &mut Ctx,
    name: &str,
    instances: usize,
    env: &[(String, String)],
    others: &mut Vec<Hub>,
    db_url: &str,
) -> Result<(PhaseResult, Value, Option<[i64; 6]>), String> {
    let (srcs, dsts) = register_all(ctx).await?;
    let prefix = ctx.hub.prefix.clone();
    for _ in 1..instances {
        let hub = start_instance(ctx, &prefix, env).await?;
        ctx.hub
            .peers
            .push((hub.admin_addr.clone(), hub.token.clone()));
        others.push(hub);
    }
    ctx.monitor.watch_hub(
        ctx.hub.pid,
        others.first().and_then(|h| h.pid),
        &format!("{prefix}ingress"),
    );
    // Registration and start-up done: what the database did so far (its
    // backends report at most once a second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let counters_setup = db_counters(db_url).await;
    let pids = backend_pids(db_url).await;
    let (t0, at) = (ticks(&pids), Instant::now());
    let r = flat_out(ctx, name, &srcs, &dsts).await?;
    let secs = procstat::cpu_secs_of_ticks(ticks(&pids).saturating_sub(t0));
    let elapsed = at.elapsed().as_secs_f64().max(1e-3);
    let cpu = json!({
        "processes": pids.len(),
        "cpu_pct": round1(secs / elapsed * 100.0),
        "cpu_us_per_envelope": (r.received > 0).then(|| round1(secs * 1e6 / r.received as f64)),
    });
    Ok((r, cpu, counters_setup))
}

/// A PostgreSQL phase: a fresh database, `instances` children on it with
/// the prefix `<run prefix>pg<instances>.` and one master key, the phase,
/// then everything it made removed (what the cleanup did goes to `notes`,
/// also when the phase failed). Returns the phase and the database's work.
async fn on_postgres(
    ctx: &mut Ctx,
    name: &str,
    instances: usize,
    notes: &mut Vec<String>,
) -> Result<(PhaseResult, Value), String> {
    ctx.monitor.set_label(&format!("{name}: start"));
    let db = fresh_db().await?;
    let key = hex::encode(rand::thread_rng().gen::<[u8; 32]>());
    let env = vec![
        ("TRUC_STORE_URL".to_owned(), db.url().to_owned()),
        ("TRUC_MASTER_KEY".to_owned(), key),
    ];
    let prefix = format!("{}pg{instances}.", ctx.hub.prefix.trim_end_matches('.'));
    let counters_before = db_counters(db.url()).await;
    let mut first = match start_instance(ctx, &prefix, &env).await {
        Ok(h) => h,
        Err(e) => {
            drop_db(db).await;
            return Err(e);
        }
    };
    let agencies_before = ctx.agencies.len();
    // The phase runs against the new hub: swap it in, point the agencies and
    // the monitor at it, and back whatever happens.
    std::mem::swap(&mut ctx.hub, &mut first);
    ctx.shared.set_prefix(&prefix);
    ctx.monitor
        .watch_hub(ctx.hub.pid, None, &format!("{prefix}ingress"));
    let mut others = Vec::new();
    let res = on_first(ctx, name, instances, &env, &mut others, db.url()).await;
    std::mem::swap(&mut ctx.hub, &mut first);
    let main_prefix = ctx.hub.prefix.clone();
    ctx.shared.set_prefix(&main_prefix);
    ctx.monitor
        .watch_hub(ctx.hub.pid, None, &format!("{main_prefix}ingress"));

    ctx.monitor.set_label(&format!("{name}: cleanup"));
    let regs: Vec<Registered> = ctx.agencies.drain(agencies_before..).collect();
    // The later instances first, so nothing declares queues again.
    for (i, mut hub) in others.into_iter().enumerate() {
        let log = log_note(&hub);
        let stop = hub.stop(Duration::from_secs(30)).await;
        hub.remove_work_dir();
        notes.push(format!("{name}, instance {}: {stop}; {log}", i + 2));
    }
    let log = log_note(&first);
    let (stop, deleted, failed) = crate::teardown(
        &mut first,
        Some(ctx.ctl.as_ref()),
        &ctx.s.amqp_url,
        &regs,
        &[],
    )
    .await;
    first.remove_work_dir();
    notes.push(format!(
        "{name}, instance 1: {stop}; {log}; {deleted} queues and exchanges under {prefix} deleted ({} not)",
        failed.len()
    ));
    // The instances' sessions are closed: their statistics are flushed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counters_after = db_counters(db.url()).await;
    drop_db(db).await;
    notes.push(format!("{name}: database dropped"));
    res.map(|(r, cpu, setup)| {
        let work = db_work(counters_before, setup, counters_after, r.received, cpu);
        (r, work)
    })
}

/// How many WARN and ERROR lines the child logged, with the first ERROR line.
fn log_note(hub: &Hub) -> String {
    let (warn, error, examples) = hub.log_problems();
    let first_error = examples
        .iter()
        .find(|e| e.contains(" ERROR "))
        .map(|e| format!(" (first ERROR: {e})"))
        .unwrap_or_default();
    format!("log {warn} WARN, {error} ERROR lines{first_error}")
}

/// Drops the database (its sessions terminated first), off the runtime's threads.
async fn drop_db(db: TestDb) {
    let _ = tokio::task::spawn_blocking(move || drop(db)).await;
}

/// The `stores` scenario (see the module documentation).
pub async fn stores(ctx: &mut Ctx) -> Result<Value, String> {
    if !ctx.hub.spawned() {
        return Err("the stores scenario starts its own hubs: run it without --hub-addr".into());
    }
    if std::env::var("TRUC_STORE_URL").is_ok_and(|v| !v.is_empty()) {
        return Err(
            "TRUC_STORE_URL is set: the run's own truc would not be on sled; unset it".into(),
        );
    }
    let (m, k) = (ctx.s.sources, ctx.s.dests);
    // 1. The run's raw baseline (run before every scenario but throughput).
    let raw = match ctx
        .phases
        .iter()
        .rev()
        .find(|p| p.scenario == "baseline" && p.body_bytes == BODY)
    {
        Some(p) => p.clone(),
        None => raw_baseline(ctx, "stores", BODY, m, k).await?,
    };
    let mut failures = serde_json::Map::new();
    let mut cleanup = Vec::new();
    let mut db = serde_json::Map::new();
    let registered = register_all(ctx).await;
    // 2. and 3., once per round: sled (the run's own child), then
    // PostgreSQL (one instance).
    let rounds = ctx.s.rounds.max(1);
    let mut played: Vec<Round> = Vec::new();
    for n in 1..=rounds {
        if ctx.shared.cancel.is_cancelled() {
            break;
        }
        let tag = if rounds > 1 {
            format!(" (round {n})")
        } else {
            String::new()
        };
        let sled = match &registered {
            Ok((srcs, dsts)) => {
                flat_out(ctx, &format!("truc 1 KiB max, sled{tag}"), srcs, dsts).await
            }
            Err(e) => Err(e.clone()),
        };
        let sled = sled
            .map_err(|e| {
                ctx.shared.error("stores-sled", &e);
                failures.insert(format!("sled{tag}"), json!(e));
            })
            .ok();
        let label = format!("truc 1 KiB max, PostgreSQL{tag}");
        let pg = match on_postgres(ctx, &label, 1, &mut cleanup).await {
            Ok((p, work)) => Some((p, work)),
            Err(e) => {
                ctx.shared.error("stores-postgres", &e);
                failures.insert(format!("postgres{tag}"), json!(e));
                None
            }
        };
        played.push(Round { sled, pg });
    }
    // The round whose ratio is the median stands for the run (with one
    // round, or none measured, the first); every round is listed.
    let ratios: Vec<Option<f64>> = played.iter().map(Round::ratio).collect();
    let median = median_round(&ratios);
    let chosen = played.get(median.unwrap_or(0));
    let sled = chosen.and_then(|r| r.sled.clone());
    let pg = chosen.and_then(|r| r.pg.clone());
    let pg = pg.map(|(p, work)| {
        db.insert("postgres".into(), work);
        p
    });
    let rounds_json: Vec<Value> = played
        .iter()
        .zip(&ratios)
        .map(|(r, ratio)| {
            json!({
                "sled_msgs_per_s": r.sled.as_ref().map(PhaseResult::rate),
                "pg_msgs_per_s": r.pg.as_ref().map(|(p, _)| p.rate()),
                "pg_vs_sled": ratio,
                "postgres_work": r.pg.as_ref().map(|(_, w)| w.clone()),
            })
        })
        .collect();
    // 4. PostgreSQL, two instances.
    let mut pg_run = |r: Result<(PhaseResult, Value), String>, key: &str| match r {
        Ok((p, work)) => {
            db.insert(key.into(), work);
            Some(p)
        }
        Err(e) => {
            failures.insert(key.into(), json!(e));
            None
        }
    };
    let r = if ctx.shared.cancel.is_cancelled() {
        Err("cancelled".to_owned())
    } else {
        on_postgres(ctx, "truc 1 KiB max, PostgreSQL ×2", 2, &mut cleanup).await
    };
    if let Err(e) = &r {
        ctx.shared.error("stores-postgres-x2", e);
    }
    let pg2 = pg_run(r, "postgres_x2");

    let rate = |p: &Option<PhaseResult>| p.as_ref().map(PhaseResult::rate);
    let window = |p: &Option<PhaseResult>| p.as_ref().map(|p| p.msgs_per_s);
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => None,
    };
    let raw_rate = Some(raw.rate());
    let pg_vs_sled = div(rate(&pg), rate(&sled));
    if rounds > 1 {
        let each: Vec<String> = ratios
            .iter()
            .map(|r| r.map(|r| format!("{r:.3}")).unwrap_or("–".into()))
            .collect();
        eprintln!(
            "   rounds: pg_vs_sled {} (the median round stands for the run)",
            each.join(", ")
        );
    }
    eprintln!();
    eprintln!(
        "== stores ({m} sources × {k} destinations, 1 KiB, window {})",
        ctx.s.window
    );
    eprintln!(
        "   {:<36} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "phase", "sustained", "window", "p50 ms", "p95 ms", "p99 ms", "vs raw", "cpu %"
    );
    for p in [Some(raw.clone()), sled.clone(), pg.clone(), pg2.clone()]
        .iter()
        .flatten()
    {
        let e = p.e2e.as_ref();
        let f = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or("–".into());
        eprintln!(
            "   {:<36} {:>10} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>7}",
            p.name,
            f(p.sustained_msgs_per_s),
            p.msgs_per_s,
            f(e.map(|e| e.p50_ms)),
            f(e.map(|e| e.p95_ms)),
            f(e.map(|e| e.p99_ms)),
            ratio(p.rate(), raw.rate())
                .map(|r| format!("{r:.3}"))
                .unwrap_or("–".into()),
            f(p.truc_cpu_pct),
        );
    }
    eprintln!(
        "   pg_vs_sled {} (target ≥ {PG_VS_SLED_TARGET}), two_vs_one_pg {}",
        pg_vs_sled.map(|r| format!("{r:.3}")).unwrap_or("–".into()),
        div(rate(&pg2), rate(&pg))
            .map(|r| format!("{r:.3}"))
            .unwrap_or("–".into()),
    );
    for (k, w) in &db {
        eprintln!(
            "   {k}: {} PostgreSQL transactions per envelope ({} rows inserted, {} updated, {} deleted); its backends {} % CPU, {} µs per envelope",
            w["transactions_per_envelope"],
            w["rows_inserted_per_envelope"],
            w["rows_updated_per_envelope"],
            w["rows_deleted_per_envelope"],
            w["backends"]["cpu_pct"],
            w["backends"]["cpu_us_per_envelope"],
        );
    }
    ctx.notes.extend(cleanup.iter().cloned());
    Ok(json!({
        "sources": m,
        "destinations": k,
        "body_bytes": BODY,
        "window": ctx.s.window,
        "raw_msgs_per_s": raw_rate,
        "sled_msgs_per_s": rate(&sled),
        "pg_msgs_per_s": rate(&pg),
        "pg2_msgs_per_s": rate(&pg2),
        "pg_vs_sled": pg_vs_sled,
        "pg_vs_sled_target": PG_VS_SLED_TARGET,
        "pg_vs_sled_met": pg_vs_sled.map(|r| r >= PG_VS_SLED_TARGET),
        "two_vs_one_pg": div(rate(&pg2), rate(&pg)),
        "sled_vs_raw": div(rate(&sled), raw_rate),
        "pg_vs_raw": div(rate(&pg), raw_rate),
        "two_pg_vs_raw": div(rate(&pg2), raw_rate),
        "window_ratios": {
            "pg_vs_sled": div(window(&pg), window(&sled)),
            "two_vs_one_pg": div(window(&pg2), window(&pg)),
            "sled_vs_raw": div(window(&sled), Some(raw.msgs_per_s)),
            "pg_vs_raw": div(window(&pg), Some(raw.msgs_per_s)),
            "two_pg_vs_raw": div(window(&pg2), Some(raw.msgs_per_s)),
        },
        "raw": summary(&raw),
        "sled": sled.as_ref().map(summary),
        "postgres": pg.as_ref().map(summary),
        "postgres_x2": pg2.as_ref().map(summary),
        "sampling": "postgres_x2: truc CPU, RSS and threads are the sum of both instances; router times from both instances' /metrics (sums and counts added)",
        "postgres_work": db,
        "failed_phases": failures,
        "cleanup": cleanup,
        "rounds": rounds_json,
        "median_round": median.map(|i| i + 1),
    }))
}

/// One round: sled, then PostgreSQL (the phase and the database's account).
struct Round {
    sled: Option<PhaseResult>,
    pg: Option<(PhaseResult, Value)>,
}

impl Round {
    fn ratio(&self) -> Option<f64> {
        match (&self.sled, &self.pg) {
            (Some(s), Some((p, _))) => ratio(p.rate(), s.rate()),
            _ => None,
        }
    }
}

/// The index of the round whose ratio is the median of those measured (the
/// lower middle one of an even count); `None` when none was.
fn median_round(ratios: &[Option<f64>]) -> Option<usize> {
    let mut measured: Vec<(usize, f64)> = ratios
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .collect();
    if measured.is_empty() {
        return None;
    }
    measured.sort_by(|a, b| a.1.total_cmp(&b.1));
    Some(measured[(measured.len() - 1) / 2].0)
}

#[cfg(test)]
mod tests {
    use super::median_round;

    #[test]
    fn the_median_round_is_the_middle_of_those_measured() {
        assert_eq!(median_round(&[]), None);
        assert_eq!(median_round(&[None, None]), None);
        assert_eq!(median_round(&[Some(0.7)]), Some(0));
        assert_eq!(median_round(&[Some(0.9), Some(0.6), Some(0.7)]), Some(2));
        assert_eq!(median_round(&[Some(0.9), None, Some(0.6)]), Some(2));
        assert_eq!(
            median_round(&[Some(0.8), Some(0.6), Some(0.7), Some(0.9)]),
            Some(2)
        );
    }
}

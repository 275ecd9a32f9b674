//! The five scenarios: `throughput` (raw one hop vs truc, flat out and at
//! fixed fractions of truc's maximum), `connections` (thousands of agencies
//! connected at once under a steady load), `flash` (Hỏa tốc behind a backlog
//! of Thường), `rsa` (HMAC-SHA256 vs RSA-SHA256 signed load), and
//! `fairness` (a quiet source alone and under another source's flood).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use truc::canonical::canonical_form;
use truc::code::AgencyCode;
use truc::envelope::Priority;
use truc::message::Message;
use truc::topology::ArgValue;

use crate::load::{self, Agency, Mix, RawSet, Route};
use crate::procstat;
use crate::run::{Ctx, Mode, PhaseResult, PhaseSpec};
use crate::stats::{round1, round3};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A body of `n` bytes (printable, not all equal).
pub fn body(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect()
}

/// `1 KiB`, `64 KiB`, `100 B`.
pub fn size_label(n: usize) -> String {
    if n >= 1024 && n % 1024 == 0 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| round3(a / b))
}

/// Connects `srcs` as sources and `dsts` as destinations (inbox prefetch from
/// the settings), 16 at once; closes what connected when any could not.
pub async fn connect_pair(
    ctx: &Ctx,
    srcs: &[crate::hub::Registered],
    dsts: &[crate::hub::Registered],
) -> Result<(Vec<Arc<Agency>>, Vec<Arc<Agency>>), String> {
    let url = ctx.s.amqp_url.clone();
    let (sources, failed) =
        load::connect_agencies(&url, srcs, &ctx.shared, None, 16, 10, secs(15.0)).await;
    if !failed.is_empty() {
        close_all(&sources).await;
        return Err(format!(
            "{} sources could not connect: {}",
            failed.len(),
            failed[0]
        ));
    }
    let (dests, failed) = load::connect_agencies(
        &url,
        dsts,
        &ctx.shared,
        Some(ctx.s.prefetch),
        16,
        10,
        secs(15.0),
    )
    .await;
    if !failed.is_empty() {
        close_all(&sources).await;
        close_all(&dests).await;
        return Err(format!(
            "{} destinations could not connect: {}",
            failed.len(),
            failed[0]
        ));
    }
    Ok((sources, dests))
}

pub async fn close_all(agencies: &[Arc<Agency>]) {
    use futures_util::stream::{self, StreamExt};
    stream::iter(agencies.iter())
        .for_each_concurrent(64, |a| async move { a.close().await })
        .await;
}

pub fn phase_json(p: &PhaseResult) -> Value {
    serde_json::to_value(p).unwrap_or(Value::Null)
}

/// The raw one-hop maximum for `size` with `m` publishers and `k` queues
/// (its own connections, closed afterwards).
pub async fn raw_baseline(
    ctx: &mut Ctx,
    scenario: &'static str,
    size: usize,
    m: usize,
    k: usize,
) -> Result<PhaseResult, String> {
    let names: Vec<String> = (0..k)
        .map(|i| format!("{}raw.{scenario}.{i}", ctx.hub.prefix))
        .collect();
    ctx.queues.extend(names.iter().cloned());
    let raw = RawSet::open(
        &ctx.s.amqp_url,
        &ctx.ctl,
        names,
        BTreeMap::new(),
        m,
        ctx.s.prefetch,
        &ctx.shared,
    )
    .await?;
    let route = Arc::new(Route::Raw {
        pubs: raw.pubs.clone(),
        queues: raw.queues.clone(),
        template: load::raw_template(size),
    });
    let spec = PhaseSpec {
        scenario,
        name: format!("raw {} max", size_label(size)),
        path: "raw",
        body_bytes: size,
        mode: Mode::Max {
            window: ctx.s.window,
        },
        warmup: secs(ctx.s.warmup_s),
        measure: secs(ctx.s.measure_s),
        stop_early: None,
        drain_timeout_s: None,
    };
    let r = ctx.phase(spec, route).await;
    raw.close().await;
    Ok(r)
}

/// Registers `n` agencies named `<tag>.<group><i>`.
pub async fn register_group(
    ctx: &mut Ctx,
    group: &str,
    n: usize,
    pem: Option<&str>,
) -> Result<Vec<crate::hub::Registered>, String> {
    let codes: Vec<String> = (1..=n)
        .map(|i| format!("{}.{group}{i:04}", ctx.tag))
        .collect();
    ctx.register(&codes, pem, 8).await
}

/// (a) `throughput`: for each body size, the raw one-hop maximum, truc's
/// maximum, then fixed rates at the load points.
pub async fn throughput(ctx: &mut Ctx) -> Result<Value, String> {
    let (m, k) = (ctx.s.sources, ctx.s.dests);
    let url = ctx.s.amqp_url.clone();
    let src_regs = register_group(ctx, "TS", m, None).await?;
    let dst_regs = register_group(ctx, "TD", k, None).await?;
    let (sources, dests) = connect_pair(ctx, &src_regs, &dst_regs).await?;
    let names: Vec<String> = (0..k)
        .map(|i| format!("{}raw.tp.{i}", ctx.hub.prefix))
        .collect();
    ctx.queues.extend(names.iter().cloned());
    let raw = match RawSet::open(
        &url,
        &ctx.ctl,
        names,
        BTreeMap::new(),
        m,
        ctx.s.prefetch,
        &ctx.shared,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            close_all(&sources).await;
            close_all(&dests).await;
            return Err(e);
        }
    };
    // The same one hop into priority queues (x-max-priority 5, like truc's
    // ingress and inboxes): what the priority queue itself costs the broker.
    let raw_prio = if ctx.s.raw_priority {
        let names: Vec<String> = (0..k)
            .map(|i| format!("{}raw.tpp.{i}", ctx.hub.prefix))
            .collect();
        ctx.queues.extend(names.iter().cloned());
        let args = BTreeMap::from([("x-max-priority".to_owned(), ArgValue::Int(5))]);
        match RawSet::open(&url, &ctx.ctl, names, args, m, ctx.s.prefetch, &ctx.shared).await {
            Ok(r) => Some(r),
            Err(e) => {
                raw.close().await;
                close_all(&sources).await;
                close_all(&dests).await;
                return Err(e);
            }
        }
    } else {
        None
    };
    let mix = Mix::parse(&ctx.s.mix)?;
    let dest_codes: Vec<AgencyCode> = dests.iter().map(|d| d.creds.code.clone()).collect();
    let mut per_size = Vec::new();
    let (warmup, measure) = (secs(ctx.s.warmup_s), secs(ctx.s.measure_s));
    for &size in &ctx.s.sizes.clone() {
        if ctx.shared.cancel.is_cancelled() {
            break;
        }
        let label = size_label(size);
        let raw_route = Arc::new(Route::Raw {
            pubs: raw.pubs.clone(),
            queues: raw.queues.clone(),
            template: load::raw_template(size),
        });
        let truc_route = Arc::new(Route::Truc {
            sources: sources.clone(),
            dests: dest_codes.clone(),
            body: body(size),
            mix: mix.clone(),
            pool: None,
        });
        let spec = |name: String, path: &'static str, mode: Mode| PhaseSpec {
            scenario: "throughput",
            name,
            path,
            body_bytes: size,
            mode,
            warmup,
            measure,
            stop_early: None,
            drain_timeout_s: None,
        };
        let window = ctx.s.window;
        let raw_max = ctx
            .phase(
                spec(format!("raw {label} max"), "raw", Mode::Max { window }),
                raw_route.clone(),
            )
            .await;
        let raw_prio_max = match &raw_prio {
            Some(rp) => {
                let mut template = load::raw_template(size);
                template.priority = Some(Priority::NORMAL.amqp_priority());
                let route = Arc::new(Route::Raw {
                    pubs: rp.pubs.clone(),
                    queues: rp.queues.clone(),
                    template,
                });
                Some(
                    ctx.phase(
                        spec(
                            format!("raw prio-queue {label} max"),
                            "raw",
                            Mode::Max { window },
                        ),
                        route,
                    )
                    .await,
                )
            }
            None => None,
        };
        let truc_max = ctx
            .phase(
                spec(format!("truc {label} max"), "truc", Mode::Max { window }),
                truc_route.clone(),
            )
            .await;
        if size == 1024 {
            ctx.baseline = Some(raw_max.rate());
        }
        // Quick mode measures the load points for the first size only.
        let points: Vec<(String, f64)> = if ctx.s.quick && size != ctx.s.sizes[0] {
            Vec::new()
        } else if ctx.s.rates.is_empty() {
            ctx.s
                .loads
                .iter()
                .map(|f| (format!("{:.0}%", f * 100.0), f * truc_max.rate()))
                .collect()
        } else {
            ctx.s
                .rates
                .iter()
                .map(|r| (format!("{r:.0}/s"), *r))
                .collect()
        };
        let mut at_load = Vec::new();
        for (i, (what, rate)) in points.iter().enumerate() {
            if *rate < 1.0 || ctx.shared.cancel.is_cancelled() {
                continue;
            }
            let t = ctx
                .phase(
                    spec(format!("truc {label} @{what}"), "truc", Mode::Rate(*rate)),
                    truc_route.clone(),
                )
                .await;
            // The broker alone at the first load point's rate: what truc adds to latency.
            let r = if i == 0 {
                Some(
                    ctx.phase(
                        spec(format!("raw {label} @{what}"), "raw", Mode::Rate(*rate)),
                        raw_route.clone(),
                    )
                    .await,
                )
            } else {
                None
            };
            at_load.push(json!({
                "load": what,
                "rate": round1(*rate),
                "truc": phase_json(&t),
                "raw_same_rate": r.as_ref().map(phase_json),
            }));
        }
        per_size.push(json!({
            "body_bytes": size,
            // Sustained rates, the drain included (see bench/README.md).
            "raw_msgs_per_s": raw_max.rate(),
            "truc_msgs_per_s": truc_max.rate(),
            "ratio": ratio(truc_max.rate(), raw_max.rate()),
            // Received per second inside the measured window only.
            "raw_window_msgs_per_s": raw_max.msgs_per_s,
            "truc_window_msgs_per_s": truc_max.msgs_per_s,
            "window_ratio": ratio(truc_max.msgs_per_s, raw_max.msgs_per_s),
            "truc_cpu_us_per_msg": truc_max.truc_cpu_us_per_msg,
            "broker_cpu_us_per_msg_raw": raw_max.broker_cpu_us_per_msg,
            "broker_cpu_us_per_msg_truc": truc_max.broker_cpu_us_per_msg,
            "raw_priority_queue_msgs_per_s": raw_prio_max.as_ref().map(PhaseResult::rate),
            "raw_max": phase_json(&raw_max),
            "raw_priority_queue_max": raw_prio_max.as_ref().map(phase_json),
            "truc_max": phase_json(&truc_max),
            "loads": at_load,
        }));
    }
    raw.close().await;
    if let Some(rp) = &raw_prio {
        rp.close().await;
    }
    close_all(&sources).await;
    close_all(&dests).await;
    Ok(json!({
        "sources": m,
        "destinations": k,
        "window": ctx.s.window,
        "priority_mix": ctx.s.mix,
        "sizes": per_size,
    }))
}

/// (b) `connections`: N agencies connected at once (inbox + notify
/// consumers each, `frame_max=8192`), a steady load across them.
pub async fn connections(ctx: &mut Ctx) -> Result<Value, String> {
    let n = ctx.s.connections;
    let pids = ctx.monitor.pids();
    let broker_before = procstat::broker_limits(pids.broker);
    let rss_before = pids
        .truc
        .and_then(procstat::read)
        .map(|s| round1(s.rss_kib as f64 / 1024.0));
    ctx.monitor.set_label("connections: register");
    let t = Instant::now();
    let regs = register_group(ctx, "C", n, None).await?;
    let register_s = round1(t.elapsed().as_secs_f64());
    let rss_registered = pids
        .truc
        .and_then(procstat::read)
        .map(|s| round1(s.rss_kib as f64 / 1024.0));
    let mut url = ctx.s.amqp_url.clone();
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str("frame_max=8192");
    if let Some(b) = &broker_before {
        if let (Some(limit), Some(used)) = (b.socket_limit_estimate, b.sockets_in_use) {
            if (limit.saturating_sub(used) as usize) < n {
                let note = format!(
                    "the broker's open-files limit is {} (≈{limit} sockets, {used} in use): {n} agency connections cannot all be held; \
                     start the broker through ops/ensure-broker.sh (nofile 65536) to lift the cap",
                    b.open_files_limit.unwrap_or(0)
                );
                eprintln!("warning: {note}");
                ctx.notes.push(note);
            }
        }
    }
    ctx.monitor.set_label("connections: connect");
    let t = Instant::now();
    let (held, failed) = load::connect_agencies(
        &url,
        &regs,
        &ctx.shared,
        Some(ctx.s.prefetch.min(20)),
        64,
        64,
        secs(10.0),
    )
    .await;
    let connect_s = round1(t.elapsed().as_secs_f64());
    let broker_held = procstat::broker_limits(pids.broker);
    let attempted = failed
        .iter()
        .filter(|f| !f.ends_with("not attempted"))
        .count()
        + held.len();
    if !failed.is_empty() {
        ctx.shared.error(
            "connect",
            format!(
                "{} of {n} agencies not connected; first: {}",
                failed.len(),
                failed[0]
            ),
        );
    }
    eprintln!(
        "== connections: {} of {n} agencies connected in {connect_s}s ({} failed)",
        held.len(),
        failed.len()
    );
    // At the broker's open-files cap its queues cannot get file handles to
    // persist anything (a full run here timed out every publish): give a
    // quarter of the connections back before the load, and say so.
    let mut held = held;
    let mut released = 0;
    if !failed.is_empty() && held.len() >= 8 {
        let keep = held.len() - (held.len() / 4).min(200);
        let extra = held.split_off(keep);
        released = extra.len();
        close_all(&extra).await;
        let note = format!(
            "connections: the broker refused connection {} of {n}; {released} were closed again so the load runs on {} \
             with file handles left for the broker's queues",
            held.len() + released + 1,
            held.len()
        );
        eprintln!("== {note}");
        ctx.notes.push(note);
    }
    let mut phase = None;
    if held.len() >= 2 {
        let codes: Vec<AgencyCode> = held.iter().map(|a| a.creds.code.clone()).collect();
        let route = Arc::new(Route::Truc {
            sources: held.clone(),
            dests: codes,
            body: body(1024),
            mix: Mix::parse(&ctx.s.mix)?,
            pool: None,
        });
        let measure = if ctx.s.quick { 4.0 } else { 60.0 };
        let p = ctx
            .phase(
                PhaseSpec {
                    scenario: "connections",
                    name: format!("truc {} agencies @{:.0}/s", held.len(), ctx.s.conn_rate),
                    path: "truc",
                    body_bytes: 1024,
                    mode: Mode::Rate(ctx.s.conn_rate),
                    warmup: secs(ctx.s.warmup_s.max(2.0)),
                    measure: secs(measure),
                    stop_early: None,
                    drain_timeout_s: None,
                },
                route,
            )
            .await;
        phase = Some(p);
    }
    let truc_threads = pids.truc.and_then(procstat::read).map(|s| s.threads);
    ctx.monitor.set_label("connections: close");
    close_all(&held).await;
    let p = phase.as_ref();
    Ok(json!({
        "requested": n,
        "registered": regs.len(),
        "register_s": register_s,
        "attempted": attempted,
        "held": held.len() + released,
        "released_before_load": released,
        "loaded": held.len(),
        "failed": failed.len(),
        "first_failure": failed.first(),
        "connect_s": connect_s,
        "cap_detected": !failed.is_empty(),
        "broker_before": broker_before,
        "broker_while_held": broker_held,
        "truc_rss_mib_before": rss_before,
        "truc_rss_mib_after_register": rss_registered,
        "truc_rss_mib_max": p.and_then(|p| p.truc_rss_mib_max),
        "truc_threads": truc_threads,
        "truc_cpu_pct": p.and_then(|p| p.truc_cpu_pct),
        "msgs_per_s": p.map(|p| p.msgs_per_s),
        "phase": p.map(phase_json),
    }))
}

/// (c) `flash`: a backlog of Thường envelopes piles up for one destination
/// that does not consume; then it consumes while Hỏa tốc envelopes arrive.
pub async fn flash(ctx: &mut Ctx) -> Result<Value, String> {
    let url = ctx.s.amqp_url.clone();
    // Enough sources that the per-source rate policy does not refuse the backlog.
    let n_src = 10;
    let src_regs = register_group(ctx, "FS", n_src, None).await?;
    let dst_regs = register_group(ctx, "FD", 1, None).await?;
    let (sources, failed) =
        load::connect_agencies(&url, &src_regs, &ctx.shared, None, 8, 4, secs(15.0)).await;
    if !failed.is_empty() {
        close_all(&sources).await;
        return Err(format!("flash sources could not connect: {}", failed[0]));
    }
    // The destination connects (notices only): its inbox is not consumed yet.
    let (dest, failed) =
        load::connect_agencies(&url, &dst_regs, &ctx.shared, None, 1, 1, secs(15.0)).await;
    let Some(dest) = dest.into_iter().next() else {
        close_all(&sources).await;
        return Err(format!("flash destination could not connect: {failed:?}"));
    };
    let dest_codes = vec![dest.creds.code.clone()];
    let backlog = ctx.s.backlog;
    let limit = secs(if ctx.s.quick { 40.0 } else { 400.0 });
    let p_backlog = ctx
        .phase(
            PhaseSpec {
                scenario: "flash",
                name: format!("flash: backlog {backlog} x Thường"),
                path: "truc",
                body_bytes: 1024,
                mode: Mode::Count {
                    n: backlog,
                    window: ctx.s.window,
                    limit,
                },
                warmup: Duration::ZERO,
                measure: limit,
                stop_early: None,
                drain_timeout_s: None,
            },
            Arc::new(Route::Truc {
                sources: sources.clone(),
                dests: dest_codes.clone(),
                body: body(1024),
                mix: Mix::only(0),
                pool: None,
            }),
        )
        .await;
    let depth = tokio::time::timeout(secs(5.0), ctx.ctl.queue_info(&dest.inbox))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|i| i.messages);
    eprintln!(
        "== flash: inbox of {} holds {depth:?} envelopes",
        dest.creds.code
    );
    // Now the destination consumes, and flash envelopes arrive during the drain.
    if let Err(e) = dest.start_inbox(&ctx.shared, ctx.s.prefetch, true).await {
        close_all(&sources).await;
        dest.close().await;
        return Err(e);
    }
    let backlog_id = p_backlog.id;
    let shared = ctx.shared.clone();
    let accepted = shared
        .slot(backlog_id)
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let drain_start = Instant::now();
    let drain_start_ns = crate::stats::now_ns();
    // Hỏa tốc envelopes go out at a fixed rate until the backlog is consumed.
    let drained_at = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = ctx.shared.cancel.child_token();
    let watcher = {
        let (shared, drained_at, stop) = (shared.clone(), drained_at.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let received = shared
                    .slot(backlog_id)
                    .received
                    .load(std::sync::atomic::Ordering::Relaxed);
                if received >= accepted {
                    drained_at.store(crate::stats::now_ns(), std::sync::atomic::Ordering::Relaxed);
                    // A little more flash traffic once the backlog is gone, for comparison.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    stop.cancel();
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
    };
    let max_drain = if ctx.s.quick { 30.0 } else { 400.0 };
    let p_flash = ctx
        .phase(
            PhaseSpec {
                scenario: "flash",
                name: "flash: Hỏa tốc during drain".into(),
                path: "truc",
                body_bytes: 1024,
                mode: Mode::Rate(ctx.s.flash_rate),
                warmup: Duration::ZERO,
                measure: secs(max_drain),
                stop_early: Some(stop.clone()),
                // Every backlog status 01 goes through the router before the hub is idle.
                drain_timeout_s: Some(ctx.s.drain_timeout_s.max(backlog as f64 / 200.0)),
            },
            Arc::new(Route::Truc {
                sources: sources.clone(),
                dests: dest_codes.clone(),
                body: body(1024),
                mix: Mix::only(3),
                pool: None,
            }),
        )
        .await;
    stop.cancel();
    let _ = watcher.await;
    let drained_ns = drained_at.load(std::sync::atomic::Ordering::Relaxed);
    let backlog_drained_s =
        (drained_ns > 0).then(|| round1((drained_ns - drain_start_ns) as f64 / 1e9));
    let drain_s = round1(drain_start.elapsed().as_secs_f64());
    // Flash envelopes sent while the backlog was still there, and after.
    let (mut during, mut after): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    for s in ctx
        .shared
        .e2e
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|s| s.phase == p_flash.id && s.prio == 3)
    {
        if drained_ns == 0 || s.sent_ns < drained_ns {
            during.push(s.lat_ns);
        } else {
            after.push(s.lat_ns);
        }
    }
    let flash_received_during = during.len();
    let flash_pct = crate::stats::percentiles(&mut during);
    let flash_after_pct = crate::stats::percentiles(&mut after);
    let backlog_received = shared
        .slot(backlog_id)
        .received
        .load(std::sync::atomic::Ordering::Relaxed);
    let drain_rate = backlog_drained_s.map(|s| round1(backlog_received as f64 / s.max(0.1)));
    if let Some(p) = &flash_pct {
        eprintln!(
            "== flash: {} Hỏa tốc during the drain: p50 {:.1} p99 {:.1} max {:.1} ms; backlog drained in {:?}s",
            p.count, p.p50_ms, p.p99_ms, p.max_ms, backlog_drained_s
        );
    }
    close_all(&sources).await;
    dest.close().await;
    Ok(json!({
        "backlog": backlog,
        "backlog_accepted": accepted,
        "inbox_depth_before_drain": depth,
        "backlog_publish": phase_json(&p_backlog),
        "backlog_drained_s": backlog_drained_s,
        "backlog_received": backlog_received,
        "backlog_drain_msgs_per_s": drain_rate,
        "drain_observed_s": drain_s,
        "flash_rate": ctx.s.flash_rate,
        "flash_received_during_backlog": flash_received_during,
        "flash_during_backlog": flash_pct,
        "flash_after_backlog": flash_after_pct,
        "flash_phase": phase_json(&p_flash),
    }))
}

/// A pool of pre-signed envelopes, `per_source` for each source, signed
/// with RSA when `key` is given (the signature covers `lgsp-alg`, so the
/// envelope is built, its alg switched, then signed again).
async fn presign(
    ctx: &Ctx,
    sources: &[Arc<Agency>],
    dests: &[AgencyCode],
    total: usize,
    key: Option<Arc<rsa::pkcs1v15::SigningKey<sha2::Sha256>>>,
) -> Vec<(usize, Message)> {
    let creds: Vec<_> = sources.iter().map(|a| a.creds.clone()).collect();
    let dests = dests.to_vec();
    let prefix = ctx.hub.prefix.clone();
    let threads = 2;
    let mut handles = Vec::new();
    for t in 0..threads {
        let (creds, dests, prefix, key) =
            (creds.clone(), dests.clone(), prefix.clone(), key.clone());
        handles.push(tokio::task::spawn_blocking(move || {
            use rsa::signature::{SignatureEncoding, Signer};
            let b = body(1024);
            let mut out = Vec::new();
            for i in (t..total).step_by(threads) {
                let src = i % creds.len();
                let dest = dests[(i / creds.len() + src) % dests.len()].clone();
                let mut m = truc::client::envelope_message(
                    &prefix,
                    &creds[src],
                    &load::outgoing(vec![dest], Priority::NORMAL, b.clone()),
                );
                if let Some(key) = &key {
                    m.set_header("lgsp-alg", "rsa-sha256");
                    m.headers.remove("lgsp-signature");
                    let canon = canonical_form(&m, &m.routing_key).unwrap_or_default();
                    let sig = key.sign(canon.as_bytes()).to_bytes();
                    m.set_header(
                        "lgsp-signature",
                        base64::engine::general_purpose::STANDARD.encode(sig),
                    );
                }
                out.push((src, m));
            }
            out
        }));
    }
    let mut pool = Vec::with_capacity(total);
    for h in handles {
        if let Ok(v) = h.await {
            pool.extend(v);
        }
    }
    pool
}

/// (d) `rsa`: the same flat-out load signed with HMAC-SHA256, then with
/// RSA-SHA256 (2048-bit keys), from pre-signed pools so the benchmark's
/// own signing does not compete with truc during the measurement.
pub async fn rsa(ctx: &mut Ctx) -> Result<Value, String> {
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    let n = ctx.s.rsa_agencies;
    let url = ctx.s.amqp_url.clone();
    ctx.monitor.set_label("rsa: key generation");
    let t = Instant::now();
    let key =
        tokio::task::spawn_blocking(|| rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("RSA key generation: {e}"))?;
    let pem = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| e.to_string())?;
    let keygen_s = round1(t.elapsed().as_secs_f64());
    let signing = Arc::new(rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key));
    let hmac_regs = register_group(ctx, "RH", n, None).await?;
    let rsa_regs = register_group(ctx, "RR", n, Some(&pem)).await?;
    let dst_regs = register_group(ctx, "RD", n, None).await?;
    let (hmac_src, f1) =
        load::connect_agencies(&url, &hmac_regs, &ctx.shared, None, 16, 8, secs(15.0)).await;
    let (rsa_src, f2) =
        load::connect_agencies(&url, &rsa_regs, &ctx.shared, None, 16, 8, secs(15.0)).await;
    let (dests, f3) = load::connect_agencies(
        &url,
        &dst_regs,
        &ctx.shared,
        Some(ctx.s.prefetch),
        16,
        8,
        secs(15.0),
    )
    .await;
    let all: Vec<Arc<Agency>> = hmac_src
        .iter()
        .chain(rsa_src.iter())
        .chain(dests.iter())
        .cloned()
        .collect();
    if let Some(f) = f1.first().or(f2.first()).or(f3.first()) {
        close_all(&all).await;
        return Err(format!("rsa agencies could not connect: {f}"));
    }
    let dest_codes: Vec<AgencyCode> = dests.iter().map(|d| d.creds.code.clone()).collect();
    let total = ctx.s.rsa_pool;
    // Signing RSA-2048 costs the benchmark milliseconds per envelope, so the
    // pools are small: quick mode compares the two at a fixed rate the pool
    // covers; a full run compares them flat out until the pool runs out.
    let (mode, warmup) = if ctx.s.quick {
        let rate = (total as f64 / (ctx.s.measure_s + 1.0)).floor();
        (Mode::Rate(rate), secs(0.5))
    } else {
        (
            Mode::Max {
                window: ctx.s.window,
            },
            secs(ctx.s.warmup_s.min(2.0)),
        )
    };
    let mut out = serde_json::Map::new();
    out.insert("keygen_s".into(), json!(keygen_s));
    out.insert("key_bits".into(), json!(2048));
    out.insert("pool_per_alg".into(), json!(total));
    out.insert(
        "mode".into(),
        json!(if ctx.s.quick { "rate" } else { "max" }),
    );
    let mut rates = Vec::new();
    for (alg, sources, key) in [
        ("hmac-sha256", &hmac_src, None),
        ("rsa-sha256", &rsa_src, Some(signing.clone())),
    ] {
        ctx.monitor.set_label(&format!("rsa: pre-signing {alg}"));
        let t = Instant::now();
        let mut pool = presign(ctx, sources, &dest_codes, total, key).await;
        let sign_s = t.elapsed().as_secs_f64();
        // Sent from the back: reverse so the oldest signatures go first.
        pool.reverse();
        let route = Arc::new(Route::Truc {
            sources: sources.clone(),
            dests: dest_codes.clone(),
            body: Vec::new(),
            mix: Mix::only(0),
            pool: Some(std::sync::Mutex::new(pool)),
        });
        let p = ctx
            .phase(
                PhaseSpec {
                    scenario: "rsa",
                    name: match mode {
                        Mode::Rate(r) => format!("truc {alg} 1 KiB @{r:.0}/s"),
                        _ => format!("truc {alg} 1 KiB max"),
                    },
                    path: "truc",
                    body_bytes: 1024,
                    mode,
                    warmup,
                    measure: secs(ctx.s.measure_s),
                    stop_early: None,
                    drain_timeout_s: None,
                },
                route,
            )
            .await;
        rates.push(p.rate());
        out.insert(
            alg.into(),
            json!({
                "sign_s": round1(sign_s),
                "client_sign_us_per_msg": round1(sign_s * 1e6 * 2.0 / total.max(1) as f64),
                "msgs_per_s": p.rate(),
                "window_msgs_per_s": p.msgs_per_s,
                "truc_cpu_us_per_msg": p.truc_cpu_us_per_msg,
                "truc_cpu_pct": p.truc_cpu_pct,
                "pool_exhausted": p.pool_exhausted,
                "phase": phase_json(&p),
            }),
        );
    }
    out.insert("rsa_over_hmac".into(), json!(ratio(rates[1], rates[0])));
    close_all(&all).await;
    Ok(Value::Object(out))
}

/// Floods `to` from `agencies` in turn as fast as 64 publishes in flight
/// allow, fresh signatures each (AMQP priority 5 on every message when
/// `priority5`), until `stop`; returns how many were published.
async fn flood(
    agencies: Vec<Arc<Agency>>,
    prefix: String,
    to: AgencyCode,
    priority5: bool,
    stop: tokio_util::sync::CancellationToken,
) -> u64 {
    use futures_util::stream::{self, StreamExt};
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let b = body(1024);
    stream::iter(0u64..)
        .take_while(|_| std::future::ready(!stop.is_cancelled()))
        .for_each_concurrent(64, |i| {
            let agency = agencies[i as usize % agencies.len()].clone();
            let sent = sent.clone();
            let m = {
                let mut m = truc::client::envelope_message(
                    &prefix,
                    &agency.creds,
                    &load::outgoing(vec![to.clone()], Priority::NORMAL, b.clone()),
                );
                if priority5 {
                    // Not covered by the signature: the hub must ignore it.
                    m.priority = Some(5);
                }
                m
            };
            async move {
                if agency.link.publish(&m).await.is_ok() {
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .await;
    sent.load(std::sync::atomic::Ordering::Relaxed)
}

/// (e) `fairness`: a quiet source sends Thường envelopes at a few per second
/// to a destination that consumes, alone (baseline), then while other
/// sources flood another destination (not consumed), then while the flood carries AMQP
/// priority 5; its end-to-end p50/p99 in each, and the flood's over the
/// baseline's as ratios.
pub async fn fairness(ctx: &mut Ctx) -> Result<Value, String> {
    let url = ctx.s.amqp_url.clone();
    let quiet_regs = register_group(ctx, "QS", 1, None).await?;
    // Several flooding agencies, so the per-source rate policy (500/s by
    // default) lets most of the flood through to be routed.
    let n_flood = 8;
    let flood_regs = register_group(ctx, "QF", n_flood, None).await?;
    let dest_regs = register_group(ctx, "QD", 2, None).await?;
    let (quiet, failed) =
        load::connect_agencies(&url, &quiet_regs, &ctx.shared, None, 1, 1, secs(15.0)).await;
    let (flooder, failed2) =
        load::connect_agencies(&url, &flood_regs, &ctx.shared, None, 4, 1, secs(15.0)).await;
    let (dests, failed3) =
        load::connect_agencies(&url, &dest_regs, &ctx.shared, None, 2, 1, secs(15.0)).await;
    let all: Vec<Arc<Agency>> = quiet
        .iter()
        .chain(&flooder)
        .chain(&dests)
        .cloned()
        .collect();
    if quiet.len() + flooder.len() + dests.len() < 3 + n_flood {
        close_all(&all).await;
        return Err(format!(
            "fairness agencies could not connect: {:?}",
            failed.iter().chain(&failed2).chain(&failed3).next()
        ));
    }
    // The quiet destination consumes (and sends 01); the flooded one does not.
    if let Err(e) = dests[0]
        .start_inbox(&ctx.shared, ctx.s.prefetch, true)
        .await
    {
        close_all(&all).await;
        return Err(e);
    }
    let quiet_to = vec![dests[0].creds.code.clone()];
    let flood_to = dests[1].creds.code.clone();
    let rate = 5.0;
    let measure = secs(if ctx.s.quick { 6.0 } else { 30.0 });
    let mut out = serde_json::Map::new();
    let mut p99s = Vec::new();
    for (key, flood_kind) in [
        ("baseline", None),
        ("flood", Some(false)),
        ("flood_priority5", Some(true)),
    ] {
        let stop = ctx.shared.cancel.child_token();
        let flooding = flood_kind.map(|p5| {
            tokio::spawn(flood(
                flooder.clone(),
                ctx.hub.prefix.clone(),
                flood_to.clone(),
                p5,
                stop.clone(),
            ))
        });
        if flooding.is_some() {
            // The flood is under way before the quiet source is measured.
            tokio::time::sleep(secs(1.0)).await;
        }
        let p = ctx
            .phase(
                PhaseSpec {
                    scenario: "fairness",
                    name: format!("fairness: quiet source at {rate}/s, {key}"),
                    path: "truc",
                    body_bytes: 1024,
                    mode: Mode::Rate(rate),
                    warmup: Duration::ZERO,
                    measure,
                    stop_early: None,
                    drain_timeout_s: None,
                },
                Arc::new(Route::Truc {
                    sources: quiet.clone(),
                    dests: quiet_to.clone(),
                    body: body(1024),
                    mix: Mix::only(0),
                    pool: None,
                }),
            )
            .await;
        stop.cancel();
        let flooded = match flooding {
            Some(h) => Some(h.await.unwrap_or(0)),
            None => None,
        };
        let e2e = p.e2e.clone();
        if let Some(e) = &e2e {
            eprintln!(
                "== fairness {key}: quiet source p50 {:.1} p99 {:.1} max {:.1} ms ({} samples); flood published {flooded:?}",
                e.p50_ms, e.p99_ms, e.max_ms, e.count
            );
        }
        p99s.push(e2e.as_ref().map(|e| (e.p50_ms, e.p99_ms)));
        out.insert(
            key.to_owned(),
            json!({
                "flood_published": flooded,
                "flood_msgs_per_s": flooded.map(|n| round1(n as f64 / (measure.as_secs_f64() + 1.0))),
                "quiet_e2e": e2e,
                "phase": phase_json(&p),
            }),
        );
    }
    let vs = |i: usize| match (p99s[0], p99s[i]) {
        (Some((b50, b99)), Some((f50, f99))) => {
            json!({"p50_ratio": ratio(f50, b50), "p99_ratio": ratio(f99, b99)})
        }
        _ => Value::Null,
    };
    out.insert("flood_vs_baseline".into(), vs(1));
    out.insert("flood_priority5_vs_baseline".into(), vs(2));
    out.insert("quiet_rate".into(), json!(rate));
    close_all(&all).await;
    Ok(Value::Object(out))
}

//! The `spaces` scenario: MB/s of large documents (20 MB and 100 MB by
//! default) through upload spaces, against the raw broker and against `cp`
//! of the same file, in the same run, on the same machine.
//!
//! For each document size, `--space-reps` rounds, each round measuring once:
//!
//! - **cp**: `cp` of the document's file to another file in the same
//!   directory (the hub's work directory, beside its data directory), then
//!   `fsync` of the copy: the disk's own copy speed;
//! - **raw**: one persistent message of the document's size published with
//!   a publisher confirm to a durable classic queue, consumed by one
//!   consumer on its own connection: publish start → the consumer holds the
//!   whole message;
//! - **truc**, an upload space end to end: `POST /v1/spaces`, every 1 MiB
//!   chunk `PUT` (`--space-inflight` at once, each on its own keep-alive
//!   connection; 1: one after the other on one connection), `POST
//!   /v1/spaces/{id}/complete`, an envelope naming the space (`lgsp-space`,
//!   empty body, the document's `lgsp-digest`) posted to `/v1/envelopes`,
//!   the delivery on the destination's AMQP inbox (checked by
//!   `truc::client::Client::receive`), and `GET /v1/spaces/{id}/content`
//!   with the destination's own session, streamed through SHA-256 as it
//!   is read and checked against the delivery's `lgsp-digest`;
//! - **inline**: the same document as the body of `POST /v1/envelopes`,
//!   which the hub streams into a space of its own (a body over the
//!   policy's `inline_bytes`), then the same delivery and fetch.
//!
//! After each truc run the destination acknowledges the delivery and sends
//! status `01` over AMQP; the run waits until the hub has deleted the
//! space (`GET /v1/spaces/{id}` answers `404`), so rounds do not overlap.
//! The hub's resident memory is sampled every 20 ms (and its peak reset
//! through `/proc/<pid>/clear_refs` when allowed) before and during each
//! truc run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use truc::broker::{Link, Subscription};
use truc::client::{envelope_message, new_message_id, Client, Credentials};
use truc::code::AgencyCode;
use truc::envelope::Priority;
use truc::message::Message;

use crate::gateway::{carried, open_session, wait_router_quiet, Http};
use crate::load::{self, Agency};
use crate::procstat;
use crate::run::Ctx;
use crate::scenarios::{ratio, register_group};
use crate::stats::{round1, round3};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Longest wait for one small call (create, complete, envelope, status).
const CALL: Duration = Duration::from_secs(60);
/// Longest wait for one whole transfer (a chunk, a fetch, an inline body,
/// a raw message).
const TRANSFER: Duration = Duration::from_secs(180);
/// How often the hub's resident memory is read.
const RSS_EVERY: Duration = Duration::from_millis(20);

/// Decimal megabytes.
fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

/// `20 MB`, `100 MB`, `1.5 MB`, `4096 B`.
fn label(bytes: usize) -> String {
    if bytes >= 1_000_000 {
        let m = mb(bytes);
        if m.fract() == 0.0 {
            format!("{m:.0} MB")
        } else {
            format!("{m:.1} MB")
        }
    } else {
        format!("{bytes} B")
    }
}

fn sha256(b: &[u8]) -> String {
    format!("sha256={}", hex::encode(Sha256::digest(b)))
}

/// The median of `v` (the mean of the two middle values for an even count).
fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => None,
        n if n % 2 == 1 => Some(s[n / 2]),
        n => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// Four decimals: the phases of a 20 MB run last milliseconds.
fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// MB/s of `bytes` in `s` seconds.
fn mb_per_s(bytes: usize, s: Option<f64>) -> Option<f64> {
    s.filter(|s| *s > 0.0).map(|s| round1(mb(bytes) / s))
}

/// A directory of the run's files, removed with everything in it when
/// dropped (also when the scenario fails).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The hub's resident memory, read every [`RSS_EVERY`] by a task of its own.
struct RssWatch {
    pid: Option<u32>,
    /// Largest RSS read since the last [`RssWatch::reset`], KiB.
    peak_kib: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl RssWatch {
    fn start(pid: Option<u32>, stop: CancellationToken) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        if let Some(pid) = pid {
            let (peak, stop) = (peak_kib.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RSS_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    if let Some(s) = procstat::read(pid) {
                        peak.fetch_max(s.rss_kib, Ordering::Relaxed);
                    }
                }
            });
        }
        Self {
            pid,
            peak_kib,
            stop,
        }
    }

    /// Starts a new peak: the RSS now (KiB), and whether the kernel's own
    /// peak (`VmHWM`) was reset too, so it counts from now.
    fn reset(&self) -> Option<(u64, bool)> {
        let pid = self.pid?;
        let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let now = procstat::read(pid)?.rss_kib;
        self.peak_kib.store(now, Ordering::Relaxed);
        Some((now, hwm_reset))
    }

    /// The peak since the last reset, KiB: the largest sample, or the
    /// kernel's peak when it was reset and is larger.
    fn peak(&self, hwm_reset: bool) -> Option<u64> {
        let s = procstat::read(self.pid?)?;
        let sampled = self.peak_kib.load(Ordering::Relaxed).max(s.rss_kib);
        Some(if hwm_reset {
            sampled.max(s.hwm_kib)
        } else {
            sampled
        })
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the scenario opened, closed at its end however it ended.
#[derive(Default)]
struct Open {
    source: Option<Arc<Agency>>,
    dest: Option<(Client, Subscription)>,
    raw: Option<(Link, Link, Subscription)>,
    /// The source's connections and session, to delete the spaces it made
    /// that no envelope took (a run that failed half-way).
    src_http: Option<(Arc<Http>, String)>,
    unsent: Vec<String>,
}

impl Open {
    async fn close(self) {
        let step = Duration::from_secs(5);
        if let Some((http, token)) = &self.src_http {
            for id in &self.unsent {
                let _ = tokio::time::timeout(
                    step,
                    http.call("DELETE", &format!("/v1/spaces/{id}"), &[auth(token)], b""),
                )
                .await;
            }
        }
        if let Some(a) = self.source {
            a.close().await;
        }
        if let Some((client, sub)) = self.dest {
            let _ = tokio::time::timeout(step, sub.close()).await;
            let _ = tokio::time::timeout(step, client.close()).await;
        }
        if let Some((publisher, consumer, sub)) = self.raw {
            let _ = tokio::time::timeout(step, sub.close()).await;
            let _ = tokio::time::timeout(step, publisher.close()).await;
            let _ = tokio::time::timeout(step, consumer.close()).await;
        }
    }
}

fn auth(token: &str) -> (String, String) {
    ("Authorization".into(), format!("Bearer {token}"))
}

/// The gateway side of the run: both agencies' connections and sessions.
struct Gw {
    src_http: Arc<Http>,
    src_token: String,
    dst_http: Arc<Http>,
    dst_token: String,
    prefix: String,
    src: Credentials,
    dst: AgencyCode,
    /// The hub's spaces directory, when it is the benchmark's child.
    spaces_dir: Option<PathBuf>,
    inflight: usize,
}

/// One truc run (space or inline), seconds from its start.
#[derive(Default)]
struct TrucRun {
    total_s: f64,
    /// Space: `POST /v1/spaces` answered.
    create_s: Option<f64>,
    /// Space: every chunk stored (from the start).
    chunks_s: Option<f64>,
    /// Space: create → complete answered (the upload phase).
    upload_s: Option<f64>,
    /// `POST /v1/envelopes` answered (from the start; inline: the body's
    /// upload and the routing).
    posted_s: f64,
    /// The delivery on the destination's inbox (from the start).
    delivered_s: f64,
    /// The fetch: `GET …/content` sent → last byte read and digest checked.
    fetch_s: f64,
    /// Status `01` sent → the space deleted by the hub.
    deleted_after_status_s: Option<f64>,
    rss_before_kib: Option<u64>,
    rss_peak_kib: Option<u64>,
    hwm_reset: bool,
}

impl TrucRun {
    fn json(&self) -> Value {
        let mib = |k: Option<u64>| k.map(|k| round1(k as f64 / 1024.0));
        json!({
            "total_s": round4(self.total_s),
            "create_s": self.create_s.map(round4),
            "chunks_s": self.chunks_s.map(round4),
            "upload_s": self.upload_s.map(round4),
            "posted_s": round4(self.posted_s),
            "delivered_s": round4(self.delivered_s),
            "fetch_s": round4(self.fetch_s),
            "deleted_after_status_s": self.deleted_after_status_s.map(round3),
            "truc_rss_before_mib": mib(self.rss_before_kib),
            "truc_rss_peak_mib": mib(self.rss_peak_kib),
            "truc_rss_growth_mib": mib(self.growth_kib()),
            "rss_peak_from": if self.hwm_reset { "VmHWM reset before the run, and samples every 20 ms" } else { "samples every 20 ms" },
        })
    }

    fn growth_kib(&self) -> Option<u64> {
        Some(self.rss_peak_kib?.saturating_sub(self.rss_before_kib?))
    }
}

/// (g) `spaces`: for each document size, `cp`, the raw broker, an upload
/// space end to end and an inline body, in rounds; MB/s of each and the
/// ratios.
pub async fn spaces(ctx: &mut Ctx) -> Result<Value, String> {
    let sizes = ctx.s.space_sizes.clone();
    let Some(&largest) = sizes.iter().max() else {
        return Err("no document size (--space-sizes)".into());
    };
    let addr = ctx.hub.gateway_addr(Duration::from_secs(10)).await?;
    // The copies go beside the hub's data directory (its work directory),
    // on the same disk; for a running truc, into the temporary directory.
    let base = ctx.hub.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch(base.join(format!("spaces-cp-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(|e| format!("{}: {e}", scratch.0.display()))?;
    let mut open = Open::default();
    let cancel = ctx.shared.cancel.clone();
    let res = tokio::select! {
        _ = cancel.cancelled() => Err("cancelled".to_owned()),
        r = run(ctx, &mut open, &addr, &scratch.0, &sizes, largest) => r,
    };
    open.close().await;
    drop(scratch);
    res
}

async fn run(
    ctx: &mut Ctx,
    open: &mut Open,
    addr: &str,
    dir: &Path,
    sizes: &[usize],
    largest: usize,
) -> Result<Value, String> {
    let url = ctx.s.amqp_url.clone();
    let reps = ctx.s.space_reps;
    let prefix = ctx.hub.prefix.clone();
    let src = register_group(ctx, "SS", 1, None).await?.remove(0);
    let dst = register_group(ctx, "SD", 1, None).await?.remove(0);

    // The source reads its notices over AMQP (checked and counted as
    // everywhere else: a rejected envelope is an error); it works through
    // the gateway. The destination receives over AMQP with the library's
    // client and fetches through the gateway with a session of its own.
    let source = Agency::connect(&url, &src, &ctx.shared, secs(15.0)).await?;
    open.source = Some(source.clone());
    source.start_notices(&ctx.shared, 100).await?;
    let client = tokio::time::timeout(
        secs(15.0),
        Client::connect(&url, &prefix, dst.creds.clone()),
    )
    .await
    .map_err(|_| "destination: connect timeout".to_owned())?
    .map_err(|e| format!("destination: {e}"))?;
    let inbox = match tokio::time::timeout(secs(15.0), client.inbox(4)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            client.close().await;
            return Err(format!("destination inbox: {e}"));
        }
        Err(_) => {
            client.close().await;
            return Err("destination inbox: timeout".into());
        }
    };
    open.dest = Some((client, inbox));
    let src_http = Http::new(addr);
    let src_token = open_session(&src_http, &src.creds).await?;
    open.src_http = Some((src_http.clone(), src_token.clone()));
    let dst_http = Http::new(addr);
    let dst_token = open_session(&dst_http, &dst.creds).await?;
    let gw = Gw {
        src_http,
        src_token,
        dst_http,
        dst_token,
        prefix: prefix.clone(),
        src: src.creds.clone(),
        dst: dst.creds.code.clone(),
        spaces_dir: ctx
            .hub
            .work_dir
            .as_ref()
            .filter(|_| ctx.hub.started)
            .map(|d| d.join("data").join("spaces")),
        inflight: ctx.s.space_inflight,
    };

    // The raw hop: one durable classic queue (deleted with the run's
    // other queues), a publisher and a consumer on connections of their own.
    let queue = format!("{prefix}raw.spaces");
    ctx.queues.push(queue.clone());
    let spec = truc::topology::QueueSpec {
        name: queue.clone(),
        bind: Vec::new(),
        arguments: Default::default(),
    };
    tokio::time::timeout(secs(15.0), ctx.ctl.declare_queue(&spec))
        .await
        .map_err(|_| format!("declare {queue}: timeout"))?
        .map_err(|e| format!("declare {queue}: {e}"))?;
    let connect = |name: &'static str| {
        let url = url.clone();
        async move {
            tokio::time::timeout(secs(15.0), Link::connect(&url, name))
                .await
                .map_err(|_| format!("{name}: connect timeout"))?
                .map_err(|e| format!("{name}: {e}"))
        }
    };
    let publisher = connect("bench spaces raw publisher").await?;
    let consumer = match connect("bench spaces raw consumer").await {
        Ok(c) => c,
        Err(e) => {
            publisher.close().await;
            return Err(e);
        }
    };
    let sub = match tokio::time::timeout(secs(15.0), consumer.subscribe(&queue, 1, "")).await {
        Ok(Ok(s)) => s,
        other => {
            publisher.close().await;
            consumer.close().await;
            return Err(format!(
                "subscribe {queue}: {}",
                match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timeout".into(),
                }
            ));
        }
    };
    open.raw = Some((publisher, consumer, sub));

    ctx.monitor.set_label("spaces: generating the document");
    let t = Instant::now();
    // Random bytes, generated once; each size is the start of it.
    let doc: Arc<Vec<u8>> = Arc::new(
        tokio::task::spawn_blocking(move || {
            let mut d = vec![0u8; largest];
            rand::rngs::StdRng::seed_from_u64(0x7275_635f_7370_6163).fill_bytes(&mut d);
            d
        })
        .await
        .map_err(|e| e.to_string())?,
    );
    let generate_s = round3(t.elapsed().as_secs_f64());

    ctx.monitor.set_label("spaces: waiting for an idle hub");
    let (waited_s, quiet) = wait_router_quiet(ctx, secs(ctx.s.drain_timeout_s)).await;
    if !quiet {
        let note = format!(
            "spaces: truc's router was still handling messages after {waited_s} s; the measurements ran anyway"
        );
        eprintln!("warning: {note}");
        ctx.notes.push(note);
    }
    // The runs below reset truc's VmHWM: the run's own peak is kept first.
    if let Some(snap) = ctx.hub.pid.and_then(procstat::read) {
        ctx.truc_hwm_before_reset_kib = ctx.truc_hwm_before_reset_kib.max(snap.hwm_kib);
    }
    let rss = RssWatch::start(ctx.hub.pid, ctx.shared.cancel.child_token());
    let scenario_rss = rss.reset();
    // One unreported round of the smallest document first: the first
    // transfer of each kind pays for connections, buffers and caches.
    let smallest = sizes.iter().copied().min().unwrap_or(largest);
    ctx.monitor
        .set_label(&format!("spaces: warm-up ({})", label(smallest)));
    let t = Instant::now();
    let warm = &doc[..smallest];
    let warm_digest = tokio::task::block_in_place(|| sha256(warm));
    let warm_msg = Message {
        routing_key: format!("{prefix}raw.spaces"),
        body: Arc::from(warm),
        ..Message::default()
    };
    if let Err(e) = raw_once(open, &warm_msg, warm).await {
        ctx.shared.error("spaces-warmup", format!("raw: {e}"));
    }
    for inline_body in [false, true] {
        if let Err(e) = truc_once(open, &gw, warm, &warm_digest, inline_body).await {
            ctx.shared.error("spaces-warmup", format!("truc: {e}"));
        }
    }
    let warmup_s = round3(t.elapsed().as_secs_f64());
    let mut scenario_peak = rss.peak(scenario_rss.is_some_and(|r| r.1)).unwrap_or(0);
    let after_warmup = ctx.hub.pid.and_then(procstat::read).map(|s| s.rss_kib);
    eprintln!(
        "== spaces: {} documents, {reps} round(s) of cp, raw, space and inline each; chunks {}",
        sizes
            .iter()
            .map(|&s| label(s))
            .collect::<Vec<_>>()
            .join(" and "),
        upload_mode(gw.inflight)
    );
    let mut out_sizes = Vec::new();
    for &size in sizes {
        let v = one_size(
            ctx,
            open,
            &gw,
            dir,
            &doc[..size],
            reps,
            &rss,
            &mut scenario_peak,
        )
        .await;
        print_size(&v);
        out_sizes.push(v);
    }
    ctx.truc_hwm_before_reset_kib = ctx.truc_hwm_before_reset_kib.max(scenario_peak);
    let (before, _) = scenario_rss.unwrap_or((0, false));
    let growths: Vec<f64> = out_sizes
        .iter()
        .filter_map(|s| s["truc"]["rss_growth_mib_max"].as_f64())
        .collect();
    Ok(json!({
        "chunk_upload": upload_mode(gw.inflight),
        "chunks_in_flight": gw.inflight,
        "reps": reps,
        "copy_dir": dir.display().to_string(),
        "generate_s": generate_s,
        "waited_for_idle_router_s": waited_s,
        "warmup_s": warmup_s,
        "cancelled": ctx.shared.cancel.is_cancelled(),
        "sizes": out_sizes,
        "truc_rss_before_mib": scenario_rss.map(|(b, _)| round1(b as f64 / 1024.0)),
        "truc_rss_after_warmup_mib": after_warmup.map(|b| round1(b as f64 / 1024.0)),
        "truc_rss_peak_mib": (scenario_peak > 0).then(|| round1(scenario_peak as f64 / 1024.0)),
        "truc_rss_growth_mib": (scenario_peak > 0).then(|| round1(scenario_peak.saturating_sub(before) as f64 / 1024.0)),
        "truc_rss_growth_mib_max_per_run": growths.iter().copied().reduce(f64::max),
        "method": "MB = 10^6 bytes; each figure is the median of the rounds; cp = `cp` then fsync of the copy, in the hub's work directory (its data directory's disk); raw = publish with confirm → one consumer has the whole message (durable classic queue, persistent); truc = POST /v1/spaces → chunks → complete → envelope (POST /v1/envelopes, lgsp-space) → the delivery on the destination's AMQP inbox → GET …/content streamed through SHA-256 and checked; inline = the document as the body of POST /v1/envelopes → delivery → fetch. The sender's own SHA-256 of the document is not in the truc times (sender_sha256_s)",
    }))
}

fn upload_mode(inflight: usize) -> String {
    if inflight <= 1 {
        "one after the other on one keep-alive connection".into()
    } else {
        format!("{inflight} in flight, each on its own keep-alive connection")
    }
}

/// The measurements of one document size, `reps` rounds of each kind
/// interleaved (so a drift of the machine weighs on every kind alike).
#[allow(clippy::too_many_arguments)]
async fn one_size(
    ctx: &mut Ctx,
    open: &mut Open,
    gw: &Gw,
    dir: &Path,
    doc: &[u8],
    reps: usize,
    rss: &RssWatch,
    scenario_peak: &mut u64,
) -> Value {
    let size = doc.len();
    let name = label(size);
    ctx.monitor.set_label(&format!("spaces {name}: preparing"));
    // The sender's digest, the file cp copies (written and flushed) and the
    // raw message's body, made before anything is timed.
    let file = dir.join(format!("doc-{size}.bin"));
    let copy = dir.join(format!("copy-{size}.bin"));
    let (digest, sender_sha256_s, written, raw_body) = tokio::task::block_in_place(|| {
        let t = Instant::now();
        let digest = sha256(doc);
        let sender_sha256_s = t.elapsed().as_secs_f64();
        let written = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&file)?;
            f.write_all(doc)?;
            f.sync_all()
        })()
        .map_err(|e| format!("{}: {e}", file.display()));
        (digest, sender_sha256_s, written, Arc::<[u8]>::from(doc))
    });
    let raw_msg = Message {
        exchange: String::new(),
        routing_key: format!("{}raw.spaces", gw.prefix),
        content_type: Some("application/octet-stream".into()),
        body: raw_body,
        ..Message::default()
    };

    let mut cp = Kind::default();
    let mut raw = Kind::default();
    let mut confirm = Vec::new();
    let mut truc = Kind::default();
    let mut truc_runs: Vec<TrucRun> = Vec::new();
    let mut inline = Kind::default();
    let mut inline_runs: Vec<TrucRun> = Vec::new();
    if let Err(e) = &written {
        cp.fail(ctx, "spaces-cp", e.clone());
    }
    for rep in 1..=reps {
        if ctx.shared.cancel.is_cancelled() {
            break;
        }
        if cp.going() {
            ctx.monitor
                .set_label(&format!("spaces {name}: cp ({rep}/{reps})"));
            match cp_once(&file, &copy, size).await {
                Ok(s) => cp.runs.push(s),
                Err(e) => cp.fail(ctx, "spaces-cp", e),
            }
        }
        if raw.going() {
            ctx.monitor
                .set_label(&format!("spaces {name}: raw broker ({rep}/{reps})"));
            match raw_once(open, &raw_msg, doc).await {
                Ok((total, confirmed)) => {
                    raw.runs.push(total);
                    confirm.push(round4(confirmed));
                }
                Err(e) => raw.fail(ctx, "spaces-raw", e),
            }
        }
        for (kind, runs, inline_body) in [
            (&mut truc, &mut truc_runs, false),
            (&mut inline, &mut inline_runs, true),
        ] {
            if !kind.going() {
                continue;
            }
            ctx.monitor.set_label(&format!(
                "spaces {name}: {} ({rep}/{reps})",
                if inline_body {
                    "inline body"
                } else {
                    "upload space"
                }
            ));
            let before = rss.reset();
            let r = truc_once(open, gw, doc, &digest, inline_body).await;
            let peak = rss.peak(before.is_some_and(|b| b.1));
            if let Some(p) = peak {
                *scenario_peak = (*scenario_peak).max(p);
            }
            match r {
                Ok(mut run) => {
                    run.rss_before_kib = before.map(|b| b.0);
                    run.hwm_reset = before.is_some_and(|b| b.1);
                    run.rss_peak_kib = peak;
                    kind.runs.push(run.total_s);
                    runs.push(run);
                }
                Err(e) => kind.fail(
                    ctx,
                    if inline_body {
                        "spaces-inline"
                    } else {
                        "spaces-truc"
                    },
                    e,
                ),
            }
        }
    }
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&copy);
    if ctx.shared.cancel.is_cancelled() {
        for k in [&mut cp, &mut raw, &mut truc, &mut inline] {
            if k.runs.is_empty() && k.failed.is_none() {
                k.failed = Some("not measured: the run was cancelled".into());
            }
        }
    }

    let cp_s = median(&cp.runs);
    let raw_s = median(&raw.runs);
    let truc_s = median(&truc.runs);
    let inline_s = median(&inline.runs);
    let (cp_r, raw_r, truc_r, inline_r) = (
        mb_per_s(size, cp_s),
        mb_per_s(size, raw_s),
        mb_per_s(size, truc_s),
        mb_per_s(size, inline_s),
    );
    let vs = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => None,
    };
    let part = |runs: &[TrucRun], f: fn(&TrucRun) -> Option<f64>| {
        median(&runs.iter().filter_map(f).collect::<Vec<_>>())
    };
    let upload_s = part(&truc_runs, |r| r.upload_s);
    let fetch_s = part(&truc_runs, |r| Some(r.fetch_s));
    let inline_post_s = part(&inline_runs, |r| Some(r.posted_s));
    let inline_fetch_s = part(&inline_runs, |r| Some(r.fetch_s));
    let growth_max = |runs: &[TrucRun]| {
        runs.iter()
            .filter_map(TrucRun::growth_kib)
            .max()
            .map(|k| round1(k as f64 / 1024.0))
    };
    json!({
        "bytes": size,
        "label": name,
        "digest": digest,
        "sender_sha256_s": round4(sender_sha256_s),
        "cp": cp.json(cp_s, cp_r, json!({})),
        "raw": raw.json(raw_s, raw_r, json!({ "confirm_runs_s": confirm })),
        "truc": truc.json(truc_s, truc_r, json!({
            "upload_median_s": upload_s.map(round4),
            "upload_mb_per_s": mb_per_s(size, upload_s),
            "fetch_median_s": fetch_s.map(round4),
            "fetch_mb_per_s": mb_per_s(size, fetch_s),
            "mb_per_s_incl_sender_sha256": mb_per_s(size, truc_s.map(|s| s + sender_sha256_s)),
            "rss_growth_mib_max": growth_max(&truc_runs),
            "runs": truc_runs.iter().map(TrucRun::json).collect::<Vec<_>>(),
        })),
        "inline": inline.json(inline_s, inline_r, json!({
            "post_median_s": inline_post_s.map(round4),
            "post_mb_per_s": mb_per_s(size, inline_post_s),
            "fetch_median_s": inline_fetch_s.map(round4),
            "fetch_mb_per_s": mb_per_s(size, inline_fetch_s),
            "rss_growth_mib_max": growth_max(&inline_runs),
            "runs": inline_runs.iter().map(TrucRun::json).collect::<Vec<_>>(),
        })),
        "truc_vs_raw": vs(truc_r, raw_r),
        "truc_vs_cp": vs(truc_r, cp_r),
        "inline_vs_raw": vs(inline_r, raw_r),
        "inline_vs_cp": vs(inline_r, cp_r),
        "raw_vs_cp": vs(raw_r, cp_r),
        "upload_vs_raw": vs(mb_per_s(size, upload_s), raw_r),
        "fetch_vs_raw": vs(mb_per_s(size, fetch_s), raw_r),
    })
}

/// The runs of one kind of measurement; the first failure stops its rounds.
#[derive(Default)]
struct Kind {
    runs: Vec<f64>,
    failed: Option<String>,
}

impl Kind {
    fn going(&self) -> bool {
        self.failed.is_none()
    }

    fn fail(&mut self, ctx: &Ctx, kind: &str, e: String) {
        eprintln!("warning: {kind}: {e}");
        ctx.shared.error(kind, &e);
        self.failed = Some(e);
    }

    fn json(&self, median_s: Option<f64>, rate: Option<f64>, extra: Value) -> Value {
        let mut v = json!({
            "runs_s": self.runs.iter().map(|s| round4(*s)).collect::<Vec<_>>(),
            "median_s": median_s.map(round4),
            "mb_per_s": rate,
            "failed": self.failed,
        });
        if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
            v.extend(extra);
        }
        v
    }
}

/// `cp file copy`, then fsync of the copy: seconds.
async fn cp_once(file: &Path, copy: &Path, size: usize) -> Result<f64, String> {
    let _ = std::fs::remove_file(copy);
    let t = Instant::now();
    let status = tokio::time::timeout(
        TRANSFER,
        tokio::process::Command::new("cp")
            .arg(file)
            .arg(copy)
            .kill_on_drop(true)
            .status(),
    )
    .await
    .map_err(|_| format!("cp did not end within {TRANSFER:?}"))?
    .map_err(|e| format!("cp: {e}"))?;
    if !status.success() {
        return Err(format!("cp: {status}"));
    }
    let c = copy.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&c)?.sync_all())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("fsync {}: {e}", copy.display()))?;
    let s = t.elapsed().as_secs_f64();
    let len = std::fs::metadata(copy).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(copy);
    if len != size as u64 {
        return Err(format!("the copy holds {len} bytes, not {size}"));
    }
    Ok(s)
}

/// One raw message of the document: (publish → consumer has it,
/// publish → confirm), seconds.
async fn raw_once(open: &mut Open, msg: &Message, doc: &[u8]) -> Result<(f64, f64), String> {
    let (publisher, _, sub) = open.raw.as_mut().ok_or("no raw link")?;
    let mut msg = msg.clone();
    msg.message_id = Some(new_message_id());
    let t = Instant::now();
    let publish = async {
        let r = tokio::time::timeout(TRANSFER, publisher.publish(&msg)).await;
        (t.elapsed().as_secs_f64(), r)
    };
    let receive = async {
        let r = tokio::time::timeout(TRANSFER, sub.next()).await;
        (t.elapsed().as_secs_f64(), r)
    };
    let ((confirmed, p), (received, r)) = tokio::join!(publish, receive);
    match p {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("raw publish: {e}")),
        Err(_) => return Err(format!("raw publish: no confirm within {TRANSFER:?}")),
    }
    let inbound = match r {
        Ok(Some(Ok(i))) => i,
        Ok(Some(Err(e))) => return Err(format!("raw consume: {e}")),
        Ok(None) => return Err("raw consume: the consumer ended".into()),
        Err(_) => return Err(format!("raw consume: nothing within {TRANSFER:?}")),
    };
    let same = inbound.message.message_id == msg.message_id && inbound.message.body[..] == *doc;
    sub.ack(inbound.delivery_tag)
        .await
        .map_err(|e| format!("raw ack: {e}"))?;
    if !same {
        return Err("the raw consumer got another message, or other bytes".into());
    }
    Ok((received, confirmed))
}

/// The answer's JSON, or an error naming the call and what came back.
fn answered(
    r: Result<crate::gateway::Resp, String>,
    call: &str,
    status: u16,
) -> Result<Value, String> {
    let r = r?;
    if r.status != status {
        return Err(format!(
            "{call}: HTTP {} (not {status}): {}",
            r.status,
            r.text()
        ));
    }
    Ok(r.json())
}

async fn timed<T>(
    within: Duration,
    call: &str,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(within, f)
        .await
        .map_err(|_| format!("{call}: no answer within {within:?}"))?
}

/// One document through truc: into an upload space (or inline), the
/// envelope, the delivery, the fetch; then status `01` and the space's
/// deletion awaited.
async fn truc_once(
    open: &mut Open,
    gw: &Gw,
    doc: &[u8],
    digest: &str,
    inline_body: bool,
) -> Result<TrucRun, String> {
    let mut run = TrucRun::default();
    let src_auth = auth(&gw.src_token);
    let mut out = load::outgoing(vec![gw.dst.clone()], Priority::NORMAL, Vec::new());
    let t = Instant::now();
    let at = |t: Instant| t.elapsed().as_secs_f64();
    let space = if inline_body {
        None
    } else {
        // Create, upload, complete.
        let v = answered(
            timed(
                CALL,
                "POST /v1/spaces",
                gw.src_http.call(
                    "POST",
                    "/v1/spaces",
                    &[
                        src_auth.clone(),
                        ("Content-Type".into(), "application/json".into()),
                    ],
                    json!({ "size": doc.len(), "digest": digest })
                        .to_string()
                        .as_bytes(),
                ),
            )
            .await,
            "POST /v1/spaces",
            201,
        )?;
        let (Some(id), Some(chunks), Some(chunk_size)) = (
            v["id"].as_str().map(str::to_owned),
            v["chunks"].as_u64(),
            v["chunk_size"].as_u64().filter(|c| *c > 0),
        ) else {
            return Err(format!("POST /v1/spaces: unexpected answer {v}"));
        };
        open.unsent.push(id.clone());
        run.create_s = Some(at(t));
        if chunks != (doc.len() as u64).div_ceil(chunk_size) {
            return Err(format!(
                "POST /v1/spaces: {chunks} chunks of {chunk_size} for {} bytes",
                doc.len()
            ));
        }
        let chunk = chunk_size as usize;
        let put = |n: usize| {
            let path = format!("/v1/spaces/{id}/chunks/{n}");
            let part = &doc[n * chunk..((n + 1) * chunk).min(doc.len())];
            let headers = [src_auth.clone()];
            async move {
                let mut answer = Vec::new();
                let r = timed(
                    TRANSFER,
                    &path,
                    gw.src_http
                        .call_streamed("PUT", &path, &headers, part, &mut |b: &[u8]| {
                            answer.extend_from_slice(b)
                        }),
                )
                .await?;
                if r.status != 200 {
                    return Err(format!("PUT {path}: HTTP {}: {}", r.status, r.text()));
                }
                Ok(())
            }
        };
        {
            use futures_util::stream::{self, StreamExt, TryStreamExt};
            stream::iter(0..chunks as usize)
                .map(put)
                .buffer_unordered(gw.inflight.max(1))
                .try_collect::<Vec<()>>()
                .await?;
        }
        run.chunks_s = Some(at(t));
        let path = format!("/v1/spaces/{id}/complete");
        let v = answered(
            timed(
                CALL,
                &path,
                gw.src_http
                    .call("POST", &path, std::slice::from_ref(&src_auth), b""),
            )
            .await,
            &path,
            200,
        )?;
        if v["complete"] != json!(true) {
            return Err(format!("{path}: not complete: {v}"));
        }
        let uploaded = at(t);
        run.upload_s = Some(uploaded);
        out.extra.push(("lgsp-space".into(), id.clone()));
        Some(id)
    };
    // The envelope: an empty body whose signed lgsp-digest is the
    // document's (extra headers override the computed one); inline, the
    // document is the request's body.
    out.extra.push(("lgsp-digest".into(), digest.to_owned()));
    out.subject = format!("Văn bản lớn {}", label(doc.len()));
    let msg = envelope_message(&gw.prefix, &gw.src, &out);
    let message_id = msg.message_id.clone().unwrap_or_default();
    let mut headers = carried(&msg);
    headers.push(src_auth.clone());
    let body: &[u8] = if inline_body { doc } else { b"" };
    let (dest, inbox) = open.dest.as_mut().ok_or("no destination")?;
    let post = async {
        let mut answer = Vec::new();
        let r = timed(
            TRANSFER,
            "POST /v1/envelopes",
            gw.src_http.call_streamed(
                "POST",
                "/v1/envelopes",
                &headers,
                body,
                &mut |b: &[u8]| answer.extend_from_slice(b),
            ),
        )
        .await;
        let at_answer = at(t);
        let r = r.and_then(|r| {
            if r.status == 202 {
                Ok(serde_json::from_slice::<Value>(&answer).unwrap_or(Value::Null))
            } else {
                Err(format!(
                    "POST /v1/envelopes: HTTP {}: {}",
                    r.status,
                    r.text()
                ))
            }
        });
        (at_answer, r)
    };
    let receive = async {
        let deadline = tokio::time::Instant::now() + TRANSFER;
        loop {
            let inbound = match tokio::time::timeout_at(deadline, inbox.next()).await {
                Ok(Some(Ok(i))) => i,
                Ok(Some(Err(e))) => return Err(format!("destination inbox: {e}")),
                Ok(None) => return Err("destination inbox: the consumer ended".into()),
                Err(_) => return Err(format!("no delivery within {TRANSFER:?}")),
            };
            let now = at(t);
            let tag = inbound.delivery_tag;
            match dest.receive(inbound) {
                Ok(r) if r.message_id == message_id => return Ok((now, r)),
                Ok(r) => {
                    // Not this run's: settle it and wait on.
                    let _ = inbox.ack(tag).await;
                    eprintln!("warning: spaces: a stray delivery {}", r.message_id);
                }
                Err(e) => {
                    let _ = inbox.reject(tag, false).await;
                    return Err(format!("delivery refused by the client: {e}"));
                }
            }
        }
    };
    let ((posted_s, posted), received) = tokio::join!(post, receive);
    let answer = posted?;
    run.posted_s = posted_s;
    if let Some(id) = &space {
        open.unsent.retain(|u| u != id);
    }
    if answer["destinations"].as_array().map(Vec::len) != Some(1) {
        return Err(format!(
            "POST /v1/envelopes: not delivered to one destination: {answer}"
        ));
    }
    let (delivered_s, r) = received?;
    run.delivered_s = delivered_s;
    let Some(content_space) = r.content_space.clone() else {
        return Err("the delivery names no lgsp-content-space".into());
    };
    if space.as_ref().is_some_and(|s| *s != content_space) {
        return Err(format!(
            "the delivery names space {content_space}, not {}",
            space.unwrap_or_default()
        ));
    }
    let claimed = r.message.header("lgsp-digest").unwrap_or("").to_owned();
    // The fetch, with the destination's own session, through SHA-256 as it
    // is read.
    let f = Instant::now();
    let path = format!("/v1/spaces/{content_space}/content");
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let answer = timed(
        TRANSFER,
        &path,
        gw.dst_http.call_streamed(
            "GET",
            &path,
            &[auth(&gw.dst_token)],
            b"",
            &mut |b: &[u8]| {
                hasher.update(b);
                got += b.len() as u64;
            },
        ),
    )
    .await?;
    let fetched = format!("sha256={}", hex::encode(hasher.finalize()));
    run.fetch_s = at(f);
    run.total_s = at(t);
    if answer.status != 200 {
        return Err(format!(
            "GET {path}: HTTP {}: {}",
            answer.status,
            answer.text()
        ));
    }
    if got != doc.len() as u64 || fetched != claimed || claimed != digest {
        return Err(format!(
            "GET {path}: {got} bytes of {}, digest {fetched}, lgsp-digest {claimed}, sent {digest}",
            doc.len()
        ));
    }
    // Settled: acknowledged, status 01, and the hub deletes the space.
    inbox
        .ack(r.delivery_tag)
        .await
        .map_err(|e| format!("destination ack: {e}"))?;
    let s = Instant::now();
    timed(CALL, "status 01", async {
        dest.send_status(&message_id, "01", Some(&gw.src.code), None)
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    let show = format!("/v1/spaces/{content_space}");
    let deadline = Instant::now() + CALL;
    loop {
        let gone_on_disk = gw
            .spaces_dir
            .as_ref()
            .is_none_or(|d| !d.join(&content_space).exists());
        let r = timed(
            CALL,
            &show,
            gw.src_http
                .call("GET", &show, std::slice::from_ref(&src_auth), b""),
        )
        .await?;
        if r.status == 404 && gone_on_disk {
            run.deleted_after_status_s = Some(at(s));
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "space {content_space} still there {CALL:?} after status 01 (HTTP {}, on disk: {})",
                r.status, !gone_on_disk
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(run)
}

/// The `== spaces` lines of one size on stderr.
fn print_size(v: &Value) {
    let f = |x: &Value| {
        x.as_f64()
            .map(|x| format!("{x}"))
            .unwrap_or_else(|| "–".into())
    };
    let kind = |k: &str| {
        let x = &v[k];
        match x["failed"].as_str() {
            Some(e) => format!("FAILED ({e})"),
            None => format!("{} MB/s ({} s)", f(&x["mb_per_s"]), f(&x["median_s"])),
        }
    };
    eprintln!(
        "== spaces {}: cp {}; raw {}; truc space {} (upload {} MB/s, fetch {} MB/s); inline {}",
        v["label"].as_str().unwrap_or(""),
        kind("cp"),
        kind("raw"),
        kind("truc"),
        f(&v["truc"]["upload_mb_per_s"]),
        f(&v["truc"]["fetch_mb_per_s"]),
        kind("inline"),
    );
    eprintln!(
        "== spaces {}: truc/raw {}, truc/cp {}, inline/raw {}, inline/cp {}, raw/cp {}; truc RSS growth max {} MiB (space), {} MiB (inline)",
        v["label"].as_str().unwrap_or(""),
        f(&v["truc_vs_raw"]),
        f(&v["truc_vs_cp"]),
        f(&v["inline_vs_raw"]),
        f(&v["inline_vs_cp"]),
        f(&v["raw_vs_cp"]),
        f(&v["truc"]["rss_growth_mib_max"]),
        f(&v["inline"]["rss_growth_mib_max"]),
    );
}

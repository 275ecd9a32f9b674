//! Output: the JSON result file and a self-contained HTML report (inline
//! SVG charts, no external assets).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::run::{PhaseResult, Point};

/// Writes `v` as pretty JSON to `path` (creating the directory).
pub fn write_json(path: &Path, v: &Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(v).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// Escapes text for HTML and SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Formats an optional number.
fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "–".into(),
    }
}

/// A series of a line chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

const W: f64 = 960.0;
const H: f64 = 280.0;
const ML: f64 = 64.0;
const MR: f64 = 16.0;
const MT: f64 = 28.0;
const MB: f64 = 36.0;

/// A "nice" upper bound for an axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// A line chart over time with shaded phase bands (numbered).
fn line_chart(
    title: &str,
    y_label: &str,
    series: &[Series],
    bands: &[(f64, f64, usize)],
    x_max: f64,
) -> String {
    let y_max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let x_max = x_max.max(1.0);
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let x = |t: f64| ML + t / x_max * pw;
    let y = |v: f64| MT + ph - v / y_max * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="{t}"><text x="{ML}" y="18" class="t">{t}</text>"#,
        t = esc(title)
    );
    for (i, (a, b, id)) in bands.iter().enumerate() {
        let fill = if i % 2 == 0 { "#eef3fb" } else { "#f7f7f7" };
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{MT}" width="{:.1}" height="{ph}" fill="{fill}"/><text x="{:.1}" y="{:.1}" class="b">{id}</text>"#,
            x(*a),
            (x(*b) - x(*a)).max(0.5),
            x(*a) + 2.0,
            MT + 10.0
        );
    }
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{ML}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" class="a" text-anchor="end">{}</text>"##,
            W - MR,
            y(v),
            y(v),
            ML - 4.0,
            y(v) + 4.0,
            if y_max >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        );
    }
    let step = nice_max(x_max / 8.0);
    let mut t = 0.0;
    while t <= x_max {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="a" text-anchor="middle">{t:.0}s</text>"#,
            x(t),
            H - MB + 16.0
        );
        t += step;
    }
    let _ = write!(
        s,
        r#"<text x="14" y="{:.1}" class="a" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"#,
        MT + ph / 2.0,
        MT + ph / 2.0,
        esc(y_label)
    );
    // Legend on the title row, right-aligned.
    let widths: Vec<f64> = series
        .iter()
        .map(|se| 22.0 + 6.2 * se.name.chars().count() as f64)
        .collect();
    let mut lx = W - MR - widths.iter().sum::<f64>();
    for (se, w) in series.iter().zip(&widths) {
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/><rect x="{lx:.1}" y="9" width="10" height="10" fill="{}"/><text x="{:.1}" y="18" class="a">{}</text>"#,
            se.color,
            pts.join(" "),
            se.color,
            lx + 14.0,
            esc(se.name)
        );
        lx += w;
    }
    s.push_str("</svg>");
    s
}

/// Grouped bars of p50/p95/p99/max per phase, log scale.
fn latency_chart(phases: &[&PhaseResult]) -> String {
    let rows: Vec<(usize, [f64; 4])> = phases
        .iter()
        .filter_map(|p| {
            let e = p.e2e.as_ref()?;
            Some((p.id as usize, [e.p50_ms, e.p95_ms, e.p99_ms, e.max_ms]))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let max = rows.iter().flat_map(|r| r.1).fold(0.1, f64::max);
    let lo = 0.1f64.log10();
    let hi = nice_max(max).log10().max(lo + 1.0);
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let y = |v: f64| MT + ph - (v.max(0.1).log10() - lo) / (hi - lo) * ph;
    let group = pw / rows.len() as f64;
    let bar = (group / 5.0).min(18.0);
    let colors = ["#4c78a8", "#72b7b2", "#f58518", "#e45756"];
    let names = ["p50", "p95", "p99", "max"];
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="latency"><text x="{ML}" y="18" class="t">End-to-end latency by phase (ms, log scale)</text>"#
    );
    let mut d = lo.floor() as i32;
    while f64::from(d) <= hi {
        let v = 10f64.powi(d);
        let _ = write!(
            s,
            r##"<line x1="{ML}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" class="a" text-anchor="end">{}</text>"##,
            W - MR,
            y(v),
            y(v),
            ML - 4.0,
            y(v) + 4.0,
            if v < 1.0 {
                format!("{v}")
            } else {
                format!("{v:.0}")
            }
        );
        d += 1;
    }
    for (gi, (id, vals)) in rows.iter().enumerate() {
        let gx = ML + group * gi as f64 + (group - 4.0 * bar) / 2.0;
        for (k, v) in vals.iter().enumerate() {
            let top = y(*v);
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>phase {id} {}: {v:.2} ms</title></rect>"#,
                gx + bar * k as f64,
                top,
                bar - 1.0,
                (MT + ph - top).max(0.5),
                colors[k],
                names[k]
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="a" text-anchor="middle">{id}</text>"#,
            gx + 2.0 * bar,
            H - MB + 16.0
        );
    }
    for (k, n) in names.iter().enumerate() {
        let lx = W - MR - 200.0 + 50.0 * k as f64;
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="9" width="10" height="10" fill="{}"/><text x="{:.1}" y="18" class="a">{n}</text>"#,
            colors[k],
            lx + 14.0
        );
    }
    s.push_str("</svg>");
    s
}

/// Writes the HTML report.
pub fn write_html(
    path: &Path,
    result: &Value,
    phases: &[PhaseResult],
    timeline: &[Point],
) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let x_max = timeline.last().map(|p| p.t_s).unwrap_or(1.0);
    let bands: Vec<(f64, f64, usize)> = phases
        .iter()
        .map(|p| (p.t_start_s, p.t_end_s, p.id as usize))
        .collect();
    let series = |f: &dyn Fn(&Point) -> Option<f64>| -> Vec<(f64, f64)> {
        timeline
            .iter()
            .filter_map(|p| Some((p.t_s, f(p)?)))
            .collect()
    };
    let throughput = line_chart(
        "Throughput over time (per second)",
        "msg/s",
        &[
            Series {
                name: "received (end to end)",
                color: "#4c78a8",
                points: series(&|p| Some(p.received_per_s)),
            },
            Series {
                name: "published",
                color: "#f58518",
                points: series(&|p| Some(p.sent_per_s)),
            },
            Series {
                name: "accepted notices",
                color: "#54a24b",
                points: series(&|p| Some(p.accepted_per_s)),
            },
        ],
        &bands,
        x_max,
    );
    let cpu = line_chart(
        "CPU (% of one core; the machine has 2 cores)",
        "% CPU",
        &[
            Series {
                name: "truc",
                color: "#e45756",
                points: series(&|p| p.truc_cpu_pct),
            },
            Series {
                name: "RabbitMQ",
                color: "#4c78a8",
                points: series(&|p| p.broker_cpu_pct),
            },
            Series {
                name: "benchmark",
                color: "#b279a2",
                points: series(&|p| p.bench_cpu_pct),
            },
        ],
        &bands,
        x_max,
    );
    let rss = line_chart(
        "truc resident memory",
        "MiB",
        &[Series {
            name: "truc RSS (MiB)",
            color: "#e45756",
            points: series(&|p| p.truc_rss_mib),
        }],
        &bands,
        x_max,
    );
    let ingress = line_chart(
        "Messages ready in truc's ingress queue",
        "messages",
        &[Series {
            name: "ingress depth",
            color: "#9d755d",
            points: series(&|p| p.ingress_depth.map(f64::from)),
        }],
        &bands,
        x_max,
    );
    let lat_phases: Vec<&PhaseResult> = phases.iter().filter(|p| p.e2e.is_some()).collect();
    let latency = latency_chart(&lat_phases);

    let mut h = String::new();
    h.push_str(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>truc load benchmark</title><style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td.l{white-space:nowrap}
th{background:#f0f0f0}td.l,th.l{text-align:left}.ok{color:#1a7f37;font-weight:600}.no{color:#c62828;font-weight:600}
svg .t{font-size:14px;font-weight:600}svg .a{font-size:11px;fill:#444}svg .b{font-size:10px;fill:#777}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}
</style></head><body><h1>truc load benchmark</h1>"#,
    );
    let g = |k: &str| result.get(k).cloned().unwrap_or(Value::Null);
    let _ = write!(
        h,
        "<p>Run of {} on {} ({} cores); scenarios: {}{}.</p>",
        esc(g("started_at").as_str().unwrap_or("")),
        esc(g("machine")
            .get("kernel")
            .and_then(Value::as_str)
            .unwrap_or("")),
        g("machine")
            .get("cores")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        esc(&g("settings")
            .get("scenarios")
            .map(|v| v.to_string())
            .unwrap_or_default()),
        if g("settings").get("quick") == Some(&Value::Bool(true)) {
            " — quick mode"
        } else {
            ""
        }
    );
    h.push_str("<h2>Headline</h2><table>");
    for (k, label) in [
        ("raw_msgs_per_s", "raw one hop, msg/s"),
        ("truc_msgs_per_s", "truc end to end, msg/s"),
        ("ratio", "truc / raw"),
        ("p50_ms", "p50 end to end, ms"),
        ("p99_ms", "p99 end to end, ms"),
        (
            "truc_cpu_pct_max_phase",
            "truc CPU (busiest phase), % of a core",
        ),
        ("truc_rss_mib_max", "truc RSS max, MiB"),
        ("errors", "errors"),
    ] {
        let _ = write!(
            h,
            "<tr><th class=l>{label}</th><td>{}</td></tr>",
            esc(&g(k).to_string())
        );
    }
    h.push_str("</table><p>");
    h.push_str(&esc(g("headline_basis").as_str().unwrap_or("")));
    h.push_str("</p>");
    if let Some(targets) = g("targets").as_array() {
        h.push_str("<h2>Targets</h2><table><tr><th class=l>target</th><th class=l>measured</th><th>met</th></tr>");
        for t in targets {
            let met = t.get("met").and_then(Value::as_bool);
            let _ = write!(
                h,
                "<tr><td class=l>{}</td><td class=l>{}</td><td class={}>{}</td></tr>",
                esc(t.get("target").and_then(Value::as_str).unwrap_or("")),
                esc(t.get("measured").and_then(Value::as_str).unwrap_or("")),
                match met {
                    Some(true) => "ok",
                    Some(false) => "no",
                    None => "l",
                },
                match met {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "n/a",
                }
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Over time</h2>");
    h.push_str(&throughput);
    h.push_str(&cpu);
    h.push_str(&rss);
    h.push_str(&ingress);
    h.push_str("<h2>Latency</h2>");
    h.push_str(&latency);
    h.push_str(
        "<h2>Phases</h2><p>Bands in the charts carry the phase numbers below. Latencies in ms; CPU in % of one core; µs/msg is CPU time per message received. msg/s window: received per second inside the measured window; msg/s sustained: messages sent in the window divided by the time until their last delivery or notice (status work and drain included).</p><table><tr><th>#</th><th class=l>phase</th><th>body</th><th>mode</th><th>msg/s window</th><th>msg/s sustained</th>\
         <th>e2e p50</th><th>p95</th><th>p99</th><th>max</th><th>accepted p50</th><th>p99</th>\
         <th>truc CPU %</th><th>truc µs/msg</th><th>truc RSS MiB</th><th>broker CPU %</th><th>broker µs/msg</th>\
         <th>bench CPU %</th><th>sent</th><th>recv</th><th>lost</th></tr>",
    );
    for p in phases {
        let e = p.e2e.as_ref();
        let a = p.accept.as_ref();
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.id,
            esc(&p.name),
            p.body_bytes,
            esc(&match (p.offered_rate, p.window) {
                (Some(r), _) => format!("{r:.0}/s"),
                (None, Some(w)) => format!("{} w={w}", p.mode),
                _ => p.mode.clone(),
            }),
            p.msgs_per_s,
            num(p.sustained_msgs_per_s, 0),
            num(e.map(|e| e.p50_ms), 2),
            num(e.map(|e| e.p95_ms), 2),
            num(e.map(|e| e.p99_ms), 2),
            num(e.map(|e| e.max_ms), 1),
            num(a.map(|e| e.p50_ms), 2),
            num(a.map(|e| e.p99_ms), 2),
            num(p.truc_cpu_pct, 0),
            num(p.truc_cpu_us_per_msg, 0),
            num(p.truc_rss_mib_max, 1),
            num(p.broker_cpu_pct, 0),
            num(p.broker_cpu_us_per_msg, 0),
            num(p.bench_cpu_pct, 0),
            p.sent,
            p.received,
            p.undelivered
        );
    }
    h.push_str("</table>");
    if let Some(errors) = g("error_kinds").as_object().filter(|e| !e.is_empty()) {
        h.push_str("<h2>Errors</h2><table><tr><th class=l>kind</th><th>count</th><th class=l>first</th></tr>");
        for (k, v) in errors {
            let _ = write!(
                h,
                "<tr><td class=l>{}</td><td>{}</td><td class=l>{}</td></tr>",
                esc(k),
                v.get("count").map(|c| c.to_string()).unwrap_or_default(),
                esc(v.get("first").and_then(Value::as_str).unwrap_or(""))
            );
        }
        h.push_str("</table>");
    }
    if let Some(notes) = g("notes").as_array().filter(|n| !n.is_empty()) {
        h.push_str("<h2>Notes</h2><ul>");
        for n in notes {
            let _ = write!(h, "<li>{}</li>", esc(n.as_str().unwrap_or("")));
        }
        h.push_str("</ul>");
    }
    h.push_str("<h2>Scenario results (JSON)</h2><pre>");
    h.push_str(&esc(
        &serde_json::to_string_pretty(&g("scenarios")).unwrap_or_default()
    ));
    h.push_str("</pre><h2>Settings</h2><pre>");
    h.push_str(&esc(
        &serde_json::to_string_pretty(&g("settings")).unwrap_or_default()
    ));
    h.push_str("</pre></body></html>\n");
    std::fs::write(path, h)
}

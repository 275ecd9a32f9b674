//! The operators' commands: agency lifecycle, queues, dead letters, audit
//! log, reports and store statistics, each over the admin API.
//!
//! Invariants: every listing prints a table for people and, with `--json`,
//! the API's JSON unchanged for scripts; exit codes are those of
//! [`crate::cli`] (0 ok, 1 failure — e.g. a broken audit chain —, 2 usage
//! or a destructive command without `--yes`, 3 refused by the hub, 4 hub or
//! broker unreachable, 5 wrong token); a destructive command without `--yes`
//! says what it would do and changes nothing; an import is validated in full
//! before anything is sent.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::cli::{api, duration, listing, parse_code, print_json, s, table, CliError};
use crate::core::config::Config;

/// `truc agency …` lifecycle commands.
#[derive(Debug, Subcommand)]
pub enum AgencyOpsCmd {
    /// Disable an agency: its messages are refused (forbidden) and it
    /// receives nothing new (destination-disabled).
    Disable {
        /// Agency code.
        code: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enable a disabled agency.
    Enable {
        /// Agency code.
        code: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new access key; older keys stay valid for the grace period.
    /// Prints the new secret once.
    RotateKey {
        /// Agency code.
        code: String,
        /// How long the older keys stay valid (e.g. 7d, 12h, 0s).
        #[arg(long, default_value = "7d")]
        grace: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an agency and delete its queues (needs --yes; refused while
    /// its inbox holds messages unless --force).
    Remove {
        /// Agency code.
        code: String,
        /// Really remove.
        #[arg(long)]
        yes: bool,
        /// Remove even with messages waiting in the inbox (they are lost).
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register agencies from a CSV file with columns code,name (optional
    /// header line); every row is checked first and any bad row refuses the
    /// whole file. Prints the issued keys once.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// Output format of the issued keys.
        #[arg(long, value_enum, default_value_t = OutFormat::Csv)]
        format: OutFormat,
    },
    /// Print RabbitMQ definitions (users, permissions, topic permissions)
    /// confining each agency to its own routing keys and queues.
    RabbitmqDefinitions {
        /// Print JSON (the only format; accepted for symmetry).
        #[arg(long)]
        json: bool,
    },
}

/// Output format of `agency import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutFormat {
    /// CSV: code,name,access_key,secret.
    Csv,
    /// JSON array.
    Json,
}

/// Sort order of `queue list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    /// Deepest inbox first.
    Depth,
    /// By code.
    Code,
}

/// `truc queue …`
#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// Per agency: inbox depth, consumers, notify depth, oldest waiting
    /// envelope, online.
    List {
        /// Order.
        #[arg(long, value_enum, default_value_t = SortBy::Code)]
        sort: SortBy,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the metadata of the first messages of an inbox without
    /// consuming them. They are taken and returned (basic.get, then reject
    /// with requeue): the broker marks them redelivered, which the adapter
    /// sees as `redelivered=true` on its next delivery.
    Peek {
        /// Agency code.
        code: String,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 10)]
        n: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove every envelope waiting in an inbox; each source gets a
    /// `bounced` notice and the timeline a `purged` event (needs --yes).
    Purge {
        /// Agency code.
        code: String,
        /// Really purge.
        #[arg(long)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Age histogram of waiting envelopes per destination.
    Shape {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WhichArg {
    /// Both.
    All,
    /// `<prefix>undelivered`: deliveries the hub gave up on (max-attempts, expired).
    Dead,
    /// `<prefix>rejected`: unauthenticated input.
    Rejected,
}

/// Selection of dead letters.
#[derive(Debug, Args)]
pub struct DeadFilterArgs {
    /// Queue.
    #[arg(long, value_enum, default_value_t = WhichArg::All)]
    pub queue: WhichArg,
    /// Destination code.
    #[arg(long)]
    pub dest: Option<String>,
    /// Source code.
    #[arg(long)]
    pub source: Option<String>,
    /// Reason: max-attempts, expired (dead); unknown-key, bad-signature,
    /// unsupported-version, malformed (rejected).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only messages that died at least this long ago (e.g. 1h, 2d).
    #[arg(long)]
    pub older_than: Option<String>,
    /// At most this many messages.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `truc dead …`
#[derive(Debug, Subcommand)]
pub enum DeadCmd {
    /// List dead letters (they stay where they are).
    List(DeadFilterArgs),
    /// Republish dead letters where they were going, rate-limited.
    Retry {
        /// Selection.
        #[command(flatten)]
        filter: DeadFilterArgs,
        /// Rate, e.g. 10/s or 5.
        #[arg(long, default_value = "10/s")]
        rate: String,
    },
    /// Remove dead letters for good (needs --yes).
    Drop {
        /// Selection.
        #[command(flatten)]
        filter: DeadFilterArgs,
        /// Really drop.
        #[arg(long)]
        yes: bool,
    },
}

/// `truc audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain; exit 1 and name the first broken entry if any.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The last entries.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        n: usize,
        /// Keep printing new entries (poll every second) until interrupted.
        #[arg(long)]
        follow: bool,
        /// Print JSON (one object per line with --follow).
        #[arg(long)]
        json: bool,
    },
}

/// Report output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Aligned table.
    Table,
    /// CSV with a header line.
    Csv,
    /// JSON.
    Json,
}

/// Report period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ByArg {
    /// Day (UTC).
    Day,
    /// ISO week.
    Week,
    /// Month.
    Month,
}

/// `truc report`
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// From this date (YYYY-MM-DD, UTC) or RFC 3339 time, inclusive.
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this date (YYYY-MM-DD: the whole day included) or RFC 3339 time (exclusive).
    #[arg(long)]
    pub until: Option<String>,
    /// Period.
    #[arg(long, value_enum, default_value_t = ByArg::Day)]
    pub by: ByArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

/// `truc store …`
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Entries per tree and bytes on disk.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn refuse_without_yes(what: String) -> CliError {
    CliError::new(2, format!("{what}\nNothing was done: add --yes to do it."))
}

/// Parses a CSV line into fields (RFC 4180 quoting, one line).
pub fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                '"' => quoted = false,
                other => cur.push(other),
            }
        } else {
            match c {
                '"' if cur.trim().is_empty() && !was_quoted => {
                    cur.clear();
                    quoted = true;
                    was_quoted = true;
                }
                '"' => return Err("a quote inside an unquoted field".into()),
                ',' => {
                    out.push(std::mem::take(&mut cur));
                    was_quoted = false;
                }
                other if was_quoted && !other.is_whitespace() => {
                    return Err("text after a closing quote".into())
                }
                other => cur.push(other),
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    out.push(cur);
    Ok(out.into_iter().map(|f| f.trim().to_owned()).collect())
}

/// One parsed import row with its file line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRow {
    /// 1-based line in the file.
    pub line: usize,
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
}

/// Parses and checks an import file: columns `code,name`, an optional
/// header line, blank lines and `#` comments skipped. The first problem is
/// returned as `line N: problem`; nothing is returned unless every row is good.
pub fn parse_import(text: &str) -> Result<Vec<CsvRow>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_end_matches('\r');
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        let f = csv_fields(l).map_err(|e| format!("line {line}: {e}"))?;
        if rows.is_empty()
            && seen.is_empty()
            && f.len() == 2
            && f[0].eq_ignore_ascii_case("code")
            && f[1].eq_ignore_ascii_case("name")
        {
            seen.insert(String::new(), 0);
            continue;
        }
        if f.len() != 2 {
            return Err(format!(
                "line {line}: expected 2 columns (code,name), found {}",
                f.len()
            ));
        }
        let code = crate::core::code::AgencyCode::parse(&f[0])
            .map_err(|e| format!("line {line}: code {:?}: {e}", f[0]))?;
        let name = &f[1];
        if name.is_empty() || name.chars().count() > 300 || name.chars().any(char::is_control) {
            return Err(format!(
                "line {line}: name must be 1-300 characters without control characters"
            ));
        }
        if let Some(first) = seen.insert(code.to_string(), line) {
            return Err(format!(
                "line {line}: code {code} already appears on line {first}"
            ));
        }
        rows.push(CsvRow {
            line,
            code: code.to_string(),
            name: name.clone(),
        });
    }
    if rows.is_empty() {
        return Err("the file holds no rows".into());
    }
    Ok(rows)
}

fn csv_cell(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

/// Runs `truc agency <lifecycle>`.
pub async fn agency(cfg: &Config, cmd: AgencyOpsCmd) -> Result<(), CliError> {
    match cmd {
        AgencyOpsCmd::Disable { code, json } => set_state(cfg, &code, "disable", json).await,
        AgencyOpsCmd::Enable { code, json } => set_state(cfg, &code, "enable", json).await,
        AgencyOpsCmd::RotateKey { code, grace, json } => {
            let code = parse_code(&code)?;
            let grace = duration("--grace", &grace)?;
            let v = api(
                cfg,
                "POST",
                &format!("/v1/agencies/{code}/rotate-key"),
                Some(&json!({ "grace_s": grace.as_secs() })),
            )
            .await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            println!("new key for {} ({})", s(&v["code"]), s(&v["name"]));
            println!("access key: {}", s(&v["access_key"]));
            println!("secret:     {}", s(&v["secret"]));
            for k in v["old_keys"].as_array().into_iter().flatten() {
                println!(
                    "old key {} stays valid until {}",
                    s(&k["access_key"]),
                    s(&k["expires_at"])
                );
            }
            println!("The secret is shown only now: hand it to the agency over a safe channel.");
            Ok(())
        }
        AgencyOpsCmd::Remove {
            code,
            yes,
            force,
            json,
        } => {
            let code = parse_code(&code)?;
            if !yes {
                let v = api(cfg, "GET", &format!("/v1/agencies/{code}"), None).await?;
                return Err(refuse_without_yes(format!(
                    "would remove agency {code} ({}), revoke its {} access key(s) and delete queues {} ({} messages waiting) and {}{}",
                    s(&v["name"]),
                    v["access_keys"].as_array().map_or(0, Vec::len),
                    s(&v["inbox"]),
                    s(&v["inbox_messages"]),
                    s(&v["notify"]),
                    if force { "; --force: waiting messages would be lost" } else { "" }
                )));
            }
            let v = api(
                cfg,
                "DELETE",
                &format!("/v1/agencies/{code}?force={force}"),
                None,
            )
            .await?;
            if json {
                print_json(&v);
            } else {
                println!("removed {} ({})", s(&v["code"]), s(&v["name"]));
                for q in v["deleted_queues"].as_array().into_iter().flatten() {
                    println!(
                        "deleted queue {} ({} messages)",
                        s(&q["queue"]),
                        s(&q["messages"])
                    );
                }
            }
            Ok(())
        }
        AgencyOpsCmd::Import { file, format } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::new(2, format!("{}: {e}", file.display())))?;
            let rows = parse_import(&text).map_err(|e| {
                CliError::new(3, format!("{}: {e}; nothing imported", file.display()))
            })?;
            let existing = api(cfg, "GET", "/v1/agencies", None).await?;
            for r in &rows {
                let taken = existing
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["code"].as_str() == Some(r.code.as_str()));
                if taken {
                    return Err(CliError::new(
                        3,
                        format!(
                            "{}: line {}: agency {} is already registered; nothing imported",
                            file.display(),
                            r.line,
                            r.code
                        ),
                    ));
                }
            }
            let body = json!({ "rows": rows.iter().map(|r| json!({"code": r.code, "name": r.name})).collect::<Vec<_>>() });
            let v = api(cfg, "POST", "/v1/agencies/import", Some(&body))
                .await
                .map_err(|mut e| {
                    // The hub names rows; the operator wants file lines.
                    if let Some(rest) = e.message.strip_prefix("row ") {
                        if let Some((n, tail)) = rest.split_once(':') {
                            if let Some(r) = n.parse::<usize>().ok().and_then(|n| rows.get(n - 1)) {
                                e.message = format!(
                                    "{}: line {}:{tail}; nothing imported",
                                    file.display(),
                                    r.line
                                );
                            }
                        }
                    }
                    e
                })?;
            match format {
                OutFormat::Json => print_json(&v),
                OutFormat::Csv => {
                    println!("code,name,access_key,secret");
                    for i in v.as_array().into_iter().flatten() {
                        println!(
                            "{},{},{},{}",
                            csv_cell(&s(&i["code"])),
                            csv_cell(&s(&i["name"])),
                            csv_cell(&s(&i["access_key"])),
                            csv_cell(&s(&i["secret"]))
                        );
                    }
                }
            }
            eprintln!(
                "imported {} agencies; the secrets are shown only now",
                v.as_array().map_or(0, Vec::len)
            );
            Ok(())
        }
        AgencyOpsCmd::RabbitmqDefinitions { json: _ } => {
            let v = api(cfg, "GET", "/v1/rabbitmq-definitions", None).await?;
            print_json(&v);
            Ok(())
        }
    }
}

async fn set_state(cfg: &Config, code: &str, action: &str, json: bool) -> Result<(), CliError> {
    let code = parse_code(code)?;
    let v = api(cfg, "POST", &format!("/v1/agencies/{code}/{action}"), None).await?;
    if json {
        print_json(&v);
    } else {
        println!(
            "{} {}",
            s(&v["code"]),
            if v["enabled"] == true {
                "enabled"
            } else {
                "disabled"
            }
        );
    }
    Ok(())
}

fn age(secs: &Value) -> String {
    match secs.as_i64() {
        None => "-".into(),
        Some(n) if n < 120 => format!("{n}s"),
        Some(n) if n < 7200 => format!("{}m", n / 60),
        Some(n) if n < 172_800 => format!("{}h", n / 3600),
        Some(n) => format!("{}d", n / 86_400),
    }
}

/// Runs `truc queue …`.
pub async fn queue(cfg: &Config, cmd: QueueCmd) -> Result<(), CliError> {
    match cmd {
        QueueCmd::List { sort, json } => {
            let mut v = api(cfg, "GET", "/v1/queues", None).await?;
            if let (SortBy::Depth, Some(a)) = (sort, v.as_array_mut()) {
                a.sort_by_key(|r| std::cmp::Reverse(r["messages"].as_u64().unwrap_or(0)));
            }
            if json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    vec![
                        s(&r["code"]),
                        s(&r["messages"]),
                        s(&r["consumers"]),
                        s(&r["notify_messages"]),
                        age(&r["oldest_age_s"]),
                        if r["online"] == true {
                            "online"
                        } else {
                            "offline"
                        }
                        .into(),
                        if r["enabled"] == true {
                            "enabled"
                        } else {
                            "disabled"
                        }
                        .into(),
                        s(&r["name"]),
                    ]
                })
                .collect();
            table(
                &[
                    "CODE",
                    "INBOX",
                    "CONSUMERS",
                    "NOTIFY",
                    "OLDEST",
                    "STATE",
                    "ENABLED",
                    "NAME",
                ],
                &rows,
            );
            Ok(())
        }
        QueueCmd::Peek { code, n, json } => {
            let code = parse_code(&code)?;
            listing(
                cfg,
                &format!("/v1/queues/{code}/peek?n={n}"),
                json,
                &[
                    ("MESSAGE ID", "message_id"),
                    ("FROM", "from"),
                    ("PRIO", "priority"),
                    ("SIZE", "size"),
                    ("ACCEPTED", "accepted_at"),
                    ("ATTEMPT", "attempt"),
                    ("SUBJECT", "subject"),
                ],
            )
            .await?;
            if json {
                return Ok(());
            }
            eprintln!(
                "(peeked messages were returned to the queue and are now marked redelivered)"
            );
            Ok(())
        }
        QueueCmd::Purge { code, yes, json } => {
            let code = parse_code(&code)?;
            if !yes {
                let v = api(cfg, "GET", &format!("/v1/agencies/{code}"), None).await?;
                return Err(refuse_without_yes(format!(
                    "would remove every envelope waiting in {} ({} now) and send each source a bounced notice",
                    s(&v["inbox"]),
                    s(&v["inbox_messages"])
                )));
            }
            let v = api(cfg, "POST", &format!("/v1/queues/{code}/purge"), None).await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "purged {} envelopes from {}; {} bounced notices ({}); {} without a registered source",
                    s(&v["purged"]),
                    s(&v["code"]),
                    s(&v["notices"]),
                    s(&v["reason"]),
                    s(&v["without_source"])
                );
            }
            Ok(())
        }
        QueueCmd::Shape { json } => {
            let v = api(cfg, "GET", "/v1/queues/shape", None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let labels: Vec<String> = v["buckets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            let mut headers = vec!["DEST".to_owned(), "TOTAL".to_owned()];
            headers.extend(labels.iter().cloned());
            let rows: Vec<Vec<String>> = v["destinations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let mut r = vec![s(&d["code"]), s(&d["total"])];
                    r.extend(labels.iter().map(|l| s(&d["buckets"][l])));
                    r
                })
                .collect();
            let h: Vec<&str> = headers.iter().map(String::as_str).collect();
            table(&h, &rows);
            Ok(())
        }
    }
}

/// Parses `10/s`, `10` or `0.5/s`.
pub fn parse_rate(text: &str) -> Result<f64, CliError> {
    let n = text.strip_suffix("/s").unwrap_or(text);
    match n.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1000.0 => Ok(r),
        _ => Err(CliError::new(
            2,
            format!("--rate {text:?}: expected N/s with 0 < N <= 1000"),
        )),
    }
}

fn filter_json(f: &DeadFilterArgs) -> Result<Value, CliError> {
    let queue = match f.queue {
        WhichArg::All => "all",
        WhichArg::Dead => "dead",
        WhichArg::Rejected => "rejected",
    };
    let older = f
        .older_than
        .as_deref()
        .map(|t| duration("--older-than", t))
        .transpose()?;
    for c in [&f.dest, &f.source].into_iter().flatten() {
        parse_code(c)?;
    }
    Ok(json!({
        "queue": queue,
        "dest": f.dest,
        "source": f.source,
        "reason": f.reason,
        "older_than_s": older.map(|d| d.as_secs()),
        "limit": f.limit,
    }))
}

fn query_string(v: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = v.as_object() {
        for (k, val) in m {
            let t = match val {
                Value::Null => continue,
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            let enc: String = t
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            parts.push(format!("{k}={enc}"));
        }
    }
    parts.join("&")
}

fn print_dead(v: &Value, json: bool) {
    if json {
        print_json(v);
        return;
    }
    let rows: Vec<Vec<String>> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                s(&i["queue"]),
                s(&i["message_id"]),
                s(&i["source"]),
                s(&i["dest"]),
                s(&i["reason"]),
                age(&i["age_s"]),
                s(&i["detail"]),
            ]
        })
        .collect();
    table(
        &[
            "QUEUE",
            "MESSAGE ID",
            "SOURCE",
            "DEST",
            "REASON",
            "AGE",
            "DETAIL",
        ],
        &rows,
    );
    println!(
        "{} {} of {} looked at",
        rows.len(),
        match v["action"].as_str() {
            Some("retry") => "retried",
            Some("drop") => "dropped",
            _ => "selected",
        },
        s(&v["scanned"])
    );
}

/// Runs `truc dead …`.
pub async fn dead(cfg: &Config, cmd: DeadCmd) -> Result<(), CliError> {
    match cmd {
        DeadCmd::List(f) => {
            let q = filter_json(&f)?;
            let v = api(cfg, "GET", &format!("/v1/dead?{}", query_string(&q)), None).await?;
            print_dead(&v, f.json);
            Ok(())
        }
        DeadCmd::Retry { filter, rate } => {
            let rate = parse_rate(&rate)?;
            let mut b = filter_json(&filter)?;
            b["rate"] = json!(rate);
            let v = api(cfg, "POST", "/v1/dead/retry", Some(&b)).await?;
            print_dead(&v, filter.json);
            Ok(())
        }
        DeadCmd::Drop { filter, yes } => {
            let q = filter_json(&filter)?;
            if !yes {
                let v = api(cfg, "GET", &format!("/v1/dead?{}", query_string(&q)), None).await?;
                return Err(refuse_without_yes(format!(
                    "would drop {} dead letter(s) for good (of {} looked at)",
                    v["items"].as_array().map_or(0, Vec::len),
                    s(&v["scanned"])
                )));
            }
            let v = api(cfg, "POST", "/v1/dead/drop", Some(&q)).await?;
            print_dead(&v, filter.json);
            Ok(())
        }
    }
}

fn print_entries(v: &Value, json: bool) {
    for e in v.as_array().into_iter().flatten() {
        if json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            let fields: Vec<String> = e["fields"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect();
            println!(
                "{:>8}  {}  {:<13} {}",
                s(&e["seq"]),
                s(&e["at"]),
                s(&e["kind"]),
                fields.join(" ")
            );
        }
    }
}

/// Runs `truc audit …`.
pub async fn audit(cfg: &Config, cmd: AuditCmd) -> Result<(), CliError> {
    match cmd {
        AuditCmd::Verify { json } => {
            let v = api(cfg, "GET", "/v1/audit/verify", None).await?;
            if json {
                print_json(&v);
            } else if v["ok"] == true {
                println!(
                    "audit chain verifies: {} entries ({} to {}){}",
                    s(&v["entries"]),
                    s(&v["first_seq"]),
                    s(&v["last_seq"]),
                    v["anchor_seq"]
                        .as_u64()
                        .map(|a| format!(", anchored after swept entry {a}"))
                        .unwrap_or_default()
                );
            }
            if v["ok"] == true {
                Ok(())
            } else {
                Err(CliError::new(
                    1,
                    format!(
                        "audit chain broken at entry {}: {}",
                        s(&v["broken"]["seq"]),
                        s(&v["broken"]["problem"])
                    ),
                ))
            }
        }
        AuditCmd::Tail { n, follow, json } => {
            let v = api(cfg, "GET", &format!("/v1/audit?n={n}"), None).await?;
            if json && !follow {
                print_json(&v);
                return Ok(());
            }
            print_entries(&v, json);
            if !follow {
                return Ok(());
            }
            let mut last = v
                .as_array()
                .and_then(|a| a.last())
                .and_then(|e| e["seq"].as_u64())
                .unwrap_or(0);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let v = api(cfg, "GET", &format!("/v1/audit?n=1000&after={last}"), None).await?;
                print_entries(&v, json);
                if let Some(seq) = v
                    .as_array()
                    .and_then(|a| a.last())
                    .and_then(|e| e["seq"].as_u64())
                {
                    last = seq;
                }
            }
        }
    }
}

/// Parses `--since`/`--until`: `YYYY-MM-DD` (UTC midnight; `end_of_day`
/// moves to the next midnight) or RFC 3339.
pub fn parse_date(flag: &str, text: &str, end_of_day: bool) -> Result<i64, CliError> {
    if text.len() == 10 {
        let ms = crate::core::time::parse_rfc3339(&format!("{text}T00:00:00Z")).map_err(|_| {
            CliError::new(
                2,
                format!("{flag} {text:?}: expected YYYY-MM-DD or RFC 3339"),
            )
        })?;
        return Ok(if end_of_day { ms + 86_400_000 } else { ms });
    }
    crate::core::time::parse_rfc3339(text).map_err(|_| {
        CliError::new(
            2,
            format!("{flag} {text:?}: expected YYYY-MM-DD or RFC 3339"),
        )
    })
}

const REPORT_COLUMNS: [&str; 9] = [
    "period",
    "agency",
    "sent",
    "received",
    "delivered",
    "bounced",
    "expired",
    "latency_median_s",
    "latency_p95_s",
];

/// Runs `truc report`.
pub async fn report(cfg: &Config, a: ReportArgs) -> Result<(), CliError> {
    let since = a
        .since
        .as_deref()
        .map(|t| parse_date("--since", t, false))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|t| parse_date("--until", t, true))
        .transpose()?;
    let by = match a.by {
        ByArg::Day => "day",
        ByArg::Week => "week",
        ByArg::Month => "month",
    };
    let mut path = format!("/v1/report?by={by}");
    if let Some(s) = since {
        path.push_str(&format!("&since_ms={s}"));
    }
    if let Some(u) = until {
        path.push_str(&format!("&until_ms={u}"));
    }
    let v = api(cfg, "GET", &path, None).await?;
    let cell = |r: &Value, c: &str| match &r[c] {
        Value::Null => String::new(),
        Value::Number(n) if c.starts_with("latency") => {
            format!("{:.3}", n.as_f64().unwrap_or(0.0))
        }
        other => s(other),
    };
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| REPORT_COLUMNS.iter().map(|c| cell(r, c)).collect())
        .collect();
    match a.format {
        ReportFormat::Json => print_json(&v),
        ReportFormat::Csv => {
            println!("{}", REPORT_COLUMNS.join(","));
            for r in rows {
                println!(
                    "{}",
                    r.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(",")
                );
            }
        }
        ReportFormat::Table => {
            table(
                &[
                    "PERIOD",
                    "AGENCY",
                    "SENT",
                    "RECEIVED",
                    "DELIVERED",
                    "BOUNCED",
                    "EXPIRED",
                    "MEDIAN s",
                    "P95 s",
                ],
                &rows,
            );
            let now: Vec<Vec<String>> = v["connections_now"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    vec![
                        s(&c["agency"]),
                        s(&c["inbox_consumers"]),
                        if c["online"] == true {
                            "online"
                        } else {
                            "offline"
                        }
                        .into(),
                    ]
                })
                .collect();
            let history: Vec<Vec<String>> = v["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| vec![s(&c["agency"]), s(&c["at"]), s(&c["event"]), s(&c["cause"])])
                .collect();
            if !history.is_empty() {
                println!();
                println!("Connects and disconnects in the period:");
                table(&["AGENCY", "AT", "EVENT", "CAUSE"], &history);
            }
            if !now.is_empty() {
                println!();
                println!("Connections now:");
                table(&["AGENCY", "CONSUMERS", "STATE"], &now);
            }
        }
    }
    Ok(())
}

/// Runs `truc store …`.
pub async fn store(cfg: &Config, cmd: StoreCmd) -> Result<(), CliError> {
    match cmd {
        StoreCmd::Stats { json } => {
            let v = api(cfg, "GET", "/v1/store/stats", None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            println!("path          {}", s(&v["path"]));
            println!("bytes on disk {}", s(&v["bytes_on_disk"]));
            println!(
                "retention     envelopes {}, audit {}",
                s(&v["envelope_retention"]),
                s(&v["audit_retention"])
            );
            let rows: Vec<Vec<String>> = v["trees"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| vec![s(&t["name"]), s(&t["entries"])])
                .collect();
            table(&["TREE", "ENTRIES"], &rows);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_follow_rfc4180_on_one_line() {
        assert_eq!(csv_fields("a,b").unwrap(), vec!["a", "b"]);
        assert_eq!(
            csv_fields("H37.DN.001,\"Sở Y tế, tỉnh \"\"Đồng Nai\"\"\"").unwrap(),
            vec!["H37.DN.001", "Sở Y tế, tỉnh \"Đồng Nai\""]
        );
        assert_eq!(csv_fields(" a , b ").unwrap(), vec!["a", "b"]);
        assert!(csv_fields("a,\"b").is_err());
        assert!(csv_fields("a,b\"c").is_err());
        assert!(csv_fields("a,\"b\"c").is_err());
    }

    #[test]
    fn import_is_checked_in_full_with_line_numbers() {
        let ok = "\u{feff}code,name\n# comment\n\nH37.DN.001,Sở Y tế\r\nH37.DN.002,\"UBND xã A, huyện B\"\n";
        let rows = parse_import(ok).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].line, 4);
        assert_eq!(rows[1].name, "UBND xã A, huyện B");
        let e = parse_import("H1,A\nbad code,B\n").unwrap_err();
        assert!(e.starts_with("line 2: code"), "{e}");
        let e = parse_import("H1,A\nH2\n").unwrap_err();
        assert!(e.starts_with("line 2: expected 2 columns"), "{e}");
        let e = parse_import("H1,A\nH2,\n").unwrap_err();
        assert!(e.starts_with("line 2: name"), "{e}");
        let e = parse_import("H1,A\nH2,B\nH1,C\n").unwrap_err();
        assert_eq!(e, "line 3: code H1 already appears on line 1");
        assert!(parse_import("code,name\n").is_err());
    }

    #[test]
    fn rates_and_dates() {
        assert_eq!(parse_rate("10/s").unwrap(), 10.0);
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        assert_eq!(parse_rate("0/s").unwrap_err().code, 2);
        assert_eq!(parse_rate("fast").unwrap_err().code, 2);
        let d = parse_date("--since", "2026-11-22", false).unwrap();
        assert_eq!(d, 1_795_305_600_000);
        assert_eq!(
            parse_date("--until", "2026-11-22", true).unwrap(),
            d + 86_400_000
        );
        assert_eq!(
            parse_date("--since", "22/11/2026", false).unwrap_err().code,
            2
        );
        assert_eq!(
            query_string(&json!({"a": "x y", "b": null, "c": 3})),
            "a=x%20y&c=3"
        );
    }
}

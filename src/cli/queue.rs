//! `truc queue list|peek|purge|shape`: agency inboxes over the typed admin
//! client.
//!
//! Invariants: `purge` without `--yes` says what it would do and changes
//! nothing (exit 2); `peek` returns what it takes (the messages come back
//! marked redelivered).

use clap::{Subcommand, ValueEnum};

use crate::cli::admin::Admin;
use crate::cli::{opt, parse_code, print_json, refuse_without_yes, table, CliError};
use crate::core::config::Config;

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
        /// How many (1-1000).
        #[arg(short = 'n', long = "limit", alias = "n", default_value_t = 10)]
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

/// A short age: `45s`, `12m`, `5h`, `3d`; `-` when unknown.
pub(crate) fn age(secs: Option<i64>) -> String {
    match secs {
        None => "-".into(),
        Some(n) if n < 120 => format!("{n}s"),
        Some(n) if n < 7200 => format!("{}m", n / 60),
        Some(n) if n < 172_800 => format!("{}h", n / 3600),
        Some(n) => format!("{}d", n / 86_400),
    }
}

/// Runs `truc queue …`.
pub async fn run(cfg: &Config, cmd: QueueCmd) -> Result<(), CliError> {
    let admin = Admin::new(cfg)?;
    match cmd {
        QueueCmd::List { sort, json } => {
            let mut list = admin.queues().await?;
            if sort == SortBy::Depth {
                list.sort_by_key(|r| std::cmp::Reverse(r.messages.unwrap_or(0)));
            }
            if json {
                print_json(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    vec![
                        r.code.clone(),
                        opt(&r.messages),
                        opt(&r.consumers),
                        opt(&r.notify_messages),
                        age(r.oldest_age_s),
                        if r.online { "online" } else { "offline" }.into(),
                        if r.enabled { "enabled" } else { "disabled" }.into(),
                        r.name.clone(),
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
            if n == 0 || n > 1000 {
                return Err(CliError::new(2, "-n/--limit must be 1-1000"));
            }
            let list = admin.peek(&parse_code(&code)?, n).await?;
            if json {
                print_json(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|m| {
                    vec![
                        opt(&m.message_id),
                        opt(&m.from),
                        opt(&m.priority),
                        m.size.to_string(),
                        opt(&m.accepted_at),
                        opt(&m.attempt),
                        opt(&m.subject),
                    ]
                })
                .collect();
            table(
                &[
                    "MESSAGE ID",
                    "FROM",
                    "PRIO",
                    "SIZE",
                    "ACCEPTED",
                    "ATTEMPT",
                    "SUBJECT",
                ],
                &rows,
            );
            eprintln!(
                "(peeked messages were returned to the queue and are now marked redelivered)"
            );
            Ok(())
        }
        QueueCmd::Purge { code, yes, json } => {
            let code = parse_code(&code)?;
            if !yes {
                let a = admin.agency(&code).await?;
                return Err(refuse_without_yes(format!(
                    "would remove every envelope waiting in {} ({} now) and send each source a bounced notice",
                    a.inbox,
                    opt(&a.inbox_messages)
                )));
            }
            let r = admin.purge(&code).await?;
            if json {
                print_json(&r);
            } else {
                println!(
                    "purged {} envelopes from {}; {} bounced notices ({}); {} without a registered source",
                    r.purged, r.code, r.notices, r.reason, r.without_source
                );
            }
            Ok(())
        }
        QueueCmd::Shape { json } => {
            let v = admin.shape().await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let mut headers = vec!["DEST".to_owned(), "TOTAL".to_owned()];
            headers.extend(v.buckets.iter().cloned());
            let rows: Vec<Vec<String>> = v
                .destinations
                .iter()
                .map(|d| {
                    let mut r = vec![d.code.clone(), d.total.to_string()];
                    r.extend(v.buckets.iter().map(|l| opt(&d.buckets.get(l))));
                    r
                })
                .collect();
            let h: Vec<&str> = headers.iter().map(String::as_str).collect();
            table(&h, &rows);
            Ok(())
        }
    }
}

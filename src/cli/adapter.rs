//! The reference adapter commands (`truc send`, `truc recv`, `truc notices`)
//! over [`crate::client`].

use std::time::Duration;

use crate::cli::{
    duration, parse_code as code_arg, priority, CliError as Error, CredArgs, HeartbeatArgs,
    NoticesArgs, RecvArgs, SendArgs,
};
use crate::client::{Client, Credentials, Outgoing, ReceivedKind};
use crate::core::code::AgencyCode;
use crate::core::config::Config;

fn credentials(code: &AgencyCode, a: &CredArgs) -> Result<Credentials, Error> {
    if let Some(path) = &a.credentials {
        let c = Credentials::from_file(path).map_err(|e| Error {
            code: 2,
            message: e.to_string(),
        })?;
        if &c.code != code {
            return Err(Error {
                code: 2,
                message: format!(
                    "{} holds the credentials of {}, not {code}",
                    path.display(),
                    c.code
                ),
            });
        }
        return Ok(c);
    }
    match (&a.access_key, &a.secret) {
        (Some(k), Some(s)) => Ok(Credentials {
            code: code.clone(),
            access_key: k.clone(),
            secret: s.clone(),
        }),
        _ => Err(Error {
            code: 2,
            message: "credentials needed: --credentials FILE, or TRUC_ACCESS_KEY and TRUC_SECRET"
                .into(),
        }),
    }
}

async fn connect(cfg: &Config, creds: Credentials) -> Result<Client, Error> {
    let tls = crate::broker::BrokerTls::new(cfg.amqp_ca_file.clone());
    Client::connect_tls(&cfg.amqp_url, &cfg.prefix, creds, &tls)
        .await
        .map_err(|e| Error {
            code: 4,
            message: e.to_string(),
        })
}

/// `truc send`
pub async fn send(cfg: &Config, a: SendArgs) -> Result<(), Error> {
    let from = code_arg(&a.from)?;
    let to =
        a.to.split(',')
            .map(code_arg)
            .collect::<Result<Vec<_>, _>>()?;
    let body = std::fs::read(&a.file).map_err(|e| Error {
        code: 2,
        message: format!("{}: {e}", a.file.display()),
    })?;
    let mut extra = Vec::new();
    if let Some(d) = &a.deliver_by {
        extra.push(("lgsp-deliver-by".to_owned(), d.clone()));
    }
    let out = Outgoing {
        to,
        subject: a.subject.clone(),
        priority: priority(a.priority)?,
        data_type: a.data_type.clone(),
        content_type: a.content_type.clone(),
        body,
        message_id: a.message_id.clone(),
        extra,
    };
    let client = connect(cfg, credentials(&from, &a.creds)?).await?;
    let id = client.send(&out).await.map_err(|e| Error {
        code: 1,
        message: e.to_string(),
    })?;
    println!("{id}");
    client.close().await;
    Ok(())
}

/// `truc recv`
pub async fn recv(cfg: &Config, a: RecvArgs) -> Result<(), Error> {
    let code = code_arg(&a.code)?;
    let idle = a
        .idle
        .as_deref()
        .map(|i| duration("--idle", i))
        .transpose()?;
    let mut client = connect(cfg, credentials(&code, &a.creds)?).await?;
    let mut sub = client.inbox(64).await.map_err(|e| Error {
        code: 4,
        message: e.to_string(),
    })?;
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).map_err(|e| Error {
            code: 2,
            message: format!("{}: {e}", dir.display()),
        })?;
    }
    let (mut count, mut repeats) = (0u64, 0u64);
    while a.count.is_none_or(|n| count < n) {
        let next = match idle {
            Some(d) => match tokio::time::timeout(d, sub.next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => sub.next().await,
        };
        let inbound = match next {
            Some(Ok(i)) => i,
            Some(Err(e)) => {
                return Err(Error {
                    code: 4,
                    message: e.to_string(),
                })
            }
            None => break,
        };
        let tag = inbound.delivery_tag;
        match client.receive(inbound) {
            Err(e) => {
                eprintln!("refused: {e}");
                sub.reject(tag, false).await.map_err(|e| Error {
                    code: 4,
                    message: e.to_string(),
                })?;
            }
            Ok(r) if matches!(r.kind, ReceivedKind::Recall { .. }) => {
                let ReceivedKind::Recall { already_received } = r.kind else {
                    continue;
                };
                let answer = if already_received { "16" } else { "15" };
                client
                    .send_status(
                        &r.message_id,
                        answer,
                        Some(&r.from),
                        Some(if already_received {
                            "already received"
                        } else {
                            "dropped before receipt"
                        }),
                    )
                    .await
                    .map_err(|e| Error {
                        code: 4,
                        message: e.to_string(),
                    })?;
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"recall": r.message_id, "from": r.from, "answer": answer})
                    );
                } else {
                    println!(
                        "recall of {} from {}: answered {answer}",
                        r.message_id, r.from
                    );
                }
                sub.ack(tag).await.map_err(|e| Error {
                    code: 4,
                    message: e.to_string(),
                })?;
            }
            Ok(r) if r.stale => {
                eprintln!(
                    "dropped stale {} from {} (lgsp-deliver-by passed)",
                    r.message_id, r.from
                );
                sub.reject(tag, false).await.map_err(|e| Error {
                    code: 4,
                    message: e.to_string(),
                })?;
            }
            Ok(r) => {
                if r.repeat {
                    repeats += 1;
                } else {
                    if let Some(dir) = &a.out {
                        let path = dir.join(format!("{}_{}", r.from, r.message_id));
                        std::fs::write(&path, &r.message.body).map_err(|e| Error {
                            code: 1,
                            message: format!("{}: {e}", path.display()),
                        })?;
                    }
                    client
                        .send_status(&r.message_id, "01", Some(&r.from), None)
                        .await
                        .map_err(|e| Error {
                            code: 4,
                            message: e.to_string(),
                        })?;
                    count += 1;
                }
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "from": r.from, "message_id": r.message_id, "subject": r.subject,
                            "priority": r.priority, "attempt": r.attempt, "repeat": r.repeat,
                            "size": r.message.body.len(),
                        })
                    );
                } else if !r.repeat {
                    println!(
                        "from {}  id {}  priority {}  {} bytes  subject {:?}",
                        r.from,
                        r.message_id,
                        r.priority,
                        r.message.body.len(),
                        r.subject
                    );
                }
                sub.ack(tag).await.map_err(|e| Error {
                    code: 4,
                    message: e.to_string(),
                })?;
            }
        }
    }
    if !a.json {
        eprintln!("received {count}, dropped {repeats} repeats");
    }
    client.close().await;
    Ok(())
}

/// `truc notices`
pub async fn notices(cfg: &Config, a: NoticesArgs) -> Result<(), Error> {
    let code = code_arg(&a.code)?;
    let idle: Duration = duration("--idle", &a.idle)?;
    let client = connect(cfg, credentials(&code, &a.creds)?).await?;
    let mut sub = client.notices(64).await.map_err(|e| Error {
        code: 4,
        message: e.to_string(),
    })?;
    let mut count = 0u64;
    while a.count.is_none_or(|n| count < n) {
        let inbound = match tokio::time::timeout(idle, sub.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Error {
                    code: 4,
                    message: e.to_string(),
                })
            }
            Ok(Some(Ok(i))) => i,
        };
        match client.notice(&inbound) {
            Ok(n) => {
                if a.json {
                    println!("{}", serde_json::to_string(&n).unwrap_or_default());
                } else {
                    let mut line = format!("{}  {}  ref {}", n.at, n.notice.as_str(), n.reference);
                    if let Some(d) = &n.dest {
                        line.push_str(&format!("  dest {d}"));
                    }
                    if let Some(st) = &n.status {
                        line.push_str(&format!("  status {st}"));
                    }
                    if let Some(r) = n.reason {
                        line.push_str(&format!("  reason {r}"));
                    }
                    if !n.detail.is_empty() {
                        line.push_str(&format!("  ({})", n.detail));
                    }
                    println!("{line}");
                }
                count += 1;
            }
            Err(e) => eprintln!("refused: {e}"),
        }
        sub.ack(inbound.delivery_tag).await.map_err(|e| Error {
            code: 4,
            message: e.to_string(),
        })?;
    }
    client.close().await;
    Ok(())
}

/// `truc heartbeat`
pub async fn heartbeat(cfg: &Config, a: HeartbeatArgs) -> Result<(), Error> {
    let code = code_arg(&a.code)?;
    let online = a.state == "online";
    let every = a
        .every
        .as_deref()
        .map(|e| duration("--every", e))
        .transpose()?;
    let client = connect(cfg, credentials(&code, &a.creds)?).await?;
    let fail = |e: crate::client::ClientError| Error {
        code: 4,
        message: e.to_string(),
    };
    loop {
        client.heartbeat(online).await.map_err(fail)?;
        println!("{code}: heartbeat {} sent", a.state);
        let Some(every) = every else { break };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    client.close().await;
    Ok(())
}

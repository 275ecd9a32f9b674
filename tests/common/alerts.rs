//! Local receivers of the hub's alerts: a webhook endpoint (HTTP) and an
//! SMTP sink, each keeping what it got as text.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How long a test waits for a notification.
const WAIT: Duration = Duration::from_secs(20);

/// Everything a local receiver got, as text.
#[derive(Clone, Default)]
pub struct Inbox(Arc<Mutex<Vec<String>>>);

impl Inbox {
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Notifications about `key` whose first line says `word` (`ALERT`,
    /// `RESOLVED`).
    pub fn about(&self, word: &str, key: &str) -> usize {
        self.all()
            .iter()
            .filter(|t| t.contains(&format!("key: {key}")) && t.contains(&format!("/ {word}:")))
            .count()
    }

    pub async fn wait(&self, word: &str, key: &str, log: impl Fn() -> String) {
        let deadline = Instant::now() + WAIT;
        while self.about(word, key) == 0 {
            assert!(
                Instant::now() < deadline,
                "no {word} for {key}; got {:#?}\nhub log:\n{}",
                self.all(),
                log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An HTTP receiver of webhook posts: answers 200 and keeps each body's
/// `text`.
pub async fn webhook() -> (String, Inbox, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/truc", l.local_addr().unwrap());
    let inbox = Inbox::default();
    let kept = inbox.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                kept.0
                    .lock()
                    .unwrap()
                    .push(v["text"].as_str().unwrap().to_owned());
                let _ = r
                    .get_mut()
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (url, inbox, task)
}

/// An SMTP sink: speaks just enough SMTP and keeps each message's data.
pub async fn smtp() -> (String, Inbox, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let inbox = Inbox::default();
    let kept = inbox.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                r.get_mut().write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(d) = data.as_mut() {
                        if line == ".\r\n" {
                            kept.0.lock().unwrap().push(data.take().unwrap());
                            r.get_mut().write_all(b"250 kept\r\n").await.unwrap();
                        } else {
                            d.push_str(&line);
                        }
                        continue;
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go on\r\n"
                        }
                        "QUIT" => {
                            let _ = r.get_mut().write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    r.get_mut().write_all(answer).await.unwrap();
                }
            });
        }
    });
    (addr, inbox, task)
}

/// An alerting policy for tests: every rule on with small thresholds,
/// evaluated every 300 ms, sent to webhook `url` and SMTP relay `smtp`.
pub fn policy(url: &str, smtp: &str) -> String {
    format!(
        r#"[alerts]
evaluate_every = "300ms"
repeat_after = "1h"
max_per_hour = 1000
[webhook]
url = "{url}"
[email]
smtp = "{smtp}"
from = "truc@tinh.example"
to = ["truc-ops@tinh.example"]
[rules.undelivered]
[rules.agency_offline]
after = "1s"
[rules.broker_disconnected]
after = "1s"
[rules.store]
[rules.inbox_depth]
max = 1
[rules.refusals]
max = 2
window = "3s"
[rules.expiry]
within = "2h"
"#
    )
}

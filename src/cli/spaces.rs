//! Upload spaces over the HTTPS gateway, for the reference adapter: `truc
//! send --gateway` uploads a file into a space (1 MiB chunks read from the
//! file, each sent again after a failure) and completes it; `truc recv
//! --gateway` fetches a document from its space, streamed to a file and
//! hashed as it comes, resumed with `Range` after a cut, and checked
//! against the envelope's `lgsp-digest`. Both open a session with the
//! agency's own key.
//!
//! Invariants: a document is never held in memory whole; a fetched one is
//! written to `<file>.part` and renamed only once its digest matches (a
//! mismatch removes it and fails); plain HTTP only to a loopback address;
//! the session token is never printed.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cli::tls::{dial_addr, AdminClientTls};
use crate::cli::CliError;
use crate::client::{session_message, Credentials};

/// Exit code of a document that could not be uploaded or fetched, or does
/// not match.
pub(crate) const EXIT_SPACE: i32 = 8;

/// How many times a cut download is resumed, or a chunk sent again.
const RESUMES: u32 = 5;

/// The size of every chunk but the last.
const CHUNK: usize = 1 << 20;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn failed(what: impl std::fmt::Display) -> CliError {
    CliError::new(EXIT_SPACE, format!("upload space: {what}"))
}

/// An HTTPS gateway, and the session opened on it.
pub(crate) struct Gateway {
    addr: String,
    tls: Option<AdminClientTls>,
    token: Option<String>,
}

/// An HTTP answer's head: status and the headers the fetch reads.
struct Head {
    status: u16,
    length: Option<u64>,
}

impl Gateway {
    /// The gateway at `url` (`http://<loopback ip>:<port>` or
    /// `https://<ip>:<port>`, verified against the PEM CA file `ca`).
    pub(crate) fn new(url: &str, ca: Option<&Path>) -> Result<Self, CliError> {
        let bad = |why: &str| CliError::new(2, format!("--gateway {url}: {why}"));
        let (https, addr) = if let Some(a) = url.strip_prefix("https://") {
            (true, a)
        } else if let Some(a) = url.strip_prefix("http://") {
            (false, a)
        } else {
            (false, url)
        };
        let addr = addr.trim_end_matches('/').to_owned();
        let ip = dial_addr(&addr)
            .parse::<std::net::SocketAddr>()
            .map_err(|_| bad("must be <ip>:<port>"))?
            .ip();
        let tls = match (https, ca) {
            (true, Some(ca)) => {
                Some(AdminClientTls::from_ca_file(ca).map_err(|e| CliError::new(2, e))?)
            }
            (true, None) => return Err(bad("HTTPS needs --gateway-ca")),
            (false, _) if ip.is_loopback() => None,
            (false, _) => return Err(bad("plain HTTP only to a loopback address; use https://")),
        };
        Ok(Self {
            addr,
            tls,
            token: None,
        })
    }

    async fn connect(&self) -> Result<Box<dyn Io>, CliError> {
        let s = tokio::net::TcpStream::connect(dial_addr(&self.addr))
            .await
            .map_err(|e| failed(format!("cannot reach the gateway at {}: {e}", self.addr)))?;
        Ok(match &self.tls {
            None => Box::new(s),
            Some(tls) => Box::new(
                tls.connect(s, &self.addr)
                    .await
                    .map_err(|e| failed(format!("gateway {}: TLS: {e}", self.addr)))?,
            ),
        })
    }

    /// One request and its whole answer (status, head, body), on a
    /// connection of its own.
    async fn exchange(&self, head: String, body: &[u8]) -> Result<(u16, Vec<u8>), CliError> {
        let mut s = self.connect().await?;
        s.write_all(head.as_bytes()).await.map_err(failed)?;
        s.write_all(body).await.map_err(failed)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(failed)?;
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| failed("the gateway answered something that is not HTTP"))?;
        let status = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|h| h.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| failed("the gateway answered something that is not HTTP"))?;
        Ok((status, raw.split_off(end + 4)))
    }

    /// Opens a session for `creds` (again, when `fresh`).
    async fn token(&mut self, creds: &Credentials, fresh: bool) -> Result<String, CliError> {
        if let (Some(t), false) = (&self.token, fresh) {
            return Ok(t.clone());
        }
        let m = session_message(creds);
        let mut head = format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\nMessage-Id: {}\r\n",
            self.addr,
            m.message_id.as_deref().unwrap_or_default()
        );
        for (k, v) in &m.headers {
            if let Some(v) = v.as_text() {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        let (_, body) = self.exchange(head, b"").await?;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let token = body["token"]
            .as_str()
            .ok_or_else(|| {
                failed(format!(
                    "no session: {}",
                    body["error"].as_str().unwrap_or("?")
                ))
            })?
            .to_owned();
        self.token = Some(token.clone());
        Ok(token)
    }

    /// `method path` with `body` in a session of `creds` (opened again once
    /// when it ended); the status and the JSON answer.
    async fn call(
        &mut self,
        creds: &Credentials,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, serde_json::Value), CliError> {
        let mut fresh = false;
        loop {
            let token = self.token(creds, fresh).await?;
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.addr,
                body.len()
            );
            let (status, answer) = self.exchange(head, body).await?;
            if status == 401 && !fresh {
                fresh = true;
                continue;
            }
            return Ok((status, serde_json::from_slice(&answer).unwrap_or_default()));
        }
    }

    /// Uploads `file` into a new space of `creds`' agency and completes
    /// it: the space's id and the document's digest.
    pub(crate) async fn upload(
        &mut self,
        creds: &Credentials,
        file: &Path,
    ) -> Result<(String, String), CliError> {
        let io = |e: std::io::Error| failed(format!("{}: {e}", file.display()));
        let mut f = tokio::fs::File::open(file).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let digest = format!("sha256={}", hex::encode(hasher.finalize()));
        let ask = serde_json::json!({"size": size, "digest": digest}).to_string();
        let (status, space) = self
            .call(creds, "POST", "/v1/spaces", ask.as_bytes())
            .await?;
        if status != 201 {
            return Err(failed(format!(
                "no space ({status}): {}",
                space["error"].as_str().unwrap_or("?")
            )));
        }
        let id = space["id"].as_str().unwrap_or_default().to_owned();
        let chunks = space["chunks"].as_u64().unwrap_or(0);
        let mut f = tokio::fs::File::open(file).await.map_err(io)?;
        for n in 0..chunks {
            let len = (size - n * CHUNK as u64).min(CHUNK as u64) as usize;
            f.read_exact(&mut buf[..len]).await.map_err(io)?;
            let path = format!("/v1/spaces/{id}/chunks/{n}");
            let mut tries = 0;
            loop {
                match self.call(creds, "PUT", &path, &buf[..len]).await {
                    Ok((200, _)) => break,
                    Ok((status, e)) => {
                        return Err(failed(format!(
                            "chunk {n} refused ({status}): {}",
                            e["error"].as_str().unwrap_or("?")
                        )))
                    }
                    Err(e) if tries < RESUMES => {
                        tries += 1;
                        tracing::debug!(chunk = n, error = %e.message, "chunk sent again");
                        tokio::time::sleep(std::time::Duration::from_millis(
                            500 * u64::from(tries),
                        ))
                        .await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let (status, done) = self
            .call(creds, "POST", &format!("/v1/spaces/{id}/complete"), b"")
            .await?;
        if status != 200 {
            return Err(failed(format!(
                "space {id} not completed ({status}): {}",
                done["error"].as_str().unwrap_or("?")
            )));
        }
        Ok((id, digest))
    }

    /// Fetches space `id` as `creds`' agency into `out` (or only hashes it
    /// when `None`) and checks it against `digest`: its size.
    pub(crate) async fn fetch(
        &mut self,
        creds: &Credentials,
        id: &str,
        digest: &str,
        out: Option<&Path>,
    ) -> Result<u64, CliError> {
        let part = out.map(|p| {
            let mut name = p.as_os_str().to_owned();
            name.push(".part");
            PathBuf::from(name)
        });
        let mut file = match &part {
            Some(p) => Some(
                tokio::fs::File::create(p)
                    .await
                    .map_err(|e| failed(format!("{}: {e}", p.display())))?,
            ),
            None => None,
        };
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let mut total: Option<u64> = None;
        let mut tries = 0;
        let mut fresh = false;
        loop {
            let token = self.token(creds, fresh).await?;
            let start = got;
            match self
                .fetch_from(&token, id, got, &mut hasher, &mut file, &mut got)
                .await
            {
                Ok(Head { status: 401, .. }) if !fresh => fresh = true,
                Ok(Head {
                    status: 200 | 206,
                    length,
                }) => {
                    if total.is_none() {
                        total = length.map(|l| l + start);
                    }
                    if Some(got) == total {
                        break;
                    }
                }
                Ok(Head { status, .. }) => {
                    return Err(self
                        .drop_part(&part, format!("space {id}: the gateway answered {status}"))
                        .await)
                }
                Err(e) => {
                    tries += 1;
                    if tries > RESUMES {
                        return Err(self.drop_part(&part, e).await);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500 * u64::from(tries)))
                        .await;
                }
            }
        }
        let have = format!("sha256={}", hex::encode(hasher.finalize()));
        if have != digest {
            return Err(self
                .drop_part(
                    &part,
                    format!("space {id}: the document does not match lgsp-digest"),
                )
                .await);
        }
        if let (Some(f), Some(p), Some(out)) = (file, &part, out) {
            f.sync_all().await.map_err(failed)?;
            tokio::fs::rename(p, out).await.map_err(failed)?;
        }
        Ok(got)
    }

    async fn drop_part(&self, part: &Option<PathBuf>, why: impl std::fmt::Display) -> CliError {
        if let Some(p) = part {
            let _ = tokio::fs::remove_file(p).await;
        }
        failed(why)
    }

    /// One `GET` of the content from byte `from` on, appended to `file`
    /// and `hasher` as it comes (`got` counts the bytes); its head, or the
    /// I/O error that cut it.
    async fn fetch_from(
        &self,
        token: &str,
        id: &str,
        from: u64,
        hasher: &mut Sha256,
        file: &mut Option<tokio::fs::File>,
        got: &mut u64,
    ) -> Result<Head, String> {
        let range = if from > 0 {
            format!("Range: bytes={from}-\r\n")
        } else {
            String::new()
        };
        let req = format!(
            "GET /v1/spaces/{id}/content HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n{range}Connection: close\r\n\r\n",
            self.addr
        );
        let mut s = self.connect().await.map_err(|e| e.message)?;
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 16];
        let mut head = Vec::new();
        let (head, mut rest) = loop {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the gateway closed before its answer".into());
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = head.split_off(end + 4);
                break (String::from_utf8_lossy(&head).into_owned(), rest);
            }
            if head.len() > 64 * 1024 {
                return Err("the gateway's answer head is too long".into());
            }
        };
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("the gateway answered something that is not HTTP")?;
        let length = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        });
        if status == 200 && from > 0 {
            return Err("the gateway did not resume the download (Range ignored)".into());
        }
        if !matches!(status, 200 | 206) {
            return Ok(Head { status, length });
        }
        let mut left = length.ok_or("no Content-Length in the gateway's answer")?;
        loop {
            let take = (rest.len() as u64).min(left) as usize;
            if take > 0 {
                hasher.update(&rest[..take]);
                if let Some(f) = file {
                    f.write_all(&rest[..take])
                        .await
                        .map_err(|e| e.to_string())?;
                }
                *got += take as u64;
                left -= take as u64;
            }
            if left == 0 {
                return Ok(Head { status, length });
            }
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!(
                    "the download was cut after {got} bytes",
                    got = *got
                ));
            }
            rest = buf[..n].to_vec();
        }
    }
}

//! Alert notifications to a Mattermost- or Slack-style incoming webhook:
//! `POST {"text": …}` over HTTP or HTTPS (the bundled web roots), one
//! request per connection.
//!
//! Invariants: a request has [`TIMEOUT`] in all (connect, TLS, write,
//! answer); only a 2xx answer counts as sent.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest one notification may take.
pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

/// A URL split for one request.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

/// `url` (`http://` or `https://`, host, optional port and path).
pub(super) fn target(url: &str) -> Result<Target, String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("bad port in {url:?}"))?),
        None => (authority, if https { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(format!("no host in {url:?}"));
    }
    Ok(Target {
        https,
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    t: &Target,
    body: &[u8],
) -> Result<u16, String> {
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: truc\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        t.path,
        t.host,
        body.len()
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(body).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // The status line is enough.
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 8192 {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {:?}", line.lines().next().unwrap_or("")))
}

/// Posts `text` to `url`; `Ok` on a 2xx answer.
pub(super) async fn post(url: &str, text: &str) -> Result<(), String> {
    let t = target(url)?;
    let body =
        serde_json::to_vec(&serde_json::json!({ "text": text })).map_err(|e| e.to_string())?;
    let status = tokio::time::timeout(TIMEOUT, async {
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", t.host, t.port))?;
        if t.https {
            let config = crate::core::pem::client_config(crate::core::pem::web_roots())?;
            let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                .map_err(|e| format!("host {:?}: {e}", t.host))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(tls, &t, &body).await
        } else {
            exchange(tcp, &t, &body).await
        }
    })
    .await
    .map_err(|_| format!("no answer within {}s", TIMEOUT.as_secs()))??;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the webhook answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            target("https://chat.example.gov.vn/hooks/abc").unwrap(),
            Target {
                https: true,
                host: "chat.example.gov.vn".into(),
                port: 443,
                path: "/hooks/abc".into()
            }
        );
        assert_eq!(target("http://127.0.0.1:8065").unwrap().path, "/");
        assert_eq!(target("http://127.0.0.1:8065").unwrap().port, 8065);
        assert!(target("ftp://x").is_err());
        assert!(target("http://:80/").is_err());
        assert!(target("http://h:port/").is_err());
    }
}

//! A minimal HTTP/1.1 client for the CLI's calls to the admin API: plain on
//! loopback, HTTPS through [`crate::cli::tls`] otherwise.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// HTTP client errors.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The server cannot be reached.
    #[error("cannot reach the truc admin API at {addr}: {source} (is `truc serve` running? TRUC_ADMIN_ADDR?)")]
    Connect {
        /// Address.
        addr: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("admin API I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The response is not HTTP.
    #[error("admin API answered something that is not HTTP")]
    BadResponse,
    /// The TLS handshake failed (certificate not trusted, not HTTPS, ...).
    #[error("admin API at {addr}: TLS: {source}")]
    Tls {
        /// Address.
        addr: String,
        /// What failed.
        source: std::io::Error,
    },
}

impl HttpError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Io(_) => true,
            Self::BadResponse | Self::Tls { .. } => false,
        }
    }
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Sends one request and reads the whole response.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&[u8]>,
) -> Result<Response, HttpError> {
    request_tls(None, addr, method, path, token, body).await
}

/// [`request`], over HTTPS when `tls` is given.
pub async fn request_tls(
    tls: Option<&crate::cli::tls::AdminClientTls>,
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&[u8]>,
) -> Result<Response, HttpError> {
    let s = TcpStream::connect(crate::cli::tls::dial_addr(addr))
        .await
        .map_err(|source| HttpError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    match tls {
        None => exchange(s, addr, method, path, token, body).await,
        Some(tls) => {
            let s = tls
                .connect(s, addr)
                .await
                .map_err(|source| HttpError::Tls {
                    addr: addr.to_owned(),
                    source,
                })?;
            exchange(s, addr, method, path, token, body).await
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&[u8]>,
) -> Result<Response, HttpError> {
    let body = body.unwrap_or(b"");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpError::BadResponse)?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| HttpError::BadResponse)?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::BadResponse)?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest).ok_or(HttpError::BadResponse)?
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"zz\r\n").is_none());
    }
}

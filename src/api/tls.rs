//! The connections of truc's HTTP servers (the admin API, the agencies'
//! gateway): HTTPS with rustls when configured, and timeouts so idle or slow
//! clients cannot hold connections.
//!
//! Invariants: a non-loopback `admin_addr` or `gateway_addr` is only ever
//! served over HTTPS ([`load_server`] refuses otherwise, so `truc serve` does
//! not start); every connection must complete its TLS handshake and each
//! request head within `admin_header_timeout`, and a keep-alive connection
//! idle that long is closed; on shutdown no new connection is accepted and
//! open ones are closed gracefully (at most [`DRAIN`] later).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::config::Config;

/// How long open connections may take to finish after shutdown.
pub const DRAIN: Duration = Duration::from_secs(5);

/// TLS server settings (the admin API's, the gateway's).
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

/// The TLS settings of `config` (`None`: plain HTTP on loopback), or why the
/// admin API cannot be served as configured.
pub fn load(config: &Config) -> Result<Option<ServerTls>, String> {
    load_server(
        ServerFiles {
            what: "admin",
            addr: &config.admin_addr,
            loopback: config.admin_is_loopback(),
            cert: config.admin_tls_cert.as_deref(),
            key: config.admin_tls_key.as_deref(),
        },
        "the admin API (and its token)",
    )
}

/// The files and address of one HTTPS server truc runs.
pub(crate) struct ServerFiles<'a> {
    /// Its name in configuration keys (`admin`: `admin_addr`, `admin_tls_cert`…).
    pub(crate) what: &'static str,
    /// The configured address.
    pub(crate) addr: &'a str,
    /// Whether it is loopback (plain HTTP allowed).
    pub(crate) loopback: bool,
    /// PEM certificate chain.
    pub(crate) cert: Option<&'a std::path::Path>,
    /// PEM private key.
    pub(crate) key: Option<&'a std::path::Path>,
}

/// The TLS settings of a server (`None`: plain HTTP on loopback), or why it
/// cannot be served as configured; `serves` says what plain HTTP would
/// expose.
pub(crate) fn load_server(f: ServerFiles<'_>, serves: &str) -> Result<Option<ServerTls>, String> {
    let w = f.what;
    let (cert, key_path) = match (f.cert, f.key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) if f.loopback => return Ok(None),
        (None, None) => {
            return Err(format!(
                "{w}_addr {} is not loopback and {w}_tls_cert / {w}_tls_key are not set: refusing to serve {serves} over plain HTTP",
                f.addr
            ))
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(format!("{w}_tls_cert and {w}_tls_key go together"))
        }
    };
    let certs = crate::core::pem::read_certificates(cert)?;
    let key = crate::core::pem::read_private_key(key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{w} TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{w}_tls_cert {} / {w}_tls_key {}: {e}",
                cert.display(),
                key_path.display()
            )
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(ServerTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    }))
}

/// Accepts connections on `listener` and serves `app` on each (HTTP/1.1,
/// over TLS when `tls`), until `shutdown`; `server` names it in the log.
pub async fn serve_connections(
    server: &'static str,
    app: Router,
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(server, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            match tls {
                None => serve_one(TokioIo::new(stream), app, header_timeout, shutdown).await,
                Some(tls) => {
                    match tokio::time::timeout(header_timeout, tls.acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            serve_one(TokioIo::new(s), app, header_timeout, shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(server, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(server, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            server,
            "connections still open after shutdown; dropping them"
        );
    }
}

async fn serve_one<I>(io: I, app: Router, header_timeout: Duration, shutdown: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

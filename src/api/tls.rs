//! Admin API connections: HTTPS with rustls when configured, and timeouts so
//! idle or slow clients cannot hold connections.
//!
//! Invariants: a non-loopback `admin_addr` is only ever served over HTTPS
//! ([`load`] refuses otherwise, so `truc serve` does not start); every
//! connection must complete its TLS handshake and each request head within
//! `admin_header_timeout`, and a keep-alive connection idle that long is
//! closed; on shutdown no new connection is accepted and open ones are
//! closed gracefully (at most [`DRAIN`] later).

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

/// The admin API's TLS server settings.
#[derive(Clone)]
pub struct AdminTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for AdminTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminTls")
    }
}

/// The TLS settings of `config` (`None`: plain HTTP on loopback), or why the
/// admin API cannot be served as configured.
pub fn load(config: &Config) -> Result<Option<AdminTls>, String> {
    let (cert, key) = match (&config.admin_tls_cert, &config.admin_tls_key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) if config.admin_is_loopback() => return Ok(None),
        (None, None) => {
            return Err(format!(
                "admin_addr {} is not loopback and admin_tls_cert / admin_tls_key are not set: refusing to serve the admin API (and its token) over plain HTTP",
                config.admin_addr
            ))
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err("admin_tls_cert and admin_tls_key go together".into())
        }
    };
    let certs = crate::core::pem::read_certificates(cert)?;
    let key = crate::core::pem::read_private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("admin TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "admin_tls_cert {} / admin_tls_key {}: {e}",
                cert.display(),
                config.admin_tls_key.as_deref().unwrap_or(cert).display()
            )
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(AdminTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    }))
}

/// Accepts connections on `listener` and serves `app` on each (HTTP/1.1,
/// over TLS when `tls`), until `shutdown`.
pub async fn serve_connections(
    app: Router,
    listener: tokio::net::TcpListener,
    tls: Option<AdminTls>,
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
                tracing::warn!(error = %e, "admin API accept failed");
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
                        Ok(Err(e)) => tracing::debug!(error = %e, "admin TLS handshake failed"),
                        Err(_) => tracing::debug!("admin TLS handshake timed out"),
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
        tracing::warn!("admin connections still open after shutdown; dropping them");
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
                tracing::debug!(error = %e, "admin connection ended");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

//! HTTPS for the CLI's admin client: the CA the admin API's certificate is
//! verified against, and the TLS connector.
//!
//! Invariants: with `admin_ca_file` set the CLI speaks HTTPS only, verifying
//! the certificate against that CA and the host of `admin_addr` (an IP
//! address; an unspecified one means this host, 127.0.0.1); without it the
//! CLI speaks plain HTTP and only to a loopback address, so the admin token
//! never crosses a network in clear text.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::core::config::Config;

/// How the CLI reaches the admin API over HTTPS.
#[derive(Clone)]
pub struct AdminClientTls {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for AdminClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminClientTls")
    }
}

impl AdminClientTls {
    /// Trusts the PEM certificates in `ca_file` only.
    pub fn from_ca_file(ca_file: &std::path::Path) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        crate::core::pem::add_ca_file(&mut roots, ca_file)?;
        let mut config = crate::core::pem::client_config(roots).map_err(|e| format!("TLS: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// The TLS handshake over `stream` with the server at `addr`.
    pub async fn connect(
        &self,
        stream: tokio::net::TcpStream,
        addr: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let ip = server_ip(addr).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("admin address {addr} is not IP:port"),
            )
        })?;
        self.connector
            .connect(ServerName::IpAddress(ip.into()), stream)
            .await
    }
}

/// The address to dial for `addr` (an unspecified address means this host).
pub fn dial_addr(addr: &str) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        _ => addr.to_owned(),
    }
}

fn server_ip(addr: &str) -> Option<IpAddr> {
    let a: SocketAddr = addr.parse().ok()?;
    Some(if a.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        a.ip()
    })
}

/// The HTTPS settings the CLI must use for `cfg`, or why it must not call
/// the admin API at all.
pub fn admin_client(cfg: &Config) -> Result<Option<AdminClientTls>, String> {
    if let Some(ca) = &cfg.admin_ca_file {
        return AdminClientTls::from_ca_file(ca).map(Some);
    }
    if !cfg.admin_is_loopback() {
        return Err(format!(
            "admin_addr {} is not loopback: set admin_ca_file / TRUC_ADMIN_CA_FILE to call the admin API over HTTPS (the token is never sent in clear text)",
            cfg.admin_addr
        ));
    }
    if cfg.admin_tls_cert.is_some() {
        return Err(
            "the admin API serves HTTPS (admin_tls_cert): set admin_ca_file / TRUC_ADMIN_CA_FILE to the CA that signed its certificate"
                .into(),
        );
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        let mut cfg = Config::default();
        assert!(admin_client(&cfg).unwrap().is_none());
        cfg.admin_addr = "10.0.0.5:7443".into();
        let e = admin_client(&cfg).unwrap_err();
        assert!(e.contains("TRUC_ADMIN_CA_FILE"), "{e}");
        cfg.admin_addr = "127.0.0.1:7443".into();
        cfg.admin_tls_cert = Some("/etc/truc/admin.pem".into());
        assert!(admin_client(&cfg).is_err());
        assert_eq!(dial_addr("0.0.0.0:7443"), "127.0.0.1:7443");
        assert_eq!(
            server_ip("0.0.0.0:1"),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(dial_addr("10.0.0.5:7443"), "10.0.0.5:7443");
    }
}

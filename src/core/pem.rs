//! Reading PEM files named in the configuration: CA certificates for
//! `amqps://` and for the CLI's HTTPS admin client, and the admin API's own
//! certificate chain and private key; and the one TLS client set-up every
//! outgoing connection uses ([`web_roots`], [`client_config`]).
//!
//! Invariant: every reader either returns at least one certificate (or
//! exactly one key) or an error whose text names the file and what is wrong
//! with it, so a bad path stops start-up with a message an operator can act on.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The bundled public web roots (a root rustls cannot use is skipped, not
/// fatal).
pub fn web_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        let _ = roots.add(cert.clone());
    }
    roots
}

/// A TLS client configuration trusting `roots`: ring, the safe default
/// protocol versions, no client certificate.
pub fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Reads the certificates of a PEM file (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        certs.push(cert.map_err(|e| format!("{}: not valid PEM: {e}", path.display()))?);
    }
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Adds the CA certificates of the PEM file `path` to `roots`.
pub fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), String> {
    for cert in read_certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Reads a PEM file of CA certificates and returns its text (checked to hold
/// at least one certificate).
pub fn read_ca_text(path: &Path) -> Result<String, String> {
    read_certificates(path)?;
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{}: no usable PEM private key (PKCS#8, RSA or EC): {e}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_pem_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pem");
        std::fs::write(&p, "not pem\n").unwrap();
        assert!(read_certificates(&p).unwrap_err().contains("x.pem"));
        assert!(read_ca_text(&p).unwrap_err().contains("no PEM certificate"));
        assert!(read_private_key(&p).unwrap_err().contains("x.pem"));
        let absent = dir.path().join("absent.pem");
        assert!(read_certificates(&absent)
            .unwrap_err()
            .contains("absent.pem"));
    }
}

//! Reading PEM files named in the configuration: CA certificates for
//! `amqps://` and for the CLI's HTTPS admin client, and the admin API's own
//! certificate chain and private key.
//!
//! Invariant: every reader either returns at least one certificate (or
//! exactly one key) or an error whose text names the file and what is wrong
//! with it, so a bad path stops start-up with a message an operator can act on.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

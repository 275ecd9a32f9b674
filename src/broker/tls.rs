//! TLS for broker links: what an `amqps://` URL is verified against.
//!
//! Invariants: an `amqps://` URL always gets a TLS handshake with the
//! server's certificate verified against the trust anchors here (the bundled
//! web PKI roots, plus the PEM certificates of `amqp_ca_file` when given) and
//! the URL's host name; there is no option to skip verification and no
//! fallback to plaintext. A CA file given with a plain `amqp://` URL is
//! refused rather than silently ignored. Local problems (an unreadable or
//! empty CA file) are [`AmqpError::Tls`]; a failed handshake is
//! [`AmqpError::Connect`] with a hint at the likely cause.

use std::path::{Path, PathBuf};

use lapin::tcp::OwnedTLSConfig;

use super::AmqpError;

/// Environment variable naming a PEM file of CA certificates trusted for
/// `amqps://` links, read by [`BrokerTls::from_env`].
pub const CA_FILE_ENV: &str = "TRUC_AMQP_CA_FILE";

/// Trust settings for `amqps://` links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerTls {
    ca_file: Option<PathBuf>,
}

impl BrokerTls {
    /// Trusts the certificates in `ca_file` (PEM) in addition to the web PKI
    /// roots; `None` trusts the web PKI roots only.
    pub fn new(ca_file: Option<PathBuf>) -> Self {
        Self { ca_file }
    }

    /// The CA file named by `TRUC_AMQP_CA_FILE`, if set and not empty.
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os(CA_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        )
    }

    /// The CA file, if any.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Refuses a CA file given with a plaintext `amqp://` URL: it would be
    /// silently ignored.
    pub(crate) fn check_plaintext(&self) -> Result<(), AmqpError> {
        match &self.ca_file {
            None => Ok(()),
            Some(path) => Err(AmqpError::Tls(format!(
                "a CA file ({}) is set for a plaintext amqp:// URL; use amqps:// (TLS, usually port 5671) or unset the CA file",
                path.display()
            ))),
        }
    }

    /// The lapin TLS settings for `url`, or why `url` cannot be used.
    pub(crate) fn for_url(&self, url: &str) -> Result<OwnedTLSConfig, AmqpError> {
        let secure = is_amqps(url);
        if !secure && !url.starts_with("amqp://") {
            return Err(AmqpError::Tls(
                "the broker URL must start with amqp:// or amqps://".into(),
            ));
        }
        let Some(path) = &self.ca_file else {
            return Ok(OwnedTLSConfig::default());
        };
        if !secure {
            self.check_plaintext()?;
        }
        let pem = crate::core::pem::read_ca_text(path)
            .map_err(|e| AmqpError::Tls(format!("CA file {e}")))?;
        Ok(OwnedTLSConfig {
            identity: None,
            cert_chain: Some(pem),
        })
    }
}

/// True for an `amqps://` URL (scheme compared case-insensitively).
pub fn is_amqps(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("amqps://"))
}

/// The connect error for `e`, with a hint when the TLS handshake failed.
pub(crate) fn connect_error(url: &str, e: &lapin::Error) -> AmqpError {
    let text = e.to_string();
    if !is_amqps(url) {
        return AmqpError::Connect(text);
    }
    let hint = if text.contains("InvalidContentType")
        || text.contains("corrupt message")
        || text.contains("InvalidMessage")
    {
        " (the server did not answer TLS: is this a plaintext AMQP port? TLS is usually 5671)"
    } else if text.contains("certificate") || text.contains("Certificate") {
        " (the broker's certificate was not accepted: check amqp_ca_file / TRUC_AMQP_CA_FILE and that the certificate names the URL's host)"
    } else {
        ""
    };
    AmqpError::Connect(format!("TLS: {text}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_needs_amqps_and_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let tls = BrokerTls::new(Some(empty.clone()));
        let e = tls.for_url("amqp://h:5672/%2f").unwrap_err().to_string();
        assert!(e.contains("plaintext"), "{e}");
        let e = tls.for_url("amqps://h:5671/%2f").unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let missing = BrokerTls::new(Some(dir.path().join("absent.pem")));
        let e = missing.for_url("amqps://h/%2f").unwrap_err().to_string();
        assert!(e.contains("absent.pem"), "{e}");
        assert!(BrokerTls::default().for_url("amqps://h/%2f").is_ok());
        assert!(BrokerTls::default().for_url("http://h/").is_err());
        assert!(is_amqps("AMQPS://h") && !is_amqps("amqp://h"));
    }
}

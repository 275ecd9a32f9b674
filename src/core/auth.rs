//! Signatures: HMAC-SHA256, HMAC-SHA1 and RSA-SHA256 (PKCS#1 v1.5) over the
//! canonical form, verified in constant time; and the hub's own HMAC signing.
//!
//! Invariants: HMAC comparison goes through `Mac::verify_slice` (constant
//! time); no private-key RSA operation ever runs in the hub (verification only).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use sha2::{Digest as _, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Signature algorithm named by `lgsp-alg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// `hmac-sha256`
    HmacSha256,
    /// `hmac-sha1`
    HmacSha1,
    /// `rsa-sha256` (RSASSA-PKCS1-v1_5 with SHA-256)
    RsaSha256,
}

impl Alg {
    /// Parses the `lgsp-alg` token.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hmac-sha256" => Some(Self::HmacSha256),
            "hmac-sha1" => Some(Self::HmacSha1),
            "rsa-sha256" => Some(Self::RsaSha256),
            _ => None,
        }
    }

    /// The `lgsp-alg` token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha1 => "hmac-sha1",
            Self::RsaSha256 => "rsa-sha256",
        }
    }
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `lgsp-signature` is not standard padded base64.
    #[error("signature is not base64")]
    NotBase64,
    /// The signature does not match.
    #[error("signature does not match")]
    Mismatch,
    /// RSA was asked for but the agency has no public key.
    #[error("agency has no RSA public key")]
    NoPublicKey,
    /// The stored public key cannot be read.
    #[error("bad RSA public key: {0}")]
    BadPublicKey(String),
}

/// Parses a PEM public key (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`).
pub fn parse_public_key(pem: &str) -> Result<RsaPublicKey, AuthError> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    RsaPublicKey::from_public_key_pem(pem.trim())
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem.trim()))
        .map_err(|e| AuthError::BadPublicKey(e.to_string()))
}

/// Verifies `signature_b64` over `canonical` with `alg`, using `secret` for
/// HMAC or `public_key` for RSA.
pub fn verify(
    alg: Alg,
    secret: &str,
    public_key: Option<&RsaPublicKey>,
    canonical: &[u8],
    signature_b64: &str,
) -> Result<(), AuthError> {
    let sig = B64
        .decode(signature_b64)
        .map_err(|_| AuthError::NotBase64)?;
    match alg {
        Alg::HmacSha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(canonical);
            mac.verify_slice(&sig).map_err(|_| AuthError::Mismatch)
        }
        Alg::HmacSha1 => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(canonical);
            mac.verify_slice(&sig).map_err(|_| AuthError::Mismatch)
        }
        Alg::RsaSha256 => {
            let key = public_key.ok_or(AuthError::NoPublicKey)?;
            let verifying = VerifyingKey::<Sha256>::new(key.clone());
            let sig = Signature::try_from(sig.as_slice()).map_err(|_| AuthError::Mismatch)?;
            verifying
                .verify(canonical, &sig)
                .map_err(|_| AuthError::Mismatch)
        }
    }
}

/// Signs `canonical` with HMAC (`alg` must be an HMAC algorithm) and returns base64.
pub fn sign_hmac(alg: Alg, secret: &str, canonical: &[u8]) -> String {
    match alg {
        Alg::HmacSha1 => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(canonical);
            B64.encode(mac.finalize().into_bytes())
        }
        Alg::HmacSha256 | Alg::RsaSha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(canonical);
            B64.encode(mac.finalize().into_bytes())
        }
    }
}

/// `sha256=<64 lowercase hex>` of `body`, the `lgsp-digest` value.
pub fn body_digest(body: &[u8]) -> String {
    format!("sha256={}", hex::encode(Sha256::digest(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::canonical::tests::VECTOR_CANONICAL;

    const SECRET: &str = "s3cr3t-demo-key-please-rotate";

    #[test]
    fn design_test_vector_signature() {
        assert_eq!(
            sign_hmac(Alg::HmacSha256, SECRET, VECTOR_CANONICAL.as_bytes()),
            "UleTPnsaHshzCTxkn3aX4wSXe9UJF+Tj5PTCXaLDtag="
        );
        verify(
            Alg::HmacSha256,
            SECRET,
            None,
            VECTOR_CANONICAL.as_bytes(),
            "UleTPnsaHshzCTxkn3aX4wSXe9UJF+Tj5PTCXaLDtag=",
        )
        .unwrap();
        assert_eq!(
            body_digest("Xin chào, Sở Y tế!".as_bytes()),
            "sha256=a305c238ea36409c4e37fb0b33b962dcee6636d15ea5285b34756b5a21431ab3"
        );
    }

    #[test]
    fn hmac_sha1_round_trip_and_tamper() {
        let sig = sign_hmac(Alg::HmacSha1, SECRET, b"abc");
        verify(Alg::HmacSha1, SECRET, None, b"abc", &sig).unwrap();
        assert_eq!(
            verify(Alg::HmacSha1, SECRET, None, b"abd", &sig),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            verify(Alg::HmacSha256, SECRET, None, b"abc", &sig),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            verify(Alg::HmacSha1, SECRET, None, b"abc", "%%%"),
            Err(AuthError::NotBase64)
        );
    }

    #[test]
    fn rsa_sha256_verifies_and_refuses_tampering() {
        use rsa::pkcs1v15::SigningKey;
        use rsa::pkcs8::EncodePublicKey;
        use rsa::signature::{SignatureEncoding, Signer};
        let mut rng = rand::thread_rng();
        let private = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let pem = private
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        let public = parse_public_key(&pem).unwrap();
        let sig = SigningKey::<Sha256>::new(private).sign(b"canonical");
        let sig = B64.encode(sig.to_bytes());
        verify(Alg::RsaSha256, "", Some(&public), b"canonical", &sig).unwrap();
        assert_eq!(
            verify(Alg::RsaSha256, "", Some(&public), b"canonicaL", &sig),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            verify(Alg::RsaSha256, "", None, b"canonical", &sig),
            Err(AuthError::NoPublicKey)
        );
        assert!(parse_public_key("not a key").is_err());
    }
}

//! Sealing of the agencies' shared secrets at rest: ChaCha20-Poly1305 (an
//! AEAD) under a 32-byte master key from the configuration, the environment
//! (`TRUC_MASTER_KEY`) or `<data_dir>/master.key`.
//!
//! Invariants: a sealed secret is the text `enc1:` followed by base64 of a
//! fresh 12-byte nonce and the ciphertext with its tag; the access key is the
//! associated data, so a sealed secret moved to another key does not open;
//! nothing in this module logs or formats a secret or the master key (the
//! [`MasterKey`] `Debug` output is redacted); other uses of the master key
//! (the store checkpoint's HMAC) get a key derived for their purpose by
//! [`MasterKey::derive`], never the master key itself.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// The marker that starts every sealed secret.
pub const SEALED_PREFIX: &str = "enc1:";

/// Sealing errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// The master key text is not 32 bytes of base64 or hex.
    #[error("master key must be 32 bytes as base64 or 64 hex digits")]
    BadMasterKey,
    /// The sealed text is not `enc1:` + base64 of nonce and ciphertext.
    #[error("sealed secret is malformed")]
    Malformed,
    /// Authentication failed: another master key, or the record was altered.
    #[error("sealed secret does not open with this master key (wrong key or altered record)")]
    Open,
}

impl SecretsError {
    /// Whether trying again may succeed (never: the inputs are wrong).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::BadMasterKey | Self::Malformed | Self::Open => false,
        }
    }
}

/// The master key.
#[derive(Clone)]
pub struct MasterKey {
    cipher: ChaCha20Poly1305,
    raw: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(redacted)")
    }
}

impl MasterKey {
    /// Parses 32 bytes given as 64 hex digits or base64 (standard or URL-safe,
    /// padded or not).
    pub fn parse(text: &str) -> Result<Self, SecretsError> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|_| SecretsError::BadMasterKey)?
        } else {
            let engines = [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::STANDARD_NO_PAD,
                base64::engine::general_purpose::URL_SAFE,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines
                .iter()
                .find_map(|e| e.decode(t).ok())
                .ok_or(SecretsError::BadMasterKey)?
        };
        let raw: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SecretsError::BadMasterKey)?;
        Ok(Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&raw)),
            raw,
        })
    }

    /// A 32-byte key for `purpose` derived from the master key
    /// (HMAC-SHA256 of `purpose` under the master key), so that one master
    /// key serves several uses without reusing the key itself.
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.raw).expect("HMAC takes any key");
        mac.update(purpose);
        mac.finalize().into_bytes().into()
    }

    /// True when `stored` is sealed (not a legacy plaintext secret).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEALED_PREFIX)
    }

    /// Seals `secret`, bound to `access_key`.
    pub fn seal(&self, access_key: &str, secret: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a valid key and nonce cannot fail for inputs this small.
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.as_bytes(),
                    aad: access_key.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&ct);
        format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// Opens a secret sealed by [`MasterKey::seal`] for `access_key`.
    pub fn open(&self, access_key: &str, sealed: &str) -> Result<String, SecretsError> {
        let b64 = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SecretsError::Malformed)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SecretsError::Malformed)?;
        if raw.len() < 12 + 16 {
            return Err(SecretsError::Malformed);
        }
        let (nonce, ct) = raw.split_at(12);
        let pt = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: access_key.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Open)?;
        String::from_utf8(pt).map_err(|_| SecretsError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = MasterKey::parse(&"ab".repeat(32)).unwrap();
        let s = k.seal("AKAAAA", "s3cr3t");
        assert!(MasterKey::is_sealed(&s));
        assert!(!s.contains("s3cr3t"));
        assert_ne!(s, k.seal("AKAAAA", "s3cr3t"), "fresh nonce each time");
        assert_eq!(k.open("AKAAAA", &s).unwrap(), "s3cr3t");
        assert_eq!(k.open("AKBBBB", &s), Err(SecretsError::Open));
        let other = MasterKey::parse(&"cd".repeat(32)).unwrap();
        assert_eq!(other.open("AKAAAA", &s), Err(SecretsError::Open));
        let mut tampered = s.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(k
            .open("AKAAAA", std::str::from_utf8(&tampered).unwrap())
            .is_err());
        assert_eq!(k.open("AKAAAA", "plain"), Err(SecretsError::Malformed));
        assert_eq!(k.open("AKAAAA", "enc1:!!"), Err(SecretsError::Malformed));
        assert_eq!(format!("{k:?}"), "MasterKey(redacted)");
    }

    #[test]
    fn derived_keys_depend_on_purpose_and_master_key() {
        let k = MasterKey::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(k.derive(b"a"), k.derive(b"a"));
        assert_ne!(k.derive(b"a"), k.derive(b"b"));
        let other = MasterKey::parse(&"cd".repeat(32)).unwrap();
        assert_ne!(k.derive(b"a"), other.derive(b"a"));
    }

    #[test]
    fn master_key_formats() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(MasterKey::parse(&b64).is_ok());
        assert!(MasterKey::parse(&hex::encode([7u8; 32])).is_ok());
        assert_eq!(
            MasterKey::parse("short").unwrap_err(),
            SecretsError::BadMasterKey
        );
        assert!(MasterKey::parse(&hex::encode([7u8; 31])).is_err());
    }
}

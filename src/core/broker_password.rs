//! Broker passwords of agencies: issuing one and hashing it the way RabbitMQ
//! stores passwords (`rabbit_password_hashing_sha256`), so truc can write a
//! definitions file that sets an agency's RabbitMQ user without ever keeping
//! its password.
//!
//! Invariants: a password is 32 random bytes (256 bits) in URL-safe base64,
//! returned once by [`new_password`]; a hash is
//! `base64(salt ++ sha256(salt ++ utf8(password)))` with a fresh random 4-byte
//! salt, exactly what RabbitMQ's internal backend checks a login against.

use base64::Engine as _;
use rand::Rng;
use sha2::{Digest, Sha256};

/// The `hashing_algorithm` RabbitMQ definitions name for [`hash`].
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

/// A fresh broker password: 256 random bits, URL-safe base64 (43 characters).
pub fn new_password() -> String {
    let bytes: [u8; 32] = rand::thread_rng().gen();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The RabbitMQ hash of `password` with a fresh random salt.
pub fn hash(password: &str) -> String {
    hash_with_salt(rand::thread_rng().gen(), password)
}

/// The RabbitMQ hash of `password` with `salt`.
pub fn hash_with_salt(salt: [u8; 4], password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Whether `password` matches `hash` (as RabbitMQ would decide).
pub fn verify(hash: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash) else {
        return false;
    };
    let Ok(salt) = <[u8; 4]>::try_from(raw.get(..4).unwrap_or_default()) else {
        return false;
    };
    hash_with_salt(salt, password) == hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_rabbitmq_and_is_salted() {
        // The hash RabbitMQ stores for "guest" with salt 00 01 02 03
        // (checked with `rabbitmqctl authenticate_user` after an import).
        assert_eq!(
            hash_with_salt([0, 1, 2, 3], "guest"),
            "AAECAyNg/zJUtKzc71d2sm2DauJx8NMaF6gqGHg3PE7hf4Tt"
        );
        let pw = new_password();
        assert_eq!(pw.len(), 43);
        assert_ne!(pw, new_password());
        let a = hash(&pw);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&a)
                .unwrap()
                .len(),
            36
        );
        assert!(verify(&a, &pw));
        assert!(!verify(&a, "other"));
        assert!(!verify("", &pw));
        assert!(!verify("not base64!", &pw));
    }
}

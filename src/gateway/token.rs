//! Session tokens: what a granted session request is answered with, and
//! what every other gateway call carries (`Authorization: Bearer …`).
//!
//! A token is `v1.<claims>.<mac>`: the claims (agency, access key, expiry,
//! a random part) as base64url JSON, and an HMAC-SHA256 of `v1.<claims>`
//! under a key derived from the master key. Every instance sharing the
//! master key verifies every instance's tokens, with nothing stored.
//!
//! Invariants: a token whose MAC does not verify (compared in constant
//! time), that cannot be read, or whose expiry has passed is refused; this
//! module never says which of these it was to a caller (the gateway answers
//! every one the same), and never logs a token. Whether the agency may still
//! use it (registered, enabled, the same newest key) is the gateway's check
//! at each call, so disabling, rotating or removing takes effect at once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What the master key is derived into for session tokens.
pub(crate) const PURPOSE: &[u8] = b"truc gateway session tokens v1";

/// The version prefix of every token.
const VERSION: &str = "v1";

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Claims {
    /// The agency's code.
    #[serde(rename = "a")]
    pub(super) agency: String,
    /// The access key the session request was signed with.
    #[serde(rename = "k")]
    pub(super) access_key: String,
    /// When it stops being accepted (ms since the epoch).
    #[serde(rename = "e")]
    pub(super) expires_ms: i64,
    /// Random, so two tokens of the same second differ.
    #[serde(rename = "n")]
    pub(super) nonce: String,
    /// When it was issued (ms since the epoch): a session opened before
    /// its agency was last disabled stays ended.
    #[serde(rename = "i", default)]
    pub(super) issued_ms: i64,
}

/// Why a token is refused (for tests and the log, never for the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum TokenError {
    /// Not a token of this format.
    #[error("not a session token")]
    Malformed,
    /// The MAC does not verify: forged, altered, or made under another master key.
    #[error("session token does not verify")]
    Forged,
    /// Its expiry has passed.
    #[error("session token expired")]
    Expired,
}

/// Mints and verifies tokens with one key.
#[derive(Clone)]
pub(super) struct Tokens {
    key: [u8; 32],
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

impl Tokens {
    /// Tokens under `key` ([`PURPOSE`] derived from the master key).
    pub(super) fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self, signed: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(signed.as_bytes());
        mac
    }

    /// A token for `agency` signed with `access_key`, valid until `expires_ms`.
    pub(super) fn mint(&self, agency: &str, access_key: &str, expires_ms: i64) -> String {
        let claims = Claims {
            agency: agency.to_owned(),
            access_key: access_key.to_owned(),
            expires_ms,
            nonce: hex::encode(rand::random::<[u8; 12]>()),
            issued_ms: crate::core::time::now_ms(),
        };
        let json = serde_json::to_vec(&claims).expect("claims serialise");
        let signed = format!("{VERSION}.{}", URL_SAFE_NO_PAD.encode(json));
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&signed).finalize().into_bytes());
        format!("{signed}.{tag}")
    }

    /// The claims of `token` at `now_ms`, or why it is refused.
    pub(super) fn verify(&self, token: &str, now_ms: i64) -> Result<Claims, TokenError> {
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let claims = signed
            .strip_prefix(VERSION)
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        self.mac(signed)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Forged)?;
        let json = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.expires_ms <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    #[test]
    fn a_token_verifies_until_it_expires() {
        let t = Tokens::new([7; 32]);
        let token = t.mint("000.00.31.H41", "AK1", NOW + 900_000);
        let c = t.verify(&token, NOW).unwrap();
        assert_eq!(
            (c.agency.as_str(), c.access_key.as_str(), c.expires_ms),
            ("000.00.31.H41", "AK1", NOW + 900_000)
        );
        assert_eq!(
            t.verify(&token, NOW + 899_999).map(|c| c.agency).unwrap(),
            "000.00.31.H41"
        );
        assert_eq!(t.verify(&token, NOW + 900_000), Err(TokenError::Expired));
        assert_ne!(
            token,
            t.mint("000.00.31.H41", "AK1", NOW + 900_000),
            "random part"
        );
    }

    #[test]
    fn altered_foreign_and_garbled_tokens_are_refused() {
        let t = Tokens::new([7; 32]);
        let token = t.mint("000.00.31.H41", "AK1", NOW + 900_000);
        // Another master key.
        assert_eq!(
            Tokens::new([8; 32]).verify(&token, NOW),
            Err(TokenError::Forged)
        );
        // The claims changed (another agency), the tag kept.
        let (_, tag) = token.rsplit_once('.').unwrap();
        let other = t.mint("000.00.32.H41", "AK1", NOW + 900_000);
        let (other_signed, _) = other.rsplit_once('.').unwrap();
        assert_eq!(
            t.verify(&format!("{other_signed}.{tag}"), NOW),
            Err(TokenError::Forged)
        );
        for bad in [
            "",
            "v1",
            "v1.x",
            "v2.abc.def",
            "v1.abc.!!!",
            "Bearer",
            "v1..",
            &token[1..],
        ] {
            assert!(t.verify(bad, NOW).is_err(), "{bad:?}");
        }
    }
}

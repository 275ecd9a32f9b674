//! The store checkpoint: what the store looked like at its last durable
//! flush (its generation and the audit chain's head), sealed with an HMAC
//! keyed by the master key, and kept outside the store (a file beside it and
//! a message in the broker) so a damaged, rolled-back or rewritten store is
//! seen at start.
//!
//! Invariants: the encoded form is one line of text,
//! `truc-checkpoint 1 serial=S epoch=E generation=G audit_seq=N audit_hash=HEX at=MS mac=HEX`,
//! where `mac` is HMAC-SHA256 of everything before ` mac=` under
//! [`CheckpointKey`] (derived from the master key for this purpose only);
//! [`Checkpoint::decode`] checks the MAC (in constant time) before it reads a
//! single field, so a checkpoint that decodes was written by a holder of the
//! master key. `serial` grows with every checkpoint written, across restarts:
//! of two copies, the one with the higher serial is the newer. `epoch` grows
//! by one each time an operator accepts a loss (`truc serve --accept-loss`):
//! a copy of an older epoch describes a store that was given up.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::core::secrets::MasterKey;

const MAGIC: &str = "truc-checkpoint 1";
const PURPOSE: &[u8] = b"truc store checkpoint v1";

/// Checkpoint errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Not a checkpoint of this format.
    #[error("not a truc checkpoint ({0})")]
    Malformed(String),
    /// The HMAC does not verify: altered, or written under another master key.
    #[error("its HMAC does not verify with this master key (altered, or written under another master key)")]
    Mac,
}

impl CheckpointError {
    /// Whether trying again may succeed (never: the text is what it is).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Malformed(_) | Self::Mac => false,
        }
    }
}

/// The key checkpoints are sealed with; derived from the master key.
#[derive(Clone)]
pub struct CheckpointKey([u8; 32]);

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointKey(redacted)")
    }
}

impl CheckpointKey {
    /// The checkpoint key of `master`.
    pub fn from_master(master: &MasterKey) -> Self {
        Self(master.derive(PURPOSE))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key")
    }
}

/// The store as of one durable flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Grows with every checkpoint written (across restarts).
    pub serial: u64,
    /// Grows with every accepted loss.
    pub epoch: u64,
    /// The store's generation (bumped by every durable flush).
    pub generation: u64,
    /// Sequence number of the newest audit entry (0: none yet).
    pub audit_seq: u64,
    /// Hash of that entry (zeros when there is none).
    pub audit_hash: [u8; 32],
    /// When it was written (ms since the epoch).
    pub at_ms: i64,
}

impl Checkpoint {
    fn body(&self) -> String {
        format!(
            "{MAGIC} serial={} epoch={} generation={} audit_seq={} audit_hash={} at={}",
            self.serial,
            self.epoch,
            self.generation,
            self.audit_seq,
            hex::encode(self.audit_hash),
            self.at_ms
        )
    }

    /// The sealed one-line text (ends with a newline).
    pub fn encode(&self, key: &CheckpointKey) -> String {
        let body = self.body();
        let mut mac = key.mac();
        mac.update(body.as_bytes());
        let tag = hex::encode(mac.finalize().into_bytes());
        format!("{body} mac={tag}\n")
    }

    /// Reads text written by [`Checkpoint::encode`], checking its MAC first.
    pub fn decode(text: &str, key: &CheckpointKey) -> Result<Self, CheckpointError> {
        let line = text.trim_end_matches(['\n', '\r']);
        let bad = |why: &str| CheckpointError::Malformed(why.to_owned());
        let (body, tag) = line.rsplit_once(" mac=").ok_or_else(|| bad("no mac"))?;
        if !body.starts_with(MAGIC) {
            return Err(bad("unknown header"));
        }
        let tag = hex::decode(tag).map_err(|_| bad("mac is not hex"))?;
        let mut mac = key.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&tag).map_err(|_| CheckpointError::Mac)?;
        let mut fields = body[MAGIC.len()..].split_whitespace();
        let mut next = |name: &str| -> Result<&str, CheckpointError> {
            fields
                .next()
                .and_then(|f| f.strip_prefix(name))
                .and_then(|f| f.strip_prefix('='))
                .ok_or_else(|| bad(&format!("field {name} missing")))
        };
        let num = |v: &str, name: &str| -> Result<u64, CheckpointError> {
            v.parse()
                .map_err(|_| bad(&format!("{name} is not a number")))
        };
        let serial = num(next("serial")?, "serial")?;
        let epoch = num(next("epoch")?, "epoch")?;
        let generation = num(next("generation")?, "generation")?;
        let audit_seq = num(next("audit_seq")?, "audit_seq")?;
        let audit_hash: [u8; 32] = hex::decode(next("audit_hash")?)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("audit_hash is not 32 bytes of hex"))?;
        let at_ms = next("at")?.parse().map_err(|_| bad("at is not a number"))?;
        Ok(Self {
            serial,
            epoch,
            generation,
            audit_seq,
            audit_hash,
            at_ms,
        })
    }

    /// The newer of two copies (higher serial); either may be absent.
    pub fn newest(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.serial > a.serial { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: &str) -> CheckpointKey {
        CheckpointKey::from_master(&MasterKey::parse(&b.repeat(32)).unwrap())
    }

    fn cp() -> Checkpoint {
        Checkpoint {
            serial: 7,
            epoch: 2,
            generation: 1234,
            audit_seq: 271,
            audit_hash: [0xab; 32],
            at_ms: 1_780_000_000_123,
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let k = key("ab");
        let text = cp().encode(&k);
        assert!(
            text.starts_with("truc-checkpoint 1 serial=7 epoch=2 generation=1234 audit_seq=271 ")
        );
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
        assert_eq!(Checkpoint::decode(&text, &k), Ok(cp()));
        assert_eq!(format!("{k:?}"), "CheckpointKey(redacted)");
    }

    #[test]
    fn another_master_key_or_any_edit_fails_the_mac() {
        let k = key("ab");
        let text = cp().encode(&k);
        assert_eq!(
            Checkpoint::decode(&text, &key("cd")),
            Err(CheckpointError::Mac)
        );
        // Roll the generation back and keep the old MAC.
        let edited = text.replace("generation=1234", "generation=1000");
        assert_eq!(Checkpoint::decode(&edited, &k), Err(CheckpointError::Mac));
        // Recompute the MAC without the key: a plain SHA-256 is not it.
        let body = edited.rsplit_once(" mac=").unwrap().0;
        use sha2::Digest;
        let forged = format!("{body} mac={}\n", hex::encode(Sha256::digest(body)));
        assert_eq!(Checkpoint::decode(&forged, &k), Err(CheckpointError::Mac));
        // One flipped bit in the tag.
        let mut bytes = text.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            Checkpoint::decode(std::str::from_utf8(&bytes).unwrap(), &k),
            Err(CheckpointError::Mac)
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let k = key("ab");
        for t in [
            "",
            "hello",
            "truc-checkpoint 1 serial=1",
            "truc-checkpoint 2 serial=1 mac=00",
            "truc-checkpoint 1 mac=zz",
        ] {
            assert!(
                matches!(
                    Checkpoint::decode(t, &k),
                    Err(CheckpointError::Malformed(_))
                ),
                "{t:?}"
            );
        }
        // A well-sealed body with a field missing is malformed too.
        let body = "truc-checkpoint 1 serial=1 generation=2";
        let mut mac = k.mac();
        mac.update(body.as_bytes());
        let text = format!("{body} mac={}", hex::encode(mac.finalize().into_bytes()));
        assert!(matches!(
            Checkpoint::decode(&text, &k),
            Err(CheckpointError::Malformed(_))
        ));
    }

    #[test]
    fn newest_is_the_higher_serial() {
        let a = cp();
        let b = Checkpoint {
            serial: 8,
            generation: 3,
            ..cp()
        };
        assert_eq!(Checkpoint::newest(Some(a), Some(b)), Some(b));
        assert_eq!(Checkpoint::newest(Some(b), Some(a)), Some(b));
        assert_eq!(Checkpoint::newest(None, Some(a)), Some(a));
        assert_eq!(Checkpoint::newest(None, None), None);
    }
}

//! Sealing of upload-space content at rest: each chunk is sealed with
//! ChaCha20-Poly1305 (ring's, which runs at memory speed in every build)
//! under a key derived from the master key for this one purpose, with a
//! fresh random 12-byte nonce, and the space id and chunk number as
//! associated data.
//!
//! Invariants: a sealed chunk is the nonce followed by the ciphertext and its
//! tag; a chunk moved to another space or another position does not open; a
//! nonce is never reused (a chunk written again gets a new one); nothing here
//! logs or formats the key.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

/// The purpose the content key is derived for.
pub(crate) const PURPOSE: &[u8] = b"truc upload-space content v1";

/// Bytes a sealed chunk has beyond its plaintext (nonce and tag).
pub(crate) const OVERHEAD: usize = 12 + 16;

/// Seals and opens chunks.
#[derive(Clone)]
pub(crate) struct Sealer(std::sync::Arc<LessSafeKey>);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(redacted)")
    }
}

fn aad(space: &str, n: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(space.len() + 5);
    a.extend_from_slice(space.as_bytes());
    a.push(0);
    a.extend_from_slice(&n.to_be_bytes());
    a
}

impl Sealer {
    /// A sealer with `key` (from [`crate::core::secrets::MasterKey::derive`]).
    pub(crate) fn new(key: [u8; 32]) -> Self {
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte key");
        Self(std::sync::Arc::new(LessSafeKey::new(key)))
    }

    /// Chunk `n` of `space`, sealed.
    pub(crate) fn seal(&self, space: &str, n: u32, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 12] = rand::random();
        let mut out = Vec::with_capacity(OVERHEAD + plain.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(space, n)),
                &mut out[12..],
            )
            .expect("ChaCha20-Poly1305 seals any length a chunk has");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens chunk `n` of `space`; `None` when it was altered, moved or
    /// sealed with another key.
    pub(crate) fn open(&self, space: &str, n: u32, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..12]).ok()?;
        let mut buf = sealed[12..].to_vec();
        let len = self
            .0
            .open_in_place(nonce, Aad::from(aad(space, n)), &mut buf)
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_opens_only_where_it_was_sealed() {
        let s = Sealer::new([7; 32]);
        let sealed = s.seal("aa", 3, "Xin chào".as_bytes());
        assert_eq!(sealed.len(), OVERHEAD + "Xin chào".len());
        assert!(
            !sealed.windows(4).any(|w| w == b"Xin "),
            "plaintext on disk"
        );
        assert_eq!(
            s.open("aa", 3, &sealed).as_deref(),
            Some("Xin chào".as_bytes())
        );
        assert_eq!(s.open("aa", 4, &sealed), None, "moved to another position");
        assert_eq!(s.open("ab", 3, &sealed), None, "moved to another space");
        assert_eq!(Sealer::new([8; 32]).open("aa", 3, &sealed), None);
        let mut altered = sealed.clone();
        altered[20] ^= 1;
        assert_eq!(s.open("aa", 3, &altered), None);
        assert_ne!(
            s.seal("aa", 3, "Xin chào".as_bytes()),
            sealed,
            "a fresh nonce each time"
        );
    }
}

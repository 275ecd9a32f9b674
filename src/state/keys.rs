//! The one encoder and decoder of sled keys made of several fields.
//!
//! Layout (unchanged from the keys written before this module existed, so
//! existing data is still found): a text field is its UTF-8 bytes, followed
//! by one `\0` when another field comes after it; a number is fixed-width
//! big-endian (`i64`/`u64` 8 bytes, `u32` 4 bytes) with no separator, so keys
//! sort by it. A prefix ([`Key::prefix`]) keeps the `\0` after its last text
//! field, so `A` never matches `AB`.
//!
//! The layouts in use (tree: key):
//! - `envelopes`: `from \0 message_id`
//! - `by_dest`: `dest \0 message_id \0 from`
//! - `pending`: `dest \0 from \0 message_id`
//! - `deadlines`: `deliver_by (i64) from \0 message_id`
//! - `nonces`: `access_key \0 nonce`
//! - `presence_log`: `code \0 at_ms (u64) seq (u32)`
//! - `audit`: `seq (u64)`
//! - `meta`: `drained \0 code` (when a source's queue was last seen empty,
//!   [`crate::state::drained`]), `instance \0 id` (a running instance,
//!   [`crate::state::instances`]), `relay \0 heartbeat \0 code` (a heartbeat
//!   for the leader, [`crate::state::relay`]); other `meta` keys are single
//!   names (`leader`: [`crate::state::lease`]; `registry_version`:
//!   [`crate::state::registry`]).
//! - `agencies`, `keys`, `presence`: one text field (the code or access key).
//!
//! Invariant: text fields never contain `\0` (agency codes, message ids,
//! access keys and nonces are checked before they get here), so a key
//! decodes back into the fields it was built from.

use crate::core::code::AgencyCode;

/// A key being built, field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Key {
    bytes: Vec<u8>,
    /// The last field was text: a separator goes before the next field.
    open_text: bool,
}

impl Key {
    /// An empty key.
    pub fn new() -> Self {
        Self::default()
    }

    fn sep(&mut self) {
        if self.open_text {
            self.bytes.push(0);
            self.open_text = false;
        }
    }

    /// Appends a text field.
    pub fn str(mut self, s: &str) -> Self {
        self.sep();
        self.bytes.extend_from_slice(s.as_bytes());
        self.open_text = true;
        self
    }

    /// Appends an agency code (a text field).
    pub fn code(self, c: &AgencyCode) -> Self {
        self.str(c.as_str())
    }

    /// Appends a signed number, big-endian (8 bytes).
    pub fn i64(mut self, n: i64) -> Self {
        self.sep();
        self.bytes.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// Appends an unsigned number, big-endian (8 bytes).
    pub fn u64(mut self, n: u64) -> Self {
        self.sep();
        self.bytes.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// Appends an unsigned number, big-endian (4 bytes).
    pub fn u32(mut self, n: u32) -> Self {
        self.sep();
        self.bytes.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// The key.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The prefix of every key that starts with these fields (a text field
    /// keeps its separator).
    pub fn prefix(mut self) -> Vec<u8> {
        self.sep();
        self.bytes
    }
}

impl From<Key> for Vec<u8> {
    fn from(k: Key) -> Self {
        k.into_bytes()
    }
}

/// Reads the fields of a key back, in the order they were written. Every
/// read returns `None` when the key does not hold that field.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// The fields of `key`.
    pub fn of(key: &'a [u8]) -> Self {
        Self { rest: key }
    }

    /// The fields of `key` after `prefix` (from [`Key::prefix`]).
    pub fn after(key: &'a [u8], prefix: &[u8]) -> Option<Self> {
        key.strip_prefix(prefix).map(|rest| Self { rest })
    }

    /// A text field: up to the next `\0` (consumed), or to the end.
    pub fn str(&mut self) -> Option<&'a str> {
        let (field, rest) = match self.rest.iter().position(|b| *b == 0) {
            Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
            None => (self.rest, &self.rest[self.rest.len()..]),
        };
        self.rest = rest;
        std::str::from_utf8(field).ok()
    }

    /// An agency code (a text field).
    pub fn code(&mut self) -> Option<AgencyCode> {
        self.str().and_then(|s| AgencyCode::parse(s).ok())
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.rest.len() < N {
            return None;
        }
        let (n, rest) = self.rest.split_at(N);
        self.rest = rest;
        n.try_into().ok()
    }

    /// A signed 8-byte number.
    pub fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }

    /// An unsigned 8-byte number.
    pub fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }

    /// Whether every field was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> AgencyCode {
        AgencyCode::parse(s).unwrap()
    }

    /// The layouts as they were built by hand before this module.
    mod old {
        pub fn record(from: &str, mid: &str) -> Vec<u8> {
            let mut k = from.as_bytes().to_vec();
            k.push(0);
            k.extend_from_slice(mid.as_bytes());
            k
        }
        pub fn dest_index(dest: &str, mid: &str, from: &str) -> Vec<u8> {
            let mut k = dest.as_bytes().to_vec();
            k.push(0);
            k.extend_from_slice(mid.as_bytes());
            k.push(0);
            k.extend_from_slice(from.as_bytes());
            k
        }
        pub fn pending(dest: &str, from: &str, mid: &str) -> Vec<u8> {
            let mut k = dest.as_bytes().to_vec();
            k.push(0);
            k.extend_from_slice(&record(from, mid));
            k
        }
        pub fn deadline(at: i64, from: &str, mid: &str) -> Vec<u8> {
            let mut k = at.to_be_bytes().to_vec();
            k.extend_from_slice(&record(from, mid));
            k
        }
        pub fn log(code: &str, at: i64, seq: u32) -> Vec<u8> {
            let mut k = code.as_bytes().to_vec();
            k.push(0);
            k.extend_from_slice(&(at as u64).to_be_bytes());
            k.extend_from_slice(&seq.to_be_bytes());
            k
        }
    }

    #[test]
    fn same_bytes_as_the_hand_built_layouts() {
        let (s, d, mid) = (code("000.00.31.H41"), code("000.00.32.H41"), "01JD0001");
        assert_eq!(
            Key::new().code(&s).str(mid).into_bytes(),
            old::record("000.00.31.H41", mid)
        );
        assert_eq!(
            Key::new().code(&d).str(mid).code(&s).into_bytes(),
            old::dest_index("000.00.32.H41", mid, "000.00.31.H41")
        );
        assert_eq!(
            Key::new().code(&d).code(&s).str(mid).into_bytes(),
            old::pending("000.00.32.H41", "000.00.31.H41", mid)
        );
        assert_eq!(
            Key::new()
                .i64(1_700_000_000_000)
                .code(&s)
                .str(mid)
                .into_bytes(),
            old::deadline(1_700_000_000_000, "000.00.31.H41", mid)
        );
        assert_eq!(
            Key::new().code(&d).u64(42).u32(7).into_bytes(),
            old::log("000.00.32.H41", 42, 7)
        );
        assert_eq!(Key::new().str("K").str("n").into_bytes(), b"K\0n");
        assert_eq!(Key::new().u64(3).into_bytes(), 3u64.to_be_bytes());
        assert_eq!(Key::new().code(&d).into_bytes(), b"000.00.32.H41");
        // Prefixes keep the separator after their last text field.
        assert_eq!(Key::new().code(&d).prefix(), b"000.00.32.H41\0");
        assert_eq!(
            Key::new().code(&d).str(mid).prefix(),
            b"000.00.32.H41\x0001JD0001\0"
        );
        assert_eq!(
            Key::new().code(&d).u64(1).prefix(),
            old::log("000.00.32.H41", 1, 0)[..22]
        );
    }

    #[test]
    fn fields_read_back_what_was_written() {
        let (s, d) = (code("H37.DN.001"), code("A"));
        let k = Key::new().i64(-5).code(&s).str("m-1").into_bytes();
        let mut f = Fields::of(&k);
        assert_eq!(f.i64(), Some(-5));
        assert_eq!(f.code(), Some(s.clone()));
        assert_eq!(f.str(), Some("m-1"));
        assert!(f.is_empty());

        let prefix = Key::new().code(&d).prefix();
        let k = Key::new().code(&d).code(&s).str("m-2").into_bytes();
        let mut f = Fields::after(&k, &prefix).unwrap();
        assert_eq!(f.code(), Some(s.clone()));
        assert_eq!(f.str(), Some("m-2"));
        assert!(Fields::after(b"AB\0x", &prefix).is_none());

        let k = Key::new().code(&d).u64(9).into_bytes();
        let mut f = Fields::of(&k);
        assert_eq!((f.code(), f.u64()), (Some(d), Some(9)));
        assert!(f.is_empty());
        assert_eq!(Fields::of(&[1, 2, 3]).u64(), None, "too short");
    }
}

//! The one codec for values stored in sled: a format-version byte, then bincode.
//!
//! Invariant: every sled value truc writes goes through [`encode`]/[`decode`],
//! so moving to another serde codec is a change to this file alone.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Format version written as the first byte of every value.
pub const FORMAT_VERSION: u8 = 1;

/// Why a stored value cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value was written by an unknown format version.
    #[error("stored value has format version {0}, this build reads {FORMAT_VERSION}")]
    Version(u8),
    /// The value is empty.
    #[error("stored value is empty")]
    Empty,
    /// bincode failed.
    #[error("stored value does not decode: {0}")]
    Bincode(#[from] bincode::Error),
}

/// Encodes `value` with the version byte.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serialize_into(&mut out, value)?;
    Ok(out)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_VERSION, rest)) => Ok(bincode::deserialize(rest)?),
        Some((&v, _)) => Err(CodecError::Version(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let v = (String::from("H37.DN.001"), 42u64, Some(vec![1u8, 2]));
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (String, u64, Option<Vec<u8>>) = decode(&bytes).unwrap();
        assert_eq!(back, v);
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(
            decode::<(String, u64, Option<Vec<u8>>)>(&future),
            Err(CodecError::Version(9))
        ));
        assert!(matches!(decode::<u8>(&[]), Err(CodecError::Empty)));
    }
}

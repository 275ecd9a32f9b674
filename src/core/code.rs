//! Agency codes (mã định danh) per QCVN 102:2016 / QĐ 20/2020.
//!
//! Invariant: an [`AgencyCode`] is 1–35 characters of `0-9 A-Z .`, made of
//! non-empty dot-separated groups. Anything else is refused at the edge, so
//! every code inside truc — in queue names, routing keys, sled keys — is safe.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest code the regulation allows.
pub const MAX_CODE_LEN: usize = 35;

/// A validated agency code, e.g. `000.00.31.H41` or `H37.DN.001`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgencyCode(String);

/// Why a string is not an agency code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// The string is empty.
    #[error("agency code is empty")]
    Empty,
    /// Longer than [`MAX_CODE_LEN`].
    #[error("agency code is longer than {MAX_CODE_LEN} characters")]
    TooLong,
    /// A character outside `0-9 A-Z .`.
    #[error("agency code has {0:?}: only 0-9, A-Z and '.' are allowed")]
    BadChar(char),
    /// Leading, trailing or doubled dot.
    #[error("agency code has an empty group (leading, trailing or doubled '.')")]
    EmptyGroup,
}

impl AgencyCode {
    /// Validates `s` as an agency code.
    pub fn parse(s: &str) -> Result<Self, CodeError> {
        if s.is_empty() {
            return Err(CodeError::Empty);
        }
        if s.len() > MAX_CODE_LEN {
            return Err(CodeError::TooLong);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_digit() || c.is_ascii_uppercase() || *c == '.'))
        {
            return Err(CodeError::BadChar(c));
        }
        if s.split('.').any(str::is_empty) {
            return Err(CodeError::EmptyGroup);
        }
        Ok(Self(s.to_owned()))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AgencyCode {
    type Error = CodeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<AgencyCode> for String {
    fn from(c: AgencyCode) -> String {
        c.0
    }
}

impl std::str::FromStr for AgencyCode {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_regulation_examples() {
        for ok in ["000.00.31.H41", "H37.DN.001", "A", "G01", &"9".repeat(35)] {
            assert!(AgencyCode::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(AgencyCode::parse(""), Err(CodeError::Empty));
        assert_eq!(AgencyCode::parse(&"9".repeat(36)), Err(CodeError::TooLong));
        assert_eq!(AgencyCode::parse("h37.dn"), Err(CodeError::BadChar('h')));
        assert_eq!(AgencyCode::parse("H37 DN"), Err(CodeError::BadChar(' ')));
        assert_eq!(AgencyCode::parse("H37-DN"), Err(CodeError::BadChar('-')));
        assert_eq!(AgencyCode::parse("Đ01"), Err(CodeError::BadChar('Đ')));
        assert_eq!(AgencyCode::parse(".H37"), Err(CodeError::EmptyGroup));
        assert_eq!(AgencyCode::parse("H37."), Err(CodeError::EmptyGroup));
        assert_eq!(AgencyCode::parse("H37..DN"), Err(CodeError::EmptyGroup));
    }
}

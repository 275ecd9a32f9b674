//! Machine reason codes of the wire contract, carried in `lgsp-reason`.

use std::fmt;

/// Why an envelope was refused, bounced or not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Missing or invalid fields.
    Malformed,
    /// `lgsp-version` is not `1`.
    UnsupportedVersion,
    /// `lgsp-key` names no access key.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `lgsp-time` is outside the skew window.
    ClockSkew,
    /// The nonce was already used with this key.
    Replay,
    /// The body does not match `lgsp-digest`.
    DigestMismatch,
    /// The sender may not do this.
    Forbidden,
    /// The body is larger than policy allows.
    TooLarge,
    /// The sender exceeded its rate.
    RateLimited,
    /// The destination code is not registered.
    UnknownDestination,
    /// The destination is disabled by an operator.
    DestinationDisabled,
    /// The destination stayed offline too long.
    DestinationOffline,
    /// The deadline passed before delivery.
    Expired,
    /// The destination refused it (status `02`).
    RejectedByDestination,
    /// The destination rejected too many deliveries.
    MaxAttempts,
    /// The source recalled it.
    Recalled,
    /// The hub lost its record of the envelope (store loss) and could not
    /// rebuild it from the held copy, which was parked for operators.
    RecordLost,
}

impl Reason {
    /// Every reason, in contract order.
    pub const ALL: [Reason; 18] = [
        Self::Malformed,
        Self::UnsupportedVersion,
        Self::UnknownKey,
        Self::BadSignature,
        Self::ClockSkew,
        Self::Replay,
        Self::DigestMismatch,
        Self::Forbidden,
        Self::TooLarge,
        Self::RateLimited,
        Self::UnknownDestination,
        Self::DestinationDisabled,
        Self::DestinationOffline,
        Self::Expired,
        Self::RejectedByDestination,
        Self::MaxAttempts,
        Self::Recalled,
        Self::RecordLost,
    ];

    /// The wire token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnsupportedVersion => "unsupported-version",
            Self::UnknownKey => "unknown-key",
            Self::BadSignature => "bad-signature",
            Self::ClockSkew => "clock-skew",
            Self::Replay => "replay",
            Self::DigestMismatch => "digest-mismatch",
            Self::Forbidden => "forbidden",
            Self::TooLarge => "too-large",
            Self::RateLimited => "rate-limited",
            Self::UnknownDestination => "unknown-destination",
            Self::DestinationDisabled => "destination-disabled",
            Self::DestinationOffline => "destination-offline",
            Self::Expired => "expired",
            Self::RejectedByDestination => "rejected-by-destination",
            Self::MaxAttempts => "max-attempts",
            Self::Recalled => "recalled",
            Self::RecordLost => "record-lost",
        }
    }

    /// Parses a wire token.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// True when the sender could not be authenticated: such input gets no
    /// notice (no reflection) and goes to the bounded rejected queue.
    pub fn is_unauthenticated(self) -> bool {
        match self {
            Self::UnsupportedVersion | Self::UnknownKey | Self::BadSignature => true,
            Self::Malformed
            | Self::ClockSkew
            | Self::Replay
            | Self::DigestMismatch
            | Self::Forbidden
            | Self::TooLarge
            | Self::RateLimited
            | Self::UnknownDestination
            | Self::DestinationDisabled
            | Self::DestinationOffline
            | Self::Expired
            | Self::RejectedByDestination
            | Self::MaxAttempts
            | Self::Recalled
            | Self::RecordLost => false,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_match_serde() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert_eq!(Reason::parse("nope"), None);
    }
}

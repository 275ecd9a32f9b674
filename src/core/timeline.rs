//! The vocabulary of a delivery's timeline: the QCVN 102 status codes a status
//! message carries ([`StatusCode`]) and the states a destination's timeline
//! records ([`DeliveryState`], PROTOCOL §5.9 and §9).
//!
//! Invariants: both are written and read by their wire names only — a status
//! code as its two digits (`01`…`16`), a state as the exact string of §5.9
//! (`accepted`, `queued`, …, `status-NN`) — in headers, JSON and the store
//! alike, so timelines written before these types existed still decode; and
//! "still waiting in the destination's inbox" is decided in one place,
//! [`DeliveryState::is_waiting`].

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A QCVN 102 status code (`lgsp-status`, PROTOCOL §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatusCode {
    /// `01` received.
    Received,
    /// `02` rejected (refused by the destination).
    Rejected,
    /// `03` accepted.
    Accepted,
    /// `04` assigned.
    Assigned,
    /// `05` processing.
    Processing,
    /// `06` completed.
    Completed,
    /// `13` recall request (from the source).
    RecallRequest,
    /// `15` recall/update agreed.
    RecallAgreed,
    /// `16` recall/update refused.
    Refused,
}

impl StatusCode {
    /// Every code, in wire order.
    pub const ALL: [StatusCode; 9] = [
        Self::Received,
        Self::Rejected,
        Self::Accepted,
        Self::Assigned,
        Self::Processing,
        Self::Completed,
        Self::RecallRequest,
        Self::RecallAgreed,
        Self::Refused,
    ];

    /// The two digits on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "01",
            Self::Rejected => "02",
            Self::Accepted => "03",
            Self::Assigned => "04",
            Self::Processing => "05",
            Self::Completed => "06",
            Self::RecallRequest => "13",
            Self::RecallAgreed => "15",
            Self::Refused => "16",
        }
    }

    /// The code written as `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state of a destination's timeline (PROTOCOL §5.9), by its recorded name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// `accepted`: first entry of every destination.
    Accepted,
    /// `queued`: a delivery was published to the inbox.
    Queued,
    /// `deferred`: held until `lgsp-not-before`.
    Deferred,
    /// `rejected`: the destination rejected a delivery.
    Rejected,
    /// `retry`: a retry is scheduled.
    Retry,
    /// `delivered`: status `01`.
    Delivered,
    /// `status-NN`: any other relayed status (`03`–`06`, `16`).
    Status(StatusCode),
    /// `delay-warning`: the destination stayed offline while the delivery waited.
    DelayWarning,
    /// `bounced`.
    Bounced,
    /// `expired`: the deadline passed before a `01`.
    Expired,
    /// `recalled`.
    Recalled,
    /// `recall-requested`: a recall request went to the inbox.
    RecallRequested,
    /// `purged`: an operator purged the inbox.
    Purged,
}

impl DeliveryState {
    /// The name of every state but the relayed statuses (`status-NN`).
    pub const NAMES: [&'static str; 12] = [
        "accepted",
        "queued",
        "deferred",
        "rejected",
        "retry",
        "delivered",
        "delay-warning",
        "bounced",
        "expired",
        "recalled",
        "recall-requested",
        "purged",
    ];

    /// The name recorded in the timeline (`status-NN` for relayed statuses).
    pub fn name(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::Accepted => "accepted",
            Self::Queued => "queued",
            Self::Deferred => "deferred",
            Self::Rejected => "rejected",
            Self::Retry => "retry",
            Self::Delivered => "delivered",
            Self::Status(code) => return Cow::Owned(format!("status-{code}")),
            Self::DelayWarning => "delay-warning",
            Self::Bounced => "bounced",
            Self::Expired => "expired",
            Self::Recalled => "recalled",
            Self::RecallRequested => "recall-requested",
            Self::Purged => "purged",
        })
    }

    /// The state recorded as `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(code) = s.strip_prefix("status-") {
            return StatusCode::parse(code).map(Self::Status);
        }
        Some(match s {
            "accepted" => Self::Accepted,
            "queued" => Self::Queued,
            "deferred" => Self::Deferred,
            "rejected" => Self::Rejected,
            "retry" => Self::Retry,
            "delivered" => Self::Delivered,
            "delay-warning" => Self::DelayWarning,
            "bounced" => Self::Bounced,
            "expired" => Self::Expired,
            "recalled" => Self::Recalled,
            "recall-requested" => Self::RecallRequested,
            "purged" => Self::Purged,
            _ => return None,
        })
    }

    /// Whether a destination in this (current) state still waits for the
    /// delivery in its inbox: published there (`queued`, possibly warned
    /// about since, `delay-warning`) and not answered, held back, recalled,
    /// purged or bounced. The one definition used by presence notices, the
    /// router and `truc queue list` (PROTOCOL §5.6).
    pub fn is_waiting(self) -> bool {
        match self {
            Self::Queued | Self::DelayWarning => true,
            Self::Accepted
            | Self::Deferred
            | Self::Rejected
            | Self::Retry
            | Self::Delivered
            | Self::Status(_)
            | Self::Bounced
            | Self::Expired
            | Self::Recalled
            | Self::RecallRequested
            | Self::Purged => false,
        }
    }

    /// The state a relayed status records (PROTOCOL §5.5): `01` → `delivered`,
    /// `02` → `bounced`, `15` → `recalled`, any other `NN` → `status-NN`.
    pub fn of_status(code: StatusCode) -> Self {
        match code {
            StatusCode::Received => Self::Delivered,
            StatusCode::Rejected => Self::Bounced,
            StatusCode::RecallAgreed => Self::Recalled,
            StatusCode::Accepted
            | StatusCode::Assigned
            | StatusCode::Processing
            | StatusCode::Completed
            | StatusCode::RecallRequest
            | StatusCode::Refused => Self::Status(code),
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

// By name, as a string: the same bytes as the `String` field it replaced
// (bincode in the store, text in JSON).
impl Serialize for DeliveryState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for DeliveryState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown delivery state {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip_by_their_digits() {
        let digits: Vec<&str> = StatusCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            digits,
            ["01", "02", "03", "04", "05", "06", "13", "15", "16"]
        );
        assert_eq!(digits, crate::core::envelope::STATUS_CODES);
        for c in StatusCode::ALL {
            assert_eq!(StatusCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(StatusCode::parse("07"), None);
        assert_eq!(StatusCode::parse("1"), None);
    }

    #[test]
    fn states_round_trip_by_name() {
        let names = [
            "accepted",
            "queued",
            "deferred",
            "rejected",
            "retry",
            "delivered",
            "status-03",
            "status-16",
            "delay-warning",
            "bounced",
            "expired",
            "recalled",
            "recall-requested",
            "purged",
        ];
        for n in names {
            let s = DeliveryState::parse(n).unwrap();
            assert_eq!(s.name(), n);
            assert_eq!(s.name(), n);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{n}\""));
            let back: DeliveryState = serde_json::from_str(&format!("\"{n}\"")).unwrap();
            assert_eq!(back, s);
        }
        assert_eq!(
            DeliveryState::parse("status-03"),
            Some(DeliveryState::Status(StatusCode::Accepted))
        );
        assert_eq!(DeliveryState::parse("status-07"), None);
        assert_eq!(DeliveryState::parse("sent"), None);
        assert!(serde_json::from_str::<DeliveryState>("\"sent\"").is_err());
    }

    #[test]
    fn statuses_map_to_the_states_of_section_5_5() {
        use DeliveryState as S;
        use StatusCode as C;
        assert_eq!(S::of_status(C::Received), S::Delivered);
        assert_eq!(S::of_status(C::Rejected), S::Bounced);
        assert_eq!(S::of_status(C::RecallAgreed), S::Recalled);
        assert_eq!(S::of_status(C::Completed).name(), "status-06");
        assert_eq!(S::of_status(C::Refused).name(), "status-16");
    }

    #[test]
    fn only_queued_and_delay_warned_deliveries_wait() {
        let waiting: Vec<String> = [
            "accepted",
            "queued",
            "deferred",
            "rejected",
            "retry",
            "delivered",
            "status-03",
            "delay-warning",
            "bounced",
            "expired",
            "recalled",
            "recall-requested",
            "purged",
        ]
        .into_iter()
        .filter_map(DeliveryState::parse)
        .filter(|s| s.is_waiting())
        .map(|s| s.name().into_owned())
        .collect();
        assert_eq!(waiting, ["queued", "delay-warning"]);
    }

    #[test]
    fn every_name_parses_and_round_trips() {
        for n in DeliveryState::NAMES {
            assert_eq!(DeliveryState::parse(n).unwrap().name(), n);
        }
        assert_eq!(
            DeliveryState::parse("status-05").unwrap().name(),
            "status-05"
        );
        assert!(DeliveryState::parse("status-99").is_none());
        assert!(DeliveryState::parse("waiting").is_none());
    }
}

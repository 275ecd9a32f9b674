//! The operator's time zone: where reports cut their days, weeks and months,
//! and how times are shown to operators.
//!
//! Zones are IANA names (`Asia/Ho_Chi_Minh`), resolved against the time-zone
//! database bundled with `jiff` (so a report is the same on every machine,
//! whatever `/usr/share/zoneinfo` holds). Instants stay milliseconds since the
//! Unix epoch everywhere else in truc; this module only turns them into local
//! civil dates and offsets.
//!
//! Invariants: a [`Zone`] names a zone the database knows (checked when it is
//! made); local times are always shown with their UTC offset.

use crate::core::time::format_rfc3339;

/// The default operator time zone (Vietnam, UTC+07:00, no daylight saving).
pub const DEFAULT_ZONE: &str = "Asia/Ho_Chi_Minh";

/// Why a time-zone name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// The name is not in the time-zone database.
    #[error("unknown time zone {0:?} (an IANA name such as \"Asia/Ho_Chi_Minh\" or \"UTC\")")]
    Unknown(String),
    /// A date that has no local midnight or is out of range.
    #[error("no such local date: {0}")]
    BadDate(String),
}

/// An IANA time zone known to the database.
#[derive(Debug, Clone)]
pub struct Zone {
    name: String,
    tz: jiff::tz::TimeZone,
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Default for Zone {
    fn default() -> Self {
        Self::parse(DEFAULT_ZONE).expect("the bundled database knows the default zone")
    }
}

impl Zone {
    /// The zone named `name` (`Asia/Ho_Chi_Minh`, `UTC`, …).
    pub fn parse(name: &str) -> Result<Self, ZoneError> {
        let tz = jiff::tz::db()
            .get(name)
            .map_err(|_| ZoneError::Unknown(name.to_owned()))?;
        Ok(Self {
            name: name.to_owned(),
            tz,
        })
    }

    /// Its IANA name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn timestamp(ms: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    /// The UTC offset in force at `ms`, in seconds.
    pub fn offset_secs(&self, ms: i64) -> i32 {
        self.tz.to_offset(Self::timestamp(ms)).seconds()
    }

    /// The local civil date `(year, month, day)` at `ms`.
    pub fn date(&self, ms: i64) -> (i64, u32, u32) {
        let d = self.tz.to_datetime(Self::timestamp(ms)).date();
        (
            i64::from(d.year()),
            d.month().unsigned_abs().into(),
            d.day().unsigned_abs().into(),
        )
    }

    /// The instant (ms) local day `y-m-d` starts.
    pub fn midnight(&self, y: i64, m: u32, d: u32) -> Result<i64, ZoneError> {
        let bad = || ZoneError::BadDate(format!("{y:04}-{m:02}-{d:02}"));
        let date = jiff::civil::Date::new(
            i16::try_from(y).map_err(|_| bad())?,
            i8::try_from(m).map_err(|_| bad())?,
            i8::try_from(d).map_err(|_| bad())?,
        )
        .map_err(|_| bad())?;
        let ts = self
            .tz
            .to_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
            .map_err(|_| bad())?;
        Ok(ts.as_millisecond())
    }

    /// `ms` as people read it: the local date and time to the second, and
    /// the offset (`2026-11-22`, `15:00:00`, `+07:00`).
    pub fn readable(&self, ms: i64) -> (String, String, String) {
        let s = self.format(ms);
        // 2026-11-22T15:00:00.000+07:00
        let part = |r: std::ops::Range<usize>| s.get(r).unwrap_or("").to_owned();
        (part(0..10), part(11..19), part(23..s.len()))
    }

    /// `ms` as local RFC 3339 with milliseconds and the offset,
    /// e.g. `2026-11-22T15:00:00.000+07:00`.
    pub fn format(&self, ms: i64) -> String {
        let off = self.offset_secs(ms);
        let local = format_rfc3339(ms + i64::from(off) * 1000);
        let base = local.strip_suffix('Z').unwrap_or(&local);
        let (sign, a) = if off < 0 { ('-', -off) } else { ('+', off) };
        format!("{base}{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::time::parse_rfc3339;

    #[test]
    fn vietnam_is_seven_hours_ahead_and_cuts_days_locally() {
        let z = Zone::default();
        assert_eq!(z.name(), "Asia/Ho_Chi_Minh");
        let t = parse_rfc3339("2026-11-22T23:30:00Z").unwrap();
        assert_eq!(z.offset_secs(t), 7 * 3600);
        assert_eq!(z.date(t), (2026, 11, 23), "06:30 the next day in Vietnam");
        assert_eq!(z.format(t), "2026-11-23T06:30:00.000+07:00");
        assert_eq!(
            z.readable(t),
            ("2026-11-23".into(), "06:30:00".into(), "+07:00".into())
        );
        assert_eq!(parse_rfc3339(&z.format(t)).unwrap(), t);
        assert_eq!(
            z.midnight(2026, 11, 23).unwrap(),
            parse_rfc3339("2026-11-22T17:00:00Z").unwrap()
        );
        let utc = Zone::parse("UTC").unwrap();
        assert_eq!(utc.date(t), (2026, 11, 22));
        assert_eq!(utc.format(t), "2026-11-22T23:30:00.000+00:00");
    }

    #[test]
    fn negative_offsets_and_unknown_zones() {
        let ny = Zone::parse("America/New_York").unwrap();
        let t = parse_rfc3339("2026-01-10T03:00:00Z").unwrap();
        assert_eq!(ny.date(t), (2026, 1, 9));
        assert_eq!(ny.format(t), "2026-01-09T22:00:00.000-05:00");
        let e = Zone::parse("Asia/Hanoi_City").unwrap_err();
        assert!(e.to_string().contains("Asia/Hanoi_City"), "{e}");
        assert!(Zone::parse("").is_err());
        assert!(Zone::default().midnight(2026, 2, 30).is_err());
    }
}

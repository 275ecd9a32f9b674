//! Wall-clock helpers: RFC 3339 timestamps and human durations (`90s`, `4h`, `2d`).
//!
//! Times are carried as milliseconds since the Unix epoch (`i64`) everywhere in
//! truc; this module is the only place that turns them into text and back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a time or duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not an RFC 3339 date-time.
    #[error("not an RFC 3339 date-time: {0:?}")]
    BadTimestamp(String),
    /// Not a duration like `90s`, `4h`, `2d`.
    #[error("not a duration like 90s, 4h or 2d: {0:?}")]
    BadDuration(String),
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses an RFC 3339 date-time (`Z` or a `±HH:MM` offset, optional fraction)
/// into milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Result<i64, TimeError> {
    let bad = || TimeError::BadTimestamp(s.to_owned());
    if s.len() < 20 || !s.is_ascii() {
        return Err(bad());
    }
    let (base, offset_secs) = if let Some(b) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        (b, 0i64)
    } else {
        let (b, off) = s.split_at(s.len() - 6);
        let ob = off.as_bytes();
        if !(ob[0] == b'+' || ob[0] == b'-') || ob[3] != b':' {
            return Err(bad());
        }
        let h: i64 = off[1..3].parse().map_err(|_| bad())?;
        let m: i64 = off[4..6].parse().map_err(|_| bad())?;
        if h > 23 || m > 59 {
            return Err(bad());
        }
        let sign = if ob[0] == b'-' { -1 } else { 1 };
        (b, sign * (h * 3600 + m * 60))
    };
    let t = humantime::parse_rfc3339(&format!("{base}Z")).map_err(|_| bad())?;
    let ms = t.duration_since(UNIX_EPOCH).map_err(|_| bad())?.as_millis() as i64;
    Ok(ms - offset_secs * 1000)
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses a duration such as `90s`, `15m`, `4h`, `2d` (or `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, TimeError> {
    let bad = || TimeError::BadDuration(s.to_owned());
    if s.is_empty() || s.len() > 32 || !s.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    humantime::parse_duration(s).map_err(|_| bad())
}

/// Formats a duration for people and for policy files (`4h`, `1d 2h`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_and_offsets() {
        let z = parse_rfc3339("2026-11-22T08:00:00Z").unwrap();
        assert_eq!(z, 1_795_334_400_000);
        assert_eq!(parse_rfc3339("2026-11-22T15:00:00+07:00").unwrap(), z);
        assert_eq!(parse_rfc3339("2026-11-22T08:00:00.250Z").unwrap(), z + 250);
        assert_eq!(format_rfc3339(z + 250), "2026-11-22T08:00:00.250Z");
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22T08:00:00",
            "2026-13-22T08:00:00Z",
            "x026-11-22T08:00:00+7:00",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("4h").unwrap(), Duration::from_secs(4 * 3600));
        assert_eq!(
            parse_duration("2d").unwrap(),
            Duration::from_secs(2 * 86400)
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-3s").is_err());
        assert!(parse_duration("3 parsecs").is_err());
    }
}

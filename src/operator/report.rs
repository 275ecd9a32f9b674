//! Statistics (R11) from the envelope timelines: per agency and period
//! (day, ISO week, month, cut in the operator's time zone), envelopes sent,
//! received, delivered, bounced and expired, the further copies put into an
//! inbox (retries), with median and p95 delivery latency (accepted → status
//! `01`). (The delivered metrics observed when a status arrives are counted
//! by the router's status step.)
//!
//! Invariants: pure over the records given (no I/O); an event is counted in
//! the period of its own time, the period being the local day, week or
//! month of the report's [`Zone`]; every column but `retries` counts
//! envelopes: `received` counts an envelope once per destination (its first
//! `queued` event), every later `queued` event of that destination is a
//! retry copy and counts in `retries` only; `sent`, `bounced` and `expired`
//! count against the source, `received`, `retries`, `delivered` and
//! latencies against the destination. Connection history is not here: it
//! comes from the presence tracker.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::code::AgencyCode;
use crate::core::reason::Reason;
use crate::core::timeline::DeliveryState;
use crate::core::zone::Zone;
use crate::state::tracking::EnvelopeRecord;

/// Report period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// Calendar day (local), `2026-11-22`.
    #[default]
    Day,
    /// ISO 8601 week, `2026-W47`.
    Week,
    /// Calendar month, `2026-11`.
    Month,
}

/// Civil date (year, month, day) of a day number since 1970-01-01.
pub fn civil(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The label of the period holding `ms`, in `zone`'s local calendar.
pub fn period(ms: i64, by: By, zone: &Zone) -> String {
    let (y, m, d) = zone.date(ms);
    let days = days_from_civil(y, m, d);
    match by {
        By::Day => format!("{y:04}-{m:02}-{d:02}"),
        By::Month => format!("{y:04}-{m:02}"),
        By::Week => {
            // ISO: weeks start on Monday; week 1 holds the year's first Thursday.
            let weekday = (days + 3).rem_euclid(7); // 0 = Monday
            let thursday = days - weekday + 3;
            let (ty, _, _) = civil(thursday);
            let week = (thursday - days_from_civil(ty, 1, 1)) / 7 + 1;
            format!("{ty:04}-W{week:02}")
        }
    }
}

/// One row: an agency in a period.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// Period label.
    pub period: String,
    /// Agency code.
    pub agency: String,
    /// Envelopes it sent (accepted).
    pub sent: u64,
    /// Envelopes handed to its inbox (each once, at its first copy).
    pub received: u64,
    /// Further copies handed to its inbox (retries after rejections,
    /// released repeats): copies, not envelopes.
    #[serde(default)]
    pub retries: u64,
    /// Envelopes it confirmed with status `01`.
    pub delivered: u64,
    /// Its envelopes bounced (any reason but `expired`).
    pub bounced: u64,
    /// Its envelopes that expired.
    pub expired: u64,
    /// Median accepted → delivered, seconds, for deliveries to it.
    pub latency_median_s: Option<f64>,
    /// 95th percentile of the same.
    pub latency_p95_s: Option<f64>,
}

/// The report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Period kind.
    pub by: By,
    /// The time zone periods are cut in (IANA name).
    #[serde(default)]
    pub time_zone: String,
    /// Start (inclusive, local RFC 3339 with offset), if bounded.
    pub since: Option<String>,
    /// End (exclusive, local RFC 3339 with offset), if bounded.
    pub until: Option<String>,
    /// Rows by period then agency.
    pub rows: Vec<Row>,
}

/// Nearest-rank percentile `p` (0–100) of sorted `v`.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// Builds the report over `records`, counting events in `[since, until)`,
/// by periods of `zone`.
pub fn build<'a>(
    records: impl IntoIterator<Item = &'a EnvelopeRecord>,
    since: Option<i64>,
    until: Option<i64>,
    by: By,
    zone: &Zone,
) -> Report {
    let inside = |t: i64| since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u);
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut lat: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut bump = |t: i64, code: &AgencyCode, f: &dyn Fn(&mut Row)| {
        let key = (period(t, by, zone), code.to_string());
        let r = rows.entry(key.clone()).or_insert_with(|| Row {
            period: key.0,
            agency: key.1,
            ..Row::default()
        });
        f(r);
    };
    for rec in records {
        if inside(rec.accepted_at_ms) {
            bump(rec.accepted_at_ms, &rec.from, &|r| r.sent += 1);
        }
        for d in &rec.dests {
            let mut delivered_once = false;
            let mut queued_once = false;
            for e in &d.events {
                // The first copy is the envelope, wherever the window falls.
                let first_copy = e.state == DeliveryState::Queued && !queued_once;
                if e.state == DeliveryState::Queued {
                    queued_once = true;
                }
                if !inside(e.at_ms) {
                    continue;
                }
                match e.state {
                    DeliveryState::Queued if first_copy => {
                        bump(e.at_ms, &d.code, &|r| r.received += 1)
                    }
                    DeliveryState::Queued => bump(e.at_ms, &d.code, &|r| r.retries += 1),
                    DeliveryState::Delivered if !delivered_once => {
                        delivered_once = true;
                        bump(e.at_ms, &d.code, &|r| r.delivered += 1);
                        let secs = (e.at_ms - rec.accepted_at_ms).max(0) as f64 / 1000.0;
                        lat.entry((period(e.at_ms, by, zone), d.code.to_string()))
                            .or_default()
                            .push(secs);
                    }
                    DeliveryState::Bounced | DeliveryState::Purged
                        if e.reason == Some(Reason::Expired) =>
                    {
                        bump(e.at_ms, &rec.from, &|r| r.expired += 1)
                    }
                    DeliveryState::Expired => bump(e.at_ms, &rec.from, &|r| r.expired += 1),
                    DeliveryState::Bounced | DeliveryState::Purged => {
                        bump(e.at_ms, &rec.from, &|r| r.bounced += 1)
                    }
                    DeliveryState::Accepted
                    | DeliveryState::Deferred
                    | DeliveryState::Rejected
                    | DeliveryState::Retry
                    | DeliveryState::Delivered
                    | DeliveryState::Status(_)
                    | DeliveryState::DelayWarning
                    | DeliveryState::Recalled
                    | DeliveryState::RecallRequested => {}
                }
            }
        }
    }
    for (key, mut v) in lat {
        v.sort_by(f64::total_cmp);
        if let Some(r) = rows.get_mut(&key) {
            r.latency_median_s = percentile(&v, 50.0);
            r.latency_p95_s = percentile(&v, 95.0);
        }
    }
    Report {
        by,
        time_zone: zone.name().to_owned(),
        since: since.map(|t| zone.format(t)),
        until: until.map(|t| zone.format(t)),
        rows: rows.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::time::parse_rfc3339;
    use crate::state::tracking::DestTrack;

    fn t(s: &str) -> i64 {
        parse_rfc3339(s).unwrap()
    }

    fn record(at: i64, id: &str, dests: Vec<DestTrack>) -> EnvelopeRecord {
        EnvelopeRecord {
            priority: 1,
            ..EnvelopeRecord::for_test(at, id, dests)
        }
    }

    fn utc() -> Zone {
        Zone::parse("UTC").unwrap()
    }

    #[test]
    fn periods() {
        let p = |s: &str, by| period(t(s), by, &utc());
        assert_eq!(p("2026-11-22T08:00:00Z", By::Day), "2026-11-22");
        assert_eq!(p("2026-11-22T08:00:00Z", By::Month), "2026-11");
        assert_eq!(p("2026-11-22T08:00:00Z", By::Week), "2026-W47");
        // ISO weeks across the year boundary.
        assert_eq!(p("2021-01-03T00:00:00Z", By::Week), "2020-W53");
        assert_eq!(p("2024-12-30T00:00:00Z", By::Week), "2025-W01");
        assert_eq!(p("2026-01-01T00:00:00Z", By::Week), "2026-W01");
        assert_eq!(p("2024-02-29T23:59:59Z", By::Day), "2024-02-29");
        assert_eq!(period(0, By::Day, &utc()), "1970-01-01");
        for days in [-1000, 0, 59, 365, 11_000, 20_000] {
            let (y, m, d) = civil(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(percentile(&[3.0], 95.0), Some(3.0));
    }

    #[test]
    fn counts_by_agency_and_period() {
        let c = |s: &str| AgencyCode::parse(s).unwrap();
        let day1 = t("2026-11-21T10:00:00Z");
        let day2 = t("2026-11-22T10:00:00Z");
        let mk = record;
        let mut a = DestTrack::new(c("A"), day1, DeliveryState::Accepted, None, "");
        a.push(day1, DeliveryState::Queued, None, "");
        a.push(day1 + 2_000, DeliveryState::Delivered, None, "");
        a.push(day1 + 3_000, DeliveryState::Delivered, None, "dup");
        let mut b = DestTrack::new(c("B"), day1, DeliveryState::Accepted, None, "");
        b.push(
            day1,
            DeliveryState::Bounced,
            Some(Reason::UnknownDestination),
            "",
        );
        let mut a2 = DestTrack::new(c("A"), day2, DeliveryState::Accepted, None, "");
        a2.push(day2, DeliveryState::Queued, None, "");
        a2.push(day2 + 10_000, DeliveryState::Delivered, None, "");
        let mut x = DestTrack::new(c("A"), day2, DeliveryState::Accepted, None, "");
        x.push(day2, DeliveryState::Bounced, Some(Reason::Expired), "");
        let recs = vec![mk(day1, "1", vec![a, b]), mk(day2, "2", vec![a2, x])];
        let r = build(&recs, None, None, By::Day, &utc());
        let get = |p: &str, ag: &str| {
            r.rows
                .iter()
                .find(|r| r.period == p && r.agency == ag)
                .cloned()
                .unwrap()
        };
        let s1 = get("2026-11-21", "S");
        assert_eq!((s1.sent, s1.bounced, s1.expired), (1, 1, 0));
        let a1 = get("2026-11-21", "A");
        assert_eq!((a1.received, a1.delivered), (1, 1));
        assert_eq!(a1.latency_median_s, Some(2.0));
        let s2 = get("2026-11-22", "S");
        assert_eq!((s2.sent, s2.expired), (1, 1));
        assert_eq!(get("2026-11-22", "A").latency_p95_s, Some(10.0));
        // Bounded to day 2 only.
        let r = build(
            &recs,
            Some(t("2026-11-22T00:00:00Z")),
            None,
            By::Month,
            &utc(),
        );
        assert_eq!(r.rows.len(), 2);
        assert!(r.rows.iter().all(|r| r.period == "2026-11"));
        assert_eq!(r.rows.iter().find(|r| r.agency == "S").unwrap().sent, 1);
    }

    #[test]
    fn periods_are_cut_in_the_operators_time_zone() {
        let vn = Zone::default();
        // 23:30 UTC on Sunday 2026-11-22 is 06:30 on Monday 2026-11-23 in Vietnam.
        let late = t("2026-11-22T23:30:00Z");
        assert_eq!(period(late, By::Day, &utc()), "2026-11-22");
        assert_eq!(period(late, By::Day, &vn), "2026-11-23");
        assert_eq!(period(late, By::Week, &utc()), "2026-W47");
        assert_eq!(
            period(late, By::Week, &vn),
            "2026-W48",
            "Monday starts a new week"
        );
        // 23:30 UTC on 2026-11-30 is already December in Vietnam.
        assert_eq!(period(t("2026-11-30T23:30:00Z"), By::Month, &vn), "2026-12");
        // And an envelope accepted then lands on the Vietnamese day, with the
        // report's bounds shown in local time with the offset.
        let rec = record(late, "1", vec![]);
        let r = build([&rec], Some(t("2026-11-22T17:00:00Z")), None, By::Day, &vn);
        assert_eq!(r.time_zone, "Asia/Ho_Chi_Minh");
        assert_eq!(r.since.as_deref(), Some("2026-11-23T00:00:00.000+07:00"));
        assert_eq!(r.rows.len(), 1);
        assert_eq!(
            (r.rows[0].period.as_str(), r.rows[0].sent),
            ("2026-11-23", 1)
        );
    }

    #[test]
    fn retry_copies_are_counted_apart_from_envelopes() {
        let c = |s: &str| AgencyCode::parse(s).unwrap();
        let day = t("2026-11-22T03:00:00Z");
        // 14 envelopes to A; two of them were rejected and retried 4 times each.
        let recs: Vec<EnvelopeRecord> = (0..14)
            .map(|i| {
                let mut a = DestTrack::new(c("A"), day, DeliveryState::Accepted, None, "");
                a.push(day, DeliveryState::Queued, None, "attempt 1");
                if i < 2 {
                    for n in 2..=5 {
                        a.push(day + n, DeliveryState::Rejected, None, "");
                        a.push(day + n, DeliveryState::Retry, None, "");
                        a.push(
                            day + n,
                            DeliveryState::Queued,
                            None,
                            &format!("attempt {n}"),
                        );
                    }
                }
                record(day, &i.to_string(), vec![a])
            })
            .collect();
        let r = build(&recs, None, None, By::Day, &Zone::default());
        let a = r.rows.iter().find(|r| r.agency == "A").unwrap();
        assert_eq!((a.received, a.retries), (14, 8));
        // A window holding only a retry: no envelope received in it.
        let r = build(&recs, Some(day + 3), None, By::Day, &Zone::default());
        let a = r.rows.iter().find(|r| r.agency == "A").unwrap();
        assert_eq!((a.received, a.retries), (0, 6));
    }
}

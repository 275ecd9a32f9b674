//! `/console/reports` and `/console/reports.csv`: envelopes sent and
//! received per agency per day, week or month, delivery latency, with a
//! chart, and the same table as CSV — cut to the viewer's scope.

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::view::{bars, num};
use super::{non_empty, Viewer};
use crate::api::Hs;
use crate::core::role::Permission;
use crate::core::time::now_ms;
use crate::operator::report::{By, Row};
use crate::operator::reporting;

#[derive(Deserialize, Default)]
pub(super) struct ReportQuery {
    #[serde(default, deserialize_with = "non_empty")]
    by: Option<String>,
    /// Days back (default 30).
    #[serde(default, deserialize_with = "non_empty")]
    days: Option<String>,
}

impl ReportQuery {
    fn by(&self) -> By {
        match self.by.as_deref() {
            Some("week") => By::Week,
            Some("month") => By::Month,
            _ => By::Day,
        }
    }

    fn days(&self) -> i64 {
        self.days
            .as_deref()
            .and_then(|d| d.parse().ok())
            .filter(|d| (1..=3660).contains(d))
            .unwrap_or(30)
    }
}

async fn rows(
    hub: &crate::operator::Hub,
    v: &Viewer,
    q: &ReportQuery,
) -> Result<Vec<Row>, Box<Response>> {
    let since = now_ms() - q.days() * 86_400_000;
    match reporting::report(hub, Some(since), None, q.by(), v.prefs.zone.clone()).await {
        Ok(r) => Ok(v.caller.scope().report(r).report.rows),
        Err(e) => Err(Box::new(v.error(e))),
    }
}

/// `rows` grouped by `key`, in the order keys first appear, each group's
/// `value`s folded with `combine`.
fn tally<'r>(
    rows: &'r [Row],
    key: impl Fn(&'r Row) -> &'r String,
    value: impl Fn(&Row) -> u64,
    combine: impl Fn(u64, u64) -> u64,
) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for r in rows {
        let v = value(r);
        match out.iter_mut().find(|(k, _)| k == key(r)) {
            Some((_, n)) => *n = combine(*n, v),
            None => out.push((key(r).clone(), v)),
        }
    }
    out
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(String::new, |s| format!("{s:.1}"))
}

pub(super) async fn page(State(hub): Hs, v: Viewer, Query(q): Query<ReportQuery>) -> Response {
    if let Err(r) = v.require(Permission::ViewOwn) {
        return *r;
    }
    let rows = match rows(&hub, &v, &q).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let by = q.by();
    let per_agency = tally(&rows, |r| &r.agency, |r| r.sent + r.received, |a, b| a + b);
    let per_period = tally(&rows, |r| &r.period, |r| r.sent, |a, b| a + b);
    // The slowest agency's median delivery latency in each period, ms.
    let latency = tally(
        &rows,
        |r| &r.period,
        |r| {
            r.latency_median_s
                .map_or(0, |s| (s * 1000.0).round() as u64)
        },
        u64::max,
    );
    let csv = format!(
        "/console/reports.csv?by={}&days={}",
        q.by.as_deref().unwrap_or("day"),
        q.days()
    );
    let body = html! {
        form.search method="get" action="/console/reports" {
            label { (v.t("Theo", "By"))
                select name="by" {
                    option value="day" selected[by == By::Day] { (v.t("ngày", "day")) }
                    option value="week" selected[by == By::Week] { (v.t("tuần", "week")) }
                    option value="month" selected[by == By::Month] { (v.t("tháng", "month")) }
                }
            }
            label { (v.t("Số ngày gần nhất", "Last days")) input name="days" type="number" min="1" max="3660" value=(q.days()); }
            button type="submit" { (v.t("Xem", "Show")) }
            a href=(csv) download="truc-report.csv" { (v.t("Tải CSV", "Download CSV")) }
        }
        (bars(&per_period, v.t("Văn bản gửi theo kỳ", "Envelopes sent per period")))
        (bars(&per_agency, v.t("Văn bản gửi và nhận theo đơn vị", "Envelopes sent and received per agency")))
        (bars(&latency, v.t("Thời gian chuyển trung vị chậm nhất theo kỳ (ms, đơn vị chậm nhất)", "Slowest median delivery latency per period (ms, the slowest agency)")))
        div.scroll { table {
            thead { tr {
                th { (v.t("Kỳ", "Period")) }
                th { (v.t("Đơn vị", "Agency")) }
                th.n { (v.t("Gửi", "Sent")) }
                th.n { (v.t("Nhận", "Received")) }
                th.n { (v.t("Đã xác nhận 01", "Confirmed 01")) }
                th.n { (v.t("Trả lại", "Bounced")) }
                th.n { (v.t("Hết hạn", "Expired")) }
                th.n { (v.t("Trễ trung vị (s)", "Median latency (s)")) }
                th.n { (v.t("Trễ p95 (s)", "p95 latency (s)")) }
            } }
            tbody { @for r in &rows { tr {
                td { (r.period) } td { code { (r.agency) } }
                td.n { (num(r.sent)) } td.n { (num(r.received)) } td.n { (num(r.delivered)) }
                td.n { (num(r.bounced)) } td.n { (num(r.expired)) }
                td.n { (secs(r.latency_median_s)) } td.n { (secs(r.latency_p95_s)) }
            } } }
        } }
    };
    v.page("/console/reports", v.t("Báo cáo", "Reports"), body)
}

/// One CSV field, quoted when it must be (RFC 4180), and never read as a
/// formula by a spreadsheet.
fn field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

pub(super) async fn csv(State(hub): Hs, v: Viewer, Query(q): Query<ReportQuery>) -> Response {
    if let Err(r) = v.require(Permission::ViewOwn) {
        return *r;
    }
    let rows = match rows(&hub, &v, &q).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let mut out = String::from(
        "period,agency,sent,received,retries,delivered,bounced,expired,latency_median_s,latency_p95_s\r\n",
    );
    for r in &rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\r\n",
            field(&r.period),
            field(&r.agency),
            r.sent,
            r.received,
            r.retries,
            r.delivered,
            r.bounced,
            r.expired,
            secs(r.latency_median_s),
            secs(r.latency_p95_s)
        ));
    }
    let mut resp = out.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"truc-report.csv\""),
    );
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(super::field("2026-11"), "2026-11");
        assert_eq!(super::field("a,b"), "\"a,b\"");
        assert_eq!(super::field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(super::field("=1+1"), "'=1+1");
    }
}

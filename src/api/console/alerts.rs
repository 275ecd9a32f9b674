//! `/console/alerts`: the alerts open now and those resolved in the last
//! week, as the leader evaluated them (`policies/alerts.toml`).

use axum::extract::State;
use axum::response::Response;
use maud::{html, Markup};

use super::{blocking, Viewer};
use crate::api::Hs;
use crate::core::alerting::Alert;
use crate::core::role::Permission;
use crate::core::time::now_ms;
use crate::operator::alerts;

/// The open alerts as a table (also on the overview).
pub(super) fn table(v: &Viewer, list: &[Alert], resolved: bool) -> Markup {
    let p = &v.prefs;
    html! {
        div.scroll { table {
            thead { tr {
                th { (v.t("Từ lúc", "Since")) }
                @if resolved { th { (v.t("Hết lúc", "Resolved")) } }
                th { (v.t("Quy tắc", "Rule")) }
                th { (v.t("Đối tượng", "Subject")) }
                th { (v.t("Nội dung", "What")) }
            } }
            tbody { @for a in list { tr {
                td { (p.when(a.since_ms)) }
                @if resolved { td { (p.when_opt(a.resolved_ms)) } }
                td { code { (a.rule.as_str()) } }
                td { code { (a.subject) } }
                td { (v.t(&a.text_vi, &a.text_en)) }
            } } }
        } }
    }
}

pub(super) async fn page(State(hub): Hs, v: Viewer) -> Response {
    if let Err(r) = v.require(Permission::ViewAll) {
        return *r;
    }
    let hub2 = hub.clone();
    let got = blocking(move || {
        Ok::<_, crate::state::store::StoreError>((
            alerts::open(&hub2)?,
            alerts::resolved(&hub2, now_ms() - 7 * 86_400_000)?,
        ))
    })
    .await;
    let (open, done) = match got {
        Ok(g) => g,
        Err(e) => return v.fail(axum::http::StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let body = html! {
        h2 { (v.t("Đang mở", "Open")) " (" (open.len()) ")" }
        @if open.is_empty() { p.notice { (v.t("Không có cảnh báo nào đang mở.", "No alert is open.")) } }
        @else { (table(&v, &open, false)) }
        h2 { (v.t("Đã hết trong 7 ngày qua", "Resolved in the last 7 days")) }
        (table(&v, &done, true))
    };
    v.page("/console/alerts", v.t("Cảnh báo", "Alerts"), body)
}

//! `GET /console/`: the overview — agencies by presence, inbox depths, dead
//! letters, and the flow of envelopes per minute over the last hour.

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::view::{bars, num};
use super::Viewer;
use crate::api::Hs;
use crate::core::role::Permission;
use crate::operator::overview::{overview, MINUTES};

/// Inboxes listed on the overview.
const DEEPEST: usize = 10;

pub(super) async fn page(State(hub): Hs, v: Viewer) -> Response {
    if let Err(r) = v.require(Permission::ViewOwn) {
        return *r;
    }
    let o = match overview(&hub, &v.caller.scope()).await {
        Ok(o) => o,
        Err(e) => return v.error(e),
    };
    let p = &v.prefs;
    let per_minute: Vec<(String, u64)> = o
        .per_minute
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let at = o.last_minute_ms - (MINUTES - 1 - i) as i64 * 60_000;
            (p.when(at).get(11..16).unwrap_or_default().to_owned(), *n)
        })
        .collect();
    let hour: u64 = o.per_minute.iter().sum();
    let open_alerts = if v.caller.may(Permission::ViewAll) {
        let hub2 = hub.clone();
        match super::blocking(move || crate::operator::alerts::open(&hub2)).await {
            Ok(a) => Some(a),
            Err(e) => return v.error(e),
        }
    } else {
        None
    };
    let body = html! {
        @if let Some(open) = &open_alerts {
            @if !open.is_empty() {
                h2 { a href="/console/alerts" { (v.t("Cảnh báo đang mở", "Open alerts")) } " (" (open.len()) ")" }
                (super::alerts::table(&v, open, false))
            }
        }
        section.cards {
            div.card { b { (o.agencies) } span { (v.t("đơn vị", "agencies")) } }
            div.card { b.ok { (o.online) } span { (v.t("trực tuyến", "online")) } }
            div.card { b class=[(o.offline > 0).then_some("warn")] { (o.offline) } span { (v.t("ngoại tuyến", "offline")) } }
            div.card { b.muted { (o.disabled) } span { (v.t("đã khóa", "disabled")) } }
            @if o.unknown > 0 {
                div.card { b.muted { (o.unknown) } span { (v.t("chưa thấy kết nối", "not seen yet")) } }
            }
            @if let Some(rows) = &o.inboxes {
                div.card { b { (num(rows.iter().map(|r| u64::from(r.messages.unwrap_or(0))).sum())) } span { (v.t("văn bản chờ trong hộp thư", "messages waiting in inboxes")) } }
            }
            @if let Some(d) = o.dead {
                div.card { b class=[(d > 0).then_some("bad")] { (num(d.into())) } span { a href="/console/dead" { (v.t("thư chết (không gửi được)", "dead letters (undelivered)")) } } }
            }
            @if let Some(d) = o.rejected {
                div.card { b class=[(d > 0).then_some("warn")] { (num(d.into())) } span { (v.t("bị loại (không xác thực)", "rejected (unauthenticated)")) } }
            }
            div.card { b { (num(hour)) } span { (v.t("văn bản tiếp nhận trong 1 giờ", "envelopes accepted in the last hour")) } }
        }
        h2 { (v.t("Lưu lượng theo phút", "Flow per minute")) }
        (bars(&per_minute, v.t("Văn bản tiếp nhận mỗi phút, 60 phút qua", "Envelopes accepted per minute, last 60 minutes")))
        h2 { (v.t("Hộp thư sâu nhất", "Deepest inboxes")) }
        @if let Some(e) = &o.broker_error {
            p.error role="alert" { (v.t("Không đọc được hàng đợi: ", "Queues could not be read: ")) (e) }
        }
        @if let Some(rows) = &o.inboxes {
            div.scroll { table {
                thead { tr {
                    th { (v.t("Mã đơn vị", "Agency code")) }
                    th { (v.t("Tên", "Name")) }
                    th { (v.t("Trạng thái", "Presence")) }
                    th.n { (v.t("Văn bản chờ", "Waiting")) }
                    th { (v.t("Cũ nhất từ", "Oldest since")) }
                } }
                tbody {
                    @for r in rows.iter().take(DEEPEST) {
                        tr {
                            td { a href=(format!("/console/agencies/{}", r.code)) { code { (r.code) } } }
                            td { (r.name) }
                            td { @if !r.enabled { span.muted { (v.t("đã khóa", "disabled")) } } @else if r.online { span.ok { (v.t("trực tuyến", "online")) } } @else { span.warn { (v.t("ngoại tuyến", "offline")) } } }
                            td.n { (r.messages.map_or_else(|| "—".into(), |m| num(m.into()))) }
                            td { (r.oldest_queued_at.as_deref().map_or_else(|| "—".into(), |t| p.when_text(t))) }
                        }
                    }
                }
            } }
        }
    };
    v.page("/console/", v.t("Tổng quan", "Overview"), body)
}

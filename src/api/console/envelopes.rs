//! `/console/envelopes`: envelope search (by id, source, destination,
//! state, time) and one envelope's per-destination timeline, cut to the
//! viewer's scope.

use axum::extract::{Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::view::{num, state};
use super::{non_empty, Viewer};
use crate::api::Hs;
use crate::core::role::Permission;
use crate::core::text::percent_encoded;
use crate::core::time::now_ms;
use crate::operator::envelopes::{self, Selection, STATES};

/// Envelopes a search shows at most.
const LIMIT: usize = 200;

#[derive(Deserialize, Default)]
pub(super) struct SearchQuery {
    #[serde(default, deserialize_with = "non_empty")]
    id: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    from: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    to: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    state: Option<String>,
    /// Hours back (default 24).
    #[serde(default, deserialize_with = "non_empty")]
    hours: Option<String>,
}

pub(super) async fn search(State(hub): Hs, v: Viewer, Query(q): Query<SearchQuery>) -> Response {
    if let Err(r) = v.require(Permission::ViewOwn) {
        return *r;
    }
    let scope = v.caller.scope();
    let hours: i64 = match q.hours.as_deref().map(str::parse::<i64>) {
        None => 24,
        Some(Ok(h)) if (1..=24 * 366).contains(&h) => h,
        Some(_) => {
            return v.fail(
                axum::http::StatusCode::BAD_REQUEST,
                v.t("Số giờ phải từ 1 đến 8784.", "Hours must be 1-8784."),
            )
        }
    };
    let found = match &q.id {
        Some(id) => match envelopes::show(&hub, &scope, q.from.as_deref(), id) {
            Ok(e) => Ok(vec![e]),
            Err(envelopes::EnvelopeError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        },
        None => envelopes::list(
            &hub,
            &scope,
            &Selection {
                from: q.from.clone(),
                to: q.to.clone(),
                state: q.state.clone(),
                since_ms: Some(now_ms() - hours * 3_600_000),
                until_ms: None,
                limit: LIMIT,
            },
        ),
    };
    let found = match found {
        Ok(f) => f,
        Err(e) => return v.error(e),
    };
    let p = &v.prefs;
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let body = html! {
        form.search method="get" action="/console/envelopes" {
            label { (v.t("Mã văn bản", "Message id")) input name="id" value=(opt(&q.id)); }
            label { (v.t("Nơi gửi", "Source")) input name="from" value=(opt(&q.from)) placeholder="000.00.31.H37"; }
            label { (v.t("Nơi nhận", "Destination")) input name="to" value=(opt(&q.to)); }
            label { (v.t("Trạng thái", "State"))
                select name="state" {
                    option value="" { (v.t("bất kỳ", "any")) }
                    @for s in STATES {
                        option value=(s) selected[q.state.as_deref() == Some(s)] { (s) }
                    }
                }
            }
            label { (v.t("Trong (giờ)", "Within (hours)")) input name="hours" type="number" min="1" value=(hours); }
            button type="submit" { (v.t("Tìm", "Search")) }
        }
        p.muted { (num(found.len() as u64)) " " (v.t("văn bản", "envelopes")) @if found.len() == LIMIT { " " (v.t("(chỉ hiện 200 văn bản mới nhất)", "(the newest 200 only)")) } }
        div.scroll { table {
            thead { tr {
                th { (v.t("Tiếp nhận lúc", "Accepted")) }
                th { (v.t("Nơi gửi", "Source")) }
                th { (v.t("Mã văn bản", "Message id")) }
                th { (v.t("Trích yếu", "Subject")) }
                th { (v.t("Nơi nhận và trạng thái", "Destinations and states")) }
            } }
            tbody { @for e in &found { tr {
                td { (p.when(e.accepted_at_ms)) }
                td { code { (e.from) } }
                td { a href=(format!("/console/envelopes/view?from={}&id={}", e.from, percent_encoded(&e.message_id))) { code { (e.message_id) } } }
                td { (e.subject) }
                td { @for d in &e.dests { div { code { (d.code) } " — " (state(p.lang, d.state)) } } }
            } } }
        } }
    };
    v.page("/console/envelopes", v.t("Văn bản", "Envelopes"), body)
}

#[derive(Deserialize)]
pub(super) struct ShowQuery {
    #[serde(default, deserialize_with = "non_empty")]
    from: Option<String>,
    id: String,
}

pub(super) async fn show(State(hub): Hs, v: Viewer, Query(q): Query<ShowQuery>) -> Response {
    if let Err(r) = v.require(Permission::ViewOwn) {
        return *r;
    }
    let e = match envelopes::show(&hub, &v.caller.scope(), q.from.as_deref(), &q.id) {
        Ok(e) => e,
        Err(e) => return v.error(e),
    };
    let p = &v.prefs;
    let body = html! {
        div.scroll { table {
            tbody {
                tr { th { (v.t("Nơi gửi", "Source")) } td { code { (e.from) } } }
                tr { th { (v.t("Mã văn bản", "Message id")) } td { code { (e.message_id) } } }
                tr { th { (v.t("Trích yếu", "Subject")) } td { (e.subject) } }
                tr { th { (v.t("Loại dữ liệu", "Data type")) } td { (e.data_type) } }
                tr { th { (v.t("Độ khẩn", "Priority")) } td { (e.priority) } }
                tr { th { (v.t("Kích thước", "Size")) } td { (num(e.size)) " B" } }
                tr { th { (v.t("Mã băm", "Digest")) } td { code { (e.digest) } } }
                tr { th { (v.t("Tiếp nhận lúc", "Accepted")) } td { (p.when(e.accepted_at_ms)) } }
                tr { th { (v.t("Hạn chuyển", "Deliver by")) } td { (p.when_opt(e.deliver_by_ms)) } }
            }
        } }
        @for d in &e.dests {
            h2 { (v.t("Nơi nhận ", "Destination ")) code { (d.code) } " — " (state(p.lang, d.state)) }
            div.scroll { table {
                thead { tr { th { (v.t("Lúc", "At")) } th { (v.t("Trạng thái", "State")) } th { (v.t("Lý do", "Reason")) } th { (v.t("Chi tiết", "Detail")) } } }
                tbody { @for ev in &d.events { tr {
                    td { (p.when(ev.at_ms)) }
                    td { (state(p.lang, ev.state)) }
                    td { (ev.reason.map(|r| r.as_str().to_owned()).unwrap_or_default()) }
                    td { (ev.detail) }
                } } }
            } }
        }
    };
    v.page(
        "/console/envelopes",
        v.t("Dòng thời gian văn bản", "Envelope timeline"),
        body,
    )
}

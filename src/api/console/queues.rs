//! `/console/queues` and `/console/dead`: every agency's inbox and notify
//! queue, purging an inbox, and the dead and rejected letters with retry
//! and drop — each change behind an explicit confirmation that says how
//! many messages it touches.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::confirm::confirm;
use super::view::num;
use super::{non_empty, Viewer};
use crate::api::Hs;
use crate::core::role::Permission;
use crate::operator::agency::code_of;
use crate::operator::dead::{self, Action, Filter, Which};
use crate::operator::queues;

/// Dead letters a page lists at most.
const LIMIT: usize = 100;
/// Retries per second from the console.
const RETRY_RATE: f64 = 10.0;

pub(super) async fn list(State(hub): Hs, v: Viewer) -> Response {
    if let Err(r) = v.require(Permission::ViewAll) {
        return *r;
    }
    let rows = match queues::list(&hub).await {
        Ok(r) => r,
        Err(e) => return v.error(e),
    };
    let p = &v.prefs;
    let purge = v.caller.may(Permission::WorkQueues);
    let body = html! {
        p { a href="/console/dead" { (v.t("Thư chết và thư bị loại →", "Dead and rejected letters →")) } }
        div.scroll { table {
            thead { tr {
                th { (v.t("Mã đơn vị", "Agency code")) }
                th { (v.t("Hộp thư", "Inbox")) }
                th.n { (v.t("Văn bản chờ", "Waiting")) }
                th.n { (v.t("Kết nối", "Consumers")) }
                th.n { (v.t("Thông báo chờ", "Notices waiting")) }
                th { (v.t("Cũ nhất từ", "Oldest since")) }
                @if purge { th {} }
            } }
            tbody { @for r in &rows { tr {
                td { a href=(format!("/console/agencies/{}", r.code)) { code { (r.code) } } }
                td { code { (r.inbox) } }
                td.n { (r.messages.map_or_else(|| "—".into(), |m| num(m.into()))) }
                td.n { (r.consumers.map_or_else(|| "—".into(), |m| m.to_string())) }
                td.n { (r.notify_messages.map_or_else(|| "—".into(), |m| num(m.into()))) }
                td { (r.oldest_queued_at.as_deref().map_or_else(|| "—".into(), |t| p.when_text(t))) }
                @if purge { td {
                    form.inline method="post" action=(format!("/console/queues/{}/purge", r.code)) {
                        input type="hidden" name="csrf" value=(v.csrf);
                        button.danger type="submit" disabled[r.messages == Some(0)] { (v.t("Xóa hộp thư…", "Purge…")) }
                    }
                } }
            } } }
        } }
    };
    v.page("/console/queues", v.t("Hàng đợi", "Queues"), body)
}

#[derive(Deserialize)]
pub(super) struct PurgeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: Option<String>,
}

pub(super) async fn purge(
    State(hub): Hs,
    v: Viewer,
    Path(code): Path<String>,
    Form(f): Form<PurgeForm>,
) -> Response {
    if let Err(r) = v.may_post(&f.csrf, Permission::WorkQueues) {
        return *r;
    }
    let c = match code_of(&code) {
        Ok(c) => c,
        Err(e) => return v.error(e),
    };
    if f.confirm.as_deref() != Some("yes") {
        let what = format!(
            "{} {c}? {}",
            v.t(
                "Xóa mọi văn bản đang chờ trong hộp thư của",
                "Purge every envelope waiting in the inbox of"
            ),
            v.t(
                "Nơi gửi của từng văn bản được báo là văn bản bị trả lại. Không thể hoàn tác.",
                "Each envelope's source is told it bounced. This cannot be undone."
            )
        );
        return confirm(&v, &format!("/console/queues/{c}/purge"), &what, &[]);
    }
    match queues::purge(&hub, &v.caller.name, &c).await {
        Ok(r) => v.page(
            "/console/queues",
            v.t("Đã xóa hộp thư", "Inbox purged"),
            html! {
                p.notice { (num(r.purged)) " " (v.t("văn bản đã xóa; đã báo", "envelopes purged; notices sent:")) " " (r.notices) }
                p { a href="/console/queues" { (v.t("Về hàng đợi", "Back to the queues")) } }
            },
        ),
        Err(e) => v.error(e),
    }
}

#[derive(Deserialize, Default, Clone)]
pub(super) struct DeadQuery {
    #[serde(default, deserialize_with = "non_empty")]
    queue: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    source: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    dest: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    reason: Option<String>,
}

impl DeadQuery {
    fn filter(&self) -> Filter {
        Filter {
            queue: match self.queue.as_deref() {
                Some("dead") => Which::Dead,
                Some("rejected") => Which::Rejected,
                _ => Which::All,
            },
            dest: self.dest.clone(),
            source: self.source.clone(),
            reason: self.reason.clone(),
            older_than_s: None,
            limit: Some(LIMIT),
        }
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        [
            ("queue", &self.queue),
            ("source", &self.source),
            ("dest", &self.dest),
            ("reason", &self.reason),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

pub(super) async fn dead(State(hub): Hs, v: Viewer, Query(q): Query<DeadQuery>) -> Response {
    if let Err(r) = v.require(Permission::ViewAll) {
        return *r;
    }
    let out = match dead::run(&hub, &v.caller.name, &q.filter(), Action::List).await {
        Ok(o) => o,
        Err(e) => return v.error(e),
    };
    let p = &v.prefs;
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let work = v.caller.may(Permission::WorkQueues);
    let body = html! {
        form.search method="get" action="/console/dead" {
            label { (v.t("Hàng đợi", "Queue"))
                select name="queue" {
                    option value="" { (v.t("cả hai", "both")) }
                    option value="dead" selected[q.queue.as_deref() == Some("dead")] { (v.t("thư chết", "dead")) }
                    option value="rejected" selected[q.queue.as_deref() == Some("rejected")] { (v.t("bị loại", "rejected")) }
                }
            }
            label { (v.t("Nơi gửi", "Source")) input name="source" value=(opt(&q.source)); }
            label { (v.t("Nơi nhận", "Destination")) input name="dest" value=(opt(&q.dest)); }
            label { (v.t("Lý do", "Reason")) input name="reason" value=(opt(&q.reason)); }
            button type="submit" { (v.t("Lọc", "Filter")) }
        }
        p.muted { (out.items.len()) " " (v.t("thư khớp", "letters match")) " (" (v.t("đã xem", "scanned")) " " (out.scanned) ")" }
        @if work && !out.items.is_empty() {
            form.inline method="post" action="/console/dead/act" {
                input type="hidden" name="csrf" value=(v.csrf);
                input type="hidden" name="action" value="retry";
                @for (k, val) in q.fields() { input type="hidden" name=(k) value=(val); }
                button type="submit" { (v.t("Gửi lại các thư này…", "Retry these…")) }
            }
            " "
            form.inline method="post" action="/console/dead/act" {
                input type="hidden" name="csrf" value=(v.csrf);
                input type="hidden" name="action" value="drop";
                @for (k, val) in q.fields() { input type="hidden" name=(k) value=(val); }
                button.danger type="submit" { (v.t("Hủy các thư này…", "Drop these…")) }
            }
        }
        div.scroll { table {
            thead { tr {
                th { (v.t("Hàng đợi", "Queue")) }
                th { (v.t("Mã văn bản", "Message id")) }
                th { (v.t("Nơi gửi", "Source")) }
                th { (v.t("Nơi nhận", "Destination")) }
                th { (v.t("Lý do", "Reason")) }
                th { (v.t("Lúc", "Died")) }
                th.n { (v.t("Kích thước", "Size")) }
            } }
            tbody { @for i in &out.items { tr {
                td { (i.queue) }
                td { code { (i.message_id.clone().unwrap_or_default()) } }
                td { code { (i.source.clone().unwrap_or_default()) } }
                td { code { (i.dest.clone().unwrap_or_default()) } }
                td { (i.reason) div.muted { (i.detail) } }
                td { (i.died_at.as_deref().map_or_else(|| "—".into(), |t| p.when_text(t))) }
                td.n { (num(i.size as u64)) }
            } } }
        } }
    };
    v.page(
        "/console/queues",
        v.t("Thư chết và thư bị loại", "Dead and rejected letters"),
        body,
    )
}

#[derive(Deserialize)]
pub(super) struct ActForm {
    #[serde(default)]
    csrf: String,
    action: String,
    #[serde(default)]
    confirm: Option<String>,
    #[serde(flatten)]
    q: DeadQuery,
}

pub(super) async fn dead_act(State(hub): Hs, v: Viewer, Form(f): Form<ActForm>) -> Response {
    if let Err(r) = v.may_post(&f.csrf, Permission::WorkQueues) {
        return *r;
    }
    let (action, what) = match f.action.as_str() {
        "retry" => (Action::Retry { rate: RETRY_RATE }, v.t("Gửi lại", "Retry")),
        "drop" => (Action::Drop, v.t("Hủy vĩnh viễn", "Drop for good")),
        _ => return v.fail(axum::http::StatusCode::BAD_REQUEST, "action"),
    };
    if f.confirm.as_deref() != Some("yes") {
        let n = match dead::run(&hub, &v.caller.name, &f.q.filter(), Action::List).await {
            Ok(o) => o.items.len(),
            Err(e) => return v.error(e),
        };
        let mut fields = f.q.fields();
        fields.push(("action", f.action.clone()));
        let text = format!("{what} {n} {}?", v.t("thư", "letters"));
        return confirm(&v, "/console/dead/act", &text, &fields);
    }
    match dead::run(&hub, &v.caller.name, &f.q.filter(), action).await {
        Ok(o) => v.page(
            "/console/queues",
            v.t("Đã xử lý thư", "Letters handled"),
            html! {
                p.notice { (what) ": " (o.items.len()) " " (v.t("thư", "letters")) }
                p { a href="/console/dead" { (v.t("Về danh sách thư", "Back to the letters")) } }
            },
        ),
        Err(e) => v.error(e),
    }
}

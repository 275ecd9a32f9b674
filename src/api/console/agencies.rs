//! `/console/agencies…`: the agencies with their presence; one agency's
//! keys, inbox, presence history and traffic; enable or disable it, and
//! rotate its key (each behind an explicit confirmation; a new secret is
//! shown once).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::confirm::{confirm, confirm_enabled, EnabledForm};
use super::view::{bars, num};
use super::{blocking, Viewer};
use crate::api::Hs;
use crate::core::code::AgencyCode;
use crate::core::role::Permission;
use crate::core::time::now_ms;
use crate::operator::agency::{self, AgencyError};
use crate::operator::presence;
use crate::operator::report::By;
use crate::operator::reporting;

/// Days of presence history and traffic shown.
const DAYS: i64 = 30;

pub(super) async fn list(State(hub): Hs, v: Viewer) -> Response {
    if let Err(r) = v.require(Permission::ViewOwn) {
        return *r;
    }
    let scope = v.caller.scope();
    let rows = match presence::list(&hub) {
        Ok(rows) => rows,
        Err(e) => return v.error(e),
    };
    let p = &v.prefs;
    let body = html! {
        div.scroll { table {
            thead { tr {
                th { (v.t("Mã đơn vị", "Agency code")) }
                th { (v.t("Tên", "Name")) }
                th { (v.t("Trạng thái", "Presence")) }
                th { (v.t("Từ lúc", "Since")) }
            } }
            tbody {
                @for a in rows.iter().filter(|a| scope.sees_text(&a.code)) {
                    tr {
                        td { a href=(format!("/console/agencies/{}", a.code)) { code { (a.code) } } }
                        td { (a.name) }
                        td { (presence_label(&v, &a.state)) }
                        td { (a.since.as_deref().map_or_else(|| "—".into(), |t| p.when_text(t))) }
                    }
                }
            }
        } }
    };
    v.page("/console/agencies", v.t("Đơn vị", "Agencies"), body)
}

fn presence_label(v: &Viewer, state: &str) -> Markup {
    match state {
        "online" => html! { span.ok { (v.t("trực tuyến", "online")) } },
        "offline" => html! { span.warn { (v.t("ngoại tuyến", "offline")) } },
        "disabled" => html! { span.muted { (v.t("đã khóa", "disabled")) } },
        _ => html! { span.muted { (v.t("chưa rõ", "unknown")) } },
    }
}

/// `code` if it parses and is in the viewer's scope, else the 404 page.
fn in_scope(v: &Viewer, code: &str) -> Result<AgencyCode, Box<Response>> {
    match agency::code_of(code) {
        Ok(c) if v.caller.scope().sees(&c) => Ok(c),
        Ok(c) => Err(Box::new(v.error(AgencyError::NotRegistered(c)))),
        Err(e) => Err(Box::new(v.error(e))),
    }
}

pub(super) async fn show(State(hub): Hs, v: Viewer, Path(code): Path<String>) -> Response {
    if let Err(r) = v.require(Permission::ViewOwn) {
        return *r;
    }
    let c = match in_scope(&v, &code) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let a = match agency::show(&hub, c.as_str()).await {
        Ok(a) => a,
        Err(e) => return v.error(e),
    };
    let since = now_ms() - DAYS * 86_400_000;
    let history = match presence::history(&hub, c.as_str(), since, None) {
        Ok(h) => h,
        Err(e) => return v.error(e),
    };
    let report =
        match reporting::report(&hub, Some(since), None, By::Day, v.prefs.zone.clone()).await {
            Ok(r) => v.caller.scope().report(r),
            Err(e) => return v.error(e),
        };
    let rows: Vec<_> = report
        .report
        .rows
        .iter()
        .filter(|r| r.agency == a.code)
        .collect();
    let p = &v.prefs;
    let body = html! {
        p { b { (a.name) } " · " code { (a.code) } " · "
            @if a.enabled { span.ok { (v.t("đang hoạt động", "enabled")) } } @else { span.bad { (v.t("đã khóa", "disabled")) } } }
        div.cards {
            div.card { b { (a.inbox_messages.map_or_else(|| "—".into(), |m| num(m.into()))) } span { (v.t("văn bản chờ trong hộp thư", "messages in its inbox")) } }
            div.card { b { (a.inbox_consumers.map_or_else(|| "—".into(), |m| m.to_string())) } span { (v.t("kết nối đang nhận", "consumers on its inbox")) } }
            div.card { b { (p.when_text(&a.created_at)) } span { (v.t("đăng ký lúc", "registered")) } }
        }
        h2 { (v.t("Khóa truy cập", "Access keys")) }
        div.scroll { table {
            thead { tr { th { (v.t("Khóa", "Key")) } th { (v.t("Tạo lúc", "Created")) } th { (v.t("Hết hạn", "Expires")) } th { (v.t("Trục ký bằng", "Hub signs with")) } } }
            tbody { @for k in &a.access_keys { tr {
                td { code { (k.access_key) } }
                td { (p.when_text(&k.created_at)) }
                td { (k.expires_at.as_deref().map_or_else(|| "—".into(), |t| p.when_text(t))) }
                td { @if k.hub_signs { "✔" } }
            } } }
        } }
        @if v.caller.may(Permission::EnableAgencies) || v.caller.may(Permission::IssueKeys) {
            h2 { (v.t("Thao tác", "Actions")) }
            @if v.caller.may(Permission::EnableAgencies) {
                form.inline method="post" action=(format!("/console/agencies/{}/enabled", a.code)) {
                    input type="hidden" name="csrf" value=(v.csrf);
                    input type="hidden" name="enabled" value=(if a.enabled { "false" } else { "true" });
                    button.danger[a.enabled] type="submit" { @if a.enabled { (v.t("Khóa đơn vị…", "Disable…")) } @else { (v.t("Mở khóa đơn vị…", "Enable…")) } }
                }
                " "
            }
            @if v.caller.may(Permission::IssueKeys) {
                form.inline method="post" action=(format!("/console/agencies/{}/rotate", a.code)) {
                    input type="hidden" name="csrf" value=(v.csrf);
                    label { (v.t("Khóa cũ còn hiệu lực", "Old keys stay valid for"))
                        select name="grace" {
                            option value="0" { (v.t("0 (dừng ngay)", "0 (stop at once)")) }
                            option value="3600" { "1 h" }
                            option value="86400" selected { "24 h" }
                            option value="604800" { (v.t("7 ngày", "7 days")) }
                        }
                    }
                    button.danger type="submit" { (v.t("Đổi khóa…", "Rotate key…")) }
                }
            }
        }
        h2 { (v.t("Lưu lượng 30 ngày", "Traffic, 30 days")) }
        (bars(&rows.iter().map(|r| (r.period.clone(), r.sent + r.received)).collect::<Vec<_>>(), v.t("Văn bản gửi và nhận mỗi ngày", "Envelopes sent and received per day")))
        div.scroll { table {
            thead { tr { th { (v.t("Ngày", "Day")) } th.n { (v.t("Gửi", "Sent")) } th.n { (v.t("Nhận", "Received")) } th.n { (v.t("Đã xác nhận 01", "Confirmed 01")) } th.n { (v.t("Trả lại", "Bounced")) } th.n { (v.t("Trễ trung vị (s)", "Median latency (s)")) } } }
            tbody { @for r in &rows { tr {
                td { (r.period) } td.n { (r.sent) } td.n { (r.received) } td.n { (r.delivered) } td.n { (r.bounced + r.expired) }
                td.n { (r.latency_median_s.map_or_else(|| "—".into(), |s| format!("{s:.1}"))) }
            } } }
        } }
        h2 { (v.t("Lịch sử kết nối 30 ngày", "Connection history, 30 days")) }
        div.scroll { table {
            thead { tr { th { (v.t("Lúc", "At")) } th { (v.t("Sự kiện", "Event")) } th { (v.t("Nguyên nhân", "Cause")) } } }
            tbody { @for e in history.entries.iter().rev().take(200) { tr {
                td { (p.when(e.at_ms)) } td { (e.event) } td { (e.cause) }
            } } }
        } }
    };
    v.page(
        "/console/agencies",
        &format!("{} {}", v.t("Đơn vị", "Agency"), a.code),
        body,
    )
}

pub(super) async fn set_enabled(
    State(hub): Hs,
    v: Viewer,
    Path(code): Path<String>,
    Form(f): Form<EnabledForm>,
) -> Response {
    if let Err(r) = v.may_post(&f.csrf, Permission::EnableAgencies) {
        return *r;
    }
    let c = match in_scope(&v, &code) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if f.confirm.as_deref() != Some("yes") {
        return confirm_enabled(
            &v,
            &format!("/console/agencies/{c}/enabled"),
            f.enabled,
            v.t("đơn vị", "agency"),
            c.as_str(),
            v.t(
                "Văn bản gửi đến đơn vị sẽ bị trả lại và đơn vị không gửi được nữa.",
                "Envelopes to it will bounce and it can no longer send.",
            ),
        );
    }
    let (hub2, by) = (hub.clone(), v.caller.name.clone());
    match blocking(move || agency::set_enabled(&hub2, &by, c.as_str(), f.enabled)).await {
        Ok(a) => Redirect::to(&format!("/console/agencies/{}", a.code)).into_response(),
        Err(e) => v.error(e),
    }
}

#[derive(Deserialize)]
pub(super) struct RotateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    grace: u64,
    #[serde(default)]
    confirm: Option<String>,
}

pub(super) async fn rotate(
    State(hub): Hs,
    v: Viewer,
    Path(code): Path<String>,
    Form(f): Form<RotateForm>,
) -> Response {
    if let Err(r) = v.may_post(&f.csrf, Permission::IssueKeys) {
        return *r;
    }
    let c = match in_scope(&v, &code) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if f.confirm.as_deref() != Some("yes") {
        let what = format!(
            "{} {c}? {} {} s.",
            v.t("Cấp khóa mới cho đơn vị", "Issue a new key to agency"),
            v.t(
                "Các khóa cũ còn hiệu lực thêm",
                "Its older keys stay valid for"
            ),
            f.grace
        );
        return confirm(
            &v,
            &format!("/console/agencies/{c}/rotate"),
            &what,
            &[("grace", f.grace.to_string())],
        );
    }
    let (hub2, by) = (hub.clone(), v.caller.name.clone());
    let grace = Duration::from_secs(f.grace.min(90 * 86_400));
    match blocking(move || agency::rotate_key(&hub2, &by, c.as_str(), grace)).await {
        Ok(r) => {
            let body = html! {
                div.secret {
                    p { b { (v.t("Khóa mới — chỉ hiển thị một lần. Hãy chuyển cho đơn vị qua kênh an toàn.", "The new key — shown once. Hand it to the agency over a safe channel.")) } }
                    p { (v.t("Khóa truy cập: ", "Access key: ")) code { (r.access_key) } }
                    p { (v.t("Bí mật: ", "Secret: ")) code.mono { (r.secret) } }
                }
                p { a href=(format!("/console/agencies/{}", r.code)) { (v.t("Về trang đơn vị", "Back to the agency")) } }
            };
            v.page("/console/agencies", v.t("Đã đổi khóa", "Key rotated"), body)
        }
        Err(e) => v.error(e),
    }
}

//! `/console/accounts`: the operator accounts (admins only): list, add,
//! disable and enable.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::confirm::{confirm_enabled, EnabledForm};
use super::{blocking, non_empty, Viewer};
use crate::api::Hs;
use crate::core::role::{Permission, Role, ROLES};
use crate::operator::accounts;

pub(super) async fn list(State(hub): Hs, v: Viewer) -> Response {
    if let Err(r) = v.require(Permission::ManageAccounts) {
        return *r;
    }
    let hub2 = hub.clone();
    let all = match blocking(move || accounts::list(&hub2)).await {
        Ok(a) => a,
        Err(e) => return v.error(e),
    };
    let p = &v.prefs;
    let body = html! {
        div.scroll { table {
            thead { tr {
                th { (v.t("Tên", "Name")) }
                th { (v.t("Vai trò", "Role")) }
                th { (v.t("Đơn vị", "Agency")) }
                th { (v.t("Trạng thái", "State")) }
                th.n { (v.t("Mã truy cập API", "API tokens")) }
                th { (v.t("Đặt mật khẩu lúc", "Password set")) }
                th {}
            } }
            tbody { @for a in &all { tr {
                td { (a.name) }
                td { (a.role.as_str()) }
                td { (a.agency.clone().unwrap_or_default()) }
                td { @if a.enabled { span.ok { (v.t("hoạt động", "enabled")) } } @else { span.muted { (v.t("đã khóa", "disabled")) } } }
                td.n { (a.tokens.len()) }
                td { (p.when_text(&a.password_set)) }
                td { @if a.name != v.caller.name {
                    form.inline method="post" action=(format!("/console/accounts/{}/enabled", a.name)) {
                        input type="hidden" name="csrf" value=(v.csrf);
                        input type="hidden" name="enabled" value=(if a.enabled { "false" } else { "true" });
                        button.plain type="submit" { @if a.enabled { (v.t("Khóa…", "Disable…")) } @else { (v.t("Mở khóa…", "Enable…")) } }
                    }
                } }
            } } }
        } }
        h2 { (v.t("Thêm tài khoản", "Add an account")) }
        form.stack method="post" action="/console/accounts" {
            input type="hidden" name="csrf" value=(v.csrf);
            label { (v.t("Tên (a-z, 0-9, . _ -)", "Name (a-z, 0-9, . _ -)")) input name="name" required pattern="[a-z0-9][a-z0-9._-]{1,63}"; }
            label { (v.t("Vai trò", "Role"))
                select name="role" { @for r in ROLES { option value=(r.as_str()) { (r.as_str()) } } }
            }
            label { (v.t("Mã đơn vị (chỉ với vai trò agency)", "Agency code (agency role only)")) input name="agency"; }
            label { (v.t("Mật khẩu (ít nhất 12 ký tự)", "Password (at least 12 characters)")) input name="password" type="password" autocomplete="new-password" required minlength="12"; }
            button type="submit" { (v.t("Thêm", "Add")) }
        }
    };
    v.page("/console/accounts", v.t("Tài khoản", "Accounts"), body)
}

#[derive(Deserialize)]
pub(super) struct AddForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default, deserialize_with = "non_empty")]
    agency: Option<String>,
    #[serde(default)]
    password: String,
}

pub(super) async fn add(State(hub): Hs, v: Viewer, Form(f): Form<AddForm>) -> Response {
    if let Err(r) = v.may_post(&f.csrf, Permission::ManageAccounts) {
        return *r;
    }
    let Some(role) = Role::parse(&f.role) else {
        return v.fail(axum::http::StatusCode::BAD_REQUEST, "role");
    };
    let (hub2, by) = (hub.clone(), v.caller.name.clone());
    match blocking(move || {
        accounts::add(
            &hub2,
            &by,
            f.name.trim(),
            role,
            f.agency.as_deref(),
            &f.password,
        )
    })
    .await
    {
        Ok(_) => Redirect::to("/console/accounts").into_response(),
        Err(e) => v.error(e),
    }
}

pub(super) async fn set_enabled(
    State(hub): Hs,
    v: Viewer,
    Path(name): Path<String>,
    Form(f): Form<EnabledForm>,
) -> Response {
    if let Err(r) = v.may_post(&f.csrf, Permission::ManageAccounts) {
        return *r;
    }
    if f.confirm.as_deref() != Some("yes") {
        return confirm_enabled(
            &v,
            &format!("/console/accounts/{name}/enabled"),
            f.enabled,
            v.t("tài khoản", "account"),
            &name,
            v.t(
                "Phiên đăng nhập và mã truy cập API của tài khoản hết hiệu lực ngay.",
                "Its sessions and API tokens stop at once.",
            ),
        );
    }
    let (hub2, by) = (hub.clone(), v.caller.name.clone());
    match blocking(move || accounts::set_enabled(&hub2, &by, &name, f.enabled)).await {
        Ok(_) => Redirect::to("/console/accounts").into_response(),
        Err(e) => v.error(e),
    }
}

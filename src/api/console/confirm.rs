//! Confirmation pages: every change a console form asks for is shown
//! first, with what it will do, and done only when confirmed (the same form
//! again with `confirm=yes` and the session's CSRF token).

use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::Viewer;

/// The form of an enable or disable button.
#[derive(Deserialize)]
pub(super) struct EnabledForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub(super) csrf: String,
    /// Enable (or disable).
    pub(super) enabled: bool,
    /// `yes` once confirmed.
    #[serde(default)]
    pub(super) confirm: Option<String>,
}

/// A confirmation page: what will happen, and the form that does it.
pub(super) fn confirm(v: &Viewer, action: &str, what: &str, fields: &[(&str, String)]) -> Response {
    let body = html! {
        div.confirm {
            p { (what) }
            form method="post" action=(action) {
                input type="hidden" name="csrf" value=(v.csrf);
                @for (k, val) in fields { input type="hidden" name=(k) value=(val); }
                input type="hidden" name="confirm" value="yes";
                button.danger type="submit" { (v.t("Xác nhận", "Confirm")) }
            }
            p { a href="/console/" { (v.t("Hủy", "Cancel")) } }
        }
    };
    v.page("", v.t("Xác nhận thao tác", "Confirm the action"), body)
}

/// The confirmation page of enabling or disabling `name` (a `thing`:
/// agency, account), saying what disabling does.
pub(super) fn confirm_enabled(
    v: &Viewer,
    action: &str,
    enabled: bool,
    thing: &str,
    name: &str,
    disabling_does: &str,
) -> Response {
    let what = if enabled {
        format!("{} {thing} {name}?", v.t("Mở khóa", "Enable"))
    } else {
        format!(
            "{} {thing} {name}? {disabling_does}",
            v.t("Khóa", "Disable")
        )
    };
    confirm(v, action, &what, &[("enabled", enabled.to_string())])
}

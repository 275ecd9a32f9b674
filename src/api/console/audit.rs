//! `/console/audit`: the newest audit entries (who did what, when) and the
//! chain check on demand.

use axum::extract::{Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::{blocking, Viewer};
use crate::api::Hs;
use crate::core::role::Permission;
use crate::operator::audit;

/// Entries shown.
const SHOWN: usize = 200;

#[derive(Deserialize, Default)]
pub(super) struct AuditQuery {
    #[serde(default)]
    verify: Option<String>,
}

/// The fields of an entry but its account, as `k=v` pairs.
fn summary(fields: &serde_json::Value) -> String {
    match fields.as_object() {
        Some(m) => m
            .iter()
            .filter(|(k, _)| *k != "account")
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" · "),
        None => String::new(),
    }
}

pub(super) async fn page(State(hub): Hs, v: Viewer, Query(q): Query<AuditQuery>) -> Response {
    if let Err(r) = v.require(Permission::ReadAudit) {
        return *r;
    }
    let hub2 = hub.clone();
    let verify = q.verify.is_some();
    let got = blocking(move || {
        let report = if verify {
            Some(audit::verify(&hub2)?)
        } else {
            None
        };
        Ok::<_, crate::state::audit::AuditError>((audit::tail(&hub2, SHOWN, None)?, report))
    })
    .await;
    let (entries, report) = match got {
        Ok(g) => g,
        Err(e) => return v.error(e),
    };
    let p = &v.prefs;
    let body = html! {
        form.search method="get" action="/console/audit" {
            input type="hidden" name="verify" value="1";
            button type="submit" { (v.t("Kiểm tra chuỗi băm", "Verify the hash chain")) }
        }
        @if let Some(r) = &report {
            @if r.ok {
                p.notice role="status" { "✔ " (v.t("Chuỗi nhật ký nguyên vẹn", "The audit chain is intact")) ": " (r.entries) " " (v.t("mục", "entries")) }
            } @else {
                p.error role="alert" { "✘ " (v.t("Chuỗi nhật ký bị hỏng", "The audit chain is broken"))
                    @if let Some(b) = &r.broken { ": #" (b.seq) " — " (b.problem) } }
            }
        }
        div.scroll { table {
            thead { tr {
                th.n { "#" }
                th { (v.t("Lúc", "At")) }
                th { (v.t("Tài khoản", "Account")) }
                th { (v.t("Loại", "Kind")) }
                th { (v.t("Nội dung", "What")) }
            } }
            tbody { @for e in entries.iter().rev() { tr {
                td.n { (e.seq) }
                td { (p.when_text(&e.at)) }
                td { (e.fields.get("account").and_then(|a| a.as_str()).unwrap_or("—")) }
                td { (e.kind) }
                td { (summary(&e.fields)) }
            } } }
        } }
    };
    v.page(
        "/console/audit",
        v.t("Nhật ký kiểm toán", "Audit log"),
        body,
    )
}

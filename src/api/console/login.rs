//! `/console/login` and `/console/logout`: password login into a console
//! session, throttled, and its end.
//!
//! Invariants: after [`FREE_TRIES`] failed logins in a row an account name
//! is locked for a time that doubles with each further failure (up to
//! [`MAX_LOCK_MS`]), and a locked name is refused before any password is
//! checked; at most [`CHECKS_AT_ONCE`] argon2 checks run at once, so
//! anonymous logins cannot take the hub's CPU; a failed login says the
//! same whether the name exists or not; a login is an audit entry naming
//! the account, a failure a log line and a metric.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;
use serde::Deserialize;

use super::view::{failure, frame, Prefs};
use super::{blocking, https, logins, same_origin, Viewer, SESSION_COOKIE};
use crate::api::Hs;
use crate::core::text::Escaped;
use crate::core::time::now_ms;
use crate::operator::Hub;
use crate::state::audit::AuditEvent;

/// Failed logins in a row an account name may have before it is locked.
pub(super) const FREE_TRIES: u32 = 5;
/// The longest lock, ms.
pub(super) const MAX_LOCK_MS: i64 = 15 * 60_000;
/// argon2 checks at once.
const CHECKS_AT_ONCE: usize = 2;

#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u32,
    until_ms: i64,
    last_ms: i64,
}

/// Failed logins by account name, on this instance.
pub(super) struct Throttle {
    failures: Mutex<HashMap<String, Failures>>,
    checks: tokio::sync::Semaphore,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            failures: Mutex::default(),
            checks: tokio::sync::Semaphore::new(CHECKS_AT_ONCE),
        }
    }
}

impl Throttle {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `name` stays locked, ms (`None`: not locked).
    pub(super) fn locked(&self, name: &str, now: i64) -> Option<i64> {
        self.map()
            .get(name)
            .map(|f| f.until_ms - now)
            .filter(|left| *left > 0)
    }

    /// Counts a failed login of `name`.
    pub(super) fn failed(&self, name: &str, now: i64) {
        let mut m = self.map();
        if m.len() > 10_000 {
            m.retain(|_, f| now - f.last_ms < 3_600_000);
        }
        let f = m.entry(name.to_owned()).or_default();
        f.count += 1;
        f.last_ms = now;
        if f.count >= FREE_TRIES {
            let doublings = (f.count - FREE_TRIES).min(20);
            f.until_ms = now + (1_000i64 << doublings).min(MAX_LOCK_MS);
        }
    }

    /// Forgets `name`'s failures.
    pub(super) fn succeeded(&self, name: &str) {
        self.map().remove(name);
    }
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

fn login_page(p: &Prefs, status: StatusCode, error: Option<&str>, name: &str) -> Response {
    let l = p.lang;
    frame(
        status,
        p,
        None,
        "",
        l.t("Đăng nhập", "Log in"),
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.stack method="post" action="/console/login" {
                label { (l.t("Tên tài khoản", "Account name"))
                    input name="name" value=(name) autocomplete="username" required autofocus; }
                label { (l.t("Mật khẩu", "Password"))
                    input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { (l.t("Đăng nhập", "Log in")) }
            }
        },
    )
}

/// `GET /console/login`.
pub(super) async fn form(State(hub): Hs, headers: HeaderMap) -> Response {
    login_page(
        &Prefs::of(&headers, hub.config.zone()),
        StatusCode::OK,
        None,
        "",
    )
}

/// `POST /console/login`.
pub(super) async fn submit(
    State(hub): Hs,
    Extension(throttle): Extension<Arc<Throttle>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let p = Prefs::of(&headers, hub.config.zone());
    let l = p.lang;
    if !same_origin(&headers) {
        return failure(
            StatusCode::FORBIDDEN,
            &p,
            None,
            l.t(
                "Yêu cầu đến từ một trang khác.",
                "The request came from another site.",
            ),
        );
    }
    let name = f.name.trim().to_lowercase();
    let now = now_ms();
    if let Some(left) = throttle.locked(&name, now) {
        crate::core::metrics::console_login(false);
        let msg = format!(
            "{} {} s.",
            l.t(
                "Sai quá nhiều lần; hãy thử lại sau",
                "Too many failed logins; try again in"
            ),
            (left + 999) / 1000
        );
        return login_page(&p, StatusCode::TOO_MANY_REQUESTS, Some(&msg), &name);
    }
    let Ok(_permit) = throttle.checks.acquire().await else {
        return failure(StatusCode::SERVICE_UNAVAILABLE, &p, None, "shutting down");
    };
    let (hub2, n2) = (hub.clone(), name.clone());
    let result = blocking(move || {
        let a = hub2.accounts.login(&n2, &f.password)?;
        let session = logins(&hub2).begin(&a.name, now_ms())?;
        Ok::<_, crate::state::accounts::AccountError>((a, session))
    })
    .await;
    match result {
        Ok((account, (token, _))) => {
            throttle.succeeded(&name);
            crate::core::metrics::console_login(true);
            hub.router.audit().record(
                AuditEvent::admin("console-login", &account.name, String::new()).by(&account.name),
            );
            tracing::info!(account = %account.name, "console login");
            let mut r = Redirect::to("/console/").into_response();
            if let Ok(v) = HeaderValue::from_str(&session_cookie(&hub, &token, None)) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(crate::state::accounts::AccountError::BadLogin) => {
            throttle.failed(&name, now);
            crate::core::metrics::console_login(false);
            tracing::warn!(account = %Escaped(&name), "console login failed");
            login_page(
                &p,
                StatusCode::UNAUTHORIZED,
                Some(l.t(
                    "Sai tên tài khoản hoặc mật khẩu.",
                    "Wrong account name or password.",
                )),
                &name,
            )
        }
        Err(e) => failure(StatusCode::SERVICE_UNAVAILABLE, &p, None, &e.to_string()),
    }
}

/// The `Set-Cookie` value of session `token` (`max_age` 0: removes it).
fn session_cookie(hub: &Hub, token: &str, max_age: Option<u32>) -> String {
    let mut c = format!("{SESSION_COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict");
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    if https(hub) {
        c.push_str("; Secure");
    }
    c
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /console/logout`.
pub(super) async fn logout(State(hub): Hs, v: Viewer, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = v.check_csrf(&f.csrf) {
        return *r;
    }
    let (hub2, token) = (hub.clone(), v.token.clone());
    if let Err(e) = blocking(move || logins(&hub2).end(&token)).await {
        return v.fail(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    let mut r = Redirect::to("/console/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&hub, "", Some(0))) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_locked_after_five_failures_for_a_doubling_time() {
        let t = Throttle::default();
        for i in 0..FREE_TRIES - 1 {
            t.failed("lan", i64::from(i));
            assert_eq!(t.locked("lan", i64::from(i)), None);
        }
        t.failed("lan", 10);
        assert_eq!(t.locked("lan", 10), Some(1_000));
        assert_eq!(t.locked("lan", 1_010), None);
        t.failed("lan", 2_000);
        assert_eq!(t.locked("lan", 2_000), Some(2_000));
        for _ in 0..30 {
            t.failed("lan", 5_000);
        }
        assert_eq!(t.locked("lan", 5_000), Some(MAX_LOCK_MS));
        assert_eq!(t.locked("mai", 5_000), None);
        t.succeeded("lan");
        assert_eq!(t.locked("lan", 5_000), None);
    }
}

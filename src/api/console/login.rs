//! `/console/login` and `/console/logout`: password login into a console
//! session, throttled, and its end.
//!
//! Invariants: after [`FREE_TRIES`] failed logins in a row an account name
//! is locked for a time that doubles with each further failure (up to
//! [`MAX_LOCK_MS`]), counted in the store so that every instance sharing it
//! holds the same lock, and a locked name is refused before any password
//! is checked; at most [`CHECKS_AT_ONCE`] argon2 checks run at once, so
//! anonymous logins cannot take the hub's CPU; a failed login says the
//! same whether the name exists or not; a login is an audit entry naming
//! the account, a failure a log line and a metric.

use std::sync::Arc;

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

/// When a name with `count` failures in a row at `now` is locked until:
/// not before [`FREE_TRIES`], then 1 s doubling with each failure up to
/// [`MAX_LOCK_MS`].
pub(super) fn lock_until(count: u32, now: i64) -> i64 {
    if count < FREE_TRIES {
        return 0;
    }
    let doublings = (count - FREE_TRIES).min(20);
    now + (1_000i64 << doublings).min(MAX_LOCK_MS)
}

/// What limits password checks on this instance (the failures themselves
/// are counted in the store, for every instance).
pub(super) struct Throttle {
    checks: tokio::sync::Semaphore,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            checks: tokio::sync::Semaphore::new(CHECKS_AT_ONCE),
        }
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
    if let Err(refused) = same_origin(&headers, &p) {
        return *refused;
    }
    let name = f.name.trim().to_lowercase();
    let now = now_ms();
    let (hub2, n2) = (hub.clone(), name.clone());
    let seen = blocking(move || logins(&hub2).failures(&n2)).await;
    let locked = match seen {
        Ok(f) => Some(f.until_ms - now).filter(|left| *left > 0),
        Err(e) => return failure(StatusCode::SERVICE_UNAVAILABLE, &p, None, &e.to_string()),
    };
    if let Some(left) = locked {
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
        let book = logins(&hub2);
        book.succeeded(&a.name)?;
        let session = book.begin(&a.name, now_ms())?;
        Ok::<_, crate::state::accounts::AccountError>((a, session))
    })
    .await;
    match result {
        Ok((account, (token, _))) => {
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
            // A name no account can have is not kept (it would only grow
            // the store); any other is counted, whether it exists or not.
            if crate::state::accounts::is_name(&name) {
                let (hub2, n2) = (hub.clone(), name.clone());
                if let Err(e) = blocking(move || logins(&hub2).failed(&n2, now, lock_until)).await {
                    tracing::warn!(error = %e, "a failed console login was not counted");
                }
            }
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
    use crate::state::logins::{Lifetimes, Logins};
    use crate::state::store::Store;

    #[test]
    fn a_name_is_locked_after_five_failures_for_a_doubling_time() {
        assert_eq!(lock_until(FREE_TRIES - 1, 0), 0);
        assert_eq!(lock_until(FREE_TRIES, 10), 1_010);
        assert_eq!(lock_until(FREE_TRIES + 1, 10), 2_010);
        assert_eq!(lock_until(FREE_TRIES + 40, 10), 10 + MAX_LOCK_MS);
    }

    #[test]
    fn failures_are_counted_in_the_store_for_every_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Two instances' views of one store.
        let (a, b) = (
            Logins::new(store.clone(), Lifetimes::default()),
            Logins::new(store, Lifetimes::default()),
        );
        for i in 0..FREE_TRIES - 1 {
            let f = if i % 2 == 0 { &a } else { &b }
                .failed("lan", 100, lock_until)
                .unwrap();
            assert_eq!(f.until_ms, 0);
        }
        let f = a.failed("lan", 100, lock_until).unwrap();
        assert_eq!((f.count, f.until_ms), (FREE_TRIES, 1_100));
        assert_eq!(b.failures("lan").unwrap().until_ms, 1_100);
        assert_eq!(b.failures("mai").unwrap().count, 0);
        b.succeeded("lan").unwrap();
        assert_eq!(a.failures("lan").unwrap().count, 0);
        // Counts are forgotten an hour after the last failure.
        a.failed("mai", 100, lock_until).unwrap();
        a.sweep(100 + crate::state::logins::FAILURES_KEPT_MS - 1)
            .unwrap();
        assert_eq!(a.failures("mai").unwrap().count, 1);
        a.sweep(100 + crate::state::logins::FAILURES_KEPT_MS)
            .unwrap();
        assert_eq!(a.failures("mai").unwrap().count, 0);
    }
}

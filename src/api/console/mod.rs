//! The operators' web console, served on the admin address under
//! `/console/`: server-rendered pages (maud), one style sheet built into the
//! binary, no script and nothing fetched from elsewhere. One file per page
//! group; this file holds the routes, the logged-in [`Viewer`], CSRF and
//! origin checks, and the answer headers.
//!
//! Invariants:
//! - every page but the login page, the style sheet and the preference
//!   switch needs a live session ([`crate::state::logins`]) of an enabled
//!   account whose password was not set since the session began; without
//!   one it sends the browser to the login page;
//! - every page and action asks [`Viewer::require`] for its permission
//!   before any work, the same [`Permission`] the admin API asks, so what a
//!   role may not do is refused by the server (403), not only hidden;
//! - every POST carries the session's CSRF token, and a POST whose `Origin`
//!   is another site is refused; the session cookie is `HttpOnly`,
//!   `SameSite=Strict`, and `Secure` whenever the admin address is HTTPS;
//! - what is shown is cut to the viewer's scope (an agency account sees its
//!   own agency's traffic only), as in the admin API;
//! - every answer forbids framing, scripts and caching
//!   (`Content-Security-Policy`, `Cache-Control: no-store`).

mod accounts;
mod agencies;
mod alerts;
mod audit;
mod confirm;
mod envelopes;
mod login;
mod overview;
mod queues;
mod reports;
mod view;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::api::ApiError;
use crate::core::role::Permission;
use crate::operator::scope::Caller;
use crate::operator::Hub;
use crate::state::logins::{Lifetimes, Logins};
use view::{cookie, failure, Prefs};

/// The session cookie.
const SESSION_COOKIE: &str = "truc_console";

/// The console's routes, to merge into the admin API's.
pub(crate) fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(overview::page))
        .route("/console/assets/style.css", get(style))
        .route("/console/prefs", get(prefs))
        .route("/console/login", get(login::form).post(login::submit))
        .route("/console/logout", post(login::logout))
        .route("/console/agencies", get(agencies::list))
        .route("/console/agencies/{code}", get(agencies::show))
        .route(
            "/console/agencies/{code}/enabled",
            post(agencies::set_enabled),
        )
        .route("/console/agencies/{code}/rotate", post(agencies::rotate))
        .route("/console/envelopes", get(envelopes::search))
        .route("/console/envelopes/view", get(envelopes::show))
        .route("/console/queues", get(queues::list))
        .route("/console/queues/{code}/purge", post(queues::purge))
        .route("/console/dead", get(queues::dead))
        .route("/console/dead/act", post(queues::dead_act))
        .route("/console/reports", get(reports::page))
        .route("/console/reports.csv", get(reports::csv))
        .route("/console/audit", get(audit::page))
        .route("/console/alerts", get(alerts::page))
        .route("/console/accounts", get(accounts::list).post(accounts::add))
        .route(
            "/console/accounts/{name}/enabled",
            post(accounts::set_enabled),
        )
        .layer(Extension(Arc::new(login::Throttle::default())))
        .layer(axum::middleware::map_response(harden))
}

/// The headers every console answer carries.
async fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

async fn style() -> Response {
    let mut r = view::STYLE.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    r
}

#[derive(Deserialize)]
struct PrefsQuery {
    lang: Option<String>,
    tz: Option<String>,
}

/// `GET /console/prefs?lang=en|vi&tz=Zone`: keeps the choice in a cookie
/// and goes back to the overview.
async fn prefs(Query(q): Query<PrefsQuery>) -> Response {
    let mut r = Redirect::to("/console/").into_response();
    let mut set = |name: &str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{name}={value}; Path=/console; Max-Age=31536000; SameSite=Lax"
        )) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    };
    match q.lang.as_deref() {
        Some("en") => set("truc_lang", "en"),
        Some("vi") => set("truc_lang", "vi"),
        _ => {}
    }
    if let Some(z) = q.tz.as_deref() {
        if crate::core::zone::Zone::parse(z).is_ok() {
            set("truc_tz", &z.replace('/', "%2F"));
        }
    }
    r
}

/// The console sessions of `hub`.
fn logins(hub: &Hub) -> Logins {
    Logins::new(hub.store.clone(), Lifetimes::default())
}

/// Whether the admin address is served over HTTPS (cookies are `Secure`).
fn https(hub: &Hub) -> bool {
    hub.config.admin_tls_cert.is_some()
}

/// A logged-in browser: its account, session and preferences.
struct Viewer {
    caller: Caller,
    csrf: String,
    token: String,
    prefs: Prefs,
}

impl Viewer {
    /// `Ok` if the viewer may do `p`, else the 403 page.
    fn require(&self, p: Permission) -> Result<(), Box<Response>> {
        if self.caller.may(p) {
            Ok(())
        } else {
            let l = self.prefs.lang;
            Err(Box::new(self.fail(
                StatusCode::FORBIDDEN,
                &format!(
                    "{} {} ({}) {}",
                    l.t("Tài khoản", "Account"),
                    self.caller.name,
                    self.caller.role,
                    l.t("không được phép làm việc này.", "may not do this.")
                ),
            )))
        }
    }

    /// `Ok` if `given` is this session's CSRF token.
    fn check_csrf(&self, given: &str) -> Result<(), Box<Response>> {
        if bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(Box::new(self.fail(
                StatusCode::FORBIDDEN,
                self.prefs.lang.t(
                    "Biểu mẫu đã cũ hoặc không đến từ bảng điều khiển; hãy tải lại trang.",
                    "The form is stale or did not come from the console; reload the page.",
                ),
            )))
        }
    }

    /// `Ok` if a form carries this session's CSRF token and the viewer may
    /// do `p`: what every POST checks first.
    fn may_post(&self, csrf: &str, p: Permission) -> Result<(), Box<Response>> {
        self.check_csrf(csrf)?;
        self.require(p)
    }

    /// The page frame for this viewer.
    fn page(&self, active: &str, title: &str, body: maud::Markup) -> Response {
        view::page(
            &self.prefs,
            Some((&self.caller, &self.csrf)),
            active,
            title,
            body,
        )
    }

    /// An error page for this viewer.
    fn fail(&self, status: StatusCode, message: &str) -> Response {
        failure(
            status,
            &self.prefs,
            Some((&self.caller, &self.csrf)),
            message,
        )
    }

    /// The error page of an operator error, with the admin API's status.
    fn error<E>(&self, e: E) -> Response
    where
        ApiError: From<E>,
    {
        let ApiError(status, message) = ApiError::from(e);
        self.fail(status, &message)
    }

    /// `Lang::t` in the viewer's language.
    fn t<'a>(&self, vi: &'a str, en: &'a str) -> &'a str {
        self.prefs.lang.t(vi, en)
    }
}

/// Runs blocking `f` off the async threads.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `Ok` when a request's `Origin` (if it has one) is the site it came to,
/// else the refusal page.
fn same_origin(headers: &HeaderMap, p: &Prefs) -> Result<(), Box<Response>> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let bare = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .unwrap_or("");
            !host.is_empty() && bare == host
        }
    };
    if ok {
        return Ok(());
    }
    Err(Box::new(failure(
        StatusCode::FORBIDDEN,
        p,
        None,
        p.lang.t(
            "Yêu cầu đến từ một trang khác.",
            "The request came from another site.",
        ),
    )))
}

impl FromRequestParts<Arc<Hub>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, Response> {
        let prefs = Prefs::of(&parts.headers, hub.config.zone());
        if parts.method != Method::GET {
            same_origin(&parts.headers, &prefs).map_err(|r| *r)?;
        }
        let to_login = || Redirect::to("/console/login").into_response();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE).map(str::to_owned) else {
            return Err(to_login());
        };
        let hub2 = hub.clone();
        let t2 = token.clone();
        let found = blocking(move || {
            let now = crate::core::time::now_ms();
            let Some(login) = logins(&hub2).get(&t2, now).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let account = hub2
                .accounts
                .get(&login.account)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(account.and_then(|a| {
                (a.enabled && a.password_set_ms <= login.created_ms).then_some((a, login))
            }))
        })
        .await;
        match found {
            Ok(Some((account, login))) => Ok(Viewer {
                caller: Caller::of(&account),
                csrf: login.csrf,
                token,
                prefs,
            }),
            Ok(None) => Err(to_login()),
            Err(e) => Err(failure(StatusCode::SERVICE_UNAVAILABLE, &prefs, None, &e)),
        }
    }
}

/// Deserializes an optional form or query field, an empty one as `None`.
pub(super) fn non_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    Ok(s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
}

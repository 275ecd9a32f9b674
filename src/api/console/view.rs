//! What every console page shares: the language and time zone a browser
//! chose, the page frame (header, navigation by permission, footer), the
//! error page, and formatting of times, states and numbers.
//!
//! Invariants: every text shown exists in Vietnamese and English side by
//! side at the place it is used ([`Lang::t`]), Vietnamese by default;
//! everything interpolated goes through maud, which escapes it; times are
//! shown in the browser's chosen zone (the hub's `time_zone` by default).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use crate::core::role::Permission;
use crate::core::timeline::DeliveryState;
use crate::core::zone::Zone;
use crate::operator::scope::Caller;

/// A console language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lang {
    /// Tiếng Việt (the default).
    Vi,
    /// English.
    En,
}

impl Lang {
    /// `vi` in Vietnamese, `en` in English.
    pub(super) fn t<'a>(self, vi: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Vi => vi,
            Lang::En => en,
        }
    }

    /// The `lang` attribute and cookie value.
    pub(super) fn code(self) -> &'static str {
        match self {
            Lang::Vi => "vi",
            Lang::En => "en",
        }
    }
}

/// What a browser chose: language and time zone (cookies `truc_lang` and
/// `truc_tz`; the hub's zone when none or an unknown one).
#[derive(Debug, Clone)]
pub(super) struct Prefs {
    pub(super) lang: Lang,
    pub(super) zone: Zone,
}

/// The value of cookie `name` in `headers`.
pub(super) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Prefs {
    /// The preferences `headers` carry, `zone` by default.
    pub(super) fn of(headers: &HeaderMap, zone: Zone) -> Self {
        let lang = match cookie(headers, "truc_lang") {
            Some("en") => Lang::En,
            _ => Lang::Vi,
        };
        let zone = cookie(headers, "truc_tz")
            .and_then(|z| Zone::parse(&z.replace("%2F", "/")).ok())
            .unwrap_or(zone);
        Self { lang, zone }
    }

    /// `ms` as `2026-12-01 21:05:03 +07:00` in the chosen zone.
    pub(super) fn when(&self, ms: i64) -> String {
        let (d, t, off) = self.zone.readable(ms);
        format!("{d} {t} {off}")
    }

    /// `ms` as an optional time.
    pub(super) fn when_opt(&self, ms: Option<i64>) -> String {
        ms.map_or_else(|| "—".into(), |ms| self.when(ms))
    }

    /// An RFC 3339 time as shown (kept when it does not parse).
    pub(super) fn when_text(&self, at: &str) -> String {
        crate::core::time::parse_rfc3339(at).map_or_else(|_| at.to_owned(), |ms| self.when(ms))
    }
}

/// A delivery state in the page's language.
pub(super) fn state(l: Lang, s: DeliveryState) -> String {
    let t = match s {
        DeliveryState::Accepted => l.t("đã tiếp nhận", "accepted"),
        DeliveryState::Queued => l.t("đã xếp hàng", "queued"),
        DeliveryState::Deferred => l.t("hoãn gửi", "deferred"),
        DeliveryState::Rejected => l.t("bị từ chối", "rejected"),
        DeliveryState::Retry => l.t("chờ gửi lại", "retry"),
        DeliveryState::Delivered => l.t("đã nhận (01)", "delivered (01)"),
        DeliveryState::Status(c) => {
            return format!("{} {}", l.t("trạng thái", "status"), c.as_str())
        }
        DeliveryState::DelayWarning => l.t("cảnh báo chậm", "delay warning"),
        DeliveryState::Bounced => l.t("bị trả lại", "bounced"),
        DeliveryState::Expired => l.t("hết hạn", "expired"),
        DeliveryState::Recalled => l.t("đã thu hồi", "recalled"),
        DeliveryState::RecallRequested => l.t("yêu cầu thu hồi", "recall requested"),
        DeliveryState::Purged => l.t("đã xóa khỏi hộp thư", "purged"),
    };
    t.to_owned()
}

/// The navigation: `(path, Vietnamese, English, permission needed)`.
const NAV: [(&str, &str, &str, Permission); 8] = [
    ("/console/", "Tổng quan", "Overview", Permission::ViewOwn),
    (
        "/console/agencies",
        "Đơn vị",
        "Agencies",
        Permission::ViewOwn,
    ),
    (
        "/console/envelopes",
        "Văn bản",
        "Envelopes",
        Permission::ViewOwn,
    ),
    ("/console/queues", "Hàng đợi", "Queues", Permission::ViewAll),
    (
        "/console/reports",
        "Báo cáo",
        "Reports",
        Permission::ViewOwn,
    ),
    ("/console/alerts", "Cảnh báo", "Alerts", Permission::ViewAll),
    (
        "/console/audit",
        "Nhật ký",
        "Audit log",
        Permission::ReadAudit,
    ),
    (
        "/console/accounts",
        "Tài khoản",
        "Accounts",
        Permission::ManageAccounts,
    ),
];

/// The style sheet, built into the binary.
pub(super) const STYLE: &str = include_str!("style.css");

/// The page frame around `body`, as a 200 answer.
pub(super) fn page(
    p: &Prefs,
    who: Option<(&Caller, &str)>,
    active: &str,
    title: &str,
    body: Markup,
) -> Response {
    frame(StatusCode::OK, p, who, active, title, body)
}

/// The page frame around `body` with `status`.
pub(super) fn frame(
    status: StatusCode,
    p: &Prefs,
    who: Option<(&Caller, &str)>,
    active: &str,
    title: &str,
    body: Markup,
) -> Response {
    let l = p.lang;
    let markup = html! {
        (DOCTYPE)
        html lang=(l.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · truc" }
                link rel="stylesheet" href="/console/assets/style.css";
            }
            body {
                header {
                    a.brand href="/console/" { "truc" span { (l.t(" · Trục liên thông", " · integration axis")) } }
                    @if let Some((c, csrf)) = who {
                        nav {
                            @for (path, vi, en, need) in NAV {
                                @if c.may(need) {
                                    a href=(path) class=[(path == active).then_some("on")] { (l.t(vi, en)) }
                                }
                            }
                        }
                        form.who method="post" action="/console/logout" {
                            span { (c.name) " · " (c.role.as_str()) @if let Some(a) = &c.agency { " · " (a.as_str()) } }
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { (l.t("Đăng xuất", "Log out")) }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
                footer {
                    span { (l.t("Ngôn ngữ:", "Language:")) " " }
                    a href="/console/prefs?lang=vi" lang="vi" { "Tiếng Việt" }
                    " · "
                    a href="/console/prefs?lang=en" lang="en" { "English" }
                    span.zone { " · " (l.t("Múi giờ: ", "Time zone: ")) (p.zone.name()) " ("
                        a href="/console/prefs?tz=Asia/Ho_Chi_Minh" { "Asia/Ho_Chi_Minh" }
                        " · "
                        a href="/console/prefs?tz=UTC" { "UTC" }
                        ")" }
                }
            }
        }
    };
    let mut r = (status, markup.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// An error page: what went wrong, and the way back.
pub(super) fn failure(
    status: StatusCode,
    p: &Prefs,
    who: Option<(&Caller, &str)>,
    message: &str,
) -> Response {
    let l = p.lang;
    let title = match status {
        StatusCode::FORBIDDEN => l.t("Không được phép", "Not allowed"),
        StatusCode::NOT_FOUND => l.t("Không tìm thấy", "Not found"),
        StatusCode::TOO_MANY_REQUESTS => l.t("Quá nhiều lần thử", "Too many attempts"),
        s if s.is_server_error() => l.t("Lỗi của trục", "Hub error"),
        _ => l.t("Yêu cầu không hợp lệ", "Bad request"),
    };
    frame(
        status,
        p,
        who,
        "",
        title,
        html! {
            p.error role="alert" { (message) }
            p { a href="/console/" { (l.t("Về trang tổng quan", "Back to the overview")) } }
        },
    )
}

/// A bar chart of `bars` (label, value), as inline SVG (no script, no
/// inline style): values over the bars when they fit, labels under them
/// (every few when there are many).
pub(super) fn bars(bars: &[(String, u64)], caption: &str) -> Markup {
    const PLOT: u64 = 110;
    let n = bars.len().max(1) as u64;
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let slot = (600 / n).max(20);
    let width = slot * n;
    let step = (bars.len() / 12).max(1);
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {width} 160")) role="img" aria-label=(caption) {
                @for (i, (label, v)) in bars.iter().enumerate() {
                    @let h = v * PLOT / max;
                    @let x = i as u64 * slot;
                    rect x=(x + slot / 8) y=(20 + PLOT - h) width=(slot - slot / 4) height=(h) {
                        title { (label) ": " (v) }
                    }
                    @if bars.len() <= 31 && *v > 0 {
                        text.value x=(x + slot / 2) y=(16 + PLOT - h) text-anchor="middle" { (v) }
                    }
                    @if i == 0 {
                        text x=(x) y="150" { (label) }
                    } @else if i % step == 0 {
                        text x=(x + slot / 2) y="150" text-anchor="middle" { (label) }
                    }
                }
            }
            figcaption { (caption) }
        }
    }
}

/// A thousands-separated number.
pub(super) fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push('.');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_prefs_and_numbers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; truc_lang=en; truc_tz=UTC"),
        );
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "b"), None);
        let p = Prefs::of(&h, Zone::default());
        assert_eq!(p.lang, Lang::En);
        assert_eq!(p.when(0), "1970-01-01 00:00:00 +00:00");
        let p = Prefs::of(&HeaderMap::new(), Zone::parse("Asia/Ho_Chi_Minh").unwrap());
        assert_eq!(p.lang, Lang::Vi);
        // 2026-01-01T00:00:00Z
        assert_eq!(p.when(1_767_225_600_000), "2026-01-01 07:00:00 +07:00");
        assert_eq!(num(1_234_567), "1.234.567");
        assert_eq!(num(12), "12");
    }

    #[test]
    fn pages_escape_what_they_show() {
        let p = Prefs::of(&HeaderMap::new(), Zone::default());
        let r = failure(
            StatusCode::BAD_REQUEST,
            &p,
            None,
            "<script>alert(1)</script>",
        );
        let body =
            futures_util::FutureExt::now_or_never(axum::body::to_bytes(r.into_body(), 1 << 20))
                .unwrap()
                .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("&lt;script&gt;"));
        assert!(!text.contains("<script>"));
    }
}

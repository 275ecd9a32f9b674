//! The web console over HTTP, against a real hub: login and its throttle,
//! the session cookie's flags, CSRF and origin checks, what each role may
//! do refused by the server (not only hidden), an agency account's scope,
//! a disabled account's session ending, logout, and the answer headers.
//! (tests/console_browser.rs drives the same pages in a real browser.)

mod common;

use common::gateway::{http, Answer};
use common::{envelope, TestHub};

const PW: &str = "mật khẩu đủ dài 2026";

/// A browser without a browser: one session cookie.
struct Visitor<'h> {
    hub: &'h TestHub,
    cookie: String,
}

fn form(fields: &[(&str, &str)]) -> Vec<u8> {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn text(a: &Answer) -> String {
    String::from_utf8_lossy(&a.raw).into_owned()
}

async fn login_answer(hub: &TestHub, name: &str, pw: &str) -> Answer {
    http(
        &hub.admin_addr,
        "POST",
        "/console/login",
        &[(
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        &form(&[("name", name), ("password", pw)]),
    )
    .await
}

impl<'h> Visitor<'h> {
    async fn login(hub: &'h TestHub, name: &str) -> Visitor<'h> {
        let a = login_answer(hub, name, PW).await;
        assert_eq!(a.status, 303, "{}", text(&a));
        let set = a.header("set-cookie").expect("a session cookie");
        let cookie = set.split(';').next().unwrap().to_owned();
        Visitor { hub, cookie }
    }

    fn headers(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut h = vec![("Cookie".to_owned(), self.cookie.clone())];
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        h
    }

    async fn get(&self, path: &str) -> Answer {
        http(&self.hub.admin_addr, "GET", path, &self.headers(&[]), b"").await
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Answer {
        let mut extra = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some(o) = origin {
            extra.push(("Origin", o));
        }
        http(
            &self.hub.admin_addr,
            "POST",
            path,
            &self.headers(&extra),
            &form(fields),
        )
        .await
    }

    /// The CSRF token the pages carry.
    async fn csrf(&self) -> String {
        let page = text(&self.get("/console/").await);
        let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
        page[at..at + 64].to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_roles_csrf_and_scope() {
    let mut hub = TestHub::start().await;
    let a = hub.register("H37.CS.001").await;
    hub.register("H37.CS.002").await;
    hub.register("H37.CS.003").await;
    let client = hub.client(&a).await;
    let to_b = client
        .send(&envelope("H37.CS.002").subject("Công văn cho B").build())
        .await
        .unwrap();
    let to_c = client
        .send(&envelope("H37.CS.003").subject("Công văn cho C").build())
        .await
        .unwrap();
    for id in [&to_b, &to_c] {
        hub.wait_log(&["envelope accepted", id], 1).await;
    }
    hub.add_account("quan", "admin", None, PW);
    hub.add_account("lan", "operator", None, PW);
    hub.add_account("mai", "auditor", None, PW);
    hub.add_account("donvi-b", "agency", Some("H37.CS.002"), PW);
    hub.add_account("khoa", "operator", None, PW);

    // No session: every page sends the browser to the login page.
    let a = http(&hub.admin_addr, "GET", "/console/agencies", &[], b"").await;
    assert_eq!(a.status, 303);
    assert_eq!(a.header("location").as_deref(), Some("/console/login"));
    let a = http(&hub.admin_addr, "GET", "/console/login", &[], b"").await;
    assert_eq!(a.status, 200);
    for (h, want) in [
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
    ] {
        assert_eq!(a.header(h).as_deref(), Some(want), "{h}");
    }
    let csp = a.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));

    // Wrong password: 401 and no cookie; the same answer for no such account.
    let bad = login_answer(&hub, "lan", "not the password at all").await;
    assert_eq!(bad.status, 401);
    assert!(bad.header("set-cookie").is_none());
    let nobody = login_answer(&hub, "nobody", "not the password at all").await;
    assert_eq!(nobody.status, 401);
    // Five failures lock the name: the right password is refused too (429).
    for _ in 0..5 {
        assert_eq!(
            login_answer(&hub, "khoa", "wrong password 123")
                .await
                .status,
            401
        );
    }
    let locked = login_answer(&hub, "khoa", PW).await;
    assert_eq!(locked.status, 429, "{}", text(&locked));

    // The session cookie's flags.
    let ok = login_answer(&hub, "lan", PW).await;
    let set = ok.header("set-cookie").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(flag), "{set}");
    }

    let ops = Visitor::login(&hub, "lan").await;
    let aud = Visitor::login(&hub, "mai").await;
    let agb = Visitor::login(&hub, "donvi-b").await;
    let adm = Visitor::login(&hub, "quan").await;
    for (v, path) in [
        (&ops, "/console/"),
        (&ops, "/console/agencies"),
        (&ops, "/console/agencies/H37.CS.001"),
        (&ops, "/console/envelopes"),
        (&ops, "/console/queues"),
        (&ops, "/console/dead"),
        (&ops, "/console/reports"),
        (&ops, "/console/reports.csv"),
        (&ops, "/console/audit?verify=1"),
        (&adm, "/console/accounts"),
    ] {
        let a = v.get(path).await;
        assert_eq!(a.status, 200, "{path}: {}", text(&a));
    }
    assert!(text(&ops.get("/console/audit?verify=1").await).contains("Chuỗi nhật ký nguyên vẹn"));

    // What a role may not do, the server refuses, whatever the page shows.
    assert_eq!(ops.get("/console/accounts").await.status, 403);
    assert_eq!(agb.get("/console/queues").await.status, 403);
    assert_eq!(agb.get("/console/audit").await.status, 403);
    let csrf = aud.csrf().await;
    let a = aud
        .post(
            "/console/agencies/H37.CS.003/enabled",
            &[("csrf", &csrf), ("enabled", "false"), ("confirm", "yes")],
            None,
        )
        .await;
    assert_eq!(a.status, 403, "{}", text(&a));
    let a = ops
        .post(
            "/console/agencies/H37.CS.001/rotate",
            &[
                ("csrf", &ops.csrf().await),
                ("grace", "0"),
                ("confirm", "yes"),
            ],
            None,
        )
        .await;
    assert_eq!(a.status, 403);

    // CSRF: a missing or foreign token, or another site's Origin, is refused.
    let a = ops
        .post(
            "/console/agencies/H37.CS.003/enabled",
            &[("enabled", "false"), ("confirm", "yes")],
            None,
        )
        .await;
    assert_eq!(a.status, 403);
    let a = ops
        .post(
            "/console/agencies/H37.CS.003/enabled",
            &[("csrf", &csrf), ("enabled", "false"), ("confirm", "yes")],
            None,
        )
        .await;
    assert_eq!(a.status, 403, "another session's token");
    let own = ops.csrf().await;
    let a = ops
        .post(
            "/console/agencies/H37.CS.003/enabled",
            &[("csrf", &own), ("enabled", "false"), ("confirm", "yes")],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(a.status, 403);
    // Without confirmation, a confirmation page and nothing done.
    let a = ops
        .post(
            "/console/agencies/H37.CS.003/enabled",
            &[("csrf", &own), ("enabled", "false")],
            None,
        )
        .await;
    assert_eq!(a.status, 200);
    assert!(text(&a).contains("name=\"confirm\" value=\"yes\""));
    let (_, v) = hub.api("GET", "/v1/agencies/H37.CS.003", None).await;
    assert_eq!(v["enabled"], true);
    // Confirmed: done, and the audit log names the account.
    let origin = format!("http://{}", hub.admin_addr);
    let a = ops
        .post(
            "/console/agencies/H37.CS.003/enabled",
            &[("csrf", &own), ("enabled", "false"), ("confirm", "yes")],
            Some(&origin),
        )
        .await;
    assert_eq!(a.status, 303, "{}", text(&a));
    let (_, v) = hub.api("GET", "/v1/agencies/H37.CS.003", None).await;
    assert_eq!(v["enabled"], false);
    let (_, tail) = hub.api("GET", "/v1/audit?n=20", None).await;
    assert!(
        tail.as_array()
            .unwrap()
            .iter()
            .any(|e| e["fields"]["action"] == "agency-disable" && e["fields"]["account"] == "lan"),
        "{tail}"
    );

    // The agency account sees its own envelope, not another's.
    let mine = agb
        .get(&format!(
            "/console/envelopes/view?from=H37.CS.001&id={to_b}"
        ))
        .await;
    assert_eq!(mine.status, 200);
    assert!(text(&mine).contains("Công văn cho B"));
    let theirs = agb
        .get(&format!(
            "/console/envelopes/view?from=H37.CS.001&id={to_c}"
        ))
        .await;
    assert_eq!(theirs.status, 404);
    let list = text(&agb.get("/console/envelopes").await);
    assert!(list.contains(&to_b) && !list.contains(&to_c));
    assert_eq!(agb.get("/console/agencies/H37.CS.003").await.status, 404);
    let csv = text(&agb.get("/console/reports.csv").await);
    assert!(
        csv.lines().skip(1).all(|l| l.contains("H37.CS.002")),
        "{csv}"
    );

    // Language: English on request.
    let en = http(
        &hub.admin_addr,
        "GET",
        "/console/",
        &ops.headers(&[("Cookie2", "x")])
            .into_iter()
            .map(|(k, v)| {
                if k == "Cookie" {
                    (k, format!("{v}; truc_lang=en"))
                } else {
                    (k, v)
                }
            })
            .collect::<Vec<_>>(),
        b"",
    )
    .await;
    assert!(text(&en).contains("Overview"));
    assert!(text(&ops.get("/console/").await).contains("Tổng quan"));

    // A disabled account's session ends at once; logout ends one.
    let o = hub.cli_with_token(&hub.token, &["account", "disable", "mai"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(aud.get("/console/").await.status, 303);
    let a = adm
        .post("/console/logout", &[("csrf", &adm.csrf().await)], None)
        .await;
    assert_eq!(a.status, 303);
    assert_eq!(adm.get("/console/").await.status, 303);
    client.close().await;
}

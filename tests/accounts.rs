//! Named accounts and roles against a real hub: `truc account …`, per-account
//! API tokens, what each role may do (refused by the API, 403), what an
//! agency account sees (its own traffic only), and audit entries naming the
//! account that acted.

mod common;

use common::{envelope, stderr, stdout, TestHub};
use serde_json::{json, Value};

const PW: &str = "mật khẩu đủ dài 2026";

/// Adds account `name` through the CLI (password on stdin) and returns a
/// token issued for it.
fn account(hub: &TestHub, name: &str, role: &str, agency: Option<&str>) -> String {
    hub.add_account(name, role, agency, PW);
    let o = hub.cli_with_token(&hub.token, &["account", "token", name, "--label", "test"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o).trim().to_owned()
}

async fn status(hub: &TestHub, token: &str, method: &str, path: &str, body: Option<Value>) -> u16 {
    hub.api_as(token, method, path, body).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_by_the_api_and_named_in_the_audit_log() {
    let mut hub = TestHub::start().await;
    let a = hub.register("H37.AC.001").await;
    hub.register("H37.AC.002").await;
    hub.register("H37.AC.003").await;
    let client = hub.client(&a).await;
    let to_b = client
        .send(&envelope("H37.AC.002").subject("to B").build())
        .await
        .unwrap();
    let to_c = client
        .send(
            &envelope("H37.AC.003")
                .also_to("H37.AC.002")
                .subject("to C and B")
                .build(),
        )
        .await
        .unwrap();
    let only_c = client
        .send(&envelope("H37.AC.003").subject("to C").build())
        .await
        .unwrap();
    for id in [&to_b, &to_c, &only_c] {
        hub.wait_log(&["envelope accepted", id], 1).await;
    }

    // Refusals of the CLI: a short password, an agency account with no or
    // an unknown agency, a name taken.
    let add = |args: &[&str], pw: &str| hub.cli_with_input(&hub.token, args, pw);
    let o = add(&["account", "add", "lan", "--role", "operator"], "short\n");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("at least 12"), "{}", stderr(&o));
    let o = add(
        &["account", "add", "b", "--role", "agency"],
        "a long enough one\n",
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let o = add(
        &[
            "account",
            "add",
            "b9",
            "--role",
            "agency",
            "--agency",
            "H37.AC.009",
        ],
        "a long enough one\n",
    );
    assert!(stderr(&o).contains("not registered"), "{}", stderr(&o));

    let ops = account(&hub, "lan", "operator", None);
    let aud = account(&hub, "mai", "auditor", None);
    let agb = account(&hub, "agency-b", "agency", Some("H37.AC.002"));
    let o = add(
        &["account", "add", "lan", "--role", "auditor"],
        &format!("{PW}\n"),
    );
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));

    // Who is who.
    let (_, w) = hub.api_as(&agb, "GET", "/v1/whoami", None).await;
    assert_eq!(
        w,
        json!({"account": "agency-b", "role": "agency", "agency": "H37.AC.002"})
    );
    let (_, w) = hub.api("GET", "/v1/whoami", None).await;
    assert_eq!(w["account"], "@admin-token");

    // The role matrix, as the API enforces it.
    let issue = json!({"code": "H37.AC.004", "name": "x"});
    for (token, who) in [(&ops, "operator"), (&aud, "auditor"), (&agb, "agency")] {
        assert_eq!(
            status(&hub, token, "POST", "/v1/agencies", Some(issue.clone())).await,
            403,
            "{who}"
        );
        assert_eq!(
            status(&hub, token, "GET", "/v1/store/backup", None).await,
            403,
            "{who}"
        );
        assert_eq!(
            status(&hub, token, "GET", "/v1/accounts", None).await,
            403,
            "{who}"
        );
        assert_eq!(
            status(
                &hub,
                token,
                "POST",
                "/v1/agencies/H37.AC.001/rotate-key",
                Some(json!({"grace_s": 0}))
            )
            .await,
            403,
            "{who}"
        );
        assert_eq!(
            status(&hub, token, "GET", "/v1/rabbitmq-definitions", None).await,
            403,
            "{who}"
        );
    }
    for (token, who) in [(&aud, "auditor"), (&agb, "agency")] {
        assert_eq!(
            status(&hub, token, "POST", "/v1/agencies/H37.AC.003/disable", None).await,
            403,
            "{who}"
        );
        assert_eq!(
            status(
                &hub,
                token,
                "POST",
                "/v1/dead/retry",
                Some(json!({"queue": "dead"}))
            )
            .await,
            403,
            "{who}"
        );
        assert_eq!(
            status(&hub, token, "POST", "/v1/queues/H37.AC.002/purge", None).await,
            403,
            "{who}"
        );
        assert_eq!(
            status(&hub, token, "GET", "/v1/queues/H37.AC.002/peek?n=1", None).await,
            403,
            "{who}"
        );
    }
    assert_eq!(status(&hub, &agb, "GET", "/v1/audit", None).await, 403);
    assert_eq!(status(&hub, &agb, "GET", "/v1/queues", None).await, 403);
    assert_eq!(status(&hub, &agb, "GET", "/v1/instances", None).await, 403);
    for token in [&ops, &aud] {
        assert_eq!(
            status(&hub, token, "GET", "/v1/audit/verify", None).await,
            200
        );
        assert_eq!(status(&hub, token, "GET", "/v1/queues", None).await, 200);
        assert_eq!(status(&hub, token, "GET", "/v1/report", None).await, 200);
    }
    // What the operator may do, it does: and the audit log names it.
    assert_eq!(
        status(&hub, &ops, "POST", "/v1/agencies/H37.AC.003/disable", None).await,
        200
    );
    assert_eq!(
        status(&hub, &ops, "POST", "/v1/agencies/H37.AC.003/enable", None).await,
        200
    );
    let (_, tail) = hub.api_as(&aud, "GET", "/v1/audit?n=50", None).await;
    let by = |action: &str| -> Vec<String> {
        tail.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["fields"]["action"] == action)
            .map(|e| e["fields"]["account"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(by("agency-disable"), vec!["lan"]);
    assert_eq!(by("agency-enable"), vec!["lan"]);
    assert_eq!(by("agency-add"), vec!["@admin-token"; 3]);
    assert_eq!(by("account-add"), vec!["@admin-token"; 3]);
    assert_eq!(by("account-token"), vec!["@admin-token"; 3]);

    // The agency account sees its own traffic only: the envelope to it,
    // its own timeline of a multicast, nothing addressed to others.
    let (s, v) = hub
        .api_as(
            &agb,
            "GET",
            &format!("/v1/envelopes?from=H37.AC.001&id={to_b}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = hub
        .api_as(&agb, "GET", &format!("/v1/envelopes?id={to_c}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let dests: Vec<&str> = v["dests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert_eq!(dests, vec!["H37.AC.002"], "{v}");
    let (_, full) = hub
        .api_as(&ops, "GET", &format!("/v1/envelopes?id={to_c}"), None)
        .await;
    assert_eq!(full["dests"].as_array().unwrap().len(), 2, "{full}");
    for path in [
        format!("/v1/envelopes?from=H37.AC.001&id={only_c}"),
        format!("/v1/envelopes?id={only_c}"),
        "/v1/agencies/H37.AC.003".to_owned(),
        "/v1/presence/H37.AC.003/history".to_owned(),
    ] {
        assert_eq!(status(&hub, &agb, "GET", &path, None).await, 404, "{path}");
    }
    let (_, list) = hub.api_as(&agb, "GET", "/v1/envelopes/list", None).await;
    let mut ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![to_b.as_str(), to_c.as_str()];
    want.sort();
    assert_eq!(ids, want, "{list}");
    let (_, list) = hub.api_as(&aud, "GET", "/v1/envelopes/list", None).await;
    assert_eq!(list.as_array().unwrap().len(), 3);
    let (_, agencies) = hub.api_as(&agb, "GET", "/v1/agencies", None).await;
    assert_eq!(agencies.as_array().unwrap().len(), 1, "{agencies}");
    assert_eq!(agencies[0]["code"], "H37.AC.002");
    let (_, presence) = hub.api_as(&agb, "GET", "/v1/presence", None).await;
    assert_eq!(presence.as_array().unwrap().len(), 1, "{presence}");
    let (_, report) = hub.api_as(&agb, "GET", "/v1/report", None).await;
    let rows = report["rows"].as_array().unwrap();
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r["agency"] == "H37.AC.002"),
        "{report}"
    );
    assert!(report["connections_now"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["agency"] == "H37.AC.002"));

    // An account sets its own password and issues its own token, not
    // another's; the CLI says 3 for a refusal.
    let o = hub.cli_with_input(
        &ops,
        &["account", "passwd", "lan"],
        "another long password\n",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = hub.cli_with_input(
        &ops,
        &["account", "passwd", "mai"],
        "another long password\n",
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("may not"), "{}", stderr(&o));
    let o = hub.cli_with_token(&ops, &["agency", "add", "H37.AC.005", "--name", "x"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let o = hub.cli_with_token(&ops, &["account", "whoami"]);
    assert!(stdout(&o).contains("lan (role operator)"), "{}", stdout(&o));

    // A disabled account's token stops at once; listing shows no secret.
    let o = hub.cli_with_token(&hub.token, &["account", "disable", "lan"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(status(&hub, &ops, "GET", "/v1/agencies", None).await, 401);
    let o = hub.cli_with_token(&hub.token, &["account", "list", "--json"]);
    let text = stdout(&o);
    let listed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert!(!text.contains("argon2") && !text.contains(ops.rsplit('.').next().unwrap()));
    let lan = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "lan")
        .unwrap();
    assert_eq!(lan["enabled"], false);
    assert_eq!(lan["tokens"].as_array().unwrap().len(), 0);
    client.close().await;
}

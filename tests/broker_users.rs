//! Each agency's own RabbitMQ user, end to end against the real broker: the
//! broker password issued by `agency add`, the definitions exported by
//! `truc agency rabbitmq-definitions` and imported with
//! `rabbitmqctl import_definitions`, the confinement they give (publish only
//! its own routing keys on the ingress exchange, read only its own queues),
//! that importing again after adding agencies keeps every password, and that
//! `rotate-broker-password` changes only the password it issues, and that an
//! agency without a stored hash is left out rather than reset.
//!
//! Every RabbitMQ user the test imports is deleted on `Drop` (also when the
//! test fails); the hub's queues and exchanges go with the [`TestHub`].

mod common;

use std::time::{Duration, Instant};

use common::users::{export, import, url_as, BrokerUsers};
use common::{envelope, notices, TestHub};
use truc::broker::Link;
use truc::client::{Client, Credentials};
use truc::notice::NoticeKind;

const WAIT: Duration = Duration::from_secs(10);

/// Registers `code` through the admin API; its credentials and broker password.
async fn add(hub: &mut TestHub, code: &str) -> (Credentials, String) {
    let (status, v) = hub
        .api(
            "POST",
            "/v1/agencies",
            Some(serde_json::json!({"code": code, "name": format!("Agency {code}")})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    hub.agencies.push(common::code(code));
    assert_eq!(v["broker_user"], code, "{v}");
    let password = v["broker_password"].as_str().expect("broker password");
    assert!(password.len() >= 40, "{v}");
    (
        serde_json::from_value(v.clone()).unwrap(),
        password.to_owned(),
    )
}

/// Connects as an agency's own broker user; the import is asynchronous, so
/// a refused login is retried for a while.
async fn connect_as(hub: &TestHub, creds: &Credentials, password: &str) -> Client {
    let url = url_as(creds.code.as_str(), password);
    let deadline = Instant::now() + WAIT;
    loop {
        match Client::connect(&url, &hub.prefix, creds.clone()).await {
            Ok(c) => return c,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{} cannot log in: {e}",
                creds.code
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn refused(what: &str, e: &dyn std::fmt::Display) {
    let text = e.to_string();
    assert!(
        text.to_ascii_uppercase().contains("ACCESS_REFUSED"),
        "{what}: want ACCESS_REFUSED, got {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agencies_log_in_as_their_own_confined_users_and_keep_their_passwords() {
    let mut users = BrokerUsers::default();
    let mut hub = TestHub::start().await;
    // Codes of this process only: broker users are not prefixed.
    let pid = std::process::id();
    let a_code = format!("T{pid}.A");
    let z_code = format!("T{pid}.Z");
    let (a, a_password) = add(&mut hub, &a_code).await;
    let (z, z_password) = add(&mut hub, &z_code).await;
    let file = hub.data.path().join("definitions.json");
    let first = export(&hub, &file, &mut users);
    assert_eq!(first["users"].as_array().unwrap().len(), 2, "{first}");
    assert!(first.get("warnings").is_none(), "{first}");
    assert_eq!(
        first["topic_permissions"][0]["exchange"],
        format!("{}ingress", hub.prefix),
        "the hub's prefix"
    );
    import(&file);

    // A publishes on envelope.<A> and reads its own notices.
    let client = connect_as(&hub, &a, &a_password).await;
    let mut notify = client.notices(16).await.unwrap();
    let _inbox = client.inbox(16).await.unwrap();
    tokio::time::timeout(WAIT, client.send(&envelope(&z_code).build()))
        .await
        .expect("publish in time")
        .expect("A may publish envelope.<A>");
    let ns = notices(&client, &mut notify, 1, WAIT).await;
    assert_eq!(ns.len(), 1, "log:\n{}", hub.log());
    assert_eq!(ns[0].notice, NoticeKind::Accepted);

    // Another agency's routing key: refused by the topic permissions.
    let other = connect_as(&hub, &a, &a_password).await;
    let mut m = envelope(&z_code).signed(&hub.prefix, &a);
    m.routing_key = format!("envelope.{z_code}");
    let e = tokio::time::timeout(WAIT, other.publish(&m))
        .await
        .expect("answer in time")
        .expect_err("A publishing envelope.<Z>");
    refused("publish envelope.<Z>", &e);
    other.close().await;

    // Another agency's inbox and notices: refused.
    let link = Link::connect(&url_as(&a_code, &a_password), "truc test A")
        .await
        .unwrap();
    for queue in ["inbox", "notify"] {
        let name = format!("{}{queue}.{z_code}", hub.prefix);
        match tokio::time::timeout(WAIT, link.subscribe(&name, 1, "")).await {
            Ok(Err(e)) => refused(&name, &e),
            Ok(Ok(_)) => panic!("A may consume {name}"),
            Err(_) => panic!("{name}: no answer"),
        }
    }
    link.close().await;
    // A wrong password: no login.
    assert!(Link::connect(&url_as(&a_code, &z_password), "truc test")
        .await
        .is_err());

    // Ten more agencies, export and import again: every password still works.
    let mut more = Vec::new();
    for letter in ["B", "C", "D", "E", "F", "G", "H", "I", "J"] {
        more.push(add(&mut hub, &format!("T{pid}.{letter}")).await);
    }
    let second = export(&hub, &file, &mut users);
    assert_eq!(second["users"].as_array().unwrap().len(), 11, "{second}");
    let hash_of = |v: &serde_json::Value, user: &str| {
        v["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == user)
            .map(|u| u["password_hash"].clone())
            .unwrap()
    };
    assert_eq!(hash_of(&first, &a_code), hash_of(&second, &a_code));
    import(&file);
    let (b, b_password) = &more[0];
    let b_client = connect_as(&hub, b, b_password).await;
    b_client.close().await;
    let again = Client::connect(&url_as(&a_code, &a_password), &hub.prefix, a.clone())
        .await
        .expect("A still logs in with its first password");
    tokio::time::timeout(WAIT, again.send(&envelope(&z_code).build()))
        .await
        .expect("publish in time")
        .expect("A still publishes");
    let ns = notices(&client, &mut notify, 1, WAIT).await;
    assert_eq!(ns.len(), 1);
    again.close().await;
    let z_client = Client::connect(&url_as(&z_code, &z_password), &hub.prefix, z.clone())
        .await
        .expect("Z still logs in");
    z_client.close().await;

    // A new broker password for B (CLI): the old one stops working once
    // the definitions are imported again, A's stays.
    let o = hub.cli(&[
        "agency",
        "rotate-broker-password",
        b.code.as_str(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["broker_user"], b.code.as_str());
    let b_new = r["broker_password"].as_str().unwrap().to_owned();
    assert_ne!(&b_new, b_password);
    let third = export(&hub, &file, &mut users);
    assert_eq!(hash_of(&first, &a_code), hash_of(&third, &a_code));
    import(&file);
    connect_as(&hub, b, &b_new).await.close().await;
    assert!(
        Link::connect(&url_as(b.code.as_str(), b_password), "truc test")
            .await
            .is_err()
    );
    Client::connect(&url_as(&a_code, &a_password), &hub.prefix, a.clone())
        .await
        .expect("A still logs in")
        .close()
        .await;
    client.close().await;

    // Z as an agency registered before broker passwords existed (no stored
    // hash): left out with a warning, and its broker user is not touched.
    hub.terminate();
    {
        let store = truc::store::Store::open(&hub.data.path().join("data")).unwrap();
        store.broker_users().remove(z_code.as_str()).unwrap();
        store.flush().unwrap();
    }
    hub.spawn().await;
    let o = hub.cli(&["agency", "rabbitmq-definitions"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("rotate-broker-password {z_code}")),
        "{stderr}"
    );
    let legacy: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(legacy["users"].as_array().unwrap().len(), 10, "{legacy}");
    assert!(legacy["users"]
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["name"] != z_code.as_str() && u["password_hash"] != ""));
    assert_eq!(legacy["warnings"].as_array().unwrap().len(), 1);
    std::fs::write(&file, &o.stdout).unwrap();
    import(&file);
    Client::connect(&url_as(&z_code, &z_password), &hub.prefix, z)
        .await
        .expect("Z's user is not touched")
        .close()
        .await;
}

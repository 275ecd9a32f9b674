//! One hub alone on its store is one instance and its leader from the start:
//! `truc instances --json` lists exactly it (its pid, address and version),
//! marked leader; `/healthz` names it with role `leader`; `/metrics` says
//! `truc_leader 1`; after a clean stop its record and lease are released,
//! and a restart (a new instance id) leads at once, also after `kill -9`
//! (sled is one process's store: the dead holder's lease is taken at once);
//! `instance_id` is validated and used.

mod common;

use common::{stdout, TestHub};
use truc::admin_types::InstanceView;

async fn instances(hub: &TestHub) -> Vec<InstanceView> {
    let o = hub.cli_expect(&["instances", "--json"], 0);
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_hub_is_the_one_leading_instance() {
    let mut hub = TestHub::start().await;
    let pid = hub.pid();
    let list = instances(&hub).await;
    assert_eq!(list.len(), 1, "{list:?}\n{}", hub.log());
    let me = &list[0];
    assert_eq!(me.pid, pid);
    assert!(me.leader, "{me:?}");
    assert!(me.term.is_some_and(|t| t >= 1), "{me:?}");
    assert_eq!(me.admin_addr, hub.admin_addr);
    assert_eq!(me.version, env!("CARGO_PKG_VERSION"));
    assert!(
        me.id.ends_with(&format!("-{pid}")),
        "default id is <hostname>-<pid>: {}",
        me.id
    );
    assert!(me.last_seen_ms >= me.started_ms, "{me:?}");

    let (status, health) = hub.healthz().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["instance"], me.id.as_str(), "{health}");
    assert_eq!(health["role"], "leader", "{health}");

    let metrics = hub.metrics_text().await;
    assert!(metrics.lines().any(|l| l == "truc_leader 1"), "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("truc_instance_info{")
            && l.contains(&format!("instance=\"{}\"", me.id))
            && l.contains("role=\"leader\"")
            && l.ends_with(" 1")),
        "{metrics}"
    );

    // The table names it too, with the leader mark.
    let o = hub.cli_expect(&["instances"], 0);
    let table = stdout(&o);
    let row = table
        .lines()
        .find(|l| l.starts_with(&me.id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("leader (term"), "{table}");

    // A clean stop gives the lease up; the restarted process (a new id)
    // leads at once and is the only live instance.
    let old_id = me.id.clone();
    let old_term = me.term.unwrap_or(0);
    assert!(hub.terminate().success());
    assert!(hub.log().contains("leader lease released"), "{}", hub.log());
    hub.spawn().await;
    let list = instances(&hub).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_ne!(list[0].id, old_id);
    assert!(list[0].leader);
    assert!(list[0].term.unwrap_or(0) > old_term, "{list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hub_restarts_as_leader_without_waiting_for_its_old_lease() {
    let mut hub = TestHub::unstarted(None);
    // A fixed instance id from the environment is refused when invalid…
    std::fs::write(
        hub.config_file(),
        format!(
            "{}instance_id = \"not valid\"\n",
            std::fs::read_to_string(hub.config_file()).unwrap()
        ),
    )
    .unwrap();
    let err = hub.serve_refused();
    assert!(err.contains("instance_id"), "{err}");
    // … and used when valid.
    let text = std::fs::read_to_string(hub.config_file()).unwrap();
    std::fs::write(
        hub.config_file(),
        text.replace("instance_id = \"not valid\"", "instance_id = \"hub-a.1\""),
    )
    .unwrap();
    hub.spawn().await;
    let list = instances(&hub).await;
    assert_eq!(
        list.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["hub-a.1"]
    );
    // Killed: the lease it held would run 10 more seconds on a shared
    // store; sled is this process's alone, so the restart takes it at once.
    // (A shared store would have the new instance follow until then.)
    // Killed once the lease is on disk (the store flushes every second).
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    hub.kill9();
    let text = std::fs::read_to_string(hub.config_file()).unwrap();
    std::fs::write(hub.config_file(), text.replace("hub-a.1", "hub-a.2")).unwrap();
    hub.spawn().await;
    let (_, health) = hub.healthz().await;
    assert_eq!(health["role"], "leader", "{health}\n{}", hub.log());
    assert_eq!(health["instance"], "hub-a.2", "{health}");
    // The killed one may still be listed for up to 10 s, never as leader.
    let list = instances(&hub).await;
    let leaders: Vec<&str> = list
        .iter()
        .filter(|i| i.leader)
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(leaders, ["hub-a.2"], "{list:?}");
    assert!(list.iter().all(|i| i.id == "hub-a.1" || i.id == "hub-a.2"));
}

//! Agencies' own broker users in tests: export the hub's definitions,
//! import them into the broker, and delete every user created on drop.

use std::path::Path;
use std::process::Command;

use super::{amqp_url, TestHub};

/// RabbitMQ users created by the test, deleted on drop.
#[derive(Default)]
pub struct BrokerUsers(Vec<String>);

impl BrokerUsers {
    /// Deletes `name` on drop.
    pub fn track(&mut self, name: &str) {
        if !self.0.iter().any(|n| n == name) {
            self.0.push(name.to_owned());
        }
    }
}

impl Drop for BrokerUsers {
    fn drop(&mut self) {
        for user in &self.0 {
            match Command::new("rabbitmqctl")
                .args(["delete_user", user])
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "cleanup: user {user} not deleted: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("cleanup: rabbitmqctl: {e}"),
            }
        }
    }
}

/// The test broker's URL with `user:password` instead of the test login.
pub fn url_as(user: &str, password: &str) -> String {
    let url = amqp_url();
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

/// Exports the definitions with the CLI into `file`, records their users in
/// `users` (before the import creates them) and returns them as JSON.
pub fn export(hub: &TestHub, file: &Path, users: &mut BrokerUsers) -> serde_json::Value {
    let o = hub.cli(&["agency", "rabbitmq-definitions"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for u in v["users"].as_array().unwrap() {
        assert!(!u["password_hash"].as_str().unwrap().is_empty(), "{u}");
        users.track(u["name"].as_str().unwrap());
    }
    std::fs::write(file, &o.stdout).unwrap();
    v
}

pub fn import(file: &Path) {
    let o = Command::new("rabbitmqctl")
        .arg("import_definitions")
        .arg(file)
        .output()
        .expect("rabbitmqctl");
    assert!(
        o.status.success(),
        "import_definitions: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

//! The agency lifecycle as an operator sees it: register, list, show,
//! disable, enable, rotate a key or the broker password, remove, import, and
//! the RabbitMQ definitions confining each agency. No HTTP or command-line
//! types.
//!
//! Invariants: every action that changes something appends an audit entry;
//! no view carries a secret except the [`Added`], [`Rotated`],
//! [`BrokerIssued`] and imported [`Issued`] results that issue one; a removal
//! is refused while the inbox holds messages unless forced. The definitions
//! carry each agency's RabbitMQ user with the password hash truc stored when
//! it issued the password, so importing them again never changes a password
//! truc did not just issue; an agency without a stored hash is left out (with
//! a warning), never written with an empty hash.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker::{declare_agency, AmqpError};
use crate::core::broker_password::HASHING_ALGORITHM;
use crate::core::code::AgencyCode;
use crate::core::time::format_rfc3339;
use crate::operator::queues::{link, QueueError};
use crate::operator::Hub;
use crate::state::audit::AuditEvent;
use crate::state::registry::{Agency, Issued, RegistryError};

pub use crate::state::registry::BrokerIssued;

/// Agency lifecycle errors.
#[derive(Debug, thiserror::Error)]
pub enum AgencyError {
    /// The text is not an agency code.
    #[error("{0}")]
    BadCode(String),
    /// No such agency.
    #[error("agency {0} is not registered")]
    NotRegistered(AgencyCode),
    /// The inbox still holds messages and the removal was not forced.
    #[error("inbox {inbox} holds {depth} messages: purge it first, or remove with --force (they are lost)")]
    InboxNotEmpty {
        /// Inbox queue.
        inbox: String,
        /// Messages waiting.
        depth: u32,
    },
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl AgencyError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::BadCode(_) | Self::NotRegistered(_) | Self::InboxNotEmpty { .. } => false,
            Self::Registry(e) => e.is_retryable(),
            Self::Queue(e) => e.is_retryable(),
        }
    }
}

/// Parses an agency code given by an operator.
pub fn code_of(text: &str) -> Result<AgencyCode, AgencyError> {
    AgencyCode::parse(text).map_err(|e| AgencyError::BadCode(format!("{text:?}: {e}")))
}

/// An access key as shown (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// The access key.
    pub access_key: String,
    /// Issued at (RFC 3339).
    pub created_at: String,
    /// Expires at (RFC 3339).
    pub expires_at: Option<String>,
    /// The agency last authenticated with this key.
    #[serde(default)]
    pub last_used: bool,
    /// The hub signs what it sends the agency with this key now (named in
    /// `lgsp-hub-key`): the last-used key while valid, else the newest.
    #[serde(default)]
    pub hub_signs: bool,
}

/// An agency as shown (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgencyView {
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
    /// Enabled.
    pub enabled: bool,
    /// Registered at (RFC 3339).
    pub created_at: String,
    /// Has an RSA public key.
    pub rsa_public_key: bool,
    /// Access keys.
    pub access_keys: Vec<KeyView>,
    /// Inbox queue name.
    pub inbox: String,
    /// Notify queue name.
    pub notify: String,
    /// Inbox depth, when the broker answered.
    #[serde(default)]
    pub inbox_messages: Option<u32>,
    /// Inbox consumers, when the broker answered.
    #[serde(default)]
    pub inbox_consumers: Option<u32>,
}

/// The view of `a`, without queue facts.
pub fn view(hub: &Hub, a: &Agency) -> AgencyView {
    let last = hub.registry.last_used(&a.code);
    let signs = a
        .signing_key(last.as_deref(), crate::core::time::now_ms())
        .map(|k| k.access_key.clone());
    AgencyView {
        code: a.code.to_string(),
        name: a.name.clone(),
        enabled: a.enabled,
        created_at: format_rfc3339(a.created_at_ms),
        rsa_public_key: a.public_key_pem.is_some(),
        access_keys: a
            .keys
            .iter()
            .map(|k| KeyView {
                access_key: k.access_key.clone(),
                created_at: format_rfc3339(k.created_at_ms),
                expires_at: k.expires_at_ms.map(format_rfc3339),
                last_used: last.as_deref() == Some(k.access_key.as_str()),
                hub_signs: signs.as_deref() == Some(k.access_key.as_str()),
            })
            .collect(),
        inbox: hub.topology.inbox(&a.code),
        notify: hub.topology.notify(&a.code),
        inbox_messages: None,
        inbox_consumers: None,
    }
}

/// A registered agency with its first key (the secret, shown once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Added {
    /// Code, name, access key and secret.
    #[serde(flatten)]
    pub issued: Issued,
    /// Whether its queues were declared now (else at the next connection).
    pub queues_declared: bool,
    /// Inbox queue name.
    pub inbox: String,
    /// Notify queue name.
    pub notify: String,
}

fn audit(hub: &Hub, by: &str, action: &str, target: impl Into<String>, detail: impl Into<String>) {
    hub.router
        .audit()
        .record(AuditEvent::admin(action, target, detail).by(by));
}

/// Registers `code` and declares its queues when the broker is there.
pub async fn add(
    hub: &Hub,
    by: &str,
    code: &str,
    name: &str,
    public_key_pem: Option<String>,
) -> Result<Added, AgencyError> {
    let code = code_of(code)?;
    let issued = hub.registry.add(code.clone(), name, public_key_pem)?;
    let link = hub.link.borrow().clone();
    let queues_declared = match link {
        Some(link) => match declare_agency(&link, &hub.topology, &code).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(agency = %code, error = %e, "queues not declared now; they will be at the next connection");
                false
            }
        },
        None => false,
    };
    tracing::info!(agency = %code, access_key = %issued.access_key, "agency registered");
    audit(
        hub,
        by,
        "agency-add",
        code.to_string(),
        format!("access key {}", issued.access_key),
    );
    Ok(Added {
        issued,
        queues_declared,
        inbox: hub.topology.inbox(&code),
        notify: hub.topology.notify(&code),
    })
}

/// Every agency.
pub fn list(hub: &Hub) -> Vec<AgencyView> {
    hub.registry.list().iter().map(|a| view(hub, a)).collect()
}

/// One agency, with its inbox depth and consumers when the broker answers.
pub async fn show(hub: &Hub, code: &str) -> Result<AgencyView, AgencyError> {
    let code = code_of(code)?;
    let entry = hub
        .registry
        .get(&code)
        .ok_or_else(|| AgencyError::NotRegistered(code.clone()))?;
    let mut v = view(hub, &entry.agency);
    let link = hub.link.borrow().clone();
    if let Some(link) = link {
        // Passive declares run on the link's own probe channels; a missing
        // queue closes only such a channel.
        if let Ok(info) = link.queue_info(&v.inbox).await {
            v.inbox_messages = Some(info.messages);
            v.inbox_consumers = Some(info.consumers);
        }
    }
    Ok(v)
}

/// Enables or disables `code`.
pub fn set_enabled(
    hub: &Hub,
    by: &str,
    code: &str,
    enabled: bool,
) -> Result<AgencyView, AgencyError> {
    let code = code_of(code)?;
    let a = hub.registry.set_enabled(&code, enabled)?;
    let action = if enabled {
        "agency-enable"
    } else {
        "agency-disable"
    };
    audit(hub, by, action, code.to_string(), "");
    tracing::info!(agency = %code, enabled, "agency state changed");
    Ok(view(hub, &a))
}

/// An older key and until when it stays valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldKey {
    /// The access key.
    pub access_key: String,
    /// Valid until (RFC 3339); `None`: no expiry.
    pub expires_at: Option<String>,
}

/// A new key (the secret, shown once) and the older keys' expiries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rotated {
    /// Code.
    pub code: AgencyCode,
    /// Name.
    pub name: String,
    /// The new access key.
    pub access_key: String,
    /// The new secret.
    pub secret: String,
    /// The older keys.
    pub old_keys: Vec<OldKey>,
    /// The key the hub signs what it sends the agency with now: the one it
    /// last used while that stays valid, so an adapter holding only the old
    /// secret verifies everything until it switches or the grace ends.
    #[serde(default)]
    pub hub_signs_with: String,
}

/// Issues a new key for `code`; older keys stay valid for `grace`.
pub fn rotate_key(
    hub: &Hub,
    by: &str,
    code: &str,
    grace: Duration,
) -> Result<Rotated, AgencyError> {
    let code = code_of(code)?;
    let (issued, agency) = hub.registry.rotate_key(&code, grace)?;
    let old_keys = agency
        .keys
        .iter()
        .filter(|k| k.access_key != issued.access_key)
        .map(|k| OldKey {
            access_key: k.access_key.clone(),
            expires_at: k.expires_at_ms.map(format_rfc3339),
        })
        .collect();
    audit(
        hub,
        by,
        "rotate-key",
        code.to_string(),
        format!(
            "new access key {}, grace {}s",
            issued.access_key,
            grace.as_secs()
        ),
    );
    tracing::info!(agency = %code, access_key = %issued.access_key, grace_s = grace.as_secs(), "key rotated");
    let hub_signs_with = hub
        .registry
        .signing_key(&code, crate::core::time::now_ms())
        .map(|k| k.access_key)
        .unwrap_or_default();
    Ok(Rotated {
        code: issued.code,
        name: issued.name,
        access_key: issued.access_key,
        secret: issued.secret,
        old_keys,
        hub_signs_with,
    })
}

/// A queue deleted with its agency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedQueue {
    /// Queue name.
    pub queue: String,
    /// Messages it held.
    pub messages: u32,
}

/// A removed agency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// Code.
    pub code: AgencyCode,
    /// Name.
    pub name: String,
    /// Its queues that were deleted.
    pub deleted_queues: Vec<DeletedQueue>,
}

/// Removes `code` and deletes its queues; refused while the inbox holds
/// messages unless `force`.
pub async fn remove(hub: &Hub, by: &str, code: &str, force: bool) -> Result<Removed, AgencyError> {
    let code = code_of(code)?;
    if hub.registry.get(&code).is_none() {
        return Err(AgencyError::NotRegistered(code));
    }
    let link = link(hub)?;
    let inbox = hub.topology.inbox(&code);
    let depth = match link.queue_info(&inbox).await {
        Ok(i) => i.messages,
        Err(AmqpError::NoSuchQueue(_)) => 0,
        Err(e) => return Err(QueueError::from(e).into()),
    };
    if depth > 0 && !force {
        return Err(AgencyError::InboxNotEmpty { inbox, depth });
    }
    let removed = hub.registry.remove(&code)?;
    let mut deleted_queues = Vec::new();
    for queue in [
        inbox,
        hub.topology.notify(&code),
        hub.topology.ingress(&code),
    ] {
        match link.delete_queue(&queue).await {
            Ok(messages) => deleted_queues.push(DeletedQueue { queue, messages }),
            Err(e) => tracing::warn!(queue = %queue, error = %e, "queue not deleted"),
        }
    }
    audit(
        hub,
        by,
        "agency-remove",
        code.to_string(),
        format!("force={force}, inbox depth {depth}"),
    );
    tracing::info!(agency = %code, force, depth, "agency removed");
    Ok(Removed {
        code: removed.code,
        name: removed.name,
        deleted_queues,
    })
}

/// Registers every `(code, name)` row, or none; declares their queues when
/// the broker is there.
pub async fn import(
    hub: &Hub,
    by: &str,
    rows: &[(String, String)],
) -> Result<Vec<Issued>, AgencyError> {
    let issued = hub.registry.import(rows)?;
    if let Ok(link) = link(hub) {
        for i in &issued {
            if let Err(e) = declare_agency(&link, &hub.topology, &i.code).await {
                tracing::warn!(agency = %i.code, error = %e, "queues not declared now; they will be at the next connection");
            }
        }
    }
    audit(
        hub,
        by,
        "agency-import",
        format!("{} agencies", issued.len()),
        issued
            .iter()
            .map(|i| i.code.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    tracing::info!(agencies = issued.len(), "agencies imported");
    Ok(issued)
}

/// A RabbitMQ user of an agency, with the hash of the broker password truc
/// issued to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RabbitUser {
    /// User name: the agency code.
    pub name: String,
    /// `base64(salt ++ sha256(salt ++ password))`, never empty.
    pub password_hash: String,
    /// Hashing algorithm (`rabbit_password_hashing_sha256`).
    pub hashing_algorithm: String,
    /// Tags: none (no management access).
    pub tags: String,
}

/// A RabbitMQ permission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RabbitPermission {
    /// User.
    pub user: String,
    /// Virtual host.
    pub vhost: String,
    /// Configure regex.
    pub configure: String,
    /// Write regex.
    pub write: String,
    /// Read regex.
    pub read: String,
}

/// A RabbitMQ topic permission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RabbitTopicPermission {
    /// User.
    pub user: String,
    /// Virtual host.
    pub vhost: String,
    /// Exchange.
    pub exchange: String,
    /// Write (routing key) regex.
    pub write: String,
    /// Read regex.
    pub read: String,
}

/// RabbitMQ definitions, importable with `rabbitmqctl import_definitions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RabbitDefinitions {
    /// Users.
    pub users: Vec<RabbitUser>,
    /// Permissions.
    pub permissions: Vec<RabbitPermission>,
    /// Topic permissions.
    pub topic_permissions: Vec<RabbitTopicPermission>,
    /// Agencies left out, and why (RabbitMQ ignores this key on import).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// An agency's broker account as the definitions need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAccount {
    /// The agency (and user name).
    pub code: AgencyCode,
    /// The stored password hash; `None` for an agency registered before
    /// broker passwords were issued.
    pub password_hash: Option<String>,
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RabbitMQ definitions (users, permissions, topic permissions) letting each
/// agency log in as its own user, publish only `<kind>.<its code>` to the
/// ingress exchange and read only its own inbox and notify queues; nothing
/// else (no configure, no other exchange or queue). Agencies without a
/// stored password hash are left out entirely, with a warning each.
pub fn rabbitmq_definitions(
    prefix: &str,
    vhost: &str,
    accounts: &[BrokerAccount],
) -> RabbitDefinitions {
    let p = regex_escape(prefix);
    let mut d = RabbitDefinitions {
        users: Vec::new(),
        permissions: Vec::new(),
        topic_permissions: Vec::new(),
        warnings: Vec::new(),
    };
    for a in accounts {
        let Some(hash) = a.password_hash.as_deref().filter(|h| !h.is_empty()) else {
            d.warnings.push(format!(
                "agency {c} has no broker password and is left out (its RabbitMQ user, if any, is not changed): issue one with `truc agency rotate-broker-password {c}`, hand it over, then export and import again",
                c = a.code
            ));
            continue;
        };
        let user = a.code.to_string();
        let code = regex_escape(a.code.as_str());
        d.users.push(RabbitUser {
            name: user.clone(),
            password_hash: hash.to_owned(),
            hashing_algorithm: HASHING_ALGORITHM.into(),
            tags: String::new(),
        });
        d.permissions.push(RabbitPermission {
            user: user.clone(),
            vhost: vhost.to_owned(),
            configure: "^$".into(),
            write: format!("^{p}ingress$"),
            read: format!("^{p}(inbox|notify)\\.{code}$"),
        });
        d.topic_permissions.push(RabbitTopicPermission {
            user,
            vhost: vhost.to_owned(),
            exchange: format!("{prefix}ingress"),
            write: format!("^(envelope|status|presence)\\.{code}$"),
            read: "^$".into(),
        });
    }
    d
}

/// The definitions for every registered agency of `hub`.
pub fn definitions(hub: &Hub) -> Result<RabbitDefinitions, AgencyError> {
    let mut accounts = Vec::new();
    for a in hub.registry.list() {
        let password_hash = hub.registry.broker_user(&a.code)?.map(|u| u.password_hash);
        accounts.push(BrokerAccount {
            code: a.code,
            password_hash,
        });
    }
    Ok(rabbitmq_definitions(
        &hub.topology.prefix,
        &crate::core::config::vhost(&hub.config.amqp_url),
        &accounts,
    ))
}

/// Issues a new broker password for `code` (shown once); it takes effect
/// when the definitions are exported and imported again.
pub fn rotate_broker_password(
    hub: &Hub,
    by: &str,
    code: &str,
) -> Result<BrokerIssued, AgencyError> {
    let code = code_of(code)?;
    let issued = hub.registry.rotate_broker_password(&code)?;
    audit(
        hub,
        by,
        "rotate-broker-password",
        code.to_string(),
        format!("broker user {}", issued.broker_user),
    );
    tracing::info!(agency = %code, broker_user = %issued.broker_user, "broker password issued");
    Ok(issued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_confine_each_agency() {
        let codes = vec![BrokerAccount {
            code: AgencyCode::parse("000.00.31.H41").unwrap(),
            password_hash: Some("AAECAyNg/zJUtKzc71d2sm2DauJx8NMaF6gqGHg3PE7hf4Tt".into()),
        }];
        let d = serde_json::to_value(rabbitmq_definitions("lgsp.", "/", &codes)).unwrap();
        assert_eq!(d["users"][0]["name"], "000.00.31.H41");
        assert_eq!(
            d["permissions"][0]["read"],
            "^lgsp\\.(inbox|notify)\\.000\\.00\\.31\\.H41$"
        );
        assert_eq!(d["permissions"][0]["write"], "^lgsp\\.ingress$");
        assert_eq!(d["permissions"][0]["configure"], "^$");
        assert_eq!(
            d["topic_permissions"][0]["write"],
            "^(envelope|status|presence)\\.000\\.00\\.31\\.H41$"
        );
        assert_eq!(
            d["users"][0]["password_hash"],
            "AAECAyNg/zJUtKzc71d2sm2DauJx8NMaF6gqGHg3PE7hf4Tt"
        );
        assert_eq!(
            d["users"][0]["hashing_algorithm"],
            "rabbit_password_hashing_sha256"
        );
        assert_eq!(d["users"][0]["tags"], "");
        assert_eq!(
            d["topic_permissions"][0]["exchange"], "lgsp.ingress",
            "the configured prefix"
        );
        assert!(d.get("warnings").is_none());
        assert_eq!(crate::core::config::vhost("amqp://g:g@h:5672/%2f"), "/");
        assert_eq!(crate::core::config::vhost("amqp://g:g@h:5672/prod"), "prod");
    }

    #[test]
    fn agencies_without_a_broker_password_are_left_out_with_a_warning() {
        let accounts = vec![
            BrokerAccount {
                code: AgencyCode::parse("H1").unwrap(),
                password_hash: None,
            },
            BrokerAccount {
                code: AgencyCode::parse("H2").unwrap(),
                password_hash: Some(String::new()),
            },
            BrokerAccount {
                code: AgencyCode::parse("H3").unwrap(),
                password_hash: Some("AAECAyNg/zJUtKzc71d2sm2DauJx8NMaF6gqGHg3PE7hf4Tt".into()),
            },
        ];
        let d = rabbitmq_definitions("t1x2.", "/", &accounts);
        let users: Vec<&str> = d.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(users, ["H3"]);
        assert!(d.users.iter().all(|u| !u.password_hash.is_empty()));
        assert_eq!(d.permissions.len(), 1);
        assert_eq!(d.topic_permissions.len(), 1);
        assert_eq!(d.permissions[0].write, "^t1x2\\.ingress$");
        assert_eq!(d.permissions[0].read, "^t1x2\\.(inbox|notify)\\.H3$");
        assert_eq!(d.warnings.len(), 2);
        assert!(d.warnings[0].contains("rotate-broker-password H1"));
        assert!(d.warnings[1].contains("H2"));
        assert_eq!(regex_escape("a.b+c(d)"), "a\\.b\\+c\\(d\\)");
    }
}

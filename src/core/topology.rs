//! The RabbitMQ topology as data (`queues/topology.toml`): exchanges, fixed
//! queues and the per-agency queue templates. Pure: the `amqp` module declares
//! what this module describes.
//!
//! Invariant: every name is prefixed; every declared object is durable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::code::AgencyCode;

/// The built-in topology, used when no `queues/` directory is found.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../queues/topology.toml");

/// Topology errors.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not parse or is inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Exchange type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// Topic.
    Topic,
    /// Direct.
    Direct,
    /// Fanout.
    Fanout,
}

/// A queue argument value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ArgValue {
    /// An integer (`x-max-priority`, `x-max-length`, `x-message-ttl`).
    Int(i64),
    /// A string (`x-dead-letter-exchange`, `x-queue-type`).
    Str(String),
}

/// An exchange to declare.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeSpec {
    /// Name (prefixed once loaded).
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: ExchangeKind,
    /// Arguments (`alternate-exchange`).
    #[serde(default)]
    pub arguments: BTreeMap<String, ArgValue>,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindSpec {
    /// Exchange name (prefixed once loaded).
    pub exchange: String,
    /// Routing key.
    pub key: String,
}

/// A queue to declare.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// Name (prefixed once loaded).
    pub name: String,
    /// Bindings.
    #[serde(default)]
    pub bind: Vec<BindSpec>,
    /// `x-` arguments.
    #[serde(default)]
    pub arguments: BTreeMap<String, ArgValue>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgencyTemplates {
    ingress: QueueSpec,
    inbox: QueueSpec,
    notify: QueueSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    #[serde(default)]
    exchange: Vec<ExchangeSpec>,
    #[serde(default)]
    queue: Vec<QueueSpec>,
    agency: AgencyTemplates,
}

/// The loaded topology, names prefixed.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Name prefix (`lgsp.`).
    pub prefix: String,
    /// Exchanges.
    pub exchanges: Vec<ExchangeSpec>,
    /// Fixed queues.
    pub queues: Vec<QueueSpec>,
    ingress: QueueSpec,
    inbox: QueueSpec,
    notify: QueueSpec,
}

fn subst(s: &str, prefix: &str, code: &str) -> String {
    s.replace("{prefix}", prefix).replace("{code}", code)
}

fn resolve(q: &QueueSpec, prefix: &str, code: &str) -> QueueSpec {
    QueueSpec {
        name: format!("{prefix}{}", subst(&q.name, prefix, code)),
        bind: q
            .bind
            .iter()
            .map(|b| BindSpec {
                exchange: format!("{prefix}{}", subst(&b.exchange, prefix, code)),
                key: subst(&b.key, prefix, code),
            })
            .collect(),
        arguments: q
            .arguments
            .iter()
            .map(|(k, v)| (k.clone(), subst_arg(v, prefix, code)))
            .collect(),
    }
}

fn subst_arg(v: &ArgValue, prefix: &str, code: &str) -> ArgValue {
    match v {
        ArgValue::Str(s) => ArgValue::Str(subst(s, prefix, code)),
        ArgValue::Int(i) => ArgValue::Int(*i),
    }
}

impl Topology {
    /// Parses topology text for `prefix`; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path, prefix: &str) -> Result<Self, TopologyError> {
        let invalid = |message: String| TopologyError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: TopologyFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let exchanges: Vec<ExchangeSpec> = file
            .exchange
            .iter()
            .map(|e| ExchangeSpec {
                name: format!("{prefix}{}", e.name),
                kind: e.kind,
                arguments: e
                    .arguments
                    .iter()
                    .map(|(k, v)| (k.clone(), subst_arg(v, prefix, "")))
                    .collect(),
            })
            .collect();
        let queues: Vec<QueueSpec> = file.queue.iter().map(|q| resolve(q, prefix, "")).collect();
        let topo = Self {
            prefix: prefix.to_owned(),
            exchanges,
            queues,
            ingress: file.agency.ingress,
            inbox: file.agency.inbox,
            notify: file.agency.notify,
        };
        for needed in ["ingress", "deliver", "notify", "dlx", "release"] {
            if !topo
                .exchanges
                .iter()
                .any(|e| e.name == format!("{prefix}{needed}"))
            {
                return Err(invalid(format!("exchange {needed:?} is missing")));
            }
        }
        for needed in ["ingress", "dead", "release", "rejected", "undelivered"] {
            if !topo
                .queues
                .iter()
                .any(|q| q.name == format!("{prefix}{needed}"))
            {
                return Err(invalid(format!("queue {needed:?} is missing")));
            }
        }
        for (name, ttl) in crate::core::scheduler::BUCKETS {
            let qname = format!("{prefix}delay.{name}");
            let q = topo
                .queues
                .iter()
                .find(|q| q.name == qname)
                .ok_or_else(|| {
                    invalid(format!("delay bucket queue \"delay.{name}\" is missing"))
                })?;
            if q.arguments.get("x-message-ttl") != Some(&ArgValue::Int(ttl.as_millis() as i64)) {
                return Err(invalid(format!(
                    "delay.{name} must have x-message-ttl = {}",
                    ttl.as_millis()
                )));
            }
            if q.arguments.get("x-dead-letter-exchange")
                != Some(&ArgValue::Str(format!("{prefix}release")))
            {
                return Err(invalid(format!(
                    "delay.{name} must dead-letter to the release exchange"
                )));
            }
            // A quorum queue dead-letters at most once unless told otherwise:
            // a held delivery falling due while the release queue's node
            // stops would be gone. At least once needs reject-publish.
            let is = |k: &str, v: &str| q.arguments.get(k) == Some(&ArgValue::Str(v.into()));
            if is("x-queue-type", "quorum")
                && !(is("x-dead-letter-strategy", "at-least-once")
                    && is("x-overflow", "reject-publish"))
            {
                return Err(invalid(format!(
                    "delay.{name} is a quorum queue: it must have x-dead-letter-strategy = \"at-least-once\" and x-overflow = \"reject-publish\", or a held delivery falling due while a broker node stops is lost"
                )));
            }
        }
        let probe = AgencyCode::parse("PROBE").expect("valid code");
        for q in topo.queues.iter().chain(topo.agency_queues(&probe).iter()) {
            for b in &q.bind {
                if !topo.exchanges.iter().any(|e| e.name == b.exchange) {
                    return Err(invalid(format!(
                        "queue {:?} binds to undeclared exchange {:?}",
                        q.name, b.exchange
                    )));
                }
            }
        }
        Ok(topo)
    }

    /// Loads `dir/topology.toml`, or the built-in topology when absent.
    pub fn load(dir: &Path, prefix: &str) -> Result<Self, TopologyError> {
        let path = dir.join("topology.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_toml(&text, &path, prefix),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::from_toml(
                DEFAULT_TOPOLOGY,
                Path::new("(built-in topology.toml)"),
                prefix,
            ),
            Err(source) => Err(TopologyError::Read { path, source }),
        }
    }

    /// The built-in topology under `prefix`.
    pub fn builtin(prefix: &str) -> Self {
        Self::from_toml(
            DEFAULT_TOPOLOGY,
            Path::new("(built-in topology.toml)"),
            prefix,
        )
        .expect("the built-in topology is valid")
    }

    /// Full name of a fixed exchange or queue (`ingress` → `lgsp.ingress`).
    pub fn name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// The queues of `code`: its ingress (what it publishes), inbox and
    /// notify queues.
    pub fn agency_queues(&self, code: &AgencyCode) -> [QueueSpec; 3] {
        [
            resolve(&self.ingress, &self.prefix, code.as_str()),
            resolve(&self.inbox, &self.prefix, code.as_str()),
            resolve(&self.notify, &self.prefix, code.as_str()),
        ]
    }

    /// Name of the ingress queue of `code`: what it publishes waits there.
    pub fn ingress(&self, code: &AgencyCode) -> String {
        self.agency_queues(code)[0].name.clone()
    }

    /// Name of the inbox queue of `code`.
    pub fn inbox(&self, code: &AgencyCode) -> String {
        self.agency_queues(code)[1].name.clone()
    }

    /// Name of the notify queue of `code`.
    pub fn notify(&self, code: &AgencyCode) -> String {
        self.agency_queues(code)[2].name.clone()
    }

    /// Names of every exchange of the topology.
    pub fn exchange_names(&self) -> Vec<String> {
        self.exchanges.iter().map(|e| e.name.clone()).collect()
    }

    /// Names of every fixed queue (delay buckets included), then of the
    /// queues of each of `agencies` (ingress, inbox, notify): everything to delete
    /// when a prefix is torn down (tests, the benchmark).
    pub fn queue_names<'a>(
        &self,
        agencies: impl IntoIterator<Item = &'a AgencyCode>,
    ) -> Vec<String> {
        let mut names: Vec<String> = self.queues.iter().map(|q| q.name.clone()).collect();
        for code in agencies {
            names.extend(self.agency_queues(code).map(|q| q.name));
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_topology_matches_the_contract() {
        let t = Topology::builtin("lgsp.");
        let code = AgencyCode::parse("000.00.32.H41").unwrap();
        let [ingress_q, inbox, notify] = t.agency_queues(&code);
        assert_eq!(ingress_q.name, "lgsp.ingress.000.00.32.H41");
        assert_eq!(
            ingress_q.bind,
            vec![BindSpec {
                exchange: "lgsp.ingress".into(),
                key: "*.000.00.32.H41".into()
            }]
        );
        assert_eq!(
            ingress_q.arguments["x-queue-type"],
            ArgValue::Str("quorum".into())
        );
        assert_eq!(
            ingress_q.arguments["x-overflow"],
            ArgValue::Str("reject-publish".into())
        );
        assert_eq!(inbox.name, "lgsp.inbox.000.00.32.H41");
        assert_eq!(
            inbox.bind,
            vec![BindSpec {
                exchange: "lgsp.deliver".into(),
                key: "000.00.32.H41".into()
            }]
        );
        assert_eq!(inbox.arguments["x-max-priority"], ArgValue::Int(5));
        assert_eq!(
            inbox.arguments["x-dead-letter-exchange"],
            ArgValue::Str("lgsp.dlx".into())
        );
        assert_eq!(notify.name, "lgsp.notify.000.00.32.H41");
        let names = t.queue_names([&code]);
        assert_eq!(names.len(), t.queues.len() + 3);
        assert!(names.contains(&"lgsp.delay.1d".to_owned()));
        let anchor = t.queues.iter().find(|q| q.name == "lgsp.anchor").unwrap();
        assert_eq!(anchor.arguments["x-max-length"], ArgValue::Int(1));
        assert!(names.ends_with(&[
            ingress_q.name.clone(),
            inbox.name.clone(),
            notify.name.clone()
        ]));
        assert_eq!(t.exchange_names().len(), 7);
        let ingress = t.queues.iter().find(|q| q.name == "lgsp.ingress").unwrap();
        assert_eq!(ingress.bind[0].exchange, "lgsp.ingress.unrouted");
        let ex = t
            .exchanges
            .iter()
            .find(|e| e.name == "lgsp.ingress")
            .unwrap();
        assert_eq!(ex.kind, ExchangeKind::Topic);
        assert_eq!(
            ex.arguments["alternate-exchange"],
            ArgValue::Str("lgsp.ingress.unrouted".into())
        );
    }

    /// The cluster profile: the builtin's queues, each fixed queue and each
    /// agency's ingress and notify queue quorum (replicated), the inbox a
    /// classic priority queue placed on the node with the fewest.
    #[test]
    fn cluster_profile_replicates_all_but_the_inbox() {
        let t = Topology::from_toml(
            include_str!("../../queues/cluster/topology.toml"),
            Path::new("queues/cluster/topology.toml"),
            "lgsp.",
        )
        .unwrap();
        let builtin = Topology::builtin("lgsp.");
        let names = |t: &Topology| t.queues.iter().map(|q| q.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&t), names(&builtin));
        let quorum = |q: &QueueSpec| {
            q.arguments.get("x-queue-type") == Some(&ArgValue::Str("quorum".into()))
        };
        for q in &t.queues {
            assert!(quorum(q), "{} is not replicated", q.name);
        }
        let code = AgencyCode::parse("000.00.32.H41").unwrap();
        let [ingress_q, inbox, notify] = t.agency_queues(&code);
        assert!(quorum(&ingress_q) && quorum(&notify));
        assert!(!quorum(&inbox));
        assert_eq!(
            inbox.arguments.get("x-max-priority"),
            Some(&ArgValue::Int(5))
        );
        assert_eq!(
            inbox.arguments.get("x-queue-master-locator"),
            Some(&ArgValue::Str("min-masters".into()))
        );
    }

    /// A quorum delay bucket left to the broker's default (at most once)
    /// could lose a held delivery while a node stops: refused at load.
    #[test]
    fn refuses_a_quorum_queue_dead_lettering_at_most_once() {
        let cluster = include_str!("../../queues/cluster/topology.toml");
        let at_most_once = cluster.replacen(
            r#""x-message-ttl" = 30000, "x-dead-letter-exchange" = "{prefix}release", "x-dead-letter-strategy" = "at-least-once", "x-overflow" = "reject-publish""#,
            r#""x-message-ttl" = 30000, "x-dead-letter-exchange" = "{prefix}release""#,
            1,
        );
        assert_ne!(at_most_once, cluster, "the 30 s bucket's arguments moved");
        let e = Topology::from_toml(&at_most_once, Path::new("c.toml"), "lgsp.").unwrap_err();
        assert!(
            e.to_string().contains("delay.30s") && e.to_string().contains("at-least-once"),
            "{e}"
        );
    }

    #[test]
    fn refuses_incomplete_topology() {
        let e = Topology::from_toml(
            "[agency.ingress]\nname='g'\n[agency.inbox]\nname='i'\n[agency.notify]\nname='n'\n",
            Path::new("t.toml"),
            "p.",
        )
        .unwrap_err();
        assert!(e.to_string().contains("t.toml"), "{e}");
    }
}

//! Presence as an operator sees it: every agency's state, one agency's
//! connection history, and the connects and disconnects of a period (for
//! reports). Read-only; no HTTP or command-line types.
//!
//! Invariants: the registry is authoritative at once (a disabled agency
//! shows `disabled` before the presence task's next round); times are
//! RFC 3339; history entries are oldest first per agency.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::core::code::AgencyCode;
use crate::core::presence::AgencyPresence;
use crate::core::time::{format_rfc3339, now_ms};
use crate::operator::queues::{infos, is_online, link};
use crate::operator::Hub;
use crate::state::presence::{HistoryEntry, PresenceError};

/// Presence view errors.
#[derive(Debug, thiserror::Error)]
pub enum PresenceViewError {
    /// The text is not an agency code.
    #[error("{0}")]
    BadCode(String),
    /// Neither registered nor ever seen.
    #[error("agency {0} is not registered and has no history")]
    Unknown(AgencyCode),
    /// The presence book failed.
    #[error(transparent)]
    Book(#[from] PresenceError),
}

impl PresenceViewError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::BadCode(_) | Self::Unknown(_) => false,
            Self::Book(e) => e.is_retryable(),
        }
    }
}

/// One agency's presence as `GET /v1/presence` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceView {
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
    /// `online`, `offline`, `disabled`, or `unknown` (not observed yet).
    pub state: String,
    /// Since when (RFC 3339).
    pub since: Option<String>,
    /// Why it is in that state (`consumer`, `heartbeat`, `no-consumer`…).
    pub cause: Option<String>,
    /// Consumers on its inbox at the last poll.
    pub consumers: Option<u32>,
    /// Last `online` heartbeat (RFC 3339).
    pub last_heartbeat: Option<String>,
}

/// Every registered agency's presence, by code.
pub fn list(hub: &Hub) -> Result<Vec<PresenceView>, PresenceViewError> {
    let states: HashMap<AgencyCode, AgencyPresence> = hub.presence.load()?.into_iter().collect();
    let mut out = Vec::new();
    for a in hub.registry.list() {
        let p = states.get(&a.code);
        let state = match p {
            // The registry is authoritative at once; presence follows at its next round.
            _ if !a.enabled => "disabled",
            Some(p) => p.state.as_str(),
            None => "unknown",
        };
        out.push(PresenceView {
            code: a.code.to_string(),
            name: a.name.clone(),
            state: state.to_owned(),
            since: p.map(|p| format_rfc3339(p.since_ms)),
            cause: p.map(|p| p.cause.as_str().to_owned()),
            consumers: p.map(|p| p.consumers),
            last_heartbeat: p.and_then(|p| p.heartbeat_ms).map(format_rfc3339),
        });
    }
    out.sort_by(|a, b| a.code.cmp(&b.code));
    Ok(out)
}

/// One agency's connects and disconnects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Code.
    pub code: AgencyCode,
    /// Start of the window (RFC 3339).
    pub since: String,
    /// End of the window (RFC 3339), when bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Transitions, oldest first.
    pub entries: Vec<HistoryEntry>,
}

/// The history of `code` in `[since_ms, until_ms)`.
pub fn history(
    hub: &Hub,
    code: &str,
    since_ms: i64,
    until_ms: Option<i64>,
) -> Result<History, PresenceViewError> {
    let code = AgencyCode::parse(code)
        .map_err(|e| PresenceViewError::BadCode(format!("{code:?}: {e}")))?;
    let mut entries = hub.presence.history_view(&code, since_ms)?;
    if entries.is_empty() && hub.registry.get(&code).is_none() {
        return Err(PresenceViewError::Unknown(code));
    }
    if let Some(u) = until_ms {
        entries.retain(|e| e.at_ms < u);
    }
    Ok(History {
        code,
        since: format_rfc3339(since_ms),
        until: until_ms.map(format_rfc3339),
        entries,
    })
}

/// A connect or disconnect of a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEvent {
    /// Agency.
    pub agency: AgencyCode,
    /// When (RFC 3339).
    pub at: String,
    /// `connected`, `disconnected`…
    pub event: String,
    /// Why.
    pub cause: String,
}

/// Each agency's connects and disconnects in `[since, until)`, from the
/// presence tracker's history, oldest first per agency.
pub fn connection_history(
    hub: &Hub,
    since: Option<i64>,
    until: Option<i64>,
) -> Result<Vec<ConnectionEvent>, PresenceError> {
    let mut out = Vec::new();
    for a in hub.registry.list() {
        for e in hub.presence.history_view(&a.code, since.unwrap_or(0))? {
            if until.is_some_and(|u| e.at_ms >= u) {
                break;
            }
            out.push(ConnectionEvent {
                agency: a.code.clone(),
                at: e.at,
                event: e.event,
                cause: e.cause,
            });
        }
    }
    Ok(out)
}

/// What the broker says about an agency's inbox at this moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionNow {
    /// Agency.
    pub agency: AgencyCode,
    /// Consumers on its inbox.
    pub inbox_consumers: u32,
    /// Online (presence tracker, else consumers).
    pub online: bool,
    /// When asked (RFC 3339).
    pub at: String,
}

/// What the broker says about each agency's inbox at this moment (the
/// connection *history* comes from the presence tracker). Empty when the
/// hub is not connected to the broker.
pub async fn connections_now(hub: &Hub) -> Vec<ConnectionNow> {
    let Ok(link) = link(hub) else {
        return Vec::new();
    };
    let at = format_rfc3339(now_ms());
    let agencies = hub.registry.list();
    let names: Vec<String> = agencies
        .iter()
        .map(|a| hub.topology.inbox(&a.code))
        .collect();
    let facts = infos(link, names).await;
    let mut out = Vec::new();
    for (a, info) in agencies.iter().zip(facts) {
        if let Some(info) = info {
            out.push(ConnectionNow {
                agency: a.code.clone(),
                inbox_consumers: info.consumers,
                online: is_online(hub, &a.code, &info),
                at: at.clone(),
            });
        }
    }
    out
}

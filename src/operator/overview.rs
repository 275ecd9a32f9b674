//! The hub at a glance, for the console's first page: agencies by
//! presence, inbox depths, dead letters, and envelopes accepted per minute
//! over the last hour, each cut to the caller's [`Scope`].
//!
//! Invariants: a broker that does not answer leaves the queue figures
//! empty (`None`) with the reason, never zeros; dead and rejected counts
//! are shown only to a scope over every agency.

use serde::{Deserialize, Serialize};

use crate::core::time::now_ms;
use crate::operator::presence::{self, PresenceViewError};
use crate::operator::queues::{self, QueueRow};
use crate::operator::scope::Scope;
use crate::operator::Hub;
use crate::state::store::StoreError;

/// Minutes [`Overview::per_minute`] covers.
pub const MINUTES: usize = 60;

/// The hub at a glance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Overview {
    /// Agencies in scope.
    pub agencies: usize,
    /// Of them online.
    pub online: usize,
    /// Offline.
    pub offline: usize,
    /// Disabled.
    pub disabled: usize,
    /// Not observed yet.
    pub unknown: usize,
    /// Inboxes, deepest first (`None`: the broker did not answer).
    pub inboxes: Option<Vec<QueueRow>>,
    /// Why the queue figures are missing.
    pub broker_error: Option<String>,
    /// Messages in the dead-letter queue (`undelivered`).
    pub dead: Option<u32>,
    /// Messages in the rejected queue.
    pub rejected: Option<u32>,
    /// Envelopes accepted in each of the last [`MINUTES`] minutes, oldest
    /// first.
    pub per_minute: Vec<u64>,
    /// When the last minute of `per_minute` began, ms.
    pub last_minute_ms: i64,
}

/// Overview errors.
#[derive(Debug, thiserror::Error)]
pub enum OverviewError {
    /// Presence could not be read.
    #[error(transparent)]
    Presence(#[from] PresenceViewError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OverviewError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Presence(e) => e.is_retryable(),
            Self::Store(e) => e.is_retryable(),
        }
    }
}

/// The overview as `scope` sees it.
pub async fn overview(hub: &Hub, scope: &Scope) -> Result<Overview, OverviewError> {
    let mut o = Overview::default();
    for p in presence::list(hub)? {
        if !scope.sees_text(&p.code) {
            continue;
        }
        o.agencies += 1;
        match p.state.as_str() {
            "online" => o.online += 1,
            "offline" => o.offline += 1,
            "disabled" => o.disabled += 1,
            _ => o.unknown += 1,
        }
    }
    match queues::list(hub).await {
        Ok(mut rows) => {
            rows.retain(|r| scope.sees_text(&r.code));
            rows.sort_by_key(|r| std::cmp::Reverse(r.messages.unwrap_or(0)));
            o.inboxes = Some(rows);
        }
        Err(e) => o.broker_error = Some(e.to_string()),
    }
    if *scope == Scope::All {
        if let Ok(link) = queues::link(hub) {
            let names = vec![
                hub.topology.name("undelivered"),
                hub.topology.name("rejected"),
            ];
            let got = queues::infos(link, names).await;
            o.dead = got.first().cloned().flatten().map(|i| i.messages);
            o.rejected = got.get(1).cloned().flatten().map(|i| i.messages);
        }
    }
    let now = now_ms();
    let this_minute = now - now.rem_euclid(60_000);
    let first = this_minute - (MINUTES as i64 - 1) * 60_000;
    o.per_minute = vec![0; MINUTES];
    o.last_minute_ms = this_minute;
    for r in hub
        .router
        .tracking()
        .list(usize::MAX, |r| r.accepted_at_ms >= first)?
    {
        let visible = scope.sees(&r.from) || r.dests.iter().any(|d| scope.sees(&d.code));
        if visible {
            let i = ((r.accepted_at_ms - first) / 60_000) as usize;
            if let Some(n) = o.per_minute.get_mut(i) {
                *n += 1;
            }
        }
    }
    Ok(o)
}

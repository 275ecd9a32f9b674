//! Envelope timelines as an operator sees them: one envelope (found by id
//! alone when a single source sent it) and filtered listings. Read-only; no
//! HTTP or command-line types.
//!
//! Invariants: every view carries RFC 3339 times beside the stored `_ms`
//! fields; a lookup without a source never guesses between two sources;
//! state filters accept only the states the router writes.

use serde::{Deserialize, Serialize};

use crate::core::code::AgencyCode;
use crate::core::reason::Reason;
use crate::core::time::format_rfc3339;
use crate::core::timeline::DeliveryState;
use crate::operator::scope::Scope;
use crate::operator::Hub;
use crate::state::store::StoreError;
use crate::state::tracking::{DestTrack, EnvelopeRecord, Event};

/// The destination states the router writes; `status-NN` (any other
/// status code from the destination) comes on top.
pub const STATES: [&str; 12] = DeliveryState::NAMES;

/// Whether `s` is a destination state: one of [`STATES`] or `status-NN`.
pub fn is_state(s: &str) -> bool {
    DeliveryState::parse(s).is_some()
}

/// Envelope lookup errors.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// A query parameter is invalid.
    #[error("{0}")]
    BadQuery(String),
    /// No such envelope.
    #[error("no envelope {id}{}", from.as_ref().map(|f| format!(" from {f}")).unwrap_or_default())]
    NotFound {
        /// Source, when given.
        from: Option<AgencyCode>,
        /// Message id.
        id: String,
    },
    /// Several sources sent an envelope with this id.
    #[error("several sources sent envelope {id}: {}; name one with --from", sources.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// Message id.
        id: String,
        /// The sources.
        sources: Vec<AgencyCode>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EnvelopeError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::BadQuery(_) | Self::NotFound { .. } | Self::Ambiguous { .. } => false,
            Self::Store(e) => e.is_retryable(),
        }
    }
}

/// One transition as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// When (RFC 3339).
    pub at: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The state entered.
    pub state: DeliveryState,
    /// Reason code, when there is one.
    pub reason: Option<Reason>,
    /// Human detail.
    pub detail: String,
}

/// One destination's timeline as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestView {
    /// Destination code.
    pub code: AgencyCode,
    /// Current state.
    pub state: DeliveryState,
    /// Transitions, oldest first.
    pub events: Vec<EventView>,
}

/// An envelope record as shown: the stored fields plus RFC 3339 times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeView {
    /// Source.
    pub from: AgencyCode,
    /// The source's message id.
    pub message_id: String,
    /// Subject.
    pub subject: String,
    /// Data type token.
    pub data_type: String,
    /// Priority 0–4.
    pub priority: u8,
    /// Body digest.
    pub digest: String,
    /// Body size in bytes.
    pub size: u64,
    /// MIME type.
    pub content_type: Option<String>,
    /// Accepted at (RFC 3339).
    pub accepted_at: String,
    /// Accepted at (ms since the epoch).
    pub accepted_at_ms: i64,
    /// Deadline (RFC 3339).
    pub deliver_by: Option<String>,
    /// Deadline (ms).
    pub deliver_by_ms: Option<i64>,
    /// Not delivered before (RFC 3339).
    pub not_before: Option<String>,
    /// Not delivered before (ms).
    pub not_before_ms: Option<i64>,
    /// Delivery attempts allowed.
    pub max_attempts: u32,
    /// Per destination.
    pub dests: Vec<DestView>,
    /// Bounce-after of the policy, ms.
    pub bounce_after_ms: Option<u64>,
}

fn event_view(e: &Event) -> EventView {
    EventView {
        at: format_rfc3339(e.at_ms),
        at_ms: e.at_ms,
        state: e.state,
        reason: e.reason,
        detail: e.detail.clone(),
    }
}

fn dest_view(d: &DestTrack) -> DestView {
    DestView {
        code: d.code.clone(),
        state: d.state,
        events: d.events.iter().map(event_view).collect(),
    }
}

/// The view of `r`.
pub fn view(r: &EnvelopeRecord) -> EnvelopeView {
    EnvelopeView {
        from: r.from.clone(),
        message_id: r.message_id.clone(),
        subject: r.subject.clone(),
        data_type: r.data_type.clone(),
        priority: r.priority,
        digest: r.digest.clone(),
        size: r.size,
        content_type: r.content_type.clone(),
        accepted_at: format_rfc3339(r.accepted_at_ms),
        accepted_at_ms: r.accepted_at_ms,
        deliver_by: r.deliver_by_ms.map(format_rfc3339),
        deliver_by_ms: r.deliver_by_ms,
        not_before: r.not_before_ms.map(format_rfc3339),
        not_before_ms: r.not_before_ms,
        max_attempts: r.max_attempts,
        dests: r.dests.iter().map(dest_view).collect(),
        bounce_after_ms: r.bounce_after_ms,
    }
}

fn code_of(what: &str, text: &str) -> Result<AgencyCode, EnvelopeError> {
    AgencyCode::parse(text).map_err(|e| EnvelopeError::BadQuery(format!("{what}: {e}")))
}

/// The envelope `id` from `from`; without `from`, the one envelope with
/// that id (refused when several sources sent one).
pub fn show(
    hub: &Hub,
    scope: &Scope,
    from: Option<&str>,
    id: &str,
) -> Result<EnvelopeView, EnvelopeError> {
    let tracking = hub.router.tracking();
    if let Some(from) = from {
        let from = code_of("from", from)?;
        return match tracking
            .get(&from, id)?
            .and_then(|r| scope.envelope(view(&r)))
        {
            Some(v) => Ok(v),
            None => Err(EnvelopeError::NotFound {
                from: Some(from),
                id: id.to_owned(),
            }),
        };
    }
    let mut found: Vec<EnvelopeView> = tracking
        .list(usize::MAX, |r| r.message_id == id)?
        .iter()
        .filter_map(|r| scope.envelope(view(r)))
        .collect();
    match found.len() {
        0 => Err(EnvelopeError::NotFound {
            from: None,
            id: id.to_owned(),
        }),
        1 => Ok(found.remove(0)),
        _ => {
            let mut sources: Vec<AgencyCode> = found.into_iter().map(|r| r.from).collect();
            sources.sort();
            sources.dedup();
            Err(EnvelopeError::Ambiguous {
                id: id.to_owned(),
                sources,
            })
        }
    }
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only from this source.
    pub from: Option<String>,
    /// Only with this destination.
    pub to: Option<String>,
    /// Only with a destination in this state.
    pub state: Option<String>,
    /// Only accepted at or after (ms).
    pub since_ms: Option<i64>,
    /// Only accepted before (ms).
    pub until_ms: Option<i64>,
    /// Most records.
    pub limit: usize,
}

/// The envelopes selected by `s`, newest first.
pub fn list(hub: &Hub, scope: &Scope, s: &Selection) -> Result<Vec<EnvelopeView>, EnvelopeError> {
    let from = s.from.as_deref().map(|c| code_of("from", c)).transpose()?;
    let to = s.to.as_deref().map(|c| code_of("to", c)).transpose()?;
    let state = match s.state.as_deref() {
        None => None,
        Some(st) => Some(DeliveryState::parse(st).ok_or_else(|| {
            EnvelopeError::BadQuery(format!(
                "state {st:?} is not one of {}, status-NN",
                STATES.join(", ")
            ))
        })?),
    };
    let recs = hub.router.tracking().list(s.limit, |r| {
        // A destination's scope judges its own timeline only.
        let seen = |d: &&DestTrack| scope.sees(&r.from) || scope.sees(&d.code);
        from.as_ref().is_none_or(|f| &r.from == f)
            && s.since_ms.is_none_or(|t| r.accepted_at_ms >= t)
            && s.until_ms.is_none_or(|t| r.accepted_at_ms < t)
            && r.dests.iter().filter(seen).any(|d| {
                to.as_ref().is_none_or(|t| &d.code == t) && state.is_none_or(|st| d.state == st)
            })
    })?;
    Ok(recs
        .iter()
        .filter_map(|r| scope.envelope(view(r)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_the_written_ones() {
        assert!(is_state("delivered"));
        assert!(is_state("status-03"));
        assert!(!is_state("status-3"));
        assert!(!is_state("deliverd"));
    }
}

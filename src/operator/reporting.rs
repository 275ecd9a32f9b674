//! The report an operator asks for: the statistics of
//! [`crate::operator::report`] over every envelope record, the connects and
//! disconnects of the period, and the connections at this moment, with
//! periods cut and times shown in the operator's time zone.
//!
//! Invariants: the statistics are computed off the async runtime (the
//! tracking scan is blocking); connection facts never fail the report when
//! the broker is away (they are empty then).

use serde::{Deserialize, Serialize};

use crate::core::time::parse_rfc3339;
use crate::core::zone::Zone;
use crate::operator::presence::{
    connection_history, connections_now, ConnectionEvent, ConnectionNow,
};
use crate::operator::report::{build, By, Report};
use crate::operator::Hub;
use crate::state::presence::PresenceError;
use crate::state::store::StoreError;

/// Report errors.
#[derive(Debug, thiserror::Error)]
pub enum ReportingError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The presence book failed.
    #[error(transparent)]
    Presence(#[from] PresenceError),
    /// The blocking scan did not finish.
    #[error("report task failed: {0}")]
    Task(String),
}

impl ReportingError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Presence(e) => e.is_retryable(),
            Self::Task(_) => true,
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FullReport {
    /// Period kind, bounds and rows.
    #[serde(flatten)]
    pub report: Report,
    /// Each agency's inbox consumers now.
    pub connections_now: Vec<ConnectionNow>,
    /// Connects and disconnects in the period.
    pub connections: Vec<ConnectionEvent>,
}

/// `at` (RFC 3339) as local time in `zone` (kept as it is if it does not parse).
fn local(at: &str, zone: &Zone) -> String {
    parse_rfc3339(at).map_or_else(|_| at.to_owned(), |t| zone.format(t))
}

/// The report over `[since_ms, until_ms)` by `by`, periods cut and times
/// shown in `zone`.
pub async fn report(
    hub: &Hub,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    by: By,
    zone: Zone,
) -> Result<FullReport, ReportingError> {
    let tracking = hub.router.tracking().clone();
    let z = zone.clone();
    let report = tokio::task::spawn_blocking(move || {
        tracking
            .list(usize::MAX, |_| true)
            .map(|records| build(&records, since_ms, until_ms, by, &z))
    })
    .await
    .map_err(|e| ReportingError::Task(e.to_string()))??;
    let mut now = connections_now(hub).await;
    for c in &mut now {
        c.at = local(&c.at, &zone);
    }
    let mut history = connection_history(hub, since_ms, until_ms)?;
    for c in &mut history {
        c.at = local(&c.at, &zone);
    }
    Ok(FullReport {
        report,
        connections_now: now,
        connections: history,
    })
}

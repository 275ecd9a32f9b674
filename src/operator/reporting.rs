//! The report an operator asks for: the statistics of
//! [`crate::operator::report`] over every envelope record, the connects and
//! disconnects of the period, and the connections at this moment.
//!
//! Invariants: the statistics are computed off the async runtime (the
//! tracking scan is blocking); connection facts never fail the report when
//! the broker is away (they are empty then).

use serde::{Deserialize, Serialize};

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

/// The report over `[since_ms, until_ms)` by `by`.
pub async fn report(
    hub: &Hub,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    by: By,
) -> Result<FullReport, ReportingError> {
    let tracking = hub.router.tracking().clone();
    let report = tokio::task::spawn_blocking(move || {
        tracking
            .list(usize::MAX, |_| true)
            .map(|records| build(&records, since_ms, until_ms, by))
    })
    .await
    .map_err(|e| ReportingError::Task(e.to_string()))??;
    Ok(FullReport {
        report,
        connections_now: connections_now(hub).await,
        connections: connection_history(hub, since_ms, until_ms)?,
    })
}

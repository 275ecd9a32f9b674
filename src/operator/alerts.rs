//! The alerts as an operator sees them: those open now and those resolved
//! lately, from the store (whichever instance evaluated them).

use crate::core::alerting::Alert;
use crate::operator::Hub;
use crate::state::alerts::AlertBook;
use crate::state::store::StoreError;

/// The open alerts, by key.
pub fn open(hub: &Hub) -> Result<Vec<Alert>, StoreError> {
    AlertBook::new(hub.store.clone()).open()
}

/// Alerts resolved at or after `since_ms`, newest first (at most 200).
pub fn resolved(hub: &Hub, since_ms: i64) -> Result<Vec<Alert>, StoreError> {
    AlertBook::new(hub.store.clone()).resolved(since_ms, 200)
}

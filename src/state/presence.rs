//! Presence state and connection history in sled: each agency's current
//! [`AgencyPresence`] in the `presence` tree and every [`Transition`] in
//! `presence_log`, keyed by code, time and a sequence number.
//!
//! Invariant: history is append-only; a transition is written before the
//! next observation of the same agency is taken.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::core::code::AgencyCode;
use crate::core::presence::{AgencyPresence, Transition};
use crate::core::time::format_rfc3339;
use crate::state::codec;
use crate::state::keys::Key;
use crate::state::store::{Store, StoreError};

/// Presence store errors.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for PresenceError {
    fn from(e: sled::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<codec::CodecError> for PresenceError {
    fn from(e: codec::CodecError) -> Self {
        Self::Store(e.into())
    }
}

impl PresenceError {
    /// Whether the next round may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
        }
    }
}

/// Presence state and history in sled.
#[derive(Clone)]
pub struct PresenceBook {
    store: Store,
    seq: Arc<AtomicU32>,
}

/// One history line as the admin API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When (RFC 3339).
    pub at: String,
    /// When (ms).
    pub at_ms: i64,
    /// `connected`, `disconnected`, `disabled`, `first-seen-online`, `first-seen-offline`.
    pub event: String,
    /// State left (absent at the first observation).
    pub from: Option<String>,
    /// State entered.
    pub to: String,
    /// Why.
    pub cause: String,
}

impl HistoryEntry {
    fn of(t: &Transition) -> Self {
        use crate::core::presence::State::*;
        let event = match (t.from, t.to) {
            (None, s) => format!("first-seen-{}", s.as_str()),
            (_, Online) => "connected".into(),
            (Some(Online), Offline) => "disconnected".into(),
            (_, Disabled) => "disabled".into(),
            (Some(Disabled), Offline) => "enabled".into(),
            (Some(Offline), Offline) => "offline".into(),
        };
        Self {
            at: format_rfc3339(t.at_ms),
            at_ms: t.at_ms,
            event,
            from: t.from.map(|s| s.as_str().to_owned()),
            to: t.to.as_str().to_owned(),
            cause: t.cause.as_str().to_owned(),
        }
    }
}

/// Key of a transition: `code \0 at_ms (u64 BE) seq (u32 BE)`.
fn log_key(code: &AgencyCode, at_ms: i64, seq: u32) -> Vec<u8> {
    Key::new()
        .code(code)
        .u64(at_ms.max(0) as u64)
        .u32(seq)
        .into_bytes()
}

impl PresenceBook {
    /// Over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            seq: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Every persisted agency state.
    pub fn load(&self) -> Result<Vec<(AgencyCode, AgencyPresence)>, PresenceError> {
        let mut out = Vec::new();
        for item in self.store.presence().iter() {
            let (k, v) = item?;
            if let Some(code) = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| AgencyCode::parse(s).ok())
            {
                out.push((code, codec::decode(&v)?));
            }
        }
        Ok(out)
    }

    /// The persisted state of `code`.
    pub fn get(&self, code: &AgencyCode) -> Result<Option<AgencyPresence>, PresenceError> {
        match self.store.presence().get(code.as_str())? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Saves the state of `code`.
    pub fn save(&self, code: &AgencyCode, p: &AgencyPresence) -> Result<(), PresenceError> {
        self.store
            .presence()
            .insert(code.as_str(), codec::encode(p)?)?;
        Ok(())
    }

    /// Appends a transition to the history.
    pub fn append(&self, t: &Transition) -> Result<(), PresenceError> {
        let k = log_key(&t.code, t.at_ms, self.seq.fetch_add(1, Ordering::Relaxed));
        self.store.presence_log().insert(k, codec::encode(t)?)?;
        Ok(())
    }

    /// The transitions of `code` at or after `since_ms`, oldest first.
    pub fn history(
        &self,
        code: &AgencyCode,
        since_ms: i64,
    ) -> Result<Vec<Transition>, PresenceError> {
        let start = Key::new()
            .code(code)
            .u64(since_ms.max(0) as u64)
            .into_bytes();
        let end = Key::new()
            .code(code)
            .u64(u64::MAX)
            .u32(u32::MAX)
            .into_bytes();
        let mut out = Vec::new();
        for item in self.store.presence_log().range(start..=end) {
            let (_, v) = item?;
            out.push(codec::decode(&v)?);
        }
        Ok(out)
    }

    /// History entries of `code` at or after `since_ms`, as shown.
    pub fn history_view(
        &self,
        code: &AgencyCode,
        since_ms: i64,
    ) -> Result<Vec<HistoryEntry>, PresenceError> {
        Ok(self
            .history(code, since_ms)?
            .iter()
            .map(HistoryEntry::of)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::presence::{Cause, State};

    #[test]
    fn history_is_ordered_and_filtered_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let book = PresenceBook::new(Store::open(dir.path()).unwrap());
        let a = AgencyCode::parse("000.00.32.H41").unwrap();
        let b = AgencyCode::parse("000.00.32").unwrap();
        let t = |code: &AgencyCode, at_ms, from, to| Transition {
            code: code.clone(),
            from,
            to,
            at_ms,
            cause: Cause::Consumer,
        };
        book.append(&t(&a, 1000, None, State::Offline)).unwrap();
        book.append(&t(&a, 2000, Some(State::Offline), State::Online))
            .unwrap();
        book.append(&t(&a, 2000, Some(State::Online), State::Offline))
            .unwrap();
        book.append(&t(&b, 1500, None, State::Online)).unwrap();
        let all = book.history_view(&a, 0).unwrap();
        let events: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["first-seen-offline", "connected", "disconnected"]);
        assert_eq!(book.history(&a, 1500).unwrap().len(), 2);
        assert_eq!(
            book.history(&b, 0).unwrap().len(),
            1,
            "prefix codes do not mix"
        );
        assert!(book.history(&a, 2001).unwrap().is_empty());
    }
}

//! The alerts the leader keeps in the store: the open ones (so that every
//! instance's console lists them, and a new leader announces nothing twice)
//! and those resolved in the last week.
//!
//! Invariants: an alert is open or in the history, never both after
//! [`AlertBook::apply`]; the history is ordered by resolution time and
//! trimmed by [`AlertBook::sweep`].

use crate::core::alerting::{Alert, Step};
use crate::state::codec;
use crate::state::keys::Key;
use crate::state::store::{Store, StoreError};

fn open_key(key: &str) -> Vec<u8> {
    Key::new().str("alert-open").str(key).into_bytes()
}

fn done_key(resolved_ms: i64, key: &str) -> Vec<u8> {
    Key::new()
        .str("alert-done")
        .i64(resolved_ms)
        .str(key)
        .into_bytes()
}

/// The alerts of a store; cheap to clone; blocking.
#[derive(Clone)]
pub struct AlertBook {
    store: Store,
}

impl AlertBook {
    /// The alerts in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The open alerts, by key.
    pub fn open(&self) -> Result<Vec<Alert>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .store
            .meta()
            .scan_prefix(Key::new().str("alert-open").prefix())
        {
            let (_, v) = item?;
            out.push(codec::decode(&v)?);
        }
        Ok(out)
    }

    /// Alerts resolved at or after `since_ms`, newest first, at most `n`.
    pub fn resolved(&self, since_ms: i64, n: usize) -> Result<Vec<Alert>, StoreError> {
        let mut out = Vec::new();
        let lo = Key::new().str("alert-done").i64(since_ms).prefix();
        let hi = Key::new().str("alert-done").i64(i64::MAX).prefix();
        for item in self.store.meta().range(lo..hi).rev() {
            let (_, v) = item?;
            out.push(codec::decode(&v)?);
            if out.len() >= n {
                break;
            }
        }
        Ok(out)
    }

    /// Keeps what `step` changed.
    pub fn apply(&self, step: &Step) -> Result<(), StoreError> {
        let meta = self.store.meta();
        for a in &step.changed {
            meta.insert(open_key(&a.key), codec::encode(a)?)?;
        }
        for a in &step.resolved {
            meta.remove(open_key(&a.key))?;
            meta.insert(
                done_key(a.resolved_ms.unwrap_or_default(), &a.key),
                codec::encode(a)?,
            )?;
        }
        Ok(())
    }

    /// Forgets alerts resolved before `before_ms`.
    pub fn sweep(&self, before_ms: i64) -> Result<usize, StoreError> {
        let lo = Key::new().str("alert-done").prefix();
        let hi = Key::new().str("alert-done").i64(before_ms).prefix();
        let keys: Vec<Vec<u8>> = self
            .store
            .meta()
            .range(lo..hi)
            .map(|r| r.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        for k in &keys {
            self.store.meta().remove(k)?;
        }
        Ok(keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alerting::{Alerting, Condition, Rule};

    #[test]
    fn open_then_resolved_then_swept() {
        let dir = tempfile::tempdir().unwrap();
        let book = AlertBook::new(Store::open(dir.path()).unwrap());
        let mut a = Alerting::default();
        let cond = |s: &str| Condition {
            rule: Rule::InboxDepth,
            subject: s.into(),
            text_vi: "sâu".into(),
            text_en: "deep".into(),
        };
        book.apply(&a.step(1_000, vec![cond("A"), cond("B")], 10_000, 10))
            .unwrap();
        assert_eq!(book.open().unwrap().len(), 2);
        book.apply(&a.step(2_000, vec![cond("B")], 10_000, 10))
            .unwrap();
        book.apply(&a.step(3_000, vec![], 10_000, 10)).unwrap();
        assert!(book.open().unwrap().is_empty());
        let done = book.resolved(0, 10).unwrap();
        assert_eq!(
            done.iter().map(|d| d.subject.as_str()).collect::<Vec<_>>(),
            vec!["B", "A"]
        );
        assert_eq!(book.resolved(2_500, 10).unwrap().len(), 1);
        assert_eq!(book.sweep(2_500).unwrap(), 1);
        assert_eq!(book.resolved(0, 10).unwrap().len(), 1);
    }
}

//! The alerts the leader keeps in the store: the open ones (so that every
//! instance's console lists them, and a new leader announces nothing twice)
//! and those resolved in the last week.
//!
//! Invariants: an alert is open or in the history, never both after
//! [`AlertBook::keep`]; the open ones are the leader's view after each
//! evaluation that could write; the history is ordered by resolution time and
//! trimmed by [`AlertBook::sweep`].

use std::collections::BTreeMap;

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

    /// Keeps what `step` resolved in the history, then makes the store's
    /// open alerts exactly `open` (the leader's own view, after `step`). An
    /// open alert the store lost — a write it took in memory and dropped when
    /// it was reopened after a write failure, or one it refused while full —
    /// is so written again at the next evaluation, not forgotten.
    pub fn keep(&self, step: &Step, open: &[Alert]) -> Result<(), StoreError> {
        let meta = self.store.meta();
        for a in &step.resolved {
            meta.insert(
                done_key(a.resolved_ms.unwrap_or_default(), &a.key),
                codec::encode(a)?,
            )?;
        }
        let stored: BTreeMap<String, Alert> = self
            .open()?
            .into_iter()
            .map(|a| (a.key.clone(), a))
            .collect();
        for a in open {
            if stored.get(&a.key) != Some(a) {
                meta.insert(open_key(&a.key), codec::encode(a)?)?;
            }
        }
        for key in stored.keys() {
            if !open.iter().any(|a| &a.key == key) {
                meta.remove(open_key(key))?;
            }
        }
        Ok(())
    }

    /// The open alerts a leader starts a term with: those in the store, and
    /// those `mine` (this instance's view when it last led) holds that the
    /// store has neither open nor resolved since they fired — alerts whose
    /// keeping failed (the store itself was failing), which would otherwise
    /// never be resolved.
    pub fn resume(&self, mine: Vec<Alert>) -> Result<Vec<Alert>, StoreError> {
        let mut open = self.open()?;
        for a in mine {
            if open.iter().any(|o| o.key == a.key) {
                continue;
            }
            let resolved = self
                .resolved(a.since_ms, usize::MAX)?
                .iter()
                .any(|r| r.key == a.key);
            if !resolved {
                open.push(a);
            }
        }
        Ok(open)
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
        let step = |a: &mut Alerting, now, firing| {
            let st = a.step(now, firing, 10_000, 10);
            book.keep(&st, &a.open().cloned().collect::<Vec<_>>())
                .unwrap();
        };
        step(&mut a, 1_000, vec![cond("A"), cond("B")]);
        assert_eq!(book.open().unwrap().len(), 2);
        step(&mut a, 2_000, vec![cond("B")]);
        step(&mut a, 3_000, vec![]);
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

    /// The store loses an open alert (a write dropped by a reopen after a
    /// failure): the next keeping writes it again; a leader starting a new
    /// term keeps its own open alerts the store never heard of, but not one
    /// another leader resolved meanwhile.
    #[test]
    fn an_open_alert_the_store_lost_is_kept_again_and_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let book = AlertBook::new(store.clone());
        let cond = |s: &str| Condition {
            rule: Rule::Store,
            subject: s.into(),
            text_vi: "hỏng".into(),
            text_en: "failing".into(),
        };
        let mut a = Alerting::default();
        let st = a.step(1_000, vec![cond("store")], 10_000, 10);
        let open: Vec<Alert> = a.open().cloned().collect();
        book.keep(&st, &open).unwrap();
        store.meta().remove(open_key(&open[0].key)).unwrap();
        assert!(book.open().unwrap().is_empty());
        let st = a.step(2_000, vec![cond("store")], 10_000, 10);
        book.keep(&st, &open).unwrap();
        assert_eq!(book.open().unwrap(), open);

        // Lost again; this instance stops leading, then leads again.
        store.meta().remove(open_key(&open[0].key)).unwrap();
        let resumed = book.resume(open.clone()).unwrap();
        assert_eq!(resumed, open);
        // Another leader resolved it meanwhile: not brought back.
        let mut other = Alerting::resume(open.clone());
        let st = other.step(3_000, vec![], 10_000, 10);
        book.keep(&st, &[]).unwrap();
        assert!(book.resume(open.clone()).unwrap().is_empty());
        // One the store has open comes from the store.
        let mut b = Alerting::default();
        let st = b.step(4_000, vec![cond("other")], 10_000, 10);
        let theirs: Vec<Alert> = b.open().cloned().collect();
        book.keep(&st, &theirs).unwrap();
        assert_eq!(book.resume(Vec::new()).unwrap(), theirs);
    }
}

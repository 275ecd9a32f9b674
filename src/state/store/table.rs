//! [`Table`]: one of the store's named, ordered byte maps, on whichever
//! backend the store runs (sled, embedded; PostgreSQL, shared).
//!
//! Invariants: keys are ordered byte-wise (memcmp) on every backend, so
//! prefix scans and ranges mean the same everywhere; every single-key
//! operation is atomic, and [`Table::compare_and_swap`] is atomic *across
//! processes* on a shared backend (dedupe, nonces and the leader lease rely
//! on it); [`Table::insert_all_new`] writes a batch of keys all or none and
//! [`Table::put_max`] only moves a value forward, both atomic across
//! processes too; iterators are lazy and double-ended; a write made here is
//! durable only once [`crate::state::store::Store::durable`] resolves.

use std::ops::{Bound, RangeBounds};

use crate::state::pg::{PgIter, PgTable};
use crate::state::store::StoreError;

/// One key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A named table of the store; cheap to clone.
#[derive(Clone)]
pub struct Table {
    inner: Backend,
    gate: super::Gate,
}

#[derive(Clone)]
enum Backend {
    Sled(sled::Tree),
    Pg(PgTable),
}

impl Table {
    pub(super) fn sled(tree: sled::Tree, gate: super::Gate) -> Self {
        Self {
            inner: Backend::Sled(tree),
            gate,
        }
    }

    pub(super) fn pg(table: PgTable, gate: super::Gate) -> Self {
        Self {
            inner: Backend::Pg(table),
            gate,
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.inner {
            Backend::Sled(t) => Ok(t.get(key)?.map(|v| v.to_vec())),
            Backend::Pg(t) => Ok(t.get(key.as_ref())?),
        }
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        match &self.inner {
            Backend::Sled(t) => Ok(t.contains_key(key)?),
            Backend::Pg(t) => Ok(t.contains_key(key.as_ref())?),
        }
    }

    /// Sets `key` to `value`; returns the previous value.
    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let _w = self.gate.write();
        match &self.inner {
            Backend::Sled(t) => Ok(t.insert(key, value.as_ref())?.map(|v| v.to_vec())),
            Backend::Pg(t) => Ok(t.insert(key.as_ref(), value.as_ref())?),
        }
    }

    /// Sets `key` to `value`, for a caller that needs no previous value.
    /// On a shared store the write is staged: this process reads it back at
    /// once; other instances see it after the next [`super::Store::share`]
    /// or group commit ([`super::Store::durable`]), which sends every staged
    /// write in one statement. Infallible here: a failure to send it is the
    /// share's or the commit's.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), StoreError> {
        let _w = self.gate.write();
        match &self.inner {
            Backend::Sled(t) => {
                t.insert(key, value.as_ref())?;
            }
            Backend::Pg(t) => t.put(key.as_ref(), value.as_ref()),
        }
        Ok(())
    }

    /// Removes `key`, for a caller that needs no previous value; staged on
    /// a shared store, like [`Table::put`].
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<(), StoreError> {
        let _w = self.gate.write();
        match &self.inner {
            Backend::Sled(t) => {
                t.remove(key)?;
            }
            Backend::Pg(t) => t.delete(key.as_ref()),
        }
        Ok(())
    }

    /// Removes `key` if its value is `expected` (nothing happens when it is
    /// not), for a caller that needs no outcome; staged on a shared store
    /// like [`Table::put`], judged when sent.
    pub fn delete_if(&self, key: impl AsRef<[u8]>, expected: &[u8]) -> Result<(), StoreError> {
        let _w = self.gate.write();
        match &self.inner {
            Backend::Sled(t) => {
                // Not removed when it holds another value: as documented.
                let _ = t.compare_and_swap(key, Some(expected), None::<&[u8]>)?;
            }
            Backend::Pg(t) => t.delete_if(key.as_ref(), expected)?,
        }
        Ok(())
    }

    /// Removes `key`; returns the value it had.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        let _w = self.gate.write();
        match &self.inner {
            Backend::Sled(t) => Ok(t.remove(key)?.map(|v| v.to_vec())),
            Backend::Pg(t) => Ok(t.remove(key.as_ref())?),
        }
    }

    /// Sets `key` to `new` (`None`: removes it) only if its value is `old`
    /// (`None`: absent). `Ok(Err(current))` when it was not.
    #[allow(clippy::type_complexity)]
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), Option<Vec<u8>>>, StoreError> {
        let _w = self.gate.write();
        match &self.inner {
            Backend::Sled(t) => Ok(t
                .compare_and_swap(key, old, new)?
                .map_err(|e| e.current.map(|v| v.to_vec()))),
            Backend::Pg(t) => Ok(t.compare_and_swap(key.as_ref(), old, new)?),
        }
    }

    /// Replaces the value under `key` with `f(current)` (`None`: removes
    /// it), atomically; `f` may run more than once. Returns the old value.
    pub fn fetch_and_update(
        &self,
        key: impl AsRef<[u8]>,
        mut f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let _w = self.gate.write();
        match &self.inner {
            Backend::Sled(t) => Ok(t.fetch_and_update(key, f)?.map(|v| v.to_vec())),
            Backend::Pg(t) => Ok(t.fetch_and_update(key.as_ref(), &mut f)?),
        }
    }

    /// Inserts `key1` = `value1` in `first` if absent and, only when that
    /// inserted, does [`Table::fetch_and_update`] of `key` here: what the
    /// insert found (`Ok(())`: inserted), and the value before the update
    /// (`None`: not updated). One sled step after the other; on PostgreSQL
    /// the insert and the first swap are one statement when there is a
    /// value to change.
    #[allow(clippy::type_complexity)]
    pub fn fetch_and_update_after_insert(
        &self,
        first: &Table,
        key1: impl AsRef<[u8]>,
        value1: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
        mut f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<(Result<(), Option<Vec<u8>>>, Option<Option<Vec<u8>>>), StoreError> {
        match (&self.inner, &first.inner) {
            (Backend::Pg(t), Backend::Pg(o)) => {
                let _w = self.gate.write();
                Ok(t.fetch_and_update_after_insert(
                    o,
                    key1.as_ref(),
                    value1.as_ref(),
                    key.as_ref(),
                    &mut f,
                )?)
            }
            _ => match first.compare_and_swap(key1, None, Some(value1.as_ref()))? {
                Ok(()) => Ok((Ok(()), Some(self.fetch_and_update(key, f)?))),
                Err(found) => Ok((Err(found), None)),
            },
        }
    }

    /// The entry with the smallest key.
    pub fn first(&self) -> Result<Option<Entry>, StoreError> {
        match &self.inner {
            Backend::Sled(t) => Ok(t.first()?.map(|(k, v)| (k.to_vec(), v.to_vec()))),
            Backend::Pg(t) => Ok(t.first()?),
        }
    }

    /// The entry with the greatest key.
    pub fn last(&self) -> Result<Option<Entry>, StoreError> {
        match &self.inner {
            Backend::Sled(t) => Ok(t.last()?.map(|(k, v)| (k.to_vec(), v.to_vec()))),
            Backend::Pg(t) => Ok(t.last()?),
        }
    }

    /// Number of entries (sled counts by scanning the tree).
    pub fn len(&self) -> Result<usize, StoreError> {
        match &self.inner {
            Backend::Sled(t) => Ok(t.len()),
            Backend::Pg(t) => Ok(t.len()?),
        }
    }

    /// Whether the table has no entry.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        match &self.inner {
            Backend::Sled(t) => Ok(t.is_empty()),
            Backend::Pg(t) => Ok(t.is_empty()?),
        }
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<(), StoreError> {
        let _w = self.gate.write();
        match &self.inner {
            Backend::Sled(t) => Ok(t.clear()?),
            Backend::Pg(t) => Ok(t.clear()?),
        }
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> Iter {
        match &self.inner {
            Backend::Sled(t) => Iter(IterInner::Sled(t.iter())),
            Backend::Pg(t) => Iter(IterInner::Pg(t.iter())),
        }
    }

    /// The entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        match &self.inner {
            Backend::Sled(t) => Iter(IterInner::Sled(t.scan_prefix(prefix))),
            Backend::Pg(t) => Iter(IterInner::Pg(t.scan_prefix(prefix.as_ref()))),
        }
    }

    /// The entries whose key is in `range`, in key order.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        let own = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (lo, hi) = (own(range.start_bound()), own(range.end_bound()));
        match &self.inner {
            Backend::Sled(t) => Iter(IterInner::Sled(t.range::<Vec<u8>, _>((lo, hi)))),
            Backend::Pg(t) => Iter(IterInner::Pg(t.range(lo, hi))),
        }
    }
}

/// Entries of a [`Table`] in key order, from either end.
pub struct Iter(IterInner);

enum IterInner {
    Sled(sled::Iter),
    Pg(PgIter),
}

fn owned(r: sled::Result<(sled::IVec, sled::IVec)>) -> Result<Entry, StoreError> {
    r.map(|(k, v)| (k.to_vec(), v.to_vec()))
        .map_err(StoreError::from)
}

impl Iterator for Iter {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterInner::Sled(i) => i.next().map(owned),
            IterInner::Pg(i) => i.next().map(|r| r.map_err(StoreError::from)),
        }
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterInner::Sled(i) => i.next_back().map(owned),
            IterInner::Pg(i) => i.next_back().map(|r| r.map_err(StoreError::from)),
        }
    }
}

/// What [`Table::insert_new_reading`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertRead {
    /// `Ok(())` when inserted; else the key's current value.
    pub inserted: Result<(), Option<Vec<u8>>>,
    /// The other key's value (`Some(None)`: absent), read at a moment when
    /// the inserted key was absent, so it reflects every write made before
    /// that key was last removed; `None` when no such read could be made
    /// (not inserted, or the key was removed only just before the insert):
    /// the caller reads it again.
    pub read: Option<Option<Vec<u8>>>,
}

/// Two steps in one round trip (the router's routing claim,
/// [`crate::state::tracking::Tracking::claim`]).
impl Table {
    /// Inserts `key` = `value` if `key` is absent (atomic across processes,
    /// like [`Table::compare_and_swap`] from `None`) and reads `other_key`
    /// of `other` with it: one sled step after the other, one PostgreSQL
    /// statement. See [`InsertRead`] for when the read counts.
    pub fn insert_new_reading(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        other: &Table,
        other_key: impl AsRef<[u8]>,
    ) -> Result<InsertRead, StoreError> {
        match (&self.inner, &other.inner) {
            (Backend::Pg(t), Backend::Pg(o)) => {
                let _w = self.gate.write();
                let (inserted, read) =
                    t.insert_new_reading(key.as_ref(), value.as_ref(), o, other_key.as_ref())?;
                Ok(InsertRead { inserted, read })
            }
            _ => {
                let inserted = self.compare_and_swap(key, None, Some(value.as_ref()))?;
                let read = match inserted {
                    Ok(()) => Some(other.get(other_key)?),
                    Err(_) => None,
                };
                Ok(InsertRead { inserted, read })
            }
        }
    }
}

/// What [`Table::insert_pair_new_reading`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairInsertRead {
    /// The first insert: `Ok(())` when inserted; else the key's current value.
    pub first: Result<(), Option<Vec<u8>>>,
    /// The second insert and the read, as [`Table::insert_new_reading`].
    pub then: InsertRead,
}

/// Three steps in one round trip (an envelope's nonce, then its routing
/// claim with the look at its record: the router's first step under the
/// envelope's lock).
impl Table {
    /// Inserts `key` = `value` here if absent and, whatever that found, does
    /// [`Table::insert_new_reading`] of `key2` = `value2` in `second` reading
    /// `other_key` of `other`: one sled step after the other, one
    /// PostgreSQL statement. Each insert is atomic across processes on its
    /// own; the two are independent (a caller that needs the second undone
    /// when the first was not inserted does so itself).
    #[allow(clippy::too_many_arguments)]
    pub fn insert_pair_new_reading(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        second: &Table,
        key2: impl AsRef<[u8]>,
        value2: impl AsRef<[u8]>,
        other: &Table,
        other_key: impl AsRef<[u8]>,
    ) -> Result<PairInsertRead, StoreError> {
        match (&self.inner, &second.inner, &other.inner) {
            (Backend::Pg(t), Backend::Pg(s), Backend::Pg(o)) => {
                let _w = self.gate.write();
                let (first, (inserted, read)) = t.insert_pair_new_reading(
                    key.as_ref(),
                    value.as_ref(),
                    s,
                    key2.as_ref(),
                    value2.as_ref(),
                    o,
                    other_key.as_ref(),
                )?;
                Ok(PairInsertRead {
                    first,
                    then: InsertRead { inserted, read },
                })
            }
            _ => {
                let first = self.compare_and_swap(key, None, Some(value.as_ref()))?;
                let then = second.insert_new_reading(key2, value2, other, other_key)?;
                Ok(PairInsertRead { first, then })
            }
        }
    }
}

/// Batched writes (the audit log's group commit, [`crate::state::audit`]).
impl Table {
    /// Inserts every entry, or none when any key is already present (or
    /// appears twice in `entries`): `Ok(false)`. Atomic on every backend,
    /// across processes on a shared one: one sled transaction on the tree, one
    /// PostgreSQL statement.
    pub fn insert_all_new(&self, entries: &[Entry]) -> Result<bool, StoreError> {
        if entries.is_empty() {
            return Ok(true);
        }
        let _w = self.gate.write();
        match &self.inner {
            Backend::Sled(t) => {
                use sled::transaction::{abort, TransactionError};
                let res = t.transaction(|tx| {
                    for (k, v) in entries {
                        if tx.get(k)?.is_some() {
                            return abort(());
                        }
                        tx.insert(k.as_slice(), v.as_slice())?;
                    }
                    Ok(())
                });
                match res {
                    Ok(()) => Ok(true),
                    Err(TransactionError::Abort(())) => Ok(false),
                    Err(TransactionError::Storage(e)) => Err(e.into()),
                }
            }
            Backend::Pg(t) => Ok(t.insert_all_new(entries)?),
        }
    }

    /// [`Table::put_max`] with no answer: on PostgreSQL staged like
    /// [`Table::put`] (sent with the next share or group commit; a read of
    /// the key sends it first), on sled written at once.
    pub fn raise(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), StoreError> {
        match &self.inner {
            Backend::Sled(_) => self.put_max(key, value).map(|_| ()),
            Backend::Pg(t) => {
                let _w = self.gate.write();
                Ok(t.raise(key.as_ref(), value.as_ref())?)
            }
        }
    }

    /// Sets `key` to `value` if it is absent or `value` is greater byte-wise
    /// than its value, atomically; returns whether it wrote. A value only
    /// moves forward, whichever writer gets there last.
    pub fn put_max(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<bool, StoreError> {
        let value = value.as_ref();
        let _w = self.gate.write();
        match &self.inner {
            Backend::Sled(t) => {
                let old = t.fetch_and_update(key, |old| match old {
                    Some(old) if old >= value => Some(old.to_vec()),
                    _ => Some(value.to_vec()),
                })?;
                Ok(old.is_none_or(|old| value > &old[..]))
            }
            Backend::Pg(t) => Ok(t.put_max(key.as_ref(), value)?),
        }
    }
}

//! One tree of the store as a PostgreSQL table `truc_<tree>(k bytea primary
//! key, v bytea)`, with the semantics of the embedded store's trees.
//!
//! Invariants:
//! - keys order byte-wise (bytea compares as memcmp), as in the embedded
//!   store, so ranges, prefixes, `first` and `last` agree with it;
//! - every write that reports what it replaced (`insert`, `remove`,
//!   `compare_and_swap`) is one atomic statement, safe against other truc
//!   processes writing the same key; a statement that lost a race only to a
//!   concurrent change is run again, never reported as a false outcome;
//! - the batched writes are one statement each: `insert_all_new` inserts a
//!   whole batch or nothing (a unique violation is its `false`), `put_max`
//!   only moves a value forward;
//! - table names come only from [`TREES`](super::TREES), never from input,
//!   so formatting them into SQL is safe;
//! - iterators read lazily, [`PAGE`] rows at a time by keyset pagination,
//!   and never return a key twice when read from both ends. Like the
//!   embedded store's, they are not a snapshot: each page sees the table as
//!   it is when fetched.

use std::collections::VecDeque;
use std::ops::Bound;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::Row;

use super::error::PgError;
use super::pool::{PgPool, Session};
use super::staged::Seen;

/// A key and its value.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// Rows fetched per page by iterators.
pub(crate) const PAGE: i64 = 256;

/// How a range bound is expressed in SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BoundKind {
    /// No bound.
    Unbounded,
    /// Bound included.
    Included,
    /// Bound excluded.
    Excluded,
}

impl BoundKind {
    fn of(b: &Bound<Vec<u8>>) -> Self {
        match b {
            Bound::Unbounded => Self::Unbounded,
            Bound::Included(_) => Self::Included,
            Bound::Excluded(_) => Self::Excluded,
        }
    }
}

/// The statements a table prepares (one per tree and operation, cached per
/// session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Get,
    Contains,
    Insert,
    Remove,
    /// Insert if absent; reports whether it did and the current value.
    CasInsert,
    /// Replace if equal; reports whether it did and the current value.
    CasUpdate,
    /// Delete if equal; reports whether it did and the current value.
    CasDelete,
    First,
    Last,
    Len,
    IsEmpty,
    Clear,
    /// A page of a range, from the front (`rev` false) or the back.
    Page {
        lo: BoundKind,
        hi: BoundKind,
        rev: bool,
    },
    /// A batch of staged writes: bit `i` set for each table of
    /// [`TREES`](super::TREES) with deletes / with puts.
    Staged {
        dels: u32,
        conds: u32,
        puts: u32,
        maxes: u32,
    },
    /// Insert a batch of new keys, all or none (`$1` keys, `$2` values).
    InsertAllNew,
    /// Write if absent or greater byte-wise than the stored value.
    PutMax,
    /// [`Op::CasInsert`], reading `$3` of the tree at `other` in
    /// [`TREES`](super::TREES) in the same snapshot.
    CasInsertReading {
        other: usize,
    },
    /// [`Op::CasInsert`] of `$1`/`$2` in the tree at `first`, and only when
    /// it inserted, [`Op::CasUpdate`] of `$3` from `$4` to `$5` here.
    CasUpdateAfterInsert {
        first: usize,
    },
    /// [`Op::CasInsert`] of `$1`/`$2` here and of `$3`/`$4` in the tree at
    /// `second`, reading `$5` of the tree at `other`, all in one snapshot.
    CasInsertPairReading {
        second: usize,
        other: usize,
    },
}

/// The SQL of `op` on table `t`. `$1` is the key (or the lower bound), `$2`
/// the value / old value (or the upper bound), `$3` the new value.
fn sql(t: &str, op: Op) -> String {
    match op {
        Op::Get => format!("SELECT v FROM {t} WHERE k = $1"),
        Op::Contains => format!("SELECT EXISTS (SELECT 1 FROM {t} WHERE k = $1)"),
        // The row is locked and read (latest committed version) and then
        // updated, or inserted when absent. If it was absent but a concurrent
        // insert wins the key, nothing is written and `wrote` is false: the
        // caller runs the statement again.
        Op::Insert => format!(
            "WITH old AS (SELECT v FROM {t} WHERE k = $1::bytea FOR UPDATE), \
             ins AS (INSERT INTO {t} (k, v) SELECT $1::bytea, $2::bytea \
                     WHERE NOT EXISTS (SELECT 1 FROM old) \
                     ON CONFLICT (k) DO NOTHING RETURNING 1), \
             upd AS (UPDATE {t} SET v = $2::bytea \
                     WHERE k = $1::bytea AND EXISTS (SELECT 1 FROM old) RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM ins) OR EXISTS (SELECT 1 FROM upd), \
                    (SELECT v FROM old)"
        ),
        Op::Remove => format!("DELETE FROM {t} WHERE k = $1 RETURNING v"),
        // `cur` is read from the statement's snapshot; it is only used when
        // nothing was written, and a caller seeing `cur` equal to the
        // expected value (a race) runs the statement again.
        Op::CasInsert => format!(
            "WITH w AS (INSERT INTO {t} (k, v) VALUES ($1::bytea, $2::bytea) \
                        ON CONFLICT (k) DO NOTHING RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM w), (SELECT v FROM {t} WHERE k = $1::bytea)"
        ),
        Op::CasUpdate => format!(
            "WITH w AS (UPDATE {t} SET v = $3::bytea WHERE k = $1::bytea AND v = $2::bytea \
                        RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM w), (SELECT v FROM {t} WHERE k = $1::bytea)"
        ),
        Op::CasDelete => format!(
            "WITH w AS (DELETE FROM {t} WHERE k = $1::bytea AND v = $2::bytea RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM w), (SELECT v FROM {t} WHERE k = $1::bytea)"
        ),
        Op::First => format!("SELECT k, v FROM {t} ORDER BY k ASC LIMIT 1"),
        Op::Last => format!("SELECT k, v FROM {t} ORDER BY k DESC LIMIT 1"),
        Op::Len => format!("SELECT count(*) FROM {t}"),
        Op::IsEmpty => format!("SELECT NOT EXISTS (SELECT 1 FROM {t})"),
        Op::Clear => format!("DELETE FROM {t}"),
        Op::Page { lo, hi, rev } => {
            let mut conds = Vec::new();
            let mut n = 0;
            let mut param = || {
                n += 1;
                format!("${n}::bytea")
            };
            match lo {
                BoundKind::Unbounded => {}
                BoundKind::Included => conds.push(format!("k >= {}", param())),
                BoundKind::Excluded => conds.push(format!("k > {}", param())),
            }
            match hi {
                BoundKind::Unbounded => {}
                BoundKind::Included => conds.push(format!("k <= {}", param())),
                BoundKind::Excluded => conds.push(format!("k < {}", param())),
            }
            let filter = if conds.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conds.join(" AND "))
            };
            let dir = if rev { "DESC" } else { "ASC" };
            format!("SELECT k, v FROM {t}{filter} ORDER BY k {dir} LIMIT {PAGE}")
        }
        Op::Staged {
            dels,
            conds,
            puts,
            maxes,
        } => super::staged::batch_sql(dels, conds, puts, maxes),
        // One statement, so atomic: a key already present (SQLSTATE 23505)
        // fails it whole and nothing is inserted.
        Op::InsertAllNew => {
            format!("INSERT INTO {t} (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[])")
        }
        Op::PutMax => format!(
            "INSERT INTO {t} (k, v) VALUES ($1::bytea, $2::bytea) \
             ON CONFLICT (k) DO UPDATE SET v = excluded.v WHERE {t}.v < excluded.v"
        ),
        // The third column shares the statement's snapshot with the second.
        Op::CasInsertReading { other } => format!(
            "WITH w AS (INSERT INTO {t} (k, v) VALUES ($1::bytea, $2::bytea) \
                        ON CONFLICT (k) DO NOTHING RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM w), (SELECT v FROM {t} WHERE k = $1::bytea), \
                    (SELECT v FROM {o} WHERE k = $3::bytea)",
            o = table_name(super::TREES[other])
        ),
        // Columns: inserted there, the value there, swapped here, the value
        // here (both values from the snapshot).
        Op::CasUpdateAfterInsert { first } => format!(
            "WITH a AS (INSERT INTO {f} (k, v) VALUES ($1::bytea, $2::bytea) \
                        ON CONFLICT (k) DO NOTHING RETURNING 1), \
                  w AS (UPDATE {t} SET v = $5::bytea \
                        WHERE k = $3::bytea AND v = $4::bytea AND EXISTS (SELECT 1 FROM a) \
                        RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM a), (SELECT v FROM {f} WHERE k = $1::bytea), \
                    EXISTS (SELECT 1 FROM w), (SELECT v FROM {t} WHERE k = $3::bytea)",
            f = table_name(super::TREES[first])
        ),
        // Columns: inserted here, the value here, inserted in the second
        // table, the value there (both from the snapshot), the read.
        Op::CasInsertPairReading { second, other } => format!(
            "WITH a AS (INSERT INTO {t} (k, v) VALUES ($1::bytea, $2::bytea) \
                        ON CONFLICT (k) DO NOTHING RETURNING 1), \
                  b AS (INSERT INTO {s} (k, v) VALUES ($3::bytea, $4::bytea) \
                        ON CONFLICT (k) DO NOTHING RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM a), (SELECT v FROM {t} WHERE k = $1::bytea), \
                    EXISTS (SELECT 1 FROM b), (SELECT v FROM {s} WHERE k = $3::bytea), \
                    (SELECT v FROM {o} WHERE k = $5::bytea)",
            s = table_name(super::TREES[second]),
            o = table_name(super::TREES[other])
        ),
    }
}

/// Prepare (once per session) and return the statement of `op` on `name`.
fn stmt<'s>(
    s: &'s mut Session,
    name: &'static str,
    op: Op,
) -> Result<(&'s mut postgres::Client, postgres::Statement), PgError> {
    s.prepared((name, op), || sql(&table_name(name), op))
}

fn table_name(tree: &str) -> String {
    format!("truc_{tree}")
}

/// The smallest key greater than every key starting with `prefix`: drop
/// trailing 0xFF bytes and increment the last byte; `None` when there is
/// none (empty or all 0xFF).
pub(crate) fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while s.last() == Some(&0xff) {
        s.pop();
    }
    let last = s.last_mut()?;
    *last += 1;
    Some(s)
}

/// `(wrote, current)` from a CAS or insert statement's row.
fn outcome(row: &Row) -> Result<(bool, Option<Vec<u8>>), PgError> {
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// An insert-if-absent with a read in its snapshot, from what it reported
/// (`wrote`, the key's value there, the read): inserted with the read (it
/// counts only when the snapshot had no such key), or not inserted with the
/// key's value; `None` when the key was absent in the snapshot and yet
/// taken (inserted by another after it): ask again.
#[allow(clippy::type_complexity)]
fn insert_reading(
    wrote: bool,
    current: Option<Vec<u8>>,
    read: Option<Vec<u8>>,
) -> Option<(Result<(), Option<Vec<u8>>>, Option<Option<Vec<u8>>>)> {
    match (wrote, current) {
        (true, None) => Some((Ok(()), Some(read))),
        (true, Some(_)) => Some((Ok(()), None)),
        (false, Some(current)) => Some((Err(Some(current)), None)),
        (false, None) => None,
    }
}

/// A PostgreSQL table with the interface of one embedded-store tree.
#[derive(Clone, Debug)]
pub(crate) struct PgTable {
    pool: PgPool,
    name: &'static str,
    /// Its place in [`TREES`](super::TREES): how staged writes name it.
    tree: usize,
}

impl PgPool {
    /// The table of tree `name`.
    ///
    /// # Panics
    /// If `name` is not in [`TREES`](super::TREES): tree names are
    /// constants of the program, so this is a bug.
    pub(crate) fn table(&self, name: &'static str) -> PgTable {
        let tree = super::TREES
            .iter()
            .position(|t| *t == name)
            .unwrap_or_else(|| panic!("no PostgreSQL table for tree {name:?}"));
        PgTable {
            pool: self.clone(),
            name,
            tree,
        }
    }
}

impl PgTable {
    /// Sets `key` to `value` at the next flush ([`super::staged`]); read
    /// back at once by this process.
    pub(crate) fn put(&self, key: &[u8], value: &[u8]) {
        self.pool.staged().stage(self.tree, key, Some(value));
    }

    /// Removes `key` at the next flush; gone at once for this process.
    pub(crate) fn delete(&self, key: &[u8]) {
        self.pool.staged().stage(self.tree, key, None);
    }

    /// Sets `key` to `value` at the next flush if it is then absent or less
    /// byte-wise.
    pub(crate) fn raise(&self, key: &[u8], value: &[u8]) -> Result<(), PgError> {
        self.pool
            .staged()
            .stage_put_max(&self.pool, self.tree, key, value)
    }

    /// Removes `key` at the next flush if its value is then `expected`.
    pub(crate) fn delete_if(&self, key: &[u8], expected: &[u8]) -> Result<(), PgError> {
        self.pool
            .staged()
            .stage_delete_if(&self.pool, self.tree, key, expected)
    }

    /// What this process staged for `key` (`Some(None)`: a delete), or
    /// `None` when the database must be asked (a staged conditional delete
    /// is sent first: its outcome is the database's).
    fn staged_value(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>, PgError> {
        match self.pool.staged().seen(self.tree, key) {
            Seen::Staged(v) => Ok(Some(v)),
            Seen::Flush => self.settle(Some(key)).map(|()| None),
            Seen::Unknown => Ok(None),
        }
    }

    /// Sends the staged writes first when `key` (any key, with `None`) of
    /// this table has one.
    fn settle(&self, key: Option<&[u8]>) -> Result<(), PgError> {
        self.pool.staged().settle(&self.pool, self.tree, key)
    }

    /// The value of `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, PgError> {
        if let Some(v) = self.staged_value(key)? {
            return Ok(v);
        }
        let (name, key) = (self.name, key.to_vec());
        self.pool.run(move |s| {
            let (client, st) = stmt(s, name, Op::Get)?;
            let row = client.query_opt(&st, &[&key])?;
            Ok(row.map(|r| r.try_get(0)).transpose()?)
        })
    }

    /// Whether `key` is present.
    pub(crate) fn contains_key(&self, key: &[u8]) -> Result<bool, PgError> {
        if let Some(v) = self.staged_value(key)? {
            return Ok(v.is_some());
        }
        let (name, key) = (self.name, key.to_vec());
        self.pool.run(move |s| {
            let (client, st) = stmt(s, name, Op::Contains)?;
            Ok(client.query_one(&st, &[&key])?.try_get(0)?)
        })
    }

    /// Set `key` to `value`; the previous value.
    pub(crate) fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, PgError> {
        self.settle(Some(key))?;
        let (name, key, value) = (self.name, key.to_vec(), value.to_vec());
        self.pool.run(move |s| loop {
            let (client, st) = stmt(s, name, Op::Insert)?;
            let (wrote, old) = outcome(&client.query_one(&st, &[&key, &value])?)?;
            if wrote {
                return Ok(old);
            }
        })
    }

    /// Remove `key`; its value.
    pub(crate) fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, PgError> {
        self.settle(Some(key))?;
        let (name, key) = (self.name, key.to_vec());
        self.pool.run(move |s| {
            let (client, st) = stmt(s, name, Op::Remove)?;
            let row = client.query_opt(&st, &[&key])?;
            Ok(row.map(|r| r.try_get(0)).transpose()?)
        })
    }

    /// `Ok(Ok(()))` when swapped; `Ok(Err(current))` when the current value
    /// is not `old`. `old` `None`: the key must be absent; `new` `None`:
    /// delete. Each case is one atomic statement.
    pub(crate) fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), Option<Vec<u8>>>, PgError> {
        self.settle(Some(key))?;
        let name = self.name;
        let (hint_key, hint_new) = (key.to_vec(), new.map(<[u8]>::to_vec));
        let key = key.to_vec();
        let old = old.map(<[u8]>::to_vec);
        let new = new.map(<[u8]>::to_vec);
        let res = self.pool.run(move |s| loop {
            let (wrote, current) = match (&old, &new) {
                (None, None) => {
                    let (client, st) = stmt(s, name, Op::Get)?;
                    let row = client.query_opt(&st, &[&key])?;
                    let current: Option<Vec<u8>> = row.map(|r| r.try_get(0)).transpose()?;
                    (current.is_none(), current)
                }
                (None, Some(new)) => {
                    let (client, st) = stmt(s, name, Op::CasInsert)?;
                    outcome(&client.query_one(&st, &[&key, new])?)?
                }
                (Some(old), Some(new)) => {
                    let (client, st) = stmt(s, name, Op::CasUpdate)?;
                    outcome(&client.query_one(&st, &[&key, old, new])?)?
                }
                (Some(old), None) => {
                    let (client, st) = stmt(s, name, Op::CasDelete)?;
                    outcome(&client.query_one(&st, &[&key, old])?)?
                }
            };
            if wrote {
                return Ok(Ok(()));
            }
            // Not written, yet the snapshot shows the expected value: the row
            // changed between the snapshot and the write. Look again.
            if current != old {
                return Ok(Err(current));
            }
        })?;
        match &res {
            Ok(()) => self
                .pool
                .staged()
                .note(self.tree, &hint_key, hint_new.as_deref()),
            Err(current) => self
                .pool
                .staged()
                .note(self.tree, &hint_key, current.as_deref()),
        }
        Ok(res)
    }

    /// Inserts `key` = `value` if absent, reading `other_key` of `other` in
    /// the same statement: `(inserted, read)` as
    /// [`crate::state::store::InsertRead`] tells. The read counts only when
    /// the statement's snapshot had no `key`: a row removed after the
    /// snapshot was taken (and before the insert) leaves it unknown, since
    /// writes committed just before that removal may be missing from it. A
    /// value of `other_key` this process staged is the read.
    #[allow(clippy::type_complexity)]
    pub(crate) fn insert_new_reading(
        &self,
        key: &[u8],
        value: &[u8],
        other: &PgTable,
        other_key: &[u8],
    ) -> Result<(Result<(), Option<Vec<u8>>>, Option<Option<Vec<u8>>>), PgError> {
        self.settle(Some(key))?;
        let staged = other.staged_value(other_key)?;
        let name = self.name;
        let op = Op::CasInsertReading { other: other.tree };
        let (k, v, o) = (key.to_vec(), value.to_vec(), other_key.to_vec());
        let (inserted, read) = self.pool.run(move |s| loop {
            let (client, st) = stmt(s, name, op)?;
            let row = client.query_one(&st, &[&k, &v, &o])?;
            let (wrote, current) = outcome(&row)?;
            // Inserted by another after the snapshot: look again.
            if let Some(done) = insert_reading(wrote, current, row.try_get(2)?) {
                return Ok(done);
            }
        })?;
        Ok(self.noted_reading(key, value, inserted, read, staged))
    }

    /// Notes what an insert of `key` = `value` left there, and makes the
    /// read that came with it the value staged here for its key (`staged`,
    /// when there is one) once inserted.
    #[allow(clippy::type_complexity)]
    fn noted_reading(
        &self,
        key: &[u8],
        value: &[u8],
        inserted: Result<(), Option<Vec<u8>>>,
        read: Option<Option<Vec<u8>>>,
        staged: Option<Option<Vec<u8>>>,
    ) -> (Result<(), Option<Vec<u8>>>, Option<Option<Vec<u8>>>) {
        let staged_note = match &inserted {
            Ok(()) => Some(value),
            Err(current) => current.as_deref(),
        };
        self.pool.staged().note(self.tree, key, staged_note);
        let read = match (&inserted, staged) {
            (Ok(()), Some(staged)) => Some(staged),
            (Ok(()), None) => read,
            (Err(_), _) => None,
        };
        (inserted, read)
    }

    /// What an insert-if-absent of `key` = `value` reported from its
    /// snapshot (`wrote`, the value there), noted; a key absent in the
    /// snapshot and yet taken (inserted by another after it) is asked for
    /// again, alone.
    fn noted_insert(
        &self,
        key: &[u8],
        value: &[u8],
        wrote: bool,
        current: Option<Vec<u8>>,
    ) -> Result<Result<(), Option<Vec<u8>>>, PgError> {
        match (wrote, current) {
            (true, _) => {
                self.pool.staged().note(self.tree, key, Some(value));
                Ok(Ok(()))
            }
            (false, Some(current)) => {
                self.pool.staged().note(self.tree, key, Some(&current));
                Ok(Err(Some(current)))
            }
            (false, None) => self.compare_and_swap(key, None, Some(value)),
        }
    }

    /// Read, compute `f(old)`, compare-and-swap; again until the swap wins.
    /// The value before the winning swap.
    pub(crate) fn fetch_and_update(
        &self,
        key: &[u8],
        f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, PgError> {
        let current = self.likely(key)?;
        self.fetch_and_update_from(key, current, f)
    }

    /// The value `key` likely has: what this process wrote last is likely
    /// still there; offered as the expected value, it saves a read (the
    /// swap checks it).
    fn likely(&self, key: &[u8]) -> Result<Option<Vec<u8>>, PgError> {
        Ok(match self.pool.staged().seen(self.tree, key) {
            Seen::Unknown => match self.pool.staged().hint(self.tree, key) {
                Some(v) => Some(v),
                None => self.get(key)?,
            },
            Seen::Staged(_) | Seen::Flush => self.get(key)?,
        })
    }

    /// [`PgTable::fetch_and_update`] from `current`, the value expected.
    fn fetch_and_update_from(
        &self,
        key: &[u8],
        mut current: Option<Vec<u8>>,
        mut f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, PgError> {
        loop {
            let new = f(current.as_deref());
            match self.compare_and_swap(key, current.as_deref(), new.as_deref())? {
                Ok(()) => return Ok(current),
                Err(actual) => current = actual,
            }
        }
    }

    fn one_entry(&self, op: Op) -> Result<Option<Entry>, PgError> {
        self.settle(None)?;
        let name = self.name;
        self.pool.run(move |s| {
            let (client, st) = stmt(s, name, op)?;
            let row = client.query_opt(&st, &[])?;
            row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
        })
    }

    /// Inserts `key` = `value` here if absent, then does
    /// [`PgTable::insert_new_reading`] of `key2` = `value2` in `second`
    /// reading `other_key` of `other`: one statement when nothing races.
    /// Either insert that lost a race after the snapshot (absent in it, yet
    /// taken) is done again on its own, as each alone would.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub(crate) fn insert_pair_new_reading(
        &self,
        key: &[u8],
        value: &[u8],
        second: &PgTable,
        key2: &[u8],
        value2: &[u8],
        other: &PgTable,
        other_key: &[u8],
    ) -> Result<
        (
            Result<(), Option<Vec<u8>>>,
            (Result<(), Option<Vec<u8>>>, Option<Option<Vec<u8>>>),
        ),
        PgError,
    > {
        self.settle(Some(key))?;
        second.settle(Some(key2))?;
        let staged = other.staged_value(other_key)?;
        let name = self.name;
        let op = Op::CasInsertPairReading {
            second: second.tree,
            other: other.tree,
        };
        let params = (
            key.to_vec(),
            value.to_vec(),
            key2.to_vec(),
            value2.to_vec(),
            other_key.to_vec(),
        );
        let (first, then, read) = self.pool.run(move |s| {
            let (client, st) = stmt(s, name, op)?;
            let (k, v, k2, v2, o) = &params;
            let row = client.query_one(&st, &[k, v, k2, v2, o])?;
            let first: (bool, Option<Vec<u8>>) = (row.try_get(0)?, row.try_get(1)?);
            let then: (bool, Option<Vec<u8>>) = (row.try_get(2)?, row.try_get(3)?);
            let read: Option<Vec<u8>> = row.try_get(4)?;
            Ok((first, then, read))
        })?;
        let first = self.noted_insert(key, value, first.0, first.1)?;
        let then = match insert_reading(then.0, then.1, read) {
            Some((inserted, read)) => second.noted_reading(key2, value2, inserted, read, staged),
            None => second.insert_new_reading(key2, value2, other, other_key)?,
        };
        Ok((first, then))
    }

    /// Inserts `key1` = `value1` in `first` if absent and, only when that
    /// inserted, does [`PgTable::fetch_and_update`] of `key` with `f`: when
    /// a value is there to change, the insert and the first swap are one
    /// statement. What the insert found, and the value before the update
    /// (`None`: not updated, the insert found an entry).
    #[allow(clippy::type_complexity)]
    pub(crate) fn fetch_and_update_after_insert(
        &self,
        first: &PgTable,
        key1: &[u8],
        value1: &[u8],
        key: &[u8],
        mut f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<(Result<(), Option<Vec<u8>>>, Option<Option<Vec<u8>>>), PgError> {
        first.settle(Some(key1))?;
        self.settle(Some(key))?;
        let current = self.likely(key)?;
        let (inserted, from) = match (current.clone(), f(current.as_deref())) {
            (Some(old), Some(new)) => {
                let name = self.name;
                let op = Op::CasUpdateAfterInsert { first: first.tree };
                let params = (
                    key1.to_vec(),
                    value1.to_vec(),
                    key.to_vec(),
                    old.clone(),
                    new.clone(),
                );
                let (wrote, found, swapped, now) = self.pool.run(move |s| {
                    let (client, st) = stmt(s, name, op)?;
                    let (k1, v1, k, o, n) = &params;
                    let row = client.query_one(&st, &[k1, v1, k, o, n])?;
                    let found: Option<Vec<u8>> = row.try_get(1)?;
                    let now: Option<Vec<u8>> = row.try_get(3)?;
                    Ok((
                        row.try_get::<_, bool>(0)?,
                        found,
                        row.try_get::<_, bool>(2)?,
                        now,
                    ))
                })?;
                let inserted = first.noted_insert(key1, value1, wrote, found)?;
                if swapped {
                    self.pool.staged().note(self.tree, key, Some(&new));
                    return Ok((inserted, Some(Some(old))));
                }
                // Not swapped: the value had changed (go on from what is
                // there, or, when the snapshot still shows the old one, from
                // it again), or the insert had not happened then.
                (inserted, now)
            }
            // Nothing to swap in one go: the insert alone first.
            _ => (first.compare_and_swap(key1, None, Some(value1))?, current),
        };
        match inserted {
            Ok(()) => Ok((Ok(()), Some(self.fetch_and_update_from(key, from, f)?))),
            Err(found) => Ok((Err(found), None)),
        }
    }

    /// The entry with the smallest key.
    pub(crate) fn first(&self) -> Result<Option<Entry>, PgError> {
        self.one_entry(Op::First)
    }

    /// The entry with the greatest key.
    pub(crate) fn last(&self) -> Result<Option<Entry>, PgError> {
        self.one_entry(Op::Last)
    }

    /// Number of entries (a full count: not for hot paths).
    pub(crate) fn len(&self) -> Result<usize, PgError> {
        self.settle(None)?;
        let name = self.name;
        self.pool.run(move |s| {
            let (client, st) = stmt(s, name, Op::Len)?;
            let n: i64 = client.query_one(&st, &[])?.try_get(0)?;
            usize::try_from(n).map_err(|_| PgError::Unexpected(format!("count {n}")))
        })
    }

    /// Whether the table has no entry.
    pub(crate) fn is_empty(&self) -> Result<bool, PgError> {
        self.settle(None)?;
        let name = self.name;
        self.pool.run(move |s| {
            let (client, st) = stmt(s, name, Op::IsEmpty)?;
            Ok(client.query_one(&st, &[])?.try_get(0)?)
        })
    }

    /// Remove every entry.
    pub(crate) fn clear(&self) -> Result<(), PgError> {
        self.settle(None)?;
        let name = self.name;
        self.pool.run(move |s| {
            let (client, st) = stmt(s, name, Op::Clear)?;
            client.execute(&st, &[])?;
            Ok(())
        })
    }

    /// Entries with keys within the bounds, in key order, from either end.
    pub(crate) fn range(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> PgIter {
        PgIter {
            table: self.clone(),
            lo,
            hi,
            front: VecDeque::new(),
            back: VecDeque::new(),
            middle_done: false,
        }
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> PgIter {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, prefix: &[u8]) -> PgIter {
        let hi = match successor(prefix) {
            Some(s) => Bound::Excluded(s),
            None => Bound::Unbounded,
        };
        self.range(Bound::Included(prefix.to_vec()), hi)
    }

    /// One page of entries within the bounds, ascending or descending.
    fn page(
        &self,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        rev: bool,
    ) -> Result<Vec<Entry>, PgError> {
        let name = self.name;
        let op = Op::Page {
            lo: BoundKind::of(lo),
            hi: BoundKind::of(hi),
            rev,
        };
        self.settle(None)?;
        let params: Vec<Vec<u8>> = [lo, hi]
            .into_iter()
            .filter_map(|b| match b {
                Bound::Included(k) | Bound::Excluded(k) => Some(k.clone()),
                Bound::Unbounded => None,
            })
            .collect();
        self.pool.run(move |s| {
            let (client, st) = stmt(s, name, op)?;
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            client
                .query(&st, &refs)?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
    }
}

/// Batched writes (the audit log's group commit).
impl PgTable {
    /// Insert every entry, or none when a key is already present or given
    /// twice (`Ok(false)`): one statement.
    pub(crate) fn insert_all_new(&self, entries: &[Entry]) -> Result<bool, PgError> {
        if entries.is_empty() {
            return Ok(true);
        }
        self.settle(None)?;
        let name = self.name;
        let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = entries.iter().cloned().unzip();
        self.pool.run(move |s| {
            let (client, st) = stmt(s, name, Op::InsertAllNew)?;
            match client.execute(&st, &[&keys, &values]) {
                Ok(n) if n == keys.len() as u64 => Ok(true),
                Ok(n) => Err(PgError::Unexpected(format!(
                    "{n} rows inserted of a batch of {}",
                    keys.len()
                ))),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Set `key` to `value` if absent or `value` is greater byte-wise than
    /// the stored value; whether it wrote. One statement.
    pub(crate) fn put_max(&self, key: &[u8], value: &[u8]) -> Result<bool, PgError> {
        self.settle(Some(key))?;
        let (name, key, value) = (self.name, key.to_vec(), value.to_vec());
        self.pool.run(move |s| {
            let (client, st) = stmt(s, name, Op::PutMax)?;
            Ok(client.execute(&st, &[&key, &value])? == 1)
        })
    }
}

/// A lazy, double-ended iterator over a key range of a [`PgTable`]. The part
/// not yet fetched is always `lo..hi`: a fetch from the front moves `lo` past
/// what it got, one from the back moves `hi` before it, so the two buffers
/// never share a key. After an error (yielded as an item) it ends.
pub(crate) struct PgIter {
    table: PgTable,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    /// Fetched from the front, ascending.
    front: VecDeque<Entry>,
    /// Fetched from the back, descending.
    back: VecDeque<Entry>,
    /// Nothing is left between `lo` and `hi`.
    middle_done: bool,
}

impl std::fmt::Debug for PgIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgIter")
            .field("table", &self.table.name)
            .field("lo", &self.lo)
            .field("hi", &self.hi)
            .finish_non_exhaustive()
    }
}

impl PgIter {
    /// Fetch the next page from one end into its buffer.
    fn fill(&mut self, rev: bool) -> Result<(), PgError> {
        let rows = match self.table.page(&self.lo, &self.hi, rev) {
            Ok(rows) => rows,
            Err(e) => {
                self.middle_done = true;
                self.front.clear();
                self.back.clear();
                return Err(e);
            }
        };
        if (rows.len() as i64) < PAGE {
            self.middle_done = true;
        }
        if let Some((k, _)) = rows.last() {
            if rev {
                self.hi = Bound::Excluded(k.clone());
            } else {
                self.lo = Bound::Excluded(k.clone());
            }
        }
        if rev {
            self.back.extend(rows);
        } else {
            self.front.extend(rows);
        }
        Ok(())
    }
}

impl Iterator for PgIter {
    type Item = Result<Entry, PgError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.front.is_empty() && !self.middle_done {
            if let Err(e) = self.fill(false) {
                return Some(Err(e));
            }
        }
        self.front
            .pop_front()
            .or_else(|| self.back.pop_back())
            .map(Ok)
    }
}

impl DoubleEndedIterator for PgIter {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.back.is_empty() && !self.middle_done {
            if let Err(e) = self.fill(true) {
                return Some(Err(e));
            }
        }
        self.back
            .pop_front()
            .or_else(|| self.front.pop_back())
            .map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Barrier};

    use super::super::testdb::{migrated_pool, TestDb};
    use super::*;

    type Entries = Vec<(Vec<u8>, Vec<u8>)>;

    fn collect(it: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), PgError>>) -> Entries {
        it.map(|r| r.expect("row")).collect()
    }

    fn keys(entries: &Entries) -> Vec<Vec<u8>> {
        entries.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Keys that are prefixes of each other, bytes ≥ 0x80, 0x00 and 0xff.
    fn tricky_keys() -> Vec<Vec<u8>> {
        vec![
            vec![],
            vec![0x00],
            vec![0x00, 0x00],
            vec![0x01],
            vec![0x01, 0x00],
            vec![0x01, 0xff],
            vec![0x01, 0xff, 0x00],
            vec![0x01, 0xff, 0xff],
            vec![0x02],
            b"a".to_vec(),
            b"ab".to_vec(),
            b"abc".to_vec(),
            b"b".to_vec(),
            vec![0x7f],
            vec![0x80],
            vec![0x80, 0x00],
            vec![0xc3, 0xa9],
            vec![0xfe, 0xff],
            vec![0xff],
            vec![0xff, 0x00],
            vec![0xff, 0xff],
        ]
    }

    #[test]
    fn successor_drops_trailing_ff_and_increments() {
        assert_eq!(successor(b""), None);
        assert_eq!(successor(&[0xff]), None);
        assert_eq!(successor(&[0xff, 0xff]), None);
        assert_eq!(successor(&[0x01, 0xff]), Some(vec![0x02]));
        assert_eq!(successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(successor(&[0x00]), Some(vec![0x01]));
    }

    #[test]
    fn point_operations() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 2);
        let t = pool.table("meta");
        assert_eq!(t.name, "meta");
        assert_eq!(t.get(b"k").unwrap(), None);
        assert!(!t.contains_key(b"k").unwrap());
        assert!(t.is_empty().unwrap());
        assert_eq!(t.len().unwrap(), 0);
        assert_eq!(t.first().unwrap(), None);
        assert_eq!(t.last().unwrap(), None);

        assert_eq!(t.insert(b"k", b"1").unwrap(), None);
        assert_eq!(t.insert(b"k", b"2").unwrap(), Some(b"1".to_vec()));
        assert_eq!(t.get(b"k").unwrap(), Some(b"2".to_vec()));
        assert!(t.contains_key(b"k").unwrap());
        // Empty key and empty value are values like any other.
        assert_eq!(t.insert(b"", b"").unwrap(), None);
        assert_eq!(t.get(b"").unwrap(), Some(vec![]));
        assert_eq!(t.len().unwrap(), 2);
        assert!(!t.is_empty().unwrap());
        assert_eq!(t.first().unwrap(), Some((vec![], vec![])));
        assert_eq!(t.last().unwrap(), Some((b"k".to_vec(), b"2".to_vec())));

        assert_eq!(t.remove(b"k").unwrap(), Some(b"2".to_vec()));
        assert_eq!(t.remove(b"k").unwrap(), None);
        assert_eq!(t.get(b"k").unwrap(), None);

        // Trees are separate tables.
        let other = pool.table("keys");
        assert_eq!(other.get(b"").unwrap(), None);
        other.insert(b"x", b"y").unwrap();
        t.clear().unwrap();
        assert!(t.is_empty().unwrap());
        assert_eq!(other.get(b"x").unwrap(), Some(b"y".to_vec()));
    }

    #[test]
    #[should_panic(expected = "no PostgreSQL table for tree")]
    fn unknown_tree_panics() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        let _ = pool.table("truc_meta; DROP TABLE x");
    }

    #[test]
    fn every_tree_has_a_table() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        for tree in super::super::TREES {
            let t = pool.table(tree);
            t.insert(tree.as_bytes(), b"v").unwrap();
            assert_eq!(
                collect(t.iter()),
                vec![(tree.as_bytes().to_vec(), b"v".to_vec())]
            );
        }
    }

    #[test]
    fn compare_and_swap_all_cases() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 2);
        let t = pool.table("nonces");
        // absent → absent
        assert_eq!(t.compare_and_swap(b"k", None, None).unwrap(), Ok(()));
        assert_eq!(t.get(b"k").unwrap(), None);
        // absent → value
        assert_eq!(t.compare_and_swap(b"k", None, Some(b"1")).unwrap(), Ok(()));
        assert_eq!(t.get(b"k").unwrap(), Some(b"1".to_vec()));
        // must be absent, is not
        assert_eq!(
            t.compare_and_swap(b"k", None, Some(b"x")).unwrap(),
            Err(Some(b"1".to_vec()))
        );
        assert_eq!(
            t.compare_and_swap(b"k", None, None).unwrap(),
            Err(Some(b"1".to_vec()))
        );
        // value → value
        assert_eq!(
            t.compare_and_swap(b"k", Some(b"1"), Some(b"2")).unwrap(),
            Ok(())
        );
        assert_eq!(t.get(b"k").unwrap(), Some(b"2".to_vec()));
        // wrong old value (a prefix of the current one: bytes, not text)
        assert_eq!(
            t.compare_and_swap(b"k", Some(b""), Some(b"3")).unwrap(),
            Err(Some(b"2".to_vec()))
        );
        assert_eq!(
            t.compare_and_swap(b"k", Some(b"1"), None).unwrap(),
            Err(Some(b"2".to_vec()))
        );
        assert_eq!(t.get(b"k").unwrap(), Some(b"2".to_vec()));
        // value → deleted
        assert_eq!(t.compare_and_swap(b"k", Some(b"2"), None).unwrap(), Ok(()));
        assert_eq!(t.get(b"k").unwrap(), None);
        // expected a value, key absent
        assert_eq!(
            t.compare_and_swap(b"k", Some(b"2"), Some(b"3")).unwrap(),
            Err(None)
        );
        assert_eq!(
            t.compare_and_swap(b"k", Some(b"2"), None).unwrap(),
            Err(None)
        );
        assert_eq!(t.get(b"k").unwrap(), None);
    }

    #[test]
    fn fetch_and_update_returns_old_and_can_delete() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        let t = pool.table("meta");
        let old = t
            .fetch_and_update(b"c", |v| {
                assert_eq!(v, None);
                Some(b"a".to_vec())
            })
            .unwrap();
        assert_eq!(old, None);
        let old = t
            .fetch_and_update(b"c", |v| v.map(|v| [v, b"b"].concat()))
            .unwrap();
        assert_eq!(old, Some(b"a".to_vec()));
        assert_eq!(t.get(b"c").unwrap(), Some(b"ab".to_vec()));
        assert_eq!(
            t.fetch_and_update(b"c", |_| None).unwrap(),
            Some(b"ab".to_vec())
        );
        assert_eq!(t.get(b"c").unwrap(), None);
    }

    #[test]
    fn concurrent_fetch_and_update_loses_no_increment() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 8);
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let t = pool.table("meta");
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..100 {
                        t.fetch_and_update(b"counter", |v| {
                            let n = v.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                            Some((n + 1).to_be_bytes().to_vec())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let v = pool.table("meta").get(b"counter").unwrap().unwrap();
        assert_eq!(u64::from_be_bytes(v.try_into().unwrap()), 800);
    }

    #[test]
    fn concurrent_cas_insert_has_one_winner() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 8);
        for round in 0..20u8 {
            let key = [b'n', round];
            let barrier = Arc::new(Barrier::new(8));
            let threads: Vec<_> = (0..8u8)
                .map(|i| {
                    let t = pool.table("nonces");
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        t.compare_and_swap(&key, None, Some(&[i])).unwrap()
                    })
                })
                .collect();
            let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let winners = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(winners, 1, "round {round}: {results:?}");
            let stored = pool.table("nonces").get(&key).unwrap().unwrap();
            for r in &results {
                if let Err(current) = r {
                    assert_eq!(
                        current.as_deref(),
                        Some(&stored[..]),
                        "losers see the winner"
                    );
                }
            }
        }
    }

    /// Concurrent inserts of one key: every value but the last is returned
    /// as "previous" exactly once, and `None` exactly once.
    #[test]
    fn concurrent_insert_returns_each_previous_value_once() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 8);
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let t = pool.table("presence");
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..50u8)
                        .map(|j| t.insert(b"k", &[i, j]).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut previous: Vec<Option<Vec<u8>>> = Vec::new();
        for th in threads {
            previous.extend(th.join().unwrap());
        }
        let last = pool.table("presence").get(b"k").unwrap().unwrap();
        let mut seen: BTreeMap<Option<Vec<u8>>, usize> = BTreeMap::new();
        for p in previous {
            *seen.entry(p).or_default() += 1;
        }
        assert_eq!(seen.get(&None), Some(&1));
        assert_eq!(seen.get(&Some(last.clone())), None);
        for i in 0..8u8 {
            for j in 0..50u8 {
                if [i, j][..] != last[..] {
                    assert_eq!(seen.get(&Some(vec![i, j])), Some(&1), "value {i},{j}");
                }
            }
        }
    }

    /// Inserts, removes and CAS deletes racing on one key: none fails, none
    /// spins forever, and every reported previous value was written by
    /// someone.
    #[test]
    fn mixed_writers_on_one_key() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 8);
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let t = pool.table("deadlines");
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut seen = Vec::new();
                    for j in 0..60u8 {
                        match i % 4 {
                            0 | 1 => seen.push(t.insert(b"k", &[i, j]).unwrap()),
                            2 => seen.push(t.remove(b"k").unwrap()),
                            _ => {
                                if let Some(v) = t.get(b"k").unwrap() {
                                    let _ = t.compare_and_swap(b"k", Some(&v), None).unwrap();
                                    seen.push(Some(v));
                                }
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        for th in threads {
            for v in th.join().unwrap().into_iter().flatten() {
                assert!(v.len() == 2 && v[0] % 4 < 2 && v[1] < 60, "{v:?}");
            }
        }
        let t = pool.table("deadlines");
        assert!(t.len().unwrap() <= 1);
    }

    #[test]
    fn order_is_bytewise_and_ranges_match_a_btreemap() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 2);
        let t = pool.table("by_dest");
        let mut model = BTreeMap::new();
        // Inserted out of order.
        for (i, k) in tricky_keys().into_iter().rev().enumerate() {
            t.insert(&k, &[i as u8]).unwrap();
            model.insert(k, vec![i as u8]);
        }
        let all: Entries = model.clone().into_iter().collect();
        assert_eq!(collect(t.iter()), all);
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(collect(t.iter().rev()), rev);
        assert_eq!(t.first().unwrap(), all.first().cloned());
        assert_eq!(t.last().unwrap(), all.last().cloned());

        for prefix in [
            vec![0xff],
            vec![0x01, 0xff],
            vec![],
            vec![0x01],
            b"a".to_vec(),
            vec![0x80],
            vec![0x03],
        ] {
            let expected: Entries = all
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .cloned()
                .collect();
            assert_eq!(
                collect(t.scan_prefix(&prefix)),
                expected,
                "prefix {prefix:?}"
            );
            let mut expected_rev = expected.clone();
            expected_rev.reverse();
            assert_eq!(collect(t.scan_prefix(&prefix).rev()), expected_rev);
        }
        assert_eq!(
            keys(&collect(t.scan_prefix(&[0xff]))),
            vec![vec![0xff], vec![0xff, 0x00], vec![0xff, 0xff]]
        );
        assert_eq!(
            keys(&collect(t.scan_prefix(&[0x01, 0xff]))),
            vec![
                vec![0x01, 0xff],
                vec![0x01, 0xff, 0x00],
                vec![0x01, 0xff, 0xff]
            ]
        );

        let bounds = |k: &[u8]| {
            [
                Bound::Unbounded,
                Bound::Included(k.to_vec()),
                Bound::Excluded(k.to_vec()),
            ]
        };
        for lo_key in [vec![0x01], b"ab".to_vec(), vec![]] {
            for hi_key in [vec![0x80], vec![0xff], vec![0x01, 0xff]] {
                for lo in bounds(&lo_key) {
                    for hi in bounds(&hi_key) {
                        if !range_is_valid(&lo, &hi) {
                            continue;
                        }
                        let expected: Entries = model
                            .range((lo.clone(), hi.clone()))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        let got = collect(t.range(lo.clone(), hi.clone()));
                        assert_eq!(got, expected, "{lo:?}..{hi:?}");
                        let mut expected_rev = expected;
                        expected_rev.reverse();
                        assert_eq!(collect(t.range(lo.clone(), hi.clone()).rev()), expected_rev);
                    }
                }
            }
        }
    }

    /// BTreeMap panics on ranges whose start is after the end.
    fn range_is_valid(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
        match (lo, hi) {
            (Bound::Included(a), Bound::Included(b)) => a <= b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a < b
            }
            _ => true,
        }
    }

    #[test]
    fn paging_and_meeting_in_the_middle() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 2);
        let t = pool.table("audit");
        let n: u32 = 700; // more than two pages
        for i in 0..n {
            t.insert(&i.to_be_bytes(), &i.to_le_bytes()).unwrap();
        }
        let all: Entries = (0..n)
            .map(|i| (i.to_be_bytes().to_vec(), i.to_le_bytes().to_vec()))
            .collect();
        assert_eq!(collect(t.iter()), all);
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(collect(t.iter().rev()), rev);
        assert_eq!(t.len().unwrap(), n as usize);

        // The audit log's tail: a few from the back only.
        let tail = collect(t.iter().rev().take(3));
        assert_eq!(
            keys(&tail),
            vec![
                699u32.to_be_bytes().to_vec(),
                698u32.to_be_bytes().to_vec(),
                697u32.to_be_bytes().to_vec()
            ]
        );

        // Alternate ends, and with uneven rhythms, until they meet: every
        // entry exactly once.
        for pattern in [
            vec![true, false],
            vec![true, true, true, false],
            vec![false, false, true],
        ] {
            let mut it = t.iter();
            let (mut front, mut back) = (Vec::new(), Vec::new());
            let mut step = 0;
            loop {
                let from_front = pattern[step % pattern.len()];
                step += 1;
                let item = if from_front {
                    it.next()
                } else {
                    it.next_back()
                };
                match item {
                    Some(r) => {
                        let e = r.unwrap();
                        if from_front {
                            front.push(e);
                        } else {
                            back.push(e);
                        }
                    }
                    None => break,
                }
            }
            assert!(it.next().is_none() && it.next_back().is_none());
            back.reverse();
            front.extend(back);
            assert_eq!(front, all, "pattern {pattern:?}");
        }

        // One from the front, then the rest from the back: crosses into the
        // front's buffer.
        let mut it = t.iter();
        let first = it.next().unwrap().unwrap();
        let mut rest = collect(it.by_ref().rev());
        rest.push(first);
        rest.reverse();
        assert_eq!(rest, all);

        // Mid-range with bounds that fall between pages.
        let lo = 100u32.to_be_bytes().to_vec();
        let hi = 650u32.to_be_bytes().to_vec();
        let got = collect(t.range(Bound::Excluded(lo), Bound::Included(hi)));
        assert_eq!(got, all[101..=650].to_vec());
    }

    #[test]
    fn iterator_is_lazy_and_sees_later_pages_as_they_are() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        let t = pool.table("pending");
        for i in 0..600u32 {
            t.insert(&i.to_be_bytes(), b"").unwrap();
        }
        let mut it = t.iter();
        assert_eq!(it.next().unwrap().unwrap().0, 0u32.to_be_bytes().to_vec());
        // Removed after the first page was read: not returned.
        t.remove(&599u32.to_be_bytes()).unwrap();
        assert_eq!(it.count(), 598);
    }

    #[test]
    fn iterator_yields_an_error_and_ends() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        let t = pool.table("routing");
        t.insert(b"a", b"1").unwrap();
        // Break the table under the iterator.
        pool.run(|s| Ok(s.client()?.batch_execute("DROP TABLE truc_routing")?))
            .unwrap();
        let mut it = t.iter();
        let err = it.next().unwrap().unwrap_err();
        assert!(matches!(err, PgError::Query(_)), "{err}");
        assert!(!err.is_retryable());
        assert!(it.next().is_none());
    }

    #[test]
    fn usable_from_a_tokio_runtime_thread() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt.block_on(async move {
            let t = pool.table("meta");
            t.insert(b"from", b"tokio").unwrap();
            let got = t.get(b"from").unwrap();
            drop(t);
            drop(pool); // stops the workers from the runtime thread
            got
        });
        assert_eq!(got, Some(b"tokio".to_vec()));
    }
}

//! Staged writes: blind writes (a put or a delete whose caller needs no
//! previous value) held in memory and written to PostgreSQL together, in one
//! statement, at the next flush. Per envelope they were one round trip and
//! one transaction each; now one statement carries every table's writes made
//! since the last flush, by every task of this process.
//!
//! Invariants:
//! - this process reads its own writes: a staged or in-flight value answers
//!   a point read of its key before the database is asked;
//! - an operation that reads or writes a key through the database (insert,
//!   remove, compare-and-swap) flushes first when that key is staged, and a
//!   scan, count or clear of a table flushes first when the table has staged
//!   writes, so nothing it returns is older than what this process wrote;
//! - other processes see staged writes only once flushed: callers flush
//!   ([`Staged::flush`], `Store::share`) before telling anyone of them, and
//!   the group commit flushes before it commits, so nothing is acked or made
//!   durable that was not written;
//! - one flush at a time (a mutex), so batches reach the database in the
//!   order they were staged; within a batch each key appears once (its last
//!   write), tables in [`TREES`](super::TREES) order and keys sorted, so two
//!   processes' batches lock rows in one order;
//! - a batch whose statement failed is put back under anything staged since
//!   (newer writes win) and written by the next flush: nothing is dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use postgres::types::ToSql;

use super::error::PgError;
use super::pool::{PgPool, Session};
use super::table::Op;
use super::TREES;

/// One staged write of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Write {
    /// Set the value.
    Put(Vec<u8>),
    /// Remove the key.
    Delete,
    /// Remove the key if its value is this one (a routing claim released).
    DeleteIf(Vec<u8>),
    /// Set the value if absent or greater byte-wise (the audit head).
    PutMax(Vec<u8>),
}

impl Write {
    /// `self` staged after `older` for the same key: the one write with the
    /// effect of both. A forward-only put after a put or a delete is a put
    /// (of the greater value, or its own); after another forward-only put,
    /// the greater one. Any other write replaces what was there, but for a
    /// forward-only put after a conditional delete, which only the database
    /// can judge: [`Staged::stage_put_max`] sends that first.
    fn over(self, older: &Write) -> Write {
        match (self, older) {
            (Write::PutMax(new), Write::PutMax(old)) => Write::PutMax(new.max(old.clone())),
            (Write::PutMax(new), Write::Put(old)) => Write::Put(new.max(old.clone())),
            (Write::PutMax(new), Write::Delete) => Write::Put(new),
            (newer, _) => newer,
        }
    }
}

/// Writes by table (index in [`TREES`]), then key.
type Batch = BTreeMap<usize, BTreeMap<Vec<u8>, Write>>;

/// How many values written lately are remembered as hints.
const HINTS: usize = 8_192;

/// The tables whose values are remembered as hints: those read, changed and
/// written back on the busy path (an envelope's record at each status, the
/// small state kept in `meta`). Rows only ever inserted, overwritten or
/// removed (nonces, claims, indexes, pending deliveries, the audit chain)
/// would take the hints' room and never be asked for: at about seven such
/// writes per envelope, a record's hint was gone within two seconds, before
/// many statuses came back, and a status cost a read more.
fn hinted(table: usize) -> bool {
    matches!(TREES.get(table), Some(&"envelopes" | &"meta"))
}

#[derive(Default)]
struct State {
    /// Staged since the last flush started.
    pending: Batch,
    /// Being written by the flush in progress.
    inflight: Option<Arc<Batch>>,
    /// Values this process wrote lately, by (table, key), oldest first in
    /// `order`: the likely current value, which a read-modify-write offers
    /// as its expected value instead of reading first (its compare-and-swap
    /// checks it; a stale hint costs one more round trip, nothing else).
    hints: HashMap<(usize, Vec<u8>), Vec<u8>>,
    order: VecDeque<(usize, Vec<u8>)>,
}

impl State {
    fn hint(&mut self, t: usize, key: &[u8], value: Option<&[u8]>) {
        if !hinted(t) {
            return;
        }
        let k = (t, key.to_vec());
        match value {
            Some(v) => {
                if self.hints.insert(k.clone(), v.to_vec()).is_none() {
                    self.order.push_back(k);
                    while self.order.len() > HINTS {
                        if let Some(old) = self.order.pop_front() {
                            self.hints.remove(&old);
                        }
                    }
                }
            }
            None => {
                // Its place in `order` goes when it comes round.
                self.hints.remove(&k);
            }
        }
    }
}

/// The staged writes of one store (one pool); shared by its tables.
#[derive(Default)]
pub(crate) struct Staged {
    state: Mutex<State>,
    /// Held for the whole of a flush.
    flushing: Mutex<()>,
}

/// What a point read finds staged for a key.
pub(crate) enum Seen {
    /// Nothing staged: ask the database.
    Unknown,
    /// Staged: this value (`None`: deleted).
    Staged(Option<Vec<u8>>),
    /// A conditional write is staged: flush, then ask the database.
    Flush,
}

impl Staged {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stage_write(&self, table: usize, key: &[u8], w: Write) {
        self.state()
            .pending
            .entry(table)
            .or_default()
            .insert(key.to_vec(), w);
    }

    /// Stages `value` (`None`: a delete) for `key` of `table`.
    pub(crate) fn stage(&self, table: usize, key: &[u8], value: Option<&[u8]>) {
        let w = match value {
            Some(v) => Write::Put(v.to_vec()),
            None => Write::Delete,
        };
        self.stage_write(table, key, w);
    }

    /// Stages setting `key` of `table` to `value` if it is then absent or
    /// less byte-wise, merged with what is staged for the key
    /// ([`Write::over`]); a conditional delete of the key, staged or being
    /// written, is sent first.
    pub(crate) fn stage_put_max(
        &self,
        pool: &PgPool,
        table: usize,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), PgError> {
        loop {
            {
                let mut st = self.state();
                let conditional = |b: &Batch| {
                    matches!(
                        b.get(&table).and_then(|t| t.get(key)),
                        Some(Write::DeleteIf(_))
                    )
                };
                if !conditional(&st.pending) && !st.inflight.as_deref().is_some_and(conditional) {
                    let rows = st.pending.entry(table).or_default();
                    let w = Write::PutMax(value.to_vec());
                    let w = match rows.get(key) {
                        Some(older) => w.over(older),
                        None => w,
                    };
                    rows.insert(key.to_vec(), w);
                    return Ok(());
                }
            }
            self.flush(pool, None)?;
        }
    }

    /// Stages the removal of `key` of `table` if its value is then
    /// `expected`. A key with a write staged already is flushed first, so
    /// the condition is judged against the database alone.
    pub(crate) fn stage_delete_if(
        &self,
        pool: &PgPool,
        table: usize,
        key: &[u8],
        expected: &[u8],
    ) -> Result<(), PgError> {
        self.settle(pool, table, Some(key))?;
        self.stage_write(table, key, Write::DeleteIf(expected.to_vec()));
        Ok(())
    }

    /// What is staged (or being written) for `key` of `table`.
    pub(crate) fn seen(&self, table: usize, key: &[u8]) -> Seen {
        let st = self.state();
        let find = |b: &Batch| b.get(&table).and_then(|t| t.get(key)).cloned();
        match find(&st.pending).or_else(|| st.inflight.as_deref().and_then(find)) {
            Some(Write::Put(v)) => Seen::Staged(Some(v)),
            Some(Write::Delete) => Seen::Staged(None),
            Some(Write::DeleteIf(_) | Write::PutMax(_)) => Seen::Flush,
            None => Seen::Unknown,
        }
    }

    /// The value this process last wrote to `key` of `table`, staged or
    /// sent, if it remembers one (see `State::hints`).
    pub(crate) fn hint(&self, table: usize, key: &[u8]) -> Option<Vec<u8>> {
        self.state().hints.get(&(table, key.to_vec())).cloned()
    }

    /// `key` of `table` is now `value` in the database (`None`: absent),
    /// as a compare-and-swap of this process just made it.
    pub(crate) fn note(&self, table: usize, key: &[u8], value: Option<&[u8]>) {
        self.state().hint(table, key, value);
    }

    /// Whether `key` of `table` (or, with `key` `None`, any key of it) has a
    /// write not yet in the database.
    fn dirty(&self, table: usize, key: Option<&[u8]>) -> bool {
        let st = self.state();
        let has = |b: &Batch| {
            b.get(&table)
                .is_some_and(|t| key.map_or(!t.is_empty(), |k| t.contains_key(k)))
        };
        has(&st.pending) || st.inflight.as_deref().is_some_and(has)
    }

    /// Whether anything is staged.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        let st = self.state();
        st.pending.is_empty() && st.inflight.is_none()
    }

    /// Flushes when `key` of `table` (any key, with `None`) is staged.
    pub(crate) fn settle(
        &self,
        pool: &PgPool,
        table: usize,
        key: Option<&[u8]>,
    ) -> Result<(), PgError> {
        if self.dirty(table, key) {
            self.flush(pool, None)?;
        }
        Ok(())
    }

    /// Writes everything staged before the call, in one statement (one
    /// transaction). Concurrent callers take turns; a caller whose writes
    /// an earlier flush took waits for that flush.
    ///
    /// With `sync` (a marker key of `meta`), the statement runs on the
    /// group-commit session and commits synchronously, which makes it and
    /// every earlier commit of every session durable (the WAL is flushed in
    /// order); with nothing staged the marker is written instead (the
    /// server's time), so there is a write to commit. Either way one
    /// statement, one round trip.
    pub(crate) fn flush(&self, pool: &PgPool, sync: Option<&[u8]>) -> Result<(), PgError> {
        let _one = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let batch = {
            let mut st = self.state();
            if st.pending.is_empty() && sync.is_none() {
                return Ok(());
            }
            let batch = Arc::new(std::mem::take(&mut st.pending));
            st.inflight = Some(batch.clone());
            batch
        };
        let written = batch.clone();
        let marker = sync.map(<[u8]>::to_vec);
        // With `sync`, on the group-commit session: its statements commit
        // synchronously as they are, one round trip each.
        let res = match marker {
            None => pool.run(move |s| write(s, &written)),
            Some(key) if written.is_empty() => pool.run_sync(move |s| {
                s.client()?.batch_execute(&marker_sql(&key))?;
                Ok(())
            }),
            Some(_) => pool.run_sync(move |s| write(s, &written)),
        };
        let mut st = self.state();
        st.inflight = None;
        let batch = Arc::try_unwrap(batch).unwrap_or_else(|b| (*b).clone());
        match &res {
            Ok(()) => {
                for (t, rows) in batch {
                    for (k, w) in rows {
                        match w {
                            Write::Put(v) => st.hint(t, &k, Some(&v)),
                            Write::Delete | Write::DeleteIf(_) | Write::PutMax(_) => {
                                st.hint(t, &k, None)
                            }
                        }
                    }
                }
            }
            Err(_) => {
                // Put back under what was staged meanwhile (newer wins).
                for (t, rows) in batch {
                    let newer = st.pending.entry(t).or_default();
                    for (k, w) in rows {
                        match newer.get_mut(&k) {
                            Some(n) => *n = std::mem::replace(n, Write::Delete).over(&w),
                            None => {
                                newer.insert(k, w);
                            }
                        }
                    }
                }
            }
        }
        res
    }
}

/// One simple-query round trip (on the group-commit session, so it commits
/// synchronously): upserts `key` (hex, so no quoting) of `meta` with the
/// server's time.
fn marker_sql(key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "INSERT INTO truc_meta (k, v) VALUES (decode('{hex}', 'hex'), convert_to(clock_timestamp()::text, 'UTF8')) \
         ON CONFLICT (k) DO UPDATE SET v = excluded.v"
    )
}

/// Writes `batch` as one statement of data-modifying CTEs, prepared once
/// per shape (which tables have deletes, conditional deletes, puts).
fn write(s: &mut Session, batch: &Batch) -> Result<(), PgError> {
    let (mut dels, mut conds, mut puts, mut maxes) = (0u32, 0u32, 0u32, 0u32);
    let mut params: Vec<Vec<Vec<u8>>> = Vec::new();
    for (&t, rows) in batch {
        let mut gone = Vec::new();
        let (mut ck, mut cv, mut pk, mut pv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut mk, mut mv) = (Vec::new(), Vec::new());
        for (k, w) in rows {
            match w {
                Write::Delete => gone.push(k.clone()),
                Write::DeleteIf(v) => {
                    ck.push(k.clone());
                    cv.push(v.clone());
                }
                Write::Put(v) => {
                    pk.push(k.clone());
                    pv.push(v.clone());
                }
                Write::PutMax(v) => {
                    mk.push(k.clone());
                    mv.push(v.clone());
                }
            }
        }
        if !gone.is_empty() {
            dels |= 1 << t;
            params.push(gone);
        }
        if !ck.is_empty() {
            conds |= 1 << t;
            params.push(ck);
            params.push(cv);
        }
        if !pk.is_empty() {
            puts |= 1 << t;
            params.push(pk);
            params.push(pv);
        }
        if !mk.is_empty() {
            maxes |= 1 << t;
            params.push(mk);
            params.push(mv);
        }
    }
    if params.is_empty() {
        return Ok(());
    }
    let op = Op::Staged {
        dels,
        conds,
        puts,
        maxes,
    };
    let (client, st) = s.prepared(("*", op), || batch_sql(dels, conds, puts, maxes))?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    client.execute(&st, &refs)?;
    Ok(())
}

/// The statement writing a batch: for each table in [`TREES`] order, its
/// deletes (`$n` keys) if its bit is set in `dels`, its conditional deletes
/// (`$n` keys, `$n+1` values) if set in `conds`, its puts (`$n` keys,
/// `$n+1` values) if set in `puts`, then its forward-only puts (likewise)
/// if set in `maxes`.
pub(super) fn batch_sql(dels: u32, conds: u32, puts: u32, maxes: u32) -> String {
    let mut parts = Vec::new();
    let mut n = 0;
    for (i, tree) in TREES.iter().enumerate() {
        let t = format!("truc_{tree}");
        if dels & (1 << i) != 0 {
            n += 1;
            parts.push(format!(
                "d{i} AS (DELETE FROM {t} WHERE k = ANY(${n}::bytea[]))"
            ));
        }
        if conds & (1 << i) != 0 {
            n += 2;
            parts.push(format!(
                "c{i} AS (DELETE FROM {t} WHERE (k, v) IN \
                 (SELECT * FROM unnest(${}::bytea[], ${n}::bytea[])))",
                n - 1
            ));
        }
        if puts & (1 << i) != 0 {
            n += 2;
            parts.push(format!(
                "p{i} AS (INSERT INTO {t} (k, v) SELECT * FROM unnest(${}::bytea[], ${n}::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v)",
                n - 1
            ));
        }
        if maxes & (1 << i) != 0 {
            n += 2;
            parts.push(format!(
                "m{i} AS (INSERT INTO {t} (k, v) SELECT * FROM unnest(${}::bytea[], ${n}::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v WHERE {t}.v < excluded.v)",
                n - 1
            ));
        }
    }
    format!("WITH {} SELECT 1", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::super::testdb::{migrated_pool, TestDb};
    use super::*;

    #[test]
    fn of_two_forward_only_writes_the_greater_is_kept() {
        let (small, big) = (Write::PutMax(vec![1]), Write::PutMax(vec![2]));
        assert_eq!(small.clone().over(&big), big);
        assert_eq!(big.clone().over(&small), big);
        // Over a put or a delete: a put with the effect of both.
        assert_eq!(
            small.clone().over(&Write::Put(vec![9])),
            Write::Put(vec![9])
        );
        assert_eq!(big.clone().over(&Write::Put(vec![1])), Write::Put(vec![2]));
        assert_eq!(small.clone().over(&Write::Delete), Write::Put(vec![1]));
        // Any other newer write replaces the older one.
        assert_eq!(Write::Delete.over(&big), Write::Delete);
        assert_eq!(Write::Put(vec![0]).over(&big), Write::Put(vec![0]));
        let sql = batch_sql(0, 0, 0, 1 << 6);
        assert!(
            sql.contains("WHERE truc_meta.v < excluded.v"),
            "forward only: {sql}"
        );
    }

    #[test]
    fn one_statement_per_shape_names_each_table_once() {
        let sql = batch_sql(1 << 7, 0, (1 << 2) | (1 << 7), 0);
        assert!(
            sql.contains("DELETE FROM truc_pending WHERE k = ANY($3::bytea[])"),
            "{sql}"
        );
        assert!(sql.contains("unnest($1::bytea[], $2::bytea[])"), "{sql}");
        assert!(sql.contains("INSERT INTO truc_envelopes"));
        assert!(sql.contains("unnest($4::bytea[], $5::bytea[])"), "{sql}");
    }

    #[test]
    fn staged_writes_are_read_back_before_and_after_the_flush() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 2);
        let t = pool.table("envelopes");
        t.insert(b"gone", b"x").unwrap();
        t.put(b"a", b"1");
        t.put(b"b", b"2");
        t.put(b"a", b"3");
        t.delete(b"gone");
        assert_eq!(t.get(b"a").unwrap(), Some(b"3".to_vec()));
        assert_eq!(t.get(b"gone").unwrap(), None);
        assert!(!t.contains_key(b"gone").unwrap());
        // Another pool (another instance) sees nothing yet.
        let other = migrated_pool(&db, 1).table("envelopes");
        assert_eq!(other.get(b"a").unwrap(), None);
        assert_eq!(other.get(b"gone").unwrap(), Some(b"x".to_vec()));
        pool.staged().flush(&pool, None).unwrap();
        assert_eq!(other.get(b"a").unwrap(), Some(b"3".to_vec()));
        assert_eq!(other.get(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(other.get(b"gone").unwrap(), None);
        assert!(pool.staged().is_empty());
    }

    #[test]
    fn scans_and_swaps_see_what_this_process_staged() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 2);
        let t = pool.table("by_dest");
        t.put(b"k1", b"");
        t.put(b"k2", b"");
        let keys: Vec<Vec<u8>> = t.scan_prefix(b"k").map(|r| r.unwrap().0).collect();
        assert_eq!(keys, vec![b"k1".to_vec(), b"k2".to_vec()]);
        let m = pool.table("meta");
        m.put(b"c", b"1");
        assert_eq!(
            m.compare_and_swap(b"c", Some(b"1"), Some(b"2")).unwrap(),
            Ok(())
        );
        assert_eq!(m.get(b"c").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn a_failed_flush_keeps_its_writes_under_newer_ones() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        let t = pool.table("meta");
        let rename = |from: &str, to: &str| {
            let sql = format!("ALTER TABLE {from} RENAME TO {to}");
            pool.run(move |s| Ok(s.client()?.batch_execute(&sql)?))
                .unwrap();
        };
        t.put(b"a", b"old");
        // Break the statement: the table is gone for a moment.
        rename("truc_meta", "truc_meta_away");
        assert!(pool.staged().flush(&pool, None).is_err());
        t.put(b"b", b"new");
        rename("truc_meta_away", "truc_meta");
        pool.staged().flush(&pool, None).unwrap();
        let other = migrated_pool(&db, 1).table("meta");
        assert_eq!(other.get(b"a").unwrap(), Some(b"old".to_vec()));
        assert_eq!(other.get(b"b").unwrap(), Some(b"new".to_vec()));
    }

    #[test]
    fn a_conditional_delete_removes_only_the_expected_value() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        let t = pool.table("routing");
        t.insert(b"mine", b"me").unwrap();
        t.insert(b"taken", b"other").unwrap();
        t.delete_if(b"mine", b"me").unwrap();
        t.delete_if(b"taken", b"me").unwrap();
        // Read back through a flush: the outcome is the database's.
        assert!(!t.contains_key(b"mine").unwrap());
        assert_eq!(t.get(b"taken").unwrap(), Some(b"other".to_vec()));
    }

    #[test]
    fn only_read_modify_written_tables_keep_hints() {
        let db = TestDb::new();
        let pool = migrated_pool(&db, 1);
        for table in ["envelopes", "meta", "nonces", "pending", "by_dest"] {
            pool.table(table).put(b"k", b"v");
        }
        pool.share().unwrap();
        let tree = |name: &str| TREES.iter().position(|t| *t == name).unwrap();
        let staged = pool.staged();
        assert_eq!(staged.hint(tree("envelopes"), b"k"), Some(b"v".to_vec()));
        assert_eq!(staged.hint(tree("meta"), b"k"), Some(b"v".to_vec()));
        for table in ["nonces", "pending", "by_dest"] {
            assert_eq!(staged.hint(tree(table), b"k"), None, "{table}");
        }
    }

    #[test]
    fn a_stale_hint_costs_a_retry_not_a_lost_update() {
        let db = TestDb::new();
        let (a, b) = (migrated_pool(&db, 1), migrated_pool(&db, 1));
        let (ta, tb) = (a.table("envelopes"), b.table("envelopes"));
        ta.put(b"r", b"1");
        a.share().unwrap();
        // Another instance changes it; `a` still remembers "1".
        tb.fetch_and_update(b"r", |v| v.map(|v| [v, b"b"].concat()))
            .unwrap();
        let mut seen = Vec::new();
        let old = ta
            .fetch_and_update(b"r", |v| {
                seen.push(v.map(<[u8]>::to_vec));
                v.map(|v| [v, b"a"].concat())
            })
            .unwrap();
        assert_eq!(old, Some(b"1b".to_vec()));
        assert_eq!(seen, vec![Some(b"1".to_vec()), Some(b"1b".to_vec())]);
        assert_eq!(tb.get(b"r").unwrap(), Some(b"1ba".to_vec()));
    }
}

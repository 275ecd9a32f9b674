//! Versioned schema migrations, embedded in the binary, applied at start.
//!
//! Invariants:
//! - versions are applied in order, each in its own transaction together
//!   with its row in `truc_schema`, so a migration is applied entirely or
//!   not at all;
//! - concurrent starts are serialised by a session advisory lock (released
//!   on every path, and by the server if the session dies), so no migration
//!   is applied twice;
//! - a database whose schema is newer than this binary knows is refused,
//!   never downgraded or written to.

use super::error::PgError;
use super::pool::PgPool;

/// The migrations, `(version, name, sql)`, versions strictly increasing.
pub(crate) const MIGRATIONS: &[(u32, &str, &str)] =
    &[(1, "init", include_str!("migrations/0001_init.sql"))];

/// Key of the advisory lock serialising migrations ("truc" and "mig" in
/// ASCII); any other user of advisory locks in the database must avoid it.
const MIGRATION_LOCK: i64 = 0x7472_7563_006d_6967;

/// What [`PgPool::migrate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MigrateReport {
    /// Schema version found (0: a new database).
    pub(crate) from: u32,
    /// Schema version now.
    pub(crate) to: u32,
    /// Versions applied by this call, in order.
    pub(crate) applied: Vec<u32>,
}

/// The newest version this binary knows.
pub(crate) fn newest_known() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

impl PgPool {
    /// Whether the server runs autovacuum (`SHOW autovacuum`). truc's
    /// routing claims and pending deliveries are inserted and deleted for
    /// every envelope: without it those tables only grow.
    pub(crate) fn autovacuum_on(&self) -> Result<bool, PgError> {
        self.run(|s| {
            let row = s.client()?.query_one("SHOW autovacuum", &[])?;
            Ok(row.try_get::<_, String>(0)? == "on")
        })
    }

    /// Bring the schema to the newest version this binary knows; refuse a
    /// database that is newer ([`PgError::SchemaTooNew`]).
    pub(crate) fn migrate(&self) -> Result<MigrateReport, PgError> {
        self.run(|s| {
            let client = s.client()?;
            client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
            let result = migrate_locked(client);
            // Unlock even after a failure; a broken session releases it anyway.
            let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
            let report = result?;
            unlocked?;
            Ok(report)
        })
    }
}

fn migrate_locked(client: &mut postgres::Client) -> Result<MigrateReport, PgError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS truc_schema (\
             version int PRIMARY KEY, \
             name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    let mut applied_before = Vec::new();
    for row in client.query("SELECT version FROM truc_schema ORDER BY version", &[])? {
        let v: i32 = row.try_get(0)?;
        let v = u32::try_from(v)
            .map_err(|_| PgError::Unexpected(format!("schema version {v} in truc_schema")))?;
        applied_before.push(v);
    }
    let from = applied_before.last().copied().unwrap_or(0);
    let known = newest_known();
    if from > known {
        return Err(PgError::SchemaTooNew { found: from, known });
    }
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if applied_before.contains(&version) {
            continue;
        }
        let v = i32::try_from(version)
            .map_err(|_| PgError::Unexpected(format!("migration version {version}")))?;
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO truc_schema (version, name) VALUES ($1, $2)",
            &[&v, &name],
        )?;
        tx.commit()?;
        applied.push(version);
    }
    Ok(MigrateReport {
        from,
        to: known.max(from),
        applied,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::super::testdb::TestDb;
    use super::*;

    fn versions(pool: &PgPool) -> Vec<i32> {
        pool.run(|s| {
            Ok(s.client()?
                .query("SELECT version FROM truc_schema ORDER BY version", &[])?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
        .unwrap()
    }

    #[test]
    fn migrations_are_ordered_and_numbered_like_their_files() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(MIGRATIONS[0].0, 1);
        assert_eq!(newest_known(), MIGRATIONS.len() as u32);
        for tree in super::super::TREES {
            let create =
                format!("CREATE TABLE truc_{tree} (k bytea PRIMARY KEY, v bytea NOT NULL);");
            assert!(MIGRATIONS[0].2.contains(&create), "{tree}");
        }
    }

    #[test]
    fn migrate_twice_applies_once() {
        let db = TestDb::new();
        let pool = PgPool::connect(db.url(), 1).unwrap();
        let first = pool.migrate().unwrap();
        assert_eq!(
            first,
            MigrateReport {
                from: 0,
                to: newest_known(),
                applied: MIGRATIONS.iter().map(|m| m.0).collect()
            }
        );
        let second = pool.migrate().unwrap();
        assert_eq!(
            second,
            MigrateReport {
                from: newest_known(),
                to: newest_known(),
                applied: vec![]
            }
        );
        assert_eq!(versions(&pool), vec![1]);
        // The lock was released: a new session can take it at once.
        let taken: bool = pool
            .run(|s| {
                Ok(s.client()?
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK])?
                    .get(0))
            })
            .unwrap();
        assert!(taken);
    }

    #[test]
    fn concurrent_migrations_apply_once() {
        for _ in 0..3 {
            let db = TestDb::new();
            let url = db.url().to_owned();
            let barrier = Arc::new(Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let url = url.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let pool = PgPool::connect(&url, 1).unwrap();
                        barrier.wait();
                        pool.migrate().unwrap()
                    })
                })
                .collect();
            let mut reports: Vec<MigrateReport> =
                threads.into_iter().map(|t| t.join().unwrap()).collect();
            reports.sort_by_key(|r| r.applied.len());
            assert_eq!(reports[0].applied, Vec::<u32>::new());
            assert_eq!(reports[1].applied, vec![1]);
            assert_eq!(reports[0].from, 1, "the second waited for the first");
            let pool = PgPool::connect(&url, 1).unwrap();
            assert_eq!(versions(&pool), vec![1]);
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let db = TestDb::new();
        let pool = PgPool::connect(db.url(), 1).unwrap();
        pool.migrate().unwrap();
        pool.run(|s| {
            Ok(s.client()?.execute(
                "INSERT INTO truc_schema (version, name) VALUES (9999, 'future')",
                &[],
            )?)
        })
        .unwrap();
        let err = pool.migrate().unwrap_err();
        assert!(
            matches!(err, PgError::SchemaTooNew { found: 9999, known } if known == newest_known()),
            "{err}"
        );
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("upgrade truc"), "{err}");
        // Refused without writing, and the lock is free again.
        assert_eq!(versions(&pool), vec![1, 9999]);
        let other = PgPool::connect(db.url(), 1).unwrap();
        assert!(matches!(other.migrate(), Err(PgError::SchemaTooNew { .. })));
    }

    #[test]
    fn a_failed_migration_leaves_no_trace() {
        let db = TestDb::new();
        let pool = PgPool::connect(db.url(), 1).unwrap();
        // A table of the first migration already exists: it fails as a whole.
        pool.run(|s| {
            Ok(s.client()?
                .batch_execute("CREATE TABLE truc_routing (x int)")?)
        })
        .unwrap();
        let err = pool.migrate().unwrap_err();
        assert!(matches!(err, PgError::Query(_)), "{err}");
        let exists: bool = pool
            .run(|s| {
                Ok(s.client()?
                    .query_one("SELECT to_regclass('truc_agencies') IS NOT NULL", &[])?
                    .get(0))
            })
            .unwrap();
        assert!(!exists, "the migration's transaction was rolled back");
        assert_eq!(versions(&pool), Vec::<i32>::new());
    }
}

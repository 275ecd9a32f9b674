//! Errors of the PostgreSQL backend, and which of them are worth retrying.
//!
//! Invariant: [`PgError::is_retryable`] matches every variant by name (no
//! catch-all), so a new variant must be classified where it is added. A
//! request that failed because its connection broke is
//! [`PgError::ConnectionLost`]: it may or may not have been applied, and it is
//! never retried silently here; the caller decides.

/// SQLSTATEs after which the same request may succeed when sent again:
/// serialization failure, deadlock, the server shutting down or not yet
/// accepting connections, and a write sent to a server that is (now) a
/// read-only standby after a failover.
const RETRYABLE_STATES: &[&str] = &["40001", "40P01", "57P01", "57P02", "57P03", "25006"];

/// SQLSTATEs meaning the connection itself is no longer worth keeping: the
/// worker drops it and reconnects (possibly to a new primary) next time.
pub(super) const RECONNECT_STATES: &[&str] = &["57P01", "57P02", "57P03", "25006"];

/// PostgreSQL backend errors.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection string does not parse.
    #[error("invalid PostgreSQL connection string: {}", describe(.0))]
    BadUrl(#[source] postgres::Error),
    /// Connecting (or preparing a new session) failed.
    #[error("cannot connect to PostgreSQL at {url}: {}", describe(.source))]
    Connect {
        /// The connection string, password redacted.
        url: String,
        /// The client's error.
        #[source]
        source: postgres::Error,
    },
    /// A statement failed on a live connection.
    #[error("PostgreSQL: {}", describe(.0))]
    Query(#[from] postgres::Error),
    /// The connection broke during the request: it may or may not have been
    /// applied. The worker reconnects on its next request.
    #[error(
        "PostgreSQL connection lost during the request (it may or may not have been applied): {0}"
    )]
    ConnectionLost(#[source] postgres::Error),
    /// The database's schema is newer than this binary knows.
    #[error(
        "the PostgreSQL schema is at version {found} but this truc knows only up to {known}: \
         upgrade truc before starting it on this database"
    )]
    SchemaTooNew {
        /// Newest version recorded in the database.
        found: u32,
        /// Newest version this binary knows.
        known: u32,
    },
    /// The pool was shut down.
    #[error("PostgreSQL pool closed")]
    PoolClosed,
    /// The worker thread serving the request panicked (a bug).
    #[error("a PostgreSQL worker thread panicked while serving the request")]
    WorkerPanicked,
    /// A value read back from the database is out of range (a bug or a
    /// foreign write).
    #[error("unexpected value in the database: {0}")]
    Unexpected(String),
}

/// The client's error with its cause: the server's message and SQLSTATE,
/// or the I/O error (the client's own text names only the kind).
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{db} (SQLSTATE {})", db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl PgError {
    /// Whether sending the same request again may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::BadUrl(_) => false,
            // Authentication, a missing database or role: the operator must act.
            Self::Connect { source, .. } => match source.code() {
                Some(state) => RETRYABLE_STATES.contains(&state.code()),
                None => true,
            },
            Self::Query(e) => {
                e.is_closed()
                    || e.code()
                        .is_some_and(|s| RETRYABLE_STATES.contains(&s.code()))
            }
            Self::ConnectionLost(_) => true,
            Self::SchemaTooNew { .. } => false,
            Self::PoolClosed => false,
            Self::WorkerPanicked => false,
            Self::Unexpected(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pool::PgPool;
    use super::super::testdb::TestDb;
    use super::*;

    /// The error the server returns for an error raised with `state`.
    fn server_error(pool: &PgPool, state: &'static str) -> PgError {
        pool.run(move |s| {
            let sql =
                format!("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{state}'; END $$");
            Ok(s.client()?.batch_execute(&sql)?)
        })
        .unwrap_err()
    }

    #[test]
    fn sqlstates_are_classified() {
        let db = TestDb::new();
        let pool = PgPool::connect(db.url(), 1).unwrap();
        for (state, retryable) in [
            ("40001", true),  // serialization failure
            ("40P01", true),  // deadlock
            ("25006", true),  // read-only transaction: a standby after failover
            ("23505", false), // unique violation
            ("23502", false), // not-null violation
            ("42601", false), // syntax error
            ("42P01", false), // undefined table
            ("22012", false), // division by zero
        ] {
            let err = server_error(&pool, state);
            assert!(matches!(err, PgError::Query(_)), "{state}: {err:?}");
            assert_eq!(err.is_retryable(), retryable, "{state}: {err}");
        }
        // A real syntax error, not a raised one.
        let err = pool
            .run(|s| Ok(s.client()?.batch_execute("SELEC 1")?))
            .unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        assert!(err.to_string().contains("syntax"), "{err}");
    }

    #[test]
    fn a_read_only_server_drops_the_session() {
        let db = TestDb::new();
        let pool = PgPool::connect(db.url(), 1).unwrap();
        let pid = || -> i32 {
            pool.run(|s| {
                Ok(s.client()?
                    .query_one("SELECT pg_backend_pid()", &[])?
                    .get(0))
            })
            .unwrap()
        };
        let before = pid();
        let _ = server_error(&pool, "25006");
        assert_ne!(pid(), before, "reconnected to find the primary again");
        let _ = server_error(&pool, "23505");
        let same = pid();
        let _ = server_error(&pool, "40001");
        assert_eq!(pid(), same, "a plain error keeps the session");
    }

    #[test]
    fn non_server_errors_are_classified() {
        assert!(!PgError::SchemaTooNew { found: 2, known: 1 }.is_retryable());
        assert!(!PgError::PoolClosed.is_retryable());
        assert!(!PgError::WorkerPanicked.is_retryable());
        assert!(!PgError::Unexpected("x".into()).is_retryable());
    }
}

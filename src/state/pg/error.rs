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
pub(crate) enum PgError {
    /// The connection string does not parse.
    #[error("invalid PostgreSQL connection string: {0}")]
    BadUrl(#[source] postgres::Error),
    /// Connecting (or preparing a new session) failed.
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        /// The connection string, password redacted.
        url: String,
        /// The client's error.
        #[source]
        source: postgres::Error,
    },
    /// A statement failed on a live connection.
    #[error("PostgreSQL: {0}")]
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

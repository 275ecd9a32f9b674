//! Test support (unit and integration tests): a throw-away database per
//! test on the test server (`TRUC_TEST_PG_URL`, default the role that
//! `ops/ensure-postgres.sh` makes).
//!
//! Invariant: the database is dropped when the [`TestDb`] is, even when the
//! test panics, after its sessions are terminated. The admin work runs on a
//! fresh thread, so a `TestDb` may be made and dropped inside a tokio test.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Server used by the tests (a role that may create databases).
pub const DEFAULT_SERVER_URL: &str = "postgres://truc_test:truc_test@127.0.0.1:5432/postgres";

/// The test server's URL: `TRUC_TEST_PG_URL` or [`DEFAULT_SERVER_URL`].
pub fn server_url() -> String {
    std::env::var("TRUC_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A uniquely named, empty database, dropped on drop.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
    server: String,
}

/// Run `f` with an admin session on the server, on its own thread.
fn admin<T: Send + 'static>(
    server: &str,
    f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
) -> Result<T, String> {
    let server = server.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Config::from_str(&server)
            .and_then(|c| c.connect(postgres::NoTls))
            .map_err(|e| {
                format!(
                    "test server {}: {e}",
                    crate::core::config::redact_store_url(&server)
                )
            })?;
        f(&mut client).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "admin thread panicked".to_owned())?
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        let scheme_end = url.find("://").map_or(0, |i| i + 3);
        let (base, query) = match url.find('?') {
            Some(q) => (&url[..q], &url[q..]),
            None => (url, ""),
        };
        let base = match base[scheme_end..].find('/') {
            Some(slash) => &base[..scheme_end + slash],
            None => base,
        };
        format!("{base}/{db}{query}")
    } else {
        format!("{url} dbname={db}")
    }
}

impl TestDb {
    /// Create the database on the test server.
    ///
    /// # Panics
    /// If the server cannot be reached or refuses (a test failure).
    pub fn new() -> TestDb {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "truc_t{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let server = server_url();
        let sql = format!("CREATE DATABASE \"{name}\"");
        if let Err(e) = admin(&server, move |c| c.batch_execute(&sql)) {
            panic!("cannot create test database {name}: {e} (run ops/ensure-postgres.sh)");
        }
        let url = with_database(&server, &name);
        TestDb { name, url, server }
    }

    /// The database's connection string.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Default for TestDb {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let result = admin(&self.server, move |c| {
            let drop_sql = format!("DROP DATABASE IF EXISTS \"{name}\"");
            let mut last = None;
            // A pool may reconnect between terminate and drop: try a few times.
            for _ in 0..5 {
                c.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&name],
                )?;
                match c.batch_execute(&drop_sql) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            match last {
                Some(e) => Err(e),
                None => Ok(()),
            }
        });
        if let Err(e) = result {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// A pool of `threads` sessions on `db`, schema migrated.
///
/// # Panics
/// If connecting or migrating fails (a test failure).
#[cfg(test)]
pub(crate) fn migrated_pool(db: &TestDb, threads: usize) -> super::PgPool {
    let pool = super::PgPool::connect(db.url(), threads).expect("connect to the test database");
    pool.migrate().expect("migrate the test database");
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_both_syntaxes() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            with_database("host=h user=u dbname=postgres", "x"),
            "host=h user=u dbname=postgres dbname=x"
        );
    }

    #[test]
    fn test_db_exists_until_dropped() {
        let db = TestDb::new();
        let name = db.name().to_owned();
        let exists = |name: String| {
            admin(&server_url(), move |c| {
                Ok(
                    c.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])?
                        .is_some(),
                )
            })
            .expect("server")
        };
        assert!(exists(name.clone()));
        let mut c = postgres::Client::connect(db.url(), postgres::NoTls).expect("connect");
        assert_eq!(
            c.query_one("SELECT current_database()", &[])
                .expect("query")
                .get::<_, String>(0),
            name
        );
        drop(db);
        assert!(!exists(name));
        assert!(c.simple_query("SELECT 1").is_err(), "session terminated");
    }
}

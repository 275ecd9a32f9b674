//! Web console login sessions, kept in the store's `meta` tree so that any
//! instance sharing the store serves a logged-in operator.
//!
//! Invariants: the session token (256 random bits) is never stored, only
//! its SHA-256, which is the record's key; a session ends at its idle
//! timeout, at its absolute lifetime, at logout, and whenever its account
//! is disabled or its password set after the session began (checked by the
//! caller against [`crate::state::accounts::Account`]); every session
//! carries its own CSRF token.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::codec;
use crate::state::keys::Key;
use crate::state::store::{Store, StoreError};

/// A console session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// The account logged in.
    pub account: String,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// Began at, ms.
    pub created_ms: i64,
    /// Last seen at, ms (refreshed at most once a minute).
    pub seen_ms: i64,
}

/// How long sessions last.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Ends after this long without a request, ms.
    pub idle_ms: i64,
    /// Ends this long after login whatever happens, ms.
    pub absolute_ms: i64,
}

impl Default for Lifetimes {
    /// 30 minutes idle, 12 hours in all.
    fn default() -> Self {
        Self {
            idle_ms: 30 * 60_000,
            absolute_ms: 12 * 3_600_000,
        }
    }
}

/// How often a session's last-seen time is written (at most; a quarter of
/// the idle timeout when that is shorter).
const TOUCH_EVERY_MS: i64 = 60_000;

fn key(token: &str) -> Vec<u8> {
    Key::new()
        .str("console-login")
        .str(&hex::encode(Sha256::digest(token.as_bytes())))
        .into_bytes()
}

fn prefix() -> Vec<u8> {
    Key::new().str("console-login").prefix()
}

fn failures_key(name: &str) -> Vec<u8> {
    Key::new()
        .str("console-login-failures")
        .str(name)
        .into_bytes()
}

/// How long failed logins are remembered after the last one (a lock lasts
/// as long as it is set for).
pub const FAILURES_KEPT_MS: i64 = 3_600_000;

/// Failed logins in a row of one account name, shared by every instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// Failures since the last success.
    pub count: u32,
    /// Locked until, ms (0: not locked).
    pub until_ms: i64,
    /// The last failure, ms.
    pub last_ms: i64,
}

/// The console sessions of a store; cheap to clone; blocking.
#[derive(Clone)]
pub struct Logins {
    store: Store,
    life: Lifetimes,
}

impl Logins {
    /// The sessions in `store`, lasting `life`.
    pub fn new(store: Store, life: Lifetimes) -> Self {
        Self { store, life }
    }

    /// A new session of `account`: its token (for the cookie) and record.
    pub fn begin(&self, account: &str, now_ms: i64) -> Result<(String, Login), StoreError> {
        self.sweep(now_ms)?;
        let token = hex::encode(rand::random::<[u8; 32]>());
        let login = Login {
            account: account.to_owned(),
            csrf: hex::encode(rand::random::<[u8; 32]>()),
            created_ms: now_ms,
            seen_ms: now_ms,
        };
        self.store
            .meta()
            .insert(key(&token), codec::encode(&login)?)?;
        self.store.flush()?;
        Ok((token, login))
    }

    fn live(&self, l: &Login, now_ms: i64) -> bool {
        now_ms < l.seen_ms + self.life.idle_ms && now_ms < l.created_ms + self.life.absolute_ms
    }

    /// The live session of `token`, its last-seen time refreshed; an
    /// ended one is deleted.
    pub fn get(&self, token: &str, now_ms: i64) -> Result<Option<Login>, StoreError> {
        if token.len() != 64 {
            return Ok(None);
        }
        let k = key(token);
        let Some(v) = self.store.meta().get(&k)? else {
            return Ok(None);
        };
        let mut login: Login = codec::decode(&v)?;
        if !self.live(&login, now_ms) {
            self.store.meta().remove(&k)?;
            return Ok(None);
        }
        if now_ms - login.seen_ms >= TOUCH_EVERY_MS.min(self.life.idle_ms / 4) {
            login.seen_ms = now_ms;
            self.store.meta().put(&k, codec::encode(&login)?)?;
        }
        Ok(Some(login))
    }

    /// Ends the session of `token`.
    pub fn end(&self, token: &str) -> Result<(), StoreError> {
        self.store.meta().remove(key(token))?;
        self.store.flush()
    }

    /// The failed logins of account name `name`.
    pub fn failures(&self, name: &str) -> Result<Failures, StoreError> {
        Ok(match self.store.meta().get(failures_key(name))? {
            Some(v) => codec::decode(&v)?,
            None => Failures::default(),
        })
    }

    /// Counts a failed login of `name` at `now`, locked until what
    /// `lock_until(count, now)` says; the record after it.
    pub fn failed(
        &self,
        name: &str,
        now_ms: i64,
        lock_until: impl Fn(u32, i64) -> i64,
    ) -> Result<Failures, StoreError> {
        let mut after = Failures::default();
        self.store
            .meta()
            .fetch_and_update(failures_key(name), |old| {
                let mut f: Failures = old.and_then(|v| codec::decode(v).ok()).unwrap_or_default();
                f.count += 1;
                f.last_ms = now_ms;
                f.until_ms = lock_until(f.count, now_ms);
                after = f;
                codec::encode(&f).ok()
            })?;
        Ok(after)
    }

    /// Forgets `name`'s failed logins (it logged in).
    pub fn succeeded(&self, name: &str) -> Result<(), StoreError> {
        self.store.meta().remove(failures_key(name))?;
        Ok(())
    }

    /// Deletes every ended session, and failed-login counts of names
    /// neither locked nor failing for [`FAILURES_KEPT_MS`].
    pub fn sweep(&self, now_ms: i64) -> Result<usize, StoreError> {
        let mut dead = Vec::new();
        for item in self.store.meta().scan_prefix(prefix()) {
            let (k, v) = item?;
            match codec::decode::<Login>(&v) {
                Ok(l) if self.live(&l, now_ms) => {}
                _ => dead.push(k),
            }
        }
        let failures = Key::new().str("console-login-failures").prefix();
        for item in self.store.meta().scan_prefix(failures) {
            let (k, v) = item?;
            match codec::decode::<Failures>(&v) {
                Ok(f) if f.until_ms > now_ms || now_ms - f.last_ms < FAILURES_KEPT_MS => {}
                _ => dead.push(k),
            }
        }
        for k in &dead {
            self.store.meta().remove(k)?;
        }
        Ok(dead.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_when_idle_at_their_lifetime_and_at_logout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let life = Lifetimes {
            idle_ms: 1_000,
            absolute_ms: 10_000,
        };
        let logins = Logins::new(store.clone(), life);
        let (t, l) = logins.begin("lan", 0).unwrap();
        assert_eq!(t.len(), 64);
        assert_ne!(l.csrf, t);
        // The token itself is nowhere in the store.
        for item in store.meta().iter() {
            let (k, v) = item.unwrap();
            assert!(!hex::encode(&k).contains(&hex::encode(&t)));
            assert!(!String::from_utf8_lossy(&k).contains(&t));
            assert!(!String::from_utf8_lossy(&v).contains(&t));
        }
        assert_eq!(logins.get(&t, 500).unwrap().unwrap().account, "lan");
        assert!(logins.get("x".repeat(64).as_str(), 500).unwrap().is_none());
        // Used within the idle time, it lives on, up to its lifetime.
        let mut at = 500;
        while at < 9_500 {
            at += 900;
            let seen = logins.get(&t, at).unwrap();
            assert!(seen.is_some() == (at < 10_000), "at {at}");
        }
        assert!(logins.get(&t, 10_000).unwrap().is_none());
        // Idle too long.
        let (t2, _) = logins.begin("mai", 20_000).unwrap();
        assert!(logins.get(&t2, 21_000).unwrap().is_none());
        // Logout.
        let (t3, _) = logins.begin("lan", 30_000).unwrap();
        logins.end(&t3).unwrap();
        assert!(logins.get(&t3, 30_001).unwrap().is_none());
        // The sweep removes what ended.
        logins.begin("an", 40_000).unwrap();
        logins.begin("an", 40_000).unwrap();
        assert_eq!(logins.sweep(50_000).unwrap(), 2);
    }
}

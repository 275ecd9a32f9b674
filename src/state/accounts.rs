//! Named operator accounts: role, the agency an `agency` account belongs to,
//! an argon2id password hash, and API tokens, kept in the store's `meta`
//! tree so every instance sharing the store sees the same accounts.
//!
//! Invariants: a password is stored only as an argon2id PHC string, and an
//! API token only as the SHA-256 of its secret part (tokens are 256 random
//! bits, so a fast hash is enough and checking one costs no argon2 run); a
//! disabled account neither logs in nor authenticates with a token, and
//! its tokens stay dead until it is enabled and issued new ones
//! ([`AccountBook::set_enabled`] drops them); an `agency` account always
//! names its agency and no other role does; a failed login costs one
//! argon2 verification whether or not the account exists.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::core::code::AgencyCode;
use crate::core::role::Role;
use crate::state::codec;
use crate::state::keys::Key;
use crate::state::store::{Store, StoreError};

/// Fewest characters of a password.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Most bytes of a password (argon2 takes any length; this bounds the work
/// an anonymous login can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The prefix of every account API token.
pub const TOKEN_PREFIX: &str = "truc1.";

/// Account errors.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The name is not 2–64 of `a-z 0-9 . _ -`, starting with a letter or digit.
    #[error("account name {0:?} must be 2-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit")]
    BadName(String),
    /// The password is too short or too long.
    #[error("a password must have at least {MIN_PASSWORD_CHARS} characters and at most {MAX_PASSWORD_BYTES} bytes")]
    BadPassword,
    /// An `agency` account without an agency, or another role with one.
    #[error("{0}")]
    BadAgency(String),
    /// The name is taken.
    #[error("account {0} exists")]
    Exists(String),
    /// No such account.
    #[error("no account {0}")]
    NotFound(String),
    /// Wrong name or password, or a disabled account (one answer for all).
    #[error("wrong account name or password")]
    BadLogin,
    /// The password hash could not be made.
    #[error("password hash: {0}")]
    Hash(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AccountError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::BadName(_)
            | Self::BadPassword
            | Self::BadAgency(_)
            | Self::Exists(_)
            | Self::NotFound(_)
            | Self::BadLogin
            | Self::Hash(_) => false,
        }
    }
}

impl From<codec::CodecError> for AccountError {
    fn from(e: codec::CodecError) -> Self {
        Self::Store(e.into())
    }
}

/// One API token of an account (its secret is never kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (the token's middle part).
    pub id: String,
    /// SHA-256 of the secret part.
    pub hash: [u8; 32],
    /// What the holder said it is for.
    pub label: String,
    /// Issued at, ms since the epoch.
    pub created_ms: i64,
}

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The agency of an `agency` account.
    pub agency: Option<AgencyCode>,
    /// argon2id PHC string.
    pub password: String,
    /// Whether it may log in and use its tokens.
    pub enabled: bool,
    /// Created at, ms.
    pub created_ms: i64,
    /// Password last set at, ms.
    pub password_set_ms: i64,
    /// Its API tokens.
    pub tokens: Vec<TokenRecord>,
}

fn key(name: &str) -> Vec<u8> {
    Key::new().str("account").str(name).into_bytes()
}

fn prefix() -> Vec<u8> {
    Key::new().str("account").prefix()
}

fn token_key(id: &str) -> Vec<u8> {
    Key::new().str("account-token").str(id).into_bytes()
}

/// Whether `name` is a valid account name.
pub fn is_name(name: &str) -> bool {
    let b = name.as_bytes();
    (2..=64).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

fn check_password(pw: &str) -> Result<(), AccountError> {
    if pw.chars().count() < MIN_PASSWORD_CHARS || pw.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::BadPassword);
    }
    Ok(())
}

/// The argon2id PHC string of `pw` (OWASP's parameters: 19 MiB, 2 passes).
fn hash_password(pw: &str) -> Result<String, AccountError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| AccountError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

fn verify_password(phc: &str, pw: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// A hash no password matches, verified against when the account does not
/// exist so that a wrong name costs what a wrong password costs.
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY
        .get_or_init(|| hash_password(&hex::encode(rand::random::<[u8; 32]>())).unwrap_or_default())
}

/// The accounts in a store; cheap to clone. Every method blocks on the
/// store (and the password methods on argon2): call them off the async
/// threads.
#[derive(Clone)]
pub struct AccountBook {
    store: Store,
}

impl AccountBook {
    /// The accounts of `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Account `name`, if it exists.
    pub fn get(&self, name: &str) -> Result<Option<Account>, AccountError> {
        if !is_name(name) {
            return Ok(None);
        }
        Ok(match self.store.meta().get(key(name))? {
            None => None,
            Some(v) => Some(codec::decode(&v)?),
        })
    }

    /// Every account, by name.
    pub fn list(&self) -> Result<Vec<Account>, AccountError> {
        let mut out = Vec::new();
        for item in self.store.meta().scan_prefix(prefix()) {
            let (_, v) = item?;
            out.push(codec::decode(&v)?);
        }
        Ok(out)
    }

    /// A new enabled account.
    pub fn add(
        &self,
        name: &str,
        role: Role,
        agency: Option<AgencyCode>,
        password: &str,
        now_ms: i64,
    ) -> Result<Account, AccountError> {
        if !is_name(name) {
            return Err(AccountError::BadName(name.to_owned()));
        }
        match (role, &agency) {
            (Role::Agency, None) => {
                return Err(AccountError::BadAgency(
                    "an agency account needs its agency's code".into(),
                ))
            }
            (Role::Admin | Role::Operator | Role::Auditor, Some(_)) => {
                return Err(AccountError::BadAgency(format!(
                    "only an agency account names an agency, not {role}"
                )))
            }
            _ => {}
        }
        check_password(password)?;
        let account = Account {
            name: name.to_owned(),
            role,
            agency,
            password: hash_password(password)?,
            enabled: true,
            created_ms: now_ms,
            password_set_ms: now_ms,
            tokens: Vec::new(),
        };
        let v = codec::encode(&account)?;
        match self
            .store
            .meta()
            .compare_and_swap(key(name), None, Some(&v))?
        {
            Ok(()) => {}
            Err(_) => return Err(AccountError::Exists(name.to_owned())),
        }
        self.store.flush()?;
        Ok(account)
    }

    /// Applies `f` to account `name` atomically and makes it durable.
    fn update(&self, name: &str, mut f: impl FnMut(&mut Account)) -> Result<Account, AccountError> {
        let mut current = self
            .get(name)?
            .ok_or_else(|| AccountError::NotFound(name.to_owned()))?;
        loop {
            let old = codec::encode(&current)?;
            let mut next = current.clone();
            f(&mut next);
            let new = codec::encode(&next)?;
            match self
                .store
                .meta()
                .compare_and_swap(key(name), Some(&old), Some(&new))?
            {
                Ok(()) => {
                    self.store.flush()?;
                    return Ok(next);
                }
                Err(None) => return Err(AccountError::NotFound(name.to_owned())),
                Err(Some(v)) => current = codec::decode(&v)?,
            }
        }
    }

    /// Enables or disables account `name`. Either way its API tokens are
    /// dropped: a disabled account's holders must be issued new ones.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> Result<Account, AccountError> {
        // The tokens the swap that took effect dropped (the closure may run
        // more than once).
        let mut dropped = Vec::new();
        let after = self.update(name, |a| {
            a.enabled = enabled;
            dropped = if enabled {
                Vec::new()
            } else {
                std::mem::take(&mut a.tokens)
            };
        })?;
        if !dropped.is_empty() {
            for t in &dropped {
                self.store.meta().remove(token_key(&t.id))?;
            }
            self.store.flush()?;
        }
        Ok(after)
    }

    /// Sets account `name`'s password.
    pub fn set_password(
        &self,
        name: &str,
        password: &str,
        now_ms: i64,
    ) -> Result<Account, AccountError> {
        check_password(password)?;
        let phc = hash_password(password)?;
        self.update(name, |a| {
            a.password = phc.clone();
            a.password_set_ms = now_ms;
        })
    }

    /// The enabled account `name` if `password` is its password.
    pub fn login(&self, name: &str, password: &str) -> Result<Account, AccountError> {
        let account = if password.len() > MAX_PASSWORD_BYTES {
            None
        } else {
            self.get(name)?
        };
        let ok = match &account {
            Some(a) => verify_password(&a.password, password) && a.enabled,
            None => {
                let _ = verify_password(decoy(), password);
                false
            }
        };
        match account {
            Some(a) if ok => Ok(a),
            _ => Err(AccountError::BadLogin),
        }
    }

    /// A new API token for the enabled account `name`, returned once:
    /// `truc1.<id>.<secret>`.
    pub fn issue_token(
        &self,
        name: &str,
        label: &str,
        now_ms: i64,
    ) -> Result<String, AccountError> {
        let id = hex::encode(rand::random::<[u8; 8]>());
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let record = TokenRecord {
            id: id.clone(),
            hash: Sha256::digest(secret.as_bytes()).into(),
            label: label.chars().take(100).collect(),
            created_ms: now_ms,
        };
        let mut disabled = false;
        self.update(name, |a| {
            disabled = !a.enabled;
            if a.enabled {
                a.tokens.push(record.clone());
            }
        })?;
        if disabled {
            return Err(AccountError::BadLogin);
        }
        self.store.meta().insert(token_key(&id), name.as_bytes())?;
        self.store.flush()?;
        Ok(format!("{TOKEN_PREFIX}{id}.{secret}"))
    }

    /// The enabled account holding API token `token`, if any.
    pub fn by_token(&self, token: &str) -> Result<Option<Account>, AccountError> {
        let Some((id, secret)) = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|t| t.split_once('.'))
        else {
            return Ok(None);
        };
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let Some(name) = self.store.meta().get(token_key(id))? else {
            return Ok(None);
        };
        let Some(account) = self.get(&String::from_utf8_lossy(&name))? else {
            return Ok(None);
        };
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let held = account
            .tokens
            .iter()
            .any(|t| t.id == id && bool::from(t.hash.ct_eq(&hash)));
        Ok((held && account.enabled).then_some(account))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> (tempfile::TempDir, AccountBook) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, AccountBook::new(store))
    }

    #[test]
    fn names_and_roles_are_checked() {
        let (_d, b) = book();
        for bad in ["", "a", "Admin", "-x", "a b", &"x".repeat(65), "ngân"] {
            assert!(matches!(
                b.add(bad, Role::Admin, None, "a long password", 1),
                Err(AccountError::BadName(_))
            ));
        }
        assert!(matches!(
            b.add("ops", Role::Operator, None, "short", 1),
            Err(AccountError::BadPassword)
        ));
        assert!(matches!(
            b.add("h37", Role::Agency, None, "a long password", 1),
            Err(AccountError::BadAgency(_))
        ));
        let code = AgencyCode::parse("000.00.31.H37").unwrap();
        assert!(matches!(
            b.add(
                "ops",
                Role::Operator,
                Some(code.clone()),
                "a long password",
                1
            ),
            Err(AccountError::BadAgency(_))
        ));
        let a = b
            .add("h37", Role::Agency, Some(code), "a long password", 1)
            .unwrap();
        assert!(a.password.starts_with("$argon2id$"));
        assert!(!a.password.contains("a long password"));
        assert!(matches!(
            b.add("h37", Role::Admin, None, "another long one", 2),
            Err(AccountError::Exists(_))
        ));
        assert_eq!(b.list().unwrap().len(), 1);
    }

    #[test]
    fn login_password_change_and_disable() {
        let (_d, b) = book();
        b.add("lan", Role::Operator, None, "correct horse battery", 1)
            .unwrap();
        assert_eq!(
            b.login("lan", "correct horse battery").unwrap().role,
            Role::Operator
        );
        assert!(matches!(
            b.login("lan", "wrong horse battery"),
            Err(AccountError::BadLogin)
        ));
        assert!(matches!(
            b.login("nobody", "correct horse battery"),
            Err(AccountError::BadLogin)
        ));
        b.set_password("lan", "staple battery horse", 2).unwrap();
        assert!(b.login("lan", "correct horse battery").is_err());
        assert!(b.login("lan", "staple battery horse").is_ok());
        b.set_enabled("lan", false).unwrap();
        assert!(matches!(
            b.login("lan", "staple battery horse"),
            Err(AccountError::BadLogin)
        ));
        assert!(matches!(
            b.set_password("nobody", "staple battery horse", 3),
            Err(AccountError::NotFound(_))
        ));
    }

    #[test]
    fn tokens_authenticate_until_the_account_is_disabled() {
        let (_d, b) = book();
        b.add("an", Role::Auditor, None, "correct horse battery", 1)
            .unwrap();
        let t = b.issue_token("an", "laptop", 5).unwrap();
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(b.by_token(&t).unwrap().unwrap().name, "an");
        // A changed secret, an unknown id and junk open nothing.
        let mut forged = t.clone();
        forged.pop();
        forged.push(if t.ends_with('0') { '1' } else { '0' });
        assert!(b.by_token(&forged).unwrap().is_none());
        assert!(b.by_token("truc1.0000000000000000.abc").unwrap().is_none());
        assert!(b.by_token("junk").unwrap().is_none());
        // Stored: the hash, never the secret.
        let stored = b.get("an").unwrap().unwrap();
        assert_eq!(stored.tokens.len(), 1);
        let secret = t.rsplit('.').next().unwrap();
        assert!(!hex::encode(codec::encode(&stored).unwrap()).contains(&hex::encode(secret)));
        b.set_enabled("an", false).unwrap();
        assert!(b.by_token(&t).unwrap().is_none());
        assert!(matches!(
            b.issue_token("an", "again", 6),
            Err(AccountError::BadLogin)
        ));
        // Enabled again: the old token stays dead, a new one works.
        b.set_enabled("an", true).unwrap();
        assert!(b.by_token(&t).unwrap().is_none());
        let t2 = b.issue_token("an", "again", 7).unwrap();
        assert!(b.by_token(&t2).unwrap().is_some());
    }
}

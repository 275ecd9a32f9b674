//! The directory of agencies: codes, names, access keys, secrets and RSA
//! public keys, persisted in sled and cached in memory for the ingress path.
//!
//! Invariants: an access key belongs to exactly one agency; the cache is
//! updated in the same call that writes sled, so lookups never see a key the
//! store does not hold. Secrets are returned once, by [`Registry::add`] and
//! [`Registry::rotate_key`]. Secrets are sealed with the master key before
//! they reach sled ([`crate::core::secrets`]); the cache holds them in the clear
//! for the ingress path. Plaintext secrets of older stores are sealed by
//! [`Registry::open`].
//!
//! Each agency also has a RabbitMQ user of its own, named after its code,
//! whose password is issued with the agency (and by
//! [`Registry::rotate_broker_password`]) and returned once; only its RabbitMQ
//! hash is stored, in the `broker_users` tree (a tree of its own, so the
//! stored [`Agency`] records keep decoding). Agencies registered before broker
//! passwords existed have no entry there until one is issued.
//!
//! The access key each agency **last authenticated with** is kept in the
//! `last_keys` tree (written, and flushed, only when it changes). The hub
//! signs what it sends an agency with that key while it is still valid — so
//! an adapter that holds only the old secret during a rotation's grace period
//! can verify everything — and with the newest key otherwise
//! ([`Agency::signing_key`]). A rotation records the key in use before it
//! when nothing is recorded yet.
//!
//! Several instances sharing one store each hold a cache: every write that
//! changes what the cache holds bumps the `meta` counter `registry_version`
//! (under the cache lock, before the write is flushed), and
//! [`Registry::refresh`] (called every [`REFRESH_EVERY`] by `truc serve`)
//! reloads the cache when the counter moved past what this instance last
//! loaded or wrote itself. A reload swaps the cache only if the counter did
//! not move while it loaded, so a cache never goes back to older contents
//! than a write this instance made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::Rng;
use rsa::RsaPublicKey;
use serde::{Deserialize, Serialize};

use crate::core::auth::{parse_public_key, AuthError};
use crate::core::broker_password;
use crate::core::code::AgencyCode;
use crate::core::secrets::{MasterKey, SecretsError};
use crate::core::time::now_ms;
use crate::state::codec;
use crate::state::keys::Key;
use crate::state::store::{Store, StoreError};

/// Where the time `code`'s gateway sessions were last revoked is kept (`meta`).
fn sessions_key(code: &AgencyCode) -> Vec<u8> {
    Key::new().str("sessions-revoked").code(code).into_bytes()
}

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The code is registered already.
    #[error("agency {0} is already registered")]
    Exists(AgencyCode),
    /// No such agency.
    #[error("agency {0} is not registered")]
    NotFound(AgencyCode),
    /// The name is empty or too long.
    #[error("agency name must be 1-300 characters without control characters")]
    BadName,
    /// The RSA public key does not parse.
    #[error(transparent)]
    BadKey(#[from] AuthError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored secret does not open with the master key.
    #[error("agency {code}: {source}")]
    Sealed {
        /// The agency.
        code: String,
        /// Why.
        source: SecretsError,
    },
    /// A row of an import is invalid; nothing was imported.
    #[error("row {row}: {problem}")]
    BadRow {
        /// 1-based row (the caller maps it to a file line).
        row: usize,
        /// What is wrong.
        problem: String,
    },
}

impl RegistryError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Exists(_) | Self::NotFound(_) | Self::BadName | Self::BadKey(_) => false,
            Self::Store(e) => e.is_retryable(),
            Self::Sealed { source, .. } => source.is_retryable(),
            Self::BadRow { .. } => false,
        }
    }
}

impl From<sled::Error> for RegistryError {
    fn from(e: sled::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<codec::CodecError> for RegistryError {
    fn from(e: codec::CodecError) -> Self {
        Self::Store(e.into())
    }
}

/// One access key of an agency.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessKey {
    /// The public identifier sent as `lgsp-key`.
    pub access_key: String,
    /// The shared HMAC secret.
    pub secret: String,
    /// When it was issued (ms).
    pub created_at_ms: i64,
    /// When it stops being accepted (ms), if ever.
    pub expires_at_ms: Option<i64>,
}

/// An agency as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Agency {
    /// Its code.
    pub code: AgencyCode,
    /// Its name.
    pub name: String,
    /// False when an operator disabled it.
    pub enabled: bool,
    /// Registration time (ms).
    pub created_at_ms: i64,
    /// PEM public key for `rsa-sha256`.
    pub public_key_pem: Option<String>,
    /// Its keys, newest last. The newest signs what the hub sends it.
    pub keys: Vec<AccessKey>,
}

impl Agency {
    /// The newest key's secret.
    pub fn current_secret(&self) -> &str {
        self.keys.last().map(|k| k.secret.as_str()).unwrap_or("")
    }

    /// The key the hub signs with at `now_ms`: `last_used` (the access key
    /// the agency last authenticated with) while it is one of its keys and
    /// has not expired; otherwise the newest key. `None` only for an agency
    /// without keys.
    pub fn signing_key(&self, last_used: Option<&str>, now_ms: i64) -> Option<&AccessKey> {
        last_used
            .and_then(|used| self.keys.iter().find(|k| k.access_key == used))
            .filter(|k| k.expires_at_ms.is_none_or(|t| t > now_ms))
            .or_else(|| self.keys.last())
    }
}

/// What the ingress path needs about an agency, with its parsed RSA key.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stored record.
    pub agency: Agency,
    /// Parsed public key.
    pub public_key: Option<RsaPublicKey>,
}

/// What [`Registry::add`] returns: the secret and the broker password,
/// shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    /// The agency code.
    pub code: AgencyCode,
    /// Its name.
    pub name: String,
    /// The access key.
    pub access_key: String,
    /// The secret.
    pub secret: String,
    /// Its RabbitMQ user name (the code); empty when this result did not
    /// issue a broker password (a key rotation).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub broker_user: String,
    /// The password of that user; empty as `broker_user`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub broker_password: String,
}

/// The RabbitMQ user of an agency as stored: the password's hash only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BrokerUser {
    /// `rabbit_password_hashing_sha256` hash of the password.
    pub password_hash: String,
    /// When the password was issued (ms).
    pub issued_at_ms: i64,
}

/// A broker password just issued, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerIssued {
    /// The agency code.
    pub code: AgencyCode,
    /// Its RabbitMQ user name (the code).
    pub broker_user: String,
    /// The new password.
    pub broker_password: String,
}

#[derive(Default)]
struct Cache {
    by_code: HashMap<AgencyCode, Arc<Entry>>,
    by_key: HashMap<String, AgencyCode>,
    /// The access key each agency last authenticated with (`last_keys`).
    last_used: HashMap<AgencyCode, String>,
    /// When each agency's gateway sessions were last revoked (`meta`).
    sessions_revoked: HashMap<AgencyCode, i64>,
}

/// The agency directory.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    cache: Arc<RwLock<Cache>>,
    master: MasterKey,
    /// The `registry_version` the cache reflects.
    seen: Arc<AtomicU64>,
}

/// How often `truc serve` calls [`Registry::refresh`].
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);

/// The `meta` key of the registry's change counter (u64, big-endian).
const VERSION_KEY: &[u8] = b"registry_version";

fn read_version(store: &Store) -> Result<u64, RegistryError> {
    Ok(store
        .meta()
        .get(VERSION_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes))
}

const KEY_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

fn new_access_key() -> String {
    let mut rng = rand::thread_rng();
    let tail: String = (0..10)
        .map(|_| KEY_ALPHABET[rng.gen_range(0..KEY_ALPHABET.len())] as char)
        .collect();
    format!("AK{tail}")
}

fn new_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::thread_rng().gen();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A copy of `agency` with every secret sealed, for sled.
fn sealed(master: &MasterKey, agency: &Agency) -> Agency {
    let mut a = agency.clone();
    for k in &mut a.keys {
        k.secret = master.seal(&k.access_key, &k.secret);
    }
    a
}

fn entry(agency: Agency) -> Result<Entry, RegistryError> {
    let public_key = agency
        .public_key_pem
        .as_deref()
        .map(parse_public_key)
        .transpose()?;
    Ok(Entry { agency, public_key })
}

fn check_name(name: &str) -> Result<&str, RegistryError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 300 || name.chars().any(char::is_control) {
        return Err(RegistryError::BadName);
    }
    Ok(name)
}

impl Registry {
    /// The master key the secrets are sealed with (for keys derived from
    /// it, e.g. the backup key).
    pub fn master_key(&self) -> &MasterKey {
        &self.master
    }

    /// Loads every agency from `store`, opening secrets with `master`;
    /// plaintext secrets left by older versions are sealed and rewritten.
    pub fn open(store: Store, master: MasterKey) -> Result<Self, RegistryError> {
        let version = read_version(&store)?;
        let (cache, migrated) = Self::load(&store, &master, true)?;
        if migrated > 0 {
            store.flush()?;
            tracing::info!(
                agencies = migrated,
                "plaintext secrets sealed with the master key"
            );
        }
        Ok(Self {
            store,
            cache: Arc::new(RwLock::new(cache)),
            master,
            seen: Arc::new(AtomicU64::new(version)),
        })
    }

    /// Reads every agency and last-used key into a fresh cache; with
    /// `migrate`, plaintext secrets are sealed and rewritten (unflushed;
    /// returns how many agencies).
    fn load(
        store: &Store,
        master: &MasterKey,
        migrate: bool,
    ) -> Result<(Cache, usize), RegistryError> {
        let mut cache = Cache::default();
        let mut migrated = 0usize;
        for item in store.agencies().iter() {
            let (k, v) = item?;
            let mut agency: Agency = codec::decode(&v)?;
            let mut plain = false;
            for key in &mut agency.keys {
                if MasterKey::is_sealed(&key.secret) {
                    key.secret = master
                        .open(&key.access_key, &key.secret)
                        .map_err(|source| RegistryError::Sealed {
                            code: agency.code.to_string(),
                            source,
                        })?;
                } else {
                    plain = true;
                }
            }
            if plain && migrate {
                store
                    .agencies()
                    .insert(k, codec::encode(&sealed(master, &agency))?)?;
                migrated += 1;
            }
            for k in &agency.keys {
                cache
                    .by_key
                    .insert(k.access_key.clone(), agency.code.clone());
            }
            let e = entry(agency)?;
            cache.by_code.insert(e.agency.code.clone(), Arc::new(e));
        }
        for item in store.last_keys().iter() {
            let (k, v) = item?;
            let code = String::from_utf8_lossy(&k);
            let Ok(code) = AgencyCode::parse(&code) else {
                continue;
            };
            cache
                .last_used
                .insert(code, String::from_utf8_lossy(&v).into_owned());
        }
        let p = Key::new().str("sessions-revoked").prefix();
        for item in store.meta().scan_prefix(&p) {
            let (k, v) = item?;
            let code = crate::state::keys::Fields::after(&k, &p).and_then(|mut f| f.code());
            let at = <[u8; 8]>::try_from(v.as_slice())
                .ok()
                .map(i64::from_be_bytes);
            if let (Some(code), Some(at)) = (code, at) {
                cache.sessions_revoked.insert(code, at);
            }
        }
        Ok((cache, migrated))
    }

    /// Reloads the cache when another instance changed the registry since
    /// this one last loaded or wrote it; returns whether it reloaded. A
    /// change made while it loads leaves the cache as it was, for the next
    /// call.
    pub fn refresh(&self) -> Result<bool, RegistryError> {
        let version = read_version(&self.store)?;
        if version == self.seen.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let (fresh, _) = Self::load(&self.store, &self.master, false)?;
        let mut cache = self.cache_mut();
        // Writes of this instance bump the counter under this lock: equal
        // means nothing was written since `fresh` was read.
        if read_version(&self.store)? != version {
            return Ok(false);
        }
        *cache = fresh;
        self.seen.store(version, Ordering::SeqCst);
        Ok(true)
    }

    /// Bumps `registry_version` after a write to the cached records; the
    /// caller holds the cache lock and flushes after. When nobody else
    /// changed the registry since this cache was loaded, the cache stays
    /// current with the new count.
    fn bump(&self) -> Result<(), StoreError> {
        let before = self.store.meta().fetch_and_update(VERSION_KEY, |old| {
            let n = old
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map_or(0, u64::from_be_bytes);
            Some(n.wrapping_add(1).to_be_bytes().to_vec())
        })?;
        let before = before
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let _ = self.seen.compare_exchange(
            before,
            before.wrapping_add(1),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        Ok(())
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn cache_mut(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an agency and issues its first key.
    pub fn add(
        &self,
        code: AgencyCode,
        name: &str,
        public_key_pem: Option<String>,
    ) -> Result<Issued, RegistryError> {
        let issued = self.add_unflushed(code, name, public_key_pem)?;
        self.store.flush()?;
        Ok(issued)
    }

    /// [`Registry::add`] without the flush (the caller flushes once for many).
    fn add_unflushed(
        &self,
        code: AgencyCode,
        name: &str,
        public_key_pem: Option<String>,
    ) -> Result<Issued, RegistryError> {
        let name = check_name(name)?;
        if let Some(pem) = &public_key_pem {
            parse_public_key(pem)?;
        }
        let key = AccessKey {
            access_key: new_access_key(),
            secret: new_secret(),
            created_at_ms: now_ms(),
            expires_at_ms: None,
        };
        let agency = Agency {
            code: code.clone(),
            name: name.to_owned(),
            enabled: true,
            created_at_ms: now_ms(),
            public_key_pem,
            keys: vec![key.clone()],
        };
        let mut cache = self.cache_mut();
        let inserted = self.store.agencies().compare_and_swap(
            code.as_str(),
            None as Option<&[u8]>,
            Some(&codec::encode(&sealed(&self.master, &agency))?),
        )?;
        if inserted.is_err() {
            return Err(RegistryError::Exists(code));
        }
        self.store
            .keys()
            .insert(key.access_key.as_bytes(), code.as_str().as_bytes())?;
        let broker = self.issue_broker_password(&code)?;
        cache.by_key.insert(key.access_key.clone(), code.clone());
        cache.by_code.insert(code.clone(), Arc::new(entry(agency)?));
        self.bump()?;
        Ok(Issued {
            code,
            name: name.to_owned(),
            access_key: key.access_key,
            secret: key.secret,
            broker_user: broker.broker_user,
            broker_password: broker.broker_password,
        })
    }

    /// Stores the hash of a fresh broker password for `code` (unflushed).
    fn issue_broker_password(&self, code: &AgencyCode) -> Result<BrokerIssued, RegistryError> {
        let password = broker_password::new_password();
        let user = BrokerUser {
            password_hash: broker_password::hash(&password),
            issued_at_ms: now_ms(),
        };
        self.store
            .broker_users()
            .insert(code.as_str(), codec::encode(&user)?)?;
        Ok(BrokerIssued {
            code: code.clone(),
            broker_user: code.to_string(),
            broker_password: password,
        })
    }

    /// Issues a new broker password for `code`, replacing the stored hash
    /// (also for an agency registered before broker passwords existed).
    pub fn rotate_broker_password(&self, code: &AgencyCode) -> Result<BrokerIssued, RegistryError> {
        // Held so that a concurrent removal cannot leave a hash behind.
        let cache = self.cache_mut();
        if !cache.by_code.contains_key(code) {
            return Err(RegistryError::NotFound(code.clone()));
        }
        let issued = self.issue_broker_password(code)?;
        self.store.flush()?;
        Ok(issued)
    }

    /// The stored broker user of `code`, if a password was ever issued.
    pub fn broker_user(&self, code: &AgencyCode) -> Result<Option<BrokerUser>, RegistryError> {
        match self.store.broker_users().get(code.as_str())? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// The agency with `code`.
    pub fn get(&self, code: &AgencyCode) -> Option<Arc<Entry>> {
        self.cache().by_code.get(code).cloned()
    }

    /// The agency owning `access_key` and that key, if it is still valid at `now_ms`.
    pub fn by_key(&self, access_key: &str, now_ms: i64) -> Option<(Arc<Entry>, AccessKey)> {
        let cache = self.cache();
        let code = cache.by_key.get(access_key)?;
        let entry = cache.by_code.get(code)?.clone();
        let key = entry
            .agency
            .keys
            .iter()
            .find(|k| k.access_key == access_key)?
            .clone();
        if key.expires_at_ms.is_some_and(|t| t <= now_ms) {
            return None;
        }
        Some((entry, key))
    }

    /// Records that `code` authenticated with `access_key` (one of its keys):
    /// written to `last_keys` and flushed only when it differs from the
    /// recorded one, so the ingress path pays nothing in the steady state.
    pub fn note_used(&self, code: &AgencyCode, access_key: &str) -> Result<(), StoreError> {
        if self.cache().last_used.get(code).map(String::as_str) == Some(access_key) {
            return Ok(());
        }
        let mut cache = self.cache_mut();
        if !cache.by_code.contains_key(code) {
            return Ok(());
        }
        self.store
            .last_keys()
            .insert(code.as_str(), access_key.as_bytes())?;
        self.bump()?;
        self.store.flush()?;
        cache.last_used.insert(code.clone(), access_key.to_owned());
        Ok(())
    }

    /// The access key `code` last authenticated with, if recorded.
    pub fn last_used(&self, code: &AgencyCode) -> Option<String> {
        self.cache().last_used.get(code).cloned()
    }

    /// The key the hub signs what it sends `code` with at `now_ms`
    /// ([`Agency::signing_key`] with the recorded last-used key).
    pub fn signing_key(&self, code: &AgencyCode, now_ms: i64) -> Option<AccessKey> {
        let cache = self.cache();
        let entry = cache.by_code.get(code)?;
        entry
            .agency
            .signing_key(cache.last_used.get(code).map(String::as_str), now_ms)
            .cloned()
    }

    /// Every agency, sorted by code.
    pub fn list(&self) -> Vec<Agency> {
        let mut all: Vec<Agency> = self
            .cache()
            .by_code
            .values()
            .map(|e| e.agency.clone())
            .collect();
        all.sort_by(|a, b| a.code.cmp(&b.code));
        all
    }

    /// Number of agencies.
    pub fn len(&self) -> usize {
        self.cache().by_code.len()
    }

    /// True when no agency is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `agency` (sealed) and refreshes the cache; the caller holds the cache lock.
    fn write(&self, cache: &mut Cache, agency: Agency) -> Result<Arc<Entry>, RegistryError> {
        self.store.agencies().insert(
            agency.code.as_str(),
            codec::encode(&sealed(&self.master, &agency))?,
        )?;
        self.bump()?;
        self.store.flush()?;
        let e = Arc::new(entry(agency)?);
        cache.by_code.insert(e.agency.code.clone(), e.clone());
        Ok(e)
    }

    /// Enables or disables `code`; returns the updated agency.
    pub fn set_enabled(&self, code: &AgencyCode, enabled: bool) -> Result<Agency, RegistryError> {
        let mut cache = self.cache_mut();
        let mut agency = cache
            .by_code
            .get(code)
            .ok_or_else(|| RegistryError::NotFound(code.clone()))?
            .agency
            .clone();
        agency.enabled = enabled;
        if !enabled {
            // Its gateway sessions end now, and stay ended if it is
            // enabled again; written before the change other instances
            // reload on.
            let now = now_ms();
            self.store
                .meta()
                .insert(sessions_key(code), now.to_be_bytes())?;
            cache.sessions_revoked.insert(code.clone(), now);
        }
        Ok(self.write(&mut cache, agency)?.agency.clone())
    }

    /// When the gateway sessions of `code` were last revoked (ms), if ever:
    /// at its last disabling. Sessions opened before stay ended when it is
    /// enabled again.
    pub fn sessions_revoked_at(&self, code: &AgencyCode) -> Option<i64> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .sessions_revoked
            .get(code)
            .copied()
    }

    /// Issues a new key for `code`; every older key still valid stays
    /// valid until `now + grace` (or its own earlier expiry). The broker
    /// password is not changed (the result's broker fields are empty).
    pub fn rotate_key(
        &self,
        code: &AgencyCode,
        grace: std::time::Duration,
    ) -> Result<(Issued, Agency), RegistryError> {
        let now = now_ms();
        let until = now.saturating_add(grace.as_millis() as i64);
        let mut cache = self.cache_mut();
        let mut agency = cache
            .by_code
            .get(code)
            .ok_or_else(|| RegistryError::NotFound(code.clone()))?
            .agency
            .clone();
        // The key in use so far, if the agency never authenticated since
        // last_keys existed: the adapter holds it, not the new one.
        let in_use = match cache.last_used.get(code) {
            Some(_) => None,
            None => agency.signing_key(None, now).map(|k| k.access_key.clone()),
        };
        for k in &mut agency.keys {
            k.expires_at_ms = Some(k.expires_at_ms.map_or(until, |t| t.min(until)));
        }
        let key = AccessKey {
            access_key: new_access_key(),
            secret: new_secret(),
            created_at_ms: now,
            expires_at_ms: None,
        };
        agency.keys.push(key.clone());
        self.store
            .keys()
            .insert(key.access_key.as_bytes(), code.as_str().as_bytes())?;
        cache.by_key.insert(key.access_key.clone(), code.clone());
        if let Some(used) = in_use {
            self.store
                .last_keys()
                .insert(code.as_str(), used.as_bytes())?;
            cache.last_used.insert(code.clone(), used);
        }
        // write() flushes, last_keys included.
        let agency = self.write(&mut cache, agency)?.agency.clone();
        Ok((
            Issued {
                code: code.clone(),
                name: agency.name.clone(),
                access_key: key.access_key,
                secret: key.secret,
                broker_user: String::new(),
                broker_password: String::new(),
            },
            agency,
        ))
    }

    /// Removes `code` and its keys; returns what was removed.
    pub fn remove(&self, code: &AgencyCode) -> Result<Agency, RegistryError> {
        let mut cache = self.cache_mut();
        let entry = cache
            .by_code
            .remove(code)
            .ok_or_else(|| RegistryError::NotFound(code.clone()))?;
        for k in &entry.agency.keys {
            cache.by_key.remove(&k.access_key);
            self.store.keys().remove(k.access_key.as_bytes())?;
        }
        self.store.agencies().remove(code.as_str())?;
        self.store.broker_users().remove(code.as_str())?;
        self.store.last_keys().remove(code.as_str())?;
        cache.last_used.remove(code);
        self.bump()?;
        self.store.flush()?;
        Ok(entry.agency.clone())
    }

    /// Checks rows `(code, name)` for an import without changing anything:
    /// the first problem is returned with its 1-based row.
    pub fn check_import(&self, rows: &[(String, String)]) -> Result<(), RegistryError> {
        let mut seen = std::collections::HashSet::new();
        for (i, (code, name)) in rows.iter().enumerate() {
            let bad = |problem: String| RegistryError::BadRow {
                row: i + 1,
                problem,
            };
            let c = AgencyCode::parse(code).map_err(|e| bad(format!("code {code:?}: {e}")))?;
            check_name(name).map_err(|e| bad(e.to_string()))?;
            if !seen.insert(c.clone()) {
                return Err(bad(format!("code {c} appears twice in the file")));
            }
            if self.get(&c).is_some() {
                return Err(bad(format!("agency {c} is already registered")));
            }
        }
        Ok(())
    }

    /// Registers every row after [`Registry::check_import`] passed for all of them.
    pub fn import(&self, rows: &[(String, String)]) -> Result<Vec<Issued>, RegistryError> {
        self.check_import(rows)?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, (code, name)) in rows.iter().enumerate() {
            let c = AgencyCode::parse(code).map_err(|e| RegistryError::BadRow {
                row: i + 1,
                problem: e.to_string(),
            })?;
            out.push(self.add_unflushed(c, name, None)?);
        }
        self.store.flush()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk() -> MasterKey {
        MasterKey::parse(&"5a".repeat(32)).unwrap()
    }

    #[test]
    fn secrets_are_sealed_on_disk_and_plaintext_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let code = AgencyCode::parse("H37.DN.001").unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A record as an older version wrote it: plaintext secret.
        let legacy = Agency {
            code: code.clone(),
            name: "Sở".into(),
            enabled: true,
            created_at_ms: 1,
            public_key_pem: None,
            keys: vec![AccessKey {
                access_key: "AKLEGACY0001".into(),
                secret: "plain-secret-xyz".into(),
                created_at_ms: 1,
                expires_at_ms: None,
            }],
        };
        store
            .agencies()
            .insert(code.as_str(), codec::encode(&legacy).unwrap())
            .unwrap();
        store.keys().insert("AKLEGACY0001", code.as_str()).unwrap();
        let reg = Registry::open(store.clone(), mk()).unwrap();
        let raw = store.agencies().get(code.as_str()).unwrap().unwrap();
        let on_disk: Agency = codec::decode(&raw).unwrap();
        assert!(MasterKey::is_sealed(&on_disk.keys[0].secret));
        assert!(!String::from_utf8_lossy(&raw).contains("plain-secret-xyz"));
        let (_, key) = reg.by_key("AKLEGACY0001", now_ms()).unwrap();
        assert_eq!(key.secret, "plain-secret-xyz");
        drop(reg);
        // Wrong master key: refused, not silently garbage.
        let wrong = MasterKey::parse(&"77".repeat(32)).unwrap();
        assert!(matches!(
            Registry::open(store.clone(), wrong),
            Err(RegistryError::Sealed { .. })
        ));
        let reg = Registry::open(store, mk()).unwrap();
        assert_eq!(
            reg.by_key("AKLEGACY0001", now_ms()).unwrap().1.secret,
            "plain-secret-xyz"
        );
    }

    #[test]
    fn lifecycle_rotate_disable_remove_import() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(Store::open(dir.path()).unwrap(), mk()).unwrap();
        let a = AgencyCode::parse("A1").unwrap();
        let first = reg.add(a.clone(), "A", None).unwrap();
        let (second, agency) = reg
            .rotate_key(&a, std::time::Duration::from_secs(3600))
            .unwrap();
        assert_eq!(agency.keys.len(), 2);
        let now = now_ms();
        assert!(reg.by_key(&first.access_key, now).is_some());
        assert!(reg.by_key(&first.access_key, now + 3_601_000).is_none());
        assert!(reg.by_key(&second.access_key, now + 3_601_000).is_some());
        assert_eq!(reg.get(&a).unwrap().agency.current_secret(), second.secret);
        assert!(!reg.set_enabled(&a, false).unwrap().enabled);
        assert!(!reg.get(&a).unwrap().agency.enabled);
        let rows = vec![
            ("B1".to_string(), "B".to_string()),
            ("bad code".to_string(), "C".to_string()),
        ];
        match reg.import(&rows) {
            Err(RegistryError::BadRow { row: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            reg.get(&AgencyCode::parse("B1").unwrap()).is_none(),
            "nothing imported"
        );
        let dup = vec![("B1".into(), "B".into()), ("B1".into(), "B again".into())];
        assert!(matches!(
            reg.import(&dup),
            Err(RegistryError::BadRow { row: 2, .. })
        ));
        let exists = vec![("A1".into(), "A".into())];
        assert!(matches!(
            reg.import(&exists),
            Err(RegistryError::BadRow { row: 1, .. })
        ));
        let issued = reg.import(&[("B1".into(), "B".into())]).unwrap();
        assert_eq!(issued.len(), 1);
        reg.remove(&a).unwrap();
        assert!(reg.get(&a).is_none());
        assert!(reg.by_key(&second.access_key, now).is_none());
        assert!(matches!(reg.remove(&a), Err(RegistryError::NotFound(_))));
        drop(reg);
        let reg = Registry::open(Store::open(dir.path()).unwrap(), mk()).unwrap();
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn broker_passwords_are_stored_as_hashes_only() {
        use crate::core::broker_password::verify;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let reg = Registry::open(store.clone(), mk()).unwrap();
        let a = AgencyCode::parse("A1").unwrap();
        let issued = reg.add(a.clone(), "A", None).unwrap();
        assert_eq!(issued.broker_user, "A1");
        assert!(issued.broker_password.len() >= 40);
        let stored = reg.broker_user(&a).unwrap().unwrap();
        assert!(verify(&stored.password_hash, &issued.broker_password));
        let raw = store.broker_users().get("A1").unwrap().unwrap();
        assert!(!raw
            .windows(issued.broker_password.len())
            .any(|w| w == issued.broker_password.as_bytes()));
        // A key rotation leaves the broker password alone.
        reg.rotate_key(&a, std::time::Duration::ZERO).unwrap();
        assert_eq!(reg.broker_user(&a).unwrap().unwrap(), stored);
        let again = reg.rotate_broker_password(&a).unwrap();
        let now = reg.broker_user(&a).unwrap().unwrap();
        assert!(verify(&now.password_hash, &again.broker_password));
        assert!(!verify(&now.password_hash, &issued.broker_password));
        // An agency of an older store has no broker user until one is issued.
        let legacy = AgencyCode::parse("B1").unwrap();
        reg.add(legacy.clone(), "B", None).unwrap();
        store.broker_users().remove("B1").unwrap();
        assert!(reg.broker_user(&legacy).unwrap().is_none());
        assert!(matches!(
            reg.rotate_broker_password(&AgencyCode::parse("Z9").unwrap()),
            Err(RegistryError::NotFound(_))
        ));
        reg.remove(&a).unwrap();
        assert!(reg.broker_user(&a).unwrap().is_none());
    }

    #[test]
    fn add_lookup_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let code = AgencyCode::parse("000.00.31.H41").unwrap();
        let issued = {
            let reg = Registry::open(Store::open(dir.path()).unwrap(), mk()).unwrap();
            let issued = reg.add(code.clone(), "Sở Y tế", None).unwrap();
            assert!(issued.access_key.starts_with("AK") && issued.access_key.len() == 12);
            assert!(issued.secret.len() >= 40);
            assert!(matches!(
                reg.add(code.clone(), "again", None),
                Err(RegistryError::Exists(_))
            ));
            assert!(matches!(
                reg.add(AgencyCode::parse("B").unwrap(), " ", None),
                Err(RegistryError::BadName)
            ));
            assert!(reg
                .add(AgencyCode::parse("B").unwrap(), "b", Some("junk".into()))
                .is_err());
            issued
        };
        let reg = Registry::open(Store::open(dir.path()).unwrap(), mk()).unwrap();
        let (entry, key) = reg.by_key(&issued.access_key, now_ms()).unwrap();
        assert_eq!(entry.agency.code, code);
        assert_eq!(key.secret, issued.secret);
        assert!(reg.by_key("AKNOPE", now_ms()).is_none());
        assert_eq!(reg.list().len(), 1);
    }

    #[test]
    fn another_instance_sees_changes_after_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let one = Registry::open(store.clone(), mk()).unwrap();
        let two = Registry::open(store.clone(), mk()).unwrap();
        let a = AgencyCode::parse("A1").unwrap();
        assert!(!two.refresh().unwrap(), "nothing changed yet");
        let issued = one.add(a.clone(), "A", None).unwrap();
        assert!(two.get(&a).is_none(), "not before a refresh");
        assert!(two.refresh().unwrap());
        assert_eq!(two.get(&a).unwrap().agency.name, "A");
        assert!(two.by_key(&issued.access_key, now_ms()).is_some());
        // Its own write does not make the writer reload.
        assert!(!one.refresh().unwrap());
        assert!(!two.refresh().unwrap(), "reloaded once per change");
        // Disabled through the other one.
        two.set_enabled(&a, false).unwrap();
        assert!(one.get(&a).unwrap().agency.enabled);
        assert!(one.refresh().unwrap());
        assert!(!one.get(&a).unwrap().agency.enabled);
        // Rotated: the new key works on both, the old one's expiry too.
        let (rotated, _) = one.rotate_key(&a, std::time::Duration::ZERO).unwrap();
        assert!(two.refresh().unwrap());
        let now = now_ms() + 1;
        assert!(two.by_key(&rotated.access_key, now).is_some());
        assert!(two.by_key(&issued.access_key, now).is_none());
        // The key last used follows too.
        two.note_used(&a, &rotated.access_key).unwrap();
        assert!(one.refresh().unwrap());
        assert_eq!(
            one.last_used(&a).as_deref(),
            Some(rotated.access_key.as_str())
        );
        // Removed.
        one.remove(&a).unwrap();
        assert!(two.refresh().unwrap());
        assert!(two.get(&a).is_none());
        assert!(two.by_key(&rotated.access_key, now).is_none());
        assert!(two.list().is_empty());
        // A third opened later starts at the current count.
        let three = Registry::open(store, mk()).unwrap();
        assert!(!three.refresh().unwrap());
    }

    #[test]
    fn writes_on_both_sides_converge() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let one = Registry::open(store.clone(), mk()).unwrap();
        let two = Registry::open(store.clone(), mk()).unwrap();
        one.add(AgencyCode::parse("A1").unwrap(), "A", None)
            .unwrap();
        // two writes before it refreshed: its count is behind, so its own
        // write does not mark it current, and the refresh brings A1 in.
        two.add(AgencyCode::parse("B1").unwrap(), "B", None)
            .unwrap();
        assert_eq!(two.len(), 1);
        assert!(two.refresh().unwrap());
        assert_eq!(two.len(), 2);
        assert!(one.refresh().unwrap());
        assert_eq!(one.len(), 2);
        assert!(!one.refresh().unwrap() && !two.refresh().unwrap());
    }

    fn key(name: &str, expires_at_ms: Option<i64>) -> AccessKey {
        AccessKey {
            access_key: name.into(),
            secret: format!("secret-of-{name}"),
            created_at_ms: 0,
            expires_at_ms,
        }
    }

    #[test]
    fn signing_key_is_the_last_used_one_until_it_expires() {
        let agency = Agency {
            code: AgencyCode::parse("A1").unwrap(),
            name: "A".into(),
            enabled: true,
            created_at_ms: 0,
            public_key_pem: None,
            keys: vec![key("AKOLD", Some(1_000)), key("AKNEW", None)],
        };
        let pick = |used: Option<&str>, now: i64| {
            agency.signing_key(used, now).map(|k| k.access_key.as_str())
        };
        // In the grace period the key last used signs.
        assert_eq!(pick(Some("AKOLD"), 999), Some("AKOLD"));
        assert_eq!(pick(Some("AKNEW"), 999), Some("AKNEW"));
        // Once the old key has expired, the newest; at the instant of expiry too.
        assert_eq!(pick(Some("AKOLD"), 1_000), Some("AKNEW"));
        assert_eq!(pick(Some("AKOLD"), 5_000), Some("AKNEW"));
        // Nothing recorded, or a key that is not the agency's: the newest.
        assert_eq!(pick(None, 0), Some("AKNEW"));
        assert_eq!(pick(Some("AKSTRANGER"), 0), Some("AKNEW"));
        let none = Agency {
            keys: Vec::new(),
            ..agency.clone()
        };
        assert!(none.signing_key(Some("AKOLD"), 0).is_none());
    }

    #[test]
    fn last_used_key_is_recorded_durably_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let a = AgencyCode::parse("A1").unwrap();
        let (first, second) = {
            let reg = Registry::open(Store::open(dir.path()).unwrap(), mk()).unwrap();
            let first = reg.add(a.clone(), "A", None).unwrap();
            assert_eq!(reg.last_used(&a), None);
            let now = now_ms();
            assert_eq!(
                reg.signing_key(&a, now).unwrap().access_key,
                first.access_key
            );
            // Rotation with a grace period: the key in use keeps signing.
            let (second, _) = reg
                .rotate_key(&a, std::time::Duration::from_secs(3600))
                .unwrap();
            assert_eq!(
                reg.last_used(&a).as_deref(),
                Some(first.access_key.as_str())
            );
            let k = reg.signing_key(&a, now_ms()).unwrap();
            assert_eq!(
                (k.access_key.as_str(), k.secret.as_str()),
                (first.access_key.as_str(), first.secret.as_str())
            );
            // After the grace period: the new key.
            assert_eq!(
                reg.signing_key(&a, now + 3_601_000).unwrap().access_key,
                second.access_key
            );
            // The agency switches to the new key.
            reg.note_used(&a, &second.access_key).unwrap();
            assert_eq!(
                reg.signing_key(&a, now_ms()).unwrap().access_key,
                second.access_key
            );
            // ... and back to the old one, still valid.
            reg.note_used(&a, &first.access_key).unwrap();
            (first, second)
        };
        // Reopened: the record survived.
        let reg = Registry::open(Store::open(dir.path()).unwrap(), mk()).unwrap();
        assert_eq!(
            reg.last_used(&a).as_deref(),
            Some(first.access_key.as_str())
        );
        assert_eq!(
            reg.signing_key(&a, now_ms()).unwrap().access_key,
            first.access_key
        );
        // A rotation without grace: the old keys expire at once, the newest signs.
        let (third, _) = reg.rotate_key(&a, std::time::Duration::ZERO).unwrap();
        let k = reg.signing_key(&a, now_ms()).unwrap();
        assert_eq!(k.access_key, third.access_key);
        assert_ne!(k.access_key, second.access_key);
        // Removal forgets it.
        reg.remove(&a).unwrap();
        assert_eq!(reg.last_used(&a), None);
        assert!(reg.signing_key(&a, now_ms()).is_none());
    }
}

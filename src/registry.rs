//! The directory of agencies: codes, names, access keys, secrets and RSA
//! public keys, persisted in sled and cached in memory for the ingress path.
//!
//! Invariants: an access key belongs to exactly one agency; the cache is
//! updated in the same call that writes sled, so lookups never see a key the
//! store does not hold. Secrets are returned once, by [`Registry::add`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::Rng;
use rsa::RsaPublicKey;
use serde::{Deserialize, Serialize};

use crate::auth::{parse_public_key, AuthError};
use crate::code::AgencyCode;
use crate::codec;
use crate::store::{Store, StoreError};
use crate::time::now_ms;

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
    /// The key the hub signs with (the newest).
    pub fn current_secret(&self) -> &str {
        self.keys.last().map(|k| k.secret.as_str()).unwrap_or("")
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

/// What [`Registry::add`] returns: the secret, shown once.
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
}

#[derive(Default)]
struct Cache {
    by_code: HashMap<AgencyCode, Arc<Entry>>,
    by_key: HashMap<String, AgencyCode>,
}

/// The agency directory.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    cache: Arc<RwLock<Cache>>,
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

fn entry(agency: Agency) -> Result<Entry, RegistryError> {
    let public_key = agency
        .public_key_pem
        .as_deref()
        .map(parse_public_key)
        .transpose()?;
    Ok(Entry { agency, public_key })
}

impl Registry {
    /// Loads every agency from `store`.
    pub fn open(store: Store) -> Result<Self, RegistryError> {
        let mut cache = Cache::default();
        for item in store.agencies.iter() {
            let (_, v) = item?;
            let agency: Agency = codec::decode(&v)?;
            for k in &agency.keys {
                cache
                    .by_key
                    .insert(k.access_key.clone(), agency.code.clone());
            }
            let e = entry(agency)?;
            cache.by_code.insert(e.agency.code.clone(), Arc::new(e));
        }
        Ok(Self {
            store,
            cache: Arc::new(RwLock::new(cache)),
        })
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
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 300 || name.chars().any(char::is_control) {
            return Err(RegistryError::BadName);
        }
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
        let inserted = self.store.agencies.compare_and_swap(
            code.as_str(),
            None as Option<&[u8]>,
            Some(codec::encode(&agency)?),
        )?;
        if inserted.is_err() {
            return Err(RegistryError::Exists(code));
        }
        self.store
            .keys
            .insert(key.access_key.as_bytes(), code.as_str().as_bytes())?;
        self.store.flush()?;
        cache.by_key.insert(key.access_key.clone(), code.clone());
        cache.by_code.insert(code.clone(), Arc::new(entry(agency)?));
        Ok(Issued {
            code,
            name: name.to_owned(),
            access_key: key.access_key,
            secret: key.secret,
        })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_lookup_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let code = AgencyCode::parse("000.00.31.H41").unwrap();
        let issued = {
            let reg = Registry::open(Store::open(dir.path()).unwrap()).unwrap();
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
        let reg = Registry::open(Store::open(dir.path()).unwrap()).unwrap();
        let (entry, key) = reg.by_key(&issued.access_key, now_ms()).unwrap();
        assert_eq!(entry.agency.code, code);
        assert_eq!(key.secret, issued.secret);
        assert!(reg.by_key("AKNOPE", now_ms()).is_none());
        assert_eq!(reg.list().len(), 1);
    }
}

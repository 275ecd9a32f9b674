//! Upload spaces (cấp không gian): where a large document waits between
//! its source and its destinations, instead of travelling in an envelope's
//! body. A source asks for a space of a size and digest, uploads it in
//! chunks of [`CHUNK`] bytes (in any order, again after a failure), and
//! completes it; the hub reads it all back and checks the digest. An
//! envelope then names the space (`lgsp-space`) and is bound to it; its
//! destinations fetch the content with their own sessions.
//!
//! Records (`meta`: `space \0 id` → [`Space`]; `space-of \0 from \0
//! message_id` → id) are in the store, so every instance sharing it sees
//! them; content lies in a directory ([`content`]), sealed ([`seal`]).
//!
//! Invariants: content is never on disk unsealed; a space belongs to the
//! agency that asked for it, and only it uploads; it is complete only once
//! every chunk is there and the whole content matches its digest, and a
//! complete space takes no more chunks; it is bound to at most one envelope
//! of its owner, once; it is deleted (record and content) when no
//! destination of that envelope may still receive it (confirmed `01`,
//! bounced for good, expired, recalled or purged), when its envelope's
//! record is gone, or when no envelope used it and no chunk came for the
//! policy's `unused_after`; the quota counts every space an agency holds
//! (spaces made at once on one instance are counted one after the other;
//! across instances two may both pass).

mod content;
mod seal;

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::core::code::AgencyCode;
use crate::core::policy::SpacesPolicy;
use crate::state::codec;
use crate::state::keys::Key;
use crate::state::store::{Store, StoreError};
use crate::state::tracking::Tracking;

pub(crate) use seal::PURPOSE as SEAL_PURPOSE;

/// The size of every chunk but the last.
pub const CHUNK: u32 = 1 << 20;

/// How long a space bound to an envelope may wait for that envelope's
/// record (a routing under way, or an envelope refused after the binding)
/// before it counts as unused.
pub const BOUND_GRACE_MS: i64 = 600_000;

/// A space's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Space {
    /// 32 lowercase hex digits.
    pub id: String,
    /// The agency that asked for it.
    pub owner: AgencyCode,
    /// Size of the content, bytes.
    pub size: u64,
    /// `sha256=<hex>` of the content.
    pub digest: String,
    /// When it was made (ms).
    pub created_ms: i64,
    /// Every chunk is there and the content matches the digest.
    pub complete: bool,
    /// The envelope (its `message_id`) it is bound to.
    pub message_id: Option<String>,
    /// When it was bound (ms).
    pub bound_ms: Option<i64>,
    /// The hub made it for a large body sent inline over the gateway.
    pub by_hub: bool,
}

impl Space {
    /// How many chunks the content has.
    pub fn chunks(&self) -> u32 {
        self.size.div_ceil(u64::from(CHUNK)) as u32
    }

    /// The length chunk `n` must have, or `None` past the end.
    pub fn chunk_len(&self, n: u32) -> Option<u32> {
        let start = u64::from(n) * u64::from(CHUNK);
        (start < self.size).then(|| (self.size - start).min(u64::from(CHUNK)) as u32)
    }
}

/// Why a space operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The content directory failed.
    #[error("space content: {0}")]
    Io(#[from] std::io::Error),
    /// No such space (or not the caller's: the same words).
    #[error("no such space")]
    Unknown,
    /// The size is 0 or over the largest document.
    #[error("a space holds 1 to {max} bytes; {size} asked for")]
    TooLarge {
        /// Asked for.
        size: u64,
        /// The policy's `max_document_bytes`.
        max: u64,
    },
    /// The agency's spaces would hold more than its quota.
    #[error("the agency's spaces hold {held} bytes; {size} more is over its quota of {quota}")]
    Quota {
        /// Held now.
        held: u64,
        /// Asked for.
        size: u64,
        /// The policy's `bytes_per_agency`.
        quota: u64,
    },
    /// The digest is not `sha256=<64 lowercase hex>`.
    #[error("digest must be sha256=<64 lowercase hex>")]
    BadDigest,
    /// A chunk number past the end, or a chunk of the wrong length.
    #[error("{0}")]
    BadChunk(String),
    /// The space is complete; its content cannot change.
    #[error("the space is complete; its content cannot change")]
    Complete,
    /// Chunks are missing.
    #[error("{} chunk(s) missing, the first is {}", .0.len(), .0[0])]
    Missing(Vec<u32>),
    /// The space is not complete (`POST …/complete` first).
    #[error("the space is not complete")]
    Incomplete,
    /// The content does not match the digest (the space is deleted).
    #[error("the content does not match the space's digest; the space is deleted")]
    Mismatch,
    /// A chunk does not open (altered, or another master key).
    #[error("chunk {0} does not open (altered, or sealed with another master key)")]
    Sealed(u32),
    /// The space is bound to another envelope.
    #[error("the space is used by envelope {0} already")]
    Bound(String),
}

impl SpaceError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Io(_) => true,
            Self::Unknown
            | Self::TooLarge { .. }
            | Self::Quota { .. }
            | Self::BadDigest
            | Self::BadChunk(_)
            | Self::Complete
            | Self::Missing(_)
            | Self::Incomplete
            | Self::Mismatch
            | Self::Sealed(_)
            | Self::Bound(_) => false,
        }
    }
}

/// Why a space was deleted by [`Spaces::sweep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gone {
    /// No destination may still receive it.
    Delivered,
    /// Its envelope's record is gone.
    Orphaned,
    /// No envelope used it in time.
    Unused,
}

impl Gone {
    /// Its name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Orphaned => "orphaned",
            Self::Unused => "unused",
        }
    }
}

fn key(id: &str) -> Vec<u8> {
    Key::new().str("space").str(id).into_bytes()
}

fn prefix() -> Vec<u8> {
    Key::new().str("space").prefix()
}

fn of_key(from: &AgencyCode, message_id: &str) -> Vec<u8> {
    Key::new()
        .str("space-of")
        .code(from)
        .str(message_id)
        .into_bytes()
}

use crate::core::envelope::is_space_id as is_id;

/// `sha256=<hex>` of what `hasher` read.
fn digest_text(hasher: Sha256) -> String {
    format!("sha256={}", hex::encode(hasher.finalize()))
}

/// The spaces; cheap to clone. Every method blocks on disk or store: call
/// them off the async threads.
#[derive(Clone)]
pub struct Spaces {
    store: Store,
    dir: content::Dir,
    sealer: seal::Sealer,
    /// Held while a space is made, so that two asked for at once are
    /// both counted against the quota (on this instance).
    making: std::sync::Arc<std::sync::Mutex<()>>,
    /// Whether some space may be bound to an envelope, as this instance
    /// last knew: set by every bind here, cleared by a sweep that found
    /// none and saw no bind meanwhile. Lets [`Spaces::release`] skip its
    /// store read for the envelopes that have no space (nearly all), which
    /// would otherwise cost every settled delivery a statement on a shared
    /// store; a space bound on another instance meanwhile is released by
    /// the next sweep instead.
    hint: std::sync::Arc<BoundHint>,
}

/// See [`Spaces::hint`]'s field.
#[derive(Debug)]
struct BoundHint {
    maybe: std::sync::atomic::AtomicBool,
    binds: std::sync::atomic::AtomicU64,
}

impl Default for BoundHint {
    fn default() -> Self {
        // Until the first sweep: a bound space may exist.
        Self {
            maybe: std::sync::atomic::AtomicBool::new(true),
            binds: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Spaces {
    /// The spaces whose records are in `store` and content in `dir`, sealed
    /// with `key` (derived for [`SEAL_PURPOSE`]).
    pub fn open(store: Store, dir: &Path, key: [u8; 32]) -> std::io::Result<Self> {
        Ok(Self {
            store,
            dir: content::Dir::open(dir)?,
            sealer: seal::Sealer::new(key),
            making: Default::default(),
            hint: Default::default(),
        })
    }

    /// The content directory.
    pub fn dir(&self) -> &Path {
        self.dir.root()
    }

    /// Space `id`, if it exists.
    pub fn get(&self, id: &str) -> Result<Option<Space>, SpaceError> {
        if !is_id(id) {
            return Ok(None);
        }
        match self.store.meta().get(key(id))? {
            None => Ok(None),
            Some(v) => Ok(Some(codec::decode(&v).map_err(StoreError::from)?)),
        }
    }

    /// Space `id` if `agency` owns it.
    pub fn owned(&self, id: &str, agency: &AgencyCode) -> Result<Space, SpaceError> {
        self.get(id)?
            .filter(|s| &s.owner == agency)
            .ok_or(SpaceError::Unknown)
    }

    /// Every space.
    pub fn all(&self) -> Result<Vec<Space>, SpaceError> {
        let p = prefix();
        let mut out = Vec::new();
        for item in self.store.meta().scan_prefix(&p) {
            let (_, v) = item?;
            out.push(codec::decode(&v).map_err(StoreError::from)?);
        }
        Ok(out)
    }

    /// A new space of `owner` for `size` bytes with `digest`, within the
    /// policy's largest document and the owner's quota.
    pub fn create(
        &self,
        owner: &AgencyCode,
        size: u64,
        digest: &str,
        by_hub: bool,
        policy: &SpacesPolicy,
        now: i64,
    ) -> Result<Space, SpaceError> {
        if size == 0 || size > policy.max_document_bytes {
            return Err(SpaceError::TooLarge {
                size,
                max: policy.max_document_bytes,
            });
        }
        if !crate::core::envelope::is_digest(digest) {
            return Err(SpaceError::BadDigest);
        }
        let _making = self.making.lock().unwrap_or_else(|p| p.into_inner());
        let held: u64 = self
            .all()?
            .iter()
            .filter(|s| &s.owner == owner)
            .map(|s| s.size)
            .sum();
        if held + size > policy.bytes_per_agency {
            return Err(SpaceError::Quota {
                held,
                size,
                quota: policy.bytes_per_agency,
            });
        }
        let space = Space {
            id: hex::encode(rand::random::<[u8; 16]>()),
            owner: owner.clone(),
            size,
            digest: digest.to_owned(),
            created_ms: now,
            complete: false,
            message_id: None,
            bound_ms: None,
            by_hub,
        };
        self.write(&space)?;
        Ok(space)
    }

    fn write(&self, space: &Space) -> Result<(), SpaceError> {
        self.store.meta().insert(
            key(&space.id),
            codec::encode(space).map_err(StoreError::from)?,
        )?;
        Ok(())
    }

    /// The numbers of the chunks received.
    pub fn received(&self, space: &Space) -> Result<Vec<u32>, SpaceError> {
        let n = space.chunks();
        Ok(self
            .dir
            .chunks(&space.id)?
            .into_iter()
            .filter(|c| *c < n)
            .collect())
    }

    /// Stores chunk `n` of `space` (again, if it came before).
    pub fn put_chunk(&self, space: &Space, n: u32, plain: &[u8]) -> Result<(), SpaceError> {
        if space.complete {
            return Err(SpaceError::Complete);
        }
        let Some(len) = space.chunk_len(n) else {
            return Err(SpaceError::BadChunk(format!(
                "chunk {n} is past the end: the space has chunks 0 to {}",
                space.chunks() - 1
            )));
        };
        if plain.len() != len as usize {
            return Err(SpaceError::BadChunk(format!(
                "chunk {n} must be {len} bytes; {} came",
                plain.len()
            )));
        }
        let sealed = self.sealer.seal(&space.id, n, plain);
        self.dir.put(&space.id, n, &sealed)?;
        Ok(())
    }

    /// Chunk `n` of `space`, opened.
    pub fn chunk(&self, space: &Space, n: u32) -> Result<Vec<u8>, SpaceError> {
        let sealed = self.dir.get(&space.id, n)?.ok_or(SpaceError::Unknown)?;
        self.sealer
            .open(&space.id, n, &sealed)
            .filter(|p| Some(p.len() as u32) == space.chunk_len(n))
            .ok_or(SpaceError::Sealed(n))
    }

    /// Completes `space`: every chunk must be there and the whole content
    /// match the digest. A mismatch deletes the space. Completing a
    /// complete space changes nothing.
    pub fn complete(&self, space: &Space) -> Result<Space, SpaceError> {
        if space.complete {
            return Ok(space.clone());
        }
        let have = self.received(space)?;
        let missing: Vec<u32> = (0..space.chunks())
            .filter(|n| have.binary_search(n).is_err())
            .collect();
        if !missing.is_empty() {
            return Err(SpaceError::Missing(missing));
        }
        let mut hasher = Sha256::new();
        for n in 0..space.chunks() {
            hasher.update(self.chunk(space, n)?);
        }
        if digest_text(hasher) != space.digest {
            self.delete(space)?;
            return Err(SpaceError::Mismatch);
        }
        self.mark_complete(space)
    }

    /// Marks `space` complete without reading it back: for the hub, which
    /// hashed the content as it wrote it ([`Writer`]).
    fn mark_complete(&self, space: &Space) -> Result<Space, SpaceError> {
        let mut done = space.clone();
        done.complete = true;
        self.write(&done)?;
        Ok(done)
    }

    /// Space `space_id` if it may serve the envelope `message_id` of
    /// `from`: `from`'s, complete, and bound to no other envelope (checked
    /// without binding it).
    pub fn usable(
        &self,
        space_id: &str,
        from: &AgencyCode,
        message_id: &str,
    ) -> Result<Space, SpaceError> {
        let space = self.owned(space_id, from)?;
        if !space.complete {
            return Err(SpaceError::Incomplete);
        }
        match &space.message_id {
            Some(m) if m != message_id => Err(SpaceError::Bound(m.clone())),
            _ => Ok(space),
        }
    }

    /// Binds `space_id` to the envelope `message_id` of `from`: the space
    /// must be `from`'s, complete and unbound (or bound to this envelope
    /// already, a repeat).
    pub fn bind(
        &self,
        space_id: &str,
        from: &AgencyCode,
        message_id: &str,
        now: i64,
    ) -> Result<Space, SpaceError> {
        let space = self.usable(space_id, from, message_id)?;
        if space.message_id.is_some() {
            // Bound to this envelope already: a repeat.
            return Ok(space);
        }
        let mut bound = space.clone();
        bound.message_id = Some(message_id.to_owned());
        bound.bound_ms = Some(now);
        let old = codec::encode(&space).map_err(StoreError::from)?;
        let new = codec::encode(&bound).map_err(StoreError::from)?;
        match self
            .store
            .meta()
            .compare_and_swap(key(space_id), Some(&old), Some(&new))?
        {
            Ok(()) => {
                use std::sync::atomic::Ordering;
                self.hint.binds.fetch_add(1, Ordering::AcqRel);
                self.hint.maybe.store(true, Ordering::Release);
                // The first space bound to the envelope stays its own (a
                // repeat over the gateway brings another).
                let _ = self.store.meta().compare_and_swap(
                    of_key(from, message_id),
                    None,
                    Some(space_id.as_bytes()),
                )?;
                Ok(bound)
            }
            // Someone bound it meanwhile: judged again.
            Err(_) => self.bind(space_id, from, message_id, now),
        }
    }

    /// The space the envelope `message_id` of `from` is bound to.
    pub fn space_of(
        &self,
        from: &AgencyCode,
        message_id: &str,
    ) -> Result<Option<Space>, SpaceError> {
        match self.store.meta().get(of_key(from, message_id))? {
            None => Ok(None),
            Some(id) => self.get(std::str::from_utf8(&id).unwrap_or("")),
        }
    }

    /// Deletes `space`: its content, then its records.
    pub fn delete(&self, space: &Space) -> Result<(), SpaceError> {
        self.dir.remove(&space.id)?;
        if let Some(m) = &space.message_id {
            self.store
                .meta()
                .delete_if(of_key(&space.owner, m), space.id.as_bytes())?;
        }
        self.store.meta().remove(key(&space.id))?;
        Ok(())
    }

    /// When `space` was last used (ms): made, or its last chunk written.
    pub fn last_used(&self, space: &Space) -> Result<i64, SpaceError> {
        Ok(self
            .dir
            .touched(&space.id)?
            .unwrap_or(0)
            .max(space.created_ms))
    }

    /// Why `space` may go now, if it may: no destination of its envelope
    /// may still receive it, its envelope's record is gone, or it was not
    /// used in time.
    pub fn may_go(
        &self,
        space: &Space,
        tracking: &Tracking,
        policy: &SpacesPolicy,
        now: i64,
    ) -> Result<Option<Gone>, SpaceError> {
        let unused = policy.unused_after.as_millis() as i64;
        match (&space.message_id, space.bound_ms) {
            (Some(m), Some(bound)) => match tracking.get(&space.owner, m)? {
                Some(rec) => Ok(rec
                    .dests
                    .iter()
                    .all(|d| !d.may_deliver())
                    .then_some(Gone::Delivered)),
                None => Ok((now - bound > BOUND_GRACE_MS).then_some(Gone::Orphaned)),
            },
            _ => Ok((now - self.last_used(space)? > unused).then_some(Gone::Unused)),
        }
    }

    /// Deletes the space of the envelope `message_id` of `from` if it may go.
    pub fn release(
        &self,
        from: &AgencyCode,
        message_id: &str,
        tracking: &Tracking,
        policy: &SpacesPolicy,
        now: i64,
    ) -> Result<Option<Gone>, SpaceError> {
        if !self.hint.maybe.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(None);
        }
        let Some(space) = self.space_of(from, message_id)? else {
            return Ok(None);
        };
        let gone = self.may_go(&space, tracking, policy, now)?;
        if gone.is_some() {
            self.delete(&space)?;
        }
        Ok(gone)
    }

    /// Deletes every space that may go, and content with no record (left
    /// by a crash between the two): what went, and why; and the spaces
    /// kept.
    pub fn sweep(
        &self,
        tracking: &Tracking,
        policy: &SpacesPolicy,
        now: i64,
    ) -> Result<Swept, SpaceError> {
        use std::sync::atomic::Ordering;
        let binds = self.hint.binds.load(Ordering::Acquire);
        let all = self.all()?;
        let mut gone = Vec::new();
        let mut kept = Vec::new();
        for space in &all {
            match self.may_go(space, tracking, policy, now)? {
                Some(why) => {
                    self.delete(space)?;
                    gone.push((space.clone(), why));
                }
                None => kept.push(space.clone()),
            }
        }
        for id in self.dir.ids()? {
            if is_id(&id) && !all.iter().any(|s| s.id == id) && self.get(&id)?.is_none() {
                self.dir.remove(&id)?;
            }
        }
        if !kept.iter().any(|s| s.message_id.is_some())
            && self.hint.binds.load(Ordering::Acquire) == binds
        {
            self.hint.maybe.store(false, Ordering::Release);
        }
        Ok((gone, kept))
    }

    /// A writer of a new space of the hub's, for a body of `size` bytes
    /// that claims `digest`: content goes in as it comes, hashed.
    pub fn writer(
        &self,
        owner: &AgencyCode,
        size: u64,
        digest: &str,
        policy: &SpacesPolicy,
        now: i64,
    ) -> Result<Writer, SpaceError> {
        let space = self.create(owner, size, digest, true, policy, now)?;
        Ok(Writer {
            spaces: self.clone(),
            space,
            next: 0,
            buf: Vec::with_capacity(CHUNK as usize),
            hasher: Sha256::new(),
            written: 0,
        })
    }
}

/// What a sweep deleted (and why), and the spaces it kept.
pub type Swept = (Vec<(Space, Gone)>, Vec<Space>);

/// Writes a body into a space of the hub's, in order.
pub struct Writer {
    spaces: Spaces,
    space: Space,
    next: u32,
    buf: Vec<u8>,
    hasher: Sha256,
    written: u64,
}

impl Writer {
    /// The space written to.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Takes the next bytes of the body; more than the size is refused.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), SpaceError> {
        if self.written + bytes.len() as u64 > self.space.size {
            return Err(SpaceError::BadChunk(format!(
                "the body is longer than its declared {} bytes",
                self.space.size
            )));
        }
        self.written += bytes.len() as u64;
        self.hasher.update(bytes);
        while !bytes.is_empty() {
            let take = (CHUNK as usize - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == CHUNK as usize {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SpaceError> {
        self.spaces.put_chunk(&self.space, self.next, &self.buf)?;
        self.next += 1;
        self.buf.clear();
        Ok(())
    }

    /// Ends the body: complete when it has the declared size (whatever its
    /// digest: the router judges that, with the envelope's signature). The
    /// space is deleted when the body was short.
    pub fn finish(mut self) -> Result<Space, SpaceError> {
        if self.written != self.space.size {
            let _ = self.spaces.delete(&self.space);
            return Err(SpaceError::BadChunk(format!(
                "the body is {} bytes, shorter than its declared {}",
                self.written, self.space.size
            )));
        }
        if !self.buf.is_empty() {
            self.flush()?;
        }
        let mut space = self.space.clone();
        space.digest = digest_text(self.hasher.clone());
        self.spaces.mark_complete(&space)
    }

    /// Gives the space up (the body failed): deleted.
    pub fn abandon(self) {
        if let Err(e) = self.spaces.delete(&self.space) {
            tracing::warn!(space = %self.space.id, error = %e, "an abandoned space was not deleted; the sweep deletes it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reason::Reason;
    use crate::core::timeline::DeliveryState;
    use crate::state::tracking::{DestTrack, EnvelopeRecord};

    fn code(s: &str) -> AgencyCode {
        AgencyCode::parse(s).unwrap()
    }

    fn policy() -> SpacesPolicy {
        SpacesPolicy {
            max_document_bytes: 8 << 20,
            bytes_per_agency: 10 << 20,
            inline_bytes: 1 << 20,
            unused_after: std::time::Duration::from_secs(3600),
        }
    }

    fn digest(b: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(b);
        digest_text(h)
    }

    fn doc(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        spaces: Spaces,
        tracking: Tracking,
        content: std::path::PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let content = dir.path().join("spaces");
        Fixture {
            spaces: Spaces::open(store.clone(), &content, [9; 32]).unwrap(),
            tracking: Tracking::new(store),
            content,
            _dir: dir,
        }
    }

    fn upload(s: &Spaces, space: &Space, data: &[u8], order: &[u32]) {
        for &n in order {
            let start = n as usize * CHUNK as usize;
            let end = (start + CHUNK as usize).min(data.len());
            s.put_chunk(space, n, &data[start..end]).unwrap();
        }
    }

    /// Every file under `dir`, read whole.
    fn files(dir: &Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(std::fs::read(&p).unwrap());
            }
        }
        out
    }

    #[test]
    fn chunks_in_any_order_complete_against_the_digest_sealed_on_disk() {
        let f = fixture();
        let owner = code("000.00.31.H41");
        let data = doc(2 * CHUNK as usize + 1000);
        let space = f
            .spaces
            .create(
                &owner,
                data.len() as u64,
                &digest(&data),
                false,
                &policy(),
                0,
            )
            .unwrap();
        assert_eq!(space.chunks(), 3);
        assert_eq!(space.chunk_len(2), Some(1000));
        upload(&f.spaces, &space, &data, &[2, 0]);
        assert_eq!(f.spaces.received(&space).unwrap(), vec![0, 2]);
        assert!(matches!(f.spaces.complete(&space), Err(SpaceError::Missing(m)) if m == vec![1]));
        // A chunk again replaces itself; a wrong length or number is refused.
        upload(&f.spaces, &space, &data, &[1, 1]);
        assert!(matches!(
            f.spaces.put_chunk(&space, 1, b"short"),
            Err(SpaceError::BadChunk(_))
        ));
        assert!(matches!(
            f.spaces.put_chunk(&space, 3, b"x"),
            Err(SpaceError::BadChunk(_))
        ));
        let done = f.spaces.complete(&space).unwrap();
        assert!(done.complete);
        assert!(matches!(
            f.spaces.put_chunk(&done, 0, &data[..CHUNK as usize]),
            Err(SpaceError::Complete)
        ));
        let back: Vec<u8> = (0..3)
            .flat_map(|n| f.spaces.chunk(&done, n).unwrap())
            .collect();
        assert_eq!(back, data);
        // Nothing of the document is on disk in the clear.
        let probe = &data[5000..5064];
        for file in files(&f.content) {
            assert!(!file.windows(probe.len()).any(|w| w == probe));
        }
    }

    #[test]
    fn a_document_that_does_not_match_is_deleted() {
        let f = fixture();
        let owner = code("000.00.31.H41");
        let data = doc(10);
        let space = f
            .spaces
            .create(&owner, 10, &digest(b"something else"), false, &policy(), 0)
            .unwrap();
        upload(&f.spaces, &space, &data, &[0]);
        assert!(matches!(
            f.spaces.complete(&space),
            Err(SpaceError::Mismatch)
        ));
        assert!(f.spaces.get(&space.id).unwrap().is_none());
        assert!(files(&f.content).is_empty());
    }

    #[test]
    fn size_digest_and_quota_are_policy() {
        let f = fixture();
        let owner = code("000.00.31.H41");
        let d = digest(b"x");
        let p = policy();
        assert!(matches!(
            f.spaces.create(&owner, 0, &d, false, &p, 0),
            Err(SpaceError::TooLarge { .. })
        ));
        assert!(matches!(
            f.spaces.create(&owner, (8 << 20) + 1, &d, false, &p, 0),
            Err(SpaceError::TooLarge { .. })
        ));
        assert!(matches!(
            f.spaces.create(&owner, 1, "sha256=ABC", false, &p, 0),
            Err(SpaceError::BadDigest)
        ));
        f.spaces.create(&owner, 8 << 20, &d, false, &p, 0).unwrap();
        assert!(matches!(
            f.spaces.create(&owner, 3 << 20, &d, false, &p, 0),
            Err(SpaceError::Quota { held, .. }) if held == 8 << 20
        ));
        // Another agency's quota is its own.
        f.spaces
            .create(&code("000.00.32.H41"), 3 << 20, &d, false, &p, 0)
            .unwrap();
    }

    #[test]
    fn a_space_serves_one_envelope_of_its_owner_and_goes_when_delivered() {
        let f = fixture();
        let owner = code("S");
        let data = doc(100);
        let space = f
            .spaces
            .create(&owner, 100, &digest(&data), false, &policy(), 0)
            .unwrap();
        assert!(matches!(
            f.spaces.bind(&space.id, &owner, "m1", 1),
            Err(SpaceError::Incomplete)
        ));
        upload(&f.spaces, &space, &data, &[0]);
        f.spaces.complete(&space).unwrap();
        assert!(matches!(
            f.spaces.bind(&space.id, &code("T"), "m1", 1),
            Err(SpaceError::Unknown)
        ));
        f.spaces.bind(&space.id, &owner, "m1", 1).unwrap();
        f.spaces.bind(&space.id, &owner, "m1", 2).unwrap();
        assert!(
            matches!(f.spaces.bind(&space.id, &owner, "m2", 2), Err(SpaceError::Bound(m)) if m == "m1")
        );
        assert_eq!(
            f.spaces.space_of(&owner, "m1").unwrap().unwrap().id,
            space.id
        );

        // Two destinations: one waiting keeps it, both done frees it.
        let p = policy();
        let queued = |c: &str| {
            let mut t = DestTrack::new(code(c), 1, DeliveryState::Accepted, None, "");
            t.push(1, DeliveryState::Queued, None, "attempt 1");
            t
        };
        let mut rec = EnvelopeRecord::for_test(1, "m1", vec![queued("A"), queued("B")]);
        rec.dests[0].push(2, DeliveryState::Delivered, None, "01");
        f.tracking.put(&rec).unwrap();
        assert_eq!(
            f.spaces.release(&owner, "m1", &f.tracking, &p, 3).unwrap(),
            None
        );
        rec.dests[1].push(3, DeliveryState::Bounced, Some(Reason::MaxAttempts), "");
        f.tracking.put(&rec).unwrap();
        assert_eq!(
            f.spaces.release(&owner, "m1", &f.tracking, &p, 4).unwrap(),
            Some(Gone::Delivered)
        );
        assert!(f.spaces.get(&space.id).unwrap().is_none());
        assert!(f.spaces.space_of(&owner, "m1").unwrap().is_none());
        assert!(files(&f.content).is_empty());
    }

    #[test]
    fn release_skips_the_store_read_while_no_space_is_bound() {
        let f = fixture();
        let owner = code("S");
        // Another instance's view of the same store and directory.
        let other = Spaces::open(f.spaces.store.clone(), &f.content, [9; 32]).unwrap();
        let p = policy();
        // No space bound anywhere: once a sweep saw that, release reads nothing.
        other.sweep(&f.tracking, &p, 0).unwrap();
        assert!(!other.hint.maybe.load(std::sync::atomic::Ordering::Acquire));
        let data = doc(10);
        let space = f
            .spaces
            .create(&owner, 10, &digest(&data), false, &p, 0)
            .unwrap();
        upload(&f.spaces, &space, &data, &[0]);
        f.spaces.complete(&space).unwrap();
        f.spaces.bind(&space.id, &owner, "m1", 1).unwrap();
        let mut rec = EnvelopeRecord::for_test(
            1,
            "m1",
            vec![DestTrack::new(
                code("A"),
                1,
                DeliveryState::Accepted,
                None,
                "",
            )],
        );
        rec.dests[0].push(2, DeliveryState::Delivered, None, "01");
        f.tracking.put(&rec).unwrap();
        // Bound on the first instance, settled on the other before its next
        // sweep: the other skips it; its sweep then takes it.
        assert_eq!(
            other.release(&owner, "m1", &f.tracking, &p, 3).unwrap(),
            None
        );
        assert!(f.spaces.get(&space.id).unwrap().is_some());
        let (gone, _) = other.sweep(&f.tracking, &p, 4).unwrap();
        assert_eq!(gone.len(), 1);
        assert!(f.spaces.get(&space.id).unwrap().is_none());
    }

    #[test]
    fn the_sweep_takes_unused_orphaned_and_recordless_content() {
        let f = fixture();
        let owner = code("S");
        let p = policy();
        let hour = 3_600_000;
        // Real times: a space's last chunk is dated by its directory.
        let t0 = crate::core::time::now_ms();
        let unused = f
            .spaces
            .create(&owner, 1, &digest(b"u"), false, &p, t0)
            .unwrap();
        upload(&f.spaces, &unused, b"u", &[0]);
        let orphan = f
            .spaces
            .create(&owner, 1, &digest(b"o"), false, &p, t0)
            .unwrap();
        upload(&f.spaces, &orphan, b"o", &[0]);
        f.spaces.complete(&orphan).unwrap();
        f.spaces.bind(&orphan.id, &owner, "gone", t0 + 10).unwrap();
        // Content whose record a crash lost.
        std::fs::create_dir_all(f.content.join("0123456789abcdef0123456789abcdef")).unwrap();
        assert!(f
            .spaces
            .sweep(&f.tracking, &p, t0 + 10)
            .unwrap()
            .0
            .is_empty());
        assert!(!f.content.join("0123456789abcdef0123456789abcdef").exists());
        let (gone, kept) = f.spaces.sweep(&f.tracking, &p, t0 + hour + 20_000).unwrap();
        assert!(kept.is_empty());
        let mut why: Vec<_> = gone.iter().map(|(s, w)| (s.id.clone(), *w)).collect();
        why.sort();
        let mut want = vec![
            (unused.id.clone(), Gone::Unused),
            (orphan.id.clone(), Gone::Orphaned),
        ];
        want.sort();
        assert_eq!(why, want);
        assert!(files(&f.content).is_empty());
    }

    #[test]
    fn the_hubs_writer_hashes_as_it_writes_and_leaves_nothing_when_short() {
        let f = fixture();
        let owner = code("S");
        let data = doc(CHUNK as usize + 5);
        let mut w = f
            .spaces
            .writer(&owner, data.len() as u64, &digest(&data), &policy(), 0)
            .unwrap();
        for part in data.chunks(4000) {
            w.write(part).unwrap();
        }
        let space = w.finish().unwrap();
        assert!(space.complete);
        assert_eq!(space.digest, digest(&data));
        let mut w = f
            .spaces
            .writer(&owner, 10, &digest(b"0123456789"), &policy(), 0)
            .unwrap();
        w.write(b"01234").unwrap();
        assert!(w.write(b"0123456789").is_err());
        let id = w.space().id.clone();
        assert!(w.finish().is_err());
        assert!(f.spaces.get(&id).unwrap().is_none());
    }
}

//! Per-envelope, per-destination timelines, the dedupe record and the
//! routing claim.
//!
//! Invariants: an envelope's record is written under its routing claim,
//! before any delivery is published; a record whose envelope holds no claim
//! was routed to the end ("accepted and handed over"), one with a claim
//! left behind by a routing that did not finish is routed again; a claim is
//! taken by compare-and-swap, so across instances sharing a store one
//! routes an envelope at a time; records hold metadata (ids, codes, digest,
//! size, times, states), never the body. The record, index, pending and
//! deadline writes are blind (`Table::put`/`delete`): on a shared store
//! other instances see them once shared, which the router does before it
//! publishes.

use serde::{Deserialize, Serialize};

use crate::core::code::AgencyCode;
use crate::core::reason::Reason;
use crate::core::timeline::DeliveryState;
use crate::state::codec;
use crate::state::keys::{Fields, Key};
use crate::state::replay::{NonceFound, NonceUse};
use crate::state::store::{InsertRead, Store, StoreError};

/// One timestamped transition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The state entered (`accepted`, `queued`, `bounced`…), stored by name.
    pub state: DeliveryState,
    /// Reason code, when there is one.
    pub reason: Option<Reason>,
    /// Human detail.
    pub detail: String,
}

/// The timeline of one destination of one envelope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DestTrack {
    /// Destination code.
    pub code: AgencyCode,
    /// Current state (the last event's state), stored by name.
    pub state: DeliveryState,
    /// Every transition, oldest first.
    pub events: Vec<Event>,
}

impl DestTrack {
    /// A timeline starting with `state` at `at_ms`.
    pub fn new(
        code: AgencyCode,
        at_ms: i64,
        state: DeliveryState,
        reason: Option<Reason>,
        detail: &str,
    ) -> Self {
        let mut t = Self {
            code,
            state,
            events: Vec::new(),
        };
        t.push(at_ms, state, reason, detail);
        t
    }

    /// True once nothing more will be delivered: expired, recalled, purged, or
    /// bounced for good. A bounce while the destination is offline (or was
    /// disabled while the envelope waited) leaves the delivery in its inbox,
    /// so it is not final. Decided from every event, not only the last one,
    /// so a late status does not reopen it.
    pub fn is_final(&self) -> bool {
        let mut queued = false;
        for e in &self.events {
            match e.state {
                DeliveryState::Queued => queued = true,
                DeliveryState::Expired | DeliveryState::Recalled | DeliveryState::Purged => {
                    return true
                }
                DeliveryState::Bounced => match e.reason {
                    Some(Reason::DestinationOffline) => {}
                    Some(Reason::DestinationDisabled) if queued => {}
                    _ => return true,
                },
                DeliveryState::Accepted
                | DeliveryState::Deferred
                | DeliveryState::Rejected
                | DeliveryState::Retry
                | DeliveryState::Delivered
                | DeliveryState::Status(_)
                | DeliveryState::DelayWarning
                | DeliveryState::RecallRequested => {}
            }
        }
        false
    }

    /// Whether the delivery still waits in the destination's inbox, unanswered
    /// (its current state is `queued` or `delay-warning`): the one definition
    /// of "waiting" ([`DeliveryState::is_waiting`]) behind presence notices,
    /// the router and `truc queue list`.
    pub fn is_waiting(&self) -> bool {
        self.state.is_waiting()
    }

    /// When the waiting delivery was put in the inbox (its last `queued`
    /// event), or `None` when it is not waiting.
    pub fn waiting_since(&self) -> Option<i64> {
        if !self.is_waiting() {
            return None;
        }
        self.events
            .iter()
            .rev()
            .find(|e| e.state == DeliveryState::Queued)
            .map(|e| e.at_ms)
    }

    /// Whether a copy of the delivery may still go out to the destination:
    /// not final and not confirmed received (held copies, retries, deadlines).
    pub fn may_deliver(&self) -> bool {
        !self.is_final() && !self.is_delivered()
    }

    /// True once the destination confirmed receipt (status `01` or later).
    pub fn is_delivered(&self) -> bool {
        self.events
            .iter()
            .any(|e| e.state == DeliveryState::Delivered)
    }

    /// How many deliveries the destination rejected.
    pub fn rejections(&self) -> u32 {
        self.events
            .iter()
            .filter(|e| e.state == DeliveryState::Rejected)
            .count() as u32
    }

    /// Records a transition.
    pub fn push(&mut self, at_ms: i64, state: DeliveryState, reason: Option<Reason>, detail: &str) {
        self.state = state;
        self.events.push(Event {
            at_ms,
            state,
            reason,
            detail: detail.to_owned(),
        });
    }
}

/// What truc remembers about an accepted envelope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvelopeRecord {
    /// Source agency.
    pub from: AgencyCode,
    /// The source's `message_id`.
    pub message_id: String,
    /// `lgsp-subject`.
    pub subject: String,
    /// `lgsp-type`.
    pub data_type: String,
    /// Priority code 0–4.
    pub priority: u8,
    /// `lgsp-digest`.
    pub digest: String,
    /// Body size in bytes.
    pub size: u64,
    /// AMQP content type.
    pub content_type: Option<String>,
    /// When truc accepted it (ms).
    pub accepted_at_ms: i64,
    /// `lgsp-deliver-by` (ms).
    pub deliver_by_ms: Option<i64>,
    /// `lgsp-not-before` (ms).
    pub not_before_ms: Option<i64>,
    /// Deliveries a destination may reject before bounce (header, else policy).
    pub max_attempts: u32,
    /// Per-destination timelines.
    pub dests: Vec<DestTrack>,
    /// `lgsp-bounce-after` (ms), when the envelope set one.
    pub bounce_after_ms: Option<u64>,
}

/// An undelivered envelope waiting on one destination (the `pending` index):
/// what presence needs to decide on warnings and bounces without reading the
/// envelope record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    /// When it was queued for the destination (ms).
    pub queued_at_ms: i64,
    /// Priority code 0–4.
    pub priority: u8,
    /// `lgsp-bounce-after` (ms), when the envelope set one.
    pub bounce_after_ms: Option<u64>,
    /// A delay warning was sent (a cache of the timeline, which is authoritative).
    pub warned: bool,
    /// A bounce was sent (idem).
    pub bounced: bool,
}

/// Key of the pending index: `dest \0 from \0 message_id`.
fn pending_key(dest: &AgencyCode, from: &AgencyCode, message_id: &str) -> Vec<u8> {
    Key::new()
        .code(dest)
        .code(from)
        .str(message_id)
        .into_bytes()
}

impl EnvelopeRecord {
    /// The timeline of `dest`.
    pub fn dest_mut(&mut self, dest: &AgencyCode) -> Option<&mut DestTrack> {
        self.dests.iter_mut().find(|d| &d.code == dest)
    }
}

/// Key of the destination index: `dest \0 message_id \0 from`.
pub fn dest_index_key(dest: &AgencyCode, message_id: &str, from: &AgencyCode) -> Vec<u8> {
    Key::new()
        .code(dest)
        .str(message_id)
        .code(from)
        .into_bytes()
}

/// Key of an envelope record: `from \0 message_id`.
fn record_key(from: &AgencyCode, message_id: &str) -> Vec<u8> {
    Key::new().code(from).str(message_id).into_bytes()
}

/// Key of a deadline: `deliver_by (i64 BE) from \0 message_id`.
fn deadline_key(deliver_by_ms: i64, from: &AgencyCode, message_id: &str) -> Vec<u8> {
    Key::new()
        .i64(deliver_by_ms)
        .code(from)
        .str(message_id)
        .into_bytes()
}

#[cfg(test)]
impl EnvelopeRecord {
    /// A record from source `S` accepted at `at` with `dests` (unit tests).
    pub(crate) fn for_test(at: i64, message_id: &str, dests: Vec<DestTrack>) -> Self {
        Self {
            from: AgencyCode::parse("S").expect("a valid code"),
            message_id: message_id.into(),
            subject: String::new(),
            data_type: "edoc".into(),
            priority: 0,
            digest: String::new(),
            size: 1,
            content_type: None,
            accepted_at_ms: at,
            deliver_by_ms: None,
            not_before_ms: None,
            max_attempts: 5,
            bounce_after_ms: None,
            dests,
        }
    }
}

/// A routing marker older than this whose writer is another instance is
/// taken for that instance's crash (a live one finishes in seconds); the
/// envelope is then routed again, marked as a possible repeat.
pub const CLAIM_STALE_MS: i64 = 15_000;

/// The value of a routing marker: who routes the envelope, since when.
#[derive(Debug, Serialize, Deserialize)]
struct RoutingClaim {
    owner: String,
    at_ms: i64,
}

/// What [`Tracking::claim`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Claimed for routing here. `unfinished`: the claim replaced a marker
    /// left by a routing that did not finish (a crash, a failed publish, an
    /// instance silent for [`CLAIM_STALE_MS`]), so the envelope is routed
    /// again as a possible repeat. `token` is the claim's bytes, for
    /// [`Tracking::routed`] and [`Tracking::release`].
    Mine {
        /// The claim as written.
        token: Vec<u8>,
        /// A marker of an unfinished routing was there.
        unfinished: bool,
        /// The envelope's record as it stood when the claim was taken.
        record: Option<Box<EnvelopeRecord>>,
    },
    /// Another live instance is routing it now.
    Elsewhere {
        /// That instance's claim name.
        owner: String,
    },
}

/// Reads and writes envelope records.
#[derive(Clone)]
pub struct Tracking {
    store: Store,
    /// This process's name on the routing markers it writes.
    owner: std::sync::Arc<str>,
}

impl Tracking {
    /// Over `store`.
    pub fn new(store: Store) -> Self {
        let owner = format!("pid{}-{:08x}", std::process::id(), rand::random::<u32>());
        Self {
            store,
            owner: owner.into(),
        }
    }

    /// The record of `(from, message_id)`, if accepted before.
    pub fn get(
        &self,
        from: &AgencyCode,
        message_id: &str,
    ) -> Result<Option<EnvelopeRecord>, StoreError> {
        match self.store.envelopes().get(record_key(from, message_id))? {
            None => Ok(None),
            Some(v) => Ok(Some(codec::decode::<EnvelopeRecord>(&v)?)),
        }
    }

    /// Indexes `(from, message_id)` under each of `dests`, so a status from a
    /// destination finds its source. Written *before* deliveries are published.
    pub fn index(
        &self,
        from: &AgencyCode,
        message_id: &str,
        dests: &[AgencyCode],
    ) -> Result<(), StoreError> {
        for d in dests {
            self.store
                .by_dest()
                .put(dest_index_key(d, message_id, from), [])?;
        }
        Ok(())
    }

    /// Marks `(from, message_id)` as waiting on each of `dests`. Written with
    /// the record, under the envelope's lock; removed by [`Self::unpend`].
    pub fn pend(
        &self,
        from: &AgencyCode,
        message_id: &str,
        dests: &[AgencyCode],
        p: &Pending,
    ) -> Result<(), StoreError> {
        let v = codec::encode(p)?;
        for d in dests {
            self.store
                .pending()
                .put(pending_key(d, from, message_id), &v)?;
        }
        Ok(())
    }

    /// `dest` answered about `(from, message_id)`: it is no longer waiting.
    pub fn unpend(
        &self,
        dest: &AgencyCode,
        from: &AgencyCode,
        message_id: &str,
    ) -> Result<(), StoreError> {
        self.store
            .pending()
            .delete(pending_key(dest, from, message_id))
    }

    /// Replaces the pending entry of `(from, message_id)` for `dest`, if it
    /// is still there.
    pub fn repend(
        &self,
        dest: &AgencyCode,
        from: &AgencyCode,
        message_id: &str,
        p: &Pending,
    ) -> Result<(), StoreError> {
        let v = codec::encode(p)?;
        self.store
            .pending()
            .fetch_and_update(pending_key(dest, from, message_id), |old| {
                old.map(|_| v.clone())
            })?;
        Ok(())
    }

    /// Envelopes still waiting on `dest`: `(from, message_id, entry)`.
    pub fn pending_for(
        &self,
        dest: &AgencyCode,
    ) -> Result<Vec<(AgencyCode, String, Pending)>, StoreError> {
        let prefix = Key::new().code(dest).prefix();
        let mut out = Vec::new();
        for item in self.store.pending().scan_prefix(&prefix) {
            let (k, v) = item?;
            let Some(mut f) = Fields::after(&k, &prefix) else {
                continue;
            };
            if let (Some(from), Some(mid)) = (f.code(), f.str()) {
                out.push((from, mid.to_owned(), codec::decode(&v)?));
            }
        }
        Ok(out)
    }

    /// Claims `(from, message_id)` for routing here (at `now_ms`), in one
    /// compare-and-swap when nothing holds it, and returns its record as it
    /// stood under the claim (read in the same round trip when it can be:
    /// [`crate::state::store::InsertRead`]); the record is written before
    /// its deliveries and notices are published (so whoever learns of the
    /// envelope finds it), and a marker
    /// still there after a crash means an envelope to route again, not a
    /// duplicate. Atomic across instances: a claim of another live instance
    /// is [`Claim::Elsewhere`]; on a store one process opens, every marker
    /// found is an unfinished routing of its own (two copies of an envelope
    /// take their turns under the router's lock).
    pub fn claim(
        &self,
        from: &AgencyCode,
        message_id: &str,
        now_ms: i64,
    ) -> Result<Claim, StoreError> {
        let (routing, envelopes) = (self.store.routing(), self.store.envelopes());
        let (claim, ()) = self.claim_with(from, message_id, now_ms, |key, token| {
            Ok((routing.insert_new_reading(key, token, &envelopes, key)?, ()))
        })?;
        Ok(claim)
    }

    /// [`Tracking::claim`], with the envelope's nonce entry inserted if
    /// absent in the same round trip ([`Table::insert_pair_new_reading`]):
    /// the claim and what that insert found (`Ok(())`: inserted), for
    /// [`crate::state::replay::Nonces::judge`]. The claim is taken whatever
    /// the nonce turns out to be: a caller that finds a replay releases it.
    ///
    /// [`Table::insert_pair_new_reading`]: crate::state::store::Table::insert_pair_new_reading
    pub fn claim_after_nonce(
        &self,
        from: &AgencyCode,
        message_id: &str,
        now_ms: i64,
        nonce: &NonceUse,
    ) -> Result<(Claim, NonceFound), StoreError> {
        let (routing, envelopes) = (self.store.routing(), self.store.envelopes());
        self.claim_with(from, message_id, now_ms, |key, token| {
            let both = self.store.nonces().insert_pair_new_reading(
                nonce.key(),
                nonce.value(),
                &routing,
                key,
                token,
                &envelopes,
                key,
            )?;
            Ok((both.then, both.first))
        })
    }

    /// The claim, whose first try is `first_try(key, token)`: insert the
    /// claim if absent and read the record with it (in the same round trip
    /// as whatever else it does, whose outcome `T` is handed back).
    fn claim_with<T>(
        &self,
        from: &AgencyCode,
        message_id: &str,
        now_ms: i64,
        first_try: impl FnOnce(&[u8], &[u8]) -> Result<(InsertRead, T), StoreError>,
    ) -> Result<(Claim, T), StoreError> {
        let key = record_key(from, message_id);
        let token = codec::encode(&RoutingClaim {
            owner: self.owner.to_string(),
            at_ms: now_ms,
        })?;
        let (routing, envelopes) = (self.store.routing(), self.store.envelopes());
        // The claim is taken; the record as it stood under it (read with the
        // claim when that read counts, else now).
        let claimed =
            |unfinished: bool, read: Option<Option<Vec<u8>>>| -> Result<Claim, StoreError> {
                let record = match read {
                    Some(read) => read,
                    None => envelopes.get(&key)?,
                };
                Ok(Claim::Mine {
                    token: token.clone(),
                    unfinished,
                    record: record
                        .map(|v| codec::decode::<EnvelopeRecord>(&v).map(Box::new))
                        .transpose()?,
                })
            };
        // Mostly nothing holds it: the claim and the look at the record are
        // one round trip.
        let (first, found) = first_try(&key, &token)?;
        let mut seen = match first.inserted {
            Ok(()) => return Ok((claimed(false, first.read)?, found)),
            Err(current) => current,
        };
        loop {
            // Markers of older versions are empty: their writer is gone.
            if let Some(c) = seen
                .as_deref()
                .and_then(|c| codec::decode::<RoutingClaim>(c).ok())
            {
                if self.store.is_shared()
                    && c.owner != self.owner.as_ref()
                    && now_ms - c.at_ms < CLAIM_STALE_MS
                {
                    return Ok((Claim::Elsewhere { owner: c.owner }, found));
                }
            }
            match routing.compare_and_swap(&key, seen.as_deref(), Some(&token))? {
                Ok(()) => return Ok((claimed(seen.is_some(), None)?, found)),
                Err(current) => seen = current,
            }
        }
    }

    /// Gives up a claim without routing (a duplicate, a refusal): the
    /// marker goes, unless another instance took it over meanwhile. On a
    /// shared store the removal is staged (sent at the next share or group
    /// commit; this process sees it at once).
    pub fn release(
        &self,
        from: &AgencyCode,
        message_id: &str,
        token: &[u8],
    ) -> Result<(), StoreError> {
        self.store
            .routing()
            .delete_if(record_key(from, message_id), token)
    }

    /// Whether `(from, message_id)` was being routed and not finished.
    pub fn is_routing(&self, from: &AgencyCode, message_id: &str) -> Result<bool, StoreError> {
        self.store
            .routing()
            .contains_key(record_key(from, message_id))
    }

    /// `(from, message_id)` is routed: its deliveries and notices were
    /// confirmed. Removes the claim `token`, only if still this routing's
    /// (one taken over meanwhile stays with its new owner). On a shared
    /// store the removal is staged and sent with the group commit, after the
    /// record, which was shared before anything was published: an instance
    /// that finds no claim finds the record.
    pub fn routed(
        &self,
        from: &AgencyCode,
        message_id: &str,
        token: &[u8],
    ) -> Result<(), StoreError> {
        self.release(from, message_id, token)
    }

    /// Writes `rec` (the dedupe marker). Not durable until
    /// [`Store::durable`] resolves; on a shared store, seen by other
    /// instances after [`Store::share`] (staged, like the index, pending and
    /// deadline writes: see [`crate::state::store::Table::put`]).
    pub fn put(&self, rec: &EnvelopeRecord) -> Result<(), StoreError> {
        self.store
            .envelopes()
            .put(record_key(&rec.from, &rec.message_id), codec::encode(rec)?)
    }

    /// Records sent to `dest` with `message_id` (status messages name the
    /// envelope by its id; the source is found here).
    pub fn sources_of(
        &self,
        dest: &AgencyCode,
        message_id: &str,
    ) -> Result<Vec<AgencyCode>, StoreError> {
        // Keyed dest \0 message_id \0 from: one short prefix scan, however
        // much the destination received before.
        let prefix = Key::new().code(dest).str(message_id).prefix();
        let mut out = Vec::new();
        for item in self.store.by_dest().scan_prefix(&prefix) {
            let (k, _) = item?;
            if let Some(code) = Fields::after(&k, &prefix).and_then(|mut f| f.code()) {
                out.push(code);
            }
        }
        Ok(out)
    }

    /// Remembers that `(from, message_id)` must be delivered by `deliver_by_ms`.
    pub fn add_deadline(
        &self,
        deliver_by_ms: i64,
        from: &AgencyCode,
        message_id: &str,
    ) -> Result<(), StoreError> {
        self.store
            .deadlines()
            .put(deadline_key(deliver_by_ms, from, message_id), [])
    }

    /// Deadlines at or before `now_ms`, oldest first: (index key, from, message_id).
    pub fn due_deadlines(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, AgencyCode, String)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .store
            .deadlines()
            .range(..Key::new().i64(now_ms + 1).into_bytes())
        {
            let (k, _) = item?;
            let mut f = Fields::of(&k);
            if let (Some(_), Some(from), Some(mid)) = (f.i64(), f.code(), f.str()) {
                out.push((k.to_vec(), from, mid.to_owned()));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Forgets a deadline returned by [`Tracking::due_deadlines`].
    pub fn remove_deadline(&self, key: &[u8]) -> Result<(), StoreError> {
        self.store.deadlines().delete(key)
    }

    /// Every record, newest first, up to `limit`, filtered by `keep`.
    pub fn list(
        &self,
        limit: usize,
        keep: impl Fn(&EnvelopeRecord) -> bool,
    ) -> Result<Vec<EnvelopeRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.store.envelopes().iter() {
            let (_, v) = item?;
            let rec = codec::decode::<EnvelopeRecord>(&v)?;
            if keep(&rec) {
                out.push(rec);
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.accepted_at_ms));
        out.truncate(limit);
        Ok(out)
    }
}

impl Tracking {
    /// Applies `edit` to the record of `(from, message_id)` atomically.
    /// Returns false when there is no such record.
    pub fn update(
        &self,
        from: &AgencyCode,
        message_id: &str,
        edit: impl Fn(&mut EnvelopeRecord),
    ) -> Result<bool, StoreError> {
        Ok(self
            .update_if(from, message_id, |rec| {
                edit(rec);
                true
            })?
            .is_some())
    }

    /// Applies `edit` to the record of `(from, message_id)` atomically, if
    /// `edit` returns true (it may run more than once); one that returns
    /// false leaves the record as it was. `None` when there is no such
    /// record, else whether `edit` applied.
    pub fn update_if(
        &self,
        from: &AgencyCode,
        message_id: &str,
        edit: impl Fn(&mut EnvelopeRecord) -> bool,
    ) -> Result<Option<bool>, StoreError> {
        let mut edit = Edit::new(edit);
        self.store
            .envelopes()
            .fetch_and_update(record_key(from, message_id), |old| edit.apply(old))?;
        edit.outcome()
    }

    /// [`Tracking::update_if`] after inserting the nonce entry of the
    /// message that brings the edit, if absent, in the same round trip: what
    /// that insert found (`Ok(())`: inserted), and, only when it inserted,
    /// the outcome of the edit (`None`: not tried; the caller judges the
    /// nonce with [`crate::state::replay::Nonces::judge`] and, unless it is a
    /// replay, edits with [`Tracking::update_if`]).
    pub fn update_if_after_nonce(
        &self,
        from: &AgencyCode,
        message_id: &str,
        nonce: &NonceUse,
        edit: impl Fn(&mut EnvelopeRecord) -> bool,
    ) -> Result<(NonceFound, Option<Option<bool>>), StoreError> {
        let mut edit = Edit::new(edit);
        let (found, updated) = self.store.envelopes().fetch_and_update_after_insert(
            &self.store.nonces(),
            nonce.key(),
            nonce.value(),
            record_key(from, message_id),
            |old| edit.apply(old),
        )?;
        match updated {
            Some(_) => Ok((found, Some(edit.outcome()?))),
            None => Ok((found, None)),
        }
    }
}

/// An edit of a record run through a fetch-and-update (perhaps more than
/// once): whether the last run applied, and why it could not run.
struct Edit<F> {
    edit: F,
    found: Option<bool>,
    failure: Option<codec::CodecError>,
}

impl<F: Fn(&mut EnvelopeRecord) -> bool> Edit<F> {
    fn new(edit: F) -> Self {
        Self {
            edit,
            found: None,
            failure: None,
        }
    }

    /// The value to write for record `old` (unchanged when the edit does
    /// not apply or fails).
    fn apply(&mut self, old: Option<&[u8]>) -> Option<Vec<u8>> {
        // What a run that lost its swap saw does not count.
        (self.found, self.failure) = (None, None);
        let old = old?;
        match codec::decode::<EnvelopeRecord>(old) {
            Ok(mut rec) => {
                let applied = (self.edit)(&mut rec);
                self.found = Some(applied);
                if !applied {
                    return Some(old.to_vec());
                }
                match codec::encode(&rec) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.failure = Some(e);
                        Some(old.to_vec())
                    }
                }
            }
            Err(e) => {
                self.failure = Some(e);
                Some(old.to_vec())
            }
        }
    }

    /// `None`: no record; else whether the edit applied.
    fn outcome(self) -> Result<Option<bool>, StoreError> {
        match self.failure {
            Some(e) => Err(e.into()),
            None => Ok(self.found),
        }
    }
}

#[cfg(test)]
mod final_tests {
    use super::*;

    use crate::core::timeline::StatusCode;
    use DeliveryState as S;

    #[test]
    fn offline_bounces_are_not_final_and_late_statuses_do_not_reopen() {
        let c = AgencyCode::parse("A").unwrap();
        let mut t = DestTrack::new(c.clone(), 0, S::Accepted, None, "");
        t.push(1, S::Queued, None, "");
        t.push(2, S::Bounced, Some(Reason::DestinationOffline), "");
        assert!(!t.is_final(), "still in the inbox");
        t.push(3, S::Bounced, Some(Reason::MaxAttempts), "");
        t.push(4, S::Status(StatusCode::Accepted), None, "");
        assert!(t.is_final(), "a later status does not reopen it");
        let mut d = DestTrack::new(c, 0, S::Accepted, None, "");
        d.push(0, S::Bounced, Some(Reason::DestinationDisabled), "");
        assert!(d.is_final(), "refused at acceptance: never queued");
    }

    #[test]
    fn a_delay_warned_delivery_still_waits_since_it_was_queued() {
        let c = AgencyCode::parse("A").unwrap();
        let mut t = DestTrack::new(c, 0, S::Accepted, None, "");
        assert!(!t.is_waiting());
        t.push(5, S::Queued, None, "attempt 1");
        assert_eq!(t.waiting_since(), Some(5));
        t.push(9, S::DelayWarning, Some(Reason::DestinationOffline), "");
        assert!(t.is_waiting());
        assert_eq!(t.waiting_since(), Some(5));
        t.push(12, S::Status(StatusCode::Accepted), None, "");
        assert!(!t.is_waiting());
        assert_eq!(t.waiting_since(), None);
    }

    /// The record as it was stored when states were plain strings.
    #[derive(Serialize)]
    struct OldEvent {
        at_ms: i64,
        state: String,
        reason: Option<Reason>,
        detail: String,
    }

    #[derive(Serialize)]
    struct OldDestTrack {
        code: AgencyCode,
        state: String,
        events: Vec<OldEvent>,
    }

    #[derive(Serialize)]
    struct OldRecord {
        from: AgencyCode,
        message_id: String,
        subject: String,
        data_type: String,
        priority: u8,
        digest: String,
        size: u64,
        content_type: Option<String>,
        accepted_at_ms: i64,
        deliver_by_ms: Option<i64>,
        not_before_ms: Option<i64>,
        max_attempts: u32,
        dests: Vec<OldDestTrack>,
        bounce_after_ms: Option<u64>,
    }

    #[test]
    fn records_written_with_string_states_still_decode_to_the_same_bytes() {
        let c = AgencyCode::parse("000.00.32.H41").unwrap();
        let names = [
            "accepted",
            "queued",
            "delay-warning",
            "status-16",
            "bounced",
        ];
        let old = OldRecord {
            from: AgencyCode::parse("000.00.31.H41").unwrap(),
            message_id: "M1".into(),
            subject: "s".into(),
            data_type: "edoc".into(),
            priority: 1,
            digest: "sha256=00".into(),
            size: 4,
            content_type: Some("text/plain".into()),
            accepted_at_ms: 1_000,
            deliver_by_ms: Some(9_000),
            not_before_ms: None,
            max_attempts: 5,
            dests: vec![OldDestTrack {
                code: c.clone(),
                state: "bounced".into(),
                events: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| OldEvent {
                        at_ms: 1_000 + i as i64,
                        state: (*n).into(),
                        reason: (*n == "bounced").then_some(Reason::DestinationOffline),
                        detail: format!("d{i}"),
                    })
                    .collect(),
            }],
            bounce_after_ms: Some(60_000),
        };
        let bytes = codec::encode(&old).unwrap();
        let rec: EnvelopeRecord = codec::decode(&bytes).unwrap();
        let d = &rec.dests[0];
        assert_eq!(d.state, S::Bounced);
        assert_eq!(
            d.events.iter().map(|e| e.state).collect::<Vec<_>>(),
            [
                S::Accepted,
                S::Queued,
                S::DelayWarning,
                S::Status(StatusCode::Refused),
                S::Bounced
            ]
        );
        assert_eq!(d.events[4].reason, Some(Reason::DestinationOffline));
        assert_eq!(rec.bounce_after_ms, Some(60_000));
        // Written again, the record is byte for byte what the old code wrote.
        assert_eq!(codec::encode(&rec).unwrap(), bytes);
    }
}

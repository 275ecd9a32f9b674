//! Per-envelope, per-destination timelines and the dedupe record.
//!
//! Invariants: an envelope record exists only once every delivery of the
//! envelope was confirmed by the broker, so its presence means "accepted and
//! handed over"; records hold metadata (ids, codes, digest, size, times,
//! states), never the body.

use serde::{Deserialize, Serialize};

use crate::code::AgencyCode;
use crate::codec;
use crate::reason::Reason;
use crate::store::{Store, StoreError};

/// One timestamped transition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The state entered (`accepted`, `queued`, `bounced`…).
    pub state: String,
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
    /// Current state (the last event's state).
    pub state: String,
    /// Every transition, oldest first.
    pub events: Vec<Event>,
}

impl DestTrack {
    /// A timeline starting with `state` at `at_ms`.
    pub fn new(
        code: AgencyCode,
        at_ms: i64,
        state: &str,
        reason: Option<Reason>,
        detail: &str,
    ) -> Self {
        let mut t = Self {
            code,
            state: String::new(),
            events: Vec::new(),
        };
        t.push(at_ms, state, reason, detail);
        t
    }

    /// Records a transition.
    pub fn push(&mut self, at_ms: i64, state: &str, reason: Option<Reason>, detail: &str) {
        self.state = state.to_owned();
        self.events.push(Event {
            at_ms,
            state: state.to_owned(),
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
    /// Per-destination timelines.
    pub dests: Vec<DestTrack>,
    /// `lgsp-bounce-after` (ms), when the envelope set one.
    #[serde(default)]
    pub bounce_after_ms: Option<u64>,
}

/// The record as written before `bounce_after_ms` existed. bincode is not
/// self-describing, so `#[serde(default)]` alone cannot read a value that
/// lacks the trailing field: such values are read through this shape.
#[derive(Deserialize)]
struct EnvelopeRecordV0 {
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
    dests: Vec<DestTrack>,
}

fn decode_record(bytes: &[u8]) -> Result<EnvelopeRecord, codec::CodecError> {
    match codec::decode::<EnvelopeRecord>(bytes) {
        Ok(r) => Ok(r),
        Err(e) => match codec::decode::<EnvelopeRecordV0>(bytes) {
            Ok(o) => Ok(EnvelopeRecord {
                from: o.from,
                message_id: o.message_id,
                subject: o.subject,
                data_type: o.data_type,
                priority: o.priority,
                digest: o.digest,
                size: o.size,
                content_type: o.content_type,
                accepted_at_ms: o.accepted_at_ms,
                deliver_by_ms: o.deliver_by_ms,
                dests: o.dests,
                bounce_after_ms: None,
            }),
            Err(_) => Err(e),
        },
    }
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

fn pending_key(dest: &AgencyCode, from: &AgencyCode, message_id: &str) -> Vec<u8> {
    let mut k = dest.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&record_key(from, message_id));
    k
}

fn record_key(from: &AgencyCode, message_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(from.as_str().len() + 1 + message_id.len());
    k.extend_from_slice(from.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(message_id.as_bytes());
    k
}

/// Reads and writes envelope records.
#[derive(Clone)]
pub struct Tracking {
    store: Store,
}

impl Tracking {
    /// Over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The record of `(from, message_id)`, if accepted before.
    pub fn get(
        &self,
        from: &AgencyCode,
        message_id: &str,
    ) -> Result<Option<EnvelopeRecord>, StoreError> {
        match self.store.envelopes.get(record_key(from, message_id))? {
            None => Ok(None),
            Some(v) => Ok(Some(decode_record(&v)?)),
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
            let mut k = Vec::new();
            k.extend_from_slice(d.as_str().as_bytes());
            k.push(0);
            k.extend_from_slice(&record_key(from, message_id));
            self.store.by_dest.insert(k, &[])?;
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
                .pending
                .insert(pending_key(d, from, message_id), v.clone())?;
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
            .pending
            .remove(pending_key(dest, from, message_id))?;
        Ok(())
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
            .pending
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
        let mut prefix = dest.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.store.pending.scan_prefix(&prefix) {
            let (k, v) = item?;
            let rest = &k[prefix.len()..];
            let Some(sep) = rest.iter().position(|b| *b == 0) else {
                continue;
            };
            let from = std::str::from_utf8(&rest[..sep])
                .ok()
                .and_then(|s| AgencyCode::parse(s).ok());
            let mid = std::str::from_utf8(&rest[sep + 1..]).ok();
            if let (Some(from), Some(mid)) = (from, mid) {
                out.push((from, mid.to_owned(), codec::decode(&v)?));
            }
        }
        Ok(out)
    }

    /// Writes `rec` (the dedupe marker). Not durable until
    /// [`Store::durable`] resolves.
    pub fn put(&self, rec: &EnvelopeRecord) -> Result<(), StoreError> {
        self.store
            .envelopes
            .insert(record_key(&rec.from, &rec.message_id), codec::encode(rec)?)?;
        Ok(())
    }

    /// Records sent to `dest` with `message_id` (status messages name the
    /// envelope by its id; the source is found here).
    pub fn sources_of(
        &self,
        dest: &AgencyCode,
        message_id: &str,
    ) -> Result<Vec<AgencyCode>, StoreError> {
        let mut prefix = dest.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.store.by_dest.scan_prefix(&prefix) {
            let (k, _) = item?;
            let rest = &k[prefix.len()..];
            let Some(sep) = rest.iter().position(|b| *b == 0) else {
                continue;
            };
            if &rest[sep + 1..] == message_id.as_bytes() {
                if let Some(code) = std::str::from_utf8(&rest[..sep])
                    .ok()
                    .and_then(|s| AgencyCode::parse(s).ok())
                {
                    out.push(code);
                }
            }
        }
        Ok(out)
    }

    /// Every record, newest first, up to `limit`, filtered by `keep`.
    pub fn list(
        &self,
        limit: usize,
        keep: impl Fn(&EnvelopeRecord) -> bool,
    ) -> Result<Vec<EnvelopeRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.store.envelopes.iter() {
            let (_, v) = item?;
            let rec = decode_record(&v)?;
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
        let mut found = false;
        let mut failure = None;
        self.store
            .envelopes
            .fetch_and_update(record_key(from, message_id), |old| {
                let old = old?;
                match decode_record(old) {
                    Ok(mut rec) => {
                        edit(&mut rec);
                        found = true;
                        match codec::encode(&rec) {
                            Ok(v) => Some(v),
                            Err(e) => {
                                failure = Some(e);
                                Some(old.to_vec())
                            }
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        Some(old.to_vec())
                    }
                }
            })?;
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(found),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_bounce_after_existed_still_read() {
        let code = AgencyCode::parse("A1").unwrap();
        let dests = vec![DestTrack::new(code.clone(), 5, "accepted", None, "")];
        // The old shape, field for field.
        let old = (
            code.clone(),
            "m1".to_owned(),
            "s".to_owned(),
            "edoc".to_owned(),
            1u8,
            "d".to_owned(),
            3u64,
            None::<String>,
            5i64,
            None::<i64>,
            dests.clone(),
        );
        let rec = decode_record(&codec::encode(&old).unwrap()).unwrap();
        assert_eq!((rec.message_id.as_str(), rec.bounce_after_ms), ("m1", None));
        assert_eq!(rec.dests, dests);
        let new = EnvelopeRecord {
            bounce_after_ms: Some(3000),
            ..rec
        };
        assert_eq!(decode_record(&codec::encode(&new).unwrap()).unwrap(), new);
    }
}

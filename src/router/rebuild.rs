//! A held copy whose envelope record is gone: the record is rebuilt from the
//! copy itself, so that the copy is still delivered when due.
//!
//! A copy in a delay bucket (deferred, or a retry waiting for its backoff)
//! carries the source's body and every header the source signed. When the
//! store was lost while copies were held, the copy that comes back finds no
//! record. It is not dropped: the hub takes the source's message back out of
//! the copy (the hub's own headers removed, routing key
//! `envelope.<from>`), checks the source's signature with the source's key
//! in the registry (as restored by the operator) and the body against
//! `lgsp-digest` (an RSA signature with the source's public key, whatever
//! access key it names; an HMAC one with the very access key and secret that
//! made it), re-reads the envelope's fields (so `lgsp-deliver-by`,
//! `lgsp-max-attempts` and the priority still apply) and writes a minimal
//! record: the envelope's fields, accepted at the copy's `lgsp-accepted-at`,
//! one destination track per copy seen (marked [`REBUILT`] in its first
//! event), indexed for status messages and swept for its deadline. From
//! then on the copy goes through the ordinary steps of [`super::holding`].
//!
//! Invariants: nothing is delivered on a record rebuilt from a copy whose
//! source signature does not verify with a key the registry holds for that
//! source; a copy the hub cannot rebuild is parked in `undelivered` (reason
//! `record-lost`), logged, counted (`truc_held_without_record_total`) and
//! reported to its source when the source is registered — never dropped
//! silently. A rebuilt record only gains destinations that the envelope's
//! own `lgsp-to` names. The caller holds the envelope's lock.

use crate::core::auth::{verify, Alg};
use crate::core::canonical::canonical_form;
use crate::core::code::AgencyCode;
use crate::core::envelope::{Kind, Payload, Signed, HUB_HEADERS};
use crate::core::message::Message;
use crate::core::time::parse_rfc3339;
use crate::core::timeline::DeliveryState;
use crate::router::{Router, RouterError};
use crate::state::tracking::{DestTrack, EnvelopeRecord};

/// Detail of the first event of a destination track rebuilt from a copy.
pub(crate) const REBUILT: &str = "record rebuilt from a held copy after the store lost it";

/// Whether `rec` was rebuilt from held copies (it then gains the
/// destinations of later copies).
pub(super) fn is_rebuilt(rec: &EnvelopeRecord) -> bool {
    rec.dests
        .iter()
        .any(|d| d.events.first().is_some_and(|e| e.detail == REBUILT))
}

/// The source's message inside a delivery copy: without the hub's headers,
/// the broker's and truc's bookkeeping, with its ingress routing key.
fn original(copy: &Message, from: &AgencyCode) -> Message {
    let mut m = copy.clone();
    m.strip_bookkeeping();
    for h in HUB_HEADERS {
        m.headers.remove(h);
    }
    m.exchange = String::new();
    m.routing_key = format!("envelope.{from}");
    m
}

impl Router {
    /// The record of `(from, mid)` rebuilt from `copy` for `dest` (added to
    /// `existing` when that is a rebuilt record without `dest`), written and
    /// durable; or why it cannot be. The caller holds the envelope's lock.
    pub(super) async fn rebuild(
        &self,
        copy: &Message,
        (from, dest, mid): (&AgencyCode, &AgencyCode, &str),
        existing: Option<EnvelopeRecord>,
        now: i64,
    ) -> Result<Result<EnvelopeRecord, String>, RouterError> {
        let Some(src) = self.registry.get(from) else {
            return Ok(Err(format!(
                "the record is lost and the source {from} is not registered: its signature cannot be checked"
            )));
        };
        let orig = original(copy, from);
        let signed = match Signed::parse(&orig) {
            Ok(s) if s.kind == Kind::Envelope && &s.from == from && s.message_id == mid => s,
            Ok(_) => return Ok(Err("the copy is not the source's envelope".into())),
            Err(r) => return Ok(Err(format!("the copy does not parse: {}", r.detail))),
        };
        // An RSA signature is checked with the source's public key, whatever
        // access key it names (a re-registered agency gets a new one); an
        // HMAC signature needs the very key that made it.
        let secret = match signed.alg {
            Alg::RsaSha256 => String::new(),
            Alg::HmacSha256 | Alg::HmacSha1 => {
                match src.agency.keys.iter().find(|k| k.access_key == signed.key) {
                    Some(k) => k.secret.clone(),
                    None => {
                        return Ok(Err(format!(
                            "the record is lost and the key {} that signed the envelope is no longer registered for {from}",
                            signed.key
                        )))
                    }
                }
            }
        };
        let verified = canonical_form(&orig, &orig.routing_key)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                verify(
                    signed.alg,
                    &secret,
                    src.public_key.as_ref(),
                    c.as_bytes(),
                    &signed.signature,
                )
                .map_err(|e| e.to_string())
            });
        if let Err(e) = verified {
            return Ok(Err(format!(
                "the record is lost and the source's signature does not verify: {e}"
            )));
        }
        let policies = self.policies();
        let fields = match Payload::parse(Kind::Envelope, &orig, policies.default_priority) {
            Ok(Payload::Envelope(f)) => f,
            Ok(_) => return Ok(Err("the copy is not an envelope".into())),
            Err(r) => return Ok(Err(format!("the copy does not parse: {}", r.detail))),
        };
        // Content in an upload space: the space's digest stands for the body's.
        let content_digest = match copy.header(crate::core::envelope::CONTENT_SPACE) {
            None => Some(crate::core::auth::body_digest(&copy.body)),
            Some(id) => self
                .spaces()
                .and_then(|s| s.get(id).ok().flatten())
                .filter(|s| s.owner == *from && copy.body.is_empty())
                .map(|s| s.digest),
        };
        if content_digest.as_deref() != Some(fields.digest.as_str()) {
            return Ok(Err("the content does not match lgsp-digest".into()));
        }
        if !fields.to.contains(dest) {
            return Ok(Err(format!("{dest} is not in the envelope's lgsp-to")));
        }
        let accepted_at_ms = copy
            .header("lgsp-accepted-at")
            .and_then(|t| parse_rfc3339(t).ok())
            .unwrap_or(now);
        let track = DestTrack::new(
            dest.clone(),
            accepted_at_ms,
            DeliveryState::Accepted,
            None,
            REBUILT,
        );
        let rec = match existing {
            Some(mut rec) => {
                rec.dests.push(track);
                rec
            }
            None => EnvelopeRecord {
                from: from.clone(),
                message_id: mid.to_owned(),
                subject: fields.subject.clone(),
                data_type: fields.data_type.clone(),
                priority: fields.priority.code(),
                digest: fields.digest.clone(),
                size: copy.body.len() as u64,
                content_type: copy.content_type.clone(),
                accepted_at_ms,
                deliver_by_ms: fields.deliver_by_ms,
                not_before_ms: fields.not_before_ms,
                max_attempts: fields
                    .max_attempts
                    .unwrap_or_else(|| policies.delivery(fields.priority, from).max_attempts),
                dests: vec![track],
                bounce_after_ms: fields.bounce_after.map(|d| d.as_millis() as u64),
            },
        };
        self.tracking.index(from, mid, std::slice::from_ref(dest))?;
        if let Some(d) = rec.deliver_by_ms {
            self.tracking.add_deadline(d, from, mid)?;
        }
        self.tracking.put(&rec)?;
        self.store.durable().await?;
        Ok(Ok(rec))
    }
}

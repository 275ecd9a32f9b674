//! The one signed-delivery builder: every message the hub puts into a
//! destination's inbox — a first delivery, a released deferred copy, a retry,
//! a recall request, an operator's retry of a parked delivery — is finished
//! here, by [`Delivery::signed_for`] through [`Router::deliver_to`].
//!
//! Invariants: a delivery keeps the body and every header the source signed;
//! the hub adds `lgsp-dest` (and, on a first delivery, `lgsp-accepted-at`,
//! `lgsp-attempt`, `lgsp-content-space` when the content is in an upload
//! space, the AMQP priority and expiration); `lgsp-hub-key` names
//! the destination's signing key ([`crate::state::registry::Registry::signing_key`]:
//! the key it last authenticated with while that is valid, else its newest)
//! and `lgsp-hub-signature` is computed with its secret over the canonical
//! form with routing key `deliver.<dest>` (covering `lgsp-hub-key`). The key
//! is read from the registry when the copy is finished (so a key rotated
//! while a copy was held, parked or retried is honoured); copies coming back
//! from the broker lose the broker's and truc's bookkeeping headers first;
//! an operator's retry of a parked copy carries `lgsp-attempt` one higher
//! than the parked copy (it may already have reached the inbox).

use crate::core::code::AgencyCode;
use crate::core::envelope::EnvelopeFields;
use crate::core::message::Message;
use crate::core::notice::{hub_sign, HubKey};
use crate::core::time::now_ms;
use crate::core::topology::Topology;
use crate::router::Router;

/// The `lgsp-attempt` a copy carries (1 when absent or unreadable).
pub(super) fn attempt_of(m: &Message) -> u32 {
    m.header("lgsp-attempt")
        .and_then(|a| a.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1)
}

/// A delivery being built; finished by [`Delivery::signed_for`].
#[derive(Debug, Clone)]
pub(super) struct Delivery(Message);

/// The AMQP expiration (ms, as text) of a delivery due by `deliver_by_ms`.
fn expiration(deliver_by_ms: Option<i64>, now: i64) -> Option<String> {
    deliver_by_ms.map(|t| (t - now).max(1).to_string())
}

impl Delivery {
    /// The first delivery of the source's envelope `msg`: its body and
    /// headers, plus `lgsp-accepted-at`, `lgsp-attempt`, the AMQP priority of
    /// its `lgsp-priority` and an expiration at its deadline.
    pub(super) fn first(
        msg: &Message,
        fields: &EnvelopeFields,
        accepted_at: &str,
        attempt: &str,
        now: i64,
    ) -> Self {
        let mut d = msg.clone();
        d.priority = Some(fields.priority.amqp_priority());
        d.expiration = expiration(fields.deliver_by_ms, now);
        d.set_header("lgsp-accepted-at", accepted_at);
        d.set_header("lgsp-attempt", attempt);
        if let Some(space) = &fields.space {
            d.set_header(crate::core::envelope::CONTENT_SPACE, space.as_str());
        }
        Self(d)
    }

    /// A delivery copy that came back from the broker (a delay bucket, an
    /// inbox's dead letters, the `undelivered` queue), without the broker's
    /// and truc's bookkeeping headers.
    pub(super) fn again(copy: &Message) -> Self {
        let mut d = copy.clone();
        d.strip_bookkeeping();
        Self(d)
    }

    /// A message the hub wrote itself for the destination (a recall request).
    pub(super) fn request(m: Message) -> Self {
        Self(m)
    }

    /// Sets `lgsp-attempt`.
    pub(super) fn attempt(mut self, n: u32) -> Self {
        self.0.set_header("lgsp-attempt", n.to_string());
        self
    }

    /// Expires in the inbox at `deliver_by_ms` (none without a deadline).
    pub(super) fn expires(mut self, deliver_by_ms: Option<i64>, now: i64) -> Self {
        self.0.expiration = expiration(deliver_by_ms, now);
        self
    }

    /// No AMQP expiration.
    pub(super) fn never_expires(mut self) -> Self {
        self.0.expiration = None;
        self
    }

    /// The delivery addressed to `dest`'s inbox (`<prefix>deliver`, routing
    /// key `dest`, `lgsp-dest`) and signed with `key` over routing key
    /// `deliver.<dest>`. Without a key (the destination is no longer
    /// registered) the copy keeps the signature it had.
    pub(super) fn signed_for(
        self,
        topology: &Topology,
        dest: &str,
        key: Option<HubKey<'_>>,
    ) -> Message {
        let mut d = self.0;
        d.exchange = topology.name("deliver");
        d.routing_key = dest.to_owned();
        d.set_header("lgsp-dest", dest);
        if let Some(key) = key {
            hub_sign(&mut d, &format!("deliver.{dest}"), key);
        }
        d
    }
}

impl Router {
    /// Finishes `d` for `dest`, signed with the destination's signing key
    /// from the registry (the key it last used while valid, else its newest).
    pub(super) fn deliver_to(&self, d: Delivery, dest: &AgencyCode) -> Message {
        let key = self.registry.signing_key(dest, now_ms());
        d.signed_for(
            &self.topology,
            dest.as_str(),
            key.as_ref().map(|k| HubKey::new(&k.access_key, &k.secret)),
        )
    }

    /// An operator's retry of a delivery parked in `undelivered`: back to
    /// the inbox of `dest` (its `lgsp-dest`), without bookkeeping headers or
    /// expiration (a fresh TTL would expire it again at once if the deadline
    /// passed; the router's timers still apply), signed with the
    /// destination's signing key.
    pub(crate) fn parked_retry(&self, copy: &Message, dest: &str) -> Message {
        // It may already have reached the inbox (an expired copy, or a retry
        // repeated after a crash): always marked as a possible repeat.
        let d = Delivery::again(copy)
            .never_expires()
            .attempt(attempt_of(copy) + 1);
        match AgencyCode::parse(dest) {
            Ok(code) => self.deliver_to(d, &code),
            Err(_) => d.signed_for(&self.topology, dest, None),
        }
    }
}

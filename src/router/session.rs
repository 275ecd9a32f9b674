//! A gateway session request (routing key `session.<from>`, sent over HTTPS
//! only): checked exactly as an ingress message is, through the same steps
//! (sender, key, signature, agency enabled, clock, nonce, digest), and
//! answered at once.
//!
//! Invariants: a request that would be refused on AMQP is refused here for
//! the same reason; a granted session names the agency and the access key
//! that signed the request; nothing is published (the gateway answers the
//! caller), and the nonce is used up like any other.

use crate::core::code::AgencyCode;
use crate::core::envelope::{Payload, Refusal};
use crate::core::message::Message;
use crate::core::reason::Reason;
use crate::core::time::now_ms;
use crate::router::{Router, RouterError};

/// What a valid session request proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionGrant {
    /// The agency that signed it.
    pub agency: AgencyCode,
    /// The access key it signed with.
    pub access_key: String,
}

/// Why a session request is refused.
#[derive(Debug, Clone)]
pub enum SessionRefused {
    /// Its sender could not be authenticated (stage A: unreadable, unknown
    /// key, bad signature): the caller is told nothing more.
    Unauthenticated(Refusal),
    /// Its sender is authenticated, and may be told why (stage B).
    Refused(Refusal),
}

impl Router {
    /// Checks a session request `msg`: the grant, or why it is refused.
    pub fn open_session(
        &self,
        msg: &Message,
    ) -> Result<Result<SessionGrant, SessionRefused>, RouterError> {
        let now = now_ms();
        let auth = match self.authenticate(msg, now)? {
            Ok(a) => a,
            Err(refusal) => return Ok(Err(SessionRefused::Unauthenticated(refusal))),
        };
        match self.check(&auth, msg, now, None, false)? {
            Ok((Payload::Session(_), _)) => Ok(Ok(SessionGrant {
                agency: auth.sender.agency.code.clone(),
                access_key: auth.signed.key.clone(),
            })),
            Ok(_) => Ok(Err(SessionRefused::Refused(Refusal::new(
                Reason::Malformed,
                "a session request is signed for routing key session.<from>",
            )))),
            Err(refusal) => Ok(Err(SessionRefused::Refused(refusal))),
        }
    }
}

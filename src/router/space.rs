//! The upload space an envelope's content is in (`lgsp-space`, or a body
//! the gateway kept in a space): checked with the envelope's other fields
//! (B8), bound to the envelope only once nothing else can refuse it (after
//! the repeat and rate steps, under its routing claim), and released once
//! no destination may still receive it.
//!
//! Invariants: an envelope whose content is in a space has an empty body;
//! the space is the source's, complete, and its content's digest is the
//! envelope's `lgsp-digest` (so the source's signature covers the content);
//! a space serves one envelope; every refusal names what is wrong without
//! telling whether another agency's space exists.

use crate::core::envelope::EnvelopeFields;
use crate::core::envelope::Refusal;
use crate::core::message::Inbound;
use crate::core::reason::Reason;
use crate::core::text::Escaped;
use crate::router::ingress::Authenticated;
use crate::router::{Router, RouterError};
use crate::state::spaces::{SpaceError, Spaces};

/// What a space that cannot serve an envelope of `from` means for it: a
/// refusal, or an error to try again.
fn space_refusal(
    id: &str,
    from: &crate::core::code::AgencyCode,
    e: SpaceError,
) -> Result<Refusal, RouterError> {
    let refusal = |reason, text: String| Ok(Refusal::new(reason, text));
    match e {
        SpaceError::Store(e) => Err(e.into()),
        SpaceError::Unknown => refusal(
            Reason::Malformed,
            format!("lgsp-space {id} names no space of {from}"),
        ),
        SpaceError::Incomplete => refusal(
            Reason::Malformed,
            format!("space {id} is not complete: upload every chunk and complete it first"),
        ),
        SpaceError::Bound(other) => refusal(
            Reason::Malformed,
            format!(
                "space {id} holds the content of envelope {} already; a space serves one envelope",
                Escaped(&other)
            ),
        ),
        e => {
            tracing::warn!(space = %id, error = %e, "space not usable");
            Err(RouterError::Pending(format!(
                "space {id} could not be used: {e}"
            )))
        }
    }
}

impl Router {
    /// Uses `spaces` for envelopes whose content is in a space.
    pub fn set_spaces(&self, spaces: Spaces) {
        let _ = self.spaces.set(spaces);
    }

    /// The upload spaces, when the hub keeps them.
    pub fn spaces(&self) -> Option<&Spaces> {
        self.spaces.get()
    }

    /// Checks the space the envelope's content is in (B8), noting it (and
    /// the content's size) in `fields`; it is bound later
    /// ([`Router::bind_space`]).
    pub(super) fn take_space(
        &self,
        auth: &Authenticated,
        inbound: &Inbound,
        fields: &mut EnvelopeFields,
    ) -> Result<(), Result<Refusal, RouterError>> {
        let refuse = |reason, text: String| Err(Ok(Refusal::new(reason, text)));
        let id =
            match (&inbound.content_space, &fields.space) {
                (Some(a), Some(b)) if a != b => return refuse(
                    Reason::Malformed,
                    "an envelope with lgsp-space has an empty body: its content is in the space"
                        .into(),
                ),
                (Some(id), _) | (None, Some(id)) => id.clone(),
                (None, None) => return Ok(()),
            };
        if !inbound.message.body.is_empty() {
            return refuse(
                Reason::Malformed,
                "an envelope with lgsp-space has an empty body: its content is in the space".into(),
            );
        }
        let Some(spaces) = self.spaces() else {
            return refuse(Reason::Malformed, "this hub keeps no upload spaces".into());
        };
        let from = &auth.signed.from;
        let mid = &auth.signed.message_id;
        // Accepted before: a repeat, which the repeat step answers, even
        // once its space was deleted after delivery.
        match self.tracking.get(from, mid) {
            Ok(Some(rec)) => {
                fields.space = Some(id);
                fields.space_size = Some(rec.size);
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => return Err(Err(e.into())),
        }
        let space = match spaces.usable(&id, from, mid) {
            Ok(s) => s,
            Err(e) => return Err(space_refusal(&id, from, e)),
        };
        if space.digest != fields.digest {
            return refuse(
                Reason::DigestMismatch,
                format!("the content of space {id} does not match lgsp-digest"),
            );
        }
        fields.space = Some(id);
        fields.space_size = Some(space.size);
        Ok(())
    }

    /// Binds the space `fields` names (if any) to the envelope `mid` of
    /// `from`; a refusal when it can no longer be (another envelope took
    /// it meanwhile).
    pub(super) fn bind_space(
        &self,
        from: &crate::core::code::AgencyCode,
        mid: &str,
        fields: &EnvelopeFields,
        now: i64,
    ) -> Result<Result<(), Refusal>, RouterError> {
        let (Some(id), Some(spaces)) = (&fields.space, self.spaces()) else {
            return Ok(Ok(()));
        };
        match spaces.bind(id, from, mid, now) {
            Ok(_) => Ok(Ok(())),
            Err(e) => match space_refusal(id, from, e) {
                Ok(refusal) => Ok(Err(refusal)),
                Err(e) => Err(e),
            },
        }
    }

    /// Deletes the space of the envelope `message_id` of `from` when no
    /// destination may still receive it (after a status, a bounce, an
    /// expiry or a recall; the housekeeping sweep catches the rest). The
    /// deletion runs off the async threads and is not waited for: a
    /// gigabyte's files take a while to remove.
    pub(crate) fn release_space(
        &self,
        from: &crate::core::code::AgencyCode,
        message_id: &str,
        now: i64,
    ) {
        let Some(spaces) = self.spaces().cloned() else {
            return;
        };
        let policy = self.policies().spaces.clone();
        let tracking = self.tracking.clone();
        let (from, message_id) = (from.clone(), message_id.to_owned());
        tokio::task::spawn_blocking(move || {
            match spaces.release(&from, &message_id, &tracking, &policy, now) {
                Ok(Some(why)) => {
                    crate::core::metrics::space_deleted(why.as_str());
                    tracing::info!(from = %from, message_id = %Escaped(&message_id), why = why.as_str(), "upload space deleted");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(from = %from, message_id = %Escaped(&message_id), error = %e, "upload space not released; the sweep tries again");
                }
            }
        });
    }

    /// Deletes every upload space that may go (delivered, orphaned, unused)
    /// and content left without a record; how many went. Blocks on disk.
    pub fn sweep_spaces(&self, now: i64) -> Result<usize, SpaceError> {
        let Some(spaces) = self.spaces() else {
            return Ok(0);
        };
        let policy = self.policies().spaces.clone();
        let (gone, kept) = spaces.sweep(&self.tracking, &policy, now)?;
        crate::core::metrics::spaces_held(kept.len(), kept.iter().map(|s| s.size).sum());
        for (space, why) in &gone {
            crate::core::metrics::space_deleted(why.as_str());
            tracing::info!(space = %space.id, owner = %space.owner, why = why.as_str(), "upload space deleted");
        }
        Ok(gone.len())
    }
}

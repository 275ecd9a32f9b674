//! `/v1/instances`: the `truc serve` instances sharing this hub's store
//! that wrote their record within the last 10 s
//! ([`crate::state::instances`]), with the one holding the leader lease
//! marked ([`crate::state::lease`]).
//!
//! Invariants: the caller's permission is checked first; read-only but for the removal of
//! records gone for over an hour; an instance is marked leader only while
//! the lease it holds has not expired.

use axum::extract::State;
use axum::Json;

use crate::api::caller::require;
use crate::api::types::InstanceView;
use crate::api::{internal, unavailable, ApiError, Hs};
use crate::core::role::Permission;
use crate::core::time::{format_rfc3339, now_ms};
use crate::operator::scope::Caller;

pub(super) async fn list(
    State(hub): Hs,
    caller: Caller,
) -> Result<Json<Vec<InstanceView>>, ApiError> {
    require(&caller, Permission::ViewAll)?;
    let now = now_ms();
    let lease = crate::state::lease::current(&hub.store)
        .map_err(|e| {
            if e.is_retryable() {
                unavailable(e)
            } else {
                internal(e)
            }
        })?
        .filter(|l| l.live_at(now));
    let live = hub.instances.list(now).map_err(|e| {
        if e.is_retryable() {
            unavailable(e)
        } else {
            internal(e)
        }
    })?;
    Ok(Json(
        live.into_iter()
            .map(|i| {
                let term = lease.as_ref().filter(|l| l.holder == i.id).map(|l| l.term);
                InstanceView {
                    started: format_rfc3339(i.started_ms),
                    last_seen: format_rfc3339(i.seen_ms),
                    leader: term.is_some(),
                    term,
                    id: i.id,
                    host: i.host,
                    pid: i.pid,
                    version: i.version,
                    started_ms: i.started_ms,
                    last_seen_ms: i.seen_ms,
                    admin_addr: i.admin_addr,
                }
            })
            .collect(),
    ))
}

//! The context every operator action and admin call runs against: the
//! running hub's configuration, store, registry, topology, router, current
//! broker link, presence book, and this instance's id, lease and role among
//! the instances sharing the store. `truc serve` builds it once.

use std::sync::Arc;

use crate::broker::LinkSlot;
use crate::core::alert_policy::AlertsPolicy;
use crate::core::config::Config;
use crate::core::topology::Topology;
use crate::router::Router;
use crate::state::accounts::AccountBook;
use crate::state::instances::InstanceBook;
use crate::state::lease::{Lease, Role};
use crate::state::presence::PresenceBook;
use crate::state::registry::Registry;
use crate::state::store::Store;

/// Everything a running hub shares.
pub struct Hub {
    /// Configuration.
    pub config: Config,
    /// Store.
    pub store: Store,
    /// Registry.
    pub registry: Registry,
    /// Topology.
    pub topology: Arc<Topology>,
    /// Router.
    pub router: Arc<Router>,
    /// Current broker link.
    pub link: LinkSlot,
    /// Admin bearer token (the break-glass credential, acting as
    /// [`crate::operator::accounts::ADMIN_TOKEN_ACCOUNT`]).
    pub admin_token: String,
    /// Operator accounts.
    pub accounts: AccountBook,
    /// Presence states and connection history.
    pub presence: PresenceBook,
    /// This instance's id.
    pub instance_id: String,
    /// This instance's side of the leader lease.
    pub lease: Arc<Lease>,
    /// The role the leader task last published (for waking on a change).
    pub role: tokio::sync::watch::Receiver<Role>,
    /// The records of the running instances.
    pub instances: InstanceBook,
    /// The alerting policy (`policies/alerts.toml`), replaced on SIGHUP.
    pub alerts: std::sync::RwLock<Arc<AlertsPolicy>>,
}

impl Hub {
    /// Whether this instance may do leader-only work now: it holds the
    /// lease with more than the skew margin left
    /// ([`Lease::role_at`], no store access).
    pub fn leads(&self) -> bool {
        self.lease.role_at(crate::core::time::now_ms()).is_leader()
    }

    /// The alerting policy now.
    pub fn alerts_policy(&self) -> Arc<AlertsPolicy> {
        self.alerts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This instance's role now, as [`Hub::leads`] judges it.
    pub fn role_now(&self) -> Role {
        self.lease.role_at(crate::core::time::now_ms())
    }
}

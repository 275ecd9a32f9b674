//! The context every operator action and admin call runs against: the
//! running hub's configuration, store, registry, topology, router, current
//! broker link and presence book. `truc serve` builds it once.

use std::sync::Arc;

use crate::broker::LinkSlot;
use crate::core::config::Config;
use crate::core::topology::Topology;
use crate::router::Router;
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
    /// Admin bearer token.
    pub admin_token: String,
    /// Presence states and connection history.
    pub presence: PresenceBook,
}

//! `LinkTable`: the live links by peer gateway id. Every message to another gateway looks
//! its link up here, so reads take no lock: they load the current snapshot (an `ArcSwap`).
//! Links come and go rarely; each change copies the map under a writers' mutex and
//! publishes the copy, so a reader never sees a half-made change.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use parking_lot::Mutex;

use super::session::Link;

/// Links by peer gateway id.
pub type Links = HashMap<String, Arc<Link>>;

#[derive(Default)]
pub struct LinkTable {
    current: ArcSwap<Links>,
    /// Serializes changes (read, copy, change, store).
    change: Mutex<()>,
}

impl LinkTable {
    /// The links now (a snapshot; lock-free).
    pub fn load(&self) -> Guard<Arc<Links>> {
        self.current.load()
    }

    /// The link to `gateway_id`, if it is up.
    pub fn get(&self, gateway_id: &str) -> Option<Arc<Link>> {
        self.current.load().get(gateway_id).cloned()
    }

    /// Changes the table with `f` (on a copy, published when `f` returns).
    pub fn change<R>(&self, f: impl FnOnce(&mut Links) -> R) -> R {
        let _one_at_a_time = self.change.lock();
        let mut links = Links::clone(&self.current.load());
        let out = f(&mut links);
        self.current.store(Arc::new(links));
        out
    }
}

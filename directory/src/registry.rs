//! Who is online right now: name → live connection, addresses and last heartbeat. In memory
//! only; the durable name → key binding is in [`crate::store`].

use common::wire::DirectoryEvent;
use common::{KeyId, Name};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, Notify};

/// One online peer.
#[derive(Debug, Clone)]
pub struct Online {
    /// The connection it registered on.
    pub conn: quinn::Connection,
    /// Its key, as proven in the handshake.
    pub key: KeyId,
    /// The addresses it says it listens on.
    pub listen_addrs: Vec<SocketAddr>,
    /// How often it promised to heartbeat.
    pub heartbeat: Duration,
    /// When it was last heard from.
    pub last_seen: Instant,
    /// Wakes its mailbox task when a message is deposited for it.
    pub wake: Arc<Notify>,
    /// Other events for its event stream (introductions).
    pub events: mpsc::Sender<DirectoryEvent>,
}

/// The set of online peers.
///
/// A `std::sync::Mutex`, not Tokio's: no `.await` ever happens while it is held, and every
/// critical section is a map operation.
#[derive(Debug, Default)]
pub struct Registry {
    online: Mutex<HashMap<Name, Online>>,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Name, Online>> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        self.online.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `name` as online on `entry.conn`, returning the entry it replaces, if any.
    pub fn insert(&self, name: Name, entry: Online) -> Option<Online> {
        self.map().insert(name, entry)
    }

    /// Removes `name` if it is still registered on the connection with `stable_id`, so a
    /// replaced connection that closes late cannot remove its successor.
    pub fn remove_if(&self, name: &Name, stable_id: usize) -> bool {
        let mut map = self.map();
        if map
            .get(name)
            .is_some_and(|o| o.conn.stable_id() == stable_id)
        {
            map.remove(name);
            return true;
        }
        false
    }

    /// Notes a heartbeat from `name` on connection `stable_id`.
    pub fn touch(&self, name: &Name, stable_id: usize, now: Instant) {
        if let Some(o) = self.map().get_mut(name) {
            if o.conn.stable_id() == stable_id {
                o.last_seen = now;
            }
        }
    }

    /// The online entry for `name`.
    pub fn get(&self, name: &Name) -> Option<Online> {
        self.map().get(name).cloned()
    }

    /// Takes out every entry `expired` says is gone.
    pub fn take_expired(&self, mut expired: impl FnMut(&Online) -> bool) -> Vec<(Name, Online)> {
        let mut map = self.map();
        let gone: Vec<Name> = map
            .iter()
            .filter(|(_, o)| expired(o))
            .map(|(n, _)| n.clone())
            .collect();
        gone.into_iter()
            .filter_map(|n| map.remove(&n).map(|o| (n, o)))
            .collect()
    }

    /// How many peers are online.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when nobody is online.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

//! Live, verified direct connections to other peers, by name, with how each came about; and the
//! keys of peers we asked the directory to introduce, whose incoming connections are expected.
//! Sending and receiving share it, so one connection carries both directions.

use common::{control::Path, KeyId, Name};
use std::{collections::HashMap, sync::Mutex};
use tokio::sync::Notify;

/// The direct connections of one peer.
#[derive(Debug, Default)]
pub struct Links {
    inner: Mutex<Inner>,
    /// Woken whenever a link is added.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<Name, (quinn::Connection, Path)>,
    expected: HashMap<KeyId, Name>,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live connection to `name` and its path, if any.
    pub fn get(&self, name: &Name) -> Option<(quinn::Connection, Path)> {
        let mut inner = self.lock();
        match inner.live.get(name) {
            Some((c, p)) if c.close_reason().is_none() => Some((c.clone(), *p)),
            Some(_) => {
                inner.live.remove(name);
                None
            }
            None => None,
        }
    }

    /// Records `conn` as the link to `name` unless a live one is already there.
    pub fn insert(&self, name: Name, conn: quinn::Connection, path: Path) {
        {
            let mut inner = self.lock();
            if inner
                .live
                .get(&name)
                .is_some_and(|(c, _)| c.close_reason().is_none())
            {
                return;
            }
            inner.live.insert(name, (conn, path));
        }
        self.changed.notify_waiters();
    }

    /// Expects an incoming connection from `key`, which owns `name` (we asked the directory to
    /// introduce us): such a connection counts as a punched link to `name` at once.
    pub fn expect(&self, key: KeyId, name: Name) {
        self.lock().expected.insert(key, name);
    }

    /// Stops expecting `key`.
    pub fn unexpect(&self, key: &KeyId) {
        self.lock().expected.remove(key);
    }

    /// The name an incoming connection with `key` was expected from.
    pub fn expected(&self, key: &KeyId) -> Option<Name> {
        self.lock().expected.get(key).cloned()
    }

    /// Resolves the next time a link is added. Create it before checking [`Links::get`], so an
    /// insertion in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

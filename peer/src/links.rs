//! Live, verified direct connections to other peers, by name, with how each came about
//! ([`DirectPath`]); and the keys of peers we asked the directory to introduce, whose incoming
//! connections are expected. Sending and receiving share it, so one connection carries both
//! directions.

use common::{wire::PeerInfo, KeyId, Name};
use serde::{Deserialize, Serialize};
use std::{collections::HashMap, net::SocketAddr, sync::Mutex};
use tokio::sync::Notify;

/// How a direct link to a peer came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DirectPath {
    /// On one of the peer's own interface addresses that is not what the directory observes:
    /// the same LAN.
    Lan,
    /// On the address the directory observes, without help: the peer is reachable as is.
    Public,
    /// Only after the directory introduced us and both sides dialed at once (hole punching).
    Punched,
}

impl DirectPath {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            DirectPath::Lan => "lan",
            DirectPath::Public => "public",
            DirectPath::Punched => "punched",
        }
    }

    /// How people would say it, where it is worth saying: a link on the same network, or one
    /// made through NATs. A plain link over the internet, the usual case, goes unsaid.
    pub fn words(self) -> Option<&'static str> {
        match self {
            DirectPath::Lan => Some("same network"),
            DirectPath::Public => None,
            DirectPath::Punched => Some("through NAT"),
        }
    }

    /// How a link made by dialing (or accepted from) `addr` came about, for the peer `info`
    /// describes; `introduced` when the directory introduced us first.
    pub fn classify(addr: SocketAddr, info: &PeerInfo, introduced: bool) -> Self {
        if Some(addr) != info.observed_addr && info.listen_addrs.contains(&addr) {
            DirectPath::Lan
        } else if introduced && !info.listen_addrs.contains(&addr) {
            // A NATed peer's observed address answered only once it dialed us too.
            DirectPath::Punched
        } else {
            DirectPath::Public
        }
    }
}

/// The direct connections of one peer.
#[derive(Debug, Default)]
pub struct Links {
    inner: Mutex<Inner>,
    /// Woken whenever a link is added.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<Name, (quinn::Connection, DirectPath)>,
    expected: HashMap<KeyId, Name>,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live connection to `name` and its path, if any.
    pub fn get(&self, name: &Name) -> Option<(quinn::Connection, DirectPath)> {
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

    /// Every live link.
    pub fn all(&self) -> Vec<quinn::Connection> {
        (self.lock().live.values())
            .filter(|(c, _)| c.close_reason().is_none())
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Records `conn` as the link to `name` unless a live one is already there.
    pub fn insert(&self, name: Name, conn: quinn::Connection, path: DirectPath) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info(observed: &str, listen: &[&str]) -> PeerInfo {
        PeerInfo {
            name: Name::new("c2").expect("name"),
            key: KeyId([0; 32]),
            online: true,
            last_seen_ms: None,
            observed_addr: Some(observed.parse().expect("addr")),
            listen_addrs: listen.iter().map(|a| a.parse().expect("addr")).collect(),
            queued_from_you: 0,
            published: None,
        }
    }

    #[test]
    fn paths_are_classified_by_the_address_that_answered() {
        let natted = info("198.18.0.11:4000", &["198.19.1.2:5000"]);
        assert_eq!(
            DirectPath::classify("198.19.1.2:5000".parse().expect("a"), &natted, false),
            DirectPath::Lan
        );
        assert_eq!(
            DirectPath::classify("198.18.0.11:4000".parse().expect("a"), &natted, false),
            DirectPath::Public
        );
        assert_eq!(
            DirectPath::classify("198.18.0.11:4000".parse().expect("a"), &natted, true),
            DirectPath::Punched
        );
        // A peer without NAT: its observed address is its own, so it is public even late.
        let public = info("198.18.0.20:4000", &["198.18.0.20:4000"]);
        assert_eq!(
            DirectPath::classify("198.18.0.20:4000".parse().expect("a"), &public, true),
            DirectPath::Public
        );
    }
}

//! The peer's one QUIC endpoint. The same UDP socket dials the directory, dials other peers and
//! accepts their connections, so the address the directory observes is the address other peers
//! can reach (what NAT traversal depends on).

use anyhow::{Context, Result};
use common::{defaults::ALPN_PEER, tls, Identity};
use std::net::{IpAddr, SocketAddr};

/// Binds the endpoint on `bind`, ready to accept peer connections.
pub fn bind(identity: &Identity, bind: SocketAddr) -> Result<quinn::Endpoint> {
    let server = tls::server_config(identity, ALPN_PEER)?;
    quinn::Endpoint::server(server, bind).with_context(|| format!("binding UDP {bind}"))
}

/// The addresses other peers may dial to reach `local`: `local` itself when it names one
/// address, or every interface address of its family when it is a wildcard.
pub fn listen_addrs(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let Ok(interfaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    let mut addrs: Vec<SocketAddr> = interfaces
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == local.is_ipv4() && !is_link_local(ip))
        .map(|ip| SocketAddr::new(ip, local.port()))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Live, verified connections to other peers by name, shared by sending and receiving so that
/// one connection carries both directions.
#[derive(Debug, Default)]
pub struct Links {
    map: std::sync::Mutex<std::collections::HashMap<common::Name, quinn::Connection>>,
}

impl Links {
    /// The live connection to `name`, if any.
    pub fn get(&self, name: &common::Name) -> Option<quinn::Connection> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(name) {
            Some(c) if c.close_reason().is_none() => Some(c.clone()),
            Some(_) => {
                map.remove(name);
                None
            }
            None => None,
        }
    }

    /// Records `conn` as the connection to `name` unless a live one is already there.
    pub fn insert(&self, name: common::Name, conn: quinn::Connection) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&name).is_none_or(|c| c.close_reason().is_some()) {
            map.insert(name, conn);
        }
    }

    /// Forgets `conn` if it is the one recorded for `name`.
    pub fn remove(&self, name: &common::Name, conn: &quinn::Connection) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(name)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            map.remove(name);
        }
    }
}

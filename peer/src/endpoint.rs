//! The peer's one QUIC endpoint. The same UDP socket dials the directory, dials other peers and
//! accepts their connections, so the address the directory observes is the address other peers
//! can reach (what NAT traversal depends on).

use anyhow::{Context, Result};
use common::{defaults::ALPN_PEER, tls, Identity};
use std::net::{IpAddr, SocketAddr};

/// Binds the endpoint on `bind`, ready to accept peer connections.
pub fn bind(identity: &Identity, bind: SocketAddr) -> Result<quinn::Endpoint> {
    let server = tls::server_config(identity, ALPN_PEER)?;
    common::socket::endpoint(Some(server), bind).with_context(|| format!("binding UDP {bind}"))
}

/// The addresses other peers may dial to reach `local`: `local` itself when it names one
/// address, or every non-loopback interface address of its family when it is a wildcard.
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
        // Loopback only reaches this host, where the observed address works as well.
        .filter(|ip| ip.is_ipv4() == local.is_ipv4() && !is_link_local(ip) && !ip.is_loopback())
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

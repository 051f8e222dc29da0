//! The UDP socket under a QUIC endpoint, with its buffers sized for QUIC.
//!
//! Both programs bind through [`endpoint`] instead of `quinn::Endpoint::server`, which binds a
//! socket with the operating system's default buffers (see [`SOCKET_BUFFER`] for why that is
//! too small).

use crate::defaults::SOCKET_BUFFER;
use socket2::{Domain, Protocol, Socket, Type};
use std::{io, net::SocketAddr};

/// A QUIC endpoint on a new UDP socket bound to `addr` (see [`bind`]), accepting connections
/// when `server` is given. Must be called inside a tokio runtime.
pub fn endpoint(
    server: Option<quinn::ServerConfig>,
    addr: SocketAddr,
) -> io::Result<quinn::Endpoint> {
    let socket = bind(addr)?;
    let runtime = quinn::default_runtime().ok_or_else(|| io::Error::other("no async runtime"))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket.into(),
        runtime,
    )
}

/// Like [`endpoint`], but the stateless reset tokens it hands out are derived from `secret`
/// instead of from a key made at random for this process. A server restarted with the same
/// secret (its own key) then resets the connections of its previous run at their first packet,
/// and their clients reconnect at once instead of waiting out their idle timeout: the case
/// stateless resets are for (RFC 9000, section 10.3).
pub fn endpoint_with_reset_secret(
    server: Option<quinn::ServerConfig>,
    addr: SocketAddr,
    secret: &[u8],
) -> io::Result<quinn::Endpoint> {
    let socket = bind(addr)?;
    let runtime = quinn::default_runtime().ok_or_else(|| io::Error::other("no async runtime"))?;
    let mut config = quinn::EndpointConfig::new(std::sync::Arc::new(reset_key(secret)));
    config.cid_generator(|| Box::new(RandomCids));
    quinn::Endpoint::new(config, server, socket.into(), runtime)
}

/// Connection ids of 8 random bytes, and any id is taken as possibly ours. quinn's default
/// generator signs its ids with a key made at random for the process, so a restarted server
/// drops the ids of its previous run as forged instead of resetting their connections.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; 8]>())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The key stateless reset tokens are made with, derived from `secret` for that use only.
fn reset_key(secret: &[u8]) -> ring::hmac::Key {
    let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let derived = ring::hmac::sign(&derive, b"p2pchat stateless reset key v1");
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
}

/// A UDP socket bound to `addr` with buffers of [`SOCKET_BUFFER`], or as much of that as the
/// kernel allows: a smaller buffer only costs speed, so a refusal is logged, not an error.
pub fn bind(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(cause = %e, "cannot size the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(cause = %e, "cannot size the UDP send buffer");
    }
    tracing::debug!(
        receive = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
    socket.bind(&addr.into())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctl(name: &str) -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn asks_for_larger_buffers_than_the_default() {
        let ours = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let plain = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("socket");
        let (ours, plain) = (
            ours.recv_buffer_size().expect("size"),
            plain.recv_buffer_size().expect("size"),
        );
        assert!(ours >= plain, "{ours} < {plain}");
        // Where the kernel allows more than its default, we must have got more.
        if let (Some(max), Some(default)) = (sysctl("rmem_max"), sysctl("rmem_default")) {
            if max > default {
                assert!(
                    ours > plain,
                    "{ours} bytes, no more than the default {plain}"
                );
            }
        }
    }

    #[tokio::test]
    async fn an_endpoint_binds_an_ephemeral_port() {
        let ep = endpoint(None, SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        assert_ne!(ep.local_addr().expect("addr").port(), 0);
    }
}

//! What crosses the wire between directories and peers, and who is allowed to send it.
//!
//! Both binaries depend on this crate and nothing else of each other, so every byte one of them
//! writes is described here.
//!
//! # Layout
//!
//! * [`admit`]: who may open a connection, by address: connections per host, and a token bucket
//!   for new ones.
//! * [`defaults`]: ports, ALPN protocol names, timeouts and size caps, each with its reason.
//! * [`name`]: [`Name`], a validated peer name; invalid names cannot be decoded.
//! * [`wire`]: the messages themselves: directory requests and responses, the directory's event
//!   stream, and the frames two peers exchange.
//! * [`framing`]: length-prefixed postcard frames with a hard size cap, over QUIC streams.
//! * [`identity`]: a long-term key and self-signed certificate (rcgen), and [`KeyId`], the
//!   SHA-256 fingerprint of a public key that names an identity.
//! * [`room`]: rooms' names, and the signed, hash-linked log of their membership that every
//!   member replays and checks ([`room::Roster`]).
//! * [`seal`]: end-to-end sealing of mail (HPKE to the recipient's published X25519 key,
//!   signed by the sender's Ed25519 identity), so the directory holds letters it cannot read.
//! * [`socket`]: the UDP socket under each QUIC endpoint, its buffers sized for QUIC.
//! * [`tls`]: rustls configurations for mutual TLS in which trust comes from a pinned [`KeyId`],
//!   not from certificate authorities.
//!
//! # Protocol flow
//!
//! ```text
//! peer                               directory
//!  | -- QUIC + mTLS (ALPN chat-dir/2) -> |   the directory sees the peer's key and address
//!  | -- bi: Register{name,..} --------> |   binds name -> key on first use
//!  | <- bi (opened by directory) ------ |   event stream: DeliverLetter / MailboxIdle ...
//!  | -- EventAck(id) -----------------> |   mailbox entry deleted only now
//!  | -- bi: Lookup / DepositLetter / ... |   requests on a stream, answered in order
//!  | -- QUIC keep-alive every heartbeat  |   three missed: the connection idles out, offline
//!
//! peer c1                            peer c2
//!  | -- QUIC + mTLS (ALPN chat-peer/4) ->|   each checks the other's key against the directory
//!  | -- bi: Chat, Chat, Chat ... -------> |   one long-lived stream per direction, in order
//!  | <- Ack, Ack, Ack ... --------------- |   an Ack is the only proof of delivery
//! ```

#![deny(missing_docs)]

pub mod admit;
pub mod defaults;
pub mod framing;
pub mod identity;
pub mod name;
pub mod room;
pub mod seal;
pub mod socket;
pub mod tls;
pub mod wire;

pub use identity::{Identity, KeyId};
pub use name::Name;

/// Milliseconds since the Unix epoch, the clock every timestamp on the wire uses.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

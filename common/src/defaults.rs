//! Ports, protocol names, timeouts and caps shared by both programs, each with the reason for it.

use std::time::Duration;

/// The directory's UDP port when none is given.
pub const DIRECTORY_PORT: u16 = 9000;

/// ALPN for a peer's connection to the directory. The version lives here: a new protocol gets a
/// new ALPN, so old and new programs refuse each other during the handshake, not mid-stream.
pub const ALPN_DIRECTORY: &[u8] = b"chat-dir/1";

/// ALPN for a direct connection between two peers.
pub const ALPN_PEER: &[u8] = b"chat-peer/3";

/// Largest frame either side accepts. Checked before any allocation.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Largest message body in bytes. Leaves room in a frame for the envelope.
pub const MAX_BODY_LEN: usize = 32 * 1024;

/// Bytes of a file per mailbox part ([`crate::wire::FilePart`]): a part stays well under
/// [`MAX_FRAME_LEN`] with its envelope.
pub const FILE_PART_LEN: usize = 32 * 1024;

/// Largest file sent through the mailbox when the recipient has no direct link, unless the
/// sender sets another limit. Larger files wait for a direct link.
pub const MAILBOX_FILE_MAX: u64 = 8 * 1024 * 1024;

/// How often a peer heartbeats (a QUIC keep-alive) on its directory connection unless told
/// otherwise.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// A peer is offline after this many heartbeat intervals without one.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Longest heartbeat interval that keeps a peer online: the directory closes a connection idle
/// for [`MISSED_HEARTBEATS`] times this, whatever the peer proposed.
pub const HEARTBEAT_MAX: Duration = Duration::from_secs(60);

/// Longest a sender waits for a direct dial plus the receiver's Ack before it falls back to the
/// mailbox.
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest a request to the directory may take before the caller gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Default mailbox quota per recipient: number of held messages.
pub const MAILBOX_QUOTA_MESSAGES: u64 = 10_000;

/// Default mailbox quota per recipient: total body bytes held.
pub const MAILBOX_QUOTA_BYTES: u64 = 64 * 1024 * 1024;

/// Most mailbox messages the directory sends on an event stream before waiting for acks.
pub const DELIVERY_WINDOW: usize = 256;

/// Most direct messages a sender keeps unacknowledged on one chat stream.
pub const SEND_WINDOW: usize = 256;

/// Most connections a directory serves at once.
pub const MAX_CONNECTIONS: u32 = 50_000;

/// QUIC idle timeout of direct links between peers, which send keep-alives at a third of it.
/// (The directory link's idle timeout is three heartbeats; see `tls::server_config`.)
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Receive and send buffer asked for on every QUIC socket. Linux's default (208 KiB) holds
/// well under a millisecond of a fast transfer, so a receiver busy for a moment (hashing,
/// writing to disk) drops datagrams and the sender backs off; QUIC stacks ask for several MiB
/// (quic-go 7 MiB). The kernel caps the request at `net.core.rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

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

/// Default mailbox quota per recipient: total bytes held, each entry counted as stored
/// (encoded), so every field of a message counts, not only its body.
pub const MAILBOX_QUOTA_BYTES: u64 = 64 * 1024 * 1024;

/// Default mailbox quota per (sender, recipient): messages and file parts one sender may have
/// waiting for one recipient. A tenth of [`MAILBOX_QUOTA_MESSAGES`], so one sender cannot fill
/// a mailbox and lock everyone else out of it.
pub const MAILBOX_SENDER_QUOTA_MESSAGES: u64 = 1_000;

/// Default mailbox quota per (sender, recipient), in bytes as stored: room for two files of
/// [`MAILBOX_FILE_MAX`] and their envelopes, a quarter of [`MAILBOX_QUOTA_BYTES`].
pub const MAILBOX_SENDER_QUOTA_BYTES: u64 = 16 * 1024 * 1024;

/// Default cap on what all mailboxes together hold, in bytes as stored: past it, deposits are
/// refused whoever they are for.
pub const STORE_MAX_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// The directory refuses deposits while the disk holding its database has less free space than
/// this, so that a full disk never fails a commit halfway (bindings and removals still go on).
pub const MIN_FREE_DISK: u64 = 256 * 1024 * 1024;

/// Longest file name, in bytes, the directory holds in a mailbox file part: the usual file
/// system limit for one path component. Every other field it stores has a cap too: names
/// ([`crate::name::MAX_NAME_LEN`]), bodies ([`MAX_BODY_LEN`]) and file data ([`FILE_PART_LEN`]).
pub const MAX_FILE_NAME_LEN: usize = 255;

/// Most names one key may hold at a directory; names bound before this limit are kept.
pub const NAMES_PER_KEY: u32 = 4;

/// New names the directory binds per client IP address (per /64 for IPv6) in an hour, all of
/// them at once if saved up. Re-registering a name already held needs none.
pub const NAME_BINDS_PER_IP_PER_HOUR: u32 = 100;

/// A name whose key has not registered it (online or for a short command) for this long may be
/// taken by another key; its mailbox is emptied then.
pub const NAME_EXPIRY: Duration = Duration::from_secs(180 * 24 * 60 * 60);

/// Introductions (hole punching) one key may ask for per minute, all at once if saved up.
pub const INTRODUCTIONS_PER_KEY_PER_MINUTE: u32 = 30;

/// Introductions asked for from one IP address (per /64 for IPv6) per minute, whatever the keys.
pub const INTRODUCTIONS_PER_IP_PER_MINUTE: u32 = 60;

/// Introductions one peer may be sent per minute, whoever asks: each makes it send packets to
/// addresses the asker chose, so it must not become a packet cannon.
pub const INTRODUCTIONS_PER_TARGET_PER_MINUTE: u32 = 30;

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

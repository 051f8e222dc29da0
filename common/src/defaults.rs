//! Ports, protocol names, timeouts and caps shared by both programs, each with the reason for it.

use std::time::Duration;

/// The directory's UDP port when none is given.
pub const DIRECTORY_PORT: u16 = 9000;

/// ALPN for a peer's connection to the directory. The version lives here: a new protocol gets a
/// new ALPN, so old and new programs refuse each other during the handshake, not mid-stream.
/// Version 2 seals mail end to end ([`crate::seal`]).
pub const ALPN_DIRECTORY: &[u8] = b"chat-dir/2";

/// ALPN for a direct connection between two peers. Version 4 goes with the directory's 2.
pub const ALPN_PEER: &[u8] = b"chat-peer/4";

/// The ALPNs of the versions before: servers still accept them for one purpose, to tell an old
/// program in words to upgrade (see [`crate::admit::handshake`]) rather than fail its handshake
/// with an alert it cannot explain.
pub const ALPN_OUTDATED: [&[u8]; 2] = [b"chat-dir/1", b"chat-peer/3"];

/// Most ops of a room's log one answer holds: an op is about 250 bytes encoded, so a page
/// stays well inside a frame.
pub const ROOM_LOG_PAGE: usize = 128;

/// Most ops a room's log holds: joins and leaves of a busy public room add up, and every
/// member replays the log once. The directory refuses more with `RoomFull`.
pub const MAX_ROOM_OPS: u64 = 16_384;

/// Messages a second one member may post in one room, and in one burst: room for any person
/// and for a bot, not for a runaway script that would fill every member's screen and mailbox.
/// The sender's own peer refuses more with a clear error.
pub const ROOM_POSTS_PER_SECOND: u32 = 30;
/// See [`ROOM_POSTS_PER_SECOND`].
pub const ROOM_POSTS_BURST: u32 = 300;
/// What a member takes from one sender in one room, a second and in a burst: twice what that
/// sender's peer lets it post, so only a sender that skipped its own limit is cut, and what it
/// sends over this is dropped unseen.
pub const ROOM_POSTS_TAKEN_PER_SECOND: u32 = 2 * ROOM_POSTS_PER_SECOND;
/// See [`ROOM_POSTS_TAKEN_PER_SECOND`].
pub const ROOM_POSTS_TAKEN_BURST: u32 = 2 * ROOM_POSTS_BURST;

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

/// Most keys a peer may let reach it ([`crate::wire::Reach::Contacts`]): 32 KiB of keys, in
/// a frame well under [`MAX_FRAME_LEN`].
pub const MAX_CONTACTS: usize = 1024;

/// Lookups one key may make per minute, all at once or spread out: enough for a peer that
/// verifies every sender it hears from, few enough that walking a list of guessed names is
/// slow.
pub const LOOKUPS_PER_KEY_PER_MINUTE: u32 = 600;

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

// Limits against abuse: what one connection, one host and strangers can make a program hold.

/// Bytes a remote may send on one stream of a directory connection before they are read: two
/// of the largest frames, one being answered while the next arrives. A stream's requests are
/// answered one batch at a time, so more would only hold more of what a client that does not
/// read its answers sent (quinn's default, 1.25 MB, let 64 streams hold 80 MB).
pub const DIRECTORY_STREAM_WINDOW: u32 = 2 * (MAX_FRAME_LEN as u32 + 4);

/// Bytes a remote may send across all streams of a directory connection before they are read:
/// two full streams. quinn's default is unlimited: four connections that did not read their
/// answers took the directory from 8 MB to 375 MB.
pub const DIRECTORY_CONNECTION_WINDOW: u32 = 2 * DIRECTORY_STREAM_WINDOW;

/// Bytes written on a directory connection and not yet acknowledged: room for deliveries a
/// round trip ahead (5 MB/s at 50 ms). With the windows above, one connection makes the
/// directory hold at most about 512 KiB of stream data (quinn's default send window is 10 MB).
pub const DIRECTORY_SEND_WINDOW: u64 = 256 * 1024;

/// Streams a remote may have open at once on one connection. A peer keeps one request stream
/// to the directory and opens another only for a request that overlaps a slower one; a direct
/// link carries a chat stream each way and a stream per file. Past it, opening a stream waits;
/// nothing fails.
pub const MAX_STREAMS: u32 = 16;

/// Bytes a remote may send on one stream of a direct link before it is read: quinn's default
/// (1.25 MB, 100 Mbit/s over a 100 ms round trip), kept because a file goes over one stream at
/// this window per round trip. Strangers hold it only until [`PEER_VERIFY_TIMEOUT`], and at
/// most [`PEER_UNVERIFIED`] of them at once.
pub const PEER_STREAM_WINDOW: u32 = 1_250_000;

/// Bytes a remote may send across all streams of a direct link before they are read: a full
/// file stream and as much again for the chat stream and another file (quinn's: unlimited).
pub const PEER_CONNECTION_WINDOW: u32 = 2 * PEER_STREAM_WINDOW;

/// Bytes written on a direct link and not yet acknowledged: quinn's default (eight stream
/// windows), kept for the file throughput measured with it. Bulk data goes only to a verified
/// peer, and it is ours.
pub const PEER_SEND_WINDOW: u64 = 8 * PEER_STREAM_WINDOW as u64;

/// Longest the directory waits for a client to take an answer (to open flow control for it)
/// before it resets the stream: a client that stops reading holds the directory's memory no
/// longer than this. As long as a client itself waits for an answer.
pub const ANSWER_TIMEOUT: Duration = REQUEST_TIMEOUT;

/// Most pipelined requests the directory answers in one write. It reads no more of a stream
/// until that write is taken, so what it holds for a client that sends without reading is these
/// answers plus [`DIRECTORY_STREAM_WINDOW`].
pub const MAX_PIPELINED: usize = 64;

/// A connection to the directory must register within this, handshake included, or it is
/// closed: until then it proves nothing and holds a slot. A peer registers right after its
/// handshake.
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one host (an IPv4 address, an IPv6 /64) may hold at the directory at once: the
/// peers behind one office NAT, each with its connection and a command or two.
pub const MAX_CONNECTIONS_PER_IP: u32 = 64;

/// New connections one host may open at the directory per second, sustained: a handshake costs
/// the directory a signature, so this caps what one host spends of its CPU.
pub const NEW_CONNECTIONS_PER_SECOND: u32 = 20;

/// New connections one host may open at the directory at once (the token bucket's size): all
/// of [`MAX_CONNECTIONS_PER_IP`], so the peers behind a NAT reconnect together after an outage.
pub const NEW_CONNECTIONS_BURST: u32 = MAX_CONNECTIONS_PER_IP;

/// Above this share (in percent) of the directory's connection cap, a connection whose address
/// is not validated first gets a stateless Retry: one round trip proves the address before it
/// costs a handshake or counts against a host's limits, so spoofed packets cost nothing.
pub const RETRY_ABOVE_LOAD_PERCENT: usize = 50;

/// Inbound direct connections one host may hold at a peer at once: peers behind one NAT each
/// dial us once per link.
pub const PEER_CONNECTIONS_PER_IP: u32 = 16;

/// Inbound direct connections not yet verified (their first message's sender checked against
/// the directory), all hosts together. Each may hold [`PEER_CONNECTION_WINDOW`] until then, so
/// strangers hold at most 8 × 2.5 MB of a peer, for [`PEER_VERIFY_TIMEOUT`].
pub const PEER_UNVERIFIED: usize = 8;

/// An inbound direct connection must send its first message and have its sender verified
/// within this, handshake included, or it is closed. A sender gives up on a direct link after
/// [`DIRECT_TIMEOUT`]; the rest is room for the directory's answer.
pub const PEER_VERIFY_TIMEOUT: Duration = REQUEST_TIMEOUT;

/// Bytes of held mail read from the store for one refill of a delivery window, decoded at once
/// (at least one entry): 16 of the largest frames, where [`DELIVERY_WINDOW`] entries could be
/// 16 MiB. Read on a blocking thread, not the network's.
pub const MAILBOX_REFILL_BYTES: usize = 1024 * 1024;

/// How long a peer's request to the directory waits for the connection to come back (a
/// directory that restarts, a network that blips) before it fails: long enough for a restart
/// and a few reconnection attempts, short enough for a command a person waits on.
pub const DIRECTORY_WAIT: Duration = Duration::from_secs(30);

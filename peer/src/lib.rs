//! The peer: a user's chat program. It registers its name with the directory, talks to other
//! peers directly over QUIC, and falls back to the directory's mailbox when they cannot be
//! reached.
//!
//! # Layout
//!
//! * [`home`]: the peer's folder: key, certificate, pinned directory keys, control socket.
//! * [`endpoint`]: the one QUIC endpoint (one UDP socket) that dials and accepts.
//! * [`directory_client`]: the connection to the directory: register, keep-alive heartbeats,
//!   reconnection, requests, and the event stream that brings mailbox messages and
//!   introductions.
//! * [`files`]: file transfer on a direct stream of its own: constant memory, hash, resume.
//! * [`links`]: live direct connections by name, and introductions awaited.
//! * [`punch`]: dialing a peer: every candidate address at once, hole punching via introductions.
//! * [`outbox`]: sending: one task per conversation, direct with acks, else the mailbox.
//! * [`inbox`]: receiving: accepts direct streams, checks who is talking, drops duplicates.
//! * [`node`]: a running peer, tying the pieces together behind `send`, `whois`, `events`.
//! * [`control`]: the local socket through which other commands reuse a running peer.
//! * [`session`]: what commands talk to: the own node, or a running one via [`control`].
//! * [`console`]: what the user sees: plain lines, colours, or JSON Lines.
//! * [`history`]: the local history of every conversation (redb, group commit), which also
//!   drops redeliveries across restarts.
//! * [`commands`]: one function per subcommand.
//! * [`chat`]: the conversation: line mode for scripts, or the full-screen [`tui`] on a
//!   terminal.
//! * [`tui`]: the full-screen terminal client (ratatui + crossterm).
//! * [`logsink`]: where logs go: stderr, or a file while the full-screen client owns the
//!   terminal.
//!
//! # Path of one message (c1 → c2)
//!
//! `chat` or `send` calls [`node::Node::send`], which hands the message to the conversation
//! task for c2 in [`outbox`]. That task asks the directory for c2 (`Lookup`), dials c2's
//! endpoint expecting the key the directory holds, and writes the message on its chat stream.
//! On c2, [`inbox`] checks that the connection's key owns the name `c1` (asking its directory),
//! drops the message if its id was seen, shows it, and only then writes `Ack`. If no Ack comes in
//! time, c1's outbox deposits the same message (same id) in the mailbox.

pub mod accept;
pub mod chat;
pub mod cli;
pub mod commands;
pub mod console;
pub mod control;
pub mod directory_client;
pub mod endpoint;
pub mod failure;
pub mod files;
pub mod history;
pub mod home;
pub mod inbox;
pub mod line;
pub mod links;
pub mod logsink;
pub mod node;
pub mod outbox;
pub mod punch;
pub mod service;
pub mod session;
pub mod signals;
pub mod tasks;
pub mod tui;

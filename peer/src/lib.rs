//! The peer: a user's chat program. It registers its name with the directory, talks to other
//! peers directly over QUIC, and falls back to the directory's mailbox when they cannot be
//! reached.
//!
//! # Layout
//!
//! Modules in layers; each uses only modules of the layers below it (`tests/tests/layout.rs`
//! checks that the graph has no cycle).
//!
//! The user's side:
//! * [`commands`]: one function per subcommand, written against a [`session::Session`].
//! * [`chat`]: `peer chat`: line mode for scripts, or the full-screen [`tui`] on a terminal.
//! * [`tui`]: the full-screen terminal client (ratatui + crossterm).
//! * [`web`]: `peer web`: the chat as a page in the browser (axum, a WebSocket), on loopback.
//! * [`line`](mod@line): what a typed line means: a message or a `/command`.
//! * [`console`]: what the user sees: plain lines, colours, or JSON Lines.
//! * [`text`]: text from the network made safe to show: no controls, no reordering.
//! * [`signals`], [`logsink`]: Ctrl-C and SIGTERM; where logs go (stderr, or a file while the
//!   full-screen client owns the terminal).
//!
//! The running peer, as commands see it:
//! * [`session`]: what a command talks to: this process's [`service`], or the running peer's
//!   through [`control`]; the same [`service::Update`]s either way.
//! * [`control`]: the local socket through which short commands use a running peer: its
//!   protocol, server and client.
//! * [`service`]: what the running peer does for any command: sends and records them in the
//!   [`history`], lookups, files, and incoming messages turned into updates.
//! * [`echo`]: our messages, announced to every view but the one they were typed in.
//! * [`history`]: the local history of every conversation (redb, group commit).
//!
//! The node, and its parts:
//! * [`node`]: a running peer: builds the parts, connects what the directory pushes to the
//!   inbox and the dialer, owns every task.
//! * [`outbox`]: sending: one task per recipient driving a [`outbox::conversation`], the state
//!   machine that decides direct or mailbox.
//! * [`files`]: file transfer: sending and receiving on direct streams, mailbox parts,
//!   partial files and downloads.
//! * [`punch`]: dialing a peer across NATs: every candidate address, then an introduction; the
//!   decisions are [`punch::race`]'s, a state machine.
//! * [`accept`]: direct connections from other peers: who is talking, their chat and file
//!   streams, acks.
//! * [`inbox`]: where everything that arrives ends: drops duplicates and what blocked senders
//!   send, marks message requests, hands over, waits until shown.
//! * [`contacts`]: who the user accepted or blocked; what the directory is told about who may
//!   reach us.
//! * [`letters`]: mail through the directory sealed end to end: sealed to the recipient on
//!   deposit; opened, its signature and signer checked, on arrival.
//! * [`held`]: letters signed by a sender's new key, kept until the user trusts it.
//! * [`rooms`]: the rooms we know: each room's signed membership log, checked op by op and
//!   kept; who may post in a room, and to whom a room message goes.
//! * [`safety`]: safety numbers, which two people compare to know they hold each other's keys.
//! * [`links`]: live direct connections by name, and how each came about.
//! * [`directory_client`]: the connection to the directory: register, reconnect, typed
//!   requests, and what the directory pushes (mail, introductions) as a channel.
//! * [`endpoint`], [`home`], [`tasks`], [`failure`], [`target`]: the one QUIC endpoint; the
//!   peer's folder (key, certificate, pinned directory keys); every background task, ended
//!   together; why something failed, for the user; a peer or a room, as the user names it.
//!
//! # Path of one message (c1 → c2)
//!
//! 1. `peer --name c1 send c2 hi`: [`commands`] calls [`session::Session::submit`], which hands
//!    the body to [`service::Service::submit`]: recorded as `sending` in the history, then
//!    given to the [`outbox`].
//! 2. The outbox's task for c2 feeds its [`outbox::conversation::Conversation`] and does what
//!    it asks: a chat stream on the live link to c2 if there is one; else a `Lookup` at the
//!    directory and a dial ([`punch::Dialer::connect`]) that accepts only the key the directory
//!    holds for c2; then it writes the message on the chat stream.
//! 3. On c2, [`accept`] serves the stream: it checks with the directory that the connection's
//!    key owns the name c1, hands the message to the [`inbox`] (which drops an id it has seen),
//!    and writes `Ack` only once c2's [`service`] has recorded it and `listen` has shown it.
//! 4. Back on c1, the ack settles the message: `delivered`, recorded in the history, printed.
//!    If no ack comes in time, the conversation deposits the same message (same id) in c2's
//!    mailbox instead, and the directory pushes it to c2 when it is online: [`node`] hands it
//!    to the inbox, and the directory deletes it once c2 has taken it.

pub mod accept;
pub mod chat;
pub mod cli;
pub mod commands;
pub mod console;
pub mod contacts;
pub mod control;
pub mod directory_client;
pub mod echo;
pub mod endpoint;
pub mod failure;
pub mod files;
pub mod held;
pub mod history;
pub mod home;
pub mod inbox;
pub mod letters;
pub mod line;
pub mod links;
pub mod logsink;
pub mod node;
pub mod outbox;
pub mod punch;
pub mod rooms;
pub mod safety;
pub mod service;
pub mod session;
pub mod signals;
pub mod target;
pub mod tasks;
pub mod text;
pub mod tui;
pub mod web;

//! The local control protocol: how a short `peer` command hands its work to the `peer` process
//! already running for the same name, over a Unix socket in the peer's home folder.
//!
//! The client writes [`ControlRequest`] frames and reads [`ControlResponse`] frames (framed as
//! in [`common::framing`]). Every request gets exactly one answer, except
//! [`ControlRequest::Attach`], after which incoming messages follow as
//! [`ControlResponse::Message`] until the client hangs up, and [`ControlRequest::History`] and
//! [`ControlRequest::SendFile`], answered by a run of frames that ends with a last one. Both
//! ends are the same binary, so the types are the peer's own, with no mapping in between.

use crate::{
    contacts::{Contact, Standing},
    directory_client::Status,
    echo::Echo,
    failure::Failure,
    files::FileSent,
    history::HistoryEntry,
    inbox::{Arriving, ReceivedFile, RoomNotice, Via},
    links::DirectPath,
    outbox::{SendFailed, Sent},
    rooms::{RoomCommand, RoomSent, RoomView},
    target::Target,
};
use common::{
    room::RoomName,
    wire::{ChatMessage, MessageId, PeerInfo},
    KeyId, Name,
};
use serde::{Deserialize, Serialize};

/// A request from a short command to the running peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Who are you? Answered with [`ControlResponse::Hello`].
    Hello,
    /// Send a message; answered with [`ControlResponse::Sent`].
    Send {
        /// Recipient.
        to: Name,
        /// Text.
        body: String,
    },
    /// Look a name up; answered with [`ControlResponse::Whois`].
    Whois {
        /// The name.
        name: Name,
    },
    /// Stream copies of every incoming message from now on.
    Attach,
    /// The local history of the conversation with `with`, the last `limit` entries, oldest
    /// first. Answered with [`ControlResponse::HistoryEntry`] frames, then
    /// [`ControlResponse::HistoryEnd`] (one frame per entry keeps each under the frame cap).
    History {
        /// The other side of the conversation: a peer or a room.
        with: Target,
        /// Most entries to return (the latest ones).
        limit: u32,
    },
    /// Send the file at `path` (absolute, on this machine). Answered by
    /// [`ControlResponse::FileProgress`] updates and notices, then [`ControlResponse::FileSent`].
    SendFile {
        /// Recipient.
        to: Name,
        /// The file.
        path: String,
    },
    /// Trust `key` (or the directory's) as `name`'s; answered with [`ControlResponse::Trusted`].
    Trust {
        /// Whose key.
        name: Name,
        /// The key, if the user gave one.
        key: Option<KeyId>,
    },
    /// Accept or block `name`; answered with [`ControlResponse::Contact`].
    SetContact {
        /// Whom.
        name: Name,
        /// Accepted or blocked.
        standing: Standing,
    },
    /// Where the running peer's directory connection stands: answered with
    /// [`ControlResponse::Directory`] now and at every change, until the client hangs up.
    Directory,
    /// Send a message to a room; answered with [`ControlResponse::RoomSent`].
    SendRoom {
        /// The room.
        room: RoomName,
        /// Text.
        body: String,
    },
    /// A `peer room …` command; answered with [`ControlResponse::Rooms`].
    Room(RoomCommand),
    /// The peers with a conversation in the running peer's history, latest first: answered
    /// with [`ControlResponse::Peers`].
    Peers,
}

/// An answer from the running peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// The running peer's name and key.
    Hello {
        /// Name.
        name: Name,
        /// Key fingerprint.
        key: KeyId,
    },
    /// The outcome of a send.
    Sent(Result<Sent, SendFailed>),
    /// The answer to a lookup, with the direct link the running peer has to it, if any.
    Whois(Result<(PeerInfo, Option<DirectPath>), Failure>),
    /// An incoming message, after [`ControlRequest::Attach`].
    Message {
        /// The message.
        message: ChatMessage,
        /// The room it was said in, if any.
        room: Option<RoomName>,
        /// How it came.
        via: Via,
        /// From a stranger: a message request.
        request: bool,
    },
    /// Something the user should know, such as copies lost to a slow reader.
    Notice(String),
    /// Attached.
    Attached,
    /// One entry of the history asked for with [`ControlRequest::History`], oldest first.
    HistoryEntry(HistoryEntry),
    /// The end of the history asked for; `available` is false when the running peer keeps
    /// none (its database could not be opened).
    HistoryEnd {
        /// Whether the running peer has a history at all.
        available: bool,
    },
    /// How far a file transfer is: bytes the recipient has, of the total.
    FileProgress {
        /// Bytes the recipient has.
        done: u64,
        /// The file's size.
        total: u64,
    },
    /// The outcome of sending a file: delivered directly, or queued in the mailbox (no path).
    FileSent(Result<FileSent, Failure>),
    /// The key now trusted for a name, after [`ControlRequest::Trust`].
    Trusted(Result<(Name, KeyId), Failure>),
    /// The contact as recorded, after [`ControlRequest::SetContact`].
    Contact(Result<Contact, Failure>),
    /// After [`ControlRequest::Attach`]: a recipient took mail of ours from its mailbox.
    Receipt {
        /// Who took it.
        from: Name,
        /// Our messages (and file ids) it took.
        delivered: Vec<MessageId>,
        /// When (the directory's clock, ms since the epoch).
        at_ms: u64,
    },
    /// The outcome of a message to a room.
    RoomSent(Result<RoomSent, Failure>),
    /// After [`ControlRequest::Attach`]: a room's membership, or a member's presence, changed.
    Room(RoomNotice),
    /// The answer to a room command.
    Rooms(Result<Vec<RoomView>, Failure>),
    /// The running peer's directory, and where its connection stands.
    Directory {
        /// The directory's address as the running peer was given it.
        addr: String,
        /// Where the connection stands.
        status: Status,
    },
    /// The peers with a conversation in the history, latest first (empty without one).
    Peers(Vec<Name>),
    /// After [`ControlRequest::Attach`]: one of our messages, sent from another view.
    Echo(Echo),
    /// After [`ControlRequest::Attach`]: how far a file arriving is.
    FileArriving(Arriving),
    /// After [`ControlRequest::Attach`]: a file arrived and is stored.
    File(ReceivedFile),
}

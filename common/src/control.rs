//! The local control protocol: how a short `peer` command hands its work to the `peer` process
//! already running for the same name, over a Unix socket in the peer's home folder.
//!
//! The client writes [`ControlRequest`] frames and reads [`ControlResponse`] frames (framed as
//! in [`crate::framing`]). Every request gets exactly one answer, except
//! [`ControlRequest::Attach`], after which incoming messages follow as
//! [`ControlResponse::Message`] until the client hangs up.

use crate::{
    wire::{ChatMessage, MessageId, PeerInfo},
    KeyId, Name,
};
use serde::{Deserialize, Serialize};

/// How a direct link to a peer came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Path {
    /// On one of the peer's own interface addresses that is not what the directory observes:
    /// the same LAN.
    Lan,
    /// On the address the directory observes, without help: the peer is reachable as is.
    Public,
    /// Only after the directory introduced us and both sides dialed at once (hole punching).
    Punched,
}

impl Path {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Lan => "lan",
            Path::Public => "public",
            Path::Punched => "punched",
        }
    }
}

/// A request from a short command to the running peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Who are you? Answered with [`ControlResponse::Hello`].
    Hello,
    /// Send a message.
    Send {
        /// Recipient.
        to: Name,
        /// Text.
        body: String,
    },
    /// Look a name up.
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
        /// The other side of the conversation.
        with: Name,
        /// Most entries to return (the latest ones).
        limit: u32,
    },
    /// Send the file at `path` (absolute, on this machine) over a direct link. Answered by
    /// [`ControlResponse::FileProgress`] updates, then [`ControlResponse::FileSent`] or
    /// [`ControlResponse::FileFailed`].
    SendFile {
        /// Recipient.
        to: Name,
        /// The file.
        path: String,
    },
}

/// Where one message of the local history stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryState {
    /// We received it.
    Received {
        /// It came from the mailbox.
        via_mailbox: bool,
    },
    /// We sent it and have no outcome yet (or the process ended before it came).
    Sending,
    /// The recipient acknowledged it directly.
    Delivered {
        /// The direct path it went on.
        path: Option<Path>,
    },
    /// The directory holds it in the recipient's mailbox.
    Queued,
    /// It could not be sent.
    Failed {
        /// Why, for the user.
        reason: String,
    },
    /// It was queued, and its recipient has since taken it from the mailbox: the receipt came
    /// back.
    DeliveredLater {
        /// When the recipient took it (the directory's clock, ms since the epoch).
        at_ms: u64,
    },
}

impl HistoryState {
    /// The name used in JSON output.
    pub fn as_str(&self) -> &'static str {
        match self {
            HistoryState::Received { .. } => "received",
            HistoryState::Sending => "sending",
            HistoryState::Delivered { .. } => "delivered",
            HistoryState::Queued => "queued",
            HistoryState::Failed { .. } => "failed",
            HistoryState::DeliveredLater { .. } => "delivered_later",
        }
    }

    /// True for a message we sent.
    pub fn is_ours(&self) -> bool {
        !matches!(self, HistoryState::Received { .. })
    }
}

/// One message of the local history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The message id; `None` for a message of ours that never got one (it failed before
    /// leaving, or the process ended first).
    pub id: Option<MessageId>,
    /// Sender.
    pub from: Name,
    /// Recipient.
    pub to: Name,
    /// When it was sent, by the sender's clock (ms since the epoch).
    pub sent_at_ms: u64,
    /// The text.
    pub body: String,
    /// Where it stands.
    pub state: HistoryState,
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
    Sent {
        /// Message id.
        id: MessageId,
        /// Recipient.
        to: Name,
        /// Delivered directly (true) or queued in the mailbox (false).
        delivered: bool,
        /// The direct path it was delivered on.
        path: Option<Path>,
    },
    /// The answer to a lookup.
    Whois {
        /// What the directory knows.
        info: PeerInfo,
        /// The direct link the running peer has to it, if any.
        path: Option<Path>,
    },
    /// An incoming message, after [`ControlRequest::Attach`].
    Message {
        /// The message.
        message: ChatMessage,
        /// It came from the mailbox.
        via_mailbox: bool,
    },
    /// A send failed; the reason is for the user.
    SendFailed {
        /// Recipient.
        to: Name,
        /// Why.
        reason: String,
    },
    /// A lookup failed; the reason is for the user.
    WhoisFailed {
        /// The name looked up.
        name: Name,
        /// Why.
        reason: String,
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
    /// A file arrived whole at its recipient.
    FileSent {
        /// Recipient.
        to: Name,
        /// Size in bytes.
        size: u64,
        /// BLAKE3.
        hash: [u8; 32],
        /// Bytes the recipient kept from an earlier attempt.
        resumed_from: u64,
        /// The direct path it went over.
        path: Path,
    },
    /// A file could not be sent; the reason is for the user.
    FileFailed {
        /// Recipient.
        to: Name,
        /// Why.
        reason: String,
    },
    /// A file went into the recipient's mailbox (no direct link; small enough).
    FileQueued {
        /// Recipient.
        to: Name,
        /// Size in bytes.
        size: u64,
        /// BLAKE3.
        hash: [u8; 32],
    },
    /// After [`ControlRequest::Attach`]: a recipient took mail of ours from its mailbox.
    Receipt {
        /// Who took it.
        from: Name,
        /// Our messages (and file ids) it took.
        delivered: Vec<MessageId>,
        /// When (the directory's clock, ms since the epoch).
        at_ms: u64,
    },
}

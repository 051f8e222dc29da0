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
}

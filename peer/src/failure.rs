//! Why something the user asked for did not happen, as a type: every interface (plain lines,
//! JSON, the terminal client, a short command behind the control socket) says it its own way,
//! and the terminal client can tell an unknown peer from a full mailbox or an unreachable
//! directory. It crosses the control socket as it is.

use common::{room::RoomName, Name};
use serde::{Deserialize, Serialize};

/// Why a send, a lookup or a file transfer failed. `Display` is the one line for the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Failure {
    /// No peer has registered this name.
    #[error("no peer is named {name}")]
    UnknownPeer {
        /// The name asked for.
        name: Name,
    },
    /// The recipient's mailbox is over its quota.
    #[error("{name}'s mailbox is full; it was not sent")]
    MailboxFull {
        /// The recipient.
        name: Name,
    },
    /// The message is over the body limit.
    #[error("the message is too large: {len} bytes, the limit is {limit}")]
    TooLarge {
        /// Its size in bytes.
        len: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The directory could not be reached, or stopped answering.
    #[error("the directory at {addr} cannot be reached")]
    DirectoryUnreachable {
        /// The address the user gave.
        addr: String,
    },
    /// The directory refused our name: another key holds it.
    #[error("the name {name} is registered to another key")]
    NameTaken {
        /// Our name.
        name: Name,
    },
    /// The directory refused the request for another reason (its code, for the user).
    #[error("the directory refused: {reason}")]
    Refused {
        /// What the directory said.
        reason: String,
    },
    /// The peer program itself gave up: it is shutting down, or the running peer went away.
    #[error("the peer stopped")]
    Stopped,
    /// Anything else (a file that cannot be read, a transfer cut short), said in words.
    #[error("{0}")]
    Other(String),
    /// We have as much waiting in the recipient's mailbox as one sender may.
    #[error("you have too much waiting in {name}'s mailbox; it was not sent")]
    SenderQuotaFull {
        /// The recipient.
        name: Name,
    },
    /// The directory is out of storage (its cap on all mailboxes, or its disk).
    #[error("the directory is out of storage; it was not sent")]
    DirectoryFull,
    /// A file name is over the directory's limit for mailbox files.
    #[error("the file name is too long for the mailbox: the limit is {limit} bytes")]
    FileNameTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The directory refused our name: it breaks the rules for new names.
    #[error("the name {name} is not allowed: it ends with '.', '_' or '-', or has two in a row")]
    BadName {
        /// Our name.
        name: Name,
    },
    /// The directory refused our name: it looks like a name another key holds.
    #[error("the name {name} looks like a name someone else holds")]
    NameLookalike {
        /// Our name.
        name: Name,
    },
    /// The directory refused our name: our key holds as many names as it allows.
    #[error("this key holds as many names as the directory allows; {name} was not taken")]
    TooManyNames {
        /// The name asked for.
        name: Name,
    },
    /// The directory refused: too many requests of this kind from us or our address.
    #[error("the directory is limiting requests like this one")]
    RateLimited,
    /// Nothing listens at the directory's address: its host says the port is closed.
    #[error("no directory is running at {addr}: the port is closed")]
    NoDirectory {
        /// The address the user gave.
        addr: String,
    },
    /// A QUIC server answers at the directory's address, but with another protocol.
    #[error("the server at {addr} is not a p2pchat directory of this version ({version})", version = String::from_utf8_lossy(common::defaults::ALPN_DIRECTORY))]
    NotADirectory {
        /// The address the user gave.
        addr: String,
    },
    /// A message the running peer keeps: it is sent once the directory (or a direct link) is
    /// back, and the short command that asked stopped waiting for it.
    #[error("not sent yet: the directory at {addr} cannot be reached; the running peer keeps the message and sends it when the directory is back")]
    StillWaiting {
        /// The address the user gave.
        addr: String,
    },
    /// The directory now gives another key for a name than the one remembered for it: someone
    /// may be impersonating it (or it made a new key). Nothing is sent until the user trusts
    /// the new key.
    #[error("the key of {name} has changed: {pinned} when first seen, now {presented}; someone may be impersonating {name}, so nothing was sent or accepted")]
    KeyChanged {
        /// The name.
        name: Name,
        /// The key remembered for it.
        pinned: common::KeyId,
        /// The key the directory gives now.
        presented: common::KeyId,
    },
    /// Mail for `name` cannot be sealed to it: it published no encryption key, or the one the
    /// directory gave is not signed by its key. Nothing goes to the mailbox unsealed.
    #[error("cannot seal mail to {name}: {why}")]
    Unsealable {
        /// The recipient.
        name: Name,
        /// Why.
        why: String,
    },
    /// The message has no text.
    #[error("the message is empty; nothing was sent")]
    EmptyMessage,
    /// The message is to ourselves.
    #[error("{name} is you: a message to yourself is not sent")]
    ToSelf {
        /// Our name.
        name: Name,
    },
    /// The directory has no room of this name, or it is private and we are not in it.
    #[error("there is no room {room} (or it is private and you are not in it)")]
    UnknownRoom {
        /// The room.
        room: RoomName,
    },
    /// A room of this name exists already.
    #[error("the room {room} exists already")]
    RoomTaken {
        /// The room.
        room: RoomName,
    },
    /// The room has as many members as a room may.
    #[error(
        "the room {room} is full: a room has at most {} members",
        common::room::MAX_MEMBERS
    )]
    RoomFull {
        /// The room.
        room: RoomName,
    },
    /// We are not a member of the room (we left, were removed, or never joined).
    #[error("you are not a member of {room}")]
    NotAMember {
        /// The room.
        room: RoomName,
    },
    /// We post faster than a member may post in a room.
    #[error("you are posting too fast in {room}: at most {per_second} messages a second, in bursts of at most {burst}; it was not sent")]
    PostingTooFast {
        /// The room.
        room: RoomName,
        /// Messages a second.
        per_second: u32,
        /// Messages in a burst.
        burst: u32,
    },
    /// A change of membership that its room's rules do not allow (only an admin invites and
    /// kicks; only the invited enter a private room), or a log that does not check.
    #[error("{room}: {why}")]
    RoomRefused {
        /// The room.
        room: RoomName,
        /// Why.
        why: String,
    },
}

impl Failure {
    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Failure::UnknownPeer { .. } => {
                "check the spelling; a name exists once its owner has run peer with it"
            }
            Failure::MailboxFull { .. } => {
                "the mailbox empties when its owner comes online; try again later"
            }
            Failure::TooLarge { .. } => "send long text as a file with /file",
            Failure::DirectoryUnreachable { .. } => {
                "is a directory running there, and reachable? see --directory or CHAT_DIRECTORY"
            }
            Failure::NoDirectory { .. } => {
                "is a directory running there? start one with `directory --bind ADDR`, or pass \
                 --directory HOST:PORT / set CHAT_DIRECTORY"
            }
            Failure::NotADirectory { .. } => {
                "check the port given with --directory or CHAT_DIRECTORY: it belongs to \
                 another program"
            }
            Failure::NameTaken { .. } => "pick another --name, or use the home that holds its key",
            Failure::SenderQuotaFull { .. } => {
                "it drains as the recipient takes its mail; try again later"
            }
            Failure::DirectoryFull => "tell the directory's operator; direct messages still work",
            Failure::FileNameTooLong { .. } => "rename the file, or send it while both are online",
            Failure::BadName { .. } => {
                "pick another --name: letters and digits, with single '.', '_' or '-' between"
            }
            Failure::NameLookalike { .. } => {
                "pick another --name that cannot be mistaken for an existing one"
            }
            Failure::TooManyNames { .. } => "use a name this key already holds",
            Failure::RateLimited => "wait a minute and try again",
            Failure::KeyChanged { .. } => {
                "ask them (in person or on a call) whether they made a new key and compare `peer \
                 verify NAME`; then `peer trust NAME` accepts the new key"
            }
            Failure::Unsealable { .. } => {
                "the recipient must run a current peer once, online, to publish its encryption key"
            }
            Failure::UnknownRoom { .. } => {
                "`peer room create ROOM` makes one; a private room's admin must invite you"
            }
            Failure::RoomTaken { .. } => "pick another name, or `peer room join ROOM` if public",
            Failure::RoomFull { .. } => "an admin can `peer room kick ROOM NAME` to make room",
            Failure::NotAMember { .. } => {
                "`peer room join ROOM` for a public room; a private room's admin must invite you"
            }
            Failure::PostingTooFast { .. } => "wait a moment, and send fewer, longer messages",
            Failure::ToSelf { .. } => "`peer history` keeps what you sent others",
            Failure::EmptyMessage
            | Failure::RoomRefused { .. }
            | Failure::Refused { .. }
            | Failure::Stopped
            | Failure::Other(_)
            | Failure::StillWaiting { .. } => return None,
        })
    }

    /// Whether the directory could not be used at all (down, restarting, or not there): what
    /// the running peer waits out instead of failing a message.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            Failure::DirectoryUnreachable { .. }
                | Failure::NoDirectory { .. }
                | Failure::NotADirectory { .. }
        )
    }

    /// Wraps an error with its causes, as `{:#}` prints them.
    pub fn other(e: impl std::fmt::Display) -> Self {
        Failure::Other(format!("{e:#}"))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<Failure>() {
            Ok(failure) => failure,
            Err(e) => Failure::other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_reads_as_one_line_and_the_common_ones_say_what_to_do() {
        let name = Name::new("bob").expect("name");
        let cases = [
            Failure::UnknownPeer { name: name.clone() },
            Failure::MailboxFull { name: name.clone() },
            Failure::DirectoryUnreachable {
                addr: "127.0.0.1:9000".into(),
            },
            Failure::NameTaken { name: name.clone() },
            Failure::SenderQuotaFull { name: name.clone() },
            Failure::DirectoryFull,
            Failure::FileNameTooLong { limit: 255 },
            Failure::BadName { name: name.clone() },
            Failure::NameLookalike { name: name.clone() },
            Failure::TooManyNames { name },
            Failure::RateLimited,
            Failure::NoDirectory {
                addr: "127.0.0.1:9000".into(),
            },
            Failure::NotADirectory {
                addr: "127.0.0.1:9000".into(),
            },
        ];
        let mut hints = std::collections::HashSet::new();
        for failure in cases {
            assert!(!failure.to_string().contains('\n'));
            assert!(hints.insert(failure.hint().expect("a hint")));
        }
    }

    #[test]
    fn a_failure_inside_anyhow_comes_back_out_typed() {
        let failure = Failure::Stopped;
        let wrapped: anyhow::Error = failure.clone().into();
        assert_eq!(Failure::from(wrapped), failure);
        let plain = anyhow::anyhow!("disk").context("reading");
        assert_eq!(Failure::from(plain), Failure::Other("reading: disk".into()));
    }
}

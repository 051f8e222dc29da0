//! The command line.

use crate::{rooms::RoomCommand, target::Target};
use clap::{Parser, Subcommand};
use common::{
    defaults::{DIRECTORY_WAIT, MAILBOX_FILE_MAX},
    room::RoomName,
    KeyId, Name,
};
use std::{net::SocketAddr, path::PathBuf};

/// Peer-to-peer chat: talk to other peers directly over QUIC, with the directory's mailbox when
/// they cannot be reached.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct Cli {
    /// Your name (1-32 characters of a-z 0-9 . _ -).
    #[arg(long, env = "CHAT_NAME", value_parser = parse_name)]
    pub name: Name,

    /// The directory, HOST:PORT; or several nodes of one directory (sharing its key),
    /// comma-separated: the peer uses one, and moves to another when it cannot be reached.
    #[arg(long, env = "CHAT_DIRECTORY", default_value = "127.0.0.1:9000")]
    pub directory: String,

    /// Folder for your key, certificate, pinned directory keys and local state
    /// [default: a folder for NAME under the platform data folder].
    #[arg(long, env = "CHAT_HOME")]
    pub home: Option<PathBuf>,

    /// UDP address of the peer's QUIC endpoint.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub bind: SocketAddr,

    /// Write JSON Lines to stdout, for scripts (before or after the command).
    #[arg(long, global = true)]
    pub json: bool,

    /// Trust the directory only if its key has this fingerprint (64 hex digits), and pin it.
    #[arg(long, value_parser = parse_key)]
    pub pin: Option<KeyId>,

    /// Seconds between heartbeats to the directory.
    #[arg(long, env = "CHAT_HEARTBEAT", default_value_t = 10.0, value_parser = parse_secs)]
    pub heartbeat: f64,

    /// Seconds a direct dial plus delivery may take before the mailbox is used instead.
    #[arg(long, env = "CHAT_DIRECT_TIMEOUT", default_value_t = 3.0, value_parser = parse_secs)]
    pub direct_timeout: f64,

    /// Let anyone reach you directly and see where you are, not only your contacts; messages
    /// from strangers are then not message requests. For bots and services.
    #[arg(long, env = "CHAT_OPEN")]
    pub open: bool,

    /// Seconds a request waits for the directory to come back (a restart, a network blip)
    /// before it fails. A running `listen` or `chat` keeps unsent messages longer: until the
    /// directory or a direct link is back.
    #[arg(long, env = "CHAT_DIRECTORY_WAIT", default_value_t = DIRECTORY_WAIT.as_secs_f64(), value_parser = parse_secs)]
    pub directory_wait: f64,

    /// Largest file, in bytes, sent through the directory's mailbox when the recipient cannot
    /// be reached directly; larger ones wait until it is back.
    #[arg(long, env = "CHAT_MAILBOX_FILE_MAX", default_value_t = MAILBOX_FILE_MAX)]
    pub mailbox_file_max: u64,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Chat with NAME, or in #ROOM: full-screen on a terminal, else one message per input
    /// line. /to NAME, /who, /file PATH, /help, /quit.
    Chat {
        /// Whom to talk to: a name, or a room ('#' and a name; quote it in a shell).
        with: Target,
        /// When the full-screen client rings the terminal bell for a message: in a
        /// conversation not shown, for every message, or never.
        #[arg(long, value_enum, env = "CHAT_BELL", default_value = "other")]
        bell: crate::tui::Bell,
        /// Also ask the terminal for a desktop notification (sender and text) for a message
        /// in a conversation not shown.
        #[arg(long, env = "CHAT_NOTIFY")]
        notify: bool,
    },
    /// Send one message and exit once it is delivered or queued (for a room: once every
    /// member has it or its mailbox does).
    Send {
        /// Recipient: a name, or a room ('#' and a name; quote it in a shell).
        to: Target,
        /// The message.
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Send a file over a direct link, with its hash checked at the end. Sending the same file
    /// again after an interruption continues where it stopped.
    SendFile {
        /// Recipient.
        #[arg(value_parser = parse_name)]
        to: Name,
        /// The file.
        path: PathBuf,
    },
    /// Stay online and print every incoming message until interrupted.
    Listen,
    /// Print and acknowledge the messages waiting in the mailbox, then exit.
    Inbox,
    /// Show what the directory knows about NAME.
    Whois {
        /// The name to look up.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
    /// Accept NAME as a contact: it may reach you directly and see where you are, and its
    /// messages are no longer message requests. Sending to a name accepts it too.
    Accept {
        /// Whom to accept.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
    /// Block NAME: what it sends is dropped unseen, and it cannot reach you directly.
    Block {
        /// Whom to block.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
    /// List the names you accepted or blocked.
    Contacts,
    /// Accept NAME's new key: the one the directory gives now, or KEY (64 hex digits, from
    /// `peer verify` or NAME itself). Until then, a key that changed is refused everywhere.
    Trust {
        /// Whose key.
        #[arg(value_parser = parse_name)]
        name: Name,
        /// The key to trust, instead of the directory's.
        #[arg(long, value_parser = parse_key)]
        key: Option<KeyId>,
    },
    /// Print the safety number of your conversation with NAME: 60 digits that NAME's
    /// `peer verify YOU` prints too when each of you holds the other's real key. Compare them
    /// in person or on a call.
    Verify {
        /// Whom to verify.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
    /// Print the local history of the conversation with NAME (or in #ROOM), oldest first.
    History {
        /// The other side of the conversation: a name, or a room.
        with: Target,
        /// Print only the last N messages.
        #[arg(long)]
        limit: Option<usize>,
        /// Print only the messages whose text contains TEXT (any case).
        #[arg(long, value_name = "TEXT")]
        grep: Option<String>,
    },
    /// Serve the chat as a page in your browser, on this machine only: runs the peer like
    /// `listen` (or uses the one running for NAME). The first line printed is the page's
    /// address, with the token that lets only you in.
    Web {
        /// The TCP address to serve the page on; port 0 picks a free one.
        #[arg(long = "bind", value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Allow an address that is not loopback (other machines can then reach the page;
        /// the token is all that keeps them out, and nothing is encrypted).
        #[arg(long)]
        allow_remote: bool,
        /// Open the page in your browser.
        #[arg(long = "open")]
        open_browser: bool,
    },
    /// Rooms: group conversations, each message sent to every member (directly, or sealed to
    /// its mailbox). Membership is a log signed by the members, which every member checks.
    Room {
        /// What to do.
        #[command(subcommand)]
        action: RoomAction,
    },
}

/// `peer room …`.
#[derive(Subcommand, Debug, Clone)]
pub enum RoomAction {
    /// Make a room, with you as its admin: private (members join by invitation) unless
    /// --public. At most 256 members.
    Create {
        /// The room: '#' and a name.
        #[arg(value_parser = parse_room)]
        room: RoomName,
        /// Anyone may join.
        #[arg(long)]
        public: bool,
    },
    /// Add peers to a room (admins).
    Invite {
        /// The room.
        #[arg(value_parser = parse_room)]
        room: RoomName,
        /// Whom.
        #[arg(required = true, num_args = 1.., value_parser = parse_name)]
        names: Vec<Name>,
    },
    /// Join a public room.
    Join {
        /// The room.
        #[arg(value_parser = parse_room)]
        room: RoomName,
    },
    /// Leave a room: nothing said in it afterwards reaches you.
    Leave {
        /// The room.
        #[arg(value_parser = parse_room)]
        room: RoomName,
    },
    /// Remove a member (admins).
    Kick {
        /// The room.
        #[arg(value_parser = parse_room)]
        room: RoomName,
        /// Whom.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
    /// Print who is in a room, with their role and presence.
    Members {
        /// The room.
        #[arg(value_parser = parse_room)]
        room: RoomName,
    },
    /// Print the rooms you are in.
    List,
}

impl RoomAction {
    /// The command for the running peer.
    pub fn command(&self) -> RoomCommand {
        match self.clone() {
            RoomAction::Create { room, public } => RoomCommand::Create { room, public },
            RoomAction::Invite { room, names } => RoomCommand::Invite { room, names },
            RoomAction::Join { room } => RoomCommand::Join { room },
            RoomAction::Leave { room } => RoomCommand::Leave { room },
            RoomAction::Kick { room, name } => RoomCommand::Kick { room, name },
            RoomAction::Members { room } => RoomCommand::Members { room },
            RoomAction::List => RoomCommand::List,
        }
    }
}

fn parse_room(s: &str) -> Result<RoomName, String> {
    s.parse().map_err(|e| format!("invalid room {s:?}: {e}"))
}

fn parse_name(s: &str) -> Result<Name, String> {
    Name::new(s).map_err(|e| format!("invalid name {s:?}: {e}"))
}

fn parse_key(s: &str) -> Result<KeyId, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 3600"
        )),
    }
}

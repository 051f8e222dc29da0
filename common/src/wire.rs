//! The messages of both protocols. Every type is encoded with postcard inside a frame from
//! [`crate::framing`]. Enums only ever gain variants at the end, so old bytes keep decoding.
//!
//! # Directory protocol (ALPN [`crate::defaults::ALPN_DIRECTORY`])
//!
//! The peer opens one bi-stream per [`DirectoryRequest`] and reads one [`DirectoryResponse`].
//! The first request on a connection must be [`DirectoryRequest::Register`]; the key is the one
//! the peer proved during the TLS handshake. Once registered, the directory opens one bi-stream
//! towards the peer, the event stream, and writes [`DirectoryEvent`]s on it; the peer answers
//! each delivered message with an [`EventAck`] on the same stream, and only then does the
//! directory delete it. The mailbox holds [`Mail`]: chat messages, parts of small files
//! ([`DirectoryRequest::DepositFilePart`]) and receipts. Deleting delivered mail leaves a
//! [`Receipt`] in the sender's mailbox, so the sender learns that its queued messages were
//! taken, whether it is online then or comes back later.
//!
//! # Peer protocol (ALPN [`crate::defaults::ALPN_PEER`])
//!
//! The sender opens one bi-stream per conversation direction and writes [`PeerFrame::Chat`]
//! frames in order; the receiver answers each with [`PeerFrame::Ack`], in the same order.

use crate::{
    room::{Op, RoomName},
    seal::{PublishedKey, Signature},
    KeyId, Name,
};
use serde::{Deserialize, Serialize};
use std::{fmt, net::SocketAddr};

/// A sender-made unique message id. Receivers drop a message whose id they have seen, which
/// makes a retry through the mailbox harmless.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// One chat message, the same on the direct path and in the mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Made by the sender, unique per message.
    pub id: MessageId,
    /// The sender. The directory refuses a deposit whose `from` is not the depositor's name, and a
    /// peer refuses a direct message whose `from` does not own the connection's key.
    pub from: Name,
    /// The recipient.
    pub to: Name,
    /// Sender's wall clock at send time, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// The text, at most [`crate::defaults::MAX_BODY_LEN`] bytes.
    pub body: String,
}

/// A request from a peer to the directory, one per bi-stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryRequest {
    /// Bind `name` to the connection's key (or check the existing binding) and go online.
    Register {
        /// The name to claim.
        name: Name,
        /// Addresses the peer's endpoint listens on, as the peer sees them.
        listen_addrs: Vec<SocketAddr>,
        /// How often the peer heartbeats (QUIC keep-alives), in milliseconds; informational:
        /// the idle timeout the peer proposes is what enforces it.
        heartbeat_ms: u32,
        /// True for a peer that stays to receive (`listen`, `chat`, `inbox`): it is shown
        /// online and mailbox messages are pushed to it. False for a short command that only
        /// sends or looks up: the name's key is checked, but presence does not change.
        online: bool,
        /// The peer's encryption key, signed by its identity key, for others to seal mail to:
        /// the directory checks it belongs to the connection's key and hands it out.
        published: PublishedKey,
    },
    /// Still here. Answered, but peers heartbeat with QUIC keep-alives instead: presence is the
    /// connection's liveness.
    Heartbeat,
    /// Who is `name`, and how can it be reached?
    Lookup {
        /// The name to look up.
        name: Name,
    },
    /// Hold this message until its recipient takes it. Unsealed: refused since chat-dir/2
    /// with [`ErrorCode::Unsealed`]; see [`DirectoryRequest::DepositLetter`].
    Deposit {
        /// The message; `from` must be the depositor.
        message: ChatMessage,
    },
    /// Tell online peer `name` to dial us now (hole punching): the directory sends it our
    /// addresses and key on its event stream, and we dial its addresses at the same time.
    Introduce {
        /// The peer to reach.
        name: Name,
    },
    /// How an introduction ended, for the directory's counters.
    PunchOutcome {
        /// The peer we were introduced to.
        name: Name,
        /// Whether a direct link came up.
        success: bool,
        /// How long it took from the introduction, in milliseconds.
        millis: u32,
    },
    /// Hold this part of a small file until its recipient takes it. Unsealed: refused since
    /// chat-dir/2 with [`ErrorCode::Unsealed`]; see [`DirectoryRequest::DepositLetter`].
    DepositFilePart {
        /// The part; its offer's `from` must be the depositor.
        part: FilePart,
    },
    /// Who may see our addresses and exact presence, and be introduced to us: replaces what the
    /// caller said before. Sent right after `Register` by a peer that stays online, and again
    /// whenever its contacts change; until then the directory treats everyone as a stranger.
    SetReach {
        /// The keys, or anyone.
        reach: Reach,
    },
    /// Hold this sealed letter (a message, or a part of a small file, the mailbox path of a file
    /// when there is no direct link) until its recipient takes it. Parts of one file are
    /// deposited in order.
    DepositLetter {
        /// The letter; its `from` must be the depositor.
        letter: Letter,
    },
    /// Append this op to its room's membership log (a creation makes the room). The caller
    /// must be the op's actor; the directory checks the op against the log as members do
    /// ([`crate::room::Roster::apply`]), stores it, and pushes it to the room's online members
    /// as [`DirectoryEvent::RoomOp`].
    RoomOp {
        /// The signed op.
        op: Op,
    },
    /// The ops of a room's log after version `after` (from its creation if `None`), at most
    /// [`crate::defaults::ROOM_LOG_PAGE`]: answered with [`DirectoryResponse::RoomOps`]. A
    /// private room's log is given to its members only.
    RoomLog {
        /// The room.
        room: RoomName,
        /// The last version the caller has.
        after: Option<u64>,
    },
}

/// Mail sealed end to end (see [`crate::seal`]): the directory reads the routing metadata in
/// the clear, and holds the rest without being able to read or alter it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    /// Made by the sender, unique per letter: the mailbox's dedup and ack key.
    pub id: MessageId,
    /// The sender; the directory refuses a deposit whose `from` is not the depositor.
    pub from: Name,
    /// The recipient.
    pub to: Name,
    /// Sender's wall clock, ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// What it carries, as far as the directory needs to know.
    pub kind: LetterKind,
    /// HPKE's encapsulated key: the sender's ephemeral X25519 public key.
    pub encapped: [u8; 32],
    /// The signed content, sealed: at most [`Letter::max_sealed_len`] bytes. (Encoded as
    /// bytes, not as a sequence of numbers: the same wire bytes, decoded in one copy.)
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

/// What a [`Letter`] carries, as the directory sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LetterKind {
    /// A chat message; its receipt names the letter's id.
    Chat,
    /// A part of a file; the receipt for the part that completes it names the file.
    FilePart {
        /// The file's id ([`FileOffer::id`]).
        file: MessageId,
        /// The part completes the file.
        last: bool,
    },
}

impl Letter {
    /// The largest sealed part a letter of `kind` may have: the largest content of its kind
    /// (a body of [`crate::defaults::MAX_BODY_LEN`], or a part of
    /// [`crate::defaults::FILE_PART_LEN`] with a file name of
    /// [`crate::defaults::MAX_FILE_NAME_LEN`]), with room for its fields, and the seal.
    pub fn max_sealed_len(kind: LetterKind) -> usize {
        use crate::defaults::{FILE_PART_LEN, MAX_BODY_LEN, MAX_FILE_NAME_LEN};
        const FIELDS: usize = 512;
        let content = match kind {
            LetterKind::Chat => MAX_BODY_LEN,
            LetterKind::FilePart { .. } => FILE_PART_LEN + MAX_FILE_NAME_LEN,
        };
        content + FIELDS + crate::seal::SEAL_OVERHEAD
    }

    /// What a recipient that takes it tells the sender: the letter's own id for a message, the
    /// file's for the part that completes a file, nothing for other parts.
    pub fn receipt(&self) -> Option<MessageId> {
        match self.kind {
            LetterKind::Chat => Some(self.id),
            LetterKind::FilePart { file, last: true } => Some(file),
            LetterKind::FilePart { last: false, .. } => None,
        }
    }
}

/// Who a peer lets reach it: see [`DirectoryRequest::SetReach`]. A key it lets reach it (a
/// contact) looks it up and gets its addresses, its exact last-seen time, and introductions to
/// it. Anyone else (a stranger) gets its key and whether it is online, its last-seen time
/// only to the day, no address, and no introduction: a stranger's messages go through the
/// mailbox, where the recipient sees them as message requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reach {
    /// Only these keys, at most [`crate::defaults::MAX_CONTACTS`].
    Contacts(Vec<KeyId>),
    /// Anyone (an open peer: a bot, a service, a LAN party).
    Anyone,
}

impl Reach {
    /// True when `key` may reach the peer.
    pub fn allows(&self, key: &KeyId) -> bool {
        match self {
            Reach::Contacts(keys) => keys.contains(key),
            Reach::Anyone => true,
        }
    }
}

/// The directory's answer to one [`DirectoryRequest`].
// One lives per request stream, briefly: boxing the large variant would cost an allocation on
// the most frequent answer to save a few hundred bytes on the stack.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryResponse {
    /// The name is bound to the caller's key and the caller is online.
    Registered {
        /// The caller's address as the directory sees it.
        observed_addr: SocketAddr,
    },
    /// Heartbeat noted.
    Alive,
    /// The answer to a lookup.
    Peer(PeerInfo),
    /// The message is durably stored.
    Stored,
    /// The request failed.
    Error(ErrorCode),
    /// The introduction was sent to the other peer.
    Introduced,
    /// Noted.
    Noted,
    /// A page of a room's log, oldest first; fewer than a page means the end.
    RoomOps(Vec<Op>),
}

/// What the directory knows about one name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The name.
    pub name: Name,
    /// The key the name is bound to.
    pub key: KeyId,
    /// Connected and heartbeating.
    pub online: bool,
    /// When the directory last heard from it (ms since the epoch), if ever.
    pub last_seen_ms: Option<u64>,
    /// The address the directory observes for its connection, when online.
    pub observed_addr: Option<SocketAddr>,
    /// The addresses it says it listens on, when online.
    pub listen_addrs: Vec<SocketAddr>,
    /// Messages from the caller still waiting in this peer's mailbox. A sender keeps using the
    /// mailbox while this is not zero, so its messages arrive in the order they were sent.
    pub queued_from_you: u32,
    /// The encryption key it published, signed, to seal mail to; `None` for a name whose peer
    /// has not registered since the directory learned to keep them.
    pub published: Option<PublishedKey>,
}

/// Short, stable error codes; they never carry internal details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorCode {
    /// The name is bound to another key.
    #[error("the name is registered to another key")]
    NameTaken,
    /// A request other than Register came before Register.
    #[error("register first")]
    NotRegistered,
    /// No peer has this name.
    #[error("no peer has that name")]
    UnknownPeer,
    /// The recipient's mailbox is full.
    #[error("the recipient's mailbox is full")]
    MailboxFull,
    /// The message body is over [`crate::defaults::MAX_BODY_LEN`].
    #[error("the message is too large")]
    TooLarge,
    /// The message's `from` is not the caller.
    #[error("the message's sender is not you")]
    NotSender,
    /// The request cannot be served now.
    #[error("the directory failed to serve the request")]
    Internal,
    /// Register was sent twice on one connection.
    #[error("already registered")]
    AlreadyRegistered,
    /// The peer is not online.
    #[error("the peer is offline")]
    Offline,
    /// Too many requests of this kind; try later.
    #[error("too many requests; try later")]
    RateLimited,
    /// The name breaks a rule for new names: see [`crate::Name::check_new`].
    #[error("the name is not allowed: it ends with '.', '_' or '-', or has two in a row")]
    BadName,
    /// The name looks like a name another key holds (see [`crate::Name::skeleton`]).
    #[error("the name looks like a name already taken")]
    NameLookalike,
    /// The key holds as many names as the directory allows.
    #[error("this key holds as many names as the directory allows")]
    TooManyNames,
    /// The caller has as much waiting in the recipient's mailbox as one sender may.
    #[error("you have too much waiting in the recipient's mailbox")]
    SenderQuotaFull,
    /// The directory's storage is full: its cap on all mailboxes, or its disk.
    #[error("the directory is out of storage")]
    StoreFull,
    /// A file name is over [`crate::defaults::MAX_FILE_NAME_LEN`] bytes.
    #[error("the file name is too long")]
    FileNameTooLong,
    /// The peer has not accepted the caller as a contact, so it cannot be introduced to it.
    #[error("the peer has not accepted you as a contact")]
    NotAccepted,
    /// The mail was not sealed: this directory holds sealed letters only.
    #[error("the directory takes sealed mail only; upgrade the peer")]
    Unsealed,
    /// The published encryption key is not signed by the connection's key.
    #[error("the encryption key is not signed by your identity key")]
    BadPublishedKey,
    /// No room has this name.
    #[error("no room has that name")]
    UnknownRoom,
    /// A room with this name exists already.
    #[error("a room with that name exists already")]
    RoomTaken,
    /// The op does not follow the room's log, or its signer may not do it.
    #[error("the room refused the change: it is out of date, or you may not make it")]
    RoomRefused,
    /// The room has its most members, or its log its most ops.
    #[error("the room is full")]
    RoomFull,
}

/// Written by the directory on the event stream it opens towards a registered peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryEvent {
    /// A message from the mailbox; answer with [`EventAck::Delivered`].
    Deliver(ChatMessage),
    /// Everything in the mailbox so far has been delivered and acknowledged.
    MailboxIdle,
    /// Peer `name` wants a direct link and is dialing us now: dial it back at `addrs` (its
    /// observed address first), accepting only `key`. No ack.
    Introduction {
        /// Who is dialing.
        name: Name,
        /// Its key.
        key: KeyId,
        /// Where to dial it.
        addrs: Vec<SocketAddr>,
    },
    /// A part of a file from the mailbox; answer with [`EventAck::Delivered`] of its id once
    /// it is written.
    DeliverFilePart(FilePart),
    /// Messages we sent through the mailbox have been taken by their recipient; answer with
    /// [`EventAck::Delivered`] of the receipt's id.
    Receipt(Receipt),
    /// A sealed letter from the mailbox; answer with [`EventAck::Took`] once it was taken, or
    /// with [`EventAck::Delivered`] when it was refused (altered, forged: the directory drops
    /// it all the same, and its sender gets no receipt) or tells no receipt.
    DeliverLetter(Letter),
    /// Letters we sent through the mailbox have been taken by their recipient, which signed
    /// each proof; answer with [`EventAck::Delivered`] of the receipt's id.
    SignedReceipt(SignedReceipt),
    /// A room we are in (or were in until this op) changed. No ack: a peer that missed it
    /// reads the log ([`DirectoryRequest::RoomLog`]).
    RoomOp(Op),
    /// A member of a room we are in came online or went offline. No ack.
    RoomPresence {
        /// The room.
        room: RoomName,
        /// The member.
        name: Name,
        /// Online now, or offline.
        online: bool,
    },
}

/// Written by the peer on the event stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventAck {
    /// The message is in the peer's hands; the directory may delete it.
    Delivered(MessageId),
    /// The letter with this id is in the peer's hands; the directory may delete it, and keeps
    /// `proof` for the letter's sender in a [`SignedReceipt`].
    Took {
        /// The letter.
        id: MessageId,
        /// The peer's signature that it took what the letter's receipt tells
        /// ([`Letter::receipt`]): see [`crate::seal::verify_receipt`].
        proof: Signature,
    },
}

/// One piece of mail a recipient took, and its signature saying so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// What the receipt tells: a message's id, or a file's.
    pub told: MessageId,
    /// The recipient's signature of it.
    pub signature: Signature,
}

/// Made by the directory when a recipient takes letters from its mailbox, from the proofs the
/// recipient signed, and held in the sender's mailbox in turn. The directory can hold it back,
/// but not make one up: the sender checks every proof against the recipient's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    /// Made by the directory; the ack key on the sender's event stream.
    pub id: MessageId,
    /// Who took the mail (the original recipient).
    pub from: Name,
    /// Who sent it (the receipt's recipient).
    pub to: Name,
    /// The recipient's identity key, as it published it; the sender checks that it is the key
    /// it remembers for `from`.
    pub signer: [u8; 32],
    /// What was taken, each with its proof.
    pub delivered: Vec<Proof>,
    /// When the directory saw the recipient's acks, ms since the epoch (directory's clock).
    pub at_ms: u64,
}

/// A frame on a direct stream between two peers. The opener's first frame says what the
/// stream is for: [`PeerFrame::Chat`] starts a chat stream, [`PeerFrame::FileStream`] a file
/// stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// A message, from the stream's opener.
    Chat(ChatMessage),
    /// The receiver has the message with this id.
    Ack(MessageId),
    /// Opens a file stream: the opener offers a file.
    FileStream(FileHeader),
    /// The receiver takes the file and already holds its first `offset` bytes (from an
    /// interrupted transfer): the opener now writes the bytes from `offset` to the end, raw,
    /// then the BLAKE3 hash of the whole file (32 bytes, computed while sending), and finishes
    /// the stream.
    FileAccept {
        /// Bytes the receiver already has.
        offset: u64,
    },
    /// The receiver will not take the file.
    FileRefused(FileRefusal),
    /// The receiver has all the bytes and checked them against the hash that followed them.
    FileDone {
        /// The hash matched and the file is stored.
        ok: bool,
    },
    /// A message to a room, from the stream's opener, on a chat stream like
    /// [`PeerFrame::Chat`] and acknowledged the same way.
    RoomChat(RoomMessage),
}

/// A message to a room, as one member receives it: the sender sends a copy to each member,
/// with the same id, on the chat stream or in a letter of that member's own
/// ([`crate::seal::Content::RoomChat`]). The receiver shows it only if the sender is a member
/// of the room by the receiver's own copy of the room's signed log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessage {
    /// The room.
    pub room: RoomName,
    /// The version of the room's log the sender sent by: a receiver behind it catches up
    /// before it decides whether the sender (or it itself) is a member.
    pub version: u64,
    /// The message, `to` the member that receives this copy.
    pub message: ChatMessage,
}

/// A file one peer offers another on a direct stream. Unlike a [`FileOffer`] it does not carry
/// the file's hash: the sender computes that while sending and writes it after the bytes, so
/// the first byte leaves at once instead of after a pass over the whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// Made by the sender, unique per transfer attempt.
    pub id: MessageId,
    /// The sender; checked like a chat message's.
    pub from: Name,
    /// The recipient.
    pub to: Name,
    /// The file's name as the sender has it. Only a hint: the receiver makes its own safe name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Names the partial file a resumed transfer continues. The sender derives it from what
    /// identifies the file on its side (path, size, modification time), so sending the same
    /// file again resumes; a file changed under the same key fails the hash check instead.
    pub resume_key: [u8; 32],
    /// Sender's wall clock, ms since the Unix epoch.
    pub sent_at_ms: u64,
}

/// A file one peer sends another through the mailbox (see [`FilePart`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// Made by the sender, unique per transfer attempt.
    pub id: MessageId,
    /// The sender; checked like a chat message's.
    pub from: Name,
    /// The recipient.
    pub to: Name,
    /// The file's name as the sender has it. Only a hint: the receiver makes its own safe name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the whole file; also names the partial file a resumed transfer continues.
    pub hash: [u8; 32],
    /// Sender's wall clock, ms since the Unix epoch.
    pub sent_at_ms: u64,
}

/// A slice of a file sent through the mailbox. Parts go in order; the receiver appends each
/// to the partial file named by the offer, as a direct transfer would, and checks the hash
/// after the last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePart {
    /// Made by the sender, unique per part: the mailbox's dedup and ack key.
    pub id: MessageId,
    /// The whole file's description, repeated in every part so that each stands alone.
    pub offer: FileOffer,
    /// Where `data` starts in the file.
    pub offset: u64,
    /// At most [`crate::defaults::FILE_PART_LEN`] bytes (encoded as bytes, like
    /// [`Letter::sealed`]).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl FilePart {
    /// True when the part lies inside the offered file and is at most
    /// [`crate::defaults::FILE_PART_LEN`] bytes.
    pub fn fits_offer(&self) -> bool {
        self.data.len() <= crate::defaults::FILE_PART_LEN
            && self
                .offset
                .checked_add(self.data.len() as u64)
                .is_some_and(|end| end <= self.offer.size)
    }

    /// True for the part that completes the file.
    pub fn is_last(&self) -> bool {
        self.offset.saturating_add(self.data.len() as u64) == self.offer.size
    }
}

/// Made by the directory when a recipient takes mail from its mailbox, and held in the
/// sender's mailbox in turn: the recipient's acks travel back to the sender, even when the
/// sender is offline at the time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Made by the directory; the ack key on the sender's event stream.
    pub id: MessageId,
    /// Who took the mail (the original recipient).
    pub from: Name,
    /// Who sent it (the receipt's recipient).
    pub to: Name,
    /// The chat messages taken, and the file ids ([`FileOffer::id`]) of files taken whole.
    pub delivered: Vec<MessageId>,
    /// When the directory saw the recipient's acks, ms since the epoch (directory's clock).
    pub at_ms: u64,
}

/// One entry of a mailbox, as the directory stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mail {
    /// A chat message.
    Chat(ChatMessage),
    /// A part of a file.
    FilePart(FilePart),
    /// A delivery receipt.
    Receipt(Receipt),
    /// A sealed message or file part.
    Letter(Letter),
    /// A delivery receipt with the recipient's proofs.
    SignedReceipt(SignedReceipt),
}

impl Mail {
    /// The id the mailbox dedups and acknowledges by.
    pub fn id(&self) -> MessageId {
        match self {
            Mail::Chat(m) => m.id,
            Mail::FilePart(p) => p.id,
            Mail::Receipt(r) => r.id,
            Mail::Letter(l) => l.id,
            Mail::SignedReceipt(r) => r.id,
        }
    }

    /// Who it is from.
    pub fn from(&self) -> &Name {
        match self {
            Mail::Chat(m) => &m.from,
            Mail::FilePart(p) => &p.offer.from,
            Mail::Receipt(r) => &r.from,
            Mail::Letter(l) => &l.from,
            Mail::SignedReceipt(r) => &r.from,
        }
    }

    /// Whose mailbox holds it.
    pub fn to(&self) -> &Name {
        match self {
            Mail::Chat(m) => &m.to,
            Mail::FilePart(p) => &p.offer.to,
            Mail::Receipt(r) => &r.to,
            Mail::Letter(l) => &l.to,
            Mail::SignedReceipt(r) => &r.to,
        }
    }

    /// True for a receipt, made by the directory rather than deposited by a peer.
    pub fn is_receipt(&self) -> bool {
        matches!(self, Mail::Receipt(_) | Mail::SignedReceipt(_))
    }

    /// The bytes it counts against mailbox quotas: its size as stored (encoded), so that every
    /// field counts, names and file names included, not only a body or a file's data.
    pub fn size(&self) -> u64 {
        postcard::experimental::serialized_size(self).map_or(u64::MAX, |n| n as u64)
    }

    /// What the recipient's event stream carries for it.
    pub fn into_event(self) -> DirectoryEvent {
        match self {
            Mail::Chat(m) => DirectoryEvent::Deliver(m),
            Mail::FilePart(p) => DirectoryEvent::DeliverFilePart(p),
            Mail::Receipt(r) => DirectoryEvent::Receipt(r),
            Mail::Letter(l) => DirectoryEvent::DeliverLetter(l),
            Mail::SignedReceipt(r) => DirectoryEvent::SignedReceipt(r),
        }
    }
}

/// Why a receiver refused a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FileRefusal {
    /// Larger than the receiver takes.
    #[error("the file is larger than the recipient accepts")]
    TooLarge,
    /// The receiver cannot store it (disk full, permissions).
    #[error("the recipient cannot store the file")]
    CannotStore,
    /// The receiver has not accepted the sender as a contact: files from strangers wait for
    /// the user's consent, so the sender goes through the mailbox, within its quotas.
    #[error("the recipient has not accepted you as a contact")]
    NotAccepted,
}

/// QUIC application error codes used when closing a stream or a connection.
pub mod codes {
    /// Normal close.
    pub const OK: u32 = 0;
    /// A frame could not be decoded or was not expected here.
    pub const PROTOCOL: u32 = 1;
    /// A frame was larger than the cap.
    pub const TOO_LARGE: u32 = 2;
    /// The peer's key does not own the name it used.
    pub const UNAUTHORIZED: u32 = 3;
    /// Another connection registered the same name and key.
    pub const REPLACED: u32 = 4;
    /// Missed too many heartbeats. Unused since QUIC's idle timeout ends such connections;
    /// the number stays reserved.
    pub const EXPIRED: u32 = 5;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 6;
    /// The remote did not do in time what it had to: register with the directory, take the
    /// directory's answers, or send a peer its first message.
    pub const TIMED_OUT: u32 = 7;
    /// The remote speaks an older protocol version (it negotiated an ALPN of
    /// [`crate::defaults::ALPN_OUTDATED`]); the close's reason says so in words.
    pub const OUTDATED: u32 = 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChatMessage {
        ChatMessage {
            id: MessageId([7; 16]),
            from: Name::new("c1").expect("name"),
            to: Name::new("c2").expect("name"),
            sent_at_ms: 1_732_222_222_000,
            body: "hi".into(),
        }
    }

    /// Pins the wire bytes: a change here breaks every deployed peer.
    #[test]
    fn chat_frame_bytes_are_stable() {
        let bytes = postcard::to_allocvec(&PeerFrame::Chat(sample())).expect("encode");
        assert_eq!(
            hex::encode(&bytes),
            // variant 0, id, "c1", "c2", varint timestamp, "hi"
            "00 07070707070707070707070707070707 026331 026332 b0fdf583b532 026869"
                .replace(' ', "")
        );
    }

    /// Error codes are encoded by their index: old codes keep theirs, new ones come after.
    #[test]
    fn error_codes_keep_their_bytes() {
        let codes = [
            (ErrorCode::NameTaken, 0),
            (ErrorCode::RateLimited, 9),
            (ErrorCode::BadName, 10),
            (ErrorCode::NameLookalike, 11),
            (ErrorCode::TooManyNames, 12),
            (ErrorCode::SenderQuotaFull, 13),
            (ErrorCode::StoreFull, 14),
            (ErrorCode::FileNameTooLong, 15),
        ];
        for (code, index) in codes {
            assert_eq!(postcard::to_allocvec(&code).expect("encode"), [index]);
        }
    }

    /// A file part with no data still counts its every byte as stored, its file name first.
    #[test]
    fn mail_counts_its_encoded_size() {
        let part = |name_len: usize| {
            Mail::FilePart(FilePart {
                id: MessageId([1; 16]),
                offer: FileOffer {
                    id: MessageId([2; 16]),
                    from: Name::new("c1").expect("name"),
                    to: Name::new("c2").expect("name"),
                    name: "n".repeat(name_len),
                    size: 0,
                    hash: [0; 32],
                    sent_at_ms: 1,
                },
                offset: 0,
                data: Vec::new(),
            })
        };
        for mail in [part(10), part(60_000), Mail::Chat(sample())] {
            let encoded = postcard::to_allocvec(&mail).expect("encode");
            assert_eq!(mail.size(), encoded.len() as u64);
        }
        assert!(part(60_000).size() > 60_000);
    }

    #[test]
    fn requests_round_trip() {
        let reqs = [
            DirectoryRequest::Register {
                name: Name::new("c1").expect("name"),
                listen_addrs: vec!["127.0.0.1:5".parse().expect("addr")],
                heartbeat_ms: 10_000,
                online: true,
                published: crate::seal::PublishedKey {
                    identity: [1; 32],
                    encryption: [2; 32],
                    signature: crate::seal::Signature([3; 64]),
                },
            },
            DirectoryRequest::Heartbeat,
            DirectoryRequest::Lookup {
                name: Name::new("c2").expect("name"),
            },
            DirectoryRequest::Deposit { message: sample() },
        ];
        for req in reqs {
            let bytes = postcard::to_allocvec(&req).expect("encode");
            assert_eq!(
                postcard::from_bytes::<DirectoryRequest>(&bytes).expect("decode"),
                req
            );
        }
    }
}

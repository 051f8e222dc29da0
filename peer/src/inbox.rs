//! Where everything that arrives ends: messages from direct chat streams ([`crate::accept`])
//! and from the mailbox ([`crate::node`] hands them over). [`Inbox::receive`] drops duplicates
//! by message id and waits until the user's side has shown the message before the caller
//! acknowledges it. The mailbox also brings receipts for our own queued messages
//! ([`Inbox::receipt`]); files, received in [`crate::files`], are handed on here once stored
//! ([`Inbox::file`]). The inbox knows nothing of connections: it is a sink with one event
//! channel out.
//!
//! What a sender sends depends on how it stands with us ([`crate::contacts`]): a blocked
//! sender's messages are taken (so they are acknowledged and leave the mailbox) and dropped
//! unseen; a stranger's are shown as message requests, with a notice the first time.

use crate::contacts::{Contacts, Verdict};
use common::{
    defaults::MAX_BODY_LEN,
    room::{Change, RoomName},
    wire::{ChatMessage, MessageId, Receipt},
    KeyId, Name,
};
use std::{
    collections::{HashSet, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::debug;

/// How many message ids are remembered for duplicate detection.
const SEEN_CAPACITY: usize = 100_000;
/// How many strangers are remembered as told about, so each request notice is shown once.
const NOTICED_CAPACITY: usize = 1024;

/// Which path a message came by. (Stored in the history: append variants only.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Via {
    /// Straight from the sender over QUIC.
    Direct,
    /// From the directory's mailbox.
    Mailbox,
}

impl Via {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Mailbox => "mailbox",
        }
    }
}

/// How far a file arriving on a direct link is: reported as it starts, every few hundred
/// milliseconds, and once all of it is in (before it is checked and stored).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Arriving {
    /// The sender.
    pub from: Name,
    /// The file's name, as the sender gave it (made safe for a file name).
    pub name: String,
    /// Bytes we have, a resumed transfer's earlier ones included.
    pub done: u64,
    /// The file's size.
    pub total: u64,
    /// The transfer stopped before the file was stored (what came is kept for resuming): the
    /// last report of it.
    pub stopped: bool,
}

/// A file that arrived whole and checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReceivedFile {
    /// The sender.
    pub from: Name,
    /// Where it is stored.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its BLAKE3 hash.
    pub hash: [u8; 32],
    /// Sender's clock at the offer.
    pub sent_at_ms: u64,
    /// Bytes kept from an earlier, interrupted attempt.
    pub resumed_from: u64,
    /// How it came: directly, or through the mailbox in parts.
    pub via: Via,
    /// From a stranger: held apart in the downloads folder's `.requests/SENDER/` until the
    /// user accepts the sender (see [`crate::files::downloads::REQUESTS_DIR`]).
    pub request: bool,
}

/// A change of a room, for the members to see in the room.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoomNotice {
    /// The room.
    pub room: RoomName,
    /// What happened.
    pub event: RoomEvent,
    /// When: by the clock of who changed the room, or ours for presence (ms since the epoch).
    pub at_ms: u64,
}

/// What happened in a room.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RoomEvent {
    /// Its membership changed (an op of its log).
    Changed(Change),
    /// A member came online.
    Online(Name),
    /// A member went offline.
    Offline(Name),
}

/// A message waiting to be shown. Call [`Incoming::shown`] once the user can see it: only then
/// is it acknowledged to the sender or the directory.
#[derive(Debug)]
pub struct Incoming {
    /// The message.
    pub message: ChatMessage,
    /// The room it was said in; `None` for a message to us alone.
    pub room: Option<RoomName>,
    /// How it came.
    pub via: Via,
    /// From a stranger: a message request.
    pub request: bool,
    /// The key that proved it sent the message: in the TLS handshake of the direct link, or
    /// by signing the sealed letter.
    pub signer: KeyId,
    shown: oneshot::Sender<()>,
}

impl Incoming {
    /// Marks the message as shown, which lets it be acknowledged.
    pub fn shown(self) {
        let _ = self.shown.send(());
    }
}

/// What the inbox tells the program using it.
#[derive(Debug)]
pub enum Event {
    /// A new message (never a duplicate).
    Message(Incoming),
    /// Everything waiting in the mailbox has been delivered.
    MailboxIdle,
    /// A file arrived whole, its hash checked, and is stored.
    File(ReceivedFile),
    /// A recipient took our mail from its mailbox; call [`Taken::done`] once it is recorded.
    Receipt(Taken),
    /// Something the user should know (a file from the mailbox that had to be dropped).
    Notice(String),
    /// A room's membership changed.
    Room(RoomNotice),
}

/// A receipt waiting to be recorded; acknowledged to the directory after [`Taken::done`].
#[derive(Debug)]
pub struct Taken {
    /// The receipt.
    pub receipt: Receipt,
    done: oneshot::Sender<()>,
}

impl Taken {
    /// Marks the receipt as recorded, which lets it be acknowledged.
    pub fn done(self) {
        let _ = self.done.send(());
    }
}

/// Dedup and hand-off of incoming messages; cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    inner: Arc<InboxInner>,
}

struct InboxInner {
    me: Name,
    contacts: Contacts,
    seen: Mutex<Seen>,
    /// Strangers whose request notice was shown.
    noticed: Mutex<HashSet<Name>>,
    events: mpsc::Sender<Event>,
    /// Copies for other local commands attached through the control socket.
    copies: broadcast::Sender<Copy>,
    /// Copies of receipts, likewise.
    receipts: broadcast::Sender<Receipt>,
    /// Copies of room notices, likewise.
    rooms: broadcast::Sender<RoomNotice>,
    /// How far files arriving are, for every view.
    arrivals: broadcast::Sender<Arriving>,
    /// Copies of the files stored, for local commands attached through the control socket.
    files: broadcast::Sender<ReceivedFile>,
}

/// A copy of an incoming message for a command attached through the control socket: the
/// message, its room, how it came, and whether it is a message request.
pub type Copy = (ChatMessage, Option<RoomName>, Via, bool);

/// Resolves when a handed-over message may be acknowledged: it was shown, or it was a
/// duplicate of one shown before.
pub struct Shown(Option<(SeenKey, oneshot::Receiver<()>, Inbox)>);

impl Shown {
    /// For a message that may be acknowledged at once: a duplicate, or one dropped unseen.
    pub fn already() -> Self {
        Self(None)
    }

    /// Waits until the message was shown.
    pub async fn wait(self) -> Result<(), NotShown> {
        let Some((key, was_shown, inbox)) = self.0 else {
            return Ok(());
        };
        if was_shown.await.is_err() {
            // Nobody showed it: forget the id so a redelivery is not taken for a duplicate.
            inbox.seen().remove(&key);
            return Err(NotShown);
        }
        Ok(())
    }
}

/// Why a message was not taken.
#[derive(Debug, thiserror::Error)]
#[error("the message could not be shown")]
pub struct NotShown;

impl Inbox {
    /// An inbox for `me`, with the receiver of its events.
    pub fn new(me: Name, contacts: Contacts) -> (Self, mpsc::Receiver<Event>) {
        let (events, rx) = mpsc::channel(1024);
        let (copies, _) = broadcast::channel(1024);
        let (receipts, _) = broadcast::channel(256);
        let (rooms, _) = broadcast::channel(256);
        let (arrivals, _) = broadcast::channel(64);
        let (files, _) = broadcast::channel(64);
        let inner = InboxInner {
            me,
            contacts,
            seen: Mutex::new(Seen::default()),
            noticed: Mutex::default(),
            events,
            copies,
            receipts,
            rooms,
            arrivals,
            files,
        };
        (
            Self {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Our own name.
    pub fn me(&self) -> &Name {
        &self.inner.me
    }

    /// True for a message addressed to us with a body of at most [`MAX_BODY_LEN`] bytes:
    /// what both paths check before handing a message over (a letter's size limit leaves
    /// room for its fields, so a body can be longer than a message's).
    pub fn fits(&self, message: &ChatMessage) -> bool {
        message.to == self.inner.me && message.body.len() <= MAX_BODY_LEN
    }

    /// Copies of every new message, for local commands attached through the control socket.
    pub fn subscribe(&self) -> broadcast::Receiver<Copy> {
        self.inner.copies.subscribe()
    }

    /// Copies of every receipt, for local commands attached through the control socket.
    pub fn subscribe_receipts(&self) -> broadcast::Receiver<Receipt> {
        self.inner.receipts.subscribe()
    }

    /// Takes one receipt from the mailbox. `Ok` means it was recorded and may be acknowledged.
    pub async fn receipt(&self, receipt: Receipt) -> Result<(), NotShown> {
        let _ = self.inner.receipts.send(receipt.clone());
        let (done, recorded) = oneshot::channel();
        let event = Event::Receipt(Taken { receipt, done });
        if self.inner.events.send(event).await.is_err() {
            return Err(NotShown);
        }
        recorded.await.map_err(|_| NotShown)
    }

    /// Takes one message. `Ok` means it may be acknowledged: it was shown now, or it is a
    /// duplicate of one shown before.
    pub async fn receive(
        &self,
        message: ChatMessage,
        room: Option<RoomName>,
        via: Via,
        signer: KeyId,
    ) -> Result<(), NotShown> {
        self.hand_over(message, room, via, signer)
            .await?
            .wait()
            .await
    }

    /// Hands one message to the program and returns at once with [`Shown`], which resolves
    /// when it may be acknowledged. Messages handed over one after another are shown in that
    /// order, so a stream can take the next message while earlier ones are being shown.
    pub async fn hand_over(
        &self,
        message: ChatMessage,
        room: Option<RoomName>,
        via: Via,
        signer: KeyId,
    ) -> Result<Shown, NotShown> {
        let key = (message.from.clone(), message.id);
        let request = match self.inner.contacts.verdict(&message.from) {
            Verdict::Blocked => {
                debug!(from = %message.from, "dropped: the sender is blocked");
                return Ok(Shown(None));
            }
            // A room's members are not strangers in it: the room's signed log vouches for
            // them (the caller checked it).
            Verdict::Stranger => room.is_none(),
            Verdict::Contact => false,
        };
        if !self.seen().insert(key.clone()) {
            debug!(id = %key.1, "duplicate dropped");
            return Ok(Shown(None));
        }
        if request {
            self.notice_request(&message.from).await;
        }
        let _ = self
            .inner
            .copies
            .send((message.clone(), room.clone(), via, request));
        let (shown, was_shown) = oneshot::channel();
        let event = Event::Message(Incoming {
            message,
            room,
            via,
            request,
            signer,
            shown,
        });
        if self.inner.events.send(event).await.is_err() {
            self.seen().remove(&key);
            return Err(NotShown);
        }
        Ok(Shown(Some((key, was_shown, self.clone()))))
    }

    /// Tells the user, once per stranger, what a message request is and what to do with it.
    async fn notice_request(&self, from: &Name) {
        {
            let mut noticed = self.inner.noticed.lock().unwrap_or_else(|e| e.into_inner());
            if noticed.len() >= NOTICED_CAPACITY {
                noticed.clear();
            }
            if !noticed.insert(from.clone()) {
                return;
            }
        }
        self.notice(format!(
            "message request: {from} is not in your contacts; `peer accept {from}` lets them \
             reach you directly, `peer block {from}` drops what they send"
        ))
        .await;
    }

    /// Checks the key the directory gives for a sender against the one remembered for it.
    pub fn vouch(&self, info: &common::wire::PeerInfo) -> Result<(), crate::failure::Failure> {
        self.inner.contacts.vouch(info)
    }

    /// How `name` stands with us.
    pub fn verdict(&self, name: &Name) -> Verdict {
        self.inner.contacts.verdict(name)
    }

    /// Reports a file that arrived.
    pub async fn file(&self, file: ReceivedFile) {
        let _ = self.inner.files.send(file.clone());
        let _ = self.inner.events.send(Event::File(file)).await;
    }

    /// Copies of every file stored, for local commands attached through the control socket.
    pub fn subscribe_files(&self) -> broadcast::Receiver<ReceivedFile> {
        self.inner.files.subscribe()
    }

    /// Reports how far a file arriving is, to every view that listens (none is fine).
    pub fn arriving(&self, progress: Arriving) {
        let _ = self.inner.arrivals.send(progress);
    }

    /// How far files arriving are, from now on.
    pub fn subscribe_arrivals(&self) -> broadcast::Receiver<Arriving> {
        self.inner.arrivals.subscribe()
    }

    /// Tells the user something (a file from the mailbox that had to be dropped).
    pub async fn notice(&self, text: String) {
        let _ = self.inner.events.send(Event::Notice(text)).await;
    }

    /// Shows a change of a room's membership, in the room.
    pub async fn room(&self, notice: RoomNotice) {
        let _ = self.inner.rooms.send(notice.clone());
        let _ = self.inner.events.send(Event::Room(notice)).await;
    }

    /// Copies of every room notice, for local commands attached through the control socket.
    pub fn subscribe_rooms(&self) -> broadcast::Receiver<RoomNotice> {
        self.inner.rooms.subscribe()
    }

    /// Reports that the mailbox has been drained.
    pub async fn mailbox_idle(&self) {
        let _ = self.inner.events.send(Event::MailboxIdle).await;
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.inner.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What duplicates are recognised by: the sender and its message id, so that one sender
/// cannot suppress another's message by reusing its id.
type SeenKey = (Name, MessageId);

/// A bounded set of recently seen messages: the oldest is forgotten first.
#[derive(Default)]
struct Seen {
    set: HashSet<SeenKey>,
    order: VecDeque<SeenKey>,
}

impl Seen {
    fn insert(&mut self, key: SeenKey) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    fn remove(&mut self, key: &SeenKey) {
        self.set.remove(key);
        self.order.retain(|x| x != key);
    }
}

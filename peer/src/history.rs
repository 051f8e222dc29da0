//! The local history: every message shown to the user and every message they sent, per
//! conversation, in order, in `HOME/history.redb`.
//!
//! # What is stored
//!
//! | table      | key                   | value                          | why                                 |
//! |------------|-----------------------|--------------------------------|-------------------------------------|
//! | `messages` | (other peer, seq)     | postcard [`HistoryEntry`]      | one conversation is one key range   |
//! | `ids`      | message id            | (other peer, seq)              | duplicates dropped across restarts  |
//!
//! A room's conversation is kept like a peer's, under the room's name with its `#`
//! ([`Target`]'s text), which no peer's name has.
//! | `peers`    | other peer            | sent_at_ms of its last message | the list of conversations           |
//! | `meta`     | `"next_seq"`          | u64                            | order survives restarts             |
//!
//! # Writes
//!
//! One thread owns every write and commits whatever is queued in one transaction with
//! [`Durability::Immediate`] (group commit, as the directory's store does): a message of a busy
//! conversation costs a share of one fsync. An incoming message is recorded, and the commit
//! awaited, before it is acknowledged ([`History::record_in`]), so a message acknowledged to
//! its sender is always in the history and a redelivery after a restart is recognised by its
//! id ([`History::contains`]). Our own messages are written when submitted (`sending`) and
//! updated with their outcome ([`History::sending`], [`History::settle`]), without waiting.
//!
//! Only the process that owns the node opens the file: redb locks it, so a second process gets
//! [`HistoryError::Locked`] and either goes through the running one ([`crate::control`]) or
//! does without.

use crate::{
    inbox::Via,
    links::DirectPath,
    outbox::{Sent, Status},
    rooms::RoomSent,
    target::Target,
};
use common::{
    now_ms,
    room::RoomName,
    wire::{ChatMessage, MessageId},
    KeyId, Name,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc as std_mpsc, Arc,
    },
    time::{Duration, Instant},
};
use tokio::sync::oneshot;

const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const IDS: TableDefinition<&[u8; 16], (&str, u64)> = TableDefinition::new("ids");
const PEERS: TableDefinition<&str, u64> = TableDefinition::new("peers");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
/// The file in the peer's home.
pub const FILE: &str = "history.redb";
/// Most operations one commit takes from the queue.
const MAX_BATCH: usize = 1024;

/// Where one message of the local history stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryState {
    /// We received it.
    Received {
        /// How it came. (Stored as a bool before, `true` for the mailbox: [`Via`]'s encoding
        /// is the same, so old records still read.)
        via: Via,
    },
    /// We sent it and have no outcome yet (or the process ended before it came).
    Sending,
    /// The recipient acknowledged it directly.
    Delivered {
        /// The direct path it went on.
        path: Option<DirectPath>,
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
    /// We received it, and its sender proved it holds `key`, the key remembered for its name:
    /// in the TLS handshake of the direct link, or by the Ed25519 signature of the sealed
    /// letter from the mailbox ([`common::seal`]). Messages recorded as
    /// [`HistoryState::Received`] came before that check.
    Verified {
        /// How it came.
        via: Via,
        /// The sender's key.
        key: KeyId,
    },
}

impl HistoryState {
    /// The name used in JSON output.
    pub fn as_str(&self) -> &'static str {
        match self {
            HistoryState::Received { .. } | HistoryState::Verified { .. } => "received",
            HistoryState::Sending => "sending",
            HistoryState::Delivered { .. } => "delivered",
            HistoryState::Queued => "queued",
            HistoryState::Failed { .. } => "failed",
            HistoryState::DeliveredLater { .. } => "delivered_later",
        }
    }

    /// True for a message we sent.
    pub fn is_ours(&self) -> bool {
        !matches!(
            self,
            HistoryState::Received { .. } | HistoryState::Verified { .. }
        )
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
    /// The room it was said in. Not stored: a room's messages are kept under the room's key.
    #[serde(skip)]
    pub room: Option<RoomName>,
}

/// Why the history could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// Another process has the file open.
    #[error("another process has the history open")]
    Locked,
    /// The database failed (I/O, corruption, encoding, or the writer thread stopped).
    #[error("history database failure: {0}")]
    Db(String),
}

macro_rules! db_errors {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for HistoryError {
            fn from(e: $t) -> Self {
                Self::Db(e.to_string())
            }
        }
    )*};
}
db_errors!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    postcard::Error,
);

impl From<redb::DatabaseError> for HistoryError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Self::Locked,
            e => Self::Db(e.to_string()),
        }
    }
}

/// Where one of our messages is recorded, to [`History::settle`] it later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutKey {
    peer: String,
    seq: u64,
}

type Reply = oneshot::Sender<Result<(), HistoryError>>;

enum Op {
    /// A new entry under (peer, seq); indexed by id if it has one.
    Insert {
        peer: String,
        seq: u64,
        entry: HistoryEntry,
        reply: Option<Reply>,
    },
    /// The outcome of one of our messages.
    Settle {
        key: OutKey,
        id: Option<MessageId>,
        state: HistoryState,
    },
    /// Our queued messages with these ids were taken by their recipient.
    DeliveredLater {
        ids: Vec<MessageId>,
        at_ms: u64,
        reply: Reply,
    },
    /// Answered once everything queued before it is committed.
    Flush(Reply),
}

/// The history of one peer; cheap to clone. The writer thread ends with the last clone.
#[derive(Clone)]
pub struct History {
    db: Arc<Database>,
    tx: std_mpsc::Sender<Op>,
    next_seq: Arc<AtomicU64>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").finish_non_exhaustive()
    }
}

/// `HOME/history.redb`.
pub fn path(home: &Path) -> PathBuf {
    home.join(FILE)
}

impl History {
    /// Opens (or creates) the history at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let db = Database::create(path)?;
        // The tables are made once, on first run: a commit (and its fsyncs) at every open
        // would be most of what a short command's history costs.
        if !has_tables(&db)? {
            let txn = db.begin_write()?;
            {
                txn.open_table(MESSAGES)?;
                txn.open_table(IDS)?;
                txn.open_table(PEERS)?;
                txn.open_table(META)?;
            }
            txn.commit()?;
        }
        let next = {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let next = meta.get(NEXT_SEQ)?.map_or(1, |g| g.value());
            next
        };
        let db = Arc::new(db);
        let (tx, rx) = std_mpsc::channel();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || run(&writer_db, rx))
            .map_err(|e| HistoryError::Db(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            db,
            tx,
            next_seq: Arc::new(AtomicU64::new(next)),
        })
    }

    /// [`History::open`], retrying for up to `wait` while another process holds the file.
    pub fn open_waiting(path: &Path, wait: Duration) -> Result<Self, HistoryError> {
        let deadline = Instant::now() + wait;
        loop {
            match Self::open(path) {
                Err(HistoryError::Locked) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::SeqCst)
    }

    fn queue(&self, op: Op) -> Result<(), HistoryError> {
        self.tx.send(op).map_err(|_| stopped())
    }

    /// Durably records an incoming message; resolves once it is committed. Recording an id
    /// already present does nothing.
    pub fn record_in(
        &self,
        message: &ChatMessage,
        room: Option<&RoomName>,
        via: Via,
        key: KeyId,
    ) -> impl std::future::Future<Output = Result<(), HistoryError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let with = match room {
            Some(room) => room.to_string(),
            None => message.from.to_string(),
        };
        let queued = self.queue(Op::Insert {
            peer: with,
            seq: self.seq(),
            entry: HistoryEntry {
                id: Some(message.id),
                from: message.from.clone(),
                to: message.to.clone(),
                sent_at_ms: message.sent_at_ms,
                body: message.body.clone(),
                state: HistoryState::Verified { via, key },
                room: room.cloned(),
            },
            reply: Some(reply),
        });
        async move {
            queued?;
            answer.await.map_err(|_| stopped())?
        }
    }

    /// Records a message of ours as `sending`, now; [`History::settle`] it with its outcome.
    /// (A message to a room is recorded once, in the room, as to ourselves.)
    pub fn sending(&self, from: &Name, to: &Target, body: &str) -> OutKey {
        let key = OutKey {
            peer: to.to_string(),
            seq: self.seq(),
        };
        let entry = HistoryEntry {
            id: None,
            from: from.clone(),
            to: to.peer().unwrap_or(from).clone(),
            sent_at_ms: now_ms(),
            body: body.to_string(),
            state: HistoryState::Sending,
            room: to.room().cloned(),
        };
        let op = Op::Insert {
            peer: key.peer.clone(),
            seq: key.seq,
            entry,
            reply: None,
        };
        if let Err(e) = self.queue(op) {
            tracing::warn!("history: {e}");
        }
        key
    }

    /// Records the outcome of a message recorded by [`History::sending`].
    pub fn settle(&self, key: OutKey, outcome: Result<&Sent, &str>) {
        let (id, state) = match outcome {
            Ok(sent) => (Some(sent.id), state_of(sent)),
            Err(reason) => (
                None,
                HistoryState::Failed {
                    reason: reason.to_string(),
                },
            ),
        };
        self.settle_as(key, id, state);
    }

    /// Records where a message recorded by [`History::sending`] stands, and its id.
    pub fn settle_as(&self, key: OutKey, id: Option<MessageId>, state: HistoryState) {
        if let Err(e) = self.queue(Op::Settle { key, id, state }) {
            tracing::warn!("history: {e}");
        }
    }

    /// Durably marks our messages with these ids as delivered later (a receipt came back);
    /// resolves once that is committed. Ids not in the history, or of messages that were
    /// delivered directly, are left alone.
    pub fn delivered_later(
        &self,
        ids: Vec<MessageId>,
        at_ms: u64,
    ) -> impl std::future::Future<Output = Result<(), HistoryError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue(Op::DeliveredLater { ids, at_ms, reply });
        async move {
            queued?;
            answer.await.map_err(|_| stopped())?
        }
    }

    /// Resolves once everything recorded so far is on disk.
    pub async fn flush(&self) -> Result<(), HistoryError> {
        let (reply, answer) = oneshot::channel();
        self.queue(Op::Flush(reply))?;
        answer.await.map_err(|_| stopped())?
    }

    /// Whether a message with this id is recorded (as received, or as sent).
    pub fn contains(&self, id: &MessageId) -> Result<bool, HistoryError> {
        let txn = self.db.begin_read()?;
        let ids = txn.open_table(IDS)?;
        Ok(ids.get(&id.0)?.is_some())
    }

    /// Whether a message with this id is recorded in the conversation with `from`: a
    /// redelivery from that sender. The same id in another conversation is another sender's
    /// (or a sender reusing an id it saw), not a duplicate.
    /// In a room, whose members all see each message's id, it must also be from `sender`:
    /// another member reusing the id is not taken for the message.
    pub fn contains_from(
        &self,
        id: &MessageId,
        with: &Target,
        sender: &Name,
    ) -> Result<bool, HistoryError> {
        let txn = self.db.begin_read()?;
        let ids = txn.open_table(IDS)?;
        let with = with.to_string();
        let key = index_key(&with, sender, id);
        Ok(ids.get(&key)?.is_some_and(|at| at.value().0 == with))
    }

    /// The last `limit` entries of the conversation with `with`, oldest first.
    pub fn conversation(
        &self,
        with: &Target,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, HistoryError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        let key = with.to_string();
        let peer = key.as_str();
        let mut out = Vec::new();
        for row in table.range((peer, 0)..=(peer, u64::MAX))?.rev().take(limit) {
            let (_, value) = row?;
            let mut entry: HistoryEntry = postcard::from_bytes(value.value())?;
            entry.room = with.room().cloned();
            out.push(entry);
        }
        out.reverse();
        Ok(out)
    }

    /// Every peer with a conversation, and when its last message was sent, latest first.
    pub fn peers(&self) -> Result<Vec<(Name, u64)>, HistoryError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PEERS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (name, at) = row?;
            if let Ok(name) = Name::new(name.value()) {
                out.push((name, at.value()));
            }
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.1));
        Ok(out)
    }
}

/// The entries whose text contains `text`, in any case, in their order.
pub fn matching<'a>(entries: &'a [HistoryEntry], text: &str) -> Vec<&'a HistoryEntry> {
    let needle = text.to_lowercase();
    (entries.iter())
        .filter(|e| e.body.to_lowercase().contains(&needle))
        .collect()
}

/// The recorded state for a send outcome.
pub fn state_of(sent: &Sent) -> HistoryState {
    match sent.status {
        Status::Delivered => HistoryState::Delivered { path: sent.path },
        Status::Queued => HistoryState::Queued,
    }
}

/// The recorded state of a message to a room, as the history and the terminal client show
/// it: failed when no copy left, queued while any member's mailbox holds one, else delivered.
pub fn room_state(sent: &RoomSent) -> HistoryState {
    match (&sent.failed[..], sent.delivered + sent.queued) {
        ([(name, why), ..], 0) => HistoryState::Failed {
            reason: format!("{name}: {why}"),
        },
        _ if sent.queued > 0 => HistoryState::Queued,
        _ => HistoryState::Delivered { path: None },
    }
}

/// Whether every table of the history is there (a history made by this version).
fn has_tables(db: &Database) -> Result<bool, HistoryError> {
    let txn = db.begin_read()?;
    let there = |opened: Result<_, redb::TableError>| match opened {
        Ok(_) => Ok(true),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(HistoryError::from(e)),
    };
    Ok(there(txn.open_table(MESSAGES).map(drop))?
        && there(txn.open_table(IDS).map(drop))?
        && there(txn.open_table(PEERS).map(drop))?
        && there(txn.open_table(META).map(drop))?)
}

fn stopped() -> HistoryError {
    HistoryError::Db("the history writer has stopped".into())
}

fn run(db: &Database, rx: std_mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        // A flush behind nothing: what came before it is on disk already (each batch commits
        // durably before the next is taken), so it needs no commit of its own.
        if ops.iter().all(|op| matches!(op, Op::Flush(_))) {
            for op in ops {
                if let Op::Flush(reply) = op {
                    let _ = reply.send(Ok(()));
                }
            }
            continue;
        }
        let mut replies = Vec::new();
        let result = commit(db, ops, &mut replies);
        if let Err(e) = &result {
            tracing::warn!("history: {e}");
        }
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

/// Applies `ops` in one durable transaction; collects the replies owed.
fn commit(db: &Database, ops: Vec<Op>, replies: &mut Vec<Reply>) -> Result<(), HistoryError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.set_quick_repair(true);
    let mut failure = None;
    {
        let mut messages = txn.open_table(MESSAGES)?;
        let mut ids = txn.open_table(IDS)?;
        let mut peers = txn.open_table(PEERS)?;
        let mut meta = txn.open_table(META)?;
        let mut next = meta.get(NEXT_SEQ)?.map_or(1, |g| g.value());
        for op in ops {
            // Apply every op even if one fails, so each caller gets an answer.
            let applied = match op {
                Op::Insert {
                    peer,
                    seq,
                    entry,
                    reply,
                } => {
                    replies.extend(reply);
                    next = next.max(seq + 1);
                    insert(&mut messages, &mut ids, &mut peers, &peer, seq, &entry)
                }
                Op::Settle { key, id, state } => {
                    settle(&mut messages, &mut ids, &key, id, state).map(|_| ())
                }
                Op::DeliveredLater {
                    ids: taken,
                    at_ms,
                    reply,
                } => {
                    replies.push(reply);
                    taken
                        .iter()
                        .try_for_each(|id| delivered_later(&mut messages, &ids, id, at_ms))
                }
                Op::Flush(reply) => {
                    replies.push(reply);
                    Ok(())
                }
            };
            if let Err(e) = applied {
                failure = Some(e);
            }
        }
        meta.insert(NEXT_SEQ, next)?;
    }
    txn.commit()?;
    failure.map_or(Ok(()), Err)
}

/// What the `ids` table files a received message under: its id in a 1:1 conversation; in a
/// room (`conversation` starts with `#`), whose members all see every id, a hash of the room,
/// the sender and the id, so that one member cannot take another's id.
fn index_key(conversation: &str, sender: &Name, id: &MessageId) -> [u8; 16] {
    if !conversation.starts_with('#') {
        return id.0;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"p2pchat history room index\0");
    hasher.update(conversation.as_bytes());
    hasher.update(&[0]);
    hasher.update(sender.as_str().as_bytes());
    hasher.update(&id.0);
    let mut key = [0; 16];
    key.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    key
}

type Messages<'t> = redb::Table<'t, (&'static str, u64), &'static [u8]>;
type Ids<'t> = redb::Table<'t, &'static [u8; 16], (&'static str, u64)>;

fn insert(
    messages: &mut Messages<'_>,
    ids: &mut Ids<'_>,
    peers: &mut redb::Table<'_, &'static str, u64>,
    peer: &str,
    seq: u64,
    entry: &HistoryEntry,
) -> Result<(), HistoryError> {
    if let Some(id) = entry.id {
        // Our own messages by their id (receipts name it), what others said by theirs.
        let key = match entry.state.is_ours() {
            true => id.0,
            false => index_key(peer, &entry.from, &id),
        };
        let recorded = ids.get(&key)?.map(|at| at.value().0 == peer);
        match recorded {
            // A redelivery in this conversation.
            Some(true) => return Ok(()),
            // The id is another conversation's: this message is kept, and the index keeps
            // pointing at the first.
            Some(false) => {}
            None => {
                ids.insert(&key, (peer, seq))?;
            }
        }
    }
    let bytes = postcard::to_allocvec(entry)?;
    messages.insert((peer, seq), bytes.as_slice())?;
    let last = peers.get(peer)?.map_or(0, |g| g.value());
    peers.insert(peer, last.max(entry.sent_at_ms))?;
    Ok(())
}

/// Marks our message `id` as delivered later, if it is ours and was queued (or its outcome
/// never came).
fn delivered_later(
    messages: &mut Messages<'_>,
    ids: &Ids<'_>,
    id: &MessageId,
    at_ms: u64,
) -> Result<(), HistoryError> {
    let Some((peer, seq)) = ids.get(&id.0)?.map(|g| {
        let (peer, seq) = g.value();
        (peer.to_string(), seq)
    }) else {
        return Ok(());
    };
    let row = (peer.as_str(), seq);
    let Some(bytes) = messages.get(row)?.map(|g| g.value().to_vec()) else {
        return Ok(());
    };
    let mut entry: HistoryEntry = postcard::from_bytes(&bytes)?;
    if !matches!(entry.state, HistoryState::Queued | HistoryState::Sending) {
        return Ok(());
    }
    entry.state = HistoryState::DeliveredLater { at_ms };
    let bytes = postcard::to_allocvec(&entry)?;
    messages.insert(row, bytes.as_slice())?;
    Ok(())
}

fn settle(
    messages: &mut Messages<'_>,
    ids: &mut Ids<'_>,
    key: &OutKey,
    id: Option<MessageId>,
    state: HistoryState,
) -> Result<bool, HistoryError> {
    let row = (key.peer.as_str(), key.seq);
    let Some(bytes) = messages.get(row)?.map(|g| g.value().to_vec()) else {
        return Ok(false);
    };
    let mut entry: HistoryEntry = postcard::from_bytes(&bytes)?;
    entry.state = state;
    if let Some(id) = id {
        entry.id = Some(id);
        ids.insert(&id.0, row)?;
    }
    let bytes = postcard::to_allocvec(&entry)?;
    messages.insert(row, bytes.as_slice())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The sender's key in these tests.
    const KEY: KeyId = KeyId([5; 32]);

    fn name(s: &str) -> Name {
        Name::new(s).expect("valid test name")
    }

    fn peer(s: &str) -> Target {
        Target::Peer(name(s))
    }

    fn incoming(from: &str, body: &str) -> ChatMessage {
        ChatMessage {
            id: MessageId::random(),
            from: name(from),
            to: name("me"),
            sent_at_ms: now_ms(),
            body: body.into(),
        }
    }

    fn bodies(entries: &[HistoryEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.body.as_str()).collect()
    }

    /// A room's messages are kept under the room, and a member that reuses another's id (all
    /// members see every id) is neither taken for a redelivery nor able to hide the real one.
    #[tokio::test]
    async fn in_a_room_an_id_is_its_senders() -> TestResult {
        let dir = tempfile::tempdir()?;
        let h = History::open(&path(dir.path()))?;
        let room: RoomName = "#ops".parse()?;
        let ops = Target::Room(room.clone());
        let real = incoming("alice", "the real one");
        let mut copycat = incoming("mallory", "the same id");
        copycat.id = real.id;
        h.record_in(&copycat, Some(&room), Via::Direct, KEY).await?;
        assert!(!h.contains_from(&real.id, &ops, &real.from)?);
        h.record_in(&real, Some(&room), Via::Direct, KEY).await?;
        h.record_in(&real, Some(&room), Via::Mailbox, KEY).await?;
        let kept = h.conversation(&ops, 10)?;
        assert_eq!(bodies(&kept), ["the same id", "the real one"]);
        assert!(h.contains_from(&real.id, &ops, &real.from)?);
        assert!(kept.iter().all(|e| e.room.as_ref() == Some(&room)));
        assert!(h.conversation(&peer("alice"), 10)?.is_empty());
        assert!(!h.contains_from(&real.id, &peer("alice"), &real.from)?);
        Ok(())
    }

    #[tokio::test]
    async fn both_directions_in_order_across_reopen() -> TestResult {
        let dir = tempfile::tempdir()?;
        let file = path(dir.path());
        let a = incoming("c2", "hello");
        let sent_id = MessageId::random();
        {
            let h = History::open(&file)?;
            h.record_in(&a, None, Via::Direct, KEY).await?;
            let key = h.sending(&name("me"), &peer("c2"), "hi back");
            let failed = h.sending(&name("me"), &peer("c2"), "lost");
            h.record_in(&incoming("c3", "elsewhere"), None, Via::Mailbox, KEY)
                .await?;
            let sent = Sent {
                id: sent_id,
                to: name("c2"),
                status: Status::Queued,
                path: None,
            };
            h.settle(key, Ok(&sent));
            h.settle(failed, Err("no route"));
            h.flush().await?;
        }
        // The writer thread lets go of the file just after the last handle is dropped.
        let h = History::open_waiting(&file, Duration::from_secs(5))?;
        let c2 = h.conversation(&peer("c2"), 100)?;
        assert_eq!(bodies(&c2), ["hello", "hi back", "lost"]);
        assert_eq!(c2[1].state, HistoryState::Queued);
        assert_eq!(c2[1].id, Some(sent_id));
        assert_eq!(
            c2[2].state,
            HistoryState::Failed {
                reason: "no route".into()
            }
        );
        assert!(h.contains(&a.id)? && h.contains(&sent_id)?);
        assert_eq!(
            bodies(&h.conversation(&peer("c2"), 2)?),
            ["hi back", "lost"]
        );
        let peers: Vec<String> = h.peers()?.into_iter().map(|p| p.0.to_string()).collect();
        assert_eq!(peers.len(), 2);
        // New entries after a reopen come after the old ones.
        h.record_in(&incoming("c2", "later"), None, Via::Direct, KEY)
            .await?;
        assert_eq!(
            bodies(&h.conversation(&peer("c2"), 100)?).last(),
            Some(&"later")
        );
        Ok(())
    }

    #[tokio::test]
    async fn receipts_mark_only_queued_messages_of_ours() -> TestResult {
        let dir = tempfile::tempdir()?;
        let h = History::open(&path(dir.path()))?;
        let mut ids = Vec::new();
        for (body, status) in [("queued", Status::Queued), ("direct", Status::Delivered)] {
            let key = h.sending(&name("me"), &peer("c2"), body);
            let sent = Sent {
                id: MessageId::random(),
                to: name("c2"),
                status,
                path: None,
            };
            h.settle(key, Ok(&sent));
            ids.push(sent.id);
        }
        let theirs = incoming("c2", "theirs");
        h.record_in(&theirs, None, Via::Mailbox, KEY).await?;
        ids.extend([theirs.id, MessageId::random()]);
        h.delivered_later(ids, 42).await?;
        let states: Vec<HistoryState> = h
            .conversation(&peer("c2"), 10)?
            .into_iter()
            .map(|e| e.state)
            .collect();
        assert_eq!(
            states,
            [
                HistoryState::DeliveredLater { at_ms: 42 },
                HistoryState::Delivered { path: None },
                HistoryState::Verified {
                    via: Via::Mailbox,
                    key: KEY
                },
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_duplicate_id_is_recorded_once() -> TestResult {
        let dir = tempfile::tempdir()?;
        let h = History::open(&path(dir.path()))?;
        let m = incoming("c2", "once");
        h.record_in(&m, None, Via::Direct, KEY).await?;
        h.record_in(&m, None, Via::Mailbox, KEY).await?;
        assert_eq!(bodies(&h.conversation(&peer("c2"), 10)?), ["once"]);
        Ok(())
    }

    #[test]
    fn a_second_open_is_locked() -> TestResult {
        let dir = tempfile::tempdir()?;
        let _h = History::open(&path(dir.path()))?;
        let started = Instant::now();
        let again = History::open_waiting(&path(dir.path()), Duration::from_millis(200));
        assert_eq!(again.err(), Some(HistoryError::Locked));
        assert!(started.elapsed() >= Duration::from_millis(200));
        Ok(())
    }

    /// Entries written before `Received` carried a [`Via`] stored a bool in its place; both
    /// encodings are the same bytes, so old histories still read.
    #[test]
    fn received_entries_of_the_bool_era_still_decode() -> TestResult {
        #[derive(Serialize)]
        enum OldState {
            Received { via_mailbox: bool },
        }
        for (old, via) in [(false, Via::Direct), (true, Via::Mailbox)] {
            let bytes = postcard::to_allocvec(&OldState::Received { via_mailbox: old })?;
            let state: HistoryState = postcard::from_bytes(&bytes)?;
            assert_eq!(state, HistoryState::Received { via });
        }
        Ok(())
    }
}

//! The directory's durable state: name bindings and the mailbox, in one redb file.
//!
//! # What is stored
//!
//! | table         | key                   | value                       | why                                   |
//! |---------------|-----------------------|-----------------------------|---------------------------------------|
//! | `names`       | name                  | (key id, last seen ms)      | first-use binding of a name to a key  |
//! | `meta`        | `"next_seq"`          | u64                         | the global sequence counter           |
//! | `mail`        | (recipient, seq)      | postcard [`Mail`]           | held mail, oldest first per name      |
//! | `mailbox_ids` | (recipient, mail id)  | seq                         | makes a retried deposit a no-op       |
//! | `usage`       | recipient             | (entries, bytes)            | quota checks without a scan           |
//! | `queued_from` | (recipient, sender)   | messages and file parts     | `queued_from_you` without a scan      |
//!
//! Sequence numbers come from one counter kept in `meta`, so mailbox order survives restarts and
//! a seq is never reused. `mailbox_ids`, `usage` and `queued_from` are derived from `mail` and
//! always change in the same transaction as it. `queued_from` is a counter table rather than a
//! scan because every lookup asks for it, while a mailbox may hold thousands of messages.
//! An id is only remembered while its message is held: once delivered and removed, a retry is
//! stored again, and the recipient drops the duplicate by id.
//!
//! # Receipts
//!
//! Removing delivered mail stores, in the same transaction, a [`Receipt`] in each sender's
//! mailbox naming the chat messages (and whole files) its recipient took: the recipient's acks
//! travel back to the sender through the mailbox, online or not. One receipt covers everything
//! of one sender removed in one batch. Receipts count against the sender's quota but not in
//! `queued_from` (they must not hold the recipient's own messages back), and a receipt that
//! does not fit is dropped: it is a courtesy, the message itself was delivered.
//!
//! # Upgrades
//!
//! Version 1 kept bare [`ChatMessage`]s in a table named `mailbox`; opening such a file moves
//! them into `mail` once, under the same keys.
//!
//! # Durability
//!
//! Every write transaction commits with [`Durability::Immediate`]: when a method returns `Ok`,
//! the change is on disk, and a `kill -9` or power loss right after loses nothing. Commits also
//! save redb's allocator state (quick repair), so reopening after a crash is fast. Each commit
//! costs an fsync; [`Writer`] amortises it by committing many deposits in one transaction.

use common::{
    defaults::{MAILBOX_QUOTA_BYTES, MAILBOX_QUOTA_MESSAGES},
    now_ms,
    wire::{ChatMessage, Mail, MessageId, Receipt},
    KeyId, Name,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use std::{collections::BTreeMap, path::Path, sync::Arc};
use tokio::sync::{mpsc, oneshot};

const NAMES: TableDefinition<&str, (&[u8; 32], Option<u64>)> = TableDefinition::new("names");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const MAIL: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("mail");
/// Version 1's mailbox of bare chat messages; see "Upgrades".
const MAILBOX_V1: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("mailbox");
const IDS: TableDefinition<(&str, &[u8; 16]), u64> = TableDefinition::new("mailbox_ids");
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");
const QUEUED: TableDefinition<(&str, &str), u64> = TableDefinition::new("queued_from");
const NEXT_SEQ: &str = "next_seq";

/// What the directory knows durably about a bound name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameRecord {
    /// The key the name is bound to.
    pub key: KeyId,
    /// When the name was last seen online (ms since the epoch), if ever recorded.
    pub last_seen_ms: Option<u64>,
}

/// The outcome of a successful [`Store::bind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// The name was free and is now bound to the key.
    New,
    /// The name was already bound to this same key.
    Existing,
}

/// Per-recipient mailbox limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Most messages held for one recipient.
    pub max_messages: u64,
    /// Most bytes (message bodies and file parts, see [`Mail::size`]) held for one recipient.
    pub max_bytes: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            max_messages: MAILBOX_QUOTA_MESSAGES,
            max_bytes: MAILBOX_QUOTA_BYTES,
        }
    }
}

/// Held mail and its mailbox sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Position in the global order; pass it to [`Store::remove_batch`] once delivered.
    pub seq: u64,
    /// The mail as deposited.
    pub mail: Mail,
}

/// Why a storage operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The name is bound to another key.
    #[error("the name is bound to another key")]
    NameTaken,
    /// The recipient's mailbox is over quota.
    #[error("the recipient's mailbox is full")]
    MailboxFull,
    /// The database failed (I/O, corruption, encoding, or the writer thread stopped).
    #[error("database failure: {0}")]
    Db(String),
}

macro_rules! db_errors {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Db(e.to_string())
            }
        }
    )*};
}
db_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    postcard::Error,
);

/// The storage seam: everything the directory keeps across restarts. Methods block; call them
/// from `spawn_blocking` or through [`Writer`].
pub trait Store: Send + Sync + 'static {
    /// Binds `name` to `key` on first use; fails with [`StoreError::NameTaken`] if it is bound
    /// to another key.
    fn bind(&self, name: &Name, key: &KeyId) -> Result<Bind, StoreError>;
    /// The binding of `name`, if any.
    fn name(&self, name: &Name) -> Result<Option<NameRecord>, StoreError>;
    /// Records when `name` was last seen; does nothing if the name is not bound. One commit
    /// each, so call it on disconnect rather than on every heartbeat.
    fn set_last_seen(&self, name: &Name, ms: u64) -> Result<(), StoreError>;
    /// Durably stores each mail (one transaction, one fsync for the whole batch: group
    /// commit). Each entry's result is independent: `MailboxFull` for one does not fail the
    /// others. Idempotent by (recipient, mail id): depositing an id already held for that
    /// recipient is `Ok` and stores nothing new.
    fn deposit_batch(
        &self,
        mail: &[Mail],
        quota: Quota,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError>;
    /// Oldest first, seq > `after` (`None` = from the start), at most `limit`.
    fn pending(
        &self,
        recipient: &Name,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError>;
    /// Deletes these (recipient, seq) entries in one transaction, missing ones ignored, and
    /// stores receipts for their senders (see "Receipts"), within `quota`. For each entry,
    /// returns the sender whose mailbox got a receipt for it, to be woken.
    fn remove_batch(
        &self,
        entries: &[(Name, u64)],
        quota: Quota,
    ) -> Result<Vec<Option<Name>>, StoreError>;
    /// How many messages and file parts from `sender` wait in `recipient`'s mailbox.
    fn queued_from(&self, recipient: &Name, sender: &Name) -> Result<u32, StoreError>;
    /// What a lookup of `name` by `asker` needs: the binding, and how many of the asker's
    /// messages wait in `name`'s mailbox; `None` if the name is not bound. One read
    /// transaction.
    fn lookup(&self, name: &Name, asker: &Name) -> Result<Option<(NameRecord, u32)>, StoreError>;
    /// Total (entries, bytes) held for `recipient`.
    fn usage(&self, recipient: &Name) -> Result<(u64, u64), StoreError>;
}

/// [`Store`] in a single redb file.
pub struct RedbStore {
    db: Database,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

/// The mailbox tables, open in one write transaction.
struct Mailbox<'t> {
    messages: Table<'t, (&'static str, u64), &'static [u8]>,
    ids: Table<'t, (&'static str, &'static [u8; 16]), u64>,
    usage: Table<'t, &'static str, (u64, u64)>,
    queued: Table<'t, (&'static str, &'static str), u64>,
}

impl<'t> Mailbox<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            messages: txn.open_table(MAIL)?,
            ids: txn.open_table(IDS)?,
            usage: txn.open_table(USAGE)?,
            queued: txn.open_table(QUEUED)?,
        })
    }

    /// Stores one mail under `seq` unless it is a duplicate (`Ok(false)`) or over quota.
    fn deposit(&mut self, mail: &Mail, seq: u64, quota: Quota) -> Result<bool, StoreError> {
        let (to, id) = (mail.to().as_str(), mail.id());
        if self.ids.get((to, &id.0))?.is_some() {
            return Ok(false);
        }
        let (count, bytes) = self.usage.get(to)?.map_or((0, 0), |g| g.value());
        let len = mail.size();
        if count >= quota.max_messages || bytes.saturating_add(len) > quota.max_bytes {
            return Err(StoreError::MailboxFull);
        }
        let encoded = postcard::to_allocvec(mail)?;
        self.messages.insert((to, seq), encoded.as_slice())?;
        self.ids.insert((to, &id.0), seq)?;
        self.usage.insert(to, (count + 1, bytes + len))?;
        if !matches!(mail, Mail::Receipt(_)) {
            let from = mail.from().as_str();
            let queued = self.queued.get((to, from))?.map_or(0, |g| g.value());
            self.queued.insert((to, from), queued + 1)?;
        }
        Ok(true)
    }

    /// Deletes one entry and its derived rows, returning it; `None` if it was not there (or
    /// could not be decoded).
    fn remove(&mut self, to: &str, seq: u64) -> Result<Option<Mail>, StoreError> {
        let Some(bytes) = self.messages.remove((to, seq))?.map(|g| g.value().to_vec()) else {
            return Ok(None);
        };
        let mail: Mail = match postcard::from_bytes(&bytes) {
            Ok(mail) => mail,
            Err(e) => {
                // Keeping an entry nobody can read helps no one; its counters stay a little off.
                tracing::warn!(
                    recipient = to,
                    seq,
                    "removed an undecodable mailbox entry: {e}"
                );
                return Ok(None);
            }
        };
        self.ids.remove((to, &mail.id().0))?;
        let (count, bytes) = self.usage.get(to)?.map_or((0, 0), |g| g.value());
        let usage = (count.saturating_sub(1), bytes.saturating_sub(mail.size()));
        if usage.0 == 0 {
            self.usage.remove(to)?;
        } else {
            self.usage.insert(to, usage)?;
        }
        if !matches!(mail, Mail::Receipt(_)) {
            let from = mail.from().as_str();
            let queued = self.queued.get((to, from))?.map_or(0, |g| g.value());
            if queued <= 1 {
                self.queued.remove((to, from))?;
            } else {
                self.queued.insert((to, from), queued - 1)?;
            }
        }
        Ok(Some(mail))
    }
}

/// A receipt being gathered while a batch is removed.
#[derive(Default)]
struct Gathered {
    /// What it tells the sender.
    delivered: Vec<MessageId>,
    /// The batch's entries it answers (indices), whose callers learn the sender to wake.
    entries: Vec<usize>,
}

/// What a removed entry tells its sender: the id of a chat message, or of a file whose last
/// part it was. Receipts and other file parts tell nothing.
fn receipt_for(mail: &Mail) -> Option<(&Name, MessageId)> {
    match mail {
        Mail::Chat(m) if m.from != m.to => Some((&m.from, m.id)),
        Mail::FilePart(p) if p.is_last() && p.offer.from != p.offer.to => {
            Some((&p.offer.from, p.offer.id))
        }
        _ => None,
    }
}

/// Moves version 1's bare chat messages into the `mail` table (see "Upgrades").
fn upgrade_v1(txn: &WriteTransaction) -> Result<(), StoreError> {
    let old: Vec<((String, u64), Vec<u8>)> = {
        let table = txn.open_table(MAILBOX_V1)?;
        let mut rows = Vec::new();
        for row in table.iter()? {
            let (key, value) = row?;
            let (to, seq) = key.value();
            rows.push(((to.to_string(), seq), value.value().to_vec()));
        }
        rows
    };
    if !old.is_empty() {
        let mut mail = txn.open_table(MAIL)?;
        for ((to, seq), bytes) in &old {
            match postcard::from_bytes::<ChatMessage>(bytes) {
                Ok(m) => {
                    let encoded = postcard::to_allocvec(&Mail::Chat(m))?;
                    mail.insert((to.as_str(), *seq), encoded.as_slice())?;
                }
                Err(e) => {
                    tracing::warn!(recipient = %to, seq, "dropped an undecodable v1 entry: {e}")
                }
            }
        }
        tracing::info!(
            entries = old.len(),
            "moved the version 1 mailbox into `mail`"
        );
    }
    txn.delete_table(MAILBOX_V1)?;
    Ok(())
}

impl RedbStore {
    /// Opens the database at `path`, creating the file and its tables if absent.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self {
            db: Database::create(path)?,
        };
        let txn = store.write()?;
        txn.open_table(NAMES)?;
        txn.open_table(META)?;
        Mailbox::open(&txn)?;
        upgrade_v1(&txn)?;
        txn.commit()?;
        Ok(store)
    }

    /// A write transaction that is on disk once `commit` returns.
    fn write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(true);
        Ok(txn)
    }
}

/// `Some` if a name bound to `found` needs no new binding for `key`.
fn check_binding(found: Option<KeyId>, key: &KeyId) -> Result<Option<Bind>, StoreError> {
    match found {
        Some(found) if found == *key => Ok(Some(Bind::Existing)),
        Some(_) => Err(StoreError::NameTaken),
        None => Ok(None),
    }
}

impl Store for RedbStore {
    fn bind(&self, name: &Name, key: &KeyId) -> Result<Bind, StoreError> {
        // Most binds are re-registrations: answer them without taking the write lock.
        if let Some(bind) = check_binding(self.name(name)?.map(|r| r.key), key)? {
            return Ok(bind);
        }
        let txn = self.write()?;
        {
            let mut names = txn.open_table(NAMES)?;
            let found = names.get(name.as_str())?.map(|g| KeyId(*g.value().0));
            if let Some(bind) = check_binding(found, key)? {
                return Ok(bind);
            }
            names.insert(name.as_str(), (&key.0, None))?;
        }
        txn.commit()?;
        Ok(Bind::New)
    }

    fn name(&self, name: &Name) -> Result<Option<NameRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let names = txn.open_table(NAMES)?;
        Ok(names.get(name.as_str())?.map(|g| {
            let (key, last_seen_ms) = g.value();
            NameRecord {
                key: KeyId(*key),
                last_seen_ms,
            }
        }))
    }

    fn set_last_seen(&self, name: &Name, ms: u64) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let mut names = txn.open_table(NAMES)?;
            let Some(key) = names.get(name.as_str())?.map(|g| *g.value().0) else {
                return Ok(());
            };
            names.insert(name.as_str(), (&key, Some(ms)))?;
        }
        txn.commit()?;
        Ok(())
    }

    fn deposit_batch(
        &self,
        mail: &[Mail],
        quota: Quota,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let txn = self.write()?;
        let results = {
            let mut meta = txn.open_table(META)?;
            let mut mailbox = Mailbox::open(&txn)?;
            let mut next = meta.get(NEXT_SEQ)?.map_or(1, |g| g.value());
            let mut results = Vec::with_capacity(mail.len());
            for m in mail {
                results.push(match mailbox.deposit(m, next, quota) {
                    Ok(stored) => {
                        next += u64::from(stored);
                        Ok(())
                    }
                    Err(e @ StoreError::MailboxFull) => Err(e),
                    // Anything else is the database failing: abort the whole batch.
                    Err(e) => return Err(e),
                });
            }
            meta.insert(NEXT_SEQ, next)?;
            results
        };
        txn.commit()?;
        Ok(results)
    }

    fn pending(
        &self,
        recipient: &Name,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let from = match after {
            None => 0,
            Some(after) => match after.checked_add(1) {
                Some(from) => from,
                None => return Ok(Vec::new()),
            },
        };
        let to = recipient.as_str();
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MAIL)?;
        let mut out = Vec::new();
        for entry in table.range((to, from)..=(to, u64::MAX))?.take(limit) {
            let (key, value) = entry?;
            out.push(Stored {
                seq: key.value().1,
                mail: postcard::from_bytes(value.value())?,
            });
        }
        Ok(out)
    }

    fn remove_batch(
        &self,
        entries: &[(Name, u64)],
        quota: Quota,
    ) -> Result<Vec<Option<Name>>, StoreError> {
        let txn = self.write()?;
        let mut changed = false;
        let mut woken = vec![None; entries.len()];
        {
            let mut mailbox = Mailbox::open(&txn)?;
            // By (recipient who took the mail, its sender).
            let mut receipts: BTreeMap<(&Name, Name), Gathered> = BTreeMap::new();
            for (i, (name, seq)) in entries.iter().enumerate() {
                let Some(mail) = mailbox.remove(name.as_str(), *seq)? else {
                    continue;
                };
                changed = true;
                if let Some((sender, id)) = receipt_for(&mail) {
                    let gathered = receipts.entry((name, sender.clone())).or_default();
                    gathered.delivered.push(id);
                    gathered.entries.push(i);
                }
            }
            if !receipts.is_empty() {
                let mut meta = txn.open_table(META)?;
                let mut next = meta.get(NEXT_SEQ)?.map_or(1, |g| g.value());
                let at_ms = now_ms();
                for ((recipient, sender), gathered) in receipts {
                    let receipt = Mail::Receipt(Receipt {
                        id: MessageId::random(),
                        from: recipient.clone(),
                        to: sender.clone(),
                        delivered: gathered.delivered,
                        at_ms,
                    });
                    match mailbox.deposit(&receipt, next, quota) {
                        Ok(_) => {
                            next += 1;
                            for i in gathered.entries {
                                woken[i] = Some(sender.clone());
                            }
                        }
                        Err(StoreError::MailboxFull) => {
                            tracing::debug!(%sender, "no room for a receipt; dropped");
                        }
                        Err(e) => return Err(e),
                    }
                }
                meta.insert(NEXT_SEQ, next)?;
            }
        }
        if changed {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(woken)
    }

    fn lookup(&self, name: &Name, asker: &Name) -> Result<Option<(NameRecord, u32)>, StoreError> {
        let txn = self.db.begin_read()?;
        let names = txn.open_table(NAMES)?;
        let Some(record) = names.get(name.as_str())?.map(|g| {
            let (key, last_seen_ms) = g.value();
            NameRecord {
                key: KeyId(*key),
                last_seen_ms,
            }
        }) else {
            return Ok(None);
        };
        let queued = txn
            .open_table(QUEUED)?
            .get((name.as_str(), asker.as_str()))?
            .map_or(0, |g| g.value());
        Ok(Some((record, u32::try_from(queued).unwrap_or(u32::MAX))))
    }

    fn queued_from(&self, recipient: &Name, sender: &Name) -> Result<u32, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(QUEUED)?;
        let n = table
            .get((recipient.as_str(), sender.as_str()))?
            .map_or(0, |g| g.value());
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn usage(&self, recipient: &Name) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(USAGE)?;
        Ok(table.get(recipient.as_str())?.map_or((0, 0), |g| g.value()))
    }
}

/// Most operations one group commit takes from the queue.
const MAX_BATCH: usize = 1024;

type Reply = oneshot::Sender<Result<(), StoreError>>;
type RemoveReply = oneshot::Sender<Result<Option<Name>, StoreError>>;

enum Op {
    Deposit(Mail, Reply),
    Remove((Name, u64), RemoveReply),
}

/// Group-commit front of a [`Store`] for async code. One dedicated thread takes everything
/// queued (up to 1024 operations), commits all deposits in one transaction and all
/// removals in another, then answers each caller: one fsync serves a whole batch. Cheap to
/// clone (a channel handle); the thread ends when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
}

fn stopped() -> StoreError {
    StoreError::Db("the store writer has stopped".into())
}

impl Writer {
    /// Starts the writer thread; deposits are checked against `quota`.
    pub fn spawn(store: Arc<dyn Store>, quota: Quota) -> Writer {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let started = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(store.as_ref(), quota, rx));
        if let Err(e) = started {
            // The receiver went down with the closure, so every call reports the failure.
            tracing::error!("cannot start the store writer: {e}");
        }
        Writer { tx }
    }

    /// Durably stores `mail`; `Ok` once it is committed (or was already held).
    pub async fn deposit(&self, mail: Mail) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Op::Deposit(mail, reply), answer).await
    }

    /// Durably deletes the mailbox entry `(recipient, seq)`, if it exists, with the receipt it
    /// earns its sender; returns that sender if a receipt was stored.
    pub async fn remove(&self, recipient: Name, seq: u64) -> Result<Option<Name>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Op::Remove((recipient, seq), reply), answer)
            .await
    }

    async fn submit<T>(
        &self,
        op: Op,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.tx.send(op).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn run(store: &dyn Store, quota: Quota, mut rx: mpsc::Receiver<Op>) {
    while let Some(first) = rx.blocking_recv() {
        let (mut deposits, mut deposit_replies) = (Vec::new(), Vec::new());
        let (mut removes, mut remove_replies) = (Vec::new(), Vec::new());
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(op) = next {
            match op {
                Op::Deposit(m, reply) => {
                    deposits.push(m);
                    deposit_replies.push(reply);
                }
                Op::Remove(entry, reply) => {
                    removes.push(entry);
                    remove_replies.push(reply);
                }
            }
            taken += 1;
            next = if taken < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        // Removals first, so the space they free is there for this batch's deposits.
        if !removes.is_empty() {
            match store.remove_batch(&removes, quota) {
                Ok(woken) => {
                    for (reply, sender) in remove_replies.into_iter().zip(woken) {
                        let _ = reply.send(Ok(sender));
                    }
                }
                Err(e) => {
                    for reply in remove_replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
        if !deposits.is_empty() {
            match store.deposit_batch(&deposits, quota) {
                Ok(results) => {
                    for (reply, result) in deposit_replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                Err(e) => {
                    for reply in deposit_replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::MessageId;
    use std::collections::HashMap;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn name(s: &str) -> Name {
        Name::new(s).expect("valid test name")
    }

    fn chat(from: &str, to: &str, body: &str) -> ChatMessage {
        ChatMessage {
            id: MessageId::random(),
            from: name(from),
            to: name(to),
            sent_at_ms: 1,
            body: body.into(),
        }
    }

    fn msg(from: &str, to: &str, body: &str) -> Mail {
        Mail::Chat(chat(from, to, body))
    }

    fn body(mail: &Mail) -> &str {
        match mail {
            Mail::Chat(m) => &m.body,
            _ => "(not a chat message)",
        }
    }

    fn open(dir: &tempfile::TempDir) -> Result<RedbStore, StoreError> {
        RedbStore::open(&dir.path().join("directory.redb"))
    }

    fn bodies(stored: &[Stored]) -> Vec<&str> {
        stored.iter().map(|s| body(&s.mail)).collect()
    }

    #[test]
    fn bind_new_existing_taken() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = open(&dir)?;
        let (a, b) = (KeyId([1; 32]), KeyId([2; 32]));
        assert_eq!(store.bind(&name("c1"), &a)?, Bind::New);
        assert_eq!(store.bind(&name("c1"), &a)?, Bind::Existing);
        assert_eq!(store.bind(&name("c1"), &b), Err(StoreError::NameTaken));
        assert_eq!(store.bind(&name("c2"), &b)?, Bind::New);
        assert_eq!(store.name(&name("nobody"))?, None);
        store.set_last_seen(&name("c1"), 42)?;
        store.set_last_seen(&name("nobody"), 42)?;
        let record = NameRecord {
            key: a,
            last_seen_ms: Some(42),
        };
        assert_eq!(store.name(&name("c1"))?, Some(record));
        assert_eq!(store.name(&name("nobody"))?, None);
        Ok(())
    }

    #[test]
    fn reopen_keeps_bindings_and_mailbox_order() -> TestResult {
        let dir = tempfile::tempdir()?;
        let first_seqs: Vec<u64> = {
            let store = open(&dir)?;
            store.bind(&name("c1"), &KeyId([1; 32]))?;
            let batch = [msg("c1", "c2", "a"), msg("c1", "c2", "b")];
            store.deposit_batch(&batch, Quota::default())?;
            store.deposit_batch(&[msg("c3", "c2", "c")], Quota::default())?;
            let pending = store.pending(&name("c2"), None, 10)?;
            pending.iter().map(|s| s.seq).collect()
        };
        let store = open(&dir)?;
        assert_eq!(store.bind(&name("c1"), &KeyId([1; 32]))?, Bind::Existing);
        assert_eq!(store.usage(&name("c2"))?, (3, 3));
        store.deposit_batch(&[msg("c1", "c2", "d")], Quota::default())?;
        let pending = store.pending(&name("c2"), None, 10)?;
        assert_eq!(bodies(&pending), ["a", "b", "c", "d"]);
        assert_eq!(
            pending[..3].iter().map(|s| s.seq).collect::<Vec<_>>(),
            first_seqs
        );
        assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
        let rest = store.pending(&name("c2"), Some(pending[1].seq), 1)?;
        assert_eq!(bodies(&rest), ["c"]);
        Ok(())
    }

    #[test]
    fn deposit_is_idempotent() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = open(&dir)?;
        let m = chat("c1", "c2", "hello");
        let results = store.deposit_batch(
            &[Mail::Chat(m.clone()), Mail::Chat(m.clone())],
            Quota::default(),
        )?;
        assert_eq!(results, [Ok(()), Ok(())]);
        assert_eq!(
            store.deposit_batch(&[Mail::Chat(m.clone())], Quota::default())?,
            [Ok(())]
        );
        assert_eq!(store.usage(&name("c2"))?, (1, 5));
        assert_eq!(store.pending(&name("c2"), None, 10)?.len(), 1);
        // The same id to another recipient is another message.
        let other = ChatMessage {
            to: name("c3"),
            ..m
        };
        store.deposit_batch(&[Mail::Chat(other)], Quota::default())?;
        assert_eq!(store.usage(&name("c3"))?, (1, 5));
        Ok(())
    }

    #[test]
    fn quota_by_count_and_bytes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = open(&dir)?;
        let by_count = Quota {
            max_messages: 2,
            max_bytes: 1000,
        };
        let batch = [
            msg("c1", "c2", "1"),
            msg("c1", "c2", "2"),
            msg("c1", "c2", "3"),
            msg("c1", "c3", "4"),
        ];
        let results = store.deposit_batch(&batch, by_count)?;
        assert_eq!(
            results,
            [Ok(()), Ok(()), Err(StoreError::MailboxFull), Ok(())]
        );
        assert_eq!(bodies(&store.pending(&name("c2"), None, 10)?), ["1", "2"]);

        let by_bytes = Quota {
            max_messages: 100,
            max_bytes: 10,
        };
        let batch = [
            msg("c1", "c4", "12345678"),
            msg("c1", "c4", "abc"),
            msg("c1", "c4", "ab"),
        ];
        let results = store.deposit_batch(&batch, by_bytes)?;
        assert_eq!(results, [Ok(()), Err(StoreError::MailboxFull), Ok(())]);
        assert_eq!(store.usage(&name("c4"))?, (2, 10));
        Ok(())
    }

    #[test]
    fn remove_then_pending() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = open(&dir)?;
        let batch = [
            msg("c1", "c2", "a"),
            msg("c1", "c2", "bb"),
            msg("c1", "c2", "ccc"),
        ];
        store.deposit_batch(&batch, Quota::default())?;
        let seqs: Vec<u64> = store
            .pending(&name("c2"), None, 10)?
            .iter()
            .map(|s| s.seq)
            .collect();
        let woken = store.remove_batch(
            &[(name("c2"), seqs[1]), (name("c2"), 999), (name("c9"), 1)],
            Quota::default(),
        )?;
        assert_eq!(woken, [Some(name("c1")), None, None]);
        assert_eq!(bodies(&store.pending(&name("c2"), None, 10)?), ["a", "ccc"]);
        assert_eq!(store.usage(&name("c2"))?, (2, 4));
        // A removed id may be deposited again (the recipient dedupes by id).
        store.deposit_batch(&batch[1..2], Quota::default())?;
        assert_eq!(
            bodies(&store.pending(&name("c2"), None, 10)?),
            ["a", "ccc", "bb"]
        );
        let all: Vec<(Name, u64)> = store
            .pending(&name("c2"), None, 10)?
            .into_iter()
            .map(|s| (name("c2"), s.seq))
            .collect();
        store.remove_batch(&all, Quota::default())?;
        assert!(store.pending(&name("c2"), None, 10)?.is_empty());
        assert_eq!(store.usage(&name("c2"))?, (0, 0));
        // c1 holds one receipt per batch that removed its messages.
        assert_eq!(store.pending(&name("c1"), None, 10)?.len(), 2);
        Ok(())
    }

    #[test]
    fn queued_from_counts() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = open(&dir)?;
        let batch = [
            msg("c1", "c2", "a"),
            msg("c3", "c2", "b"),
            msg("c1", "c2", "c"),
            msg("c1", "c3", "d"),
        ];
        store.deposit_batch(&batch, Quota::default())?;
        assert_eq!(store.queued_from(&name("c2"), &name("c1"))?, 2);
        assert_eq!(store.queued_from(&name("c2"), &name("c3"))?, 1);
        assert_eq!(store.queued_from(&name("c3"), &name("c1"))?, 1);
        assert_eq!(store.queued_from(&name("c1"), &name("c2"))?, 0);
        store.bind(&name("c2"), &KeyId([5; 32]))?;
        let (record, queued) = store
            .lookup(&name("c2"), &name("c1"))?
            .ok_or("no binding")?;
        assert_eq!((record.key, queued), (KeyId([5; 32]), 2));
        assert_eq!(store.lookup(&name("nobody"), &name("c1"))?, None);
        let first = store.pending(&name("c2"), None, 1)?;
        store.remove_batch(&[(name("c2"), first[0].seq)], Quota::default())?;
        assert_eq!(store.queued_from(&name("c2"), &name("c1"))?, 1);
        // The receipt waiting for c1 does not hold c2's own messages to c1 back.
        assert_eq!(store.pending(&name("c1"), None, 10)?.len(), 1);
        assert_eq!(store.queued_from(&name("c1"), &name("c2"))?, 0);
        Ok(())
    }

    fn receipts(stored: &[Stored]) -> Vec<(String, Vec<MessageId>)> {
        stored
            .iter()
            .filter_map(|s| match &s.mail {
                Mail::Receipt(r) => Some((r.from.to_string(), r.delivered.clone())),
                _ => None,
            })
            .collect()
    }

    fn part(from: &str, to: &str, offset: u64, data: &[u8], size: u64) -> (Mail, MessageId) {
        let offer = common::wire::FileOffer {
            id: MessageId([9; 16]),
            from: name(from),
            to: name(to),
            name: "f".into(),
            size,
            hash: [0; 32],
            sent_at_ms: 1,
        };
        let part = common::wire::FilePart {
            id: MessageId::random(),
            offer,
            offset,
            data: data.to_vec(),
        };
        (Mail::FilePart(part), MessageId([9; 16]))
    }

    #[test]
    fn removing_delivered_mail_leaves_receipts_for_its_senders() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = open(&dir)?;
        let (a, b, c) = (
            chat("c1", "c2", "a"),
            chat("c3", "c2", "b"),
            chat("c1", "c2", "c"),
        );
        let (first, file_id) = part("c1", "c2", 0, b"12", 4);
        let (last, _) = part("c1", "c2", 2, b"34", 4);
        let mail = [
            Mail::Chat(a.clone()),
            Mail::Chat(b.clone()),
            Mail::Chat(c.clone()),
            first,
            last,
        ];
        store.deposit_batch(&mail, Quota::default())?;
        assert_eq!(store.usage(&name("c2"))?, (5, 7));
        let all: Vec<(Name, u64)> = store
            .pending(&name("c2"), None, 10)?
            .iter()
            .map(|s| (name("c2"), s.seq))
            .collect();
        let woken = store.remove_batch(&all, Quota::default())?;
        let (c1, c3) = (Some(name("c1")), Some(name("c3")));
        assert_eq!(woken, [c1.clone(), c3, c1.clone(), None, c1]);
        // One receipt per sender; only a file's last part earns one, under the file's id.
        let held = store.pending(&name("c1"), None, 10)?;
        assert_eq!(receipts(&held), [("c2".into(), vec![a.id, c.id, file_id])]);
        assert_eq!(
            receipts(&store.pending(&name("c3"), None, 10)?),
            [("c2".into(), vec![b.id])]
        );
        // Taking a receipt earns none in turn.
        let woken = store.remove_batch(&[(name("c1"), held[0].seq)], Quota::default())?;
        assert_eq!(woken, [None]);
        assert!(store.pending(&name("c2"), None, 10)?.is_empty());
        Ok(())
    }

    #[test]
    fn a_receipt_that_does_not_fit_is_dropped() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = open(&dir)?;
        let quota = Quota {
            max_messages: 1,
            max_bytes: 1000,
        };
        store.deposit_batch(&[msg("c2", "c1", "fills c1's mailbox")], quota)?;
        store.deposit_batch(&[msg("c1", "c2", "hi")], quota)?;
        let held = store.pending(&name("c2"), None, 10)?;
        let woken = store.remove_batch(&[(name("c2"), held[0].seq)], quota)?;
        assert_eq!(woken, [None]);
        assert!(store.pending(&name("c2"), None, 10)?.is_empty());
        assert_eq!(store.usage(&name("c1"))?, (1, 18));
        Ok(())
    }

    #[test]
    fn a_version_1_mailbox_is_moved_into_mail() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("directory.redb");
        let old = chat("c1", "c2", "from before");
        {
            let db = Database::create(&path)?;
            let txn = db.begin_write()?;
            {
                let mut v1 = txn.open_table(MAILBOX_V1)?;
                let bytes = postcard::to_allocvec(&old)?;
                v1.insert(("c2", 7), bytes.as_slice())?;
                txn.open_table(IDS)?.insert(("c2", &old.id.0), 7)?;
                txn.open_table(USAGE)?.insert("c2", (1, 11))?;
                txn.open_table(META)?.insert(NEXT_SEQ, 8)?;
            }
            txn.commit()?;
        }
        let store = RedbStore::open(&path)?;
        let held = store.pending(&name("c2"), None, 10)?;
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].seq, &held[0].mail), (7, &Mail::Chat(old)));
        store.remove_batch(&[(name("c2"), 7)], Quota::default())?;
        assert_eq!(store.usage(&name("c2"))?, (0, 0));
        drop(store);
        // Reopening finds nothing left to move.
        let store = RedbStore::open(&path)?;
        assert!(store.pending(&name("c2"), None, 10)?.is_empty());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writer_keeps_concurrent_deposits_in_sender_order() -> TestResult {
        const SENDERS: usize = 20;
        const EACH: usize = 50;
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(open(&dir)?);
        let writer = Writer::spawn(store.clone(), Quota::default());
        let mut tasks = Vec::new();
        for s in 0..SENDERS {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    writer
                        .deposit(msg(&format!("s{s}"), "r", &i.to_string()))
                        .await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let pending = store.pending(&name("r"), None, usize::MAX)?;
        assert_eq!(pending.len(), SENDERS * EACH);
        let mut per_sender: HashMap<&str, Vec<usize>> = HashMap::new();
        for s in &pending {
            per_sender
                .entry(s.mail.from().as_str())
                .or_default()
                .push(body(&s.mail).parse()?);
        }
        let expected: Vec<usize> = (0..EACH).collect();
        assert_eq!(per_sender.len(), SENDERS);
        assert!(per_sender.values().all(|v| *v == expected));
        assert_eq!(store.queued_from(&name("r"), &name("s0"))?, EACH as u32);

        // Removing the oldest entry names its sender, whichever task deposited first.
        assert_eq!(
            writer.remove(name("r"), pending[0].seq).await?,
            Some(pending[0].mail.from().clone())
        );
        assert_eq!(writer.remove(name("r"), pending[0].seq).await?, None);
        assert_eq!(store.usage(&name("r"))?.0, (SENDERS * EACH - 1) as u64);
        Ok(())
    }
}

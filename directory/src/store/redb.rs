//! The [`Store`] in a single redb file: its tables, and how each method reads or writes them.
//!
//! # What is stored
//!
//! | table         | key                   | value                       | why                                   |
//! |---------------|-----------------------|-----------------------------|---------------------------------------|
//! | `names`       | name                  | (key id, last seen ms)      | first-use binding of a name to a key  |
//! | `active`      | name                  | ms                          | when its key last registered it       |
//! | `key_names`   | (key id, name)        | ()                          | names per key without a scan          |
//! | `skeletons`   | (skeleton, name)      | ()                          | lookalike names without a scan        |
//! | `meta`        | `"next_seq"`, ...     | u64                         | sequence counter, bytes held, layout  |
//! | `mail`        | (recipient, seq)      | postcard [`Mail`]           | held mail, oldest first per name      |
//! | `mailbox_ids` | (recipient, mail id)  | seq                         | makes a retried deposit a no-op       |
//! | `usage`       | recipient             | (entries, bytes)            | quota checks without a scan           |
//! | `senders`     | (recipient, sender)   | (entries, bytes)            | per-sender quota, `queued_from_you`   |
//! | `published`   | key id                | postcard `PublishedKey`     | the key's signed encryption key       |
//! | `room_ops`    | (room, version)       | postcard `Op`               | each room's signed membership log     |
//!
//! `mailbox_ids`, `usage`, `senders` and the bytes held in `meta` are derived from `mail`, and
//! `active`, `key_names` and `skeletons` from `names`; each changes in the same transaction as
//! what it is derived from. `senders` is a counter table rather than a scan because every
//! lookup asks for it, while a mailbox may hold thousands of messages. Bytes are counted as
//! stored ([`Mail::size`]). Files written by version 1 are moved into these tables on open
//! (`upgrade`); files of an older layout (recorded in `meta`) get their derived tables rebuilt
//! once.
//!
//! # Durability
//!
//! Every write transaction commits with [`Durability::Immediate`]: when a method returns `Ok`,
//! the change is on disk. Commits also save redb's allocator state (quick repair), so reopening
//! after a crash is fast. Each commit costs an fsync; [`super::Writer`] amortises it by
//! committing many deposits, or many registrations, in one transaction.

use super::{
    receipt_for, upgrade, Bind, Binding, NameRecord, Naming, Quota, Removal, Store, StoreError,
    Stored,
};
use common::{
    now_ms,
    room::{Op, RoomName},
    wire::{Mail, MessageId, Proof, SignedReceipt},
    KeyId, Name,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

const NAMES: TableDefinition<&str, (&[u8; 32], Option<u64>)> = TableDefinition::new("names");
const ACTIVE: TableDefinition<&str, u64> = TableDefinition::new("active");
const KEY_NAMES: TableDefinition<(&[u8; 32], &str), ()> = TableDefinition::new("key_names");
const SKELETONS: TableDefinition<(&str, &str), ()> = TableDefinition::new("skeletons");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const MAIL: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("mail");
const IDS: TableDefinition<(&str, &[u8; 16]), u64> = TableDefinition::new("mailbox_ids");
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");
const SENDERS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("senders");
const PUBLISHED: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("published");
/// Most proofs one receipt holds: 256 of 80 bytes stay far inside a frame.
const RECEIPT_PROOFS: usize = 256;
const ROOM_OPS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("room_ops");
/// Layout 2's count of messages per (recipient, sender), which `senders` replaces.
const QUEUED_V2: TableDefinition<(&str, &str), u64> = TableDefinition::new("queued_from");
const NEXT_SEQ: &str = "next_seq";
/// In a replica: the position in the log of the last entry applied.
const LOG_POSITION: &str = "log_position";
const HELD_BYTES: &str = "held_bytes";
/// Which layout the file has: 3 since bytes are counted as stored and names are indexed by key
/// and skeleton; absent before.
const LAYOUT: &str = "layout";
const CURRENT_LAYOUT: u64 = 3;

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
    std::io::Error,
);

/// [`Store`] in a single redb file.
pub struct RedbStore {
    db: Database,
    /// The file, for the free space of its disk.
    path: PathBuf,
    /// The entry of a replicated log being applied, if the file is a replica (see
    /// [`RedbStore::applying`]).
    applying: std::sync::Mutex<Option<Applying>>,
}

/// A log entry being applied to a replica: where it is in the log, and its time.
#[derive(Clone, Copy, Debug)]
struct Applying {
    position: u64,
    at_ms: u64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

/// The first sequence number or version after `after` (from the start for `None`); `None`
/// when there is none (`after` is the last possible one).
fn first_after(after: Option<u64>) -> Option<u64> {
    match after {
        None => Some(0),
        Some(after) => after.checked_add(1),
    }
}

/// Adds `delta` (entries, bytes) to a counter row, deleting the row when it reaches zero.
fn add<K: redb::Key + 'static>(
    table: &mut Table<'_, K, (u64, u64)>,
    key: K::SelfType<'_>,
    now: (u64, u64),
    grow: bool,
    delta: (u64, u64),
) -> Result<(), StoreError> {
    let next = if grow {
        (now.0 + delta.0, now.1.saturating_add(delta.1))
    } else {
        (now.0.saturating_sub(delta.0), now.1.saturating_sub(delta.1))
    };
    if next.0 == 0 {
        table.remove(key)?;
    } else {
        table.insert(key, next)?;
    }
    Ok(())
}

/// The mailbox tables, open in one write transaction.
struct Mailbox<'t> {
    messages: Table<'t, (&'static str, u64), &'static [u8]>,
    ids: Table<'t, (&'static str, &'static [u8; 16]), u64>,
    usage: Table<'t, &'static str, (u64, u64)>,
    senders: Table<'t, (&'static str, &'static str), (u64, u64)>,
    meta: Table<'t, &'static str, u64>,
}

impl<'t> Mailbox<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            messages: txn.open_table(MAIL)?,
            ids: txn.open_table(IDS)?,
            usage: txn.open_table(USAGE)?,
            senders: txn.open_table(SENDERS)?,
            meta: txn.open_table(META)?,
        })
    }

    fn meta(&self, key: &str, default: u64) -> Result<u64, StoreError> {
        Ok(self.meta.get(key)?.map_or(default, |g| g.value()))
    }

    /// Stores one mail under `seq` unless it is a duplicate (`Ok(false)`) or over a quota.
    /// The counters it changes are kept in `counters` until [`Counters::write`].
    fn deposit(
        &mut self,
        mail: &Mail,
        seq: u64,
        quota: Quota,
        counters: &mut Counters,
    ) -> Result<bool, StoreError> {
        let (to, id) = (mail.to().as_str(), mail.id());
        if self.ids.get((to, &id.0))?.is_some() {
            return Ok(false);
        }
        let encoded = postcard::to_allocvec(mail)?;
        let len = encoded.len() as u64;
        let (count, bytes) = counters.usage(&self.usage, to)?;
        if count >= quota.max_messages || bytes.saturating_add(len) > quota.max_bytes {
            return Err(StoreError::MailboxFull);
        }
        let sender = (!mail.is_receipt()).then(|| mail.from().as_str());
        let from_sender = match sender {
            Some(from) => counters.sender(&self.senders, to, from)?,
            None => (0, 0),
        };
        if sender.is_some()
            && (from_sender.0 >= quota.sender_messages
                || from_sender.1.saturating_add(len) > quota.sender_bytes)
        {
            return Err(StoreError::SenderQuotaFull);
        }
        let held = counters.held(&self.meta)?;
        if held.saturating_add(len) > quota.total_bytes {
            return Err(StoreError::StoreFull);
        }
        self.messages.insert((to, seq), encoded.as_slice())?;
        self.ids.insert((to, &id.0), seq)?;
        counters.set_usage(to, (count + 1, bytes + len));
        if let Some(from) = sender {
            counters.set_sender(to, from, (from_sender.0 + 1, from_sender.1 + len));
        }
        counters.held = Some(held + len);
        Ok(true)
    }

    /// Deletes one entry and its derived rows, returning it; `None` if it was not there (or
    /// could not be decoded).
    fn remove(&mut self, to: &str, seq: u64) -> Result<Option<Mail>, StoreError> {
        let Some(bytes) = self.messages.remove((to, seq))?.map(|g| g.value().to_vec()) else {
            return Ok(None);
        };
        let len = bytes.len() as u64;
        let held = self.meta(HELD_BYTES, 0)?;
        self.meta.insert(HELD_BYTES, held.saturating_sub(len))?;
        let usage = self.usage.get(to)?.map_or((0, 0), |g| g.value());
        add(&mut self.usage, to, usage, false, (1, len))?;
        let mail: Mail = match postcard::from_bytes(&bytes) {
            Ok(mail) => mail,
            Err(e) => {
                // Keeping an entry nobody can read helps no one; its id row stays behind.
                tracing::warn!(
                    recipient = to,
                    seq,
                    "removed an undecodable mailbox entry: {e}"
                );
                return Ok(None);
            }
        };
        self.ids.remove((to, &mail.id().0))?;
        if !mail.is_receipt() {
            let from = mail.from().as_str();
            let now = self.senders.get((to, from))?.map_or((0, 0), |g| g.value());
            add(&mut self.senders, (to, from), now, false, (1, len))?;
        }
        Ok(Some(mail))
    }

    /// Deletes everything held for `to` (a released name's mailbox), without receipts.
    fn empty(&mut self, to: &str) -> Result<(), StoreError> {
        let seqs: Vec<u64> = self
            .messages
            .range((to, 0)..=(to, u64::MAX))?
            .map(|entry| entry.map(|(key, _)| key.value().1))
            .collect::<Result<_, _>>()?;
        for seq in seqs {
            self.remove(to, seq)?;
        }
        Ok(())
    }

    /// Recounts `usage`, `senders` and the bytes held from `mail`, as stored.
    fn recount(&mut self) -> Result<(), StoreError> {
        let mut usage: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut senders: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        let mut held = 0;
        for entry in self.messages.iter()? {
            let (key, value) = entry?;
            let to = key.value().0.to_string();
            let len = value.value().len() as u64;
            held += len;
            let u = usage.entry(to.clone()).or_default();
            *u = (u.0 + 1, u.1 + len);
            match postcard::from_bytes::<Mail>(value.value()) {
                Ok(mail) if mail.is_receipt() => {}
                Err(_) => {}
                Ok(mail) => {
                    let s = senders.entry((to, mail.from().to_string())).or_default();
                    *s = (s.0 + 1, s.1 + len);
                }
            }
        }
        self.usage.retain(|_, _| false)?;
        for (to, u) in &usage {
            self.usage.insert(to.as_str(), *u)?;
        }
        self.senders.retain(|_, _| false)?;
        for ((to, from), s) in &senders {
            self.senders.insert((to.as_str(), from.as_str()), *s)?;
        }
        self.meta.insert(HELD_BYTES, held)?;
        Ok(())
    }
}

/// The counters a run of deposits changes (a recipient's entries and bytes, a sender's with
/// it, the bytes held), kept in memory from their first read until [`Counters::write`]: a
/// batch of deposits reads and writes each counter row once, not once per deposit.
#[derive(Default)]
struct Counters {
    usage: HashMap<String, (u64, u64)>,
    senders: HashMap<(String, String), (u64, u64)>,
    held: Option<u64>,
}

impl Counters {
    fn usage(
        &mut self,
        table: &Table<'_, &'static str, (u64, u64)>,
        to: &str,
    ) -> Result<(u64, u64), StoreError> {
        if let Some(now) = self.usage.get(to) {
            return Ok(*now);
        }
        let now = table.get(to)?.map_or((0, 0), |g| g.value());
        self.usage.insert(to.to_string(), now);
        Ok(now)
    }

    fn set_usage(&mut self, to: &str, now: (u64, u64)) {
        self.usage.insert(to.to_string(), now);
    }

    fn sender(
        &mut self,
        table: &Table<'_, (&'static str, &'static str), (u64, u64)>,
        to: &str,
        from: &str,
    ) -> Result<(u64, u64), StoreError> {
        let key = (to.to_string(), from.to_string());
        if let Some(now) = self.senders.get(&key) {
            return Ok(*now);
        }
        let now = table.get((to, from))?.map_or((0, 0), |g| g.value());
        self.senders.insert(key, now);
        Ok(now)
    }

    fn set_sender(&mut self, to: &str, from: &str, now: (u64, u64)) {
        self.senders.insert((to.to_string(), from.to_string()), now);
    }

    fn held(&mut self, meta: &Table<'_, &'static str, u64>) -> Result<u64, StoreError> {
        if let Some(held) = self.held {
            return Ok(held);
        }
        let held = meta.get(HELD_BYTES)?.map_or(0, |g| g.value());
        self.held = Some(held);
        Ok(held)
    }

    /// Writes every counter read since to `mailbox`'s tables; a row exists only while it
    /// counts something (one read for a refused deposit stays zero, and is not written).
    fn write(self, mailbox: &mut Mailbox<'_>) -> Result<(), StoreError> {
        for (to, now) in &self.usage {
            match now.0 {
                0 => mailbox.usage.remove(to.as_str()).map(drop)?,
                _ => mailbox.usage.insert(to.as_str(), *now).map(drop)?,
            }
        }
        for ((to, from), now) in &self.senders {
            let key = (to.as_str(), from.as_str());
            match now.0 {
                0 => mailbox.senders.remove(key).map(drop)?,
                _ => mailbox.senders.insert(key, *now).map(drop)?,
            }
        }
        if let Some(held) = self.held {
            mailbox.meta.insert(HELD_BYTES, held)?;
        }
        Ok(())
    }
}

/// The name tables, open in one write transaction.
struct Names<'t> {
    names: Table<'t, &'static str, (&'static [u8; 32], Option<u64>)>,
    active: Table<'t, &'static str, u64>,
    key_names: Table<'t, (&'static [u8; 32], &'static str), ()>,
    skeletons: Table<'t, (&'static str, &'static str), ()>,
}

impl<'t> Names<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            names: txn.open_table(NAMES)?,
            active: txn.open_table(ACTIVE)?,
            key_names: txn.open_table(KEY_NAMES)?,
            skeletons: txn.open_table(SKELETONS)?,
        })
    }

    fn key(&self, name: &str) -> Result<Option<KeyId>, StoreError> {
        Ok(self.names.get(name)?.map(|g| KeyId(*g.value().0)))
    }

    /// True if `name` is bound and its key registered it within `naming.expiry_ms` of `now`.
    fn live(&self, name: &str, now: u64, naming: Naming) -> Result<bool, StoreError> {
        if self.names.get(name)?.is_none() {
            return Ok(false);
        }
        let active = self.active.get(name)?.map_or(0, |g| g.value());
        Ok(now.saturating_sub(active) < naming.expiry_ms)
    }

    /// Binds `b`'s name to its key, or refreshes it; keys left without a name by the expired
    /// bindings this releases are added to `orphans`.
    fn binding(
        &mut self,
        b: &Binding,
        naming: Naming,
        mailbox: &mut Mailbox<'_>,
        orphans: &mut Vec<KeyId>,
    ) -> Result<Bind, StoreError> {
        let (name, key, now) = (b.name.as_str(), &b.key, b.at_ms);
        match self.key(name)? {
            Some(found) if found == *key => {
                self.touch(name, now)?;
                return Ok(Bind::Existing);
            }
            Some(_) if self.live(name, now, naming)? => return Err(StoreError::NameTaken),
            Some(_) => orphans.extend(self.release(name, mailbox)?),
            None => {}
        }
        let skeleton = b.name.skeleton();
        let mut lookalikes = Vec::new();
        for entry in self.skeletons.range((skeleton.as_str(), "")..)? {
            let (k, _) = entry?;
            let (s, other) = k.value();
            if s != skeleton {
                break;
            }
            lookalikes.push(other.to_string());
        }
        for other in lookalikes {
            if self.key(&other)?.is_some_and(|k| k == *key) {
                continue;
            }
            if self.live(&other, now, naming)? {
                return Err(StoreError::Lookalike);
            }
            orphans.extend(self.release(&other, mailbox)?);
        }
        if self.names_held(key)? >= naming.names_per_key as usize {
            return Err(StoreError::TooManyNames);
        }
        self.names.insert(name, (&key.0, None))?;
        self.key_names.insert((&key.0, name), ())?;
        self.skeletons.insert((skeleton.as_str(), name), ())?;
        self.active.insert(name, now)?;
        Ok(Bind::New)
    }

    /// Records that `name`'s key used it at `now`, if that is later than what is stored.
    fn touch(&mut self, name: &str, now: u64) -> Result<(), StoreError> {
        let active = self.active.get(name)?.map_or(0, |g| g.value());
        if now > active {
            self.active.insert(name, now)?;
        }
        Ok(())
    }

    /// How many names `key` holds.
    fn names_held(&self, key: &KeyId) -> Result<usize, StoreError> {
        let mut held = 0;
        for entry in self.key_names.range((&key.0, "")..)? {
            if entry?.0.value().0 != &key.0 {
                break;
            }
            held += 1;
        }
        Ok(held)
    }

    /// Drops an expired binding with its index rows and its mailbox: the name is free again.
    /// Returns its key if that holds no name any more (its published key can go).
    fn release(
        &mut self,
        name: &str,
        mailbox: &mut Mailbox<'_>,
    ) -> Result<Option<KeyId>, StoreError> {
        let Some(key) = self.key(name)? else {
            return Ok(None);
        };
        tracing::info!(name, "released a name unused for longer than its expiry");
        self.names.remove(name)?;
        self.active.remove(name)?;
        self.key_names.remove((&key.0, name))?;
        let skeleton = Name::new(name).map(|n| n.skeleton()).unwrap_or_default();
        self.skeletons.remove((skeleton.as_str(), name))?;
        mailbox.empty(name)?;
        Ok((self.names_held(&key)? == 0).then_some(key))
    }

    /// Rebuilds `active`, `key_names` and `skeletons` from `names`; a name never seen counts
    /// as active `now`, so no name expires because of the upgrade.
    fn reindex(&mut self, now: u64) -> Result<(), StoreError> {
        let mut rows = Vec::new();
        for entry in self.names.iter()? {
            let (name, value) = entry?;
            let (key, seen) = value.value();
            rows.push((name.value().to_string(), *key, seen));
        }
        for (name, key, seen) in rows {
            self.active
                .insert(name.as_str(), seen.unwrap_or(now).max(now))?;
            self.key_names.insert((&key, name.as_str()), ())?;
            if let Ok(n) = Name::new(name.as_str()) {
                self.skeletons
                    .insert((n.skeleton().as_str(), name.as_str()), ())?;
            }
        }
        Ok(())
    }
}

/// A receipt being gathered while a batch is removed.
#[derive(Default)]
struct Gathered {
    /// What it tells the sender.
    delivered: Vec<Proof>,
    /// The batch's entries it answers (indices), whose callers learn the sender to wake.
    entries: Vec<usize>,
}

impl RedbStore {
    /// Opens the database at `path`, creating the file and its tables if absent.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self {
            db: Database::create(path)?,
            path: path.to_path_buf(),
            applying: std::sync::Mutex::new(None),
        };
        let txn = store.write()?;
        upgrade::from_v1(&txn, MAIL)?;
        {
            let mut names = Names::open(&txn)?;
            let mut mailbox = Mailbox::open(&txn)?;
            let layout = mailbox.meta(LAYOUT, 0)?;
            if layout < CURRENT_LAYOUT {
                mailbox.recount()?;
                names.reindex(now_ms())?;
                mailbox.meta.insert(LAYOUT, CURRENT_LAYOUT)?;
            }
        }
        txn.delete_table(QUEUED_V2)?;
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

    /// Makes the next changes those of the log entry at `position`, made at `at_ms`: each
    /// commit records the position in the same transaction, and what a change stamps with the
    /// time (receipts) gets the entry's, so every replica applying the same entries holds the
    /// same data. For [`super::jetstream`], whose applier is this file's only writer.
    pub fn applying(&self, position: u64, at_ms: u64) {
        *self.applying.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Applying { position, at_ms });
    }

    /// The position of the last log entry applied (0 before any).
    pub fn log_position(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(LOG_POSITION)?.map_or(0, |g| g.value()))
    }

    fn now(&self) -> u64 {
        let applying = *self.applying.lock().unwrap_or_else(|e| e.into_inner());
        applying.map_or_else(now_ms, |a| a.at_ms)
    }

    /// Commits `txn`, with the log position of the entry being applied, if any.
    fn commit(&self, txn: WriteTransaction) -> Result<(), StoreError> {
        let applying = *self.applying.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = applying {
            txn.open_table(META)?.insert(LOG_POSITION, a.position)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Writes a copy of every table, as of one read transaction, to a new database at `to`,
    /// and returns the log position it holds: a snapshot of a replica, which a node that is
    /// behind the cluster's log loads in place of its own ([`super::compaction`]). Applying
    /// goes on meanwhile; redb's reads see one commit throughout.
    pub fn snapshot(&self, to: &Path) -> Result<u64, StoreError> {
        let from = self.db.begin_read()?;
        let copy = Database::create(to)?;
        let mut txn = copy.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        copy_table(&from, &txn, NAMES)?;
        copy_table(&from, &txn, ACTIVE)?;
        copy_table(&from, &txn, KEY_NAMES)?;
        copy_table(&from, &txn, SKELETONS)?;
        copy_table(&from, &txn, META)?;
        copy_table(&from, &txn, MAIL)?;
        copy_table(&from, &txn, IDS)?;
        copy_table(&from, &txn, USAGE)?;
        copy_table(&from, &txn, SENDERS)?;
        copy_table(&from, &txn, PUBLISHED)?;
        copy_table(&from, &txn, ROOM_OPS)?;
        txn.commit()?;
        let meta = from.open_table(META)?;
        Ok(meta.get(LOG_POSITION)?.map_or(0, |g| g.value()))
    }

    /// Free bytes on the disk holding the file, for an unprivileged writer.
    pub(super) fn free_disk(&self) -> Result<u64, StoreError> {
        let stat = rustix::fs::statvfs(&self.path).map_err(std::io::Error::from)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
}

/// Copies every row of `table`, if `from` has it, into `to`.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    let source = match from.open_table(table) {
        Ok(source) => source,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut target = to.open_table(table)?;
    for row in source.iter()? {
        let (key, value) = row?;
        target.insert(key.value(), value.value())?;
    }
    Ok(())
}

/// A receipt's id: unique, since it hashes the id of a message the receipt tells about, and the
/// same on every replica, which all store the receipt at the same `seq`.
fn receipt_id(seq: u64, proofs: &[Proof]) -> MessageId {
    let mut hash = blake3::Hasher::new_derive_key("p2p-chat directory receipt id v1");
    hash.update(&seq.to_le_bytes());
    for proof in proofs.iter().take(1) {
        hash.update(&proof.told.0);
    }
    let mut id = [0; 16];
    id.copy_from_slice(&hash.finalize().as_bytes()[..16]);
    MessageId(id)
}

/// Reads a name's record in a read transaction.
fn record(txn: &redb::ReadTransaction, name: &str) -> Result<Option<NameRecord>, StoreError> {
    let names = txn.open_table(NAMES)?;
    let Some((key, last_seen_ms)) = names.get(name)?.map(|g| {
        let (key, seen) = g.value();
        (KeyId(*key), seen)
    }) else {
        return Ok(None);
    };
    let active_ms = txn.open_table(ACTIVE)?.get(name)?.map_or(0, |g| g.value());
    // A table this file does not have yet holds nothing.
    let published = match txn.open_table(PUBLISHED) {
        Ok(table) => match table.get(&key.0)? {
            Some(bytes) => Some(postcard::from_bytes(bytes.value())?),
            None => None,
        },
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(Some(NameRecord {
        key,
        last_seen_ms,
        active_ms,
        published,
    }))
}

impl Store for RedbStore {
    fn update_names(
        &self,
        bindings: &[Binding],
        seen: &[(Name, u64)],
        naming: Naming,
    ) -> Result<Vec<Result<Bind, StoreError>>, StoreError> {
        let txn = self.write()?;
        let results = {
            let mut names = Names::open(&txn)?;
            let mut mailbox = Mailbox::open(&txn)?;
            let mut published = txn.open_table(PUBLISHED)?;
            let mut results = Vec::with_capacity(bindings.len());
            for b in bindings {
                let mut orphans = Vec::new();
                let result = names.binding(b, naming, &mut mailbox, &mut orphans);
                // A key without names cannot be looked up: what it published goes with them.
                for orphan in orphans {
                    published.remove(&orphan.0)?;
                }
                if let (Ok(_), Some(key)) = (&result, &b.published) {
                    published.insert(&b.key.0, postcard::to_allocvec(key)?.as_slice())?;
                }
                results.push(match result {
                    Err(StoreError::Db(e)) => return Err(StoreError::Db(e)),
                    other => other,
                });
            }
            for (name, ms) in seen {
                let name = name.as_str();
                let Some(key) = names.key(name)? else {
                    continue;
                };
                names.names.insert(name, (&key.0, Some(*ms)))?;
                names.touch(name, *ms)?;
            }
            results
        };
        self.commit(txn)?;
        Ok(results)
    }

    fn append_room_op(&self, op: &Op) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let mut ops = txn.open_table(ROOM_OPS)?;
            let key = (op.room.name().as_str(), op.version);
            if ops.get(key)?.is_some() {
                return Err(StoreError::RoomConflict);
            }
            ops.insert(key, postcard::to_allocvec(op)?.as_slice())?;
        }
        self.commit(txn)?;
        Ok(())
    }

    fn room_ops(
        &self,
        room: &RoomName,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Op>, StoreError> {
        let Some(from) = first_after(after) else {
            return Ok(Vec::new());
        };
        let txn = self.db.begin_read()?;
        let ops = match txn.open_table(ROOM_OPS) {
            Ok(ops) => ops,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let name = room.name().as_str();
        let mut out = Vec::new();
        for entry in ops.range((name, from)..=(name, u64::MAX))?.take(limit) {
            out.push(postcard::from_bytes(entry?.1.value())?);
        }
        Ok(out)
    }

    fn is_bound(&self, name: &Name) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let names = txn.open_table(NAMES)?;
        Ok(names.get(name.as_str())?.is_some())
    }

    fn name(&self, name: &Name) -> Result<Option<NameRecord>, StoreError> {
        record(&self.db.begin_read()?, name.as_str())
    }

    fn deposit_batch(
        &self,
        mail: &[Mail],
        quota: Quota,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        // Once per batch: a full disk must refuse deposits before a commit fails halfway.
        if self.free_disk()? < quota.min_free_disk {
            tracing::warn!("the disk is nearly full; refusing deposits");
            return Ok(vec![Err(StoreError::StoreFull); mail.len()]);
        }
        let txn = self.write()?;
        let results = {
            let mut mailbox = Mailbox::open(&txn)?;
            let mut next = mailbox.meta(NEXT_SEQ, 1)?;
            let mut results = Vec::with_capacity(mail.len());
            let mut counters = Counters::default();
            for m in mail {
                results.push(match mailbox.deposit(m, next, quota, &mut counters) {
                    Ok(stored) => {
                        next += u64::from(stored);
                        Ok(())
                    }
                    // Anything else than a quota is the database failing: abort the batch.
                    Err(StoreError::Db(e)) => return Err(StoreError::Db(e)),
                    Err(e) => Err(e),
                });
            }
            counters.write(&mut mailbox)?;
            mailbox.meta.insert(NEXT_SEQ, next)?;
            results
        };
        self.commit(txn)?;
        Ok(results)
    }

    fn pending(
        &self,
        recipient: &Name,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let Some(from) = first_after(after) else {
            return Ok(Vec::new());
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
        entries: &[Removal],
        quota: Quota,
    ) -> Result<Vec<Option<Name>>, StoreError> {
        let txn = self.write()?;
        let mut changed = false;
        let mut woken = vec![None; entries.len()];
        {
            let mut mailbox = Mailbox::open(&txn)?;
            // By (recipient who took the mail, its sender, the recipient's key).
            let mut receipts: BTreeMap<(&Name, Name, [u8; 32]), Gathered> = BTreeMap::new();
            for (i, removal) in entries.iter().enumerate() {
                let name = &removal.recipient;
                let Some(mail) = mailbox.remove(name.as_str(), removal.seq)? else {
                    continue;
                };
                changed = true;
                if let Some((sender, proof, signer)) = receipt_for(&mail, removal.proof) {
                    let key = (name, sender.clone(), signer);
                    let gathered = receipts.entry(key).or_default();
                    gathered.delivered.push(proof);
                    gathered.entries.push(i);
                }
            }
            if !receipts.is_empty() {
                let mut next = mailbox.meta(NEXT_SEQ, 1)?;
                let at_ms = self.now();
                // Read after the removals above wrote theirs.
                let mut counters = Counters::default();
                for ((recipient, sender, signer), gathered) in receipts {
                    // A receipt must fit in one event frame: a proof is 80 bytes encoded.
                    let mut stored_one = false;
                    for proofs in gathered.delivered.chunks(RECEIPT_PROOFS) {
                        let receipt = Mail::SignedReceipt(SignedReceipt {
                            id: receipt_id(next, proofs),
                            from: recipient.clone(),
                            to: sender.clone(),
                            signer,
                            delivered: proofs.to_vec(),
                            at_ms,
                        });
                        match mailbox.deposit(&receipt, next, quota, &mut counters) {
                            Ok(_) => {
                                next += 1;
                                stored_one = true;
                            }
                            Err(StoreError::Db(e)) => return Err(StoreError::Db(e)),
                            Err(_) => {
                                tracing::debug!(%sender, "no room for a receipt; dropped");
                            }
                        }
                    }
                    if stored_one {
                        for i in gathered.entries {
                            woken[i] = Some(sender.clone());
                        }
                    }
                }
                counters.write(&mut mailbox)?;
                mailbox.meta.insert(NEXT_SEQ, next)?;
            }
        }
        if changed {
            self.commit(txn)?;
        } else {
            txn.abort()?;
        }
        Ok(woken)
    }

    fn lookup(&self, name: &Name, asker: &Name) -> Result<Option<(NameRecord, u32)>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(record) = record(&txn, name.as_str())? else {
            return Ok(None);
        };
        let queued = txn
            .open_table(SENDERS)?
            .get((name.as_str(), asker.as_str()))?
            .map_or(0, |g| g.value().0);
        Ok(Some((record, u32::try_from(queued).unwrap_or(u32::MAX))))
    }

    fn queued_from(&self, recipient: &Name, sender: &Name) -> Result<u32, StoreError> {
        let (n, _) = self.sender_usage(recipient, sender)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn usage(&self, recipient: &Name) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(USAGE)?;
        Ok(table.get(recipient.as_str())?.map_or((0, 0), |g| g.value()))
    }

    fn sender_usage(&self, recipient: &Name, sender: &Name) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SENDERS)?;
        Ok(table
            .get((recipient.as_str(), sender.as_str()))?
            .map_or((0, 0), |g| g.value()))
    }

    fn held_bytes(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(table.get(HELD_BYTES)?.map_or(0, |g| g.value()))
    }

    fn held_entries(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata as _;
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(MAIL)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        suite::{self, chat, name, TestResult},
        upgrade::MAILBOX_V1,
    };

    #[test]
    fn passes_the_store_suite() -> TestResult {
        let dir = tempfile::tempdir()?;
        suite::all(|store| RedbStore::open(&dir.path().join(format!("{store}.redb"))))
    }

    /// A snapshot holds every table of the replica, row for row, and its log position.
    #[test]
    fn a_snapshot_is_a_copy_of_every_table() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = RedbStore::open(&dir.path().join("replica.redb"))?;
        store.applying(7, 1_000);
        let naming = Naming::default();
        store.bind(&name("alice"), &KeyId([1; 32]), 5, naming)?;
        store.set_last_seen(&name("alice"), 6)?;
        let mail = [Mail::Chat(chat("bob", "alice", "kept"))];
        store.deposit_batch(&mail, Quota::default())?;
        // A room's log too (its rows are opaque here).
        let txn = store.write()?;
        txn.open_table(ROOM_OPS)?
            .insert(("room", 1), b"an op".as_slice())?;
        txn.commit()?;
        let to = dir.path().join("snapshot.redb");
        assert_eq!(store.snapshot(&to)?, 7);
        let copy = Database::open(&to)?;
        let (from, to) = (store.db.begin_read()?, copy.begin_read()?);
        let tables = |txn: &redb::ReadTransaction| -> Result<Vec<String>, StoreError> {
            use redb::TableHandle as _;
            Ok(txn.list_tables()?.map(|t| t.name().to_string()).collect())
        };
        assert_eq!(tables(&from)?, tables(&to)?);
        assert!(tables(&to)?.contains(&"room_ops".to_string()));
        let op = |txn: &redb::ReadTransaction| -> Result<Option<Vec<u8>>, StoreError> {
            let ops = txn.open_table(ROOM_OPS)?;
            Ok(ops.get(("room", 1))?.map(|g| g.value().to_vec()))
        };
        assert_eq!(op(&to)?, Some(b"an op".to_vec()));
        assert_eq!(op(&from)?, op(&to)?);
        drop((from, to));
        drop(copy);
        let copy = RedbStore::open(&dir.path().join("snapshot.redb"))?;
        assert_eq!(copy.log_position()?, 7);
        assert_eq!(copy.name(&name("alice"))?, store.name(&name("alice"))?);
        assert_eq!(
            copy.pending(&name("alice"), None, 10)?,
            store.pending(&name("alice"), None, 10)?
        );
        assert_eq!(copy.usage(&name("alice"))?, store.usage(&name("alice"))?);
        Ok(())
    }

    /// A file of layout 2 (bytes counted as bodies, `queued_from`, names without indexes) is
    /// recounted and indexed once when opened.
    #[test]
    fn a_layout_2_file_is_recounted_and_indexed() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("directory.redb");
        let held = Mail::Chat(chat("c1", "c2", "kept"));
        {
            let db = Database::create(&path)?;
            let txn = db.begin_write()?;
            {
                let bytes = postcard::to_allocvec(&held)?;
                txn.open_table(MAIL)?.insert(("c2", 1), bytes.as_slice())?;
                txn.open_table(IDS)?.insert(("c2", &held.id().0), 1)?;
                txn.open_table(USAGE)?.insert("c2", (1, 4))?;
                txn.open_table(QUEUED_V2)?.insert(("c2", "c1"), 1)?;
                txn.open_table(META)?.insert(NEXT_SEQ, 2)?;
                let mut names = txn.open_table(NAMES)?;
                names.insert("alice", (&[1; 32], Some(5)))?;
                names.insert("bob", (&[1; 32], None))?;
            }
            txn.commit()?;
        }
        let before = now_ms();
        let store = RedbStore::open(&path)?;
        assert_eq!(store.usage(&name("c2"))?, (1, held.size()));
        assert_eq!(
            store.sender_usage(&name("c2"), &name("c1"))?,
            (1, held.size())
        );
        assert_eq!(store.queued_from(&name("c2"), &name("c1"))?, 1);
        assert_eq!(store.held_bytes()?, held.size());
        // Nothing expires because of the upgrade, and the new indexes hold the old names.
        let alice = store.name(&name("alice"))?.ok_or("alice")?;
        assert!(alice.active_ms >= before);
        assert_eq!(alice.last_seen_ms, Some(5));
        let naming = Naming {
            names_per_key: 2,
            ..Naming::default()
        };
        let (one, two) = (KeyId([1; 32]), KeyId([2; 32]));
        assert_eq!(
            store.bind(&name("carol"), &one, before, naming),
            Err(StoreError::TooManyNames)
        );
        assert_eq!(
            store.bind(&name("a1ice"), &two, before, naming),
            Err(StoreError::Lookalike)
        );
        drop(store);
        // Reopening changes nothing.
        let store = RedbStore::open(&path)?;
        assert_eq!(store.name(&name("alice"))?, Some(alice));
        assert_eq!(store.usage(&name("c2"))?, (1, held.size()));
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
        store.remove_batch(
            &super::super::suite::taken(&[(name("c2"), 7)]),
            Quota::default(),
        )?;
        assert_eq!(store.usage(&name("c2"))?, (0, 0));
        drop(store);
        // Reopening finds nothing left to move.
        let store = RedbStore::open(&path)?;
        assert!(store.pending(&name("c2"), None, 10)?.is_empty());
        Ok(())
    }
}

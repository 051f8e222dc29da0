//! The [`Store`] in a single redb file: its tables, and how each method reads or writes them.
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
//! The sequence counter is kept in `meta`. `mailbox_ids`, `usage` and `queued_from` are derived
//! from `mail` and always change in the same transaction as it. `queued_from` is a counter table
//! rather than a scan because every lookup asks for it, while a mailbox may hold thousands of
//! messages. Files written by version 1 are moved into these tables on open (`upgrade`).
//!
//! # Durability
//!
//! Every write transaction commits with [`Durability::Immediate`]: when a method returns `Ok`,
//! the change is on disk. Commits also save redb's allocator state (quick repair), so reopening
//! after a crash is fast. Each commit costs an fsync; [`super::Writer`] amortises it by
//! committing many deposits in one transaction.

use super::{
    check_binding, receipt_for, upgrade, Bind, NameRecord, Quota, Store, StoreError, Stored,
};
use common::{
    now_ms,
    wire::{Mail, MessageId, Receipt},
    KeyId, Name,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use std::{collections::BTreeMap, path::Path};

const NAMES: TableDefinition<&str, (&[u8; 32], Option<u64>)> = TableDefinition::new("names");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const MAIL: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("mail");
const IDS: TableDefinition<(&str, &[u8; 16]), u64> = TableDefinition::new("mailbox_ids");
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");
const QUEUED: TableDefinition<(&str, &str), u64> = TableDefinition::new("queued_from");
const NEXT_SEQ: &str = "next_seq";

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
        upgrade::from_v1(&txn, MAIL)?;
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
}

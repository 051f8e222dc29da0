//! The directory's durable state, behind one trait: name bindings and the mailbox. This module
//! says what any backend must do; [`redb`] does it in one file.
//!
//! # Layout
//!
//! * this module: the [`Store`] trait, the records it deals in and its errors.
//! * [`redb`]: the backend in a single redb file, and what is stored in which table.
//! * [`writer`]: the group-commit [`Writer`]: one thread, one transaction for many callers.
//! * `upgrade`: moves the data of older files into the current tables, once.
//!
//! # What a backend promises
//!
//! Sequence numbers come from one global counter, so mailbox order survives restarts and a
//! seq is never reused. A deposit is idempotent by (recipient, mail id), but an id is only
//! remembered while its message is held: once delivered and removed, a retry is stored again,
//! and the recipient drops the duplicate by id. When a method returns `Ok`, the change is
//! durable: a `kill -9` or power loss right after loses nothing.
//!
//! # Receipts
//!
//! Removing delivered mail stores, in the same transaction, a [`Receipt`] in each sender's
//! mailbox naming the chat messages (and whole files) its recipient took: the recipient's acks
//! travel back to the sender through the mailbox, online or not. One receipt covers everything
//! of one sender removed in one batch. Receipts count against the sender's quota but not in
//! [`Store::queued_from`] (they must not hold the recipient's own messages back), and a receipt
//! that does not fit is dropped: it is a courtesy, the message itself was delivered.
//!
//! [`Receipt`]: common::wire::Receipt

pub mod redb;
#[cfg(test)]
pub(crate) mod suite;
mod upgrade;
pub mod writer;

pub use self::{redb::RedbStore, writer::Writer};

use common::{
    defaults::{MAILBOX_QUOTA_BYTES, MAILBOX_QUOTA_MESSAGES},
    wire::{Mail, MessageId},
    KeyId, Name,
};

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

/// `Some` if a name bound to `found` needs no new binding for `key`.
fn check_binding(found: Option<KeyId>, key: &KeyId) -> Result<Option<Bind>, StoreError> {
    match found {
        Some(found) if found == *key => Ok(Some(Bind::Existing)),
        Some(_) => Err(StoreError::NameTaken),
        None => Ok(None),
    }
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

//! The directory's durable state, behind one trait: name bindings and the mailbox. This module
//! says what any backend must do; [`redb`] does it in one file, and [`jetstream`] for a
//! cluster, as a log in NATS JetStream that every node applies to a redb replica.
//!
//! # Layout
//!
//! * this module: the [`Store`] trait, the records it deals in and its errors.
//! * [`redb`]: the backend in a single redb file, and what is stored in which table.
//! * [`jetstream`]: the cluster's backend: writes go through a replicated JetStream stream,
//!   reads come from the node's own replica.
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
//! # Names
//!
//! A name is bound to a key on first use, and stays bound while the key uses it: a binding
//! records when the key last registered the name (to within [`ACTIVE_STEP_MS`]) or was last
//! seen online. One that went unused for [`Naming::expiry_ms`] is released when another key
//! asks for it or for a lookalike of it (same [`Name::skeleton`]); its mailbox goes with it,
//! since that mail was for the old owner. A key holds at most [`Naming::names_per_key`] names,
//! and no two keys hold lookalikes (names bound before these rules are kept as they are).
//!
//! # Receipts
//!
//! Removing delivered mail stores, in the same transaction, a [`SignedReceipt`] in each
//! sender's mailbox with the proofs its recipient signed for the letters (messages, and the
//! last parts of files) it took: the recipient's acks travel back to the sender through the
//! mailbox, online or not, and the sender checks each proof, so the directory cannot claim a
//! delivery that did not happen. One receipt covers everything of one sender removed in one
//! batch. Receipts count against the sender's quota but not in [`Store::queued_from`] (they
//! must not hold the recipient's own messages back), and a receipt that does not fit is
//! dropped: it is a courtesy, the message itself was delivered.
//!
//! [`SignedReceipt`]: common::wire::SignedReceipt

mod compaction;
pub mod jetstream;
pub mod redb;
#[cfg(test)]
pub(crate) mod suite;
mod upgrade;
pub mod writer;

pub use self::{jetstream::JetStreamStore, redb::RedbStore, writer::Writer};

use common::{
    defaults::{
        MAILBOX_QUOTA_BYTES, MAILBOX_QUOTA_MESSAGES, MAILBOX_SENDER_QUOTA_BYTES,
        MAILBOX_SENDER_QUOTA_MESSAGES, MIN_FREE_DISK, NAMES_PER_KEY, NAME_EXPIRY, STORE_MAX_BYTES,
    },
    room::{Op, RoomName},
    seal::{PublishedKey, Signature},
    wire::{Mail, Proof},
    KeyId, Name,
};

/// How stale a name's active time may get before a registration refreshes it: a day, so a name
/// in daily use costs one write a day, and expiry is exact to a day.
pub const ACTIVE_STEP_MS: u64 = 24 * 60 * 60 * 1000;

/// What the directory knows durably about a bound name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameRecord {
    /// The key the name is bound to.
    pub key: KeyId,
    /// When the name was last seen online (ms since the epoch), if ever recorded.
    pub last_seen_ms: Option<u64>,
    /// When its key last registered it, online or for a short command (ms since the epoch, to
    /// within [`ACTIVE_STEP_MS`]): what [`Naming::expiry_ms`] counts from.
    pub active_ms: u64,
    /// The encryption key the key last published (signed by it), if any.
    pub published: Option<PublishedKey>,
}

/// The outcome of a successful [`Store::bind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// The name was free (or had expired) and is now bound to the key.
    New,
    /// The name was already bound to this same key.
    Existing,
}

/// A registration to commit: `key` asks for `name` at `at_ms`. The time comes with the request,
/// so tests of expiry give their own clock.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    /// The name asked for.
    pub name: Name,
    /// The key asking.
    pub key: KeyId,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The encryption key the key publishes, checked by the caller; kept per key, replacing
    /// the one before, when the binding succeeds.
    pub published: Option<PublishedKey>,
}

/// Limits on name bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Naming {
    /// Most names one key may hold; names it held before the limit are kept.
    pub names_per_key: u32,
    /// A name whose key has not registered it for this long (ms) may be taken by another key,
    /// and no longer keeps lookalikes of it out.
    pub expiry_ms: u64,
}

impl Default for Naming {
    fn default() -> Self {
        Self {
            names_per_key: NAMES_PER_KEY,
            expiry_ms: NAME_EXPIRY.as_millis() as u64,
        }
    }
}

/// Mailbox limits. Bytes are counted as stored ([`Mail::size`]: encoded, every field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quota {
    /// Most messages held for one recipient.
    pub max_messages: u64,
    /// Most bytes held for one recipient.
    pub max_bytes: u64,
    /// Most messages and file parts one sender may have waiting for one recipient.
    pub sender_messages: u64,
    /// Most bytes one sender may have waiting for one recipient.
    pub sender_bytes: u64,
    /// Most bytes all mailboxes together hold.
    pub total_bytes: u64,
    /// Deposits are refused while the disk holding the store has less free space than this.
    pub min_free_disk: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            max_messages: MAILBOX_QUOTA_MESSAGES,
            max_bytes: MAILBOX_QUOTA_BYTES,
            sender_messages: MAILBOX_SENDER_QUOTA_MESSAGES,
            sender_bytes: MAILBOX_SENDER_QUOTA_BYTES,
            total_bytes: STORE_MAX_BYTES,
            min_free_disk: MIN_FREE_DISK,
        }
    }
}

impl Quota {
    /// No limit at all, for measurements of the store itself.
    pub fn unlimited() -> Self {
        Self {
            max_messages: u64::MAX,
            max_bytes: u64::MAX,
            sender_messages: u64::MAX,
            sender_bytes: u64::MAX,
            total_bytes: u64::MAX,
            min_free_disk: 0,
        }
    }
}

/// A recipient's proof that it took a letter: its identity key and its signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Taken {
    /// The recipient's identity key, as it published it.
    pub signer: [u8; 32],
    /// Its signature (see [`common::seal::verify_receipt`]).
    pub signature: Signature,
}

/// A mailbox entry to delete, once its recipient acknowledged it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Removal {
    /// Whose mailbox.
    pub recipient: Name,
    /// The entry.
    pub seq: u64,
    /// The recipient's proof of taking it, which earns its sender a receipt.
    pub proof: Option<Taken>,
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
    /// The name looks like one bound to another key (same [`Name::skeleton`]).
    #[error("the name looks like a name bound to another key")]
    Lookalike,
    /// The key holds [`Naming::names_per_key`] names already.
    #[error("the key holds as many names as allowed")]
    TooManyNames,
    /// The recipient's mailbox is over quota.
    #[error("the recipient's mailbox is full")]
    MailboxFull,
    /// The sender has its whole share of the recipient's mailbox waiting.
    #[error("the sender's share of the recipient's mailbox is full")]
    SenderQuotaFull,
    /// All mailboxes together hold [`Quota::total_bytes`], or the disk is nearly full.
    #[error("the store is full")]
    StoreFull,
    /// The room's log already holds an op at that version.
    #[error("the room's log already holds an op at that version")]
    RoomConflict,
    /// The database failed (I/O, corruption, encoding, or the writer thread stopped).
    #[error("database failure: {0}")]
    Db(String),
}

/// The storage seam: everything the directory keeps across restarts. Methods block; call them
/// from `spawn_blocking` or through [`Writer`].
pub trait Store: Send + Sync + 'static {
    /// Commits registrations and last-seen times in one transaction (one fsync for all:
    /// group commit). Each binding's result is independent. A binding refreshes the name's
    /// active time if its key holds it; binds it if it is free, or if another key's binding
    /// expired (`naming.expiry_ms` without a registration; the old binding and its mailbox
    /// are dropped); else fails with [`StoreError::NameTaken`], [`StoreError::Lookalike`]
    /// (another key's unexpired name has the same skeleton) or [`StoreError::TooManyNames`].
    /// A last-seen time is recorded for a bound name and ignored for another.
    fn update_names(
        &self,
        bindings: &[Binding],
        seen: &[(Name, u64)],
        naming: Naming,
    ) -> Result<Vec<Result<Bind, StoreError>>, StoreError>;
    /// The binding of `name`, if any.
    fn name(&self, name: &Name) -> Result<Option<NameRecord>, StoreError>;
    /// Brings what this store reads up to every write acknowledged anywhere before the call.
    /// A read that must not miss one calls it before answering "no such name": on a node of a
    /// cluster, a name bound through another node a moment ago may not be in this node's
    /// replica yet. One node has nothing to catch up with.
    ///
    /// Unlike the other methods, it does not block: it returns a future, which the caller
    /// awaits on its own runtime, since it waits on the network rather than the disk.
    fn catch_up(&self) -> futures::future::BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// How this node stands with the cluster's log, for its metrics; `None` for a store that
    /// has no log (one node). Like [`Store::catch_up`], it returns a future to await on the
    /// caller's runtime: it asks JetStream for the log's state.
    fn log_status(&self) -> Option<futures::future::BoxFuture<'static, crate::metrics::LogStatus>> {
        None
    }
    /// Whether `name` is bound: what a deposit checks, cheaper than [`Store::name`].
    fn is_bound(&self, name: &Name) -> Result<bool, StoreError> {
        self.name(name).map(|record| record.is_some())
    }
    /// Durably stores each mail (one transaction, one fsync for the whole batch: group
    /// commit). Each entry's result is independent: one refused does not fail the others.
    /// Refuses with [`StoreError::MailboxFull`] over the recipient's quota,
    /// [`StoreError::SenderQuotaFull`] over the sender's share of it, and
    /// [`StoreError::StoreFull`] over the total or when the disk is nearly full.
    /// Idempotent by (recipient, mail id): depositing an id already held for that recipient
    /// is `Ok` and stores nothing new.
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
    /// Deletes these entries in one transaction, missing ones ignored, and stores receipts
    /// for their senders from the proofs that came with them (see "Receipts"), within
    /// `quota`. For each entry, returns the sender whose mailbox got a receipt for it, to be
    /// woken.
    fn remove_batch(
        &self,
        entries: &[Removal],
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
    /// (entries, bytes) from `sender` held for `recipient`; receipts are not counted.
    fn sender_usage(&self, recipient: &Name, sender: &Name) -> Result<(u64, u64), StoreError>;
    /// Bytes held in all mailboxes together.
    fn held_bytes(&self) -> Result<u64, StoreError>;
    /// Entries (messages, file parts, receipts) held in all mailboxes together.
    fn held_entries(&self) -> Result<u64, StoreError>;
    /// Durably appends `op` to its room's log, at its version. The caller checked it against
    /// the log; the store only refuses a version already held ([`StoreError::RoomConflict`]),
    /// so two ops racing for the same place cannot both be kept.
    fn append_room_op(&self, op: &Op) -> Result<(), StoreError>;
    /// A room's ops with a version above `after` (all if `None`), oldest first, at most
    /// `limit`.
    fn room_ops(
        &self,
        room: &RoomName,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Op>, StoreError>;

    /// [`Store::update_names`] for one binding.
    fn bind(
        &self,
        name: &Name,
        key: &KeyId,
        at_ms: u64,
        naming: Naming,
    ) -> Result<Bind, StoreError> {
        let binding = Binding {
            name: name.clone(),
            key: *key,
            at_ms,
            published: None,
        };
        self.update_names(&[binding], &[], naming)?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Db("no result for a binding".into())))
    }

    /// [`Store::update_names`] for one last-seen time.
    fn set_last_seen(&self, name: &Name, ms: u64) -> Result<(), StoreError> {
        self.update_names(&[], &[(name.clone(), ms)], Naming::default())
            .map(drop)
    }
}

/// What a removed entry, taken with `proof`, tells its sender: the id of a message, or of a
/// file whose last part it was, with the proof. Entries without a proof (unsealed mail from
/// before sealing, refused letters, other parts of files, receipts) tell nothing.
fn receipt_for(mail: &Mail, proof: Option<Taken>) -> Option<(&Name, Proof, [u8; 32])> {
    let (Mail::Letter(l), Some(taken)) = (mail, proof) else {
        return None;
    };
    let told = l.receipt().filter(|_| l.from != l.to)?;
    let proof = Proof {
        told,
        signature: taken.signature,
    };
    Some((&l.from, proof, taken.signer))
}

//! Moves the data of files written by older versions into the current tables, once, when a
//! file is opened.
//!
//! Version 1 kept bare [`ChatMessage`]s in a table named `mailbox`; version 2 keeps [`Mail`]
//! (chat messages, file parts, receipts) in `mail`, under the same (recipient, seq) keys.

use super::StoreError;
use common::wire::{ChatMessage, Mail};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

/// Version 1's mailbox of bare chat messages.
pub(super) const MAILBOX_V1: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("mailbox");

/// Moves version 1's chat messages into `mail`, version 2's table of held mail, under the same
/// keys, and deletes the old table. A file without one is left as it is.
pub(super) fn from_v1(
    txn: &WriteTransaction,
    mail: TableDefinition<'_, (&'static str, u64), &'static [u8]>,
) -> Result<(), StoreError> {
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
        let mut mail = txn.open_table(mail)?;
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

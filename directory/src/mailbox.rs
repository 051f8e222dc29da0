//! The event stream the directory opens towards an online peer after `Register`: delivery of
//! held mail (messages, file parts, receipts), and introductions from peers that want a direct
//! link (hole punching).
//!
//! This is the driver of the delivery [`Window`], which decides what to send, read, remove and
//! when the mailbox is idle (its guarantees are listed there); this module does the I/O it asks
//! for: the stream, the store, the writer and the registry. Removing delivered mail stores a
//! receipt for its sender (see [`crate::store`]), whose own delivery task is woken to send it.
//!
//! A refill of the window reads the store on a blocking thread, not the network's, and stops
//! at [`MAILBOX_REFILL_BYTES`] (see [`refill`]): a window of large entries would otherwise be
//! up to 16 MiB decoded at once.

use crate::{
    registry::Feed,
    state::Shared,
    store::{Removal, StoreError, Stored, Taken},
    window::{Action, Input, Violation, Window},
};
use anyhow::{Context, Result};
use common::{
    defaults::{DELIVERY_WINDOW, MAILBOX_REFILL_BYTES, MAX_FRAME_LEN},
    framing::{self, FrameError},
    wire::{codes, EventAck},
    Name,
};
use std::sync::Arc;
use tokio::{sync::mpsc, task::JoinSet};
use tracing::{debug, warn};

/// Runs until the connection ends or the recipient misbehaves.
pub async fn deliver(conn: quinn::Connection, shared: Arc<Shared>, feed: Feed) {
    if let Err(e) = deliver_inner(&conn, &shared, feed).await {
        debug!(cause = %e, "mailbox delivery ended");
    }
}

async fn deliver_inner(conn: &quinn::Connection, shared: &Shared, feed: Feed) -> Result<()> {
    let Feed {
        name,
        wake,
        mut events,
        signer,
    } = feed;
    let (mut send, recv) = conn.open_bi().await.context("opening the event stream")?;
    // Reading a frame is not cancel-safe, so acks are read on their own task and come here
    // through a channel that `select!` can poll safely. The task is this function's: it ends
    // when the function returns and drops the set.
    let mut reader = JoinSet::new();
    let mut acks = read_acks(recv, &mut reader);
    let mut removing: JoinSet<(u64, Result<Option<Name>, StoreError>)> = JoinSet::new();
    let mut window = Window::new();
    loop {
        while let Some(action) = window.poll_action() {
            match action {
                Action::Read { after, limit } => {
                    let (store, name) = (shared.store.clone(), name.clone());
                    let read = move || refill(|a, n| store.pending(&name, a, n), after, limit);
                    let (batch, more) = tokio::task::spawn_blocking(read).await??;
                    window.handle(Input::Read { batch, more })?;
                }
                Action::Write(event) => framing::write_frame(&mut send, &event).await?,
                Action::Remove { seq, proof } => {
                    let removal = Removal {
                        recipient: name.clone(),
                        seq,
                        proof: proof.map(|signature| Taken { signer, signature }),
                    };
                    let writer = shared.writer.clone();
                    removing.spawn(async move { (seq, writer.remove(removal).await) });
                }
                Action::WakeSender(sender) => {
                    if let Some(online) = shared.registry.get(&sender) {
                        online.wake.notify_one();
                    }
                }
            }
        }
        if window.is_drained() {
            return Ok(());
        }
        let leaving = window.is_leaving();
        let input = tokio::select! {
            ack = acks.recv(), if !leaving => match ack.map(|ack| *ack) {
                Some(Ok(EventAck::Delivered(id))) => Input::Acked(id, None),
                Some(Ok(EventAck::Took { id, proof })) => Input::Acked(id, Some(proof)),
                // The peer is leaving; its last acks still get their removals.
                None => Input::Leaving,
                Some(Err(e)) if !e.is_violation() => return Err(e.into()),
                Some(Err(e)) => {
                    warn!(cause = %e, "bad frame on the event stream; closing the connection");
                    conn.close(e.code().into(), b"bad event ack");
                    return Err(e.into());
                }
            },
            Some(done) = removing.join_next(), if !removing.is_empty() => {
                let (seq, removed) = done?;
                Input::Removed { seq, receipt_for: removed? }
            }
            _ = wake.notified(), if !leaving => Input::Wake,
            Some(event) = events.recv(), if !leaving => Input::Event(*event),
        };
        if let Err(e @ Violation::UnknownAck(_)) = window.handle(input) {
            conn.close(codes::PROTOCOL.into(), b"ack for a message not sent");
            return Err(e.into());
        }
    }
}

/// Entries read from the store at a time by [`refill`]: so many of the largest can overshoot
/// the byte limit by no more than the limit itself.
const REFILL_CHUNK: usize = MAILBOX_REFILL_BYTES / MAX_FRAME_LEN;

/// Reads held mail after `after` through `read` (the store's `pending`) for one refill: at most
/// `limit` entries, and none past the chunk in which they reach [`MAILBOX_REFILL_BYTES`] as
/// stored. Also says whether it stopped at a limit rather than at the end of what is held.
fn refill<E>(
    mut read: impl FnMut(Option<u64>, usize) -> Result<Vec<Stored>, E>,
    mut after: Option<u64>,
    limit: usize,
) -> Result<(Vec<Stored>, bool), E> {
    let (mut batch, mut bytes) = (Vec::new(), 0);
    while batch.len() < limit {
        if bytes >= MAILBOX_REFILL_BYTES as u64 {
            return Ok((batch, true));
        }
        let want = (limit - batch.len()).min(REFILL_CHUNK);
        let chunk = read(after, want)?;
        let end = chunk.len() < want;
        for stored in chunk {
            bytes += stored.mail.size();
            after = Some(stored.seq);
            batch.push(stored);
        }
        if end {
            return Ok((batch, false));
        }
    }
    Ok((batch, true))
}

/// Reads acks on a task in `tasks` until the stream ends (the channel closes) or fails (one
/// `Err`, then closed). Each is boxed, as in `registry::QueuedEvent`: the channel's first 32
/// slots are allocated with it, for every online peer.
fn read_acks(
    mut recv: quinn::RecvStream,
    tasks: &mut JoinSet<()>,
) -> mpsc::Receiver<Box<Result<EventAck, FrameError>>> {
    let (tx, rx) = mpsc::channel(DELIVERY_WINDOW);
    tasks.spawn(async move {
        loop {
            let (item, last) = match framing::read_frame::<EventAck, _>(&mut recv).await {
                Ok(Some(ack)) => (Ok(ack), false),
                Ok(None) => return,
                Err(e) => (Err(e), true),
            };
            if tx.send(Box::new(item)).await.is_err() || last {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite::msg;
    use std::{collections::BTreeMap, convert::Infallible};

    /// A mailbox of `n` messages with bodies of `len` bytes, and a reader of it that counts
    /// its reads.
    fn held(n: u64, len: usize) -> BTreeMap<u64, Stored> {
        (1..=n)
            .map(|seq| {
                let mail = msg("s", "r", &"x".repeat(len));
                (seq, Stored { seq, mail })
            })
            .collect()
    }

    fn reader(
        held: &BTreeMap<u64, Stored>,
    ) -> impl FnMut(Option<u64>, usize) -> Result<Vec<Stored>, Infallible> + '_ {
        |after, n| {
            let from = after.map_or(0, |a| a + 1);
            Ok(held.range(from..).take(n).map(|(_, s)| s.clone()).collect())
        }
    }

    #[test]
    fn a_refill_of_large_entries_stops_at_its_bytes() {
        let held = held(DELIVERY_WINDOW as u64, 30 * 1024);
        let Ok((batch, more)) = refill(reader(&held), None, DELIVERY_WINDOW);
        let bytes: u64 = batch.iter().map(|s| s.mail.size()).sum();
        assert!(more, "stopped at the bytes, with more held");
        assert!(bytes >= MAILBOX_REFILL_BYTES as u64, "{bytes} bytes");
        assert!(bytes <= 2 * MAILBOX_REFILL_BYTES as u64, "{bytes} bytes");
        assert!(batch.len() < DELIVERY_WINDOW);
        // The next refill goes on after the last entry read.
        let last = batch.last().map(|s| s.seq);
        let Ok((next, _)) = refill(reader(&held), last, DELIVERY_WINDOW);
        assert_eq!(next.first().map(|s| s.seq), last.map(|l| l + 1));
    }

    #[test]
    fn a_refill_of_small_entries_stops_at_its_count_or_the_end() {
        let held = held(300, 10);
        let Ok((batch, more)) = refill(reader(&held), None, DELIVERY_WINDOW);
        assert_eq!((batch.len(), more), (DELIVERY_WINDOW, true));
        let Ok((rest, more)) = refill(reader(&held), Some(256), DELIVERY_WINDOW);
        assert_eq!((rest.len(), more), (44, false));
        let seqs: Vec<u64> = batch.iter().chain(&rest).map(|s| s.seq).collect();
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    }
}

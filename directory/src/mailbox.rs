//! The event stream the directory opens towards an online peer after `Register`: delivery of
//! held mail (messages, file parts, receipts), and introductions from peers that want a direct
//! link (hole punching).
//!
//! Messages go out oldest first, at most [`DELIVERY_WINDOW`] unacknowledged at a time. A
//! message is deleted only after the recipient's `Delivered` ack, and the deletion is committed
//! before `MailboxIdle` is sent, so a recipient that saw `MailboxIdle` will never be handed those
//! messages again. Removing delivered mail stores a receipt for its sender (see
//! [`crate::store`]), whose own delivery task is woken to send it.

use crate::{registry::Feed, state::Shared};
use anyhow::{bail, Context, Result};
use common::{
    defaults::DELIVERY_WINDOW,
    framing::{self, FrameError},
    wire::{codes, DirectoryEvent, EventAck, MessageId},
    Name,
};
use std::{collections::VecDeque, sync::Arc};
use tokio::{
    sync::{mpsc, Notify},
    task::JoinSet,
};
use tracing::{debug, warn};

/// Runs until the connection ends or the recipient misbehaves.
pub async fn deliver(conn: quinn::Connection, name: Name, shared: Arc<Shared>, mut feed: Feed) {
    if let Err(e) = deliver_inner(&conn, &name, &shared, &feed.wake, &mut feed.events).await {
        debug!(cause = %e, "mailbox delivery ended");
    }
}

async fn deliver_inner(
    conn: &quinn::Connection,
    name: &Name,
    shared: &Shared,
    wake: &Notify,
    events: &mut mpsc::Receiver<DirectoryEvent>,
) -> Result<()> {
    let (mut send, recv) = conn.open_bi().await.context("opening the event stream")?;
    // Reading a frame is not cancel-safe, so acks are read on their own task and come here
    // through a channel that `select!` can poll safely.
    let mut acks = read_acks(recv);
    let mut in_flight: VecDeque<(MessageId, u64)> = VecDeque::new();
    let mut removing = JoinSet::new();
    // Highest seq already written to the stream; the next read starts after it.
    let mut cursor: Option<u64> = None;
    // The store may hold messages after `cursor`: at start, after a wake, after a full batch.
    let mut maybe_more = true;
    let mut idle_sent = false;
    loop {
        // Refill once half the window is free, not after every ack: one read per batch.
        if maybe_more && in_flight.len() <= DELIVERY_WINDOW / 2 {
            let limit = DELIVERY_WINDOW - in_flight.len();
            let batch = shared.store.pending(name, cursor, limit)?;
            maybe_more = batch.len() == limit;
            for stored in batch {
                in_flight.push_back((stored.mail.id(), stored.seq));
                cursor = Some(stored.seq);
                idle_sent = false;
                framing::write_frame(&mut send, &stored.mail.into_event()).await?;
            }
        }
        if !maybe_more && in_flight.is_empty() && removing.is_empty() && !idle_sent {
            framing::write_frame(&mut send, &DirectoryEvent::MailboxIdle).await?;
            idle_sent = true;
        }
        tokio::select! {
            ack = acks.recv() => {
                let id = match ack {
                    Some(Ok(EventAck::Delivered(id))) => id,
                    None => {
                        // The peer is leaving; its last acks still get their deletions.
                        while let Some(done) = removing.join_next().await {
                            wake_sender(shared, done??);
                        }
                        return Ok(());
                    }
                    Some(Err(e)) if !e.is_violation() => return Err(e.into()),
                    Some(Err(e)) => {
                        warn!(cause = %e, "bad frame on the event stream; closing the connection");
                        conn.close(e.code().into(), b"bad event ack");
                        return Err(e.into());
                    }
                };
                let Some(pos) = in_flight.iter().position(|(m, _)| *m == id) else {
                    conn.close(codes::PROTOCOL.into(), b"ack for a message not sent");
                    bail!("ack for message {id} that was not sent");
                };
                let Some((_, seq)) = in_flight.remove(pos) else { continue };
                let (writer, n) = (shared.writer.clone(), name.clone());
                removing.spawn(async move { writer.remove(n, seq).await });
            }
            Some(done) = removing.join_next(), if !removing.is_empty() => {
                wake_sender(shared, done??);
            }
            _ = wake.notified() => maybe_more = true,
            Some(event) = events.recv() => framing::write_frame(&mut send, &event).await?,
        }
    }
}

/// A receipt was stored for `sender`: if it is online, its own delivery task sends it now.
fn wake_sender(shared: &Shared, sender: Option<Name>) {
    if let Some(online) = sender.and_then(|s| shared.registry.get(&s)) {
        online.wake.notify_one();
    }
}

/// Reads acks until the stream ends (the channel closes) or fails (one `Err`, then closed).
fn read_acks(mut recv: quinn::RecvStream) -> mpsc::Receiver<Result<EventAck, FrameError>> {
    let (tx, rx) = mpsc::channel(DELIVERY_WINDOW);
    tokio::spawn(async move {
        loop {
            let (item, last) = match framing::read_frame::<EventAck, _>(&mut recv).await {
                Ok(Some(ack)) => (Ok(ack), false),
                Ok(None) => return,
                Err(e) => (Err(e), true),
            };
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    rx
}

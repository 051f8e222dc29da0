//! The event stream the directory opens towards an online peer after `Register`: delivery of
//! held mail (messages, file parts, receipts), and introductions from peers that want a direct
//! link (hole punching).
//!
//! This is the driver of the delivery [`Window`], which decides what to send, read, remove and
//! when the mailbox is idle (its guarantees are listed there); this module does the I/O it asks
//! for: the stream, the store, the writer and the registry. Removing delivered mail stores a
//! receipt for its sender (see [`crate::store`]), whose own delivery task is woken to send it.

use crate::{
    registry::Feed,
    state::Shared,
    store::StoreError,
    window::{Action, Input, Violation, Window},
};
use anyhow::{Context, Result};
use common::{
    defaults::DELIVERY_WINDOW,
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
                    let batch = shared.store.pending(&name, after, limit)?;
                    window.handle(Input::Read(batch))?;
                }
                Action::Write(event) => framing::write_frame(&mut send, &event).await?,
                Action::Remove(seq) => {
                    let (writer, n) = (shared.writer.clone(), name.clone());
                    removing.spawn(async move { (seq, writer.remove(n, seq).await) });
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
            ack = acks.recv(), if !leaving => match ack {
                Some(Ok(EventAck::Delivered(id))) => Input::Acked(id),
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
            Some(event) = events.recv(), if !leaving => Input::Event(event),
        };
        if let Err(e @ Violation::UnknownAck(_)) = window.handle(input) {
            conn.close(codes::PROTOCOL.into(), b"ack for a message not sent");
            return Err(e.into());
        }
    }
}

/// Reads acks on a task in `tasks` until the stream ends (the channel closes) or fails (one
/// `Err`, then closed).
fn read_acks(
    mut recv: quinn::RecvStream,
    tasks: &mut JoinSet<()>,
) -> mpsc::Receiver<Result<EventAck, FrameError>> {
    let (tx, rx) = mpsc::channel(DELIVERY_WINDOW);
    tasks.spawn(async move {
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

//! Delivery of held messages to an online recipient, on the event stream the directory opens
//! towards it after `Register`.
//!
//! Messages go out oldest first, at most [`DELIVERY_WINDOW`] unacknowledged at a time. A
//! message is deleted only after the recipient's `Delivered` ack, and the deletion is committed
//! before `MailboxIdle` is sent, so a recipient that saw `MailboxIdle` will never be handed those
//! messages again.

use crate::server::Shared;
use anyhow::{bail, Context, Result};
use common::{
    defaults::DELIVERY_WINDOW,
    framing,
    wire::{codes, DirectoryEvent, EventAck, MessageId},
    Name,
};
use std::{collections::VecDeque, sync::Arc};
use tokio::{sync::Notify, task::JoinSet};
use tracing::{debug, warn};

/// Runs until the connection ends or the recipient misbehaves.
pub async fn deliver(conn: quinn::Connection, name: Name, shared: Arc<Shared>, wake: Arc<Notify>) {
    if let Err(e) = deliver_inner(&conn, &name, &shared, &wake).await {
        debug!(cause = %e, "mailbox delivery ended");
    }
}

async fn deliver_inner(
    conn: &quinn::Connection,
    name: &Name,
    shared: &Shared,
    wake: &Notify,
) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await.context("opening the event stream")?;
    let mut in_flight: VecDeque<(MessageId, u64)> = VecDeque::new();
    let mut removing = JoinSet::new();
    // Highest seq already written to the stream; the next read starts after it.
    let mut cursor: Option<u64> = None;
    let mut idle_sent = false;
    loop {
        if in_flight.len() < DELIVERY_WINDOW {
            let (store, n, limit) = (
                shared.store.clone(),
                name.clone(),
                DELIVERY_WINDOW - in_flight.len(),
            );
            let batch =
                tokio::task::spawn_blocking(move || store.pending(&n, cursor, limit)).await??;
            for stored in &batch {
                framing::write_frame(&mut send, &DirectoryEvent::Deliver(stored.message.clone()))
                    .await?;
                in_flight.push_back((stored.message.id, stored.seq));
                cursor = Some(stored.seq);
                idle_sent = false;
            }
            if in_flight.is_empty() && removing.is_empty() && !idle_sent {
                framing::write_frame(&mut send, &DirectoryEvent::MailboxIdle).await?;
                idle_sent = true;
            }
        }
        tokio::select! {
            ack = framing::read_frame::<EventAck, _>(&mut recv) => {
                let id = match ack {
                    Ok(Some(EventAck::Delivered(id))) => id,
                    Ok(None) => {
                        // The peer is leaving; its last acks still get their deletions.
                        while let Some(done) = removing.join_next().await {
                            done??;
                        }
                        return Ok(());
                    }
                    Err(e) if !e.is_violation() => return Err(e.into()),
                    Err(e) => {
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
                done??;
            }
            _ = wake.notified() => {}
        }
    }
}

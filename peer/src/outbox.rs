//! Sending. Each recipient has one conversation task, so messages to it leave in the order they
//! were sent, whichever path they take.
//!
//! The task tries the direct path first: a live connection to the recipient, or a new one dialed
//! to the addresses the directory gives, accepting only the key the directory holds for that
//! name. Messages are pipelined on one chat stream (up to [`SEND_WINDOW`] unacknowledged) and
//! each must be acknowledged within the direct timeout. When the recipient is offline, the dial
//! fails, or an ack is late, the unacknowledged messages and everything after them are deposited
//! in the mailbox, oldest first, with their original ids: a message that did arrive directly is
//! dropped as a duplicate by the recipient.
//!
//! Order across paths: once a message to a recipient went to the mailbox, the task keeps using
//! the mailbox until the directory reports none of our messages waiting for that recipient
//! (`queued_from_you == 0`), so a later direct message can never overtake a queued one.

use crate::{directory_client::DirectoryError, punch::Dialer};
use anyhow::{anyhow, bail, Result};
use common::{
    control::Path,
    defaults::{MAX_BODY_LEN, SEND_WINDOW},
    framing, now_ms,
    wire::{ChatMessage, DirectoryRequest, DirectoryResponse, ErrorCode, MessageId, PeerFrame},
    Name,
};
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::{debug, info, Instrument};

/// How a message left us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The recipient acknowledged it.
    Delivered,
    /// The directory committed it to the recipient's mailbox.
    Queued,
}

impl Status {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Queued => "queued",
        }
    }
}

/// The outcome of one send.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The message id.
    pub id: MessageId,
    /// The recipient.
    pub to: Name,
    /// Delivered or queued.
    pub status: Status,
    /// The direct path it was delivered on.
    pub path: Option<Path>,
}

/// What a conversation task needs.
pub struct Shared {
    /// Our name.
    pub me: Name,
    /// Makes direct links.
    pub dialer: Arc<Dialer>,
}

/// Sends messages; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    ctx: Arc<Shared>,
    conversations: Arc<Mutex<HashMap<Name, mpsc::UnboundedSender<Pending>>>>,
}

struct Pending {
    message: ChatMessage,
    reply: oneshot::Sender<Result<Sent>>,
}

impl Pending {
    fn answer(self, result: Result<(Status, Option<Path>)>) {
        let (id, to) = (self.message.id, self.message.to);
        let sent = result.map(|(status, path)| Sent {
            id,
            to,
            status,
            path,
        });
        let _ = self.reply.send(sent);
    }
}

impl Outbox {
    /// An outbox using `ctx`.
    pub fn new(ctx: Shared) -> Self {
        Self {
            ctx: Arc::new(ctx),
            conversations: Default::default(),
        }
    }

    /// Sends `body` to `to` and returns once it is delivered or durably queued.
    pub async fn send(&self, to: Name, body: String) -> Result<Sent> {
        self.submit(to, body)?.await
    }

    /// Queues `body` for `to` now, behind every message submitted before it, and returns a
    /// future of the outcome.
    pub fn submit(
        &self,
        to: Name,
        body: String,
    ) -> Result<impl std::future::Future<Output = Result<Sent>> + Send + 'static> {
        if body.len() > MAX_BODY_LEN {
            bail!(
                "the message is too large: {} bytes, the limit is {MAX_BODY_LEN}",
                body.len()
            );
        }
        let message = ChatMessage {
            id: MessageId::random(),
            from: self.ctx.me.clone(),
            to: to.clone(),
            sent_at_ms: now_ms(),
            body,
        };
        let (reply, answer) = oneshot::channel();
        let mut conversations = self.conversations.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conversations.entry(to.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let span = tracing::info_span!("to", peer = %to);
            tokio::spawn(
                Conversation::new(self.ctx.clone(), to.clone())
                    .run(rx)
                    .instrument(span),
            );
            tx
        });
        tx.send(Pending { message, reply })
            .map_err(|_| anyhow!("the sender stopped"))?;
        drop(conversations);
        Ok(async move { answer.await.map_err(|_| anyhow!("the sender stopped"))? })
    }
}

/// After a direct attempt to a peer failed, how long its messages go straight to the mailbox.
const NO_DIRECT_BACKOFF: Duration = Duration::from_secs(10);

/// A direct chat stream with the messages written on it and not yet acknowledged.
struct Link {
    send: quinn::SendStream,
    acks: mpsc::Receiver<Result<MessageId>>,
    in_flight: VecDeque<(Pending, Instant)>,
    /// Until the first ack, every message shares the deadline of the dial.
    first_deadline: Option<Instant>,
    /// How the link came about.
    path: Path,
    /// An introduction was asked for since the last ack (see [`Conversation::step`]).
    nudged: bool,
}

enum Route {
    Direct(Link),
    Mailbox,
}

struct Conversation {
    ctx: Arc<Shared>,
    to: Name,
    queue: VecDeque<Pending>,
    link: Option<Link>,
    /// Some of our messages may still wait in the recipient's mailbox.
    mailbox_pending: bool,
    /// After a failed attempt, no new one before this: each would cost a full direct timeout.
    no_direct_until: Option<Instant>,
}

impl Conversation {
    fn new(ctx: Arc<Shared>, to: Name) -> Self {
        Self {
            ctx,
            to,
            queue: VecDeque::new(),
            link: None,
            mailbox_pending: false,
            no_direct_until: None,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        let mut open = true;
        loop {
            let busy = !self.queue.is_empty()
                || self.link.as_ref().is_some_and(|l| !l.in_flight.is_empty());
            if !busy {
                match rx.recv().await {
                    Some(p) => self.queue.push_back(p),
                    None => return,
                }
            }
            while let Ok(p) = rx.try_recv() {
                self.queue.push_back(p);
            }
            if self.link.is_none() && !self.queue.is_empty() {
                match self.route().await {
                    Ok(Route::Direct(link)) => self.link = Some(link),
                    Ok(Route::Mailbox) => {
                        self.deposit_queue().await;
                        continue;
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        for p in self.queue.drain(..) {
                            p.answer(Err(anyhow!("{msg}")));
                        }
                        continue;
                    }
                }
            }
            if let Err(e) = self.step(&mut rx, &mut open).await {
                debug!(cause = %format!("{e:#}"), "direct path failed; using the mailbox");
                self.fall_back().await;
            }
            if !open
                && self.queue.is_empty()
                && self.link.as_ref().is_none_or(|l| l.in_flight.is_empty())
            {
                return;
            }
        }
    }

    /// Writes what the window allows, then waits for one ack, one new message, or a deadline.
    async fn step(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Pending>,
        open: &mut bool,
    ) -> Result<()> {
        let timeout = self.ctx.dialer.direct_timeout;
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        while link.in_flight.len() < SEND_WINDOW {
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            let frame = framing::encode(&PeerFrame::Chat(p.message.clone()))?;
            let deadline = link
                .first_deadline
                .unwrap_or_else(|| Instant::now() + timeout);
            link.in_flight.push_back((p, deadline));
            tokio::time::timeout_at(deadline, link.send.write_all(&frame))
                .await
                .map_err(|_| anyhow!("writing timed out"))??;
        }
        let Some(deadline) = link.in_flight.front().map(|(_, d)| *d) else {
            return Ok(());
        };
        tokio::select! {
            ack = link.acks.recv() => {
                let id = ack.ok_or_else(|| anyhow!("chat stream closed"))??;
                let Some((p, _)) = link.in_flight.pop_front() else { bail!("ack with nothing in flight") };
                if p.message.id != id {
                    link.in_flight.push_front((p, deadline));
                    bail!("ack out of order");
                }
                link.first_deadline = None;
                link.nudged = false;
                p.answer(Ok((Status::Delivered, Some(link.path))));
            }
            // Halfway to the deadline without an ack, the link may have lost a NAT mapping:
            // our packets renew ours, but the peer's NAT only reopens when the peer sends.
            // An introduction makes it dial us from the same socket, which reopens it for
            // this connection too, often before the deadline.
            _ = tokio::time::sleep_until(deadline - timeout / 2), if !link.nudged && link.first_deadline.is_none() => {
                link.nudged = true;
                let directory = self.ctx.dialer.directory.clone();
                let request = DirectoryRequest::Introduce { name: self.to.clone() };
                tokio::spawn(async move { directory.request(&request).await }.in_current_span());
            }
            p = rx.recv(), if *open => match p {
                Some(p) => self.queue.push_back(p),
                None => *open = false,
            },
            _ = tokio::time::sleep_until(deadline) => bail!("no ack within {timeout:?}"),
        }
        Ok(())
    }

    /// Puts every unacknowledged message back in front of the queue and deposits them all.
    async fn fall_back(&mut self) {
        if let Some(link) = self.link.take() {
            for (p, _) in link.in_flight.into_iter().rev() {
                self.queue.push_front(p);
            }
        }
        self.deposit_queue().await;
    }

    /// Decides how the next messages go.
    async fn route(&mut self) -> Result<Route> {
        let dialer = self.ctx.dialer.clone();
        let deadline = Instant::now() + dialer.direct_timeout;
        if !self.mailbox_pending {
            if let Some((conn, path)) = dialer.links.get(&self.to) {
                if let Ok(link) = open_link(&conn, path, deadline).await {
                    return Ok(Route::Direct(link));
                }
            }
        }
        let info = match dialer.directory.lookup(&self.to).await {
            Ok(info) => info,
            Err(e) => match e.downcast_ref::<DirectoryError>() {
                Some(DirectoryError(ErrorCode::UnknownPeer)) => {
                    bail!("no peer is named {}", self.to)
                }
                _ => return Err(e),
            },
        };
        if info.queued_from_you > 0 {
            debug!(
                queued = info.queued_from_you,
                "earlier messages still in the mailbox"
            );
            return Ok(Route::Mailbox);
        }
        self.mailbox_pending = false;
        if !info.online || self.no_direct_until.is_some_and(|t| Instant::now() < t) {
            return Ok(Route::Mailbox);
        }
        let Some((conn, path)) = dialer.connect(&info, deadline).await else {
            info!("no direct path; using the mailbox");
            self.no_direct_until = Some(Instant::now() + NO_DIRECT_BACKOFF);
            return Ok(Route::Mailbox);
        };
        self.no_direct_until = None;
        match open_link(&conn, path, deadline).await {
            Ok(link) => Ok(Route::Direct(link)),
            Err(e) => {
                debug!(cause = %e, "opening a chat stream failed");
                Ok(Route::Mailbox)
            }
        }
    }

    /// Deposits every queued message in the mailbox, oldest first.
    async fn deposit_queue(&mut self) {
        while let Some(p) = self.queue.pop_front() {
            let request = DirectoryRequest::Deposit {
                message: p.message.clone(),
            };
            let result = match self.ctx.dialer.directory.request(&request).await {
                Ok(DirectoryResponse::Stored) => {
                    self.mailbox_pending = true;
                    Ok((Status::Queued, None))
                }
                Ok(other) => Err(anyhow!("unexpected answer from the directory: {other:?}")),
                Err(e) => Err(match e.downcast_ref::<DirectoryError>() {
                    Some(DirectoryError(ErrorCode::MailboxFull)) => {
                        anyhow!("{}'s mailbox is full; the message was not sent", self.to)
                    }
                    Some(DirectoryError(ErrorCode::UnknownPeer)) => {
                        anyhow!("no peer is named {}", self.to)
                    }
                    Some(DirectoryError(ErrorCode::TooLarge)) => {
                        anyhow!("the message is too large")
                    }
                    _ => e.context("the message could not be queued"),
                }),
            };
            p.answer(result);
        }
    }
}

/// Opens a chat stream on `conn`, with a task that reads its acks (reading a frame is not
/// cancel-safe, so it cannot sit in a `select!`).
async fn open_link(conn: &quinn::Connection, path: Path, deadline: Instant) -> Result<Link> {
    let (send, mut recv) = tokio::time::timeout_at(deadline, conn.open_bi())
        .await
        .map_err(|_| anyhow!("opening a stream timed out"))??;
    let (ack_tx, acks) = mpsc::channel(SEND_WINDOW);
    tokio::spawn(async move {
        loop {
            let ack = match framing::read_frame::<PeerFrame, _>(&mut recv).await {
                Ok(Some(PeerFrame::Ack(id))) => Ok(id),
                Ok(Some(other)) => Err(anyhow!("unexpected {other:?} on a chat stream")),
                Ok(None) => Err(anyhow!("the chat stream ended")),
                Err(e) => Err(e.into()),
            };
            let last = ack.is_err();
            if ack_tx.send(ack).await.is_err() || last {
                return;
            }
        }
    });
    Ok(Link {
        send,
        acks,
        in_flight: VecDeque::new(),
        first_deadline: Some(deadline),
        path,
        nudged: false,
    })
}

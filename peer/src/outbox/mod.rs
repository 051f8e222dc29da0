//! Sending. Each recipient has one conversation task, so messages to it leave in the order they
//! were sent, whichever path they take. What the task decides is [`conversation`]'s, a state
//! machine with no I/O whose docs state the delivery rules; the task here only does what it
//! asks: open a chat stream, look up, dial, write, deposit.

pub mod conversation;

use crate::{
    contacts::Contacts,
    directory_client::{DirectoryClient, DirectoryError},
    failure::Failure,
    links::DirectPath,
    punch::Dialer,
    tasks::Tasks,
};
use anyhow::{anyhow, Result};
use common::{
    defaults::{MAX_BODY_LEN, SEND_WINDOW},
    framing, now_ms,
    seal::Content,
    wire::{ChatMessage, DirectoryRequest, MessageId, PeerFrame, PeerInfo, RoomMessage},
    Name,
};
use conversation::{Action, Conversation, DialFailed, Input, Post};
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::{debug, info, warn, Instrument};

/// How a message left us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// The message id.
    pub id: MessageId,
    /// The recipient.
    pub to: Name,
    /// Delivered or queued.
    pub status: Status,
    /// The direct path it was delivered on.
    pub path: Option<DirectPath>,
}

/// A send that failed: to whom, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{failure}")]
pub struct SendFailed {
    /// The recipient.
    pub to: Name,
    /// Why.
    pub failure: Failure,
}

/// What a conversation task needs.
pub struct Shared {
    /// Our name.
    pub me: Name,
    /// Makes direct links.
    pub dialer: Arc<Dialer>,
    /// The directory, for lookups, deposits and introductions.
    pub directory: DirectoryClient,
    /// Whom we write to becomes a contact.
    pub contacts: Contacts,
    /// Seals what goes to the mailbox.
    pub letters: crate::letters::Letters,
    /// Where the conversation tasks run.
    pub tasks: Tasks,
    /// Keep messages while the directory cannot be reached, until it is back (a running
    /// peer), instead of failing them once a request has waited for it (a short command).
    pub wait_for_directory: bool,
}

/// Sends messages; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    ctx: Arc<Shared>,
    conversations: Arc<Mutex<HashMap<Name, mpsc::UnboundedSender<Pending>>>>,
}

struct Pending {
    post: Post,
    reply: oneshot::Sender<Result<Sent, Failure>>,
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
    pub async fn send(&self, to: Name, body: String) -> Result<Sent, Failure> {
        self.submit(to, body)?.await
    }

    /// Queues `body` for `to` now, behind every message submitted before it, and returns a
    /// future of the outcome.
    pub fn submit(
        &self,
        to: Name,
        body: String,
    ) -> Result<impl std::future::Future<Output = Result<Sent, Failure>> + Send + 'static, Failure>
    {
        if let Some(refused) = refusal(&self.ctx.me, Some(&to), &body) {
            return Err(refused);
        }
        let message = ChatMessage {
            id: MessageId::random(),
            from: self.ctx.me.clone(),
            to,
            sent_at_ms: now_ms(),
            body,
        };
        Ok(self.submit_post(Post {
            message,
            room: None,
        }))
    }

    /// Queues `post` for its recipient, behind every message submitted to it before, and
    /// returns a future of the outcome. The caller checked the body's size.
    pub fn submit_post(
        &self,
        post: Post,
    ) -> impl std::future::Future<Output = Result<Sent, Failure>> + Send + 'static {
        let to = post.message.to.clone();
        let (reply, answer) = oneshot::channel();
        let mut conversations = self.conversations.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conversations.entry(to.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let span = tracing::info_span!("to", peer = %to);
            let driver = Driver::new(self.ctx.clone(), to.clone());
            self.ctx.tasks.spawn(driver.run(rx).instrument(span));
            tx
        });
        // A send that fails means the task is gone, and so is `reply`: the answer says so.
        let _ = tx.send(Pending { post, reply });
        drop(conversations);
        async move { answer.await.map_err(|_| Failure::Stopped)? }
    }
}

/// A chat stream: where messages are written, and its acks, read by a task of its own
/// (reading a frame is not cancel-safe, so it cannot sit in a `select!`).
struct ChatStream {
    send: quinn::SendStream,
    acks: mpsc::Receiver<Result<MessageId>>,
}

/// Does what one [`Conversation`] asks.
struct Driver {
    ctx: Arc<Shared>,
    to: Name,
    conversation: Conversation,
    stream: Option<ChatStream>,
    /// Whom to tell each message's outcome.
    replies: HashMap<MessageId, (Name, oneshot::Sender<Result<Sent, Failure>>)>,
    /// What the directory said of the recipient last: its key and the encryption key that
    /// mailbox letters are sealed to.
    recipient: Option<PeerInfo>,
    /// A message to the recipient alone was sent: writing to it accepts it as a contact.
    /// (Copies of room messages do not: sharing a room lets members reach each other, see
    /// [`crate::contacts::Contacts::set_room_keys`], without making them contacts.)
    one_to_one: bool,
}

impl Driver {
    fn new(ctx: Arc<Shared>, to: Name) -> Self {
        let mut conversation = Conversation::new(ctx.dialer.direct_timeout);
        if ctx.wait_for_directory {
            conversation = conversation.waiting_out_outages();
        }
        Self {
            ctx,
            to,
            conversation,
            stream: None,
            replies: HashMap::new(),
            recipient: None,
            one_to_one: false,
        }
    }

    /// Runs until the outbox is gone and every message is settled. Whatever is ready (new
    /// messages, acks) is taken in one go before the conversation is asked what to do, so a
    /// burst of messages leaves in one write.
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        let mut open = true;
        // One timer for the life of the task, moved when the conversation's deadline moves.
        let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
        let mut armed: Option<std::time::Instant> = None;
        loop {
            self.perform_all().await;
            if !open && self.conversation.is_idle() {
                return;
            }
            if self.take_ready(&mut rx, &mut open) {
                continue;
            }
            let timeout = self.conversation.poll_timeout();
            if timeout != armed {
                if let Some(at) = timeout {
                    timer.as_mut().reset(at.into());
                }
                armed = timeout;
            }
            tokio::select! {
                pending = rx.recv(), if open => match pending {
                    Some(p) => self.submit(p),
                    None => open = false,
                },
                ack = next_ack(&mut self.stream) => self.acked(ack),
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.conversation.handle_timeout(now());
                }
            }
        }
    }

    /// Takes every new message and ack that is ready now, without waiting; true if any.
    fn take_ready(&mut self, rx: &mut mpsc::UnboundedReceiver<Pending>, open: &mut bool) -> bool {
        let mut took = false;
        while *open {
            match rx.try_recv() {
                Ok(p) => self.submit(p),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => *open = false,
            }
            took = true;
        }
        while let Some(ack) = self.stream.as_mut().and_then(|s| s.acks.try_recv().ok()) {
            self.acked(ack);
            took = true;
        }
        took
    }

    fn submit(&mut self, p: Pending) {
        let id = p.post.id();
        if p.post.room.is_none() && !self.one_to_one {
            self.one_to_one = true;
            if let Some(info) = &self.recipient {
                self.accept(info.key);
            }
        }
        self.replies
            .insert(id, (p.post.message.to.clone(), p.reply));
        self.conversation.handle(Input::Submit(p.post), now());
    }

    fn acked(&mut self, ack: Result<MessageId>) {
        let input = match ack {
            Ok(id) => Input::Acked(id),
            Err(e) => {
                debug!(cause = %format!("{e:#}"), "direct path failed; using the mailbox");
                Input::LinkFailed
            }
        };
        self.conversation.handle(input, now());
    }

    /// Does everything the conversation asks, in order; writes that follow one another go
    /// out as one.
    async fn perform_all(&mut self) {
        let mut frames = Vec::new();
        let mut by: Option<std::time::Instant> = None;
        while let Some(action) = self.conversation.poll_action() {
            match action {
                Action::Write { message, deadline } => {
                    match framing::encode(&frame(message)) {
                        Ok(frame) => frames.extend_from_slice(&frame),
                        Err(e) => {
                            debug!(cause = %e, "cannot encode a message");
                            self.conversation.handle(Input::LinkFailed, now());
                        }
                    }
                    by = Some(by.map_or(deadline, |by| by.min(deadline)));
                }
                other => {
                    self.write(&mut frames, by.take()).await;
                    self.perform(other).await;
                }
            }
        }
        self.write(&mut frames, by).await;
    }

    /// Writes `frames` on the chat stream by `deadline`; a failure gives the link up.
    async fn write(&mut self, frames: &mut Vec<u8>, deadline: Option<std::time::Instant>) {
        let (Some(deadline), false) = (deadline, frames.is_empty()) else {
            return;
        };
        let written = match self.stream.as_mut() {
            Some(stream) => tokio::time::timeout_at(deadline.into(), stream.send.write_all(frames))
                .await
                .map_err(|_| anyhow!("writing timed out"))
                .and_then(|w| w.map_err(Into::into)),
            None => Err(anyhow!("no chat stream")),
        };
        frames.clear();
        if let Err(e) = written {
            debug!(cause = %format!("{e:#}"), "direct path failed; using the mailbox");
            self.conversation.handle(Input::LinkFailed, now());
        }
    }

    /// Does one action, and hands the conversation its answer, if it has one.
    async fn perform(&mut self, action: Action) {
        let answer = match action {
            Action::OpenLive { deadline } => {
                let live = self.ctx.dialer.links.get(&self.to);
                let opened = match live {
                    Some((conn, path)) => self.open(&conn, deadline.into()).await.then_some(path),
                    None => None,
                };
                Input::LiveOpened(opened)
            }
            Action::Lookup => {
                let info = self.ctx.directory.lookup(&self.to).await;
                let info = info
                    .map_err(|e| e.failure(&self.to, self.ctx.directory.addr()))
                    .and_then(|info| self.ctx.contacts.vouch(&info).map(|()| info));
                if let Ok(info) = &info {
                    self.recipient = Some(info.clone());
                    if self.one_to_one {
                        self.accept(info.key);
                    }
                }
                Input::LookedUp(info)
            }
            Action::Dial { info, deadline } => {
                let dialed = match self.ctx.dialer.connect(&info, deadline.into()).await {
                    None => {
                        info!("no direct path; using the mailbox");
                        Err(DialFailed::NoPath)
                    }
                    Some((conn, path)) => match self.open(&conn, deadline.into()).await {
                        true => Ok(path),
                        false => Err(DialFailed::NoStream),
                    },
                };
                Input::Dialed(dialed)
            }
            Action::Write { .. } => return, // gathered by perform_all
            Action::CloseLink => {
                self.stream = None;
                return;
            }
            Action::Deposit(message) => {
                let id = message.id();
                Input::Deposited(id, self.deposit(message).await)
            }
            Action::Introduce => {
                let (directory, to) = (self.ctx.directory.clone(), self.to.clone());
                self.ctx.tasks.spawn(async move {
                    let _ = directory.introduce(&to).await;
                });
                return;
            }
            Action::Settle(id, outcome) => {
                if let Some((to, reply)) = self.replies.remove(&id) {
                    let sent = outcome.map(|(status, path)| Sent {
                        id,
                        to,
                        status,
                        path,
                    });
                    let _ = reply.send(sent);
                }
                return;
            }
        };
        self.conversation.handle(answer, now());
    }

    /// Writing to someone accepts them: they may reach us, and their answers are no message
    /// requests.
    fn accept(&self, key: common::KeyId) {
        if let Err(e) = self.ctx.contacts.accept_on_send(&self.to, key) {
            warn!("contacts: {e:#}");
        }
    }

    /// Seals `post` to the recipient (looked up first if it was not yet) and deposits it.
    async fn deposit(&mut self, post: Post) -> Result<(), Failure> {
        let directory = &self.ctx.directory;
        let failure = |e: DirectoryError| e.failure(&self.to, directory.addr());
        let info = match self.recipient.take() {
            Some(info) => info,
            None => directory.lookup(&self.to).await.map_err(failure)?,
        };
        let content = match post.room {
            None => Content::Chat(post.message),
            Some((room, version)) => Content::RoomChat(RoomMessage {
                room,
                version,
                message: post.message,
            }),
        };
        let sealed = self.ctx.letters.seal(&info, content);
        self.recipient = Some(info);
        let request = DirectoryRequest::DepositLetter { letter: sealed? };
        directory.deposit(&request).await.map_err(failure)
    }

    /// Opens a chat stream on `conn` by `deadline`; true when it is open.
    async fn open(&mut self, conn: &quinn::Connection, deadline: Instant) -> bool {
        match tokio::time::timeout_at(deadline, conn.open_bi()).await {
            Ok(Ok((send, recv))) => {
                self.stream = Some(ChatStream {
                    send,
                    acks: read_acks(recv, &self.ctx.tasks),
                });
                true
            }
            Ok(Err(e)) => {
                debug!(cause = %e, "opening a chat stream failed");
                false
            }
            Err(_) => {
                debug!("opening a chat stream timed out");
                false
            }
        }
    }
}

/// Why a message of `me` to `to` (a peer; `None` for a room) with `body` is not sent at all,
/// if it is not: too long, empty, or to ourselves.
pub fn refusal(me: &Name, to: Option<&Name>, body: &str) -> Option<Failure> {
    if body.len() > MAX_BODY_LEN {
        return Some(Failure::TooLarge {
            len: body.len() as u64,
            limit: MAX_BODY_LEN as u64,
        });
    }
    if body.trim().is_empty() {
        return Some(Failure::EmptyMessage);
    }
    match to {
        Some(to) if to == me => Some(Failure::ToSelf { name: me.clone() }),
        _ => None,
    }
}

/// How `post` goes on a chat stream.
fn frame(post: Post) -> PeerFrame {
    match post.room {
        None => PeerFrame::Chat(post.message),
        Some((room, version)) => PeerFrame::RoomChat(RoomMessage {
            room,
            version,
            message: post.message,
        }),
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// The next ack on the chat stream; never resolves while there is none.
async fn next_ack(stream: &mut Option<ChatStream>) -> Result<MessageId> {
    let Some(stream) = stream else {
        return std::future::pending().await;
    };
    stream
        .acks
        .recv()
        .await
        .unwrap_or_else(|| Err(anyhow!("chat stream closed")))
}

/// Reads the acks of a chat stream until it ends (then one `Err`) or its reader is dropped.
fn read_acks(mut recv: quinn::RecvStream, tasks: &Tasks) -> mpsc::Receiver<Result<MessageId>> {
    let (ack_tx, acks) = mpsc::channel(SEND_WINDOW);
    tasks.spawn(async move {
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
    acks
}

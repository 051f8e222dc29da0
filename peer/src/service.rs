//! What the running peer does for a command, the same whether the command runs in this process
//! ([`crate::session`]) or came through the control socket ([`crate::control`]): it sends
//! and records in the local history, looks names up, sends files, reads the history, and turns
//! what the inbox receives into [`Update`]s, recorded before they are acknowledged. The history
//! is written here and nowhere else.

use crate::{
    contacts::{Contact, Standing},
    directory_client::Status,
    echo::{Echo, Echoes},
    failure::Failure,
    files::{downloads, FileSent, FileUpdate},
    history::{room_state, state_of, History, HistoryEntry, HistoryError, HistoryState, OutKey},
    inbox::{Arriving, Event, Incoming, ReceivedFile, RoomNotice, Taken, Via},
    links::DirectPath,
    node::Node,
    outbox::{conversation::Post, SendFailed, Sent, Status as SendStatus},
    rooms::{RoomCommand, RoomSent, RoomView},
    target::Target,
};
use common::{
    admit::{self, Buckets},
    defaults::{ROOM_POSTS_BURST, ROOM_POSTS_PER_SECOND},
    now_ms,
    room::{Action, Kind, RoomName},
    wire::{ChatMessage, MessageId, PeerInfo},
    KeyId, Name,
};
use futures::FutureExt;
use std::{future::Future, path::Path, sync::Arc};
use tokio::sync::{mpsc, oneshot};

/// Something for a command to show or act on.
#[derive(Debug)]
pub enum Update {
    /// An incoming message.
    Message(Received),
    /// The outcome of a send, in submission order for each recipient.
    Sent(Result<Sent, SendFailed>),
    /// The answer to a lookup, with the direct link the peer has to it, if any.
    Whois(Result<(PeerInfo, Option<DirectPath>), Failure>),
    /// The mailbox has been drained (own node only).
    MailboxIdle,
    /// Something to tell the user.
    Notice(String),
    /// A file arrived and is stored.
    File(ReceivedFile),
    /// How far a file being sent is: bytes the recipient has, of the total.
    FileProgress {
        /// Bytes the recipient has.
        done: u64,
        /// The file's size.
        total: u64,
    },
    /// The outcome of sending a file.
    FileSent(Result<FileSent, Failure>),
    /// A contact as recorded by accept or block.
    Contact(Result<Contact, Failure>),
    /// The key now trusted for a name.
    Trusted(Result<(Name, KeyId), Failure>),
    /// `from` took these messages (or files) of ours from its mailbox, at that time.
    Receipt {
        /// The recipient that took them.
        from: Name,
        /// Their ids.
        delivered: Vec<MessageId>,
        /// When, by the directory's clock.
        at_ms: u64,
    },
    /// A room's membership changed.
    Room(RoomNotice),
    /// The outcome of a message to a room.
    RoomSent(Result<RoomSent, Failure>),
    /// The answer to a room command: the room (or the rooms we are in) as it stands now.
    Rooms(Result<Vec<RoomView>, Failure>),
    /// One of our messages, sent from another view (see [`crate::echo`]).
    Echo(Echo),
    /// How far a file arriving is.
    FileArriving(Arriving),
    /// Where the connection to the directory stands (after [`crate::session::Session::watch_directory`]).
    Directory {
        /// The directory's address as the user gave it.
        addr: String,
        /// Where the connection stands.
        status: Status,
    },
}

/// An incoming message; call [`Received::shown`] once it is on screen.
#[derive(Debug)]
pub struct Received {
    /// The message.
    pub message: ChatMessage,
    /// The room it was said in; `None` for a message to us alone.
    pub room: Option<RoomName>,
    /// How it came.
    pub via: Via,
    /// From a stranger: a message request (see [`crate::contacts`]).
    pub request: bool,
    /// Who proved they sent it, when this process received it (a copy has no proof).
    pub signer: Option<common::KeyId>,
    ack: Option<Incoming>,
    history: Option<History>,
}

impl Received {
    /// A copy of a message that another process shows and acknowledges.
    pub fn copy(message: ChatMessage, room: Option<RoomName>, via: Via, request: bool) -> Self {
        Self {
            message,
            room,
            via,
            request,
            signer: None,
            ack: None,
            history: None,
        }
    }

    /// Lets the message be acknowledged (own node): it is recorded in the history first, and
    /// acknowledged once that is on disk. A no-op for a copy from a running peer.
    pub fn shown(self) {
        let Some(incoming) = self.ack else {
            return;
        };
        let signer = incoming.signer;
        let recorded = self
            .history
            .map(|h| h.record_in(&self.message, self.room.as_ref(), self.via, signer));
        when_recorded(recorded, move || incoming.shown());
    }
}

/// The running peer with its history; cheap to clone.
#[derive(Clone)]
pub struct Service {
    node: Arc<Node>,
    history: Option<History>,
    /// Messages to rooms, in the order they were submitted (see [`Service::submit_room`]).
    room_posts: mpsc::UnboundedSender<RoomPost>,
    /// Our messages, for every view; this view's are announced as from `origin`.
    echoes: Echoes,
    origin: u64,
}

/// A message to a room waiting for the room's roster.
struct RoomPost {
    room: RoomName,
    body: String,
    record: Option<(History, OutKey)>,
    reply: oneshot::Sender<Result<RoomSent, Failure>>,
}

impl Service {
    /// The service of `node`, recording in `history` if there is one.
    pub fn new(node: Arc<Node>, history: Option<History>) -> Self {
        let (room_posts, posts) = mpsc::unbounded_channel();
        node.spawn(fan_out(node.clone(), posts));
        let echoes = Echoes::default();
        let origin = echoes.number();
        Self {
            node,
            history,
            room_posts,
            echoes,
            origin,
        }
    }

    /// The service for another view of the same peer (a window, a control connection): what
    /// it sends is announced to the other views, and it hears theirs.
    pub fn view(&self) -> Self {
        Self {
            origin: self.echoes.number(),
            ..self.clone()
        }
    }

    /// This view's origin, which its own echoes carry.
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// The echoes of every view's messages from now on, this view's own included.
    pub fn echoes(&self) -> tokio::sync::broadcast::Receiver<Echo> {
        self.echoes.subscribe()
    }

    /// Our name.
    pub fn name(&self) -> &Name {
        &self.node.name
    }

    /// Our key.
    pub fn key(&self) -> KeyId {
        self.node.key
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The history, if there is one.
    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// Sends `body` to `to` behind every message submitted before it. It is recorded as
    /// sending at once, and its outcome when the returned future has it. A body over the limit
    /// is refused without being recorded.
    pub fn submit(
        &self,
        to: Name,
        body: String,
    ) -> impl Future<Output = Result<Sent, SendFailed>> + Send + 'static {
        let refused = crate::outbox::refusal(&self.node.name, Some(&to), &body);
        let record = refused
            .is_none()
            .then(|| {
                self.history.as_ref().map(|h| {
                    let target = Target::Peer(to.clone());
                    (h.clone(), h.sending(&self.node.name, &target, &body))
                })
            })
            .flatten();
        let echo = (refused.is_none())
            .then(|| (self.echoes).submitted(self.origin, &Target::Peer(to.clone()), &body))
            .flatten();
        let outcome = self.node.outbox().submit(to.clone(), body);
        async move {
            let result = match outcome {
                Ok(outcome) => outcome.await,
                Err(failure) => Err(failure),
            }
            .map_err(|failure| SendFailed { to, failure });
            if let Some((history, key)) = record {
                match &result {
                    Ok(sent) => history.settle(key, Ok(sent)),
                    Err(e) => history.settle(key, Err(&e.failure.to_string())),
                }
            }
            if let Some(echo) = echo {
                match &result {
                    Ok(sent) => echo.settled(Some(sent.id), state_of(sent)),
                    Err(e) => echo.settled(None, failed(&e.failure)),
                }
            }
            result
        }
    }

    /// Sends `body` to every other member of `room`, each copy behind every message submitted
    /// to that member before it: directly where there is a link, else through the member's
    /// mailbox, sealed to it. It is recorded once, in the room's history, as sending at once,
    /// and with how many members have it when the returned future has the outcome.
    pub fn submit_room(
        &self,
        room: RoomName,
        body: String,
    ) -> impl Future<Output = Result<RoomSent, Failure>> + Send + 'static {
        let refused = crate::outbox::refusal(&self.node.name, None, &body);
        let (reply, answer) = oneshot::channel();
        let mut echo = None;
        if refused.is_none() {
            let target = Target::Room(room.clone());
            echo = self.echoes.submitted(self.origin, &target, &body);
            let record = (self.history.as_ref())
                .map(|h| (h.clone(), h.sending(&self.node.name, &target, &body)));
            let post = RoomPost {
                room,
                body,
                record,
                reply,
            };
            // Only fails once the node is shutting down, and then `answer` says so.
            let _ = self.room_posts.send(post);
        }
        async move {
            let result = match refused {
                Some(failure) => Err(failure),
                None => answer.await.map_err(|_| Failure::Stopped)?,
            };
            if let Some(echo) = echo {
                match &result {
                    Ok(sent) => echo.settled(Some(sent.id), room_state(sent)),
                    Err(failure) => echo.settled(None, failed(failure)),
                }
            }
            result
        }
    }

    /// Does what a `peer room …` command asks, and returns the room as it stands then (for
    /// `list`, every room we are in).
    pub async fn room(&self, command: RoomCommand) -> Result<Vec<RoomView>, Failure> {
        let rooms = self.node.rooms();
        let roster = match command {
            RoomCommand::Create { room, public } => {
                let kind = if public { Kind::Public } else { Kind::Private };
                rooms.act(&room, Action::Create { kind }).await?
            }
            RoomCommand::Invite { room, names } => {
                let mut roster = None;
                for name in names {
                    // The key we remember for the name, which the invitation binds.
                    let (info, _) = self.node.whois(&name).await?;
                    let action = Action::Invite {
                        name,
                        key: info.key,
                    };
                    roster = Some(rooms.act(&room, action).await?);
                }
                match roster {
                    Some(roster) => roster,
                    None => rooms.sync(&room).await?,
                }
            }
            RoomCommand::Join { room } => rooms.act(&room, Action::Join).await?,
            RoomCommand::Leave { room } => rooms.act(&room, Action::Leave).await?,
            RoomCommand::Kick { room, name } => rooms.act(&room, Action::Kick { name }).await?,
            RoomCommand::Members { room } => {
                let roster = rooms.sync(&room).await?;
                let mut view = RoomView::of(&roster);
                let directory = self.node.directory();
                let lookups = view.members.iter().map(|m| directory.lookup(&m.name));
                let found = futures::future::join_all(lookups).await;
                for (member, found) in view.members.iter_mut().zip(found) {
                    member.online = found.ok().map(|info| info.online);
                }
                return Ok(vec![view]);
            }
            RoomCommand::List => {
                return Ok(rooms.ours().await.iter().map(RoomView::of).collect());
            }
        };
        Ok(vec![RoomView::of(&roster)])
    }

    /// What the directory knows about `name`, and our direct link to it.
    pub async fn whois(&self, name: &Name) -> Result<(PeerInfo, Option<DirectPath>), Failure> {
        self.node.whois(name).await
    }

    /// Trusts `key`, or the key the directory holds for `name` now, as `name`'s.
    pub async fn trust(&self, name: &Name, key: Option<KeyId>) -> Result<(Name, KeyId), Failure> {
        let key = match key {
            Some(key) => key,
            None => {
                let directory = self.node.directory();
                directory
                    .lookup(name)
                    .await
                    .map_err(|e| e.failure(name, directory.addr()))?
                    .key
            }
        };
        self.node
            .contacts()
            .trust(name, key)
            .map_err(Failure::other)?;
        // What the new key signed while it was not trusted yet.
        match self.node.release_held(name).await {
            Ok(0) => {}
            Ok(n) => {
                let text = format!("{n} held letter(s) from {name} opened");
                self.node.inbox().notice(text).await;
            }
            Err(e) => tracing::warn!("held letters from {name}: {e}"),
        }
        Ok((name.clone(), key))
    }

    /// Accepts or blocks `name` (see [`crate::contacts`]), with the key the directory holds for
    /// it now.
    pub async fn set_contact(&self, name: &Name, standing: Standing) -> Result<Contact, Failure> {
        let (info, _) = self.node.whois(name).await?;
        let contact = self
            .node
            .contacts()
            .set(name, info.key, standing)
            .map_err(|e| Failure::Other(format!("{e:#}")))?;
        // What it sent while a stranger: into the downloads folder, or gone.
        let (downloads, who) = (self.node.downloads().to_path_buf(), name.clone());
        let notice = tokio::task::spawn_blocking(move || match standing {
            Standing::Accepted => match downloads::accept_requests(&downloads, &who) {
                Ok(moved) if moved.is_empty() => None,
                Ok(moved) => Some(format!(
                    "{} file(s) {who} sent before you accepted them are in {}",
                    moved.len(),
                    downloads.display()
                )),
                Err(e) => Some(format!("the files {who} sent could not be moved: {e:#}")),
            },
            Standing::Blocked => match downloads::drop_requests(&downloads, &who) {
                0 => None,
                n => Some(format!("{n} file(s) {who} sent were deleted")),
            },
        })
        .await
        .ok()
        .flatten();
        if let Some(text) = notice {
            self.node.inbox().notice(text).await;
        }
        Ok(contact)
    }

    /// Sends the file at `path` to `to` (see [`Node::send_file`]).
    pub async fn send_file(
        &self,
        to: &Name,
        path: &Path,
        report: impl Fn(FileUpdate) + Send + Sync + 'static,
    ) -> Result<FileSent, Failure> {
        self.node.send_file(to, path, report).await
    }

    /// The last `limit` messages of the conversation with `with`, oldest first, including
    /// everything recorded before this call; `None` when there is no history.
    pub async fn conversation(
        &self,
        with: &Target,
        limit: usize,
    ) -> Result<Option<Vec<HistoryEntry>>, HistoryError> {
        let Some(history) = self.history.clone() else {
            return Ok(None);
        };
        history.flush().await?;
        let with = with.clone();
        tokio::task::spawn_blocking(move || history.conversation(&with, limit))
            .await
            .map_err(|e| HistoryError::Db(e.to_string()))?
            .map(Some)
    }

    /// The peers with a conversation in the local history, latest first.
    pub fn history_peers(&self) -> Vec<Name> {
        self.history
            .as_ref()
            .and_then(|h| h.peers().ok())
            .map(|p| p.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default()
    }

    /// Turns the inbox's events into updates on `updates`: a message already in the history
    /// (a redelivery from before a restart) is acknowledged and not shown again; a receipt is
    /// recorded, then acknowledged. Runs until either side is gone.
    pub async fn pump(
        self,
        mut events: mpsc::Receiver<Event>,
        updates: mpsc::UnboundedSender<Update>,
    ) {
        while let Some(event) = events.recv().await {
            let update = match event {
                Event::Message(incoming) => {
                    if self.seen_before(&incoming.message, incoming.room.as_ref()) {
                        incoming.shown();
                        continue;
                    }
                    Update::Message(Received {
                        message: incoming.message.clone(),
                        room: incoming.room.clone(),
                        via: incoming.via,
                        request: incoming.request,
                        signer: Some(incoming.signer),
                        ack: Some(incoming),
                        history: self.history.clone(),
                    })
                }
                Event::MailboxIdle => Update::MailboxIdle,
                Event::File(file) => Update::File(file),
                Event::Notice(text) => Update::Notice(text),
                Event::Room(notice) => Update::Room(notice),
                Event::Receipt(taken) => {
                    let receipt = taken.receipt.clone();
                    self.record_receipt(taken);
                    Update::Receipt {
                        from: receipt.from,
                        delivered: receipt.delivered,
                        at_ms: receipt.at_ms,
                    }
                }
            };
            if updates.send(update).is_err() {
                return;
            }
        }
    }

    /// Records a receipt in the history, then lets it be acknowledged.
    fn record_receipt(&self, taken: Taken) {
        let recorded = self
            .history
            .as_ref()
            .map(|h| h.delivered_later(taken.receipt.delivered.clone(), taken.receipt.at_ms));
        when_recorded(recorded, move || taken.done());
    }

    /// Whether `message` is in the history already (a redelivery after a restart).
    fn seen_before(&self, message: &ChatMessage, room: Option<&RoomName>) -> bool {
        let Some(history) = &self.history else {
            return false;
        };
        let with = match room {
            Some(room) => Target::Room(room.clone()),
            None => Target::Peer(message.from.clone()),
        };
        match history.contains_from(&message.id, &with, &message.from) {
            Ok(seen) => seen,
            Err(e) => {
                tracing::warn!("history: {e}");
                false
            }
        }
    }

    /// Records what is pending, then takes the node offline and ends its tasks.
    pub async fn close(&self) {
        if let Some(history) = &self.history {
            if let Err(e) = history.flush().await {
                tracing::warn!("history: {e}");
            }
        }
        self.node.shutdown().await;
    }
}

/// Sends each message to a room, in the order submitted: the room's roster (ours, kept up to
/// date by the directory's pushes on a running peer; read from the directory's log first by
/// a short command, which gets no pushes), then one copy per other member, handed to that
/// member's conversation in the outbox before the next message is looked at. That is what
/// keeps a sender's room messages in order for every member, on either path.
async fn fan_out(node: Arc<Node>, mut posts: mpsc::UnboundedReceiver<RoomPost>) {
    let budget = Buckets::new(admit::per_second(ROOM_POSTS_PER_SECOND, ROOM_POSTS_BURST));
    while let Some(post) = posts.recv().await {
        let RoomPost {
            room,
            body,
            record,
            reply,
        } = post;
        let roster = match (node.online(), node.rooms().roster(&room).await) {
            (true, Some(roster)) if roster.members.contains_key(&node.name) => Ok(roster),
            _ => node.rooms().sync(&room).await,
        };
        let roster = roster.and_then(|roster| match roster.members.contains_key(&node.name) {
            true => Ok(roster),
            false => Err(Failure::NotAMember { room: room.clone() }),
        });
        let roster = roster.and_then(|roster| match budget.check(&room) {
            true => Ok(roster),
            false => Err(Failure::PostingTooFast {
                room: room.clone(),
                per_second: ROOM_POSTS_PER_SECOND,
                burst: ROOM_POSTS_BURST,
            }),
        });
        let roster = match roster {
            Ok(roster) => roster,
            Err(failure) => {
                if let Some((history, key)) = record {
                    history.settle(key, Err(&failure.to_string()));
                }
                let _ = reply.send(Err(failure));
                continue;
            }
        };
        let (id, sent_at_ms) = (MessageId::random(), now_ms());
        let copies: Vec<_> = (roster.members.iter())
            .filter(|(name, _)| **name != node.name)
            .map(|(to, member)| {
                // The member's key is the one the signed log gives it, not whatever the
                // directory says when the copy is sealed: it is pinned for the name first
                // (unless another is), and a lookup that gives another key fails the copy.
                let to = to.clone();
                if let Err(failure) = node.contacts().vouch_key(&to, member.key) {
                    return async move { (to, Err(failure)) }.boxed();
                }
                let message = ChatMessage {
                    id,
                    from: node.name.clone(),
                    to: to.clone(),
                    sent_at_ms,
                    body: body.clone(),
                };
                let room = Some((room.clone(), roster.version));
                let outcome = node.outbox().submit_post(Post { message, room });
                async move { (to, outcome.await) }.boxed()
            })
            .collect();
        node.spawn(async move {
            let mut sent = RoomSent {
                id,
                room,
                delivered: 0,
                queued: 0,
                failed: Vec::new(),
            };
            for (to, outcome) in futures::future::join_all(copies).await {
                match outcome.map(|s| s.status) {
                    Ok(SendStatus::Delivered) => sent.delivered += 1,
                    Ok(SendStatus::Queued) => sent.queued += 1,
                    Err(failure) => sent.failed.push((to, failure)),
                }
            }
            if let Some((history, key)) = record {
                history.settle_as(key, Some(id), crate::history::room_state(&sent));
            }
            let _ = reply.send(Ok(sent));
        });
    }
}

/// Copies every item of `copies` to `tx` as `response(item)` (none for an item this view
/// need not see), until either side goes away; `lagged(n)` says what to tell it when `n`
/// items were lost to its slowness. How a view, in this process or through the control
/// socket, follows what the running peer broadcasts.
pub fn relay<T: Clone + Send + 'static, U: Send + 'static>(
    mut copies: tokio::sync::broadcast::Receiver<T>,
    tx: mpsc::UnboundedSender<U>,
    response: impl Fn(T) -> Option<U> + Send + 'static,
    lagged: impl Fn(u64) -> Option<U> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    async move {
        loop {
            let sent = match copies.recv().await {
                Ok(item) => response(item).map(|u| tx.send(u)),
                Err(RecvError::Lagged(n)) => lagged(n).map(|u| tx.send(u)),
                Err(RecvError::Closed) => return,
            };
            if let Some(Err(_)) = sent {
                return;
            }
        }
    }
}

/// How a message that could not be sent stands.
fn failed(failure: &Failure) -> HistoryState {
    HistoryState::Failed {
        reason: failure.to_string(),
    }
}

/// Calls `then` once the history write `recorded` (if any) is on disk. A failed write is only
/// logged: the history is a convenience, and what it was about has reached the user. The wait
/// is a task of its own so that the caller (the one place that shows messages) never blocks on
/// the disk; it is not tracked because it always ends, when the history's writer thread
/// answers the write (or stops).
fn when_recorded(
    recorded: Option<impl Future<Output = Result<(), HistoryError>> + Send + 'static>,
    then: impl FnOnce() + Send + 'static,
) {
    let Some(recorded) = recorded else {
        then();
        return;
    };
    tokio::spawn(async move {
        if let Err(e) = recorded.await {
            tracing::warn!("history: {e}");
        }
        then();
    });
}

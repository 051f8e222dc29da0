//! Receiving: direct chat streams from other peers, and mailbox messages handed over by the
//! directory client. Both end in [`Inbox::receive`], which drops duplicates by message id and
//! waits until the user's side has shown the message before the caller acknowledges it.
//! The mailbox also brings parts of small files ([`Inbox::file_part`]) and receipts for our
//! own queued messages ([`Inbox::receipt`]).
//!
//! A direct connection proves a key in its TLS handshake; the first message on it names its
//! sender, and [`serve_connection`] asks the directory whether that name is bound to that key
//! before showing anything. Every later message on the connection must carry the same sender.

use crate::{
    directory_client::DirectoryClient,
    files::{self, PartOutcome, ReceivedFile},
    links::Links,
    punch,
};
use anyhow::{anyhow, bail, Result};
use common::{
    control::Path,
    defaults::{FILE_PART_LEN, MAX_BODY_LEN, SEND_WINDOW},
    framing, tls,
    wire::{codes, ChatMessage, FileHeader, FilePart, MessageId, PeerFrame, Receipt},
    KeyId, Name,
};
use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
};
use tokio::sync::{broadcast, mpsc, oneshot, Notify, OnceCell};
use tracing::{debug, info_span, warn, Instrument};

/// How many message ids are remembered for duplicate detection.
const SEEN_CAPACITY: usize = 100_000;

/// Which path a message came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Straight from the sender over QUIC.
    Direct,
    /// From the directory's mailbox.
    Mailbox,
}

impl Via {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Mailbox => "mailbox",
        }
    }
}

/// A message waiting to be shown. Call [`Incoming::shown`] once the user can see it: only then
/// is it acknowledged to the sender or the directory.
#[derive(Debug)]
pub struct Incoming {
    /// The message.
    pub message: ChatMessage,
    /// How it came.
    pub via: Via,
    shown: oneshot::Sender<()>,
}

impl Incoming {
    /// Marks the message as shown, which lets it be acknowledged.
    pub fn shown(self) {
        let _ = self.shown.send(());
    }
}

/// What the inbox tells the program using it.
#[derive(Debug)]
pub enum Event {
    /// A new message (never a duplicate).
    Message(Incoming),
    /// Everything waiting in the mailbox has been delivered.
    MailboxIdle,
    /// A file arrived whole, its hash checked, and is stored.
    File(ReceivedFile),
    /// A recipient took our mail from its mailbox; call [`Taken::done`] once it is recorded.
    Receipt(Taken),
    /// Something the user should know (a file from the mailbox that had to be dropped).
    Notice(String),
}

/// A receipt waiting to be recorded; acknowledged to the directory after [`Taken::done`].
#[derive(Debug)]
pub struct Taken {
    /// The receipt.
    pub receipt: Receipt,
    done: oneshot::Sender<()>,
}

impl Taken {
    /// Marks the receipt as recorded, which lets it be acknowledged.
    pub fn done(self) {
        let _ = self.done.send(());
    }
}

/// Dedup and hand-off of incoming messages; cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    inner: Arc<InboxInner>,
}

struct InboxInner {
    me: Name,
    /// Where arriving files are stored.
    downloads: PathBuf,
    /// Files arriving now, by partial file: a newer transfer of the same file from the same
    /// sender (after the sender restarted) takes over from the stalled older one.
    arriving: Mutex<HashMap<PathBuf, Arc<Notify>>>,
    seen: Mutex<Seen>,
    events: mpsc::Sender<Event>,
    /// Copies for other local commands attached through the control socket.
    copies: broadcast::Sender<(ChatMessage, Via)>,
    /// Copies of receipts, likewise.
    receipts: broadcast::Sender<Receipt>,
}

/// Resolves when a handed-over message may be acknowledged: it was shown, or it was a
/// duplicate of one shown before.
pub struct Shown(Option<(MessageId, oneshot::Receiver<()>, Inbox)>);

impl Shown {
    /// Waits until the message was shown.
    pub async fn wait(self) -> Result<(), NotShown> {
        let Some((id, was_shown, inbox)) = self.0 else {
            return Ok(());
        };
        if was_shown.await.is_err() {
            // Nobody showed it: forget the id so a redelivery is not taken for a duplicate.
            inbox.seen().remove(&id);
            return Err(NotShown);
        }
        Ok(())
    }
}

/// Why a message was not taken.
#[derive(Debug, thiserror::Error)]
#[error("the message could not be shown")]
pub struct NotShown;

impl Inbox {
    /// An inbox for `me`, with the receiver of its events.
    pub fn new(me: Name, downloads: PathBuf) -> (Self, mpsc::Receiver<Event>) {
        let (events, rx) = mpsc::channel(1024);
        let (copies, _) = broadcast::channel(1024);
        let (receipts, _) = broadcast::channel(256);
        let inner = InboxInner {
            me,
            downloads,
            arriving: Mutex::default(),
            seen: Mutex::new(Seen::default()),
            events,
            copies,
            receipts,
        };
        (
            Self {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Our own name.
    pub fn me(&self) -> &Name {
        &self.inner.me
    }

    /// Copies of every new message, for local commands attached through the control socket.
    pub fn subscribe(&self) -> broadcast::Receiver<(ChatMessage, Via)> {
        self.inner.copies.subscribe()
    }

    /// Copies of every receipt, for local commands attached through the control socket.
    pub fn subscribe_receipts(&self) -> broadcast::Receiver<Receipt> {
        self.inner.receipts.subscribe()
    }

    /// Takes one receipt from the mailbox. `Ok` means it was recorded and may be acknowledged.
    pub async fn receipt(&self, receipt: Receipt) -> Result<(), NotShown> {
        let _ = self.inner.receipts.send(receipt.clone());
        let (done, recorded) = oneshot::channel();
        let event = Event::Receipt(Taken { receipt, done });
        if self.inner.events.send(event).await.is_err() {
            return Err(NotShown);
        }
        recorded.await.map_err(|_| NotShown)
    }

    /// Takes one part of a file from the mailbox: `Ok` once it is on disk (and, for the last
    /// part, once the file is checked, stored and reported), so it may be acknowledged. A part
    /// that cannot be used is an error and is not acknowledged.
    pub async fn file_part(&self, part: FilePart) -> Result<()> {
        if part.offer.to != *self.me() || part.data.len() > FILE_PART_LEN {
            bail!("a file part not for us, or too large");
        }
        let downloads = self.downloads().to_path_buf();
        let partial = files::partial_path(&downloads, &part.offer.from, &part.offer.hash);
        if self.arriving().contains_key(&partial) {
            // A direct transfer of the same file is under way and holds the partial file.
            bail!("the same file is arriving directly");
        }
        match tokio::task::spawn_blocking(move || files::write_part(&downloads, &part)).await?? {
            PartOutcome::Kept => {}
            PartOutcome::Complete(file) => self.file(file).await,
            PartOutcome::Discarded(reason) => {
                warn!("{reason}");
                let _ = self.inner.events.send(Event::Notice(reason)).await;
            }
        }
        Ok(())
    }

    /// Takes one message. `Ok` means it may be acknowledged: it was shown now, or it is a
    /// duplicate of one shown before.
    pub async fn receive(&self, message: ChatMessage, via: Via) -> Result<(), NotShown> {
        self.hand_over(message, via).await?.wait().await
    }

    /// Hands one message to the program and returns at once with [`Shown`], which resolves
    /// when it may be acknowledged. Messages handed over one after another are shown in that
    /// order, so a stream can take the next message while earlier ones are being shown.
    pub async fn hand_over(&self, message: ChatMessage, via: Via) -> Result<Shown, NotShown> {
        let id = message.id;
        if !self.seen().insert(id) {
            debug!(%id, "duplicate dropped");
            return Ok(Shown(None));
        }
        let _ = self.inner.copies.send((message.clone(), via));
        let (shown, was_shown) = oneshot::channel();
        let event = Event::Message(Incoming {
            message,
            via,
            shown,
        });
        if self.inner.events.send(event).await.is_err() {
            self.seen().remove(&id);
            return Err(NotShown);
        }
        Ok(Shown(Some((id, was_shown, self.clone()))))
    }

    /// Where arriving files are stored.
    pub fn downloads(&self) -> &std::path::Path {
        &self.inner.downloads
    }

    fn arriving(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<Notify>>> {
        self.inner
            .arriving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Reports a file that arrived.
    pub async fn file(&self, file: ReceivedFile) {
        let _ = self.inner.events.send(Event::File(file)).await;
    }

    /// Reports that the mailbox has been drained.
    pub async fn mailbox_idle(&self) {
        let _ = self.inner.events.send(Event::MailboxIdle).await;
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.inner.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bounded set of recently seen ids: the oldest is forgotten first.
#[derive(Default)]
struct Seen {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

impl Seen {
    fn insert(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    fn remove(&mut self, id: &MessageId) {
        self.set.remove(id);
        self.order.retain(|x| x != id);
    }
}

/// Accepts connections from other peers until the endpoint closes.
pub async fn serve(
    endpoint: quinn::Endpoint,
    inbox: Inbox,
    directory: DirectoryClient,
    links: Arc<Links>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let span = info_span!("peer_conn", remote = %incoming.remote_address());
        let (inbox, directory, links) = (inbox.clone(), directory.clone(), links.clone());
        tokio::spawn(
            async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        debug!(cause = %e, "incoming handshake failed");
                        return;
                    }
                };
                // A peer we asked the directory to introduce is answering: its key is the one
                // the directory holds for the name, so the link is verified already.
                let known = tls::remote_key(&conn).and_then(|key| links.expected(&key));
                if let Some(name) = &known {
                    debug!(peer = %name, "introduced peer connected");
                    links.insert(name.clone(), conn.clone(), Path::Punched);
                }
                serve_connection(conn, known, inbox, directory, links).await;
            }
            .instrument(span),
        );
    }
}

/// Serves the chat streams the remote opens on `conn`. `known` is the remote's name when we
/// dialed it (its key was checked then); otherwise the first message names it and the
/// directory confirms it.
pub async fn serve_connection(
    conn: quinn::Connection,
    known: Option<Name>,
    inbox: Inbox,
    directory: DirectoryClient,
    links: Arc<Links>,
) {
    let Some(key) = tls::remote_key(&conn) else {
        conn.close(codes::UNAUTHORIZED.into(), b"no certificate");
        return;
    };
    let verified = Arc::new(OnceCell::new_with(known));
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                debug!(cause = %e, "peer connection ended");
                return;
            }
        };
        let stream = ChatStream {
            conn: conn.clone(),
            key,
            verified: verified.clone(),
            inbox: inbox.clone(),
            directory: directory.clone(),
            links: links.clone(),
        };
        tokio::spawn(
            async move {
                if let Err(e) = stream.run(send, recv).await {
                    debug!(cause = %format!("{e:#}"), "chat stream ended");
                }
            }
            .in_current_span(),
        );
    }
}

struct ChatStream {
    conn: quinn::Connection,
    key: KeyId,
    verified: Arc<OnceCell<Name>>,
    inbox: Inbox,
    directory: DirectoryClient,
    links: Arc<Links>,
}

impl ChatStream {
    /// Serves one stream the remote opened: its first frame says whether it is a chat stream
    /// or a file stream.
    async fn run(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Result<()> {
        let first = match self.next_frame(&mut recv).await? {
            Some(PeerFrame::FileStream(header)) => {
                return self.receive_file(header, &mut send, &mut recv).await;
            }
            Some(PeerFrame::Chat(message)) => message,
            Some(other) => {
                return Err(self.refuse(codes::PROTOCOL, anyhow!("unexpected {other:?}")))
            }
            None => return Ok(()),
        };
        // Reading runs ahead of acknowledging: messages are handed over in order while earlier
        // ones are still being shown (and recorded), and the acks follow in the same order.
        let (pending_tx, mut pending) = mpsc::channel::<(MessageId, Shown)>(SEND_WINDOW);
        let read = async {
            let mut next = Some(first);
            while let Some(message) = next {
                if message.to != *self.inbox.me() || message.body.len() > MAX_BODY_LEN {
                    return Err(
                        self.refuse(codes::PROTOCOL, anyhow!("message not for us or too large"))
                    );
                }
                self.check_sender(&message.from).await?;
                let id = message.id;
                let shown = self.inbox.hand_over(message, Via::Direct).await?;
                if pending_tx.send((id, shown)).await.is_err() {
                    return Ok(()); // the ack writer failed; its error is the one reported
                }
                next = match self.next_frame(&mut recv).await? {
                    Some(PeerFrame::Chat(message)) => Some(message),
                    Some(other) => {
                        return Err(self.refuse(codes::PROTOCOL, anyhow!("unexpected {other:?}")))
                    }
                    None => None,
                };
            }
            drop(pending_tx);
            Ok::<_, anyhow::Error>(())
        };
        let ack = async {
            while let Some((id, shown)) = pending.recv().await {
                shown.wait().await?;
                framing::write_frame(&mut send, &PeerFrame::Ack(id)).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        tokio::try_join!(read, ack)?;
        Ok(())
    }

    /// The next frame; a frame that breaks the protocol closes the connection.
    async fn next_frame(&self, recv: &mut quinn::RecvStream) -> Result<Option<PeerFrame>> {
        match framing::read_frame::<PeerFrame, _>(recv).await {
            Ok(frame) => Ok(frame),
            Err(e) if e.is_violation() => Err(self.refuse(e.code(), e.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// A file stream: the header came first; the rest is the file's bytes and hash.
    async fn receive_file(
        &self,
        header: FileHeader,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<()> {
        if header.to != *self.inbox.me() {
            return Err(self.refuse(codes::PROTOCOL, anyhow!("file not for us")));
        }
        self.check_sender(&header.from).await?;
        let partial = files::partial_path(self.inbox.downloads(), &header.from, &header.resume_key);
        let mine = Arc::new(Notify::new());
        let older = self.inbox.arriving().insert(partial.clone(), mine.clone());
        if let Some(older) = older {
            older.notify_one();
        }
        let result = tokio::select! {
            result = files::receive(self.inbox.downloads(), header, send, recv) => result,
            _ = mine.notified() => Err(anyhow!("a newer transfer of the same file took over")),
        };
        {
            let mut arriving = self.inbox.arriving();
            if arriving
                .get(&partial)
                .is_some_and(|n| Arc::ptr_eq(n, &mine))
            {
                arriving.remove(&partial);
            }
        }
        self.inbox.file(result?).await;
        Ok(())
    }

    /// Checks that the connection's key owns `from`, asking the directory the first time.
    async fn check_sender(&self, from: &Name) -> Result<()> {
        let name = self
            .verified
            .get_or_try_init(|| async {
                let info = self.directory.lookup(from).await?;
                if info.key != self.key {
                    return Err(self.refuse(
                        codes::UNAUTHORIZED,
                        anyhow!("{from} is not the owner of key {}", self.key.short()),
                    ));
                }
                let path = punch::classify(self.conn.remote_address(), &info, false);
                self.links.insert(from.clone(), self.conn.clone(), path);
                Ok(from.clone())
            })
            .await?;
        if name != from {
            bail!(self.refuse(
                codes::UNAUTHORIZED,
                anyhow!("sender changed from {name} to {from}")
            ));
        }
        Ok(())
    }

    fn refuse(&self, code: u32, cause: anyhow::Error) -> anyhow::Error {
        warn!(cause = %cause, "closing a peer connection");
        self.conn.close(code.into(), b"refused");
        cause
    }
}

//! A running peer: its endpoint, its directory connection, its inbox and outbox, and the tasks
//! that connect them. This is the one place that wires the pieces together: what the
//! directory pushes goes to the inbox (mail), [`files`] (parts of files) or the dialer
//! (introductions); direct connections go to [`crate::accept`]; sends go to the [`Outbox`],
//! files to [`files::Sender`]. [`Node::shutdown`] ends every task.

use crate::{
    accept::{self, Acceptor},
    contacts::Contacts,
    directory_client::{self, Delivery, DirectoryClient, FromDirectory, Mail},
    endpoint,
    failure::Failure,
    files::{self, FileSent, FileUpdate},
    held::Held,
    home::Home,
    inbox::{Event, Inbox, Via},
    letters::Letters,
    links::{DirectPath, Links},
    outbox::{self, Outbox, Sent},
    punch::Dialer,
    rooms::Rooms,
    tasks::Tasks,
};
use anyhow::Result;
use common::{
    seal::Content,
    wire::{Letter, PeerInfo, RoomMessage},
    KeyId, Name,
};
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// How to run a peer.
#[derive(Debug, Clone)]
pub struct Options {
    /// Our name.
    pub name: Name,
    /// The directory, HOST:PORT.
    pub directory: String,
    /// The home folder.
    pub home: Home,
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// Fingerprint to pin the directory to.
    pub pin: Option<KeyId>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Bound on a direct dial plus delivery.
    pub direct_timeout: Duration,
    /// Stay online and receive (long-running commands).
    pub online: bool,
    /// Largest file sent through the mailbox when there is no direct link.
    pub mailbox_file_max: u64,
    /// Let anyone reach us directly, not only contacts (see [`crate::contacts`]).
    pub open: bool,
    /// How long a request waits for the directory connection to come back.
    pub directory_wait: Duration,
    /// Start without waiting for the directory, and connect in the background (the terminal
    /// client, which shows how that goes).
    pub connect_later: bool,
}

/// A running peer.
pub struct Node {
    /// Our name.
    pub name: Name,
    /// Our key's fingerprint.
    pub key: KeyId,
    endpoint: quinn::Endpoint,
    directory: DirectoryClient,
    outbox: Outbox,
    inbox: Inbox,
    links: Arc<Links>,
    dialer: Arc<Dialer>,
    contacts: Contacts,
    letters: Letters,
    rooms: Rooms,
    online: bool,
    downloads: std::path::PathBuf,
    mailbox_file_max: u64,
    home: Home,
    tasks: Tasks,
    /// What mail is handed to, for letters held until their sender's new key is trusted.
    takers: Takers,
}

/// How long leaving waits for the close frames to be sent.
const CLOSE_SENT: Duration = Duration::from_millis(10);

/// How many pushes from the directory may wait for the node: mail comes one piece at a time,
/// so this bounds the introductions that queue behind it (more are dropped).
const PUSHED_BACKLOG: usize = 64;

impl Node {
    /// Brings the peer up: binds the endpoint, connects and registers with the directory, and
    /// starts accepting direct connections. Incoming messages arrive on the returned receiver.
    pub async fn start(options: Options) -> Result<(Self, mpsc::Receiver<Event>)> {
        let tasks = Tasks::default();
        let first_run = !options.home.has_identity();
        let identity = Arc::new(options.home.identity(&options.name)?);
        let key = identity.key_id;
        let endpoint = endpoint::bind(&identity, options.bind)?;
        let contacts = Contacts::load(&options.home, options.open)?;
        let letters = Letters::new(options.home.sealer(&identity)?, contacts.clone());
        let (inbox, events) = Inbox::new(options.name.clone(), contacts.clone());
        if first_run {
            let text = format!(
                "first run as {}: made its key, fingerprint {key} (in {}); keep that folder, \
                 the name is bound to this key",
                options.name,
                options.home.path().display()
            );
            inbox.notice(text).await;
        }
        let files = files::Receiver::new(options.home.downloads(), inbox.clone());
        tasks.spawn(files::downloads::prune(options.home.downloads()));
        let settings = directory_client::Settings {
            addr: options.directory.clone(),
            pin: options.pin,
            name: options.name.clone(),
            heartbeat: options.heartbeat,
            online: options.online,
            reach: Some(contacts.reach()),
            wait: options.directory_wait,
            published: letters.published(),
        };
        let (pushed_tx, pushed) = mpsc::channel(PUSHED_BACKLOG);
        let (home, tasks_) = (options.home.clone(), tasks.clone());
        let directory = if options.connect_later {
            DirectoryClient::connect_later(
                endpoint.clone(),
                &identity,
                home,
                settings,
                tasks_,
                pushed_tx,
            )?
        } else {
            let connected = DirectoryClient::connect(
                endpoint.clone(),
                &identity,
                home,
                settings,
                tasks_,
                pushed_tx,
            )
            .await;
            if connected.is_err() {
                // A refused handshake (a pin that does not match, say) has queued its close
                // for the other side: let it leave before the command exits, or that side
                // waits out its idle timeout.
                let _ = tokio::time::timeout(CLOSE_SENT, endpoint.wait_idle()).await;
            }
            connected?
        };
        let links = Arc::new(Links::default());
        let rooms = Rooms::load(
            options.home.path(),
            options.name.clone(),
            directory.clone(),
            letters.clone(),
            contacts.clone(),
            inbox.clone(),
        )?;
        let acceptor = Acceptor {
            inbox: inbox.clone(),
            files: files.clone(),
            directory: directory.clone(),
            links: links.clone(),
            rooms: rooms.clone(),
            tasks: tasks.clone(),
        };
        tasks.spawn(accept::serve(endpoint.clone(), acceptor.clone()));
        let dialer = Arc::new(Dialer {
            identity,
            endpoint: endpoint.clone(),
            directory: directory.clone(),
            acceptor,
            links: links.clone(),
            direct_timeout: options.direct_timeout,
            answered: Default::default(),
            contacts: contacts.clone(),
            answers: crate::punch::answer_budget(),
        });
        let takers = Takers {
            inbox: inbox.clone(),
            directory: directory.clone(),
            files,
            letters: letters.clone(),
            rooms: rooms.clone(),
            held: Held::new(options.home.path()),
        };
        tasks.spawn(take_pushed(
            pushed,
            takers.clone(),
            dialer.clone(),
            tasks.clone(),
        ));
        if options.online {
            let status = directory.status();
            tasks.spawn(follow_rooms(rooms.clone(), status));
        }
        let outbox = Outbox::new(outbox::Shared {
            me: options.name.clone(),
            dialer: dialer.clone(),
            directory: directory.clone(),
            contacts: contacts.clone(),
            letters: letters.clone(),
            tasks: tasks.clone(),
            // A running peer keeps what it could not send while the directory is away; a
            // short command stops after the directory wait and says so.
            wait_for_directory: options.online,
        });
        let node = Self {
            name: options.name,
            key,
            endpoint,
            directory,
            outbox,
            inbox,
            links,
            dialer,
            contacts,
            letters,
            rooms,
            online: options.online,
            downloads: options.home.downloads(),
            mailbox_file_max: options.mailbox_file_max,
            home: options.home,
            tasks,
            takers,
        };
        Ok((node, events))
    }

    /// Opens the letters held from `name` because a new key had signed them (see
    /// [`crate::held`]), once that key is trusted: each is shown as it would have been, or
    /// refused if another key still signed it. Returns how many were opened.
    pub async fn release_held(&self, name: &Name) -> Result<usize, Failure> {
        let held = &self.takers.held;
        let _guard = held.guard().await;
        let letters = held.of(name).map_err(Failure::other)?;
        let mut opened = 0;
        for (path, letter) in letters {
            match open_letter(&letter, &self.takers).await {
                Taking::Took(_) => {
                    // No receipt: the directory dropped the letter when it was held.
                    opened += 1;
                    held.done(&path);
                }
                Taking::Refused => held.done(&path),
                // Not shown (the node is stopping): it stays held.
                Taking::Left => {}
                Taking::KeyChanged(refusal) => {
                    refuse(&self.takers.inbox, format!("{refusal}; dropped")).await;
                    held.done(&path);
                }
            }
        }
        Ok(opened)
    }

    /// Sends one message; returns once it is delivered or durably queued.
    pub async fn send(&self, to: Name, body: String) -> Result<Sent, Failure> {
        self.outbox.send(to, body).await
    }

    /// Queues one message behind those submitted before it; see [`Outbox::submit`].
    pub fn submit(
        &self,
        to: Name,
        body: String,
    ) -> Result<impl std::future::Future<Output = Result<Sent, Failure>> + Send + 'static, Failure>
    {
        self.outbox.submit(to, body)
    }

    /// What the directory knows about `name`, and the direct link we have to it, if any.
    pub async fn whois(&self, name: &Name) -> Result<(PeerInfo, Option<DirectPath>), Failure> {
        let path = self.links.get(name).map(|(_, path)| path);
        let info = self
            .directory
            .lookup(name)
            .await
            .map_err(|e| e.failure(name, self.directory.addr()))?;
        self.check_key(&info)?;
        Ok((info, path))
    }

    /// Compares the key the directory gives for a name with the one we remember for it (the
    /// first seen is remembered); a change is a [`Failure::KeyChanged`].
    pub fn check_key(&self, info: &PeerInfo) -> Result<(), Failure> {
        self.contacts.vouch(info)
    }

    /// Sends the file at `path` to `to`, directly or through its mailbox; see
    /// [`files::Sender::send`].
    pub async fn send_file(
        &self,
        to: &Name,
        path: &std::path::Path,
        report: impl Fn(FileUpdate) + Send + Sync + 'static,
    ) -> Result<FileSent, Failure> {
        self.whois(to).await?;
        let dial = |info: PeerInfo| async move {
            if let Err(e) = self.contacts.accept_on_send(&info.name, info.key) {
                tracing::warn!("contacts: {e:#}");
            }
            let deadline = tokio::time::Instant::now() + self.dialer.direct_timeout;
            self.dialer.connect(&info, deadline).await
        };
        let sender = files::Sender {
            me: &self.name,
            directory: &self.directory,
            letters: &self.letters,
            dial,
            mailbox_file_max: self.mailbox_file_max,
        };
        sender.send(to, path, report).await
    }

    /// The directory connection.
    pub fn directory(&self) -> &DirectoryClient {
        &self.directory
    }

    /// Where files arrive.
    pub fn downloads(&self) -> &std::path::Path {
        &self.downloads
    }

    /// Who the user accepted or blocked.
    pub fn contacts(&self) -> &Contacts {
        &self.contacts
    }

    /// The inbox, for attaching more listeners.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// The rooms we know.
    pub fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    /// Whether we stay online and receive (so the directory pushes us what changes).
    pub fn online(&self) -> bool {
        self.online
    }

    /// The outbox, where messages leave.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Our address as the directory sees it.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        self.directory.observed_addr()
    }

    /// The directory's address as the user gave it.
    pub fn directory_addr(&self) -> &str {
        self.directory.addr()
    }

    /// Where the connection to the directory stands, and its changes.
    pub fn directory_status(&self) -> watch::Receiver<directory_client::Status> {
        self.directory.status()
    }

    /// How long a request waits for the directory connection to come back.
    pub fn directory_wait(&self) -> Duration {
        self.directory.wait()
    }

    /// The home folder.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// Leaves cleanly: the directory marks us offline at once, peers see the close, and every
    /// task of the node ends.
    pub async fn shutdown(&self) {
        // Each connection's count is read just before it is closed (no await between): what it
        // sends after that is its close.
        let mut open: Vec<(quinn::Connection, u64)> =
            self.directory.close().await.into_iter().collect();
        open.extend(self.links.all().into_iter().map(|c| {
            let sent = c.stats().udp_tx.datagrams;
            (c, sent)
        }));
        self.endpoint.close(common::wire::codes::OK.into(), b"bye");
        // Until the close frames have left, not for the draining period (three probe
        // timeouts, about 80 ms on loopback): a short command would spend most of its life
        // waiting for it.
        closes_sent(&open).await;
        let left = self.tasks.shutdown(Duration::from_millis(200)).await;
        if left > 0 {
            debug!(left, "tasks still running at shutdown");
        }
    }

    /// Runs `task` as one of the node's own: [`Node::shutdown`] ends it.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// How many background tasks the node runs now.
    pub fn tasks(&self) -> usize {
        self.tasks.len()
    }
}

/// Tells the user (and the log) why mail from the mailbox was refused. It is taken all the
/// same, so the directory drops it, and its sender gets no receipt.
async fn refuse(inbox: &Inbox, why: String) {
    warn!("{why}");
    inbox.notice(why).await;
}

/// Why unsealed mail is refused: it is held since before sealed mail, or was made by whoever
/// can write to the directory's store.
fn unsealed(from: &Name) -> String {
    format!("a message from {from} was refused: it was not sealed, so its sender cannot be checked")
}

/// Where what the directory pushes goes.
#[derive(Clone)]
struct Takers {
    inbox: Inbox,
    directory: DirectoryClient,
    files: files::Receiver,
    letters: Letters,
    rooms: Rooms,
    held: Held,
}

/// Opens a letter from the mailbox, checks it, and hands what it holds on; the directory gets
/// the proof its receipt needs, or nothing when the letter was refused. A letter signed by a
/// new key for its sender is held (see [`crate::held`]) until the user trusts that key.
async fn take_letter(letter: Letter, to: &Takers, delivery: Delivery) {
    let inbox = &to.inbox;
    if to.letters.pinned(&letter.from).is_none() {
        // The first we hear of a name: the key to check its letter against is the one the
        // directory holds for the name, not whichever key signed the letter (else a letter
        // made up in the directory's store would bring its own key along).
        let found = to.directory.lookup(&letter.from).await;
        if let Err(why) = found
            .map_err(|e| format!("{e:#}"))
            .and_then(|info| inbox.vouch(&info).map_err(|e| e.to_string()))
        {
            let why = format!(
                "a letter from {} was refused: its key could not be looked up ({why})",
                letter.from
            );
            refuse(inbox, why).await;
            return delivery.taken();
        }
    }
    let mut taking = open_letter(&letter, to).await;
    let _held = match taking {
        Taking::KeyChanged(_) => {
            // Checked again once no `peer trust` is opening held letters: one may have
            // trusted the key since, and then this letter is not to be held but shown.
            let guard = to.held.guard().await;
            taking = open_letter(&letter, to).await;
            Some(guard)
        }
        _ => None,
    };
    match taking {
        Taking::Took(Some(proof)) => delivery.took(proof),
        Taking::Took(None) | Taking::Refused => delivery.taken(),
        Taking::Left => {} // not taken: it stays in the mailbox
        Taking::KeyChanged(refusal) => {
            let why = match to.held.hold(&letter) {
                Ok(true) => format!("{refusal}; it is held, and shown once you trust the new key"),
                Ok(false) => {
                    format!("{refusal}; too many letters are held already, so it was dropped")
                }
                Err(e) => format!("{refusal}; it could not be held ({e:#}), so it was dropped"),
            };
            refuse(inbox, why).await;
            delivery.taken();
        }
    }
}

/// What became of a letter.
enum Taking {
    /// In our hands (shown, stored, or dropped on purpose), with the proof for its receipt if
    /// it earns one.
    Took(Option<common::seal::Signature>),
    /// Refused (broken, not for us, from a non-member of its room): said, and dropped.
    Refused,
    /// The inbox did not take it (the node is stopping): it stays where it was.
    Left,
    /// Signed by another key than the one remembered for its sender.
    KeyChanged(crate::letters::Refusal),
}

/// Opens `letter`, checks it, and hands what it holds to the inbox, the files or nowhere.
async fn open_letter(letter: &Letter, to: &Takers) -> Taking {
    let (inbox, told) = (&to.inbox, letter.receipt());
    let (message, room, signer) = match to.letters.open(letter) {
        Ok((Content::Chat(message), signer)) => (message, None, signer),
        Ok((
            Content::RoomChat(RoomMessage {
                room,
                version,
                message,
            }),
            signer,
        )) => (message, Some((room, version)), signer),
        Ok((Content::FilePart(part), signer)) => {
            // The proof for the part that completes a file only if the file is whole and its
            // hash matched: else its sender would count it delivered.
            let whole = to.files.take_part(part).await;
            return Taking::Took(
                told.filter(|_| whole)
                    .map(|told| to.letters.prove(&signer, told)),
            );
        }
        Err(refusal @ crate::letters::Refusal::KeyChanged { .. }) => {
            return Taking::KeyChanged(refusal)
        }
        Err(refusal) => {
            refuse(inbox, refusal.to_string()).await;
            return Taking::Refused;
        }
    };
    if !inbox.fits(&message) {
        let why = format!(
            "a letter from {} was refused: not for us, or too long",
            message.from
        );
        refuse(inbox, why).await;
        return Taking::Refused;
    }
    if let Some((room, version)) = &room {
        if !to
            .rooms
            .admits(room, &message.from, &signer, *version)
            .await
        {
            // Taken, so it leaves the mailbox, but not shown: whoever is not a member by the
            // room's signed log does not speak in it (nor do we hear a room we left).
            debug!(%room, from = %message.from, "a room letter from a non-member dropped");
            return Taking::Refused;
        }
    }
    let room = room.map(|(room, _)| room);
    if inbox
        .receive(message, room, Via::Mailbox, signer)
        .await
        .is_err()
    {
        return Taking::Left;
    }
    Taking::Took(told.map(|told| to.letters.prove(&signer, told)))
}

/// Takes what the directory pushes: mail goes to the inbox (parts of files to `files`),
/// acknowledged once taken (one piece at a time: the directory waits for each ack);
/// introductions are answered at once, each on a task of its own, so a message waiting to be
/// shown never holds a punch up; a room's ops update its roster, and what changed is shown.
async fn take_pushed(
    mut pushed: mpsc::Receiver<FromDirectory>,
    to: Takers,
    dialer: Arc<Dialer>,
    tasks: Tasks,
) {
    while let Some(push) = pushed.recv().await {
        match push {
            FromDirectory::Mail(mail, delivery) => {
                let to = to.clone();
                tasks.spawn(async move {
                    let inbox = &to.inbox;
                    let taken = match mail {
                        Mail::Letter(letter) => return take_letter(letter, &to, delivery).await,
                        Mail::Message(message) => {
                            refuse(inbox, unsealed(&message.from)).await;
                            true
                        }
                        Mail::FilePart(part) => {
                            refuse(inbox, unsealed(&part.offer.from)).await;
                            true
                        }
                        Mail::Receipt(receipt) => {
                            debug!(from = %receipt.from, "an unsigned receipt ignored");
                            true
                        }
                        Mail::SignedReceipt(receipt) => match to.letters.check_receipt(receipt) {
                            Ok(receipt) => inbox.receipt(receipt).await.is_ok(),
                            Err(refusal) => {
                                warn!("{refusal}");
                                true
                            }
                        },
                    };
                    if taken {
                        delivery.taken();
                    }
                });
            }
            FromDirectory::MailboxIdle => to.inbox.mailbox_idle().await,
            FromDirectory::Notice(text) => to.inbox.notice(text).await,
            FromDirectory::Introduction(intro) => {
                let dialer = dialer.clone();
                tasks.spawn(async move { dialer.answer(intro).await });
            }
            // In order, on this task: a room's notices come in the order of its log.
            FromDirectory::RoomOp(op) => to.rooms.pushed(op).await,
            FromDirectory::RoomPresence { room, name, online } => {
                to.rooms.presence(&room, &name, online).await
            }
        }
    }
}

/// Each time the directory connection comes up, catches up with every room we are in: what
/// changed while we were away is checked and shown, in the order of each room's log. (While
/// connected, the directory pushes each change as it happens.)
async fn follow_rooms(rooms: Rooms, mut status: watch::Receiver<directory_client::Status>) {
    loop {
        let connected = *status.borrow_and_update() == directory_client::Status::Connected;
        if connected {
            for roster in rooms.ours().await {
                if let Err(e) = rooms.sync(&roster.room).await {
                    warn!(room = %roster.room, "{e}");
                }
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Waits until each connection of `open` has sent more datagrams than the count beside it
/// (read just before it was closed: its close), at most [`CLOSE_SENT`]. A close is sent by the
/// connection's driver as soon as it runs, so the wait is usually a task switch or two.
async fn closes_sent(open: &[(quinn::Connection, u64)]) {
    let deadline = Instant::now() + CLOSE_SENT;
    for turn in 0u32.. {
        let all = (open.iter()).all(|(c, before)| c.stats().udp_tx.datagrams > *before);
        if all || Instant::now() >= deadline {
            return;
        }
        // Other tasks first (the drivers were just woken); past a few turns, the timer.
        if turn < 16 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

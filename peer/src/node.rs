//! A running peer: its endpoint, its directory connection, its inbox and outbox, and the tasks
//! that connect them. This is the one place that wires the pieces together: what the
//! directory pushes goes to the inbox (mail) or the dialer (introductions); direct connections
//! go to [`crate::accept`]; sends go to the [`Outbox`]. [`Node::shutdown`] ends every task.

use crate::{
    accept::{self, Acceptor},
    directory_client::{self, DirectoryClient, FromDirectory, Mail},
    endpoint,
    failure::Failure,
    files::{self, FileSent},
    home::Home,
    inbox::{Event, Inbox, Via},
    links::{DirectPath, Links},
    outbox::{self, Outbox, Sent},
    punch::Dialer,
    tasks::Tasks,
};
use anyhow::{anyhow, Result};
use common::{
    wire::{DirectoryRequest, FileHeader, FileOffer, MessageId, PeerInfo},
    KeyId, Name,
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::mpsc;
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
}

/// What [`Node::send_file`] tells its caller along the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileUpdate {
    /// The recipient (or its mailbox) has `done` bytes of `total`.
    Progress {
        /// Bytes the recipient has.
        done: u64,
        /// The file's size.
        total: u64,
    },
    /// Why the file does not leave yet; for the user.
    Waiting(String),
}

/// Longest pause between two attempts to send a file that waits for its recipient.
const FILE_RETRY_MAX: Duration = Duration::from_secs(10);

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
    mailbox_file_max: u64,
    tasks: Tasks,
}

/// How many pushes from the directory may wait for the node: mail comes one piece at a time,
/// so this bounds the introductions that queue behind it (more are dropped).
const PUSHED_BACKLOG: usize = 64;

impl Node {
    /// Brings the peer up: binds the endpoint, connects and registers with the directory, and
    /// starts accepting direct connections. Incoming messages arrive on the returned receiver.
    pub async fn start(options: Options) -> Result<(Self, mpsc::Receiver<Event>)> {
        let tasks = Tasks::default();
        let identity = Arc::new(options.home.identity(&options.name)?);
        let key = identity.key_id;
        let endpoint = endpoint::bind(&identity, options.bind)?;
        let downloads = options.home.downloads();
        let (inbox, events) = Inbox::new(options.name.clone(), downloads.clone());
        tasks.spawn(async move {
            let pruned = tokio::task::spawn_blocking(move || files::prune_partials(&downloads))
                .await
                .unwrap_or(0);
            if pruned > 0 {
                tracing::info!(pruned, "deleted partial files untouched for a week");
            }
        });
        let settings = directory_client::Settings {
            addr: options.directory.clone(),
            pin: options.pin,
            name: options.name.clone(),
            heartbeat: options.heartbeat,
            online: options.online,
        };
        let (pushed_tx, pushed) = mpsc::channel(PUSHED_BACKLOG);
        let directory = DirectoryClient::connect(
            endpoint.clone(),
            &identity,
            options.home.clone(),
            settings,
            tasks.clone(),
            pushed_tx,
        )
        .await?;
        let links = Arc::new(Links::default());
        let acceptor = Acceptor {
            inbox: inbox.clone(),
            directory: directory.clone(),
            links: links.clone(),
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
        });
        tasks.spawn(take_pushed(
            pushed,
            inbox.clone(),
            dialer.clone(),
            tasks.clone(),
        ));
        let outbox = Outbox::new(outbox::Shared {
            me: options.name.clone(),
            dialer: dialer.clone(),
            directory: directory.clone(),
            tasks: tasks.clone(),
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
            mailbox_file_max: options.mailbox_file_max,
            tasks,
        };
        Ok((node, events))
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
        Ok((info, path))
    }

    /// Sends the file at `path` to `to`. Over a direct link when one can be made; otherwise a
    /// file of at most the mailbox limit goes into `to`'s mailbox, and a larger one waits until
    /// `to` is back (and a transfer cut short resumes), for as long as this runs. `report`
    /// hears how many bytes the recipient has (at most every 100 ms), and why it waits.
    pub async fn send_file(
        &self,
        to: &Name,
        path: &std::path::Path,
        report: impl Fn(FileUpdate) + Send + Sync + 'static,
    ) -> Result<FileSent, Failure> {
        let (size, resume_key) = files::describe(path).await?;
        let header = FileHeader {
            id: MessageId::random(),
            from: self.name.clone(),
            to: to.clone(),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into()),
            size,
            resume_key,
            sent_at_ms: common::now_ms(),
        };
        let report = Arc::new(report);
        let mut backoff = Duration::from_secs(1);
        let mut told = false;
        loop {
            let (info, _) = self.whois(to).await?;
            let why = if info.online {
                match self.send_file_direct(&info, &header, path, &report).await {
                    Ok(sent) => return Ok(sent),
                    Err(files::SendError::Final(e)) => return Err(e.into()),
                    Err(files::SendError::Interrupted(e)) => {
                        debug!(cause = %format!("{e:#}"), "direct file transfer failed");
                        "unreachable"
                    }
                }
            } else {
                "offline"
            };
            if size <= self.mailbox_file_max {
                return self.send_file_mailbox(&header, path, &report).await;
            }
            if !told {
                told = true;
                report(FileUpdate::Waiting(format!(
                    "{to} is {why}, and {:?} ({size} bytes) is over the {} byte limit for the \
                     mailbox: it goes directly once {to} can be reached, as long as this runs",
                    header.name, self.mailbox_file_max
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(FILE_RETRY_MAX);
        }
    }

    /// One attempt over a direct link.
    async fn send_file_direct(
        &self,
        info: &PeerInfo,
        header: &FileHeader,
        path: &std::path::Path,
        report: &Arc<impl Fn(FileUpdate) + Send + Sync + 'static>,
    ) -> Result<FileSent, files::SendError> {
        let deadline = tokio::time::Instant::now() + self.dialer.direct_timeout;
        let Some((conn, link)) = self.dialer.connect(info, deadline).await else {
            return Err(files::SendError::Interrupted(anyhow!("no direct link")));
        };
        let size = header.size;
        let (progress, mut watch) = tokio::sync::watch::channel(0u64);
        let relay = tokio::spawn({
            let report = report.clone();
            async move {
                while watch.changed().await.is_ok() {
                    let done = *watch.borrow_and_update();
                    report(FileUpdate::Progress { done, total: size });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        let result = files::send(&conn, header.clone(), path, &progress).await;
        relay.abort();
        let (resumed_from, hash) = result?;
        Ok(FileSent {
            to: header.to.clone(),
            size,
            hash,
            resumed_from,
            path: Some(link),
        })
    }

    /// Deposits the file in parts into the recipient's mailbox, in order. Each part stands
    /// alone, so the hash goes in every part: the (small) file is hashed first.
    async fn send_file_mailbox(
        &self,
        header: &FileHeader,
        path: &std::path::Path,
        report: &Arc<impl Fn(FileUpdate) + Send + Sync + 'static>,
    ) -> Result<FileSent, Failure> {
        let (hash, size) = files::hash_file(path).await?;
        if size != header.size {
            return Err(Failure::Other(format!(
                "{} changed size while it was being sent",
                path.display()
            )));
        }
        let offer = FileOffer {
            id: header.id,
            from: header.from.clone(),
            to: header.to.clone(),
            name: header.name.clone(),
            size,
            hash,
            sent_at_ms: header.sent_at_ms,
        };
        let to = &offer.to;
        let mut parts = files::Parts::open(offer.clone(), path).await?;
        let mut last_report = tokio::time::Instant::now();
        while let Some(part) = parts.next().await? {
            let done = part.offset + part.data.len() as u64;
            let request = DirectoryRequest::DepositFilePart { part };
            if let Err(e) = self.directory.deposit(&request).await {
                return Err(e.failure(to, self.directory.addr()));
            }
            if done == offer.size || last_report.elapsed() >= Duration::from_millis(100) {
                last_report = tokio::time::Instant::now();
                report(FileUpdate::Progress {
                    done,
                    total: offer.size,
                });
            }
        }
        Ok(FileSent {
            to: to.clone(),
            size: offer.size,
            hash: offer.hash,
            resumed_from: 0,
            path: None,
        })
    }

    /// The inbox, for attaching more listeners.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Our address as the directory sees it.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        self.directory.observed_addr()
    }

    /// Leaves cleanly: the directory marks us offline at once, peers see the close, and every
    /// task of the node ends.
    pub async fn shutdown(&self) {
        self.directory.close().await;
        self.endpoint.close(common::wire::codes::OK.into(), b"bye");
        // Long enough for the close frames to leave; the draining period is not worth waiting.
        let _ = tokio::time::timeout(Duration::from_millis(200), self.endpoint.wait_idle()).await;
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

/// Takes what the directory pushes: mail goes to the inbox, acknowledged once taken (one
/// piece at a time: the directory waits for each ack); introductions are answered at once,
/// each on a task of its own, so a message waiting to be shown never holds a punch up.
async fn take_pushed(
    mut pushed: mpsc::Receiver<FromDirectory>,
    inbox: Inbox,
    dialer: Arc<Dialer>,
    tasks: Tasks,
) {
    while let Some(push) = pushed.recv().await {
        match push {
            FromDirectory::Mail(mail, delivery) => {
                let inbox = inbox.clone();
                tasks.spawn(async move {
                    let taken = match mail {
                        Mail::Message(message) => {
                            inbox.receive(message, Via::Mailbox).await.is_ok()
                        }
                        Mail::FilePart(part) => match inbox.file_part(part).await {
                            Ok(()) => true,
                            Err(e) => {
                                warn!(cause = %format!("{e:#}"), "cannot take a file part from the mailbox");
                                false
                            }
                        },
                        Mail::Receipt(receipt) => inbox.receipt(receipt).await.is_ok(),
                    };
                    if taken {
                        delivery.taken();
                    }
                });
            }
            FromDirectory::MailboxIdle => inbox.mailbox_idle().await,
            FromDirectory::Introduction(intro) => {
                let dialer = dialer.clone();
                tasks.spawn(async move { dialer.answer(intro).await });
            }
        }
    }
}

//! The peer's connection to its directory.
//!
//! [`DirectoryClient::connect`] dials the directory from the peer's one endpoint, checks the
//! directory's key against the pin in the home folder, and registers. A background task then
//! heartbeats, and if the connection drops it reconnects with backoff and registers again. For
//! a peer that stays online, the directory opens an event stream on which it pushes mailbox
//! mail and introductions; each becomes a [`FromDirectory`] on the channel the caller gave,
//! and mail is acknowledged to the directory only once the receiver has taken it
//! ([`Delivery::taken`]).
//!
//! Everything the directory's protocol means is here; callers get typed answers and
//! [`DirectoryError`]s, mapped once.
//!
//! # Outages
//!
//! A request made while the connection is down, or being rebuilt, waits for the next one, up
//! to [`Settings::wait`], and is sent again on it if the connection failed under it: every
//! request of the directory's protocol may be repeated (a deposit is stored once per id, a
//! lookup or an introduction only asks). A connection is known to be gone when QUIC says so
//! (the directory closed it, or reset it after a restart, or three heartbeats went
//! unanswered), when a request goes unanswered for [`REQUEST_TIMEOUT`], or when the operating
//! system reports the directory's port closed (an ICMP port unreachable, which on loopback or
//! a LAN arrives at once: see [`refused`]). [`DirectoryClient::status`] says where it stands,
//! for the user.

use crate::{failure::Failure, home::Home, tasks::Tasks};
use anyhow::{anyhow, bail, Context, Result};
use common::{
    defaults::{ALPN_DIRECTORY, MISSED_HEARTBEATS, REQUEST_TIMEOUT},
    framing::{self, FrameReader},
    seal::Signature,
    tls,
    wire::{
        codes, ChatMessage, DirectoryEvent, DirectoryRequest, DirectoryResponse, ErrorCode,
        EventAck, FilePart, PeerInfo, Reach, Receipt, SignedReceipt,
    },
    Identity, KeyId, Name,
};
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tracing::{debug, info, warn};

/// Why a request to the directory failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The directory answered with an error code.
    #[error("{0}")]
    Refused(ErrorCode),
    /// The stream failed on a connection that still stands, or the answer made no sense.
    #[error("the directory connection failed: {0}")]
    Connection(String),
    /// There is no connection, and none came back within [`Settings::wait`] (a request whose
    /// connection failed under it waits for the next one): why, for the user.
    #[error("{0}")]
    Down(Failure),
}

impl DirectoryError {
    /// What the user is told when a request about `name` failed this way.
    pub fn failure(self, name: &Name, addr: &str) -> Failure {
        match self {
            DirectoryError::Refused(ErrorCode::UnknownPeer) => {
                Failure::UnknownPeer { name: name.clone() }
            }
            DirectoryError::Refused(ErrorCode::MailboxFull) => {
                Failure::MailboxFull { name: name.clone() }
            }
            DirectoryError::Refused(ErrorCode::TooLarge) => Failure::TooLarge {
                len: 0,
                limit: common::defaults::MAX_BODY_LEN as u64,
            },
            DirectoryError::Refused(ErrorCode::NameTaken) => {
                Failure::NameTaken { name: name.clone() }
            }
            DirectoryError::Refused(ErrorCode::SenderQuotaFull) => {
                Failure::SenderQuotaFull { name: name.clone() }
            }
            DirectoryError::Refused(ErrorCode::StoreFull) => Failure::DirectoryFull,
            DirectoryError::Refused(ErrorCode::FileNameTooLong) => Failure::FileNameTooLong {
                limit: common::defaults::MAX_FILE_NAME_LEN,
            },
            DirectoryError::Refused(ErrorCode::BadName) => Failure::BadName { name: name.clone() },
            DirectoryError::Refused(ErrorCode::NameLookalike) => {
                Failure::NameLookalike { name: name.clone() }
            }
            DirectoryError::Refused(ErrorCode::TooManyNames) => {
                Failure::TooManyNames { name: name.clone() }
            }
            DirectoryError::Refused(ErrorCode::RateLimited) => Failure::RateLimited,
            DirectoryError::Refused(code) => Failure::Refused {
                reason: code.to_string(),
            },
            DirectoryError::Down(failure) => failure,
            DirectoryError::Connection(_) => Failure::DirectoryUnreachable { addr: addr.into() },
        }
    }
}

/// An error connecting that trying again cannot mend: the directory presented a key other than
/// the pinned one, or refused our name.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Final(Failure);

fn connection_failed(e: impl std::fmt::Display) -> DirectoryError {
    DirectoryError::Connection(format!("{e:#}"))
}

/// What the directory pushes to an online peer.
#[derive(Debug)]
pub enum FromDirectory {
    /// Mail from the mailbox. The directory hears of it only through [`Delivery::taken`];
    /// mail dropped untaken stays in the mailbox for the next connection, and the event
    /// stream stops there.
    Mail(Mail, Delivery),
    /// Everything waiting in the mailbox has been delivered.
    MailboxIdle,
    /// `name` is dialing us now and asks us to dial back (hole punching).
    Introduction(Introduction),
    /// A room we are in (or were just invited into, or removed from) changed.
    RoomOp(common::room::Op),
    /// Something the user should know about the connection (a first pin).
    Notice(String),
    /// A member of a room we are in came online or went offline.
    RoomPresence {
        /// The room.
        room: common::room::RoomName,
        /// The member.
        name: Name,
        /// Online now.
        online: bool,
    },
}

/// One piece of mail from the mailbox.
#[derive(Debug)]
pub enum Mail {
    /// An unsealed message, as directories before sealed mail held them: refused, since
    /// anyone who can write to the directory's store could have made it.
    Message(ChatMessage),
    /// An unsealed part of a file: refused likewise.
    FilePart(FilePart),
    /// A sealed message or file part, opened by [`crate::letters`].
    Letter(common::wire::Letter),
    /// A receipt the directory made without proofs, as directories before signed receipts
    /// did: ignored, since the directory could make it up.
    Receipt(Receipt),
    /// A recipient took letters of ours from its mailbox, and signed proofs of it.
    SignedReceipt(SignedReceipt),
}

/// The acknowledgement owed for one piece of mail.
#[derive(Debug)]
pub struct Delivery(oneshot::Sender<Option<Signature>>);

impl Delivery {
    /// The mail is in our hands (shown, written, recorded), or refused: the directory may
    /// delete it, and its sender gets no receipt.
    pub fn taken(self) {
        let _ = self.0.send(None);
    }

    /// The letter is in our hands: the directory may delete it, and keeps `proof` (see
    /// [`common::seal::Sealer::prove_receipt`]) for its sender's receipt.
    pub fn took(self, proof: Signature) {
        let _ = self.0.send(Some(proof));
    }
}

/// An introduction from the directory: `name` is dialing us now.
#[derive(Debug, Clone)]
pub struct Introduction {
    /// Who.
    pub name: Name,
    /// Its key.
    pub key: KeyId,
    /// Its addresses, observed first.
    pub addrs: Vec<SocketAddr>,
}

/// What the peer needs to reach its directory.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The directory's address as the user gave it (the key of its pin).
    pub addr: String,
    /// A fingerprint given on the command line.
    pub pin: Option<common::KeyId>,
    /// Our name.
    pub name: Name,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Stay online and receive the mailbox (long-running commands), or only send and look up.
    pub online: bool,
    /// Who may reach us (see [`crate::contacts`]): told to the directory after each
    /// registration of an online peer, and again on every change.
    pub reach: Option<watch::Receiver<Reach>>,
    /// How long a request waits for the connection to come back before it fails.
    pub wait: Duration,
    /// Our encryption key, signed, published with each registration for others to seal to.
    pub published: common::seal::PublishedKey,
}

/// Where the connection to the directory stands, for the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// The first connection is being made.
    Connecting,
    /// Connected and registered.
    Connected,
    /// The connection is lost, or never came up: retrying, for this reason.
    Unreachable(Failure),
    /// The directory refused us for good (another key holds the name, a key that is not the
    /// pinned one): no more attempts.
    Refused(Failure),
}

/// A handle on the directory connection; cheap to clone.
#[derive(Clone)]
pub struct DirectoryClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    /// The directory key the handshake accepts: the pinned one, or any before the first.
    pin: tls::Pin,
    home: Home,
    settings: Settings,
    tasks: Tasks,
    /// Where what the directory pushes goes.
    pushed: mpsc::Sender<FromDirectory>,
    /// The current connection, live or not; `None` until the first one is up.
    conn: watch::Sender<Option<quinn::Connection>>,
    /// Where the connection stands.
    status: watch::Sender<Status>,
    /// Our address as the directory sees it.
    observed: watch::Sender<Option<SocketAddr>>,
    /// Set when we leave: the event stream stops taking messages and flushes its acks.
    leaving: watch::Sender<bool>,
    /// The task reading the current event stream.
    events_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The long-lived request stream (see [`Inner::exchange`]).
    requests: tokio::sync::Mutex<Option<RequestStream>>,
    /// Which of the directory's addresses to try first next time: the one after the node we
    /// were last connected to, since we only connect again when that connection is lost.
    next_node: std::sync::atomic::AtomicUsize,
}

/// A request stream kept open for the next request, on the connection `conn_id` names.
struct RequestStream {
    conn_id: usize,
    send: quinn::SendStream,
    answers: FrameReader<quinn::RecvStream>,
    /// Set while a request waits for its answer. A request abandoned then (its caller timed
    /// out or went away) leaves the stream a step behind, so the next one replaces it.
    waiting: bool,
}

impl DirectoryClient {
    /// Connects and registers. Errors here are the user's to see: a wrong key, a taken name, a
    /// directory that cannot be reached. What the directory pushes arrives on `pushed`; the
    /// client's tasks are spawned on `tasks`.
    pub async fn connect(
        endpoint: quinn::Endpoint,
        identity: &Identity,
        home: Home,
        settings: Settings,
        tasks: Tasks,
        pushed: mpsc::Sender<FromDirectory>,
    ) -> Result<Self> {
        let inner = Inner::new(endpoint, identity, home, settings, tasks, pushed)?;
        let conn = inner.connect_once().await.map_err(|e| match e.downcast() {
            Ok(Final(failure)) => failure.into(),
            Err(e) => e,
        })?;
        inner.up(conn);
        inner.tasks.spawn(supervise(inner.clone()));
        Ok(Self::started(inner))
    }

    /// Like [`DirectoryClient::connect`], but returns at once and connects in the background,
    /// retrying until it succeeds: for the terminal client, which opens before the directory
    /// answers and shows [`DirectoryClient::status`] meanwhile.
    pub fn connect_later(
        endpoint: quinn::Endpoint,
        identity: &Identity,
        home: Home,
        settings: Settings,
        tasks: Tasks,
        pushed: mpsc::Sender<FromDirectory>,
    ) -> Result<Self> {
        let inner = Inner::new(endpoint, identity, home, settings, tasks, pushed)?;
        inner.tasks.spawn(supervise(inner.clone()));
        Ok(Self::started(inner))
    }

    /// The client on `inner`, telling the directory who may reach us when that changes.
    fn started(inner: Arc<Inner>) -> Self {
        let client = Self { inner };
        if let (true, Some(reach)) = (client.inner.settings.online, &client.inner.settings.reach) {
            client
                .inner
                .tasks
                .spawn(tell_reach(client.clone(), reach.clone()));
        }
        client
    }

    /// Where the connection stands, and its changes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// How long a request waits for the connection to come back.
    pub fn wait(&self) -> Duration {
        self.inner.settings.wait
    }
}

impl Inner {
    fn new(
        endpoint: quinn::Endpoint,
        identity: &Identity,
        home: Home,
        settings: Settings,
        tasks: Tasks,
        pushed: mpsc::Sender<FromDirectory>,
    ) -> Result<Arc<Self>> {
        // The pinned key is checked inside the handshake, so a directory with another key fails
        // it before it sees our certificate; a first connection pins what it finds (below,
        // `Home::check_directory`), and later ones check that.
        let pin = tls::Pin::new(settings.pin.or(home.pinned(&settings.addr)?));
        let mut client_config = tls::pinned_client_config(identity, ALPN_DIRECTORY, pin.clone())?;
        // Heartbeats are QUIC keep-alives: a PING every interval, which the directory only
        // acknowledges. Both sides use an idle timeout of three intervals (we propose it; the
        // smaller proposal wins), so three missed heartbeats end the connection on whichever
        // side still runs: the directory marks us offline, or we reconnect to a directory that
        // crashed without a close. The PINGs also keep our NAT mapping to the directory open.
        let mut transport = tls::transport_config(ALPN_DIRECTORY, false);
        transport.keep_alive_interval(Some(settings.heartbeat));
        transport.max_idle_timeout((settings.heartbeat * MISSED_HEARTBEATS).try_into().ok());
        client_config.transport_config(Arc::new(transport));
        Ok(Arc::new(Inner {
            endpoint,
            client_config,
            pin,
            home,
            settings,
            tasks,
            pushed,
            conn: watch::Sender::new(None),
            status: watch::Sender::new(Status::Connecting),
            observed: watch::Sender::new(None),
            leaving: watch::Sender::new(false),
            events_task: Default::default(),
            requests: Default::default(),
            next_node: Default::default(),
        }))
    }

    /// `conn` is the connection from now on.
    fn up(&self, conn: quinn::Connection) {
        self.conn.send_replace(Some(conn));
        self.status.send_replace(Status::Connected);
    }

    fn unreachable(&self) -> Failure {
        Failure::DirectoryUnreachable {
            addr: self.settings.addr.clone(),
        }
    }
}

impl DirectoryClient {
    /// Our address as the directory last observed it.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        *self.inner.observed.borrow()
    }

    /// The directory's address as the user gave it.
    pub fn addr(&self) -> &str {
        &self.inner.settings.addr
    }

    /// Sends one request and returns the directory's answer; an error code becomes an error.
    /// While the connection is down, the request waits for the next one, up to
    /// [`Settings::wait`]; one that its connection failed under is sent again on the next.
    pub async fn request(
        &self,
        request: &DirectoryRequest,
    ) -> Result<DirectoryResponse, DirectoryError> {
        let deadline = Instant::now() + self.inner.settings.wait;
        loop {
            let conn = self.current(deadline).await?;
            let failed = match self.inner.answer(&conn, request).await {
                Ok(DirectoryResponse::Error(code)) => return Err(DirectoryError::Refused(code)),
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            if conn.close_reason().is_none() {
                // The connection is fine and only this stream failed: not an outage.
                return Err(connection_failed(failed));
            }
            debug!(cause = %format!("{failed:#}"), "the directory connection failed under a request");
        }
    }

    /// What the directory knows about `name`.
    pub async fn lookup(&self, name: &Name) -> Result<PeerInfo, DirectoryError> {
        match self
            .request(&DirectoryRequest::Lookup { name: name.clone() })
            .await?
        {
            DirectoryResponse::Peer(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// Stores `request` (a deposit of a message or a file part) in a mailbox: `Ok` once the
    /// directory has committed it.
    pub async fn deposit(&self, request: &DirectoryRequest) -> Result<(), DirectoryError> {
        match self.request(request).await? {
            DirectoryResponse::Stored => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the directory to introduce us to `name` (hole punching). Not waited for by the
    /// caller that spawns it; its outcome only matters to the punch in progress.
    pub async fn introduce(&self, name: &Name) -> Result<(), DirectoryError> {
        self.request(&DirectoryRequest::Introduce { name: name.clone() })
            .await
            .map(drop)
    }

    /// Tells the directory how an introduction it made turned out; in the background.
    pub fn report_punch(&self, name: &Name, success: bool, millis: u32) {
        let request = DirectoryRequest::PunchOutcome {
            name: name.clone(),
            success,
            millis,
        };
        let client = self.clone();
        self.inner.tasks.spawn(async move {
            let _ = client.request(&request).await;
        });
    }

    /// Leaves: acknowledgements already owed reach the directory, then the connection closes
    /// and the directory marks us offline at once. Reconnecting stops.
    ///
    /// Returns the connection it closed, with the datagrams it had sent just before: one more
    /// means the close has left (see `Node::shutdown`).
    pub async fn close(&self) -> Option<(quinn::Connection, u64)> {
        self.inner.leaving.send_replace(true);
        let task = self
            .inner
            .events_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let conn = self.inner.conn.send_replace(None)?;
        let sent = conn.stats().udp_tx.datagrams;
        conn.close(codes::OK.into(), b"bye");
        Some((conn, sent))
    }

    /// The live connection, waiting for one until `deadline`.
    async fn current(&self, deadline: Instant) -> Result<quinn::Connection, DirectoryError> {
        let (mut conn, mut status) = (self.inner.conn.subscribe(), self.inner.status.subscribe());
        tokio::select! {
            live = conn.wait_for(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none())) => {
                if let Some(conn) = live.ok().and_then(|c| c.clone()) {
                    return Ok(conn);
                }
            }
            _ = status.wait_for(|s| matches!(s, Status::Refused(_))) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let why = match &*self.inner.status.borrow() {
            Status::Unreachable(why) | Status::Refused(why) => why.clone(),
            Status::Connecting | Status::Connected => self.inner.unreachable(),
        };
        Err(DirectoryError::Down(why))
    }
}

fn unexpected(answer: &DirectoryResponse) -> DirectoryError {
    DirectoryError::Connection(format!("unexpected answer from the directory: {answer:?}"))
}

async fn request_on(
    conn: &quinn::Connection,
    request: &DirectoryRequest,
) -> Result<DirectoryResponse> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .context("the directory connection failed")?;
    framing::write_frame(&mut send, request).await?;
    send.finish()?;
    framing::read_frame(&mut recv)
        .await?
        .ok_or_else(|| anyhow!("the directory closed the request without an answer"))
}

impl Inner {
    /// One request and its answer on `conn`. When the answer is slow to come, the directory's
    /// port is probed; a closed port, or no answer within [`REQUEST_TIMEOUT`], means the
    /// connection is dead (a directory that is gone, or that restarted without a reset
    /// reaching us), and it is closed so that the supervisor rebuilds it.
    async fn answer(
        &self,
        conn: &quinn::Connection,
        request: &DirectoryRequest,
    ) -> Result<DirectoryResponse> {
        let remote = conn.remote_address();
        let suspect = async {
            tokio::time::sleep(SUSPECT_AFTER).await;
            refused(remote).await
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            tokio::select! {
                answer = self.exchange(conn, request) => Some(answer),
                _ = suspect => None,
            }
        })
        .await;
        match answer {
            Ok(Some(answer)) => answer,
            Ok(None) => {
                conn.close(codes::TIMED_OUT.into(), b"port closed");
                bail!("the directory's port is closed")
            }
            Err(_) => {
                conn.close(codes::TIMED_OUT.into(), b"no answer");
                bail!("no answer within {REQUEST_TIMEOUT:?}")
            }
        }
    }

    /// One request and its answer. Requests one at a time share a long-lived stream, which
    /// saves opening and closing a stream each; a request that finds it busy takes a stream
    /// of its own rather than wait behind a slower answer (a deposit waits for a disk commit).
    async fn exchange(
        &self,
        conn: &quinn::Connection,
        request: &DirectoryRequest,
    ) -> Result<DirectoryResponse> {
        let Ok(mut slot) = self.requests.try_lock() else {
            return request_on(conn, request).await;
        };
        let reusable = slot
            .as_ref()
            .is_some_and(|s| s.conn_id == conn.stable_id() && !s.waiting);
        if !reusable {
            *slot = None;
            let (send, recv) = conn
                .open_bi()
                .await
                .context("the directory connection failed")?;
            *slot = Some(RequestStream {
                conn_id: conn.stable_id(),
                send,
                answers: FrameReader::new(recv),
                waiting: false,
            });
        }
        let Some(stream) = slot.as_mut() else {
            bail!("no request stream");
        };
        stream.waiting = true;
        let answer = async {
            framing::write_frame(&mut stream.send, request).await?;
            stream
                .answers
                .next(REQUEST_TIMEOUT)
                .await?
                .ok_or_else(|| anyhow!("the directory closed the request stream"))
        }
        .await;
        match answer {
            Ok(answer) => {
                stream.waiting = false;
                Ok(answer)
            }
            Err(e) => {
                *slot = None;
                Err(e)
            }
        }
    }

    /// Connects to one of the directory's nodes: every address of every `HOST:PORT` given
    /// (comma-separated), starting after the node we were connected to last; a node that
    /// cannot be reached passes the turn to the next. A refusal for good (another key than the
    /// pinned one, our name taken) ends the attempt at once.
    async fn connect_once(self: &Arc<Self>) -> Result<quinn::Connection> {
        let s = &self.settings;
        let v4 = self
            .endpoint
            .local_addr()
            .map(|l| l.is_ipv4())
            .unwrap_or(true);
        let mut nodes = Vec::new();
        let mut unresolved = None;
        for host in s.addr.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            // A node whose name no longer resolves (a container that died takes its name
            // with it) passes the turn to the others.
            match tokio::net::lookup_host(host).await {
                Ok(found) => nodes.extend(found.filter(|a| a.is_ipv4() == v4)),
                Err(e) => {
                    debug!(node = host, cause = %e, "directory node not resolved");
                    unresolved.get_or_insert(
                        anyhow::Error::new(e)
                            .context(format!("cannot resolve the directory address {host}")),
                    );
                }
            }
        }
        if nodes.is_empty() {
            return Err(unresolved.unwrap_or_else(|| {
                anyhow::anyhow!("the directory address {} has no usable address", s.addr)
            }));
        }
        let first = self.next_node.load(std::sync::atomic::Ordering::Relaxed);
        let mut failed = None;
        for i in 0..nodes.len() {
            let k = (first + i) % nodes.len();
            match self.connect_to(nodes[k]).await {
                Ok(conn) => {
                    (self.next_node).store(k + 1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(conn);
                }
                Err(e) if e.is::<Final>() => return Err(e),
                Err(e) => {
                    debug!(node = %nodes[k], cause = %format!("{e:#}"), "directory node not reached");
                    failed = Some(e);
                }
            }
        }
        Err(failed.unwrap_or_else(|| self.unreachable().into()))
    }

    /// Connects and registers to the directory node at `addr`.
    async fn connect_to(self: &Arc<Self>, addr: SocketAddr) -> Result<quinn::Connection> {
        let s = &self.settings;
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, "directory")
            .context("dialing the directory")?;
        // A closed port is reported by the operating system at once on loopback or a LAN; the
        // handshake would wait out its timeout instead.
        let conn = tokio::select! {
            conn = tokio::time::timeout(REQUEST_TIMEOUT, connecting) => match conn {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) if is_not_a_directory(&e) => {
                    return Err(Failure::NotADirectory { addr: s.addr.clone() }.into())
                }
                Ok(Err(e)) if is_tls_failure(&e) && self.pin.get().is_some() => {
                    let pinned = self.pin.get().map(|k| k.to_string()).unwrap_or_default();
                    return Err(Final(Failure::Other(format!(
                        "the directory at {} did not present the key fingerprint {pinned} pinned \
                         for it (in {} or with --pin); if its key really changed, remove that \
                         line or pass --pin with the new fingerprint",
                        s.addr,
                        self.home.known_directories().display()
                    )))
                    .into());
                }
                Ok(Err(e)) => {
                    return Err(anyhow!(e)
                        .context(format!("cannot connect to the directory at {}", s.addr)))
                }
                Err(_) => return Err(self.unreachable().into()),
            },
            _ = refused(addr) => return Err(Failure::NoDirectory { addr: s.addr.clone() }.into()),
        };
        let key = tls::remote_key(&conn).context("the directory sent no certificate")?;
        match self.home.check_directory(&s.addr, key, s.pin) {
            Ok(false) => {}
            Ok(true) => {
                let text = format!(
                    "first connection to the directory at {}: its key fingerprint {key} is pinned \
                     now (in {}); a directory there with another key will be refused",
                    s.addr,
                    self.home.known_directories().display()
                );
                let _ = self.pushed.try_send(FromDirectory::Notice(text));
            }
            Err(e) => {
                conn.close(codes::UNAUTHORIZED.into(), b"unexpected key");
                return Err(Final(Failure::other(e)).into());
            }
        }
        self.pin.set(key);
        let local = self.endpoint.local_addr()?;
        let register = DirectoryRequest::Register {
            name: s.name.clone(),
            listen_addrs: crate::endpoint::listen_addrs(local),
            heartbeat_ms: s.heartbeat.as_millis().min(u32::MAX as u128) as u32,
            online: s.online,
            published: s.published,
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, request_on(&conn, &register))
            .await
            .map_err(|_| anyhow!("the directory did not answer the registration"))??;
        match response {
            DirectoryResponse::Registered { observed_addr } => {
                self.observed.send_replace(Some(observed_addr));
                debug!(%observed_addr, "registered");
            }
            DirectoryResponse::Error(code) => {
                let failure = DirectoryError::Refused(code).failure(&s.name, &s.addr);
                return Err(match code {
                    ErrorCode::NameTaken
                    | ErrorCode::BadName
                    | ErrorCode::NameLookalike
                    | ErrorCode::TooManyNames => Final(failure).into(),
                    _ => failure.into(),
                });
            }
            other => bail!("unexpected answer to registration: {other:?}"),
        }
        if let (true, Some(reach)) = (s.online, &s.reach) {
            // Before anyone is told we are online: a contact's first lookup finds our
            // addresses.
            let reach = reach.borrow().clone();
            let told = tokio::time::timeout(
                REQUEST_TIMEOUT,
                request_on(&conn, &DirectoryRequest::SetReach { reach }),
            )
            .await;
            if !matches!(told, Ok(Ok(DirectoryResponse::Noted))) {
                warn!(answer = ?told, "the directory did not take our contacts");
            }
        }
        if s.online {
            let leaving = self.leaving.subscribe();
            let task = tokio::spawn(tracing::Instrument::in_current_span(serve_events(
                conn.clone(),
                self.pushed.clone(),
                leaving,
            )));
            let old = self
                .events_task
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(task);
            if let Some(old) = old {
                old.abort();
            }
        }
        Ok(conn)
    }
}

/// Tells the directory who may reach us each time that changes (each new connection is told
/// when it registers).
async fn tell_reach(client: DirectoryClient, mut reach: watch::Receiver<Reach>) {
    while reach.changed().await.is_ok() {
        let now = reach.borrow_and_update().clone();
        if let Err(e) = client
            .request(&DirectoryRequest::SetReach { reach: now })
            .await
        {
            warn!(cause = %e, "the directory did not take our contacts; it will on reconnecting");
        }
    }
}

/// The first wait between two attempts to connect; it doubles up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two attempts to connect: how late a directory that is back may be
/// noticed.
const RECONNECT_MAX: Duration = Duration::from_secs(4);
/// How long an answer may take before the directory's port is probed (see [`refused`]).
const SUSPECT_AFTER: Duration = Duration::from_secs(1);
/// How often [`refused`] probes.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Connects, and reconnects whenever the connection drops, until [`DirectoryClient::close`].
/// A lost connection is tried again at once (a directory that restarted is back), then with
/// backoff. A refusal for good (a wrong key, a name held by another) stops it. (Heartbeats
/// are the connection's QUIC keep-alives; see [`DirectoryClient::connect`].)
async fn supervise(inner: Arc<Inner>) {
    let mut leaving = inner.leaving.subscribe();
    let mut backoff = Duration::ZERO;
    loop {
        let conn = inner.conn.borrow().clone();
        if let Some(conn) = conn.filter(|c| c.close_reason().is_none()) {
            let reason = tokio::select! {
                reason = conn.closed() => reason,
                _ = left(&mut leaving) => return,
            };
            if *leaving.borrow() {
                return;
            }
            warn!(cause = %reason, "lost the directory connection; reconnecting");
            inner
                .status
                .send_replace(Status::Unreachable(inner.unreachable()));
            backoff = Duration::ZERO;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = left(&mut leaving) => return,
        }
        let attempt = tokio::select! {
            attempt = inner.connect_once() => attempt,
            _ = left(&mut leaving) => return,
        };
        match attempt {
            Ok(conn) => {
                if *leaving.borrow() {
                    conn.close(codes::OK.into(), b"bye");
                    return;
                }
                if inner.status.borrow().is_unreachable() {
                    info!("reconnected to the directory");
                }
                inner.up(conn);
            }
            Err(e) => {
                let failure = match e.downcast() {
                    Ok(Final(failure)) => {
                        warn!(cause = %failure, "the directory refused us");
                        inner.status.send_replace(Status::Refused(failure));
                        return;
                    }
                    Err(e) => Failure::from(e),
                };
                debug!(cause = %failure, "connecting to the directory failed");
                inner.status.send_replace(Status::Unreachable(failure));
                backoff = (backoff * 2).clamp(RECONNECT_FIRST, RECONNECT_MAX);
            }
        }
    }
}

impl Status {
    fn is_unreachable(&self) -> bool {
        matches!(self, Status::Unreachable(_))
    }
}

/// Resolves once the operating system reports that `addr` refuses UDP: an ICMP port (or host)
/// unreachable, which on loopback or a LAN arrives at once. QUIC endpoints never see these
/// (their socket is not connected, and quinn reads no error queue), so this probes from a
/// socket of its own, connected to `addr`, every [`PROBE_EVERY`]; a QUIC server drops the
/// one-byte probe unread. Never resolves while nothing is reported.
async fn refused(addr: SocketAddr) {
    let refusal = |e: &std::io::Error| {
        use std::io::ErrorKind::*;
        matches!(
            e.kind(),
            ConnectionRefused | HostUnreachable | NetworkUnreachable
        )
    };
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = match tokio::net::UdpSocket::bind(local).await {
        Ok(socket) if socket.connect(addr).await.is_ok() => socket,
        _ => return std::future::pending().await,
    };
    let mut every = tokio::time::interval(PROBE_EVERY);
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            _ = every.tick() => match socket.send(&[0]).await {
                Err(e) if refusal(&e) => return,
                _ => {}
            },
            got = socket.recv(&mut buf) => match got {
                Err(e) if refusal(&e) => return,
                Err(_) => return std::future::pending().await,
                Ok(_) => {}
            },
        }
    }
}

/// Whether a handshake failed because the server speaks another protocol over QUIC: it
/// answered with the TLS alert `no_application_protocol` (120).
/// Whether a handshake failed in TLS on our side: the server's key was not the pinned one.
fn is_tls_failure(e: &quinn::ConnectionError) -> bool {
    matches!(
        e,
        quinn::ConnectionError::TransportError(t) if u64::from(t.code) & !0xff == 0x100
    )
}

fn is_not_a_directory(e: &quinn::ConnectionError) -> bool {
    const NO_APPLICATION_PROTOCOL: u8 = 120;
    matches!(
        e,
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL)
    )
}

/// Reads the directory's event stream: mailbox messages, file parts and receipts, the idle
/// marker, and introductions, and passes them on `pushed`. Mail is acknowledged once it was
/// taken, one piece at a time. When we leave, it stops between two pieces and waits until the
/// directory has every ack written so far.
async fn serve_events(
    conn: quinn::Connection,
    pushed: mpsc::Sender<FromDirectory>,
    mut leaving: watch::Receiver<bool>,
) {
    let streams = tokio::select! {
        streams = conn.accept_bi() => streams,
        _ = left(&mut leaving) => return,
    };
    let (mut send, mut recv) = match streams {
        Ok(streams) => streams,
        Err(e) => {
            debug!(cause = %e, "no event stream");
            return;
        }
    };
    loop {
        let frame = tokio::select! {
            frame = framing::read_frame::<DirectoryEvent, _>(&mut recv) => frame,
            _ = left(&mut leaving) => {
                // Reading is abandoned mid-frame at worst: that message was never shown.
                if send.finish().is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                }
                return;
            }
        };
        // Mail is acknowledged once it is in our hands (shown, written, recorded); what could
        // not be taken is not acknowledged, and the directory keeps it for the next connection.
        let (mail, id) = match frame {
            Ok(Some(DirectoryEvent::Deliver(message))) => {
                let id = message.id;
                (Mail::Message(message), id)
            }
            Ok(Some(DirectoryEvent::DeliverFilePart(part))) => {
                let id = part.id;
                (Mail::FilePart(part), id)
            }
            Ok(Some(DirectoryEvent::Receipt(receipt))) => {
                let id = receipt.id;
                (Mail::Receipt(receipt), id)
            }
            Ok(Some(DirectoryEvent::SignedReceipt(receipt))) => {
                let id = receipt.id;
                (Mail::SignedReceipt(receipt), id)
            }
            Ok(Some(DirectoryEvent::DeliverLetter(letter))) => {
                let id = letter.id;
                (Mail::Letter(letter), id)
            }
            // Nothing is owed for a room's op: a member that misses one reads the log.
            Ok(Some(DirectoryEvent::RoomOp(op))) => {
                let _ = pushed.try_send(FromDirectory::RoomOp(op));
                continue;
            }
            Ok(Some(DirectoryEvent::RoomPresence { room, name, online })) => {
                let _ = pushed.try_send(FromDirectory::RoomPresence { room, name, online });
                continue;
            }
            Ok(Some(DirectoryEvent::MailboxIdle)) => {
                let _ = pushed.send(FromDirectory::MailboxIdle).await;
                continue;
            }
            Ok(Some(DirectoryEvent::Introduction { name, key, addrs })) => {
                let addrs = addrs.into_iter().take(16).collect();
                let intro = Introduction { name, key, addrs };
                let _ = pushed.try_send(FromDirectory::Introduction(intro));
                continue;
            }
            Ok(None) => return,
            Err(e) if !e.is_violation() => {
                debug!(cause = %e, "event stream ended");
                return;
            }
            Err(e) => {
                warn!(cause = %e, "bad frame from the directory");
                conn.close(e.code().into(), b"bad event frame");
                return;
            }
        };
        let ack = match taken(&pushed, mail).await {
            None => return,
            Some(None) => EventAck::Delivered(id),
            Some(Some(proof)) => EventAck::Took { id, proof },
        };
        if let Err(e) = framing::write_frame(&mut send, &ack).await {
            debug!(cause = %e, "event stream closed");
            return;
        }
    }
}

/// Hands one piece of mail over and waits until it was taken, with the proof for its sender
/// if there is one (`None`: it was not taken).
async fn taken(pushed: &mpsc::Sender<FromDirectory>, mail: Mail) -> Option<Option<Signature>> {
    let (ack, was_taken) = oneshot::channel();
    if pushed
        .send(FromDirectory::Mail(mail, Delivery(ack)))
        .await
        .is_err()
    {
        return None;
    }
    was_taken.await.ok()
}

/// Resolves once `leaving` is set.
async fn left(leaving: &mut watch::Receiver<bool>) {
    let _ = leaving.wait_for(|l| *l).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_reported_and_an_open_one_is_not() {
        let open = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (open_addr, closed_addr) = (
            open.local_addr().expect("addr"),
            closed.local_addr().expect("addr"),
        );
        drop(closed);
        // Loopback answers a closed port at once; the bound is only there to end the test.
        tokio::time::timeout(Duration::from_secs(5), refused(closed_addr))
            .await
            .expect("a closed port reported");
        // A socket that takes the probes and never answers is no refusal (a QUIC server
        // drops them): three probes go unanswered.
        let waited = tokio::time::timeout(PROBE_EVERY * 3, refused(open_addr)).await;
        assert!(waited.is_err(), "an open port was reported closed");
    }
}

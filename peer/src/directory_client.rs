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

use crate::{failure::Failure, home::Home, tasks::Tasks};
use anyhow::{anyhow, bail, Context, Result};
use common::{
    defaults::{ALPN_DIRECTORY, MISSED_HEARTBEATS, REQUEST_TIMEOUT},
    framing::{self, FrameReader},
    tls::{self, Expect},
    wire::{
        codes, ChatMessage, DirectoryEvent, DirectoryRequest, DirectoryResponse, ErrorCode,
        EventAck, FilePart, MessageId, PeerInfo, Reach, Receipt,
    },
    Identity, KeyId, Name,
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// Why a request to the directory failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The directory answered with an error code.
    #[error("{0}")]
    Refused(ErrorCode),
    /// There is no connection to the directory, and none came up in time.
    #[error("the directory at {addr} cannot be reached")]
    Unreachable {
        /// The directory's address as the user gave it.
        addr: String,
    },
    /// The directory did not answer in time.
    #[error("the directory did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection or the stream failed, or the answer made no sense.
    #[error("the directory connection failed: {0}")]
    Connection(String),
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
            DirectoryError::Unreachable { .. }
            | DirectoryError::Timeout(_)
            | DirectoryError::Connection(_) => Failure::DirectoryUnreachable { addr: addr.into() },
        }
    }
}

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
}

/// One piece of mail from the mailbox.
#[derive(Debug)]
pub enum Mail {
    /// A message.
    Message(ChatMessage),
    /// A part of a small file.
    FilePart(FilePart),
    /// A recipient took mail of ours from its mailbox.
    Receipt(Receipt),
}

/// The acknowledgement owed for one piece of mail.
#[derive(Debug)]
pub struct Delivery(oneshot::Sender<()>);

impl Delivery {
    /// The mail is in our hands (shown, written, recorded): the directory may delete it.
    pub fn taken(self) {
        let _ = self.0.send(());
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
}

/// A handle on the directory connection; cheap to clone.
#[derive(Clone)]
pub struct DirectoryClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    home: Home,
    settings: Settings,
    tasks: Tasks,
    /// Where what the directory pushes goes.
    pushed: mpsc::Sender<FromDirectory>,
    /// The current connection; `None` while reconnecting.
    conn: watch::Sender<Option<quinn::Connection>>,
    /// Our address as the directory sees it.
    observed: watch::Sender<Option<SocketAddr>>,
    /// Set when we leave: the event stream stops taking messages and flushes its acks.
    leaving: watch::Sender<bool>,
    /// The task reading the current event stream.
    events_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The long-lived request stream (see [`Inner::exchange`]).
    requests: tokio::sync::Mutex<Option<RequestStream>>,
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
        let mut client_config = tls::client_config(identity, ALPN_DIRECTORY, Expect::AnyKey)?;
        // Heartbeats are QUIC keep-alives: a PING every interval, which the directory only
        // acknowledges. Both sides use an idle timeout of three intervals (we propose it; the
        // smaller proposal wins), so three missed heartbeats end the connection on whichever
        // side still runs: the directory marks us offline, or we reconnect to a directory that
        // crashed without a close. The PINGs also keep our NAT mapping to the directory open.
        let mut transport = tls::transport_config(ALPN_DIRECTORY, false);
        transport.keep_alive_interval(Some(settings.heartbeat));
        transport.max_idle_timeout((settings.heartbeat * MISSED_HEARTBEATS).try_into().ok());
        client_config.transport_config(Arc::new(transport));
        let inner = Arc::new(Inner {
            endpoint,
            client_config,
            home,
            settings,
            tasks,
            pushed,
            conn: watch::Sender::new(None),
            observed: watch::Sender::new(None),
            leaving: watch::Sender::new(false),
            events_task: Default::default(),
            requests: Default::default(),
        });
        let conn = inner.connect_once().await?;
        inner.conn.send_replace(Some(conn));
        inner.tasks.spawn(supervise(inner.clone()));
        let client = Self { inner };
        if let (true, Some(reach)) = (client.inner.settings.online, &client.inner.settings.reach) {
            client
                .inner
                .tasks
                .spawn(tell_reach(client.clone(), reach.clone()));
        }
        Ok(client)
    }

    /// Our address as the directory last observed it.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        *self.inner.observed.borrow()
    }

    /// The directory's address as the user gave it.
    pub fn addr(&self) -> &str {
        &self.inner.settings.addr
    }

    /// Sends one request and returns the directory's answer; an error code becomes an error.
    pub async fn request(
        &self,
        request: &DirectoryRequest,
    ) -> Result<DirectoryResponse, DirectoryError> {
        let conn = self.current().await?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.inner.exchange(&conn, request))
            .await
            .map_err(|_| DirectoryError::Timeout(REQUEST_TIMEOUT))?
            .map_err(connection_failed)?;
        match response {
            DirectoryResponse::Error(code) => Err(DirectoryError::Refused(code)),
            other => Ok(other),
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
    /// and the directory marks us offline at once.
    pub async fn close(&self) {
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
        if let Some(conn) = self.inner.conn.send_replace(None) {
            conn.close(codes::OK.into(), b"bye");
        }
        // Wakes the supervisor, which sees the closed channel and stops.
        self.inner.conn.send_modify(|_| {});
    }

    async fn current(&self) -> Result<quinn::Connection, DirectoryError> {
        let mut rx = self.inner.conn.subscribe();
        let wait = rx.wait_for(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()));
        let conn = match tokio::time::timeout(REQUEST_TIMEOUT, wait).await {
            Ok(Ok(conn)) => conn.clone(),
            _ => None,
        };
        conn.ok_or_else(|| DirectoryError::Unreachable {
            addr: self.inner.settings.addr.clone(),
        })
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

    async fn connect_once(self: &Arc<Self>) -> Result<quinn::Connection> {
        let s = &self.settings;
        let addr = tokio::net::lookup_host(&s.addr)
            .await
            .with_context(|| format!("cannot resolve the directory address {}", s.addr))?
            .find(|a| {
                a.is_ipv4()
                    == self
                        .endpoint
                        .local_addr()
                        .map(|l| l.is_ipv4())
                        .unwrap_or(true)
            })
            .with_context(|| format!("the directory address {} has no usable address", s.addr))?;
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, "directory")
            .context("dialing the directory")?;
        let conn = tokio::time::timeout(REQUEST_TIMEOUT, connecting)
            .await
            .map_err(|_| Failure::DirectoryUnreachable {
                addr: s.addr.clone(),
            })?
            .with_context(|| format!("cannot connect to the directory at {}", s.addr))?;
        let key = tls::remote_key(&conn).context("the directory sent no certificate")?;
        if let Err(e) = self.home.check_directory(&s.addr, key, s.pin) {
            conn.close(codes::UNAUTHORIZED.into(), b"unexpected key");
            return Err(e);
        }
        let local = self.endpoint.local_addr()?;
        let register = DirectoryRequest::Register {
            name: s.name.clone(),
            listen_addrs: crate::endpoint::listen_addrs(local),
            heartbeat_ms: s.heartbeat.as_millis().min(u32::MAX as u128) as u32,
            online: s.online,
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
                return Err(DirectoryError::Refused(code)
                    .failure(&s.name, &s.addr)
                    .into())
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

/// Reconnects when the connection drops, until [`DirectoryClient::close`]. (Heartbeats are the
/// connection's QUIC keep-alives; see [`DirectoryClient::connect`].)
async fn supervise(inner: Arc<Inner>) {
    let mut conn_rx = inner.conn.subscribe();
    loop {
        let Some(conn) = conn_rx.borrow_and_update().clone() else {
            return;
        };
        let reason = loop {
            tokio::select! {
                reason = conn.closed() => break reason,
                changed = conn_rx.changed() => {
                    if changed.is_err() || conn_rx.borrow().is_none() { return; }
                }
            }
        };
        if inner.conn.borrow().is_none() {
            return; // closed on purpose
        }
        warn!(cause = %reason, "lost the directory connection; reconnecting");
        let mut backoff = Duration::from_millis(250);
        loop {
            tokio::time::sleep(backoff).await;
            if inner.conn.borrow().is_none() {
                return;
            }
            match inner.connect_once().await {
                Ok(conn) => {
                    info!("reconnected to the directory");
                    inner.conn.send_replace(Some(conn));
                    break;
                }
                Err(e) => {
                    debug!(cause = %format!("{e:#}"), "reconnect failed");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
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
        if !taken(&pushed, mail).await {
            return;
        }
        let taken: MessageId = id;
        if let Err(e) = framing::write_frame(&mut send, &EventAck::Delivered(taken)).await {
            debug!(cause = %e, "event stream closed");
            return;
        }
    }
}

/// Hands one piece of mail over and waits until it was taken (`false`: it was not).
async fn taken(pushed: &mpsc::Sender<FromDirectory>, mail: Mail) -> bool {
    let (ack, was_taken) = oneshot::channel();
    if pushed
        .send(FromDirectory::Mail(mail, Delivery(ack)))
        .await
        .is_err()
    {
        return false;
    }
    was_taken.await.is_ok()
}

/// Resolves once `leaving` is set.
async fn left(leaving: &mut watch::Receiver<bool>) {
    let _ = leaving.wait_for(|l| *l).await;
}

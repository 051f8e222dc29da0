//! One peer's connection: the handshake proves its key, `Register` binds its name, then each
//! bi-stream carries requests, one after another, each answered in order. A client may send
//! the next requests before the answers come (pipelining): those that arrived together are
//! answered in one write, so in as few packets as possible.

use crate::{mailbox, registry::Online, state::Shared, store::StoreError};
use anyhow::Result;
use common::{
    defaults::{MAX_BODY_LEN, REQUEST_TIMEOUT},
    framing::{self, FrameError, FrameReader},
    now_ms, tls,
    wire::{codes, DirectoryEvent, DirectoryRequest, DirectoryResponse, ErrorCode, Mail, PeerInfo},
    KeyId, Name,
};
use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc, OnceLock},
};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn, Instrument};

/// The state of one connection.
struct Session {
    conn: quinn::Connection,
    key: KeyId,
    shared: Arc<Shared>,
    /// Set once by `Register`.
    name: OnceLock<Name>,
    /// The addresses the peer said it listens on, set by `Register`.
    listen_addrs: OnceLock<Vec<SocketAddr>>,
    /// When this connection's recent introductions were sent (see [`INTRODUCTIONS`]).
    introductions: std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>,
}

/// Answers to pipelined requests are gathered into one write up to about this many bytes.
const ANSWER_BATCH: usize = 16 * 1024;

/// At most this many introductions per connection in [`INTRODUCTION_WINDOW`]: each one makes
/// another peer send packets to addresses the asker chose, so a hostile peer must not be able
/// to turn peers into a packet cannon.
const INTRODUCTIONS: usize = 20;
/// See [`INTRODUCTIONS`].
const INTRODUCTION_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs one connection to its end. Errors end this connection only.
pub async fn run(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            debug!(cause = %e, "handshake failed");
            return;
        }
    };
    let Some(key) = tls::remote_key(&conn) else {
        // The TLS verifier requires a certificate, so this cannot happen; refuse anyway.
        conn.close(codes::UNAUTHORIZED.into(), b"no certificate");
        return;
    };
    debug!(key = %key.short(), "connected");
    let session = Arc::new(Session {
        conn: conn.clone(),
        key,
        shared,
        name: OnceLock::new(),
        listen_addrs: OnceLock::new(),
        introductions: Default::default(),
    });
    let reason = loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let session = session.clone();
                tokio::spawn(
                    async move {
                        if let Err(e) = session.serve_stream(send, recv).await {
                            debug!(cause = %e, "request failed");
                        }
                    }
                    .in_current_span(),
                );
            }
            Err(e) => break e,
        }
    };
    debug!(cause = %reason, "connection closed");
    if let Some(name) = session.name.get() {
        // The time is stored before the peer leaves the registry, so that a lookup never finds
        // it offline without a last-seen time. Should a newer connection hold the name, the
        // time is still true, and that connection reports the peer online anyway.
        let store = session.shared.store.clone();
        let seen = name.clone();
        let _ = tokio::task::spawn_blocking(move || store.set_last_seen(&seen, now_ms())).await;
        if session.shared.registry.remove_if(name, conn.stable_id()) {
            info!("offline");
        }
    }
}

impl Session {
    async fn serve_stream(
        self: &Arc<Self>,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<()> {
        let mut requests = FrameReader::new(recv);
        loop {
            let request = match requests.next(REQUEST_TIMEOUT).await {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(e) => return Err(self.refuse_stream(&mut send, requests.get_mut(), e)),
            };
            let mut answers = self.answer(request).await?;
            while answers.len() < ANSWER_BATCH {
                match requests.buffered() {
                    Ok(Some(request)) => answers.extend(self.answer(request).await?),
                    Ok(None) => break,
                    Err(e) => return Err(self.refuse_stream(&mut send, requests.get_mut(), e)),
                }
            }
            send.write_all(&answers).await?;
        }
        send.finish()?;
        Ok(())
    }

    /// The encoded answer to one request.
    async fn answer(self: &Arc<Self>, request: DirectoryRequest) -> Result<Vec<u8>> {
        let response = match self.handle(request).await {
            Ok(response) => response,
            Err(code) => DirectoryResponse::Error(code),
        };
        Ok(framing::encode(&response)?)
    }

    /// Closes a stream whose requests cannot be read: a bad frame (with a code saying why) or
    /// one that did not arrive whole in time. A stream that merely ended or failed is left.
    fn refuse_stream(
        &self,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        e: FrameError,
    ) -> anyhow::Error {
        if e.is_violation() {
            warn!(cause = %e, "bad request frame; closing the stream");
        }
        if e.is_violation() || matches!(e, FrameError::TimedOut(_)) {
            let _ = send.reset(e.code().into());
            let _ = recv.stop(e.code().into());
        }
        e.into()
    }

    fn registered(&self) -> Result<&Name, ErrorCode> {
        self.name.get().ok_or(ErrorCode::NotRegistered)
    }

    async fn handle(
        self: &Arc<Self>,
        request: DirectoryRequest,
    ) -> Result<DirectoryResponse, ErrorCode> {
        match request {
            DirectoryRequest::Register {
                name,
                listen_addrs,
                heartbeat_ms,
                online,
            } => {
                self.register(name, listen_addrs, heartbeat_ms, online)
                    .await
            }
            DirectoryRequest::Heartbeat => {
                // Liveness is the connection's (see `registry`); an explicit heartbeat is
                // still answered, for clients that send one.
                self.registered()?;
                Ok(DirectoryResponse::Alive)
            }
            DirectoryRequest::Lookup { name } => {
                let me = self.registered()?.clone();
                self.lookup(me, name).await.map(DirectoryResponse::Peer)
            }
            DirectoryRequest::Deposit { message } => {
                let me = self.registered()?;
                self.deposit(me, Mail::Chat(message))
                    .await
                    .map(|()| DirectoryResponse::Stored)
            }
            DirectoryRequest::DepositFilePart { part } => {
                let me = self.registered()?;
                self.deposit(me, Mail::FilePart(part))
                    .await
                    .map(|()| DirectoryResponse::Stored)
            }
            DirectoryRequest::Introduce { name } => {
                let me = self.registered()?;
                self.introduce(me, &name)
                    .map(|()| DirectoryResponse::Introduced)
            }
            DirectoryRequest::PunchOutcome {
                name,
                success,
                millis,
            } => {
                let me = self.registered()?;
                let m = &self.shared.metrics;
                let counter = if success { &m.punched } else { &m.punch_failed };
                counter.fetch_add(1, Ordering::Relaxed);
                info!(
                    from = %me, to = %name, success, millis,
                    introductions = m.introductions.load(Ordering::Relaxed),
                    punched = m.punched.load(Ordering::Relaxed),
                    failed = m.punch_failed.load(Ordering::Relaxed),
                    "hole punching outcome"
                );
                Ok(DirectoryResponse::Noted)
            }
        }
    }

    async fn register(
        self: &Arc<Self>,
        name: Name,
        listen_addrs: Vec<SocketAddr>,
        heartbeat_ms: u32,
        online: bool,
    ) -> Result<DirectoryResponse, ErrorCode> {
        if self.name.get().is_some() {
            return Err(ErrorCode::AlreadyRegistered);
        }
        // Binding a new name commits (a blocking fsync); a known one is only read. Last seen is
        // not written here: while online it comes from the registry, and it is stored when the
        // peer leaves.
        let (store, key, n) = (self.shared.store.clone(), self.key, name.clone());
        let bound = tokio::task::spawn_blocking(move || store.bind(&n, &key))
            .await
            .map_err(|_| ErrorCode::Internal)?;
        match bound {
            Ok(_) => {}
            Err(StoreError::NameTaken) => {
                info!(%name, key = %self.key.short(), "refused: name bound to another key");
                return Err(ErrorCode::NameTaken);
            }
            Err(e) => {
                warn!(cause = %e, "storing a binding failed");
                return Err(ErrorCode::Internal);
            }
        }
        if self.name.set(name.clone()).is_err() {
            return Err(ErrorCode::AlreadyRegistered);
        }
        let listen_addrs: Vec<SocketAddr> = listen_addrs.into_iter().take(16).collect();
        let _ = self.listen_addrs.set(listen_addrs.clone());
        tracing::Span::current().record("name", name.as_str());
        let observed_addr = self.conn.remote_address();
        if !online {
            debug!(key = %self.key.short(), "registered for a short command");
            return Ok(DirectoryResponse::Registered { observed_addr });
        }
        let wake = Arc::new(Notify::new());
        let (events_tx, events) = mpsc::channel(64);
        let entry = Online {
            conn: self.conn.clone(),
            key: self.key,
            listen_addrs,
            wake: wake.clone(),
            events: events_tx,
        };
        if let Some(old) = self.shared.registry.insert(name.clone(), entry) {
            if old.conn.stable_id() != self.conn.stable_id() {
                info!("replacing an older connection for the same name");
                old.conn
                    .close(codes::REPLACED.into(), b"replaced by a newer connection");
            }
        }
        info!(key = %self.key.short(), heartbeat_ms, "online");
        tokio::spawn(
            mailbox::deliver(self.conn.clone(), name, self.shared.clone(), wake, events)
                .in_current_span(),
        );
        Ok(DirectoryResponse::Registered { observed_addr })
    }

    /// Sends `name` our addresses on its event stream, so it dials us while we dial it.
    fn introduce(&self, me: &Name, name: &Name) -> Result<(), ErrorCode> {
        {
            let mut recent = self.introductions.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) > INTRODUCTION_WINDOW)
            {
                recent.pop_front();
            }
            if recent.len() >= INTRODUCTIONS {
                debug!("introduction refused: rate limit");
                return Err(ErrorCode::RateLimited);
            }
            recent.push_back(now);
        }
        let target = self.shared.registry.get(name).ok_or(ErrorCode::Offline)?;
        let mut addrs = vec![self.conn.remote_address()];
        addrs.extend(self.listen_addrs.get().into_iter().flatten().copied());
        let event = DirectoryEvent::Introduction {
            name: me.clone(),
            key: self.key,
            addrs,
        };
        // A full queue means the target is not reading its events; the caller falls back.
        target
            .events
            .try_send(event)
            .map_err(|_| ErrorCode::Offline)?;
        let n = self
            .shared
            .metrics
            .introductions
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        info!(to = %name, introductions = n, "introduced");
        Ok(())
    }

    async fn lookup(&self, me: Name, name: Name) -> Result<PeerInfo, ErrorCode> {
        // Reads are served inline: a redb read transaction on a hot page costs microseconds,
        // less than the hop to a blocking thread, which profiling showed dominating lookups.
        let (record, queued) = self
            .shared
            .store
            .lookup(&name, &me)
            .map_err(|_| ErrorCode::Internal)?
            .ok_or(ErrorCode::UnknownPeer)?;
        Ok(match self.shared.registry.get(&name) {
            Some(o) => PeerInfo {
                name,
                key: o.key,
                online: true,
                // Its connection is alive now: QUIC closes it three missed heartbeats after
                // the last one.
                last_seen_ms: Some(now_ms()),
                observed_addr: Some(o.conn.remote_address()),
                listen_addrs: o.listen_addrs,
                queued_from_you: queued,
            },
            None => PeerInfo {
                name,
                key: record.key,
                online: false,
                last_seen_ms: record.last_seen_ms,
                observed_addr: None,
                listen_addrs: Vec::new(),
                queued_from_you: queued,
            },
        })
    }

    /// Stores a chat message or a file part from `me` (receipts are the directory's own).
    async fn deposit(&self, me: &Name, mail: Mail) -> Result<(), ErrorCode> {
        if mail.from() != me {
            return Err(ErrorCode::NotSender);
        }
        let fits = match &mail {
            Mail::Chat(m) => m.body.len() <= MAX_BODY_LEN,
            Mail::FilePart(p) => p.fits_offer(),
            Mail::Receipt(_) => return Err(ErrorCode::NotSender),
        };
        if !fits {
            return Err(ErrorCode::TooLarge);
        }
        let to = mail.to().clone();
        let known = self
            .shared
            .store
            .name(&to)
            .map_err(|_| ErrorCode::Internal)?;
        if known.is_none() {
            return Err(ErrorCode::UnknownPeer);
        }
        match self.shared.writer.deposit(mail).await {
            Ok(()) => {}
            Err(StoreError::MailboxFull) => return Err(ErrorCode::MailboxFull),
            Err(e) => {
                warn!(cause = %e, "storing a message failed");
                return Err(ErrorCode::Internal);
            }
        }
        if let Some(online) = self.shared.registry.get(&to) {
            online.wake.notify_one();
        }
        Ok(())
    }
}

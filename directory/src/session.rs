//! One peer's QUIC connection, from handshake to close: the handshake proves its key, then each
//! bi-stream carries requests, one after another, each answered in order; [`service`] decides
//! the answers, this module only reads frames and writes them. A client may send the next
//! requests before the answers come (pipelining): those that arrived together are answered in
//! one write, so in as few packets as possible, and the deposits among them are queued for the
//! store's group commit together rather than each waiting for its own.
//!
//! What a client can make a session hold is bounded: a connection that has not registered
//! within the registration timeout (handshake included) is closed; a stream's answers are
//! written at most [`MAX_PIPELINED`] at a time, and no more of its requests are read until
//! they are taken; a client that does not take them within [`ANSWER_TIMEOUT`] has the stream
//! reset. The transport's windows (`common::tls`) bound the rest.

use crate::{
    mailbox, metrics,
    registry::{Feed, Link},
    service::{self, Caller, Reply},
    state::Shared,
};
use anyhow::Result;
use common::{
    admit::{self, Slot},
    defaults::{ANSWER_TIMEOUT, MAX_PIPELINED, MAX_STREAMS, REQUEST_TIMEOUT},
    framing::{self, FrameError, FrameReader},
    now_ms, tls,
    wire::{codes, DirectoryRequest, DirectoryResponse},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// The state of one connection.
struct Session {
    shared: Arc<Shared>,
    caller: Caller,
    /// Hands the session's loop the feed of a `Register` that brought the peer online, for it
    /// to start the mailbox task. Boxed, as in `registry::QueuedEvent`: the channel's first
    /// 32 slots are allocated with it, for every connection.
    online: mpsc::Sender<Box<Feed>>,
    /// Deposits of this connection queued for the store's commit and not yet answered.
    deposit_slots: Arc<Semaphore>,
}

/// Most deposits one connection has queued for the store's commit at once: as many as streams
/// it may open, so that pipelining lets a client take no more of the writer's shared queue than
/// one deposit per stream did.
const QUEUED_DEPOSITS: usize = MAX_STREAMS as usize;

/// Answers to pipelined requests are gathered into one write up to about this many bytes.
const ANSWER_BATCH: usize = 16 * 1024;

/// Runs one connection to its end, or until `cancel` fires, then waits for its tasks: one per
/// request stream, and the mailbox once the peer is online. They are this function's, in its
/// `JoinSet`, so aborting it aborts them. Errors end this connection only. The connection
/// holds `_slot` (its host's) until then, and must register within `register_within`.
pub async fn run(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    _slot: Slot,
    register_within: Duration,
) {
    let deadline = tokio::time::Instant::now() + register_within;
    let Some(conn) = admit::handshake(incoming, deadline).await else {
        return;
    };
    let Some(key) = tls::remote_key(&conn) else {
        // The TLS verifier requires a certificate, so this cannot happen; refuse anyway.
        conn.close(codes::UNAUTHORIZED.into(), b"no certificate");
        return;
    };
    debug!(key = %key.short(), "connected");
    // Register succeeds at most once per connection, so one slot is enough.
    let (online, mut online_rx) = mpsc::channel(1);
    let session = Arc::new(Session {
        shared: shared.clone(),
        caller: Caller::new(key, Arc::new(conn.clone())),
        online,
        deposit_slots: Arc::new(Semaphore::new(QUEUED_DEPOSITS)),
    });
    let mut tasks = JoinSet::new();
    // Set when the peer came online on another node of the cluster, which closed this one.
    let moved = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Cancelled once the cluster has been told the peer left: this node answers for it until
    // then, so no other node finds it gone before hearing how it left.
    let told = CancellationToken::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let session = session.clone();
                    tasks.spawn(
                        async move {
                            if let Err(e) = session.serve_stream(send, recv).await {
                                debug!(cause = %e, "request failed");
                            }
                        }
                        .in_current_span(),
                    );
                }
                Err(e) => {
                    debug!(cause = %e, "connection closed");
                    break;
                }
            },
            Some(feed) = online_rx.recv() => {
                if shared.cluster.is_some() {
                    let (shared, conn, name) = (shared.clone(), conn.clone(), feed.name.clone());
                    let (moved, told) = (moved.clone(), told.clone());
                    let answer = async move {
                        if let Some(cluster) = &shared.cluster {
                            let parts = (&shared.registry, &shared.allowances);
                            cluster.serve_peer(name, conn, parts, &moved, &told).await;
                        }
                    };
                    tasks.spawn(answer.in_current_span());
                }
                let delivery = mailbox::deliver(conn.clone(), shared.clone(), *feed);
                tasks.spawn(delivery.in_current_span());
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = tokio::time::sleep_until(deadline), if session.caller.name().is_none() => {
                debug!("not registered in time; closing");
                conn.close(codes::TIMED_OUT.into(), b"register first");
                break;
            }
            () = cancel.cancelled() => {
                debug!("directory shutting down");
                break;
            }
        }
    }
    if let Some(name) = session.caller.name() {
        // The time is stored before the peer leaves the registry, so that a lookup never finds
        // it offline without a last-seen time. Should a newer connection hold the name, the
        // time is still true, and that connection reports the peer online anyway.
        // Through the writer, so that peers leaving together share one fsync.
        let at_ms = now_ms();
        let _ = shared.writer.set_last_seen(name.clone(), at_ms).await;
        let moved = moved.load(std::sync::atomic::Ordering::Relaxed);
        if shared.registry.remove_if(name, conn.stable_id(), at_ms) && !moved {
            info!("offline");
            let rooms = service::rooms_parts(&shared);
            shared.rooms.presence(rooms, name, false).await;
            if let Some(cluster) = &shared.cluster {
                let open = shared.registry.was_open(name);
                cluster.presence(name, false, open, at_ms).await;
            }
        }
    }
    told.cancel();
    // The connection is closed (on shutdown the server closes it), so its streams and its
    // mailbox end soon.
    while tasks.join_next().await.is_some() {}
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
            let mut answers = Answers::default();
            let mut next = Some(request);
            let (mut answered, mut bad) = (0, None);
            while let Some(request) = next.take() {
                self.take(request, &mut answers).await?;
                answered += 1;
                if answers.bytes.len() >= ANSWER_BATCH || answered >= MAX_PIPELINED {
                    break;
                }
                match requests.buffered() {
                    Ok(found) => next = found,
                    Err(e) => bad = Some(e),
                }
            }
            // Deposits already queued are committed whatever follows: they are settled (counted,
            // their recipients woken) even when a bad frame after them ends the stream.
            let answers = self.settle(answers).await?;
            if let Some(e) = bad {
                return Err(self.refuse_stream(&mut send, requests.get_mut(), e));
            }
            // Nothing more is read from the stream until the client takes these.
            match tokio::time::timeout(ANSWER_TIMEOUT, send.write_all(&answers)).await {
                Ok(written) => written?,
                Err(_) => {
                    let e = FrameError::TimedOut(ANSWER_TIMEOUT);
                    return Err(self.refuse_stream(&mut send, requests.get_mut(), e));
                }
            }
        }
        send.finish()?;
        Ok(())
    }

    /// Answers `request` into `answers`. A deposit is only queued for the store's next group
    /// commit, so that the deposits of one pipelined batch share a commit; any other request
    /// waits for those before it, and so sees what they stored.
    async fn take(
        self: &Arc<Self>,
        request: DirectoryRequest,
        answers: &mut Answers,
    ) -> Result<()> {
        let DirectoryRequest::DepositLetter { letter } = request else {
            answers.settle(&self.shared).await?;
            return self.answer(request, &mut answers.bytes).await;
        };
        let started = std::time::Instant::now();
        // A connection holds at most QUEUED_DEPOSITS in the writer's queue, across its streams,
        // as many as it could with one deposit per stream. This stream's own go first.
        let slot = match self.deposit_slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                answers.settle(&self.shared).await?;
                self.deposit_slots.clone().acquire_owned().await?
            }
        };
        match service::queue_deposit(&self.shared, &self.caller, letter).await {
            Ok(queued) => answers.deposits.push((queued, started, slot)),
            Err(code) => {
                answers.settle(&self.shared).await?;
                let took = started.elapsed();
                (self.shared.metrics).answered(metrics::DEPOSIT_LETTER, Err(code), took);
                answers
                    .bytes
                    .extend(framing::encode(&DirectoryResponse::Error(code))?);
            }
        }
        Ok(())
    }

    /// The answers, once the deposits among them are committed.
    async fn settle(&self, mut answers: Answers) -> Result<Vec<u8>> {
        answers.settle(&self.shared).await?;
        Ok(answers.bytes)
    }

    /// Appends the encoded answer to one request to `out`.
    async fn answer(self: &Arc<Self>, request: DirectoryRequest, out: &mut Vec<u8>) -> Result<()> {
        let (kind, started) = (metrics::kind(&request), std::time::Instant::now());
        let answered = service::handle(&self.shared, &self.caller, request).await;
        let outcome = answered.as_ref().map(|_| ()).map_err(|code| *code);
        (self.shared.metrics).answered(kind, outcome, started.elapsed());
        let response = match answered {
            Ok(Reply { response, online }) => {
                if let Some(feed) = online {
                    // Fails only once the session's loop has ended: nothing to deliver then.
                    let _ = self.online.try_send(Box::new(feed));
                }
                response
            }
            Err(code) => DirectoryResponse::Error(code),
        };
        out.extend(framing::encode(&response)?);
        Ok(())
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
}

/// The answers to a batch of pipelined requests, in order: those encoded, then the deposits
/// queued after them, waiting for their commit.
#[derive(Default)]
struct Answers {
    bytes: Vec<u8>,
    deposits: Vec<(
        service::QueuedDeposit,
        std::time::Instant,
        OwnedSemaphorePermit,
    )>,
}

impl Answers {
    /// Waits for the queued deposits' commits and encodes their answers.
    async fn settle(&mut self, shared: &Shared) -> Result<()> {
        for (queued, started, _slot) in self.deposits.drain(..) {
            let stored = queued.stored(shared).await;
            let outcome = stored.as_ref().map(|_| ()).map_err(|code| *code);
            (shared.metrics).answered(metrics::DEPOSIT_LETTER, outcome, started.elapsed());
            let response = stored.unwrap_or_else(DirectoryResponse::Error);
            self.bytes.extend(framing::encode(&response)?);
        }
        Ok(())
    }
}

/// The registry's view of a connection.
impl Link for quinn::Connection {
    fn id(&self) -> usize {
        self.stable_id()
    }

    fn remote_address(&self) -> SocketAddr {
        quinn::Connection::remote_address(self)
    }

    fn close(&self, code: u32, reason: &[u8]) {
        quinn::Connection::close(self, code.into(), reason);
    }
}

//! The [`Store`] of a directory cluster: every change goes through one NATS JetStream stream,
//! the cluster's log, and every node applies the log, in its order, to a redb replica of its
//! own, from which it answers reads.
//!
//! # Why a log and replicas
//!
//! JetStream replicates a stream with Raft (three replicas ride out one NATS server lost) and
//! gives every entry one position in one order. A change is published as an entry and takes
//! effect when it is applied; every node applies the same entries in the same order to the
//! same [`RedbStore`] code, so every replica holds the same data, and every rule of the store
//! (a name bound at most once, lookalikes, quotas, receipts) holds cluster-wide without a
//! protocol of our own: two nodes binding one name to two keys publish two entries, and the
//! later one is refused on every node alike. Reads stay local and as fast as a single node's.
//!
//! # Path of a change
//!
//! 1. A write (from the [`super::Writer`]'s thread) publishes an [`Entry`] naming this node
//!    and a request number, and waits for JetStream's ack: the entry is on a majority of the
//!    stream's replicas.
//! 2. The node's applier, following the stream with a consumer, applies entries one by one,
//!    recording each one's position in the same redb transaction (see
//!    [`RedbStore::applying`]); it hands the outcome of this node's own entries to their
//!    writers, and names each recipient of mail or receipts in [`JetStreamStore::changes`], so
//!    the node holding its connection wakes its mailbox.
//! 3. The write returns that outcome: when it returns `Ok`, the change is durable in the
//!    stream and applied here (a lookup on this node sees it; another node sees it once it
//!    has applied the entry, typically within a millisecond or two).
//!
//! # Limits
//!
//! An entry is deterministic: it carries its time and its quotas, and replicas apply it with
//! them, so nodes with different settings still agree. The free space of the disk is checked
//! by the node that publishes. A replica that cannot apply an entry (its disk failed, the
//! entry is of a newer layout or does not decode, entries are missing) stops applying and
//! refuses writes: it cannot skip an entry and stay a replica. The stream is compacted: a
//! snapshot of a replica replaces the entries before it ([`super::compaction`]), and a new
//! node starts from the newest snapshot.

use super::{
    compaction::{self, keep_short, report_position, Snapshots, REPORT_EVERY},
    Bind, Binding, NameRecord, Naming, Quota, RedbStore, Removal, Store, StoreError, Stored,
};
use crate::metrics::{LogState, LogStatus};
use async_nats::jetstream::{self, consumer::push, stream};
use common::{
    now_ms,
    room::{Op, RoomName},
    wire::Mail,
    Name,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    future::Future,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::sync::{broadcast, oneshot, watch};

/// Most bytes of mail in one entry: NATS refuses messages over its `max_payload` (1 MiB by
/// default), and a batch of deposits may hold many 64 KiB letters.
const MAX_ENTRY_MAIL: u64 = 512 * 1024;

/// How often the consumer a node follows the log with says it is alive when there is nothing
/// to deliver; two missed, and the node follows with a new one.
const FOLLOW_HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a write waits for the stream's ack and then for its own entry to be applied.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a read that must see every acknowledged write waits for this replica to catch up
/// ([`Store::catch_up`]); it usually takes a round trip to JetStream.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a scrape of the metrics waits for JetStream to say how long the log is.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a node waits for JetStream to take the log's stream when it starts: a NATS cluster
/// that is starting too elects its JetStream leader first.
const JETSTREAM_START: Duration = Duration::from_secs(60);

/// Changes a slow reader may fall behind on before it is told it lagged.
const CHANGES_QUEUE: usize = 4096;

/// A change this node applied that its own peers may need to hear of, on whichever node it was
/// made.
#[derive(Clone, Debug)]
pub enum Applied {
    /// The mailbox of this name got mail or a receipt.
    Mail(Name),
    /// A room's log grew by this op.
    RoomOp {
        /// The op.
        op: Box<Op>,
        /// Made on this node, whose rooms pushed it already.
        mine: bool,
    },
}

/// Where the cluster's log is and how it is kept.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// The stream's name (one per cluster).
    pub stream: String,
    /// Copies JetStream keeps of it: 3 in a cluster of three NATS servers, 1 for one server.
    pub replicas: usize,
    /// Entries the log may hold before a node compacts it ([`super::compaction`]); 0: never.
    pub compact_after: u64,
    /// About how often each node checks whether the log needs compacting.
    pub compact_check: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            stream: "DIRECTORY".into(),
            replicas: 1,
            compact_after: 100_000,
            compact_check: Duration::from_secs(60),
        }
    }
}

/// The layout of [`Entry`] this code writes and reads. postcard is not self-describing: a node
/// that meets an entry of another layout stops applying rather than misread it.
const ENTRY_LAYOUT: u8 = 1;

/// One entry of the log: a change, who published it and when.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// [`ENTRY_LAYOUT`] of the node that wrote it.
    layout: u8,
    /// The publishing node's number for this run, so it knows its own entries.
    origin: u64,
    /// The publisher's number for the write waiting on this entry.
    request: u64,
    /// When it was published (ms since the epoch): the time the change records.
    at_ms: u64,
    change: Change,
}

/// A write to the store, as every replica applies it.
#[derive(Debug, Serialize, Deserialize)]
enum Change {
    Names {
        bindings: Vec<Binding>,
        seen: Vec<(Name, u64)>,
        naming: Naming,
    },
    Deposits {
        mail: Vec<Mail>,
        quota: Quota,
    },
    Removals {
        entries: Vec<Removal>,
        quota: Quota,
    },
    RoomOp(Op),
}

/// What applying a [`Change`] gave, for the writer that waits on it.
#[derive(Debug)]
enum Outcome {
    Names(Vec<Result<Bind, StoreError>>),
    Deposits(Vec<Result<(), StoreError>>),
    Removals(Vec<Option<Name>>),
    RoomOp(Result<(), StoreError>),
}

/// The log's last position, as JetStream reports it, asked once for everyone waiting at the
/// same time: at most one question is in flight, and callers that come while it is get the
/// next one's answer (it must be asked after they came). However many lookups of unknown
/// names a node gets, it asks JetStream at most once per round trip.
struct Heads {
    state: Mutex<HeadsState>,
    /// The number of the last question answered, and its answer.
    answers: watch::Sender<(u64, Result<u64, String>)>,
}

impl Default for Heads {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            answers: watch::Sender::new((0, Ok(0))),
        }
    }
}

#[derive(Default)]
struct HeadsState {
    /// The number of the last question asked.
    asked: u64,
    /// Whether a question is in flight (numbered `asked`).
    running: bool,
    /// The number of the question callers wait for.
    wanted: u64,
}

impl Heads {
    /// The log's last position, as JetStream reports it after this call.
    async fn ask(inner: &Arc<Inner>, handle: &tokio::runtime::Handle) -> Result<u64, StoreError> {
        let heads = &inner.heads;
        let mut answers = heads.answers.subscribe();
        let want = {
            let mut state = heads.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.running {
                state.wanted = state.asked + 1;
            } else {
                state.asked += 1;
                state.wanted = state.asked;
                state.running = true;
                handle.spawn(Self::run(inner.clone(), state.asked));
            }
            state.wanted
        };
        let answer = answers
            .wait_for(|(number, _)| *number >= want)
            .await
            .map_err(db)?;
        answer.1.clone().map_err(db)
    }

    /// Asks question `number`, and the next ones as long as callers wait for them.
    async fn run(inner: Arc<Inner>, mut number: u64) {
        loop {
            let head = match inner.js.get_stream(&inner.stream).await {
                Ok(stream) => Ok(stream.cached_info().state.last_sequence),
                Err(e) => Err(e.to_string()),
            };
            drop(inner.heads.answers.send_replace((number, head)));
            let mut state = inner.heads.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.wanted > number {
                number += 1;
                state.asked = number;
            } else {
                state.running = false;
                return;
            }
        }
    }
}

/// What the writers and the applier share.
struct Inner {
    local: Arc<RedbStore>,
    js: jetstream::Context,
    /// The log's stream, and the subject its entries are published on.
    stream: String,
    subject: String,
    origin: u64,
    next_request: AtomicU64,
    waiters: Mutex<HashMap<u64, oneshot::Sender<Result<Outcome, StoreError>>>>,
    /// Why the applier stopped, once it has.
    stopped: Mutex<Option<String>>,
    /// Position of the last entry applied.
    applied: watch::Sender<u64>,
    changes: broadcast::Sender<Applied>,
    /// Where this node's position and the log's snapshots are kept.
    snapshots: Snapshots,
    heads: Heads,
}

/// The [`Store`] of a directory node in a cluster: writes through the cluster's JetStream log,
/// reads from this node's replica.
pub struct JetStreamStore {
    inner: Arc<Inner>,
    /// Runs the NATS client and the applier, apart from the directory's own threads: the
    /// store's methods block (see [`Store`]), and may be called from any thread.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for JetStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStore")
            .field("subject", &self.inner.subject)
            .finish_non_exhaustive()
    }
}

impl Drop for JetStreamStore {
    fn drop(&mut self) {
        // The applier's tasks hold the replica open: outside a runtime, wait for them to end,
        // so the same file can be opened again at once. Inside one, blocking is not allowed.
        if let Some(runtime) = self.runtime.take() {
            // It forgets its position first, rather than hold the log back until it expires.
            let snapshots = self.inner.snapshots.clone();
            let leave = async move {
                tokio::time::timeout(Duration::from_secs(1), snapshots.leave()).await
            };
            let _ = block_on(runtime.handle(), leave);
            match tokio::runtime::Handle::try_current() {
                Ok(_) => runtime.shutdown_background(),
                Err(_) => runtime.shutdown_timeout(Duration::from_secs(5)),
            }
        }
    }
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

impl JetStreamStore {
    /// Connects to the NATS servers `servers` (`nats://host:port` each), creates the log's
    /// stream if it does not exist, opens the replica at `replica` and applies the log up to
    /// its current end before returning.
    pub fn open(servers: &[String], log: &LogConfig, replica: &Path) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("store-nats")
            .enable_all()
            .build()
            .map_err(db)?;
        let servers = servers.to_vec();
        let log = log.clone();
        let replica = replica.to_path_buf();
        let inner = block_on(runtime.handle(), async move {
            start(&servers, &log, &replica).await
        })??;
        Ok(Self {
            inner,
            runtime: Some(runtime),
        })
    }

    /// The changes this node applies from now on that its peers may need to hear of: mail
    /// for them (wake their mailbox), a room's new op (push it to them). A receiver that lags
    /// has missed some, and should wake every mailbox it serves.
    pub fn changes(&self) -> broadcast::Receiver<Applied> {
        self.inner.changes.subscribe()
    }

    /// Resolves, with the reason, once this replica stops applying the log (see "Limits"):
    /// a node that cannot apply the log should stop serving, so that its peers move to a node
    /// that can.
    pub fn failed(&self) -> impl Future<Output = String> + Send + 'static {
        let inner = self.inner.clone();
        let mut applied = inner.applied.subscribe();
        async move {
            loop {
                if let Some(why) = inner.stopped() {
                    return why;
                }
                if applied.changed().await.is_err() {
                    return "the store closed".into();
                }
            }
        }
    }

    /// The position of the last log entry this node applied.
    pub fn applied(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    fn handle(&self) -> Result<&tokio::runtime::Handle, StoreError> {
        match &self.runtime {
            Some(runtime) => Ok(runtime.handle()),
            None => Err(db("the store is closed")),
        }
    }

    /// Publishes `change` and waits until this node has applied it.
    fn write(&self, change: Change) -> Result<Outcome, StoreError> {
        let inner = self.inner.clone();
        let request = inner.next_request.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            layout: ENTRY_LAYOUT,
            origin: inner.origin,
            request,
            at_ms: now_ms(),
            change,
        };
        let bytes = postcard::to_allocvec(&entry).map_err(db)?;
        let (reply, outcome) = oneshot::channel();
        inner.waiters().insert(request, reply);
        // Checked once the waiter is in: an applier that stops later fails it.
        if let Some(why) = inner.stopped() {
            inner.waiters().remove(&request);
            return Err(db(format!("this replica stopped applying the log: {why}")));
        }
        let publish = {
            let inner = inner.clone();
            async move {
                inner.publish(request, bytes.into()).await?;
                outcome
                    .await
                    .map_err(|_| db("the applier stopped before applying the entry"))?
            }
        };
        let timed = async move {
            tokio::time::timeout(WRITE_TIMEOUT, publish)
                .await
                .map_err(|_| db("the cluster's log did not take the change in time"))?
        };
        let result = block_on(self.handle()?, timed).and_then(|r| r);
        if result.is_err() {
            self.inner.waiters().remove(&request);
        }
        result
    }
}

impl Inner {
    /// Publishes the entry of write `request` until JetStream acknowledges it. A NATS server
    /// that dies, or a stream leader that moves, fails a publish for a moment: it is tried
    /// again, under the same message id, so JetStream keeps one copy if an earlier try was
    /// stored after all (its duplicate window is two minutes, the write's bound ten seconds).
    async fn publish(&self, request: u64, payload: bytes::Bytes) -> Result<(), StoreError> {
        let id = format!("{:016x}-{request}", self.origin);
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let tried = match self
                .js
                .publish_with_headers(self.subject.clone(), headers, payload.clone())
                .await
            {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match tried {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(cause = %e, "the log did not take an entry; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Outcome, StoreError>>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies one entry at `position` to the replica; `Err` only if the replica failed.
    fn apply(&self, position: u64, entry: Entry) -> Result<(), StoreError> {
        let local = &self.local;
        local.applying(position, entry.at_ms);
        let outcome = match entry.change {
            Change::Names {
                bindings,
                seen,
                naming,
            } => Outcome::Names(local.update_names(&bindings, &seen, naming)?),
            Change::Deposits { mail, quota } => {
                let results = local.deposit_batch(&mail, quota)?;
                for (m, r) in mail.iter().zip(&results) {
                    if r.is_ok() {
                        let _ = self.changes.send(Applied::Mail(m.to().clone()));
                    }
                }
                Outcome::Deposits(results)
            }
            Change::Removals { entries, quota } => {
                let woken = local.remove_batch(&entries, quota)?;
                for sender in woken.iter().flatten() {
                    let _ = self.changes.send(Applied::Mail(sender.clone()));
                }
                Outcome::Removals(woken)
            }
            Change::RoomOp(op) => match local.append_room_op(&op) {
                Err(StoreError::Db(e)) => return Err(StoreError::Db(e)),
                other => {
                    if other.is_ok() {
                        let mine = entry.origin == self.origin;
                        let op = Box::new(op);
                        let _ = self.changes.send(Applied::RoomOp { op, mine });
                    }
                    Outcome::RoomOp(other)
                }
            },
        };
        if entry.origin == self.origin {
            if let Some(waiter) = self.waiters().remove(&entry.request) {
                let _ = waiter.send(Ok(outcome));
            }
        }
        Ok(())
    }

    /// Marks the replica stopped, and fails every write waiting on it.
    fn stop(&self, why: String) {
        tracing::error!("this directory node stopped applying the cluster's log: {why}");
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
        for (_, waiter) in self.waiters().drain() {
            let _ = waiter.send(Err(db(&why)));
        }
        // Wakes whoever waits for a position (a node catching up when it starts).
        self.applied.send_modify(|_| {});
    }
}

/// Runs `future` on `handle` and blocks the calling thread until it is done. Unlike
/// `Handle::block_on`, it may be called from a thread of another runtime.
fn block_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    future: impl Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().map_err(|_| db("the store's runtime stopped"))
}

/// `attempt` until it succeeds, each try bounded by [`WRITE_TIMEOUT`], half a second apart,
/// until `deadline`: then the last reason it failed.
async fn retried<T, F, Fut>(deadline: tokio::time::Instant, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    loop {
        let why = match tokio::time::timeout(WRITE_TIMEOUT, attempt()).await {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(why)) => why,
            Err(_) => "JetStream did not answer".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(why);
        }
        tracing::info!("waiting for JetStream: {why}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Connects, makes sure the stream exists, opens the replica at `replica` (loading the newest
/// snapshot first if the log was compacted past it), starts the applier and the compaction,
/// and waits until the replica has applied what the stream held when it started.
async fn start(
    servers: &[String],
    log: &LogConfig,
    replica: &Path,
) -> Result<Arc<Inner>, StoreError> {
    let client = async_nats::ConnectOptions::new()
        .name("directory")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await
        .map_err(|e| db(format!("cannot reach NATS at {}: {e}", servers.join(","))))?;
    let js = jetstream::new(client.clone());
    let subject = format!("directory.{}.log", log.stream);
    let config = stream::Config {
        name: log.stream.clone(),
        subjects: vec![subject.clone()],
        num_replicas: log.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    // A NATS cluster that is starting has no JetStream leader for a few seconds, and a stream
    // just made may not answer for its state at once: retry both.
    let deadline = tokio::time::Instant::now() + JETSTREAM_START;
    let open = || async {
        let mut stream = js
            .get_or_create_stream(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        let state = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .clone();
        Ok::<_, String>((stream, state))
    };
    let (mut stream, _) = (retried(deadline, open).await)
        .map_err(|why| db(format!("cannot open the log's stream: {why}")))?;
    let origin = rand::random();
    let key = compaction::replica_key(replica).map_err(db)?;
    // The same for the snapshots' stores: a NATS server restarting may still be electing.
    let snapshots = retried(deadline, || Snapshots::open(&js, log, key))
        .await
        .map_err(db)?;
    let mut local = open_replica(replica).await?;
    let mut position = local.log_position()?;
    // Said before the log's start is read: from now on no compaction purges past this node
    // (nor past the snapshot it loads, which is newer).
    report(&snapshots, position).await;
    let mut rounds = 0;
    let state = loop {
        let state = stream.info().await.map_err(db)?.state.clone();
        if position + 1 >= state.first_sequence {
            break state;
        }
        // Another node may have compacted past the snapshot loaded before it wrote its
        // position: a few rounds at most.
        rounds += 1;
        if rounds > 3 {
            return Err(db(format!(
                "the log starts at {}, past the newest snapshot ({position})",
                state.first_sequence
            )));
        }
        tracing::info!(
            position,
            first = state.first_sequence,
            "the log was compacted past this replica; loading the newest snapshot"
        );
        drop(local);
        let loaded = snapshots
            .load(replica, state.first_sequence - 1)
            .await
            .map_err(|e| db(format!("cannot start from a snapshot: {e}")))?;
        local = open_replica(replica).await?;
        position = local.log_position()?;
        if position != loaded {
            return Err(db(format!(
                "snapshot {loaded} holds position {position}: it is not a replica of this log"
            )));
        }
        report(&snapshots, position).await;
    };
    if position > state.last_sequence {
        return Err(db(format!(
            "this replica has applied {position} entries, but the log holds {}: it belongs to \
             another log (was the stream deleted?); move replica.redb away to start it afresh",
            state.last_sequence
        )));
    }
    let (applied, mut watch_applied) = watch::channel(position);
    let inner = Arc::new(Inner {
        local: local.clone(),
        js,
        stream: log.stream.clone(),
        subject,
        origin,
        next_request: AtomicU64::new(0),
        waiters: Mutex::new(HashMap::new()),
        stopped: Mutex::new(None),
        applied,
        changes: broadcast::channel(CHANGES_QUEUE).0,
        snapshots: snapshots.clone(),
        heads: Heads::default(),
    });
    let positions = inner.applied.subscribe();
    let every = REPORT_EVERY.min(log.compact_check);
    tokio::spawn(report_position(snapshots.clone(), positions, every));
    if log.compact_after > 0 {
        let path = replica.to_path_buf();
        let compaction = keep_short(snapshots, stream.clone(), local, path, log.clone());
        tokio::spawn(compaction);
    }
    tokio::spawn(follow(inner.clone(), stream, client));
    let end = state.last_sequence;
    if end > position {
        tracing::info!(
            from = position,
            to = end,
            "catching up with the cluster's log"
        );
    }
    watch_applied
        .wait_for(|&at| at >= end || inner.stopped().is_some())
        .await
        .map_err(db)?;
    if let Some(why) = inner.stopped() {
        return Err(db(why));
    }
    Ok(inner)
}

/// Writes this node's `position` (see [`super::compaction`]); a failure only lets the log be
/// compacted with less care for this node, and is logged.
async fn report(snapshots: &Snapshots, position: u64) {
    if let Err(e) = snapshots.report(position).await {
        tracing::warn!(cause = %e, "cannot record this node's position in the log");
    }
}

/// Opens the replica at `path` (a blocking open: redb checks the file).
async fn open_replica(path: &Path) -> Result<Arc<RedbStore>, StoreError> {
    let path = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || RedbStore::open(&path)).await;
    Ok(Arc::new(opened.map_err(db)??))
}

/// Follows the log from the entry after the last applied, for good: a consumer that goes
/// quiet (no heartbeat for two seconds: the NATS server holding it died, the connection moved)
/// or fails is replaced by a new one from where the replica stands. async-nats's ordered
/// consumer does the same, but notices only after 10 s and may start again from the
/// beginning; a write waits for its own entry, so the follower must be back within seconds.
async fn follow(inner: Arc<Inner>, stream: stream::Stream, client: async_nats::Client) {
    loop {
        let from = *inner.applied.borrow() + 1;
        let config = push::Config {
            deliver_subject: client.new_inbox(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ack_policy: jetstream::consumer::AckPolicy::None,
            flow_control: true,
            idle_heartbeat: FOLLOW_HEARTBEAT,
            memory_storage: true,
            num_replicas: 1,
            // The server drops a consumer nobody follows any more (one this node replaced).
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(consumer) => consumer.messages().await.map_err(db),
            Err(e) => Err(db(e)),
        };
        match messages {
            Ok(messages) => {
                if let Err(why) = apply_all(&inner, messages).await {
                    return inner.stop(why);
                }
            }
            Err(e) => tracing::debug!(from, "cannot follow the log yet: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The applier: applies what `messages` delivers, in order, each entry on a blocking thread
/// (redb commits wait for the disk), until the consumer goes quiet or fails (`Ok`:
/// follow again) or the replica cannot go on (`Err`, why).
async fn apply_all(inner: &Arc<Inner>, mut messages: push::Messages) -> Result<(), String> {
    while let Some(message) = messages.next().await {
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                tracing::info!("following the log again: {e}");
                return Ok(());
            }
        };
        let position = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => return Err(format!("a log entry without a position: {e}")),
        };
        let applied = *inner.applied.borrow();
        if position <= applied {
            // Delivered again (the consumer was made anew after a reconnection).
            continue;
        }
        if position != applied + 1 {
            return Err(format!(
                "entries {} to {} are missing from the log (compacted while this node was \
                 cut off?): start the node again to load the newest snapshot",
                applied + 1,
                position - 1
            ));
        }
        // An entry this node cannot read cannot be skipped either: the other replicas apply it.
        let entry = match postcard::from_bytes::<Entry>(&message.payload) {
            Ok(entry) if entry.layout == ENTRY_LAYOUT => entry,
            Ok(entry) => {
                return Err(format!(
                    "entry {position} has layout {}, this node reads {ENTRY_LAYOUT}: upgrade it",
                    entry.layout
                ))
            }
            Err(e) => return Err(format!("entry {position} does not decode: {e}")),
        };
        let applier = inner.clone();
        let applied = tokio::task::spawn_blocking(move || applier.apply(position, entry)).await;
        match applied {
            Ok(Ok(())) => {
                inner.applied.send_replace(position);
            }
            Ok(Err(e)) => return Err(format!("entry {position}: {e}")),
            Err(e) => return Err(format!("entry {position}: {e}")),
        }
    }
    // The subscription ended (the connection closed for good, or the store is closing).
    Ok(())
}

/// Splits `mail` into runs of at most [`MAX_ENTRY_MAIL`] bytes (at least one mail each).
fn chunks(mail: &[Mail]) -> Vec<&[Mail]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in mail.iter().enumerate() {
        let size = m.size();
        if i > start && bytes + size > MAX_ENTRY_MAIL {
            out.push(&mail[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < mail.len() {
        out.push(&mail[start..]);
    }
    out
}

fn unexpected(outcome: Outcome) -> StoreError {
    db(format!("the log answered a change with {outcome:?}"))
}

impl Store for JetStreamStore {
    /// Waits, at most [`CATCH_UP_TIMEOUT`], until this replica has applied the log up to its
    /// last entry as JetStream reports it after the call ([`Heads`]).
    fn catch_up(&self) -> futures::future::BoxFuture<'static, Result<(), StoreError>> {
        let handle = match self.handle() {
            Ok(handle) => handle.clone(),
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let inner = self.inner.clone();
        Box::pin(async move {
            let wait = async {
                let head = Heads::ask(&inner, &handle).await?;
                let mut applied = inner.applied.subscribe();
                applied.wait_for(|&at| at >= head).await.map_err(db)?;
                Ok(())
            };
            tokio::time::timeout(CATCH_UP_TIMEOUT, wait)
                .await
                .map_err(|_| db("this replica did not catch up with the log in time"))?
        })
    }

    /// The log's state is asked of JetStream, for at most [`STATUS_TIMEOUT`].
    fn log_status(&self) -> Option<futures::future::BoxFuture<'static, LogStatus>> {
        let handle = self.handle().ok()?.clone();
        let inner = self.inner.clone();
        Some(Box::pin(async move {
            // Read before the log's state, so that the log never shows behind this replica.
            let applied = *inner.applied.borrow();
            let (js, stream) = (inner.js.clone(), inner.stream.clone());
            // Timed out on the store's runtime, so that the question ends with the scrape.
            let ask = handle.spawn(async move {
                let info = tokio::time::timeout(STATUS_TIMEOUT, js.get_stream(&stream));
                let stream = info.await.ok()?.ok()?;
                let state = &stream.cached_info().state;
                Some(LogState {
                    first: state.first_sequence,
                    last: state.last_sequence,
                    entries: state.messages,
                })
            });
            let stats = &inner.snapshots.stats;
            LogStatus {
                applied,
                log: ask.await.ok().flatten(),
                compactions: stats.compactions.load(Ordering::Relaxed),
                compaction_failures: stats.failures.load(Ordering::Relaxed),
                snapshot_bytes: stats.snapshot_bytes.load(Ordering::Relaxed),
            }
        }))
    }

    fn update_names(
        &self,
        bindings: &[Binding],
        seen: &[(Name, u64)],
        naming: Naming,
    ) -> Result<Vec<Result<Bind, StoreError>>, StoreError> {
        let change = Change::Names {
            bindings: bindings.to_vec(),
            seen: seen.to_vec(),
            naming,
        };
        match self.write(change)? {
            Outcome::Names(results) => Ok(results),
            other => Err(unexpected(other)),
        }
    }

    fn name(&self, name: &Name) -> Result<Option<NameRecord>, StoreError> {
        self.inner.local.name(name)
    }

    fn is_bound(&self, name: &Name) -> Result<bool, StoreError> {
        self.inner.local.is_bound(name)
    }

    fn deposit_batch(
        &self,
        mail: &[Mail],
        quota: Quota,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        // The disk checked is this node's; replicas apply the entry whatever theirs holds.
        if self.inner.local.free_disk()? < quota.min_free_disk {
            tracing::warn!("the disk is nearly full; refusing deposits");
            return Ok(vec![Err(StoreError::StoreFull); mail.len()]);
        }
        let quota = Quota {
            min_free_disk: 0,
            ..quota
        };
        let mut results = Vec::with_capacity(mail.len());
        for chunk in chunks(mail) {
            let change = Change::Deposits {
                mail: chunk.to_vec(),
                quota,
            };
            match self.write(change)? {
                Outcome::Deposits(r) => results.extend(r),
                other => return Err(unexpected(other)),
            }
        }
        Ok(results)
    }

    fn pending(
        &self,
        recipient: &Name,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        self.inner.local.pending(recipient, after, limit)
    }

    fn remove_batch(
        &self,
        entries: &[Removal],
        quota: Quota,
    ) -> Result<Vec<Option<Name>>, StoreError> {
        let change = Change::Removals {
            entries: entries.to_vec(),
            quota,
        };
        match self.write(change)? {
            Outcome::Removals(woken) => Ok(woken),
            other => Err(unexpected(other)),
        }
    }

    fn queued_from(&self, recipient: &Name, sender: &Name) -> Result<u32, StoreError> {
        self.inner.local.queued_from(recipient, sender)
    }

    fn lookup(&self, name: &Name, asker: &Name) -> Result<Option<(NameRecord, u32)>, StoreError> {
        self.inner.local.lookup(name, asker)
    }

    fn usage(&self, recipient: &Name) -> Result<(u64, u64), StoreError> {
        self.inner.local.usage(recipient)
    }

    fn sender_usage(&self, recipient: &Name, sender: &Name) -> Result<(u64, u64), StoreError> {
        self.inner.local.sender_usage(recipient, sender)
    }

    fn held_bytes(&self) -> Result<u64, StoreError> {
        self.inner.local.held_bytes()
    }

    fn held_entries(&self) -> Result<u64, StoreError> {
        self.inner.local.held_entries()
    }

    fn append_room_op(&self, op: &Op) -> Result<(), StoreError> {
        match self.write(Change::RoomOp(op.clone()))? {
            Outcome::RoomOp(result) => result,
            other => Err(unexpected(other)),
        }
    }

    fn room_ops(
        &self,
        room: &RoomName,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Op>, StoreError> {
        self.inner.local.room_ops(room, after, limit)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::suite::{self, chat, name, TestResult};
    use std::{
        io::{BufRead, BufReader},
        process::{Child, Command, Stdio},
    };

    /// `nats-server`s with JetStream on free loopback ports, routed to each other when there
    /// are several, each storing in a folder of its own; stopped on drop.
    pub(crate) struct Nats {
        servers: Vec<Server>,
        /// `nats://127.0.0.1:PORT` of the first.
        pub(crate) url: String,
        dir: tempfile::TempDir,
    }

    struct Server {
        child: Option<Child>,
        client: u16,
        route: u16,
    }

    impl Drop for Nats {
        fn drop(&mut self) {
            for i in 0..self.servers.len() {
                self.kill(i);
            }
        }
    }

    /// A TCP port on loopback that is free now, below the kernel's range of ephemeral ports:
    /// the connections the servers open (routes to a server not up yet, or reconnecting)
    /// take their local ports from that range, and took a port picked there before its
    /// server could bind it (CI: "n2 was not ready").
    fn free_port() -> std::io::Result<u16> {
        let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let span = ephemeral.saturating_sub(10_000).max(1);
        for _ in 0..1000 {
            let port = 10_000 + rand::random::<u16>() % span;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }

    impl Nats {
        /// `nats://127.0.0.1:PORT` of each server.
        pub(crate) fn urls(&self) -> Vec<String> {
            let url = |s: &Server| format!("nats://127.0.0.1:{}", s.client);
            self.servers.iter().map(url).collect()
        }

        /// Kills server `i` (-9).
        pub(crate) fn kill(&mut self, i: usize) {
            if let Some(mut child) = self.servers[i].child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// Starts server `i`, on its ports and its storage, and waits until it is ready.
        pub(crate) fn start(&mut self, i: usize) -> Result<(), Box<dyn std::error::Error>> {
            let routes = (self.servers.iter())
                .map(|s| format!("nats://127.0.0.1:{}", s.route))
                .collect::<Vec<_>>()
                .join(",");
            let server = &self.servers[i];
            let mut command = Command::new("nats-server");
            command
                .args(["-a", "127.0.0.1", "-p", &server.client.to_string(), "-js"])
                .arg("-sd")
                .arg(self.dir.path().join(format!("n{i}")))
                .args(["-n", &format!("n{i}")]);
            if self.servers.len() > 1 {
                command
                    .args(["--cluster_name", "test", "--cluster"])
                    .arg(format!("nats://127.0.0.1:{}", server.route))
                    .args(["--routes", &routes]);
            }
            let mut child = command
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            let stderr = child.stderr.take().ok_or("no stderr")?;
            let (ready, is_ready) = std::sync::mpsc::channel();
            // Keeps draining its log, or the server blocks once the pipe is full; a server
            // that exits sends its last line.
            std::thread::spawn(move || {
                let mut last = String::new();
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("Server is ready") {
                        let _ = ready.send(Ok(()));
                    }
                    last = line;
                }
                let _ = ready.send(Err(last));
            });
            self.servers[i].child = Some(child);
            // A loaded machine (CI runs many tests at once) can be slow to elect JetStream's
            // leaders: a minute.
            match is_ready.recv_timeout(Duration::from_secs(60)) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(last)) => Err(format!("nats-server n{i} exited: {last}").into()),
                Err(_) => Err(format!("nats-server n{i} was not ready in 60 s").into()),
            }
        }
    }

    /// Starts one server, or says loudly why not: `None` without `nats-server` on the PATH,
    /// which fails the test when `CI=true` (CI installs it).
    pub(crate) fn nats() -> Result<Option<Nats>, Box<dyn std::error::Error>> {
        nats_cluster(1)
    }

    /// [`nats`] with `n` servers in one NATS cluster.
    pub(crate) fn nats_cluster(n: usize) -> Result<Option<Nats>, Box<dyn std::error::Error>> {
        match Command::new("nats-server").arg("--version").output() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    return Err("nats-server is not installed, and CI=true".into());
                }
                eprintln!("SKIPPED: nats-server is not installed (.ci/run installs it)");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        // Another process may take a port between its pick and its server's start: a few
        // tries, each on new ports.
        let mut why = None;
        for _ in 0..3 {
            let servers = (0..n)
                .map(|_| {
                    Ok(Server {
                        child: None,
                        client: free_port()?,
                        route: free_port()?,
                    })
                })
                .collect::<std::io::Result<Vec<_>>>()?;
            let url = format!("nats://127.0.0.1:{}", servers[0].client);
            let mut nats = Nats {
                servers,
                url,
                dir: tempfile::tempdir()?,
            };
            match (0..n).try_for_each(|i| nats.start(i)) {
                Ok(()) => return Ok(Some(nats)),
                Err(e) => why = Some(e),
            }
        }
        Err(why.unwrap_or_else(|| "no try".into()))
    }

    fn log(stream: &str) -> LogConfig {
        LogConfig {
            stream: stream.replace(['.', '_'], "-"),
            compact_after: 0,
            ..LogConfig::default()
        }
    }

    #[test]
    fn passes_the_store_suite() -> TestResult {
        let Some(nats) = nats()? else { return Ok(()) };
        let dir = tempfile::tempdir()?;
        suite::all(|store| {
            let replica = dir.path().join(format!("{store}.redb"));
            JetStreamStore::open(std::slice::from_ref(&nats.url), &log(store), &replica)
        })
    }

    /// The store suite again, on a NATS cluster of three servers keeping the log in three
    /// replicas (Raft), as a cluster in production does.
    #[test]
    fn passes_the_store_suite_on_three_nats_servers() -> TestResult {
        let Some(nats) = nats_cluster(3)? else {
            return Ok(());
        };
        let dir = tempfile::tempdir()?;
        suite::all(|store| {
            let replica = dir.path().join(format!("{store}.redb"));
            let config = LogConfig {
                replicas: 3,
                ..log(store)
            };
            JetStreamStore::open(&nats.urls(), &config, &replica)
        })
    }

    /// Three NATS servers, the log in three replicas: one server killed, the log goes on (once
    /// JetStream has a leader again); started again and another killed, the log goes on with
    /// the restarted one in the majority, so it holds every entry again. A node started
    /// last, from an empty replica, replays all of them.
    #[test]
    fn the_log_outlives_nats_servers_killed_in_turn() -> TestResult {
        let Some(mut nats) = nats_cluster(3)? else {
            return Ok(());
        };
        let dir = tempfile::tempdir()?;
        let config = LogConfig {
            replicas: 3,
            ..log("turns")
        };
        let a = JetStreamStore::open(&nats.urls(), &config, &dir.path().join("a.redb"))?;
        let naming = Naming::default();
        let mut bound = Vec::new();
        let mut bind = |store: &JetStreamStore, i: u8| -> TestResult {
            let n = name(&format!("n{i}"));
            // A write fails while JetStream elects leaders after a server died (seconds to
            // tens of seconds); try again for a minute.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                match store.bind(&n, &common::KeyId([i; 32]), 1, naming) {
                    Ok(_) => break,
                    Err(e) if std::time::Instant::now() > deadline => return Err(e.into()),
                    Err(_) => {}
                }
            }
            bound.push(n);
            Ok(())
        };
        for i in 0..10 {
            bind(&a, i)?;
        }
        nats.kill(0);
        for i in 10..20 {
            bind(&a, i)?;
        }
        nats.start(0)?;
        nats.kill(1);
        for i in 20..30 {
            bind(&a, i)?;
        }
        let fresh = JetStreamStore::open(&nats.urls(), &config, &dir.path().join("b.redb"))?;
        for n in &bound {
            assert!(
                fresh.is_bound(n)?,
                "{n} missing on a node that replayed the log"
            );
        }
        // A write that timed out while no leader answered may have been stored after all, and
        // was tried again: more entries than names, the same on both nodes.
        a.sync_catch_up()?;
        assert_eq!(fresh.applied(), a.applied());
        assert!(fresh.applied() >= 30);
        Ok(())
    }

    /// Two nodes on one log: a change made on one is applied by the other, which wakes the
    /// recipient there; a name bound on one is refused to another key on the other; and a
    /// node started later, with an empty replica, replays the log to the same state.
    #[test]
    fn nodes_on_one_log_hold_the_same_data() -> TestResult {
        let Some(nats) = nats()? else { return Ok(()) };
        let dir = tempfile::tempdir()?;
        let open = |node: &str| {
            JetStreamStore::open(
                std::slice::from_ref(&nats.url),
                &log("two"),
                &dir.path().join(node),
            )
        };
        let (a, b) = (open("a.redb")?, open("b.redb")?);
        let mut changes_on_b = b.changes();
        let naming = Naming::default();
        let alice = common::KeyId([1; 32]);
        assert_eq!(a.bind(&name("alice"), &alice, 1, naming)?, Bind::New);
        assert_eq!(
            b.bind(&name("alice"), &common::KeyId([2; 32]), 2, naming),
            Err(StoreError::NameTaken)
        );
        b.bind(&name("bob"), &common::KeyId([3; 32]), 3, naming)?;
        // Once caught up, a node has every write another acknowledged before: a burst of
        // names bound on b, each found on a at once.
        for i in 0..20 {
            let carol = name(&format!("carol{i}"));
            b.bind(&carol, &common::KeyId([10 + i; 32]), 4, naming)?;
            a.sync_catch_up()?;
            assert!(a.is_bound(&carol)?, "carol{i} bound on b, caught up on a");
        }
        let mail = Mail::Chat(chat("alice", "bob", "hello"));
        a.deposit_batch(std::slice::from_ref(&mail), Quota::default())?[0].clone()?;
        let woken = block_on(a.handle()?, async move {
            tokio::time::timeout(Duration::from_secs(5), changes_on_b.recv()).await
        })?;
        let woken = match woken?.map_err(|e| e.to_string())? {
            Applied::Mail(name) => name,
            other => return Err(format!("not mail: {other:?}").into()),
        };
        assert_eq!(woken, name("bob"));
        let held = b.pending(&name("bob"), None, 10)?;
        assert_eq!(held.iter().map(|s| &s.mail).collect::<Vec<_>>(), [&mail]);
        assert_eq!(b.name(&name("alice"))?.map(|r| r.key), Some(alice));
        let c = open("c.redb")?;
        assert_eq!(c.applied(), a.applied());
        assert_eq!(c.pending(&name("bob"), None, 10)?, held);
        assert_eq!(c.name(&name("alice"))?, a.name(&name("alice"))?);
        Ok(())
    }

    impl JetStreamStore {
        fn sync_catch_up(&self) -> Result<(), StoreError> {
            block_on(self.handle()?, self.catch_up())?
        }
    }

    /// Many callers at once share the questions to JetStream, and each is answered with a
    /// head asked after it came: all see a write acknowledged before they asked.
    #[test]
    fn catching_up_shares_the_questions() -> TestResult {
        let Some(nats) = nats()? else { return Ok(()) };
        let dir = tempfile::tempdir()?;
        let servers = std::slice::from_ref(&nats.url);
        let a = JetStreamStore::open(servers, &log("heads"), &dir.path().join("a.redb"))?;
        let b = JetStreamStore::open(servers, &log("heads"), &dir.path().join("b.redb"))?;
        let naming = Naming::default();
        for i in 0..5u8 {
            b.bind(&name(&format!("n{i}")), &common::KeyId([i; 32]), 1, naming)?;
            let waits: Vec<_> = (0..200).map(|_| a.catch_up()).collect();
            block_on(a.handle()?, async move {
                futures::future::try_join_all(waits).await.map(drop)
            })??;
            assert!(a.is_bound(&name(&format!("n{i}")))?, "n{i}");
        }
        // 5 rounds of 200 callers: a question in flight and one more for each round at most.
        let asked = a.inner.heads.state.lock().map_err(|e| e.to_string())?.asked;
        assert!((1..=10).contains(&asked), "asked JetStream {asked} times");
        Ok(())
    }

    /// A node's view of the log for its metrics: caught up after its writes, and the log's
    /// state missing, not waited for, once NATS is gone (the scrape still answers).
    #[test]
    fn the_log_status_says_where_the_node_stands() -> TestResult {
        let Some(mut nats) = nats()? else {
            return Ok(());
        };
        let dir = tempfile::tempdir()?;
        let servers = std::slice::from_ref(&nats.url);
        let a = JetStreamStore::open(servers, &log("status"), &dir.path().join("a.redb"))?;
        for i in 0..3u8 {
            a.bind(
                &name(&format!("n{i}")),
                &common::KeyId([i; 32]),
                1,
                Naming::default(),
            )?;
        }
        // A write returns once its entry is applied, a moment before the position it applied
        // is published: catch up with the log first.
        let caught_up = a.catch_up();
        block_on(a.handle()?, caught_up)??;
        let status = a.log_status().ok_or("a cluster node has a log")?;
        let status = block_on(a.handle()?, status)?;
        let log = status.log.ok_or("JetStream did not answer")?;
        assert_eq!(
            (status.applied, log.first, log.last, log.entries),
            (3, 1, 3, 3)
        );
        assert_eq!((status.compactions, status.compaction_failures), (0, 0));
        nats.kill(0);
        let started = std::time::Instant::now();
        let status = a.log_status().ok_or("a cluster node has a log")?;
        let status = block_on(a.handle()?, status)?;
        assert_eq!((status.applied, status.log), (3, None));
        assert!(started.elapsed() < STATUS_TIMEOUT + Duration::from_secs(3));
        Ok(())
    }

    /// The first entry the log of `stream` holds now.
    fn first_entry(url: &str, stream: &str) -> Result<u64, Box<dyn std::error::Error>> {
        let runtime = tokio::runtime::Runtime::new()?;
        let first = runtime.block_on(async {
            let js = jetstream::new(async_nats::connect(url).await?);
            let mut stream = js.get_stream(stream).await?;
            let info = stream.info().await?;
            Ok::<_, Box<dyn std::error::Error>>(info.state.first_sequence)
        })?;
        Ok(first)
    }

    /// Polls the start of the log of `stream` until `done` says yes, at most 20 s.
    fn wait_for_first(
        url: &str,
        stream: &str,
        done: impl Fn(u64) -> bool,
    ) -> Result<u64, Box<dyn std::error::Error>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let first = first_entry(url, stream)?;
            if done(first) {
                return Ok(first);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("the log still starts at {first}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Compaction: a node stores a snapshot and purges the log up to it, but not past a live
    /// node's position; a node started afterwards with an empty replica starts from the
    /// snapshot and then follows the log, with the same data as the first.
    #[test]
    fn a_compacted_log_starts_new_nodes_from_a_snapshot() -> TestResult {
        let Some(nats) = nats()? else { return Ok(()) };
        let dir = tempfile::tempdir()?;
        let servers = std::slice::from_ref(&nats.url);
        let mut config = log("compact");
        let a_replica = dir.path().join("a.redb");
        let naming = Naming::default();
        let a = JetStreamStore::open(servers, &config, &a_replica)?;
        for i in 0..30 {
            a.bind(&name(&format!("n{i}")), &common::KeyId([i; 32]), 1, naming)?;
        }
        let mail = Mail::Chat(chat("n0", "n1", "kept through a snapshot"));
        a.deposit_batch(std::slice::from_ref(&mail), Quota::default())?[0].clone()?;
        a.sync_catch_up()?;
        assert_eq!(a.applied(), 31);
        // A live node that has applied 8 entries holds the rest back.
        let runtime = tokio::runtime::Runtime::new()?;
        let behind = runtime.block_on(async {
            let js = jetstream::new(async_nats::connect(&nats.url).await?);
            let behind = Snapshots::open(&js, &config, 0xbe).await?;
            behind.report(8).await?;
            Ok::<_, Box<dyn std::error::Error>>(behind)
        })?;
        drop(a);
        config.compact_after = 10;
        config.compact_check = Duration::from_millis(100);
        let a = JetStreamStore::open(servers, &config, &a_replica)?;
        assert_eq!(wait_for_first(&nats.url, "compact", |f| f > 1)?, 9);
        // Once it is gone (here: its key deleted; else it expires), the log goes.
        runtime.block_on(behind.leave())?;
        assert_eq!(wait_for_first(&nats.url, "compact", |f| f > 9)?, 32);

        let b = JetStreamStore::open(servers, &config, &dir.path().join("b.redb"))?;
        assert_eq!(b.applied(), 31);
        for i in 0..30 {
            let n = name(&format!("n{i}"));
            assert_eq!(b.name(&n)?, a.name(&n)?, "n{i}");
        }
        let held = b.pending(&name("n1"), None, 10)?;
        assert_eq!(held.iter().map(|s| &s.mail).collect::<Vec<_>>(), [&mail]);
        // The log goes on after the purge, on both.
        b.bind(&name("late"), &common::KeyId([99; 32]), 2, naming)?;
        a.sync_catch_up()?;
        assert!(a.is_bound(&name("late"))?);
        Ok(())
    }

    /// A replica that applied entries of one log is refused by another (a stream deleted and
    /// made again): applying that log's entries from the start would skip them all.
    #[test]
    fn a_replica_of_another_log_is_refused() -> TestResult {
        let Some(nats) = nats()? else { return Ok(()) };
        let dir = tempfile::tempdir()?;
        let replica = dir.path().join("node.redb");
        let servers = std::slice::from_ref(&nats.url);
        let first = JetStreamStore::open(servers, &log("first"), &replica)?;
        first.bind(
            &name("alice"),
            &common::KeyId([1; 32]),
            1,
            Naming::default(),
        )?;
        drop(first);
        let refused = JetStreamStore::open(servers, &log("second"), &replica);
        match refused {
            Err(StoreError::Db(why)) if why.contains("another log") => Ok(()),
            other => Err(format!("opened: {other:?}").into()),
        }
    }

    /// An upgraded node replays the log that older nodes wrote, and nodes of two versions
    /// share a log during an upgrade: an entry keeps its bytes for its [`ENTRY_LAYOUT`]. A
    /// change to any record in it (a binding, mail, a quota) needs a new layout, and a way to
    /// read the old one.
    #[test]
    fn entries_keep_their_bytes() {
        use common::{
            room::{Action, RoomName},
            seal::{PublishedKey, Signature},
            wire::{Letter, LetterKind, MessageId},
        };
        // Times and sizes above u32::MAX, so that a u64 made narrower shows.
        let (late, later) = (5_000_000_000, 6_000_000_000);
        let (late_hex, later_hex) = ("80e497d012", "80f882ad16");
        let entry = |change| Entry {
            layout: ENTRY_LAYOUT,
            origin: 9,
            request: 10,
            at_ms: late,
            change,
        };
        let quota = Quota {
            max_messages: 1,
            max_bytes: 2,
            sender_messages: 3,
            sender_bytes: 4,
            total_bytes: later,
            min_free_disk: 6,
        };
        let names = Change::Names {
            bindings: vec![Binding {
                name: name("c1"),
                key: common::KeyId([7; 32]),
                at_ms: later,
                published: Some(PublishedKey {
                    identity: [4; 32],
                    encryption: [5; 32],
                    signature: Signature([6; 64]),
                }),
            }],
            seen: vec![(name("c2"), 300)],
            naming: Naming {
                names_per_key: 4,
                expiry_ms: 1000,
            },
        };
        let letter = Letter {
            id: MessageId([1; 16]),
            from: name("c1"),
            to: name("c2"),
            sent_at_ms: 300,
            kind: LetterKind::Chat,
            encapped: [2; 32],
            sealed: vec![3; 4],
        };
        let deposits = Change::Deposits {
            mail: vec![Mail::Letter(letter)],
            quota,
        };
        let removals = Change::Removals {
            entries: vec![Removal {
                recipient: name("c2"),
                seq: 5,
                proof: Some(super::super::Taken {
                    signer: [8; 32],
                    signature: Signature([9; 64]),
                }),
            }],
            quota,
        };
        let op = Op {
            room: RoomName::new(name("room")),
            version: late,
            prev: [10; 32],
            actor: name("c1"),
            actor_key: [11; 32],
            at_ms: 300,
            action: Action::Invite {
                name: name("c2"),
                key: common::KeyId([12; 32]),
            },
            signature: Signature([13; 64]),
        };
        let head = format!("01 09 0a {late_hex}");
        let quota = format!("01 02 03 04 {later_hex} 06");
        let bytes = |byte: &str, n: usize| byte.repeat(n);
        let cases = [
            (
                names,
                format!(
                    "{head} 00 01 026331 {} {later_hex} 01 {} {} {} 01 026332 ac02 04 e807",
                    bytes("07", 32),
                    bytes("04", 32),
                    bytes("05", 32),
                    bytes("06", 64)
                ),
            ),
            (
                deposits,
                format!(
                    "{head} 01 01 03 {} 026331 026332 ac02 00 {} 04 03030303 {quota}",
                    bytes("01", 16),
                    bytes("02", 32)
                ),
            ),
            (
                removals,
                format!(
                    "{head} 02 01 026332 05 01 {} {} {quota}",
                    bytes("08", 32),
                    bytes("09", 64)
                ),
            ),
            (
                Change::RoomOp(op),
                format!(
                    "{head} 03 04726f6f6d {late_hex} {} 026331 {} ac02 02 026332 {} {}",
                    bytes("0a", 32),
                    bytes("0b", 32),
                    bytes("0c", 32),
                    bytes("0d", 64)
                ),
            ),
        ];
        for (change, want) in cases {
            let bytes = postcard::to_allocvec(&entry(change)).expect("encode");
            assert_eq!(hex::encode(&bytes), want.replace(' ', ""));
            let back = postcard::from_bytes::<Entry>(&bytes).expect("decode");
            assert_eq!(postcard::to_allocvec(&back).expect("encode"), bytes);
        }
    }

    /// An entry a node cannot read stops it: writes fail with the reason instead of the
    /// replica going on without the entry, and a node that starts on that log refuses to
    /// start rather than wait for an entry it will never apply.
    #[test]
    fn an_entry_that_does_not_decode_stops_the_replica() -> TestResult {
        let Some(nats) = nats()? else { return Ok(()) };
        let dir = tempfile::tempdir()?;
        let servers = std::slice::from_ref(&nats.url);
        let a = JetStreamStore::open(servers, &log("junk"), &dir.path().join("a.redb"))?;
        let url = nats.url.clone();
        block_on(a.handle()?, async move {
            let client = async_nats::connect(url).await.map_err(db)?;
            let js = jetstream::new(client);
            let ack = js.publish("directory.junk.log", "not an entry".into());
            ack.await.map_err(db)?.await.map_err(db)?;
            Ok::<_, StoreError>(())
        })??;
        let write = a.bind(
            &name("alice"),
            &common::KeyId([1; 32]),
            1,
            Naming::default(),
        );
        match write {
            Err(StoreError::Db(why)) if why.contains("does not decode") => {}
            other => return Err(format!("a write after junk: {other:?}").into()),
        }
        match JetStreamStore::open(servers, &log("junk"), &dir.path().join("b.redb")) {
            Err(StoreError::Db(why)) if why.contains("does not decode") => Ok(()),
            other => Err(format!("a node started on it: {other:?}").into()),
        }
    }
}

//! One function per figure of the benchmark table. Each starts what it needs (a `directory`
//! process, in-process peers, raw clients), measures, tears everything down, and returns plain
//! numbers; repetition and summaries are the runner's job.

use crate::{cpu_time, quantile_us, request, rss_bytes, ClientPool, DirectoryProcess};
use anyhow::{anyhow, bail, Context, Result};
use common::{
    defaults::{ROOM_POSTS_BURST, ROOM_POSTS_PER_SECOND},
    framing, now_ms,
    seal::Content,
    wire::{
        ChatMessage, DirectoryEvent, DirectoryRequest, DirectoryResponse, EventAck, Letter, Mail,
        MessageId,
    },
    Identity, KeyId, Name,
};
use directory::store::{Quota, RedbStore, Store};
use peer::{
    home::Home,
    inbox::Event,
    node::{Node, Options},
};
use std::{
    io::{Seek, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::task::JoinSet;

/// How much of everything: the full run, or a quick smoke run that only proves it works.
#[derive(Debug, Clone)]
pub struct Params {
    pub rtt_count: usize,
    pub tput_count: usize,
    pub first_count: usize,
    pub lookup_conns: usize,
    pub lookup_streams: usize,
    pub lookup_window: Duration,
    pub presence_sizes: Vec<usize>,
    pub presence_heartbeat: Duration,
    pub presence_windows: usize,
    pub presence_window: Duration,
    pub mailbox_msgs: usize,
    pub mailbox_conns: usize,
    pub mailbox_streams: usize,
    pub bulk_bytes: u64,
    pub bulk_chat_msgs: usize,
    /// How long quinn-perf's client uploads, when it is run (`QUINN_PERF`).
    pub bulk_perf_secs: u64,
    pub fsync_count: usize,
    /// Members of the rooms figures' room, besides the sender.
    pub room_members: usize,
    pub room_latency_msgs: usize,
    pub room_burst: usize,
    pub room_deposit_msgs: usize,
    /// Deposits timed one at a time from one cluster node to a recipient on the other.
    pub cluster_deliveries: usize,
    /// Nodes killed, one after the other, for the failover figure.
    pub cluster_kills: usize,
    /// Entries in the log a new node starts on, replaying it or from a snapshot.
    pub cluster_log_entries: usize,
    /// Timed runs of each one-shot command.
    pub oneshot_runs: usize,
}

impl Params {
    pub fn full() -> Self {
        Self {
            rtt_count: 5000,
            tput_count: 50_000,
            first_count: 10,
            lookup_conns: 64,
            lookup_streams: 8,
            lookup_window: Duration::from_secs(4),
            presence_sizes: vec![1000, 10_000, 50_000, 100_000],
            presence_heartbeat: Duration::from_secs(10),
            presence_windows: 5,
            presence_window: Duration::from_secs(10),
            mailbox_msgs: 60_000,
            mailbox_conns: 32,
            mailbox_streams: 8,
            bulk_bytes: 1 << 30,
            bulk_chat_msgs: 2048,
            bulk_perf_secs: 4,
            fsync_count: 200,
            room_members: 50,
            room_latency_msgs: 200,
            // A member may post a burst of this many in a room (then 30 a second): the
            // figures measure the delivery, within the posting limit.
            room_burst: ROOM_POSTS_BURST as usize,
            room_deposit_msgs: ROOM_POSTS_BURST as usize,
            cluster_deliveries: 500,
            cluster_kills: 5,
            cluster_log_entries: 20_000,
            oneshot_runs: 30,
        }
    }

    pub fn smoke() -> Self {
        Self {
            rtt_count: 200,
            tput_count: 2000,
            first_count: 2,
            lookup_conns: 4,
            lookup_streams: 4,
            lookup_window: Duration::from_millis(500),
            presence_sizes: vec![20, 50],
            presence_heartbeat: Duration::from_secs(1),
            presence_windows: 2,
            presence_window: Duration::from_secs(1),
            mailbox_msgs: 300,
            mailbox_conns: 4,
            mailbox_streams: 4,
            bulk_bytes: 8 << 20,
            bulk_chat_msgs: 64,
            bulk_perf_secs: 1,
            fsync_count: 20,
            room_members: 50,
            room_latency_msgs: 20,
            room_burst: 20,
            room_deposit_msgs: 10,
            cluster_deliveries: 20,
            cluster_kills: 1,
            cluster_log_entries: 200,
            oneshot_runs: 3,
        }
    }
}

pub(crate) const BODY_100: &str = "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";

// ---------------------------------------------------------------------------------------------
// Peers in this process

/// How often the in-process peers heartbeat, unless a figure says otherwise.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// A running [`Node`] whose incoming messages are shown (and so acknowledged) at once.
pub struct PeerNode {
    pub node: Node,
    pub shown: Arc<AtomicU64>,
    _home: tempfile::TempDir,
}

/// A [`Node`] named `name` in a temporary home, online, on loopback, open to anyone (the
/// figures are for peers that know each other), with the directory at `addr` pinned to
/// `fingerprint`. Its events are the caller's to take: unread, they hold the node up.
async fn start_node(
    directory: String,
    fingerprint: KeyId,
    name: &str,
    heartbeat: Duration,
) -> Result<(Node, tokio::sync::mpsc::Receiver<Event>, tempfile::TempDir)> {
    let home = tempfile::Builder::new().prefix("bench-peer").tempdir()?;
    let name = Name::new(name)?;
    let options = Options {
        name: name.clone(),
        directory,
        home: Home::new(Some(home.path().to_path_buf()), &name)?,
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        pin: Some(fingerprint),
        heartbeat,
        direct_timeout: Duration::from_secs(3),
        mailbox_file_max: common::defaults::MAILBOX_FILE_MAX,
        open: true,
        online: true,
        directory_wait: common::defaults::DIRECTORY_WAIT,
        connect_later: false,
    };
    let (node, events) = Node::start(options).await?;
    Ok((node, events, home))
}

impl PeerNode {
    pub async fn start(dir: &DirectoryProcess, name: &str) -> Result<Self> {
        Self::start_at(dir.addr, dir.fingerprint, name.to_string()).await
    }

    /// [`PeerNode::start`] with the directory's address and key, for a future that must not
    /// borrow the [`DirectoryProcess`] (one spawned on another runtime).
    pub async fn start_at(addr: SocketAddr, fingerprint: KeyId, name: String) -> Result<Self> {
        Self::start_listed(addr.to_string(), fingerprint, &name, HEARTBEAT).await
    }

    /// [`PeerNode::start_at`] with the directory given as the peer's `--directory` takes it
    /// (`A:9000,B:9000` for several nodes of one cluster), heartbeating every `heartbeat`.
    pub async fn start_listed(
        directory: String,
        fingerprint: KeyId,
        name: &str,
        heartbeat: Duration,
    ) -> Result<Self> {
        let (node, mut events, home) = start_node(directory, fingerprint, name, heartbeat).await?;
        let shown = Arc::new(AtomicU64::new(0));
        let counter = shown.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Event::Message(incoming) = event {
                    incoming.shown();
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            node,
            shown,
            _home: home,
        })
    }

    /// Sends and insists on a direct delivery.
    pub async fn send_direct(&self, to: &Name, body: &str) -> Result<()> {
        let sent = self.node.send(to.clone(), body.to_string()).await?;
        if sent.status.as_str() != "delivered" {
            bail!(
                "message to {to} was {}, not delivered",
                sent.status.as_str()
            );
        }
        Ok(())
    }

    pub async fn stop(self) {
        self.node.shutdown().await;
    }
}

/// Direct round trip on an established link: `send` until the receiver's ack, one at a time.
/// Returns (p50, p99) in microseconds.
pub async fn direct_rtt(dir: &DirectoryProcess, p: &Params) -> Result<(f64, f64)> {
    let a = PeerNode::start(dir, "rtta").await?;
    let b = PeerNode::start(dir, "rttb").await?;
    let to = b.node.name.clone();
    for _ in 0..200.min(p.rtt_count) {
        a.send_direct(&to, BODY_100).await?;
    }
    let mut samples = Vec::with_capacity(p.rtt_count);
    for _ in 0..p.rtt_count {
        let t = Instant::now();
        a.send_direct(&to, BODY_100).await?;
        samples.push(t.elapsed());
    }
    let out = (
        quantile_us(&mut samples, 0.5),
        quantile_us(&mut samples, 0.99),
    );
    a.stop().await;
    b.stop().await;
    Ok(out)
}

/// Pipelined messages (100-byte bodies) on one conversation, every one acknowledged; msgs/s.
pub async fn direct_throughput(dir: &DirectoryProcess, p: &Params) -> Result<f64> {
    let a = PeerNode::start(dir, "tputa").await?;
    let b = PeerNode::start(dir, "tputb").await?;
    let to = b.node.name.clone();
    a.send_direct(&to, BODY_100).await?;
    let rate = pipelined(&a, &to, BODY_100, p.tput_count).await?;
    a.stop().await;
    b.stop().await;
    Ok(rate)
}

/// Submits `count` messages at once and waits for every answer; messages per second.
async fn pipelined(a: &PeerNode, to: &Name, body: &str, count: usize) -> Result<f64> {
    let t = Instant::now();
    let mut answers = Vec::with_capacity(count);
    for _ in 0..count {
        answers.push(a.node.submit(to.clone(), body.to_string())?);
    }
    for answer in answers {
        let sent = answer.await?;
        if sent.status.as_str() != "delivered" {
            bail!("a pipelined message was {}", sent.status.as_str());
        }
    }
    Ok(count as f64 / t.elapsed().as_secs_f64())
}

/// First message to peers never contacted: lookup + handshake + delivery, per new peer, in µs.
pub async fn first_message(dir: &DirectoryProcess, p: &Params, run: usize) -> Result<Vec<f64>> {
    let a = PeerNode::start(dir, &format!("firsta{run}")).await?;
    let mut out = Vec::new();
    for k in 0..p.first_count {
        let b = PeerNode::start(dir, &format!("first{run}x{k}")).await?;
        let to = b.node.name.clone();
        let t = Instant::now();
        a.send_direct(&to, BODY_100).await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        b.stop().await;
    }
    a.stop().await;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The directory under load from simulated peers

/// What a load window cost the directory and this process.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LoadWindow {
    pub rate: f64,
    pub directory_cpu_pct: f64,
    pub loadgen_cpu_pct: f64,
}

/// How the simulated clients of [`lookups`] send their requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requests {
    /// Each client keeps `lookup_streams` lookups in flight on one long-lived stream, sending
    /// the next as each answer arrives: the directory answers those that arrived together in
    /// one write.
    Pipelined,
    /// Each client runs `lookup_streams` loops of one lookup on a stream of its own.
    StreamEach,
}

/// Lookups per second from many concurrent clients, spread over the nodes `dirs` (one for a
/// single directory) of a peer online on the first: at another node of a cluster, a lookup of
/// it asks the first. CPU is summed over the nodes.
pub async fn lookups(
    dirs: &[&DirectoryProcess],
    id: &Identity,
    p: &Params,
    how: Requests,
) -> Result<LoadWindow> {
    let first = dirs.first().context("no directory")?;
    let pool = ClientPool::new(id, 4)?;
    let target_conn = pool.connect(0, first.addr).await?;
    let target = crate::name("target", 0);
    pool.register(&target_conn, &target, Duration::from_secs(10), true)
        .await?;
    let mut conns = Vec::new();
    for i in 0..p.lookup_conns {
        let conn = pool.connect(i, dirs[i % dirs.len()].addr).await?;
        pool.register(&conn, &crate::name("lk", i), Duration::from_secs(10), false)
            .await?;
        conns.push(conn);
    }
    let cpu = || -> Result<Duration> { dirs.iter().map(|d| cpu_time(d.pid())).sum() };
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu0 = (cpu()?, cpu_time(std::process::id())?);
    let start = Instant::now();
    let deadline = start + p.lookup_window;
    let mut tasks = JoinSet::new();
    for conn in &conns {
        if how == Requests::Pipelined {
            let (conn, target, done, failed) =
                (conn.clone(), target.clone(), done.clone(), failed.clone());
            let window = p.lookup_streams;
            tasks.spawn(async move {
                let r = pipelined_lookups(&conn, &target, window, deadline, &done).await;
                if r.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            });
            continue;
        }
        for _ in 0..p.lookup_streams {
            let (conn, target, done, failed) =
                (conn.clone(), target.clone(), done.clone(), failed.clone());
            tasks.spawn(async move {
                let req = DirectoryRequest::Lookup { name: target };
                while Instant::now() < deadline {
                    match request(&conn, &req).await {
                        Ok(DirectoryResponse::Peer(info)) if info.online => {
                            done.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = (cpu()?, cpu_time(std::process::id())?);
    pool.close();
    if failed.load(Ordering::Relaxed) > 0 {
        bail!("{} lookups failed", failed.load(Ordering::Relaxed));
    }
    Ok(LoadWindow {
        rate: done.load(Ordering::Relaxed) as f64 / elapsed,
        directory_cpu_pct: (cpu1.0 - cpu0.0).as_secs_f64() / elapsed * 100.0,
        loadgen_cpu_pct: (cpu1.1 - cpu0.1).as_secs_f64() / elapsed * 100.0,
    })
}

/// Keeps `window` lookups of `target` in flight on one stream of `conn` until `deadline`,
/// counting the answers in `done`.
async fn pipelined_lookups(
    conn: &quinn::Connection,
    target: &Name,
    window: usize,
    deadline: Instant,
    done: &AtomicU64,
) -> Result<()> {
    let request = common::framing::encode(&DirectoryRequest::Lookup {
        name: target.clone(),
    })?;
    let requests = std::iter::from_fn(|| (Instant::now() < deadline).then(|| Ok(request.clone())));
    pipeline(conn, requests, window, |answer| match answer {
        // The target is online throughout: an answer that says otherwise (a node of a cluster
        // that did not get the other node's answer) is a failure.
        DirectoryResponse::Peer(info) if info.online => {
            done.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        other => bail!("lookup answered {other:?}"),
    })
    .await
}

/// In the pipelined mailbox figure, deposits in flight per sender for each of the
/// `mailbox_streams` the other mode runs.
const PIPELINE_PER_STREAM: usize = 4;

/// Deposits `letters` on one stream of `conn`, keeping `window` in flight: the directory queues
/// those that arrived together for one group commit.
async fn pipelined_deposits(
    conn: &quinn::Connection,
    letters: Vec<Letter>,
    window: usize,
) -> Result<()> {
    let requests = letters.into_iter().map(|letter| {
        common::framing::encode(&DirectoryRequest::DepositLetter { letter }).map_err(Into::into)
    });
    pipeline(conn, requests, window, |answer| match answer {
        DirectoryResponse::Stored => Ok(()),
        other => bail!("deposit: {other:?}"),
    })
    .await
}

/// Writes `requests` (encoded frames) on one stream of `conn`, keeping `window` of them in
/// flight, and hands each answer to `check` in order.
async fn pipeline(
    conn: &quinn::Connection,
    mut requests: impl Iterator<Item = Result<Vec<u8>>>,
    window: usize,
    mut check: impl FnMut(DirectoryResponse) -> Result<()>,
) -> Result<()> {
    let (mut send, recv) = conn.open_bi().await?;
    let mut answers = common::framing::FrameReader::new(recv);
    let mut in_flight = 0;
    loop {
        let mut out = Vec::new();
        while in_flight < window {
            let Some(request) = requests.next() else {
                break;
            };
            out.extend(request?);
            in_flight += 1;
        }
        if !out.is_empty() {
            send.write_all(&out).await?;
        }
        if in_flight == 0 {
            break;
        }
        let Some(first) = answers.next(Duration::from_secs(10)).await? else {
            bail!("the directory ended the stream");
        };
        let mut answer = Some(first);
        while let Some(a) = answer {
            check(a)?;
            in_flight -= 1;
            answer = answers.buffered()?;
        }
    }
    send.finish()?;
    Ok(())
}

/// One population of online, heartbeating peers measured over several windows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Presence {
    pub peers: usize,
    pub heartbeat_secs: f64,
    pub register_secs: f64,
    pub rss_mib: f64,
    pub rss_idle_mib: f64,
    /// Directory CPU per window, percent of one core.
    pub cpu_pct: Vec<f64>,
    pub heartbeats_per_sec: Vec<f64>,
    /// A probe's lookup round trip while the population is online, per window (µs).
    pub probe_p50_us: Vec<f64>,
    pub probe_p99_us: Vec<f64>,
}

/// Simulated peers of the population figure that share a key and a client endpoint.
const PEERS_PER_KEY: usize = 500;

/// Holds `n` simulated peers online on one directory process, heartbeating, and measures it.
pub async fn presence(bin: &Path, n: usize, p: &Params) -> Result<Presence> {
    let dir = DirectoryProcess::spawn(bin, &[])?;
    let rss_idle = rss_bytes(dir.pid())?;
    // One key and one client endpoint per 500 peers. Real peers each have a key of their own;
    // with all names on one key, every new name would have the directory count that key's
    // names, which the default limit of 4 keeps short but the bench's lifted limit does not
    // (registering 100k on one key took 420 s, quadratic in the count).
    let pools = (0..n.div_ceil(PEERS_PER_KEY).max(1))
        .map(|k| {
            let key = Identity::generate(&format!("population-{k}"))?;
            ClientPool::heartbeating(&key, 1, p.presence_heartbeat)
        })
        .collect::<Result<Vec<_>>>()?;
    let pools = Arc::new(pools);
    let hb = p.presence_heartbeat;
    let errors = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    let next = Arc::new(AtomicUsize::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<()>>(n.max(1));
    // A new name's registration is a durable commit, so it is done 64 at a time.
    for _ in 0..64.min(n) {
        let (pools, next, errors, ready) = (
            pools.clone(),
            next.clone(),
            errors.clone(),
            ready_tx.clone(),
        );
        let addr = dir.addr;
        tasks.spawn(async move {
            let mut heartbeats = JoinSet::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = async {
                    let pool = &pools[i / PEERS_PER_KEY];
                    let conn = pool.connect(i, addr).await?;
                    pool.register(&conn, &crate::name("p", i), hb, true).await?;
                    Ok::<_, anyhow::Error>(conn)
                }
                .await;
                match r {
                    Ok(conn) => {
                        // Heartbeats are the connection's QUIC keep-alives, as in the peer;
                        // a connection that dies counts as a failed heartbeat.
                        let errors = errors.clone();
                        heartbeats.spawn(async move {
                            let _ = conn.closed().await;
                            errors.fetch_add(1, Ordering::Relaxed);
                        });
                        let _ = ready.send(Ok(())).await;
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e)).await;
                        return;
                    }
                }
            }
            // Dropping the set would stop the heartbeats: keep it until this task is aborted.
            std::future::pending::<()>().await;
            drop(heartbeats);
        });
    }
    drop(ready_tx);
    // Bounded in time: a minute, and 4 ms more per peer.
    let limit = Duration::from_secs(60) + Duration::from_millis(4) * n as u32;
    let registered = tokio::time::timeout(limit, async {
        for _ in 0..n {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e.context("registering a simulated peer")),
                None => bail!("registration tasks ended early"),
            }
        }
        Ok(())
    })
    .await;
    registered.map_err(|_| anyhow!("{n} peers did not register within {limit:?}"))??;
    let register_secs = t.elapsed().as_secs_f64();
    // Let the registration burst settle before measuring the steady state.
    tokio::time::sleep(Duration::from_secs(2).min(hb)).await;
    let pool = &pools[0];
    let probe_conn = pool.connect(0, dir.addr).await?;
    pool.register(&probe_conn, &crate::name("probe", 0), hb, false)
        .await?;
    let probe_target = crate::name("p", 0);
    let mut out = Presence {
        peers: n,
        heartbeat_secs: hb.as_secs_f64(),
        register_secs,
        rss_mib: 0.0,
        rss_idle_mib: rss_idle as f64 / (1 << 20) as f64,
        cpu_pct: vec![],
        heartbeats_per_sec: vec![],
        probe_p50_us: vec![],
        probe_p99_us: vec![],
    };
    for _ in 0..p.presence_windows {
        let (c0, t0) = (cpu_time(dir.pid())?, Instant::now());
        let mut rtts = Vec::new();
        while t0.elapsed() < p.presence_window {
            let t = Instant::now();
            let req = DirectoryRequest::Lookup {
                name: probe_target.clone(),
            };
            match request(&probe_conn, &req).await? {
                DirectoryResponse::Peer(info) if info.online => rtts.push(t.elapsed()),
                other => bail!("probe lookup: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let c1 = cpu_time(dir.pid())?;
        out.cpu_pct.push((c1 - c0).as_secs_f64() / secs * 100.0);
        // Keep-alives are not counted one by one; the live connections send one each per
        // interval.
        out.heartbeats_per_sec.push(n as f64 / hb.as_secs_f64());
        out.probe_p50_us.push(quantile_us(&mut rtts, 0.5));
        out.probe_p99_us.push(quantile_us(&mut rtts, 0.99));
    }
    out.rss_mib = rss_bytes(dir.pid())? as f64 / (1 << 20) as f64;
    let errs = errors.load(Ordering::Relaxed);
    tasks.abort_all();
    pools.iter().for_each(ClientPool::close);
    if errs > 0 {
        bail!("{errs} heartbeats failed with {n} peers online");
    }
    Ok(out)
}

/// Mailbox: committed deposits per second from many concurrent senders, then the rate at which
/// the recipient drains (receives, acknowledges, and the directory deletes) them.
pub async fn mailbox(
    dir: &DirectoryProcess,
    id: &Identity,
    p: &Params,
    how: Requests,
) -> Result<(f64, f64)> {
    let pool = ClientPool::new(id, 4)?;
    let sink = crate::name("sink", 0);
    let c = pool.connect(0, dir.addr).await?;
    pool.register(&c, &sink, Duration::from_secs(10), false)
        .await?;
    c.close(0u32.into(), b"bound");
    let mut senders = Vec::new();
    for i in 0..p.mailbox_conns {
        let conn = pool.connect(i, dir.addr).await?;
        let me = crate::name("md", i);
        pool.register(&conn, &me, Duration::from_secs(10), false)
            .await?;
        senders.push((conn, me));
    }
    // Each sender seals its own message once, as a peer does; sealing is the sender's cost
    // (measured on its own by the `seal` criterion bench), so it happens before the clock
    // starts and the figure is the directory's.
    let total = p.mailbox_msgs;
    let sealer = pool.sealer.clone();
    let (key, published) = (id.key_id, sealer.published());
    let letters: Vec<Vec<Letter>> = senders
        .iter()
        .map(|(_, me)| {
            (0..total.div_ceil(senders.len()))
                .map(|_| {
                    let message = ChatMessage {
                        id: MessageId::random(),
                        from: me.clone(),
                        to: sink.clone(),
                        sent_at_ms: now_ms(),
                        body: BODY_100.to_string(),
                    };
                    sealer.seal(&key, &published, Content::Chat(message))
                })
                .collect::<Result<_, _>>()
        })
        .collect::<Result<_, _>>()?;
    let total: usize = letters.iter().map(Vec::len).sum();
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for ((conn, _), letters) in senders.iter().zip(letters) {
        if how == Requests::Pipelined {
            let (conn, window) = (conn.clone(), p.mailbox_streams * PIPELINE_PER_STREAM);
            tasks.spawn(async move { pipelined_deposits(&conn, letters, window).await });
            continue;
        }
        let letters = Arc::new(Mutex::new(letters));
        crate::spawn_deposits(&mut tasks, conn, letters, p.mailbox_streams);
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let deposit_rate = total as f64 / t.elapsed().as_secs_f64();

    // Drain: the recipient comes online; count Deliver events until MailboxIdle after all.
    let conn = pool.connect(1, dir.addr).await?;
    let t = Instant::now();
    let req = DirectoryRequest::Register {
        name: sink.clone(),
        listen_addrs: vec![],
        heartbeat_ms: 10_000,
        online: true,
        published: pool.sealer.published(),
    };
    match request(&conn, &req).await? {
        DirectoryResponse::Registered { .. } => {}
        other => bail!("register sink: {other:?}"),
    }
    let drain = async {
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut got = 0usize;
        while let Some(event) = framing::read_frame::<DirectoryEvent, _>(&mut recv).await? {
            match event {
                DirectoryEvent::DeliverLetter(l) => {
                    got += 1;
                    framing::write_frame(&mut send, &EventAck::Delivered(l.id)).await?;
                }
                DirectoryEvent::MailboxIdle if got >= total => return Ok(got),
                _ => {}
            }
        }
        Err(anyhow!("event stream ended after {got} messages"))
    };
    let got: usize = tokio::time::timeout(Duration::from_secs(300), drain)
        .await
        .map_err(|_| anyhow!("drain timed out"))??;
    let drain_rate = got as f64 / t.elapsed().as_secs_f64();
    pool.close();
    Ok((deposit_rate, drain_rate))
}

// ---------------------------------------------------------------------------------------------
// Rooms (issue 16): one sender, a room of members, in-process nodes on one directory

/// The rooms figures with every member online.
#[derive(Debug, Clone, Copy)]
pub struct RoomReach {
    /// One message at a time: from `submit_room` to the moment the last member has shown it;
    /// p50 in ms.
    pub p50_ms: f64,
    /// The same, p99 in ms.
    pub p99_ms: f64,
    /// A burst submitted at once: room messages per second from the first submit until every
    /// member has shown every message of the burst.
    pub burst_rate: f64,
}

/// The rooms figure with every member offline: each copy is a sealed deposit.
#[derive(Debug, Clone, Copy)]
pub struct RoomDeposits {
    /// Copies durably deposited per second, from the first submit until the sender has every
    /// message's outcome (each copy queued).
    pub rate: f64,
    /// The directory process's CPU time (user + system) over that window, per 1000 deposits,
    /// in ms.
    pub directory_cpu_ms_per_1000: f64,
    /// This process's CPU time over the window (the sender alone: it seals every copy), per
    /// 1000 deposits, in ms.
    pub sender_cpu_ms_per_1000: f64,
}

/// The body of the `k`th room message of a figure: `k` in six digits, then filler, 100 bytes.
fn room_body(k: usize) -> String {
    format!("{k:06}{}", &BODY_100[6..])
}

/// Which room messages the members have shown: for each message (by the number its body starts
/// with), how many members showed it and when the last of them did.
struct Tally {
    members: usize,
    slots: Mutex<Vec<(usize, Option<Instant>)>>,
    /// How many messages every member has shown.
    complete: tokio::sync::watch::Sender<usize>,
    /// Anything else shown: a copy shown once too often, a message not of the figure, or not
    /// in the room.
    odd: AtomicU64,
}

impl Tally {
    fn new(members: usize, messages: usize) -> Self {
        Self {
            members,
            slots: Mutex::new(vec![(0, None); messages]),
            complete: tokio::sync::watch::Sender::new(0),
            odd: AtomicU64::new(0),
        }
    }

    /// A member showed the message with `body` at `at`.
    fn shown(&self, body: &str, at: Instant) {
        let k = body
            .get(..6)
            .and_then(|digits| digits.parse::<usize>().ok());
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match k.and_then(|k| slots.get_mut(k)) {
            Some((shown, last)) if *shown < self.members => {
                *shown += 1;
                if *shown == self.members {
                    *last = Some(at);
                    drop(slots);
                    self.complete.send_modify(|c| *c += 1);
                }
            }
            _ => {
                self.odd.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until every member has shown `n` messages, for at most `within`.
    async fn wait_complete(&self, n: usize, within: Duration) -> Result<()> {
        let mut complete = self.complete.subscribe();
        let done = tokio::time::timeout(within, async {
            complete.wait_for(|c| *c >= n).await.is_ok()
        })
        .await;
        if done != Ok(true) {
            let have = *self.complete.borrow();
            bail!("after {within:?}, every member had shown {have} of {n} room messages");
        }
        Ok(())
    }

    /// When the last member showed message `k`.
    fn last_shown(&self, k: usize) -> Result<Instant> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get(k)
            .and_then(|(_, last)| *last)
            .with_context(|| format!("room message {k} not shown by every member"))
    }
}

/// A room member: a node whose incoming messages are shown (and so acknowledged) at once, and
/// counted in a [`Tally`] if there is one.
struct RoomMember {
    node: Node,
    follow: tokio::task::JoinHandle<()>,
    _home: tempfile::TempDir,
}

/// A private room `#bench` on one directory: its creator (the sender) and the members it
/// invited, each an in-process node.
struct BenchRoom {
    room: common::room::RoomName,
    sender: Arc<Node>,
    service: peer::service::Service,
    sender_follow: tokio::task::JoinHandle<()>,
    _sender_home: tempfile::TempDir,
    members: Vec<RoomMember>,
}

impl BenchRoom {
    /// Starts the sender `{tag}s` and `count` members `{tag}0…`, all online; the sender creates
    /// the room and invites every member. Members count what they show in `tally`.
    async fn make(
        dir: &DirectoryProcess,
        tag: &str,
        count: usize,
        tally: Option<Arc<Tally>>,
    ) -> Result<Self> {
        use peer::service::Service;
        let room: common::room::RoomName = "#bench".parse()?;
        let (addr, key) = (dir.addr, dir.fingerprint);
        let (sender, events, sender_home) =
            start_node(addr.to_string(), key, &format!("{tag}s"), HEARTBEAT).await?;
        let sender = Arc::new(sender);
        let mut made = Self {
            // The sender hears the room's notices; unread, they would hold its inbox up.
            sender_follow: follow(events, room.clone(), None),
            service: Service::new(sender.clone(), None),
            room,
            sender,
            _sender_home: sender_home,
            members: Vec::with_capacity(count),
        };
        match made.fill((addr, key), tag, count, tally).await {
            Ok(()) => Ok(made),
            Err(e) => {
                made.stop().await;
                Err(e.context("making the room"))
            }
        }
    }

    /// Starts the members and makes the room with them.
    async fn fill(
        &mut self,
        (addr, key): (SocketAddr, KeyId),
        tag: &str,
        count: usize,
        tally: Option<Arc<Tally>>,
    ) -> Result<()> {
        use peer::rooms::RoomCommand;
        // A few at a time: each registration is a durable commit at the directory.
        let mut starting = JoinSet::new();
        for i in 0..count + 8 {
            if starting.len() >= 8 || i >= count {
                let Some(started) = starting.join_next().await else {
                    break;
                };
                let (node, events, home) = started??;
                self.members.push(RoomMember {
                    node,
                    follow: follow(events, self.room.clone(), tally.clone()),
                    _home: home,
                });
            }
            if i < count {
                let name = format!("{tag}{i}");
                let addr = addr.to_string();
                starting.spawn(async move { start_node(addr, key, &name, HEARTBEAT).await });
            }
        }
        let room = self.room.clone();
        self.service
            .room(RoomCommand::Create {
                room: room.clone(),
                public: false,
            })
            .await?;
        let names = self.members.iter().map(|m| m.node.name.clone()).collect();
        let views = self
            .service
            .room(RoomCommand::Invite { room, names })
            .await?;
        let have = views.first().map_or(0, |v| v.members.len());
        if have != count + 1 {
            bail!("the room has {have} members, not {}", count + 1);
        }
        Ok(())
    }

    /// Stops every member, all at once; each node leaves the directory cleanly.
    async fn stop_members(&mut self) {
        let mut stopping = JoinSet::new();
        for member in self.members.drain(..) {
            stopping.spawn(async move {
                member.node.shutdown().await;
                member.follow.abort();
            });
        }
        while stopping.join_next().await.is_some() {}
    }

    async fn stop(mut self) {
        self.stop_members().await;
        self.service.close().await;
        self.sender_follow.abort();
    }
}

/// Takes a node's events: each message is shown at once (counted in `tally`, if any, when it
/// is in `room`), everything else dropped.
fn follow(
    mut events: tokio::sync::mpsc::Receiver<Event>,
    room: common::room::RoomName,
    tally: Option<Arc<Tally>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Event::Message(incoming) = event {
                let at = Instant::now();
                match &tally {
                    Some(tally) if incoming.room.as_ref() == Some(&room) => {
                        tally.shown(&incoming.message.body, at)
                    }
                    Some(tally) => {
                        tally.odd.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {}
                }
                incoming.shown();
            }
        }
    })
}

/// Checks that a room message reached every one of `members` directly.
fn all_direct(sent: peer::rooms::RoomSent, members: usize) -> Result<()> {
    if sent.delivered as usize != members || sent.queued != 0 || !sent.failed.is_empty() {
        bail!(
            "a room message was delivered to {}, queued for {} and failed for {} of {members} members",
            sent.delivered,
            sent.queued,
            sent.failed.len()
        );
    }
    Ok(())
}

/// Rooms with every member online: `room_members` members, all in this process, with direct
/// links made by a few warm-up messages first (not timed).
///
/// - Reach: `room_latency_msgs` messages one at a time; each is timed from `submit_room` to
///   the moment the last member's node has handed it to be shown (and the next one waits for
///   the sender to have every member's ack).
/// - Burst: `room_burst` messages submitted at once; messages per second from the first submit
///   until the last member has shown the last of them.
///
/// Every copy must arrive directly, each once: anything else is an error.
pub async fn rooms_online(dir: &DirectoryProcess, p: &Params) -> Result<RoomReach> {
    let warmup = 3;
    let total = warmup + p.room_latency_msgs + p.room_burst;
    let tally = Arc::new(Tally::new(p.room_members, total));
    let room = BenchRoom::make(dir, "ro", p.room_members, Some(tally.clone())).await?;
    let measured = async {
        let post = |k: usize| room.service.submit_room(room.room.clone(), room_body(k));
        let mut k = 0;
        // Warm-up: each member is looked up and dialled once, and has the room's whole log.
        for _ in 0..warmup {
            let sent = tokio::time::timeout(Duration::from_secs(30), post(k))
                .await
                .map_err(|_| anyhow!("a warm-up room message had no outcome in 30 s"))??;
            all_direct(sent, p.room_members)?;
            tally.wait_complete(k + 1, Duration::from_secs(10)).await?;
            k += 1;
        }
        let mut samples = Vec::with_capacity(p.room_latency_msgs);
        for _ in 0..p.room_latency_msgs {
            let t = Instant::now();
            let sent = post(k);
            tally.wait_complete(k + 1, Duration::from_secs(10)).await?;
            samples.push(tally.last_shown(k)? - t);
            let sent = tokio::time::timeout(Duration::from_secs(10), sent)
                .await
                .map_err(|_| anyhow!("a room message had no outcome in 10 s"))??;
            all_direct(sent, p.room_members)?;
            k += 1;
        }
        // The posting limit's bucket fills up again (untimed) so the burst fits in it.
        let used = k as f64 + p.room_burst as f64 - f64::from(ROOM_POSTS_BURST);
        if used > 0.0 {
            let refill = used / f64::from(ROOM_POSTS_PER_SECOND);
            tokio::time::sleep(Duration::from_secs_f64(refill + 0.5)).await;
        }
        let first = k;
        let t = Instant::now();
        let answers: Vec<_> = (first..first + p.room_burst).map(post).collect();
        tally
            .wait_complete(first + p.room_burst, Duration::from_secs(120))
            .await?;
        let mut end = t;
        for k in first..first + p.room_burst {
            end = end.max(tally.last_shown(k)?);
        }
        let outcomes = async {
            for answer in answers {
                all_direct(answer.await?, p.room_members)?;
            }
            Ok::<_, anyhow::Error>(())
        };
        tokio::time::timeout(Duration::from_secs(30), outcomes)
            .await
            .map_err(|_| anyhow!("the burst's outcomes did not all come in 30 s"))??;
        let odd = tally.odd.load(Ordering::Relaxed);
        if odd > 0 {
            bail!("{odd} room messages were shown twice, or were not the figure's");
        }
        Ok(RoomReach {
            p50_ms: quantile_us(&mut samples, 0.5) / 1000.0,
            p99_ms: quantile_us(&mut samples, 0.99) / 1000.0,
            burst_rate: p.room_burst as f64 / (end - t).as_secs_f64(),
        })
    }
    .await;
    room.stop().await;
    measured
}

/// Rooms with every member offline: the room is made with its `room_members` members online,
/// they leave, and the sender submits `room_deposit_msgs` messages at once. Every copy is
/// sealed to its member and deposited in its mailbox, one conversation per member. Timed from
/// the first submit until the sender has every message's outcome (all copies queued); the
/// directory's CPU time is read from `/proc` over the same window.
pub async fn rooms_offline(dir: &DirectoryProcess, p: &Params) -> Result<RoomDeposits> {
    let mut room = BenchRoom::make(dir, "rf", p.room_members, None).await?;
    let names: Vec<Name> = room.members.iter().map(|m| m.node.name.clone()).collect();
    room.stop_members().await;
    let measured = async {
        for name in &names {
            let (info, _) = room.sender.whois(name).await?;
            if info.online {
                bail!("{name} is still online after it stopped");
            }
        }
        let n = p.room_deposit_msgs;
        let cpu0 = (cpu_time(dir.pid())?, cpu_time(std::process::id())?);
        let t = Instant::now();
        let answers: Vec<_> = (0..n)
            .map(|k| room.service.submit_room(room.room.clone(), room_body(k)))
            .collect();
        let outcomes = async {
            let mut deposits = 0usize;
            for answer in answers {
                let sent = answer.await?;
                if sent.queued as usize != names.len() || sent.delivered != 0 {
                    bail!(
                        "a room message was queued for {} and delivered to {} of {} offline members ({} failed)",
                        sent.queued,
                        sent.delivered,
                        names.len(),
                        sent.failed.len()
                    );
                }
                deposits += sent.queued as usize;
            }
            Ok::<_, anyhow::Error>(deposits)
        };
        let deposits = tokio::time::timeout(Duration::from_secs(180), outcomes)
            .await
            .map_err(|_| anyhow!("the deposits did not all complete in 180 s"))??;
        let elapsed = t.elapsed().as_secs_f64();
        let cpu1 = (cpu_time(dir.pid())?, cpu_time(std::process::id())?);
        let per_1000 = |d: Duration| d.as_secs_f64() * 1000.0 / (deposits as f64 / 1000.0);
        Ok(RoomDeposits {
            rate: deposits as f64 / elapsed,
            directory_cpu_ms_per_1000: per_1000(cpu1.0 - cpu0.0),
            sender_cpu_ms_per_1000: per_1000(cpu1.1 - cpu0.1),
        })
    }
    .await;
    room.stop().await;
    measured
}

// ---------------------------------------------------------------------------------------------
// Bulk transfer: the peers vs quinn on its own

/// One bulk transfer: how fast, and how much CPU the machine spent on it.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// Bytes per second.
    pub rate: f64,
    /// Busy CPU time of the whole machine ([`crate::machine_busy`]) during the transfer, per GiB moved:
    /// both sides, and the kernel's work for them. With two cores, at most 2 s pass per second.
    pub cpu_per_gib: f64,
}

impl Bulk {
    pub fn new(bytes: u64, elapsed: Duration, busy: Duration) -> Self {
        let gib = bytes as f64 / (1u64 << 30) as f64;
        Self {
            rate: bytes as f64 / elapsed.as_secs_f64(),
            cpu_per_gib: busy.as_secs_f64() / gib,
        }
    }
}

/// A file of pseudo-random bytes in a temporary folder, sent by [`crate::bulk::send_file`];
/// removed on drop.
pub struct BulkFile {
    pub path: PathBuf,
    pub size: u64,
    _dir: tempfile::TempDir,
}

impl BulkFile {
    /// Writes `size` bytes of a splitmix64 stream (not compressible, not one repeated byte) on
    /// the disk that holds temporary folders, and syncs them, so that their write-back does not
    /// fall into a measurement. The file stays in the page cache, as a file just saved would.
    pub fn create(size: u64) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bench-file").tempdir()?;
        let path = dir.path().join("bulk.bin");
        let mut file = std::fs::File::create(&path)?;
        let mut state = 0x5eed_0fb0_1cf1_1e00u64;
        let mut block = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            for word in block.chunks_exact_mut(8) {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            }
            let k = left.min(block.len() as u64) as usize;
            file.write_all(&block[..k])?;
            left -= k as u64;
        }
        file.sync_all()?;
        Ok(Self {
            path,
            size,
            _dir: dir,
        })
    }
}

/// A secondary bulk figure, what the chat path moves: pipelined chat messages with 32 KiB
/// bodies, each framed, handed over and acknowledged; bytes/s.
pub async fn bulk_chat(dir: &DirectoryProcess, p: &Params) -> Result<f64> {
    let a = PeerNode::start(dir, "bulka").await?;
    let b = PeerNode::start(dir, "bulkb").await?;
    let to = b.node.name.clone();
    a.send_direct(&to, BODY_100).await?;
    let body = "x".repeat(common::defaults::MAX_BODY_LEN);
    let rate = pipelined(&a, &to, &body, p.bulk_chat_msgs).await?;
    a.stop().await;
    b.stop().await;
    Ok(rate * body.len() as f64)
}

// ---------------------------------------------------------------------------------------------
// Disk references

/// One 4 KiB write + fdatasync on the disk that holds temporary folders; (p50, p99) in µs.
pub fn fsync_cost(count: usize) -> Result<(f64, f64)> {
    let dir = tempfile::Builder::new().prefix("bench-fsync").tempdir()?;
    let mut f = std::fs::File::create(dir.path().join("f"))?;
    let block = [0xa5u8; 4096];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        f.rewind()?;
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        samples.push(t.elapsed());
    }
    Ok((
        quantile_us(&mut samples, 0.5),
        quantile_us(&mut samples, 0.99),
    ))
}

/// Reference for the receiver's last step: `bytes` written to a new file (page cache), then
/// the `fsync` alone is timed; bytes/s of that fsync.
pub fn fsync_bulk(bytes: u64) -> Result<f64> {
    let dir = tempfile::Builder::new().prefix("bench-fsync").tempdir()?;
    let mut f = std::fs::File::create(dir.path().join("f"))?;
    let block = vec![0xa5u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(block.len() as u64) as usize;
        f.write_all(&block[..k])?;
        left -= k as u64;
    }
    let t = Instant::now();
    f.sync_all()?;
    Ok(bytes as f64 / t.elapsed().as_secs_f64())
}

/// One durable redb commit as the directory makes it: a one-message `deposit_batch`; p50 µs.
pub fn redb_commit_cost(count: usize) -> Result<f64> {
    let dir = tempfile::Builder::new().prefix("bench-redb").tempdir()?;
    let store = RedbStore::open(&dir.path().join("d.redb"))?;
    let (from, to) = (Name::new("a")?, Name::new("b")?);
    let quota = Quota::unlimited();
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let m = Mail::Chat(ChatMessage {
            id: MessageId::random(),
            from: from.clone(),
            to: to.clone(),
            sent_at_ms: now_ms(),
            body: BODY_100.to_string(),
        });
        let t = Instant::now();
        store.deposit_batch(std::slice::from_ref(&m), quota)?;
        samples.push(t.elapsed());
    }
    Ok(quantile_us(&mut samples, 0.5))
}

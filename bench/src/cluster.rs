//! The cluster's figures (issue 17): three `nats-server`s with JetStream clustered on loopback,
//! directory nodes on them sharing one key, and what a cluster adds to a single node's costs:
//! lookups spread over two nodes, deposits committed through the replicated log, delivery from
//! a deposit on one node to a recipient on the other, failover (a node killed until its
//! peer is online on the other), and how long a new node takes to be ready, replaying the log
//! or starting from a snapshot of a compacted one.

use crate::{figures::PeerNode, request, ClientPool, DirectoryProcess};
use anyhow::{anyhow, bail, Context, Result};
use common::{
    framing, now_ms,
    seal::Content,
    wire::{
        ChatMessage, DirectoryEvent, DirectoryRequest, DirectoryResponse, EventAck, Mail, MessageId,
    },
    Identity, KeyId,
};
use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a NATS server may take to say it is ready.
const NATS_READY: Duration = Duration::from_secs(20);

/// Three `nats-server -js` clustered on loopback, each with its storage in a temporary folder;
/// killed when dropped.
pub struct NatsCluster {
    servers: Vec<Child>,
    /// `nats://127.0.0.1:PORT` of each.
    pub urls: Vec<String>,
    _storage: tempfile::TempDir,
}

/// A TCP port free now on loopback (for a server that must know its routes before it starts).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsCluster {
    /// Starts `n` servers routed to each other; errors if `nats-server` is not installed.
    pub fn start(n: usize) -> Result<Self> {
        let storage = tempfile::Builder::new().prefix("bench-nats").tempdir()?;
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let routes = ports
            .iter()
            .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        let mut ready = Vec::new();
        for (i, (client, route)) in ports.iter().enumerate() {
            let mut cmd = Command::new("nats-server");
            cmd.args(["-a", "127.0.0.1", "-p", &client.to_string(), "-js", "-sd"])
                .arg(storage.path().join(format!("n{i}")))
                .args(["-n", &format!("n{i}")]);
            if n > 1 {
                cmd.args(["--cluster_name", "bench", "--cluster"])
                    .arg(format!("nats://127.0.0.1:{route}"))
                    .args(["--routes", &routes]);
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting nats-server (installed by .ci/run)")?;
            let stderr = child.stderr.take().context("nats-server stderr")?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("Server is ready") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            });
            servers.push(child);
            ready.push(rx);
        }
        let cluster = Self {
            servers,
            urls: ports
                .iter()
                .map(|(client, _)| format!("nats://127.0.0.1:{client}"))
                .collect(),
            _storage: storage,
        };
        for rx in ready {
            rx.recv_timeout(NATS_READY)
                .map_err(|_| anyhow!("a nats-server was not ready in {NATS_READY:?}"))?;
        }
        Ok(cluster)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The key every node of a benchmark cluster shares, made once by `directory fingerprint`.
pub struct ClusterKey {
    dir: tempfile::TempDir,
}

impl ClusterKey {
    pub fn new(bin: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bench-key").tempdir()?;
        let made = Command::new(bin)
            .args(["fingerprint", "--data"])
            .arg(dir.path())
            .output()?;
        if !made.status.success() {
            bail!(
                "directory fingerprint: {}",
                String::from_utf8_lossy(&made.stderr)
            );
        }
        Ok(Self { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("key.der")
    }
}

/// A directory node on `nats` (its log in `replicas` copies), with `key`, on `bind`.
pub fn node(
    bin: &Path,
    nats: &NatsCluster,
    key: &ClusterKey,
    replicas: usize,
    bind: SocketAddr,
    extra: &[&str],
) -> Result<DirectoryProcess> {
    let (store, key, replicas) = (
        nats.urls.join(","),
        key.path().display().to_string(),
        replicas.to_string(),
    );
    let mut args = vec![
        "--store",
        &store,
        "--store-replicas",
        &replicas,
        "--key",
        &key,
    ];
    args.extend_from_slice(extra);
    DirectoryProcess::spawn_on(bin, bind, &args)
}

/// A deposit on node `a` for a recipient online on node `b`: from sending the deposit until
/// the recipient's event stream delivers it, one at a time, `count` times; in ms, sorted.
pub async fn cross_node_delivery(
    a: &DirectoryProcess,
    b: &DirectoryProcess,
    id: &Identity,
    count: usize,
) -> Result<Vec<f64>> {
    let pool = ClientPool::new(id, 2)?;
    let (sink, sender) = (crate::name("xsink", 0), crate::name("xsender", 0));
    let sender_conn = pool.connect(0, a.addr).await?;
    pool.register(&sender_conn, &sender, Duration::from_secs(10), false)
        .await?;
    let sink_conn = pool.connect(1, b.addr).await?;
    let register = DirectoryRequest::Register {
        name: sink.clone(),
        listen_addrs: vec![],
        heartbeat_ms: 10_000,
        online: true,
        published: pool.sealer.published(),
    };
    match request(&sink_conn, &register).await? {
        DirectoryResponse::Registered { .. } => {}
        other => bail!("register {sink}: {other:?}"),
    }
    // The sink's name is bound through the log; node A knows it once it applied that entry,
    // a moment after node B did. A deposit before then would find no such name.
    let known_at_a = async {
        loop {
            let lookup = DirectoryRequest::Lookup { name: sink.clone() };
            if let DirectoryResponse::Peer(_) = request(&sender_conn, &lookup).await? {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), known_at_a)
        .await
        .map_err(|_| anyhow!("node A never learnt the name bound at node B"))??;
    let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    let events = sink_conn.clone();
    tokio::spawn(async move {
        let (mut send, mut recv) = events.accept_bi().await?;
        while let Some(event) = framing::read_frame::<DirectoryEvent, _>(&mut recv).await? {
            if let DirectoryEvent::DeliverLetter(l) = event {
                framing::write_frame(&mut send, &EventAck::Delivered(l.id)).await?;
                let _ = tx.send(l.id);
            }
        }
        anyhow::Ok(())
    });
    let (key, published) = (id.key_id, pool.sealer.published());
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let message = ChatMessage {
            id: MessageId::random(),
            from: sender.clone(),
            to: sink.clone(),
            sent_at_ms: now_ms(),
            body: "cross-node".into(),
        };
        let letter = pool.sealer.seal(&key, &published, Content::Chat(message))?;
        let want = letter.id;
        let started = Instant::now();
        match request(&sender_conn, &DirectoryRequest::DepositLetter { letter }).await? {
            DirectoryResponse::Stored => {}
            other => bail!("deposit: {other:?}"),
        }
        loop {
            let got = tokio::time::timeout(Duration::from_secs(10), delivered.recv())
                .await
                .map_err(|_| anyhow!("a deposit on one node never reached the other"))?
                .ok_or_else(|| anyhow!("the recipient's event stream ended"))?;
            if got == want {
                break;
            }
        }
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    pool.close();
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// Failover: a peer knows nodes A and B and is online on one; that node is killed (-9), and the
/// time until a lookup at the other node says the peer is online there is one sample. The
/// killed node is started again (same address, a fresh replica that replays the log) before
/// the next kill, which hits the node the peer moved to. In seconds, sorted.
pub async fn failover(
    bin: &Path,
    id: &Identity,
    key: &ClusterKey,
    kills: usize,
) -> Result<Vec<f64>> {
    let nats = NatsCluster::start(3)?;
    let binds = [
        SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
        SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
    ];
    let mut nodes = [
        Some(node(bin, &nats, key, 3, binds[0], &[])?),
        Some(node(bin, &nats, key, 3, binds[1], &[])?),
    ];
    let fingerprint: KeyId = nodes[0].as_ref().map(|n| n.fingerprint).context("node")?;
    let list = format!("{},{}", binds[0], binds[1]);
    // Heartbeats as the compose stacks run them: a dead node is noticed after three.
    let heartbeat = Duration::from_secs(1);
    let peer = PeerNode::start_listed(list, fingerprint, "mover", heartbeat).await?;
    let pool = ClientPool::new(id, 1)?;
    let mut samples = Vec::new();
    // The peer starts on the first node of its list.
    let mut on = 0;
    for _ in 0..kills {
        let other = 1 - on;
        let other_addr = binds[other];
        let asker = pool.connect(0, other_addr).await?;
        pool.register(
            &asker,
            &crate::name("asker", 0),
            Duration::from_secs(10),
            false,
        )
        .await?;
        let mover = common::Name::new("mover")?;
        wait_online(&asker, &mover, Duration::from_secs(30)).await?;
        nodes[on] = None; // killed: DirectoryProcess kills its process when dropped
        let killed = Instant::now();
        // Online at the other node means registered there: the killed one answers nothing.
        loop {
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("the peer did not move to the other node within 60 s");
            }
            if let Ok(true) = online(&asker, &mover).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples.push(killed.elapsed().as_secs_f64());
        asker.close(0u32.into(), b"done");
        nodes[on] = Some(node(bin, &nats, key, 3, binds[on], &[])?);
        on = other;
    }
    peer.stop().await;
    pool.close();
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// A UDP port free now on loopback, for a node that must come back at the same address.
fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn online(asker: &quinn::Connection, name: &common::Name) -> Result<bool> {
    match request(asker, &DirectoryRequest::Lookup { name: name.clone() }).await? {
        DirectoryResponse::Peer(info) => Ok(info.online),
        other => bail!("lookup: {other:?}"),
    }
}

async fn wait_online(
    asker: &quinn::Connection,
    name: &common::Name,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    while !online(asker, name).await? {
        if Instant::now() > deadline {
            bail!("{name} is not online");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How long a new node takes to be ready on a log of many entries.
#[derive(Debug, Clone, Copy)]
pub struct NewNode {
    /// Replaying the whole log into an empty replica.
    pub replay_secs: f64,
    /// Once the log is compacted: loading the snapshot, then the entries after it.
    pub snapshot_secs: f64,
    /// The snapshot's size.
    pub snapshot_mib: f64,
}

/// Fills a log on three NATS servers (3 replicas) with `entries` deposits, one message each
/// (every one an entry of its own, as deposits that come one at a time are), then times a new
/// node's store opening on it (it serves once that returns): with the whole log to replay, and
/// again once the log has been compacted to a snapshot. In process, on the store itself.
pub fn new_node_ready(entries: usize) -> Result<NewNode> {
    use directory::store::{jetstream::LogConfig, JetStreamStore, Quota, Store};
    let nats = NatsCluster::start(3)?;
    let dir = tempfile::Builder::new().prefix("bench-ready").tempdir()?;
    let mut log = LogConfig {
        stream: "READY".into(),
        replicas: 3,
        compact_after: 0,
        ..LogConfig::default()
    };
    let a = JetStreamStore::open(&nats.urls, &log, &dir.path().join("a.redb"))?;
    let writers = 8;
    std::thread::scope(|scope| {
        let a = &a;
        let writing: Vec<_> = (0..writers)
            .map(|w| {
                scope.spawn(move || -> Result<()> {
                    let from = common::Name::new(format!("sender{w}"))?;
                    for i in (w..entries).step_by(writers) {
                        let mail = Mail::Chat(ChatMessage {
                            id: MessageId::random(),
                            from: from.clone(),
                            to: common::Name::new(format!("r{}", i % 100))?,
                            sent_at_ms: now_ms(),
                            body: crate::figures::BODY_100.to_string(),
                        });
                        a.deposit_batch(std::slice::from_ref(&mail), Quota::unlimited())?[0]
                            .clone()?;
                    }
                    Ok(())
                })
            })
            .collect();
        writing
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow!("a writer panicked"))?)
    })?;
    let head = a.applied();
    drop(a);

    let t = Instant::now();
    let replayed = JetStreamStore::open(&nats.urls, &log, &dir.path().join("b.redb"))?;
    let replay_secs = t.elapsed().as_secs_f64();
    ensure_at(replayed.applied(), head)?;
    drop(replayed);

    // Node A again, compacting as soon as it checks.
    log.compact_after = 1;
    log.compact_check = Duration::from_millis(200);
    let a = JetStreamStore::open(&nats.urls, &log, &dir.path().join("a.redb"))?;
    let url = nats.urls[0].clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await?);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut stream = js.get_stream("READY").await?;
            if stream.info().await?.state.first_sequence > head {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the log was not compacted within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?;
    log.compact_after = 0;
    let t = Instant::now();
    let loaded = JetStreamStore::open(&nats.urls, &log, &dir.path().join("c.redb"))?;
    let snapshot_secs = t.elapsed().as_secs_f64();
    ensure_at(loaded.applied(), head)?;
    let snapshot_mib =
        std::fs::metadata(dir.path().join("c.redb"))?.len() as f64 / (1 << 20) as f64;
    drop((a, loaded));
    Ok(NewNode {
        replay_secs,
        snapshot_secs,
        snapshot_mib,
    })
}

fn ensure_at(applied: u64, head: u64) -> Result<()> {
    if applied < head {
        bail!("a new node stood at entry {applied} of {head}");
    }
    Ok(())
}

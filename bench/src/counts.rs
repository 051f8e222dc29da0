//! Instruction counts per operation, which do not move with the machine's load the way times
//! do: the process that serves the operation runs under valgrind's callgrind, which counts
//! every instruction it executes (all its threads), and the count it writes at exit is read.
//! Each figure runs that process twice, once serving `n` operations and once `2n`, and takes
//! the difference over `n`, so that start-up, the handshakes and leaving cancel out:
//!
//! * **lookup**: the directory answering `Lookup` requests, one at a time, each on a stream of
//!   its own, for a registered name;
//! * **deposit**: the directory storing sealed letters for an offline recipient, one at a time
//!   (each a durable commit: the store's writer thread counts too, the fsync is one system
//!   call);
//! * **grouped deposit**: the same, 64 at a time (each on its own stream), so that commits take
//!   many (how many depends on timing: compare runs with the same sizes);
//! * **heartbeat**: the directory holding connections that send a QUIC keep-alive every second,
//!   for `w` and for `2w` seconds: per keep-alive received (and acknowledged);
//! * **direct message**: a receiving `peer listen` process taking chat messages on a direct
//!   link, one at a time: reading the frame, checking the sender, the history write, the ack.
//!
//! Needs `valgrind`; on hardware with performance counters `perf stat -e instructions` would
//! do, but the machines these figures come from (virtual ones) expose none.

use crate::{
    figures::PeerNode,
    process::{online, peer_args, Reaped},
    request, ClientPool, DirectoryProcess,
};
use anyhow::{bail, ensure, Context, Result};
use common::{
    now_ms,
    seal::Content,
    wire::{ChatMessage, DirectoryRequest, DirectoryResponse, MessageId},
    Identity,
};
use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

/// Deposits in flight at once for the grouped figure: the store's writer commits all that
/// are queued in one transaction, as under load.
const GROUPED_IN_FLIGHT: usize = 64;

/// Whether `valgrind` can be run.
pub fn available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How many operations each figure's shorter run serves (the longer serves twice as many).
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub lookups: u64,
    pub deposits: u64,
    /// Deposits made [`GROUPED_IN_FLIGHT`] at a time, so that many share a commit.
    pub grouped_deposits: u64,
    /// Connections heartbeating, and the seconds of the shorter run.
    pub heartbeat_conns: u64,
    pub heartbeat_secs: u64,
    pub messages: u64,
}

/// The instructions one operation costs the process serving it, each figure on its own: one
/// that cannot be counted does not take the others with it.
#[derive(Debug)]
pub struct Counts {
    pub lookup: Result<f64>,
    pub deposit: Result<f64>,
    pub grouped_deposit: Result<f64>,
    pub heartbeat: Result<f64>,
    pub direct_message: Result<f64>,
}

/// A callgrind output file in a temporary folder, and the command prefix that writes it.
struct Callgrind {
    dir: tempfile::TempDir,
}

impl Callgrind {
    fn new() -> Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new()
                .prefix("bench-callgrind")
                .tempdir()?,
        })
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("callgrind.out")
    }

    /// `valgrind --tool=callgrind` writing to [`Callgrind::out`].
    fn wrapper(&self) -> Vec<OsString> {
        let mut file = OsString::from("--callgrind-out-file=");
        file.push(self.out());
        vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            "--quiet".into(),
            file,
        ]
    }

    /// The instructions the process executed, from its output at exit (`summary:` or
    /// `totals:`, the first event being `Ir`). With `COUNTS_KEEP` set to a folder, the output
    /// is kept there as `LABEL.callgrind`, for `callgrind_annotate`.
    fn instructions(&self, label: &str) -> Result<u64> {
        if let Some(keep) = std::env::var_os("COUNTS_KEEP") {
            let keep = PathBuf::from(keep);
            std::fs::create_dir_all(&keep)?;
            std::fs::copy(self.out(), keep.join(format!("{label}.callgrind")))?;
        }
        total_ir(&self.out())
    }
}

fn total_ir(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("no callgrind output at {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .context("no summary line in the callgrind output")?
        .parse()
        .context("the callgrind summary is not a number")
}

/// A directory under callgrind serving `ops(dir)`, stopped: the instructions it executed.
async fn directory_run<F, Fut>(label: String, bin: &Path, extra: &[&str], ops: F) -> Result<u64>
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let cg = Callgrind::new()?;
    let dir = DirectoryProcess::spawn_under(
        &cg.wrapper(),
        bin,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        extra,
    )?;
    ops(dir.addr).await?;
    dir.stop(Duration::from_secs(120))?;
    cg.instructions(&label)
}

/// (count of the `2n` run − count of the `n` run) / `n`.
async fn per_op<F, Fut>(n: u64, run: F) -> Result<f64>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let one = run(n).await?;
    let two = run(2 * n).await?;
    ensure!(
        two > one,
        "the longer run counted fewer instructions ({two} against {one})"
    );
    Ok((two - one) as f64 / n as f64)
}

/// Every figure; `extra` are the directory's arguments for the deposits (its mailbox quotas).
pub async fn measure(bin: &Path, id: &Identity, sizes: Sizes, extra: &[&str]) -> Counts {
    let lookup = per_op(sizes.lookups, |n| {
        directory_run(format!("lookups-{n}"), bin, &[], move |addr| {
            lookups(addr, id, n)
        })
    })
    .await
    .context("lookups");
    let deposit = per_op(sizes.deposits, |n| {
        directory_run(format!("deposits-{n}"), bin, extra, move |addr| {
            deposits(addr, id, n, 1)
        })
    })
    .await
    .context("deposits");
    let grouped_deposit = per_op(sizes.grouped_deposits, |n| {
        directory_run(format!("grouped-deposits-{n}"), bin, extra, move |addr| {
            deposits(addr, id, n, GROUPED_IN_FLIGHT)
        })
    })
    .await
    .context("grouped deposits");
    let (conns, secs) = (sizes.heartbeat_conns, sizes.heartbeat_secs);
    let heartbeat = per_op(conns * secs, |k| {
        directory_run(format!("heartbeats-{k}"), bin, &[], move |addr| {
            heartbeats(addr, conns, k / conns)
        })
    })
    .await
    .context("heartbeats");
    let direct_message = per_op(sizes.messages, |n| messages_run(bin, n))
        .await
        .context("direct messages");
    Counts {
        lookup,
        deposit,
        grouped_deposit,
        heartbeat,
        direct_message,
    }
}

async fn lookups(addr: SocketAddr, id: &Identity, n: u64) -> Result<()> {
    let pool = ClientPool::new(id, 1)?;
    let conn = pool.connect(0, addr).await?;
    let target = crate::name("target", 0);
    pool.register(&conn, &target, Duration::from_secs(10), false)
        .await?;
    let req = DirectoryRequest::Lookup { name: target };
    for _ in 0..n {
        match request(&conn, &req).await? {
            DirectoryResponse::Peer(_) => {}
            other => bail!("lookup: {other:?}"),
        }
    }
    conn.close(0u32.into(), b"done");
    pool.close();
    Ok(())
}

async fn deposits(addr: SocketAddr, id: &Identity, n: u64, in_flight: usize) -> Result<()> {
    let pool = ClientPool::new(id, 1)?;
    let (me, sink) = (crate::name("sender", 0), crate::name("sink", 0));
    // One name per connection: the recipient's, then the sender's.
    let bound = pool.connect(0, addr).await?;
    pool.register(&bound, &sink, Duration::from_secs(10), false)
        .await?;
    bound.close(0u32.into(), b"bound");
    let conn = pool.connect(0, addr).await?;
    pool.register(&conn, &me, Duration::from_secs(10), false)
        .await?;
    let published = pool.sealer.published();
    let mut letters = Vec::new();
    for _ in 0..n {
        let message = ChatMessage {
            id: MessageId::random(),
            from: me.clone(),
            to: sink.clone(),
            sent_at_ms: now_ms(),
            body: "0123456789".repeat(10),
        };
        letters.push(
            pool.sealer
                .seal(&id.key_id, &published, Content::Chat(message))?,
        );
    }
    // `in_flight` streams at a time, each taking the next letter when its answer came.
    let letters = std::sync::Arc::new(std::sync::Mutex::new(letters));
    let mut senders = tokio::task::JoinSet::new();
    crate::spawn_deposits(&mut senders, &conn, letters, in_flight);
    while let Some(sent) = senders.join_next().await {
        sent??;
    }
    conn.close(0u32.into(), b"done");
    pool.close();
    Ok(())
}

/// `conns` connections heartbeating every second for `secs` seconds.
async fn heartbeats(addr: SocketAddr, conns: u64, secs: u64) -> Result<()> {
    let hb = Duration::from_secs(1);
    let key = Identity::generate("heartbeats")?;
    let pool = ClientPool::heartbeating(&key, 1, hb)?;
    let mut held = Vec::new();
    for i in 0..conns as usize {
        let conn = pool.connect(i, addr).await?;
        pool.register(&conn, &crate::name("hb", i), hb, true)
            .await?;
        held.push(conn);
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    ensure!(
        held.iter().all(|c| c.close_reason().is_none()),
        "a heartbeating connection died"
    );
    pool.close();
    Ok(())
}

/// A `peer listen` under callgrind taking `n` direct messages from an in-process peer: the
/// instructions the listening process executed, start to exit.
async fn messages_run(bin: &Path, n: u64) -> Result<u64> {
    let dir = DirectoryProcess::spawn(bin, &[])?;
    let cg = Callgrind::new()?;
    let home = tempfile::Builder::new().prefix("bench-counts").tempdir()?;
    let wrapper = cg.wrapper();
    let mut child = Reaped(
        Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(crate::peer_bin()?)
            .args(peer_args(dir.addr, home.path(), "counted"))
            .args(["--open", "listen"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting peer listen under valgrind")?,
    );
    let lines = online(&mut child.0, "the counted peer")?;
    std::thread::spawn(move || lines.for_each(drop));
    let sender = PeerNode::start(&dir, "counter").await?;
    let to = common::Name::new("counted")?;
    for i in 0..n {
        sender
            .send_direct(&to, &format!("counted message {i}"))
            .await?;
    }
    sender.stop().await;
    crate::terminate(&mut child.0, Duration::from_secs(120))?;
    cg.instructions(&format!("messages-{n}"))
}

//! The benchmark suite's shared pieces: statistics, process accounting from `/proc`, a spawned
//! `directory` process, and a raw directory client that lets one process simulate many peers.
//!
//! The figures themselves are in [`figures`]; the `loadgen` binary runs them and writes the
//! results. Everything runs on loopback, on ephemeral ports, in temporary folders, and is
//! bounded in count and time.

pub mod bulk;
pub mod cluster;
pub mod counts;
pub mod figures;
pub mod oneshot;
pub mod process;

use anyhow::{anyhow, bail, Context, Result};
use common::{
    defaults::ALPN_DIRECTORY,
    framing,
    seal::Sealer,
    tls::{self, Expect},
    wire::{DirectoryEvent, DirectoryRequest, DirectoryResponse, EventAck, Letter},
    Identity, KeyId, Name,
};
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

/// Median, minimum and maximum of a set of samples.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Self {
            median: quantile_sorted(&v, 0.5),
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The `q` quantile of durations, in microseconds.
pub fn quantile_us(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    quantile_sorted(&us, q)
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(Duration::from_secs_f64(
        (utime + stime) as f64 / clock_ticks() as f64,
    ))
}

/// CPU time the whole machine has spent busy, all cores together (user, nice, system, irq and
/// softirq time from the first line of `/proc/stat`). Unlike [`cpu_time`], it counts the work
/// the kernel's own threads do for a process, such as writing its files back to disk.
pub fn machine_busy() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq …
    let busy: u64 = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| ticks.get(i).copied().context("short /proc/stat"))
        .sum::<Result<_>>()?;
    Ok(Duration::from_secs_f64(busy as f64 / clock_ticks() as f64))
}

/// Kernel clock ticks per second for `/proc` times (`sysconf(_SC_CLK_TCK)`, from the process's
/// auxiliary vector: no system call, so it costs nothing inside a measured window).
pub fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// Resident set size of a process in bytes (`VmRSS` in `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

/// A `directory` process on a loopback ephemeral port with its own data folder; killed on drop.
pub struct DirectoryProcess {
    child: Child,
    pub addr: SocketAddr,
    pub fingerprint: KeyId,
    _data: tempfile::TempDir,
}

/// The directory's abuse limits that a load from one host and one key runs into, lifted: the
/// figures measure throughput, not the limits.
const LIMITS_LIFTED: &[&str] = &[
    "--names-per-key",
    "4294967295",
    "--name-binds-per-ip-per-hour",
    "4294967295",
    "--mailbox-quota-sender-messages",
    "18446744073709551615",
    "--mailbox-quota-sender-bytes",
    "18446744073709551615",
    "--max-connections-per-ip",
    "4294967295",
    "--new-connections-per-second",
    "4294967295",
    "--new-connections-burst",
    "4294967295",
    "--lookups-per-key-per-minute",
    "4294967295",
    // The population figure holds 100k connections; above half of the cap each would first
    // be sent a Retry.
    "--max-connections",
    "4294967295",
];

impl DirectoryProcess {
    /// Starts `bin` with `extra` arguments and waits for its "listening" line.
    pub fn spawn(bin: &Path, extra: &[&str]) -> Result<Self> {
        Self::spawn_on(bin, SocketAddr::from(([127, 0, 0, 1], 0)), extra)
    }

    /// [`DirectoryProcess::spawn`] on `bind`.
    pub fn spawn_on(bin: &Path, bind: SocketAddr, extra: &[&str]) -> Result<Self> {
        Self::spawn_under(&[], bin, bind, extra)
    }

    /// [`DirectoryProcess::spawn_on`], run by the program and arguments `wrapper` (a profiler)
    /// when it is not empty.
    pub fn spawn_under(
        wrapper: &[std::ffi::OsString],
        bin: &Path,
        bind: SocketAddr,
        extra: &[&str],
    ) -> Result<Self> {
        let data = tempfile::Builder::new().prefix("bench-dir").tempdir()?;
        let log = std::fs::File::create(data.path().join("directory.log"))?;
        let mut command = match wrapper {
            [] => Command::new(bin),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
        };
        let mut child = command
            .args(["--bind", &bind.to_string(), "--data"])
            .arg(data.path().join("data"))
            .args(LIMITS_LIFTED)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("directory stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        // "directory listening on ADDR fingerprint HEX"
        let words: Vec<&str> = line.split_whitespace().collect();
        let (addr, fp) = match words.as_slice() {
            ["directory", "listening", "on", addr, "fingerprint", fp] => (*addr, *fp),
            _ => {
                let _ = child.kill();
                bail!("unexpected first line from the directory: {line:?}");
            }
        };
        Ok(Self {
            addr: addr.parse()?,
            fingerprint: fp.parse()?,
            child,
            _data: data,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the directory as an operator does (SIGTERM) and waits up to `limit` for it to
    /// exit, so that what it writes at exit (a profiler's output) is written.
    pub fn stop(mut self, limit: Duration) -> Result<()> {
        terminate(&mut self.child, limit)
    }

    /// The folder where the directory keeps its database.
    pub fn data_dir(&self) -> PathBuf {
        self._data.path().join("data")
    }
}

impl Drop for DirectoryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `child` SIGTERM and waits up to `limit` for it to exit (then kills it).
pub fn terminate(child: &mut Child, limit: Duration) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).context("no process id")?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            bail!("did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Where the `directory` binary is: `$DIRECTORY_BIN`, else next to this executable.
pub fn directory_bin() -> Result<PathBuf> {
    binary("directory", "DIRECTORY_BIN")
}

/// Where the `peer` binary is: `$PEER_BIN`, else next to this executable.
pub fn peer_bin() -> Result<PathBuf> {
    binary("peer", "PEER_BIN")
}

/// The binary `name` of this workspace: `$env`, else next to this executable.
pub fn binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let dir = me.parent().context("executable folder")?;
    let bin = dir.join(name);
    if bin.exists() {
        return Ok(bin);
    }
    bail!(
        "no {name} binary at {}; build it (cargo build --release -p {name}) or set {env}",
        bin.display()
    )
}

/// Client endpoints (one UDP socket each) over which many connections are spread.
pub struct ClientPool {
    endpoints: Vec<quinn::Endpoint>,
    config: quinn::ClientConfig,
    /// The identity's sealing keys: what registrations publish, and what mail is sealed with.
    pub sealer: Arc<Sealer>,
}

impl ClientPool {
    /// `sockets` loopback client endpoints; every connection presents `identity`.
    pub fn new(identity: &Identity, sockets: usize) -> Result<Self> {
        let config = tls::client_config(identity, ALPN_DIRECTORY, Expect::AnyKey)?;
        let mut endpoints = Vec::new();
        for _ in 0..sockets.max(1) {
            endpoints.push(quinn::Endpoint::client(SocketAddr::from((
                [127, 0, 0, 1],
                0,
            )))?);
        }
        let sealer = Arc::new(Sealer::new(identity, [9; 32])?);
        Ok(Self {
            endpoints,
            config,
            sealer,
        })
    }

    /// Like [`ClientPool::new`], but every connection heartbeats as a real peer does: a QUIC
    /// keep-alive every `heartbeat`, idle timeout three of them.
    pub fn heartbeating(identity: &Identity, sockets: usize, heartbeat: Duration) -> Result<Self> {
        let mut pool = Self::new(identity, sockets)?;
        let mut transport = tls::transport_config(ALPN_DIRECTORY, false);
        transport.keep_alive_interval(Some(heartbeat));
        transport.max_idle_timeout((heartbeat * 3).try_into().ok());
        pool.config.transport_config(Arc::new(transport));
        Ok(pool)
    }

    /// Connection number `i`, on endpoint `i % sockets`.
    pub async fn connect(&self, i: usize, addr: SocketAddr) -> Result<quinn::Connection> {
        let ep = &self.endpoints[i % self.endpoints.len()];
        Ok(ep
            .connect_with(self.config.clone(), addr, "directory")?
            .await?)
    }

    /// Registers `name` on `conn`; for an online peer, the event stream is drained and every
    /// delivered message acknowledged on a task of its own.
    pub async fn register(
        &self,
        conn: &quinn::Connection,
        name: &Name,
        heartbeat: Duration,
        online: bool,
    ) -> Result<()> {
        let req = DirectoryRequest::Register {
            name: name.clone(),
            listen_addrs: vec![],
            heartbeat_ms: heartbeat.as_millis() as u32,
            online,
            published: self.sealer.published(),
        };
        match request(conn, &req).await? {
            DirectoryResponse::Registered { .. } => {}
            other => bail!("register {name}: {other:?}"),
        }
        if online {
            let conn = conn.clone();
            tokio::spawn(async move {
                let _ = event_stream(&conn, |_| {}).await;
            });
        }
        Ok(())
    }

    pub fn close(&self) {
        for ep in &self.endpoints {
            ep.close(0u32.into(), b"bench done");
        }
    }
}

/// One request on its own bi-stream, one response: the directory protocol.
pub async fn request(
    conn: &quinn::Connection,
    req: &DirectoryRequest,
) -> Result<DirectoryResponse> {
    let (mut send, mut recv) = conn.open_bi().await?;
    framing::write_frame(&mut send, req).await?;
    send.finish()?;
    framing::read_frame::<DirectoryResponse, _>(&mut recv)
        .await?
        .ok_or_else(|| anyhow!("no response"))
}

/// Spawns `streams` tasks on `tasks`, each depositing the next of `letters` on a stream of its
/// own and waiting for the answer, until none is left.
pub fn spawn_deposits(
    tasks: &mut tokio::task::JoinSet<Result<()>>,
    conn: &quinn::Connection,
    letters: Arc<std::sync::Mutex<Vec<Letter>>>,
    streams: usize,
) {
    for _ in 0..streams {
        let (conn, letters) = (conn.clone(), letters.clone());
        tasks.spawn(async move {
            loop {
                let letter = letters.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(letter) = letter else { break };
                match request(&conn, &DirectoryRequest::DepositLetter { letter }).await? {
                    DirectoryResponse::Stored => {}
                    other => bail!("deposit: {other:?}"),
                }
            }
            Ok(())
        });
    }
}

/// Accepts the directory's event stream and acknowledges every `Deliver`; calls `seen` with
/// each event. Returns when the stream or connection ends.
pub async fn event_stream(
    conn: &quinn::Connection,
    mut seen: impl FnMut(&DirectoryEvent),
) -> Result<()> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    while let Some(event) = framing::read_frame::<DirectoryEvent, _>(&mut recv).await? {
        if let DirectoryEvent::DeliverLetter(l) = &event {
            framing::write_frame(&mut send, &EventAck::Delivered(l.id)).await?;
        }
        seen(&event);
    }
    Ok(())
}

/// A valid peer name made from a prefix and a number.
pub fn name(prefix: &str, i: usize) -> Name {
    Name::new(format!("{prefix}{i}")).unwrap_or_else(|_| unreachable_name())
}

fn unreachable_name() -> Name {
    // Every prefix used in this crate is lowercase ASCII; keep a valid fallback anyway.
    Name::new("bench").unwrap_or_else(|_| std::process::abort())
}

/// A shared identity for simulated peers: names bind to keys, and one key may hold many names.
pub fn load_identity() -> Result<Arc<Identity>> {
    Ok(Arc::new(Identity::generate("bench-loadgen")?))
}

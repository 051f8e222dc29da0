//! The benchmark runner: measures every figure of the benchmark table (issue 5) several times
//! and writes `results.json`, `results.md` and `presence.csv` to `--out`.
//!
//! ```sh
//! cargo build --release -p directory -p bench
//! target/release/loadgen --runs 5 --out target/bench          # the full run (~15 min)
//! target/release/loadgen --smoke --out target/bench-smoke     # seconds; proves it all works
//! ```
//!
//! Nothing here fails on a timing: a figure that misses its target is reported as such. A
//! figure whose measurement errs (a message not delivered, a request refused) is reported with
//! the error, and the exit code is non-zero.

use anyhow::{Context, Result};
use bench::{
    figures::{self, Params, Presence},
    DirectoryProcess, Summary,
};
use clap::Parser;
use serde::Serialize;
use std::{path::PathBuf, time::Instant};

#[derive(Parser, Debug)]
#[command(about = "p2pchat benchmark runner")]
struct Cli {
    /// A tiny, quick version of everything (for CI): proves the suite still works.
    #[arg(long)]
    smoke: bool,
    /// Repetitions of each figure (presence: measurement windows per population).
    #[arg(long)]
    runs: Option<usize>,
    /// Where results are written.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Only these figure groups (comma separated): peer, first, lookups, presence, mailbox,
    /// bulk (a file with send_file, 32 KiB chat messages, and the stream references), disk,
    /// rooms (a room of 50 in-process members: reach, burst, and deposits when all are offline),
    /// cluster (two directory nodes on three clustered nats-servers, beside one redb node),
    /// oneshot (whole `peer whois` and `peer send` processes; needs the peer binary),
    /// counts (instructions per lookup, deposit, heartbeat and direct message, under
    /// valgrind's callgrind; skipped without valgrind).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Online populations for the presence figure, e.g. 1000,5000,10000.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<usize>,
    /// Length of the lookup load window in seconds (longer for profiling).
    #[arg(long)]
    lookup_secs: Option<f64>,
}

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Serialize)]
struct Figure {
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    target: Option<f64>,
    better: Better,
    runs: Vec<f64>,
    summary: Option<Summary>,
    errors: Vec<String>,
}

#[derive(Default, Serialize)]
struct Report {
    smoke: bool,
    runs: usize,
    machine: String,
    started_unix: u64,
    seconds: f64,
    figures: Vec<Figure>,
    presence: Vec<Presence>,
}

impl Report {
    fn figure(
        &mut self,
        id: &'static str,
        title: &'static str,
        unit: &'static str,
        target: Option<f64>,
        better: Better,
    ) -> &mut Figure {
        if let Some(i) = self.figures.iter().position(|f| f.id == id) {
            return &mut self.figures[i];
        }
        self.figures.push(Figure {
            id,
            title,
            unit,
            target,
            better,
            runs: vec![],
            summary: None,
            errors: vec![],
        });
        let last = self.figures.len() - 1;
        &mut self.figures[last]
    }

    fn push(&mut self, spec: Spec, value: Result<f64>) {
        let f = self.figure(spec.0, spec.1, spec.2, spec.3, spec.4);
        match value {
            Ok(v) => {
                eprintln!("  {:<44} {:>12.1} {}", f.title, v, f.unit);
                f.runs.push(v);
            }
            Err(e) => {
                eprintln!("  {:<44} ERROR {e:#}", f.title);
                f.errors.push(format!("{e:#}"));
            }
        }
    }
}

type Spec = (
    &'static str,
    &'static str,
    &'static str,
    Option<f64>,
    Better,
);

const RTT_P50: Spec = ("rtt_p50", "direct RTT p50", "µs", Some(80.0), Better::Lower);
const RTT_P99: Spec = (
    "rtt_p99",
    "direct RTT p99",
    "µs",
    Some(1000.0),
    Better::Lower,
);
const TPUT: Spec = (
    "direct_msgs",
    "direct msgs/s (100 B, all acked)",
    "msg/s",
    Some(250_000.0),
    Better::Higher,
);
const FIRST: Spec = (
    "first_message",
    "first message to a new peer (median of peers)",
    "µs",
    Some(3000.0),
    Better::Lower,
);
const LOOKUPS: Spec = (
    "lookups",
    "directory lookups/s",
    "req/s",
    Some(50_000.0),
    Better::Higher,
);
const LOOKUPS_STREAM_EACH: Spec = (
    "lookups_stream_each",
    "  lookups/s, one stream per lookup (no pipelining)",
    "req/s",
    None,
    Better::Higher,
);
const LOOKUP_CPU: Spec = (
    "lookups_dir_cpu",
    "  directory CPU during lookups",
    "% core",
    None,
    Better::Lower,
);
const LOOKUP_GEN_CPU: Spec = (
    "lookups_gen_cpu",
    "  load generator CPU during lookups",
    "% core",
    None,
    Better::Lower,
);
const PRES_RSS: Spec = (
    "presence_rss",
    "directory RSS, largest population (target for 100k)",
    "MiB",
    Some(2048.0),
    Better::Lower,
);
const PRES_CPU: Spec = (
    "presence_cpu",
    "directory CPU, largest population heartbeating (target for 100k)",
    "% core",
    Some(40.0),
    Better::Lower,
);
const COUNT_LOOKUP: Spec = (
    "count_lookup",
    "instructions per lookup (directory)",
    "Ir",
    None,
    Better::Lower,
);
const COUNT_DEPOSIT: Spec = (
    "count_deposit",
    "instructions per committed deposit (directory)",
    "Ir",
    None,
    Better::Lower,
);
const COUNT_GROUPED_DEPOSIT: Spec = (
    "count_grouped_deposit",
    "instructions per deposit, 64 in flight (directory)",
    "Ir",
    None,
    Better::Lower,
);
const COUNT_HEARTBEAT: Spec = (
    "count_heartbeat",
    "instructions per heartbeat (directory)",
    "Ir",
    None,
    Better::Lower,
);
const COUNT_MESSAGE: Spec = (
    "count_direct_message",
    "instructions per direct message (receiving peer)",
    "Ir",
    None,
    Better::Lower,
);
const ONESHOT_WHOIS: Spec = (
    "oneshot_whois_p50",
    "one-shot `peer whois bob` process, p50",
    "ms",
    Some(20.0),
    Better::Lower,
);
const ONESHOT_WHOIS_P90: Spec = (
    "oneshot_whois_p90",
    "one-shot `peer whois bob` process, p90",
    "ms",
    None,
    Better::Lower,
);
const ONESHOT_SEND: Spec = (
    "oneshot_send_p50",
    "one-shot `peer send bob hello` (direct), p50",
    "ms",
    Some(20.0),
    Better::Lower,
);
const ONESHOT_SEND_P90: Spec = (
    "oneshot_send_p90",
    "one-shot `peer send bob hello` (direct), p90",
    "ms",
    None,
    Better::Lower,
);
const DEPOSITS: Spec = (
    "mailbox_deposits",
    "mailbox committed deposits/s, a stream each",
    "msg/s",
    Some(40_000.0),
    Better::Higher,
);
const DEPOSITS_PIPELINED: Spec = (
    "mailbox_deposits_pipelined",
    "mailbox committed deposits/s, pipelined",
    "msg/s",
    Some(40_000.0),
    Better::Higher,
);
const DRAIN: Spec = (
    "mailbox_drain",
    "mailbox drain rate",
    "msg/s",
    Some(20_000.0),
    Better::Higher,
);
const BULK_RATIO: Spec = (
    "bulk_ratio",
    "file (whole peer send-file process) / in-repo ref",
    "%",
    Some(80.0),
    Better::Higher,
);
const BULK_FILE: Spec = (
    "bulk_file",
    "file: whole peer send-file process to a peer listen",
    "MiB/s",
    None,
    Better::Higher,
);
const BULK_FILE_CPU: Spec = (
    "bulk_file_cpu",
    "  machine CPU per GiB: file",
    "core-s",
    None,
    Better::Lower,
);
const BULK_FILE_HASH: Spec = (
    "bulk_file_hash",
    "file: one BLAKE3 pass over it alone",
    "MiB/s",
    None,
    Better::Higher,
);
const BULK_FSYNC: Spec = (
    "bulk_fsync",
    "reference: fsync of a file of that size",
    "MiB/s",
    None,
    Better::Higher,
);
const BULK_CHAT_RATIO: Spec = (
    "bulk_chat_ratio",
    "32 KiB chat messages / in-repo ref",
    "%",
    None,
    Better::Higher,
);
const BULK_CHAT: Spec = (
    "bulk_chat",
    "32 KiB chat messages (in-process peers)",
    "MiB/s",
    None,
    Better::Higher,
);
const BULK_STREAM_RATIO: Spec = (
    "bulk_stream_ratio",
    "one stream on the peers' QUIC config / in-repo ref",
    "%",
    None,
    Better::Higher,
);
const BULK_PEER_CFG: Spec = (
    "bulk_peer_stream",
    "one stream on the peers' QUIC config (quicref --config peers)",
    "MiB/s",
    None,
    Better::Higher,
);
const BULK_PEER_CFG_CPU: Spec = (
    "bulk_peer_stream_cpu",
    "  machine CPU per GiB: peers' config",
    "core-s",
    None,
    Better::Lower,
);
const BULK_REF: Spec = (
    "bulk_quinn_ref",
    "in-repo ref: one stream, quinn-perf's config (quicref --config perf)",
    "MiB/s",
    None,
    Better::Higher,
);
const BULK_REF_CPU: Spec = (
    "bulk_quinn_ref_cpu",
    "  machine CPU per GiB: in-repo ref",
    "core-s",
    None,
    Better::Lower,
);
const BULK_REF_VS_PERF: Spec = (
    "bulk_ref_vs_perf",
    "in-repo ref / quinn-perf",
    "%",
    Some(90.0),
    Better::Higher,
);
const QUINN_PERF: Spec = (
    "quinn_perf",
    "quinn-perf (QUINN_PERF), client uploading, default settings",
    "MiB/s",
    None,
    Better::Higher,
);
const QUINN_PERF_CPU: Spec = (
    "quinn_perf_cpu",
    "  machine CPU per GiB: quinn-perf",
    "core-s",
    None,
    Better::Lower,
);
const FSYNC_P50: Spec = (
    "fsync_p50",
    "reference: 4 KiB write + fdatasync p50",
    "µs",
    None,
    Better::Lower,
);
const FSYNC_P99: Spec = (
    "fsync_p99",
    "reference: 4 KiB write + fdatasync p99",
    "µs",
    None,
    Better::Lower,
);
const REDB_COMMIT: Spec = (
    "redb_commit",
    "reference: one redb durable commit (1 msg)",
    "µs",
    None,
    Better::Lower,
);

const ROOM_P50: Spec = (
    "rooms_reach_p50",
    "room message to all 50 members, p50",
    "ms",
    Some(20.0),
    Better::Lower,
);
const ROOM_P99: Spec = (
    "rooms_reach_p99",
    "room message to all 50 members, p99",
    "ms",
    None,
    Better::Lower,
);
const ROOM_BURST: Spec = (
    "rooms_burst",
    "room msgs/s into 50 online members (all shown)",
    "msg/s",
    None,
    Better::Higher,
);
const ROOM_DEPOSITS: Spec = (
    "rooms_deposits",
    "room fan-out to 50 offline members: deposits/s",
    "msg/s",
    None,
    Better::Higher,
);
const ROOM_DIR_CPU: Spec = (
    "rooms_deposit_dir_cpu",
    "  directory CPU per 1000 room deposits",
    "core-ms",
    None,
    Better::Lower,
);
const ROOM_SENDER_CPU: Spec = (
    "rooms_deposit_sender_cpu",
    "  sender CPU per 1000 room deposits (sealing)",
    "core-ms",
    None,
    Better::Lower,
);

const CL_LOOKUPS_REDB: Spec = (
    "cluster_redb_lookups",
    "one redb node: lookups/s (beside the cluster)",
    "req/s",
    None,
    Better::Higher,
);
const CL_LOOKUPS: Spec = (
    "cluster_lookups",
    "cluster: lookups/s over 2 nodes (half ask the other)",
    "req/s",
    None,
    Better::Higher,
);
const CL_LOOKUPS_CPU: Spec = (
    "cluster_lookups_cpu",
    "  both nodes' CPU during cluster lookups",
    "% core",
    None,
    Better::Lower,
);
const CL_DEPOSITS_REDB: Spec = (
    "cluster_redb_deposits",
    "one redb node: committed deposits/s (beside)",
    "msg/s",
    None,
    Better::Higher,
);
const CL_DEPOSITS: Spec = (
    "cluster_deposits",
    "cluster: deposits/s committed in JetStream (R3)",
    "msg/s",
    None,
    Better::Higher,
);
const CL_DRAIN: Spec = (
    "cluster_drain",
    "cluster: mailbox drain rate",
    "msg/s",
    None,
    Better::Higher,
);
const CL_SAME_P50: Spec = (
    "cluster_redb_delivery_p50",
    "one redb node: deposit → pushed to recipient, p50",
    "ms",
    None,
    Better::Lower,
);
const CL_CROSS_P50: Spec = (
    "cluster_cross_p50",
    "cluster: deposit on A → pushed by B, p50",
    "ms",
    Some(100.0),
    Better::Lower,
);
const CL_CROSS_P99: Spec = (
    "cluster_cross_p99",
    "cluster: deposit on A → pushed by B, p99",
    "ms",
    Some(100.0),
    Better::Lower,
);
const CL_FAILOVER_P50: Spec = (
    "cluster_failover_p50",
    "cluster: node killed → peer online on the other, p50",
    "s",
    None,
    Better::Lower,
);
const CL_FAILOVER_P99: Spec = (
    "cluster_failover_p99",
    "cluster: node killed → peer online on the other, p99",
    "s",
    None,
    Better::Lower,
);

const CL_READY_REPLAY: Spec = (
    "cluster_ready_replay",
    "cluster: new node ready, replaying the log",
    "s",
    None,
    Better::Lower,
);
const CL_READY_SNAPSHOT: Spec = (
    "cluster_ready_snapshot",
    "cluster: new node ready, from a snapshot",
    "s",
    None,
    Better::Lower,
);
const CL_SNAPSHOT_SIZE: Spec = (
    "cluster_snapshot_mib",
    "cluster: snapshot of that log",
    "MiB",
    None,
    Better::Lower,
);

const MIB: f64 = (1 << 20) as f64;

/// Mailbox quotas no figure reaches: the deposit figures measure the directory, not its caps.
const UNBOUNDED_MAILBOX: &[&str] = &[
    "--mailbox-quota-messages",
    "100000000",
    "--mailbox-quota-bytes",
    "100000000000",
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // On Ctrl-C or SIGTERM, dropping `run` drops (and so kills) every spawned directory.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = run(cli) => r,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            _ = term.recv() => anyhow::bail!("terminated"),
        }
    })
}

async fn run(cli: Cli) -> Result<()> {
    let mut p = if cli.smoke {
        Params::smoke()
    } else {
        Params::full()
    };
    if let Some(secs) = cli.lookup_secs {
        p.lookup_window = std::time::Duration::from_secs_f64(secs);
    }
    if !cli.peers.is_empty() {
        p.presence_sizes = cli.peers.clone();
    }
    let runs = cli.runs.unwrap_or(if cli.smoke { 1 } else { 5 });
    if cli.smoke {
        p.presence_windows = p.presence_windows.min(runs.max(1));
    } else {
        p.presence_windows = runs.max(1);
    }
    let wants = |g: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == g);
    let bin = bench::directory_bin()?;
    let identity = bench::load_identity()?;
    std::fs::create_dir_all(&cli.out)?;
    let started = Instant::now();
    let mut report = Report {
        smoke: cli.smoke,
        runs,
        machine: machine(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        ..Default::default()
    };

    // The file the bulk figure sends: written once, sent in every run.
    let bulk_file = if wants("bulk") {
        Some(figures::BulkFile::create(p.bulk_bytes).context("writing the bulk figure's file")?)
    } else {
        None
    };

    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        if wants("peer") || wants("first") || wants("bulk") {
            let dir = DirectoryProcess::spawn(&bin, &[])?;
            if wants("peer") {
                match figures::direct_rtt(&dir, &p).await {
                    Ok((p50, p99)) => {
                        report.push(RTT_P50, Ok(p50));
                        report.push(RTT_P99, Ok(p99));
                    }
                    Err(e) => report.push(RTT_P50, Err(e)),
                }
                report.push(TPUT, figures::direct_throughput(&dir, &p).await);
            }
            if wants("first") {
                let r = figures::first_message(&dir, &p, run).await;
                report.push(
                    FIRST,
                    r.map(|v| Summary::of(&v).map_or(f64::NAN, |s| s.median)),
                );
            }
            if let Some(bulk) = &bulk_file {
                bulk_group(&mut report, &dir, bulk, &p, run).await;
            }
        }
        if wants("lookups") {
            let dir = DirectoryProcess::spawn(&bin, &[])?;
            match figures::lookups(&[&dir], &identity, &p, figures::Requests::Pipelined).await {
                Ok(w) => {
                    report.push(LOOKUPS, Ok(w.rate));
                    report.push(LOOKUP_CPU, Ok(w.directory_cpu_pct));
                    report.push(LOOKUP_GEN_CPU, Ok(w.loadgen_cpu_pct));
                }
                Err(e) => report.push(LOOKUPS, Err(e)),
            }
            let each =
                figures::lookups(&[&dir], &identity, &p, figures::Requests::StreamEach).await;
            report.push(LOOKUPS_STREAM_EACH, each.map(|w| w.rate));
        }
        if wants("mailbox") {
            let dir = DirectoryProcess::spawn(&bin, UNBOUNDED_MAILBOX)?;
            match figures::mailbox(&dir, &identity, &p, figures::Requests::StreamEach).await {
                Ok((dep, drain)) => {
                    report.push(DEPOSITS, Ok(dep));
                    report.push(DRAIN, Ok(drain));
                }
                Err(e) => report.push(DEPOSITS, Err(e)),
            }
            let pipelined = figures::mailbox(&dir, &identity, &p, figures::Requests::Pipelined);
            report.push(DEPOSITS_PIPELINED, pipelined.await.map(|(d, _)| d));
        }
        if wants("counts") && run == 0 {
            // Counts do not vary between runs: once is enough.
            if bench::counts::available() {
                let sizes = if cli.smoke {
                    bench::counts::Sizes {
                        lookups: 20,
                        deposits: 20,
                        grouped_deposits: 128,
                        heartbeat_conns: 20,
                        heartbeat_secs: 5,
                        messages: 10,
                    }
                } else {
                    bench::counts::Sizes {
                        lookups: 500,
                        deposits: 300,
                        grouped_deposits: 2000,
                        heartbeat_conns: 100,
                        heartbeat_secs: 10,
                        messages: 100,
                    }
                };
                let c = bench::counts::measure(&bin, &identity, sizes, UNBOUNDED_MAILBOX).await;
                report.push(COUNT_LOOKUP, c.lookup);
                report.push(COUNT_DEPOSIT, c.deposit);
                report.push(COUNT_GROUPED_DEPOSIT, c.grouped_deposit);
                report.push(COUNT_HEARTBEAT, c.heartbeat);
                report.push(COUNT_MESSAGE, c.direct_message);
            } else {
                eprintln!("counts: SKIPPED, valgrind is not installed (apt-get install valgrind)");
            }
        }
        if wants("rooms") {
            let dir = DirectoryProcess::spawn(&bin, &[])?;
            match figures::rooms_online(&dir, &p).await {
                Ok(r) => {
                    report.push(ROOM_P50, Ok(r.p50_ms));
                    report.push(ROOM_P99, Ok(r.p99_ms));
                    report.push(ROOM_BURST, Ok(r.burst_rate));
                }
                Err(e) => report.push(ROOM_P50, Err(e)),
            }
            drop(dir);
            let dir = DirectoryProcess::spawn(&bin, UNBOUNDED_MAILBOX)?;
            match figures::rooms_offline(&dir, &p).await {
                Ok(d) => {
                    report.push(ROOM_DEPOSITS, Ok(d.rate));
                    report.push(ROOM_DIR_CPU, Ok(d.directory_cpu_ms_per_1000));
                    report.push(ROOM_SENDER_CPU, Ok(d.sender_cpu_ms_per_1000));
                }
                Err(e) => report.push(ROOM_DEPOSITS, Err(e)),
            }
        }
        if wants("oneshot") {
            let dir = DirectoryProcess::spawn(&bin, &[])?;
            match bench::oneshot::measure(&dir, p.oneshot_runs) {
                Ok(o) => {
                    let q = |v: &[f64], q| {
                        let mut v = v.to_vec();
                        v.sort_by(f64::total_cmp);
                        bench::quantile_sorted(&v, q)
                    };
                    report.push(ONESHOT_WHOIS, Ok(q(&o.whois, 0.5)));
                    report.push(ONESHOT_WHOIS_P90, Ok(q(&o.whois, 0.9)));
                    report.push(ONESHOT_SEND, Ok(q(&o.send, 0.5)));
                    report.push(ONESHOT_SEND_P90, Ok(q(&o.send, 0.9)));
                }
                Err(e) => report.push(ONESHOT_WHOIS, Err(e)),
            }
        }
        if wants("cluster") {
            cluster(&bin, &identity, &p, &mut report).await?;
        }
        if wants("disk") {
            match figures::fsync_cost(p.fsync_count) {
                Ok((p50, p99)) => {
                    report.push(FSYNC_P50, Ok(p50));
                    report.push(FSYNC_P99, Ok(p99));
                }
                Err(e) => report.push(FSYNC_P50, Err(e)),
            }
            report.push(REDB_COMMIT, figures::redb_commit_cost(p.fsync_count));
        }
    }

    if wants("presence") {
        for &n in &p.presence_sizes {
            eprintln!("presence: {n} peers online");
            match figures::presence(&bin, n, &p).await {
                Ok(pr) => {
                    eprintln!(
                        "  registered in {:.1} s; RSS {:.1} MiB; CPU {:?} %; heartbeats/s {:?}; probe p50 {:?} µs",
                        pr.register_secs, pr.rss_mib, pr.cpu_pct, pr.heartbeats_per_sec, pr.probe_p50_us
                    );
                    report.presence.push(pr);
                }
                Err(e) => {
                    eprintln!("  ERROR {e:#}");
                    report.push(PRES_CPU, Err(e.context(format!("{n} peers"))));
                }
            }
        }
        if let Some(largest) = report.presence.iter().max_by_key(|pr| pr.peers).cloned() {
            report.push(PRES_RSS, Ok(largest.rss_mib));
            for &c in &largest.cpu_pct {
                report.push(PRES_CPU, Ok(c));
            }
        }
    }

    for f in &mut report.figures {
        f.summary = Summary::of(&f.runs);
    }
    report.seconds = started.elapsed().as_secs_f64();
    let failed: usize = report.figures.iter().map(|f| f.errors.len()).sum();
    write_outputs(&cli.out, &report)?;
    println!("{}", markdown(&report));
    eprintln!(
        "wrote {}/results.json, results.md, presence.csv in {:.0} s",
        cli.out.display(),
        report.seconds
    );
    if failed > 0 {
        anyhow::bail!("{failed} measurements failed (see errors in results.json)");
    }
    Ok(())
}

/// The bulk figures (issue 19), in one run and in an order that alternates between runs, so
/// that drift in background load favours none: the file as whole processes, 32 KiB chat
/// messages, one stream on the peers' configuration, the in-repo reference and, when
/// `QUINN_PERF` names it, quinn-perf. Every ratio is against the in-repo reference of the same
/// run; the reference's own ratio to quinn-perf shows that it stands for quinn-perf.
async fn bulk_group(
    report: &mut Report,
    dir: &DirectoryProcess,
    file: &figures::BulkFile,
    p: &Params,
    run: usize,
) {
    use bench::bulk::{self, Config};
    let bytes = p.bulk_bytes;
    let blocking = |f: Box<dyn FnOnce() -> Result<figures::Bulk> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
    };
    let (addr, path, size) = (dir.addr, file.path.clone(), file.size);
    let perf_bin = bulk::quinn_perf_bin();
    let perf_secs = p.bulk_perf_secs;
    let not_run = || Err(anyhow::anyhow!("not run"));
    let (mut sent, mut chat, mut stream, mut reference, mut perf) =
        (not_run(), None, not_run(), not_run(), None);
    let mut order = [0, 1, 2, 3, 4];
    if run % 2 == 1 {
        order.reverse();
    }
    for step in order {
        match step {
            0 => {
                let path = path.clone();
                sent = blocking(Box::new(move || bulk::send_file(addr, &path, size))).await;
            }
            1 => chat = Some(figures::bulk_chat(dir, p).await),
            2 => stream = blocking(Box::new(move || bulk::stream(Config::Peers, bytes))).await,
            3 => reference = blocking(Box::new(move || bulk::stream(Config::Perf, bytes))).await,
            _ => {
                if let Some(bin) = perf_bin.clone() {
                    let q = blocking(Box::new(move || bulk::quinn_perf(&bin, bytes, perf_secs)));
                    perf = Some(q.await);
                }
            }
        }
    }
    let ratio = |v: f64| reference.as_ref().ok().map(|r| v / r.rate * 100.0);
    match sent {
        Ok(f) => {
            if let Some(r) = ratio(f.rate) {
                report.push(BULK_RATIO, Ok(r));
            }
            report.push(BULK_FILE, Ok(f.rate / MIB));
            report.push(BULK_FILE_CPU, Ok(f.cpu_per_gib));
        }
        Err(e) => report.push(BULK_FILE, Err(e)),
    }
    report.push(BULK_FILE_HASH, hash_rate(&file.path).await);
    report.push(BULK_FSYNC, figures::fsync_bulk(bytes).map(|v| v / MIB));
    if let Some(chat) = chat {
        if let Some(r) = chat.as_ref().ok().and_then(|&c| ratio(c)) {
            report.push(BULK_CHAT_RATIO, Ok(r));
        }
        report.push(BULK_CHAT, chat.map(|v| v / MIB));
    }
    match stream {
        Ok(s) => {
            if let Some(r) = ratio(s.rate) {
                report.push(BULK_STREAM_RATIO, Ok(r));
            }
            report.push(BULK_PEER_CFG, Ok(s.rate / MIB));
            report.push(BULK_PEER_CFG_CPU, Ok(s.cpu_per_gib));
        }
        Err(e) => report.push(BULK_PEER_CFG, Err(e)),
    }
    match perf {
        Some(Ok(q)) => {
            if let Some(r) = ratio(q.rate) {
                // The reference over quinn-perf, not the other way round.
                report.push(BULK_REF_VS_PERF, Ok(100.0 * 100.0 / r));
            }
            report.push(QUINN_PERF, Ok(q.rate / MIB));
            report.push(QUINN_PERF_CPU, Ok(q.cpu_per_gib));
        }
        Some(Err(e)) => report.push(QUINN_PERF, Err(e)),
        None => {}
    }
    match reference {
        Ok(r) => {
            report.push(BULK_REF, Ok(r.rate / MIB));
            report.push(BULK_REF_CPU, Ok(r.cpu_per_gib));
        }
        Err(e) => report.push(BULK_REF, Err(e)),
    }
}

/// One BLAKE3 pass over the file alone (what each side's hashing costs), MiB/s.
async fn hash_rate(path: &std::path::Path) -> Result<f64> {
    let t = Instant::now();
    let (_, size) = peer::files::hash_file(path).await?;
    Ok(size as f64 / t.elapsed().as_secs_f64() / MIB)
}

/// The cluster's figures (issue 17), each beside one redb node in the same run: lookups over two
/// nodes, deposits committed through JetStream with 3 replicas, delivery from a deposit on one
/// node to a recipient on the other, and failover. Needs `nats-server`.
async fn cluster(
    bin: &std::path::Path,
    identity: &common::Identity,
    p: &Params,
    report: &mut Report,
) -> Result<()> {
    use bench::cluster::{self, ClusterKey, NatsCluster};
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let single = DirectoryProcess::spawn(bin, UNBOUNDED_MAILBOX)?;
    let lookups = figures::lookups(&[&single], identity, p, figures::Requests::Pipelined).await;
    report.push(CL_LOOKUPS_REDB, lookups.map(|w| w.rate));
    let deposits = figures::mailbox(&single, identity, p, figures::Requests::StreamEach).await;
    report.push(CL_DEPOSITS_REDB, deposits.map(|(d, _)| d));
    let same = cluster::cross_node_delivery(&single, &single, identity, p.cluster_deliveries).await;
    report.push(CL_SAME_P50, same.map(|v| bench::quantile_sorted(&v, 0.5)));
    drop(single);

    let key = ClusterKey::new(bin)?;
    let nats = NatsCluster::start(3)?;
    let a = cluster::node(bin, &nats, &key, 3, any, UNBOUNDED_MAILBOX)?;
    let b = cluster::node(bin, &nats, &key, 3, any, UNBOUNDED_MAILBOX)?;
    match figures::lookups(&[&a, &b], identity, p, figures::Requests::Pipelined).await {
        Ok(w) => {
            report.push(CL_LOOKUPS, Ok(w.rate));
            report.push(CL_LOOKUPS_CPU, Ok(w.directory_cpu_pct));
        }
        Err(e) => report.push(CL_LOOKUPS, Err(e)),
    }
    match figures::mailbox(&a, identity, p, figures::Requests::StreamEach).await {
        Ok((deposits, drain)) => {
            report.push(CL_DEPOSITS, Ok(deposits));
            report.push(CL_DRAIN, Ok(drain));
        }
        Err(e) => report.push(CL_DEPOSITS, Err(e)),
    }
    match cluster::cross_node_delivery(&a, &b, identity, p.cluster_deliveries).await {
        Ok(v) => {
            report.push(CL_CROSS_P50, Ok(bench::quantile_sorted(&v, 0.5)));
            report.push(CL_CROSS_P99, Ok(bench::quantile_sorted(&v, 0.99)));
        }
        Err(e) => report.push(CL_CROSS_P50, Err(e)),
    }
    drop((a, b, nats));
    match cluster::failover(bin, identity, &key, p.cluster_kills).await {
        Ok(v) => {
            report.push(CL_FAILOVER_P50, Ok(bench::quantile_sorted(&v, 0.5)));
            report.push(CL_FAILOVER_P99, Ok(bench::quantile_sorted(&v, 0.99)));
        }
        Err(e) => report.push(CL_FAILOVER_P50, Err(e)),
    }
    let entries = p.cluster_log_entries;
    match tokio::task::spawn_blocking(move || cluster::new_node_ready(entries)).await? {
        Ok(ready) => {
            report.push(CL_READY_REPLAY, Ok(ready.replay_secs));
            report.push(CL_READY_SNAPSHOT, Ok(ready.snapshot_secs));
            report.push(CL_SNAPSHOT_SIZE, Ok(ready.snapshot_mib));
        }
        Err(e) => report.push(CL_READY_REPLAY, Err(e)),
    }
    Ok(())
}

fn write_outputs(out: &std::path::Path, report: &Report) -> Result<()> {
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(report)?,
    )
    .context("writing results.json")?;
    std::fs::write(out.join("results.md"), markdown(report))?;
    let mut csv = String::from(
        "peers,heartbeat_s,register_s,rss_mib,cpu_pct_median,cpu_pct_min,cpu_pct_max,heartbeats_per_s,probe_p50_us,probe_p99_us\n",
    );
    for pr in &report.presence {
        let cpu = Summary::of(&pr.cpu_pct);
        let med = |v: &[f64]| Summary::of(v).map_or(f64::NAN, |s| s.median);
        csv.push_str(&format!(
            "{},{},{:.2},{:.1},{:.3},{:.3},{:.3},{:.1},{:.1},{:.1}\n",
            pr.peers,
            pr.heartbeat_secs,
            pr.register_secs,
            pr.rss_mib,
            cpu.map_or(f64::NAN, |s| s.median),
            cpu.map_or(f64::NAN, |s| s.min),
            cpu.map_or(f64::NAN, |s| s.max),
            med(&pr.heartbeats_per_sec),
            med(&pr.probe_p50_us),
            med(&pr.probe_p99_us),
        ));
    }
    std::fs::write(out.join("presence.csv"), csv)?;
    Ok(())
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn markdown(report: &Report) -> String {
    let mut s = String::from(
        "| figure | target | median | min – max | runs | meets target |\n|---|---|---|---|---|---|\n",
    );
    for f in &report.figures {
        let target = match (f.target, f.better) {
            (Some(t), Better::Higher) => format!("≥ {} {}", fmt(t), f.unit),
            (Some(t), Better::Lower) => format!("≤ {} {}", fmt(t), f.unit),
            (None, _) if f.title.trim_start().starts_with("reference") => "reference".into(),
            (None, _) => String::new(),
        };
        let (median, spread, meets) = match f.summary {
            Some(sm) => (
                format!("{} {}", fmt(sm.median), f.unit),
                format!("{} – {}", fmt(sm.min), fmt(sm.max)),
                match (f.target, f.better) {
                    (Some(t), Better::Higher) => yes_no(sm.median >= t),
                    (Some(t), Better::Lower) => yes_no(sm.median <= t),
                    (None, _) => "",
                },
            ),
            None => ("—".into(), "—".into(), ""),
        };
        let errors = if f.errors.is_empty() {
            String::new()
        } else {
            format!(" ({} failed)", f.errors.len())
        };
        s.push_str(&format!(
            "| {} | {target} | {median} | {spread} | {}{errors} | {meets} |\n",
            f.title.trim(),
            f.runs.len()
        ));
    }
    if !report.presence.is_empty() {
        s.push_str("\n| online peers | heartbeat | register all | RSS | RSS at start | directory CPU (median, min – max) | heartbeats/s | probe lookup RTT p50 / p99 |\n|---|---|---|---|---|---|---|---|\n");
        for pr in &report.presence {
            let cpu = Summary::of(&pr.cpu_pct);
            let med = |v: &[f64]| Summary::of(v).map_or(f64::NAN, |s| s.median);
            s.push_str(&format!(
                "| {} | {} s | {:.1} s | {:.1} MiB | {:.1} MiB | {:.2} % ({:.2} – {:.2}) | {:.0} | {} / {} µs |\n",
                pr.peers,
                pr.heartbeat_secs,
                pr.register_secs,
                pr.rss_mib,
                pr.rss_idle_mib,
                cpu.map_or(f64::NAN, |s| s.median),
                cpu.map_or(f64::NAN, |s| s.min),
                cpu.map_or(f64::NAN, |s| s.max),
                med(&pr.heartbeats_per_sec),
                fmt(med(&pr.probe_p50_us)),
                fmt(med(&pr.probe_p99_us)),
            ));
        }
    }
    s
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "**no**"
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.to_string()))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem}")
}

//! Attacks on connection slots and memory, by hand-made QUIC clients from another loopback
//! host (127.0.0.2, 127.0.0.3) than the real peers (127.0.0.1): connections that pipeline
//! requests and never read the answers, one host taking every slot, connections that never
//! register, and a flood of strangers at a peer. Each test checks that real peers keep working
//! during the attack.

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{
    defaults::{
        ALPN_DIRECTORY, ALPN_PEER, ANSWER_TIMEOUT, MAX_CONNECTIONS_PER_IP, PEER_UNVERIFIED,
        PEER_VERIFY_TIMEOUT, REGISTRATION_TIMEOUT,
    },
    framing,
    tls::Expect,
    wire::{codes, DirectoryRequest, DirectoryResponse},
    Name,
};
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};
use tests::{
    is_message_from, poll_until,
    raw::{request, Raw},
    Net, Running, SHORT,
};
use tokio::task::JoinSet;

/// The attackers' host. Real peers are on 127.0.0.1.
const MALLORY: [u8; 4] = [127, 0, 0, 2];

/// What the directory may reach under the attack (the bound).
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// How long an attack on memory runs, and the part of it spent opening connections. The
/// windows fill within a second of the pumping; the registration timeout closes the
/// connections at 10 s, after the peak.
const ATTACK: Duration = Duration::from_secs(12);
const DIALING: Duration = Duration::from_secs(4);

/// A runtime whose threads drive the attackers' connections, also between the steps of a
/// test.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A test's world: a directory, its real peers (c2 listening, c1 registered, both on
/// 127.0.0.1), and a runtime for the attackers.
fn real_peers() -> Result<(Net, Running, tokio::runtime::Runtime)> {
    let net = Net::new()?;
    let c2 = net.listen("c2")?;
    net.register("c1")?;
    Ok((net, c2, runtime()?))
}

/// The resident memory of process `pid`, in KiB, from /proc.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("malformed {line:?}"))?
        .parse()?)
}

/// An attacker's transport: receive windows so small that the directory's answers stop at
/// once, and a send window small enough that a write is done only once the directory has most
/// of it (not while it waits in the attacker's own buffer).
fn never_reads() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(1024u32.into());
    t.receive_window(4096u32.into());
    t.send_window(256 * 1024);
    t
}

/// True if `err` is a connection the server refused before its handshake.
fn is_refused(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<quinn::ConnectionError>(),
        Some(quinn::ConnectionError::ConnectionClosed(close))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

/// Waits for `conn` to be closed by the remote with application code `code`.
async fn closed_with(conn: &quinn::Connection, code: u32, within: Duration) -> Result<()> {
    match tokio::time::timeout(within, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code.into_inner() == u64::from(code) =>
        {
            Ok(())
        }
        Ok(other) => bail!("closed with {other:?}, not code {code}"),
        Err(_) => bail!("still open after {within:?}"),
    }
}

/// Fails if less than `timeout` (less a second: the handshake counts) passed since `started`.
fn not_before(started: Instant, timeout: Duration) -> Result<()> {
    let waited = started.elapsed();
    ensure!(
        waited + Duration::from_secs(1) >= timeout,
        "it came after {waited:?}, before the {timeout:?} deadline"
    );
    Ok(())
}

/// `conn` is still served: a lookup of c2 finds it.
fn still_served(rt: &tokio::runtime::Runtime, conn: &quinn::Connection) -> Result<()> {
    let lookup = DirectoryRequest::Lookup {
        name: Name::new("c2")?,
    };
    let answer = rt.block_on(request(conn, &lookup))?;
    ensure!(
        matches!(answer, DirectoryResponse::Peer(_)),
        "a lookup answered {answer:?}"
    );
    Ok(())
}

/// A real peer's message, sent by `c1` while an attack runs, reaches `c2` (directly or
/// through the mailbox).
fn real_message(net: &Net, c2: &mut Running, body: &str) -> Result<()> {
    let sent = net.send("c1", "c2", body)?;
    ensure!(
        sent["status"] == "delivered" || sent["status"] == "queued",
        "c1's send during the attack: {sent}"
    );
    let got = c2.wait_json("c1's message during the attack", SHORT, |v| {
        is_message_from(v, "c1")
    })?;
    ensure!(got["body"] == body, "c2 got {got}");
    Ok(())
}

/// What a memory attack did.
#[derive(Debug, Default)]
struct Flood {
    connected: u64,
    refused: u64,
    /// Dials that failed otherwise (a handshake that timed out under the load).
    failed: u64,
}

/// Opens up to `connections` connections from [`MALLORY`] for [`DIALING`],
/// then on each opens as many streams as the directory allows, each pipelining lookups and
/// never reading an answer, until `ATTACK` has passed or `stop` is set.
/// Counts the request bytes written in `written`.
async fn flood(
    dir: SocketAddr,
    connections: usize,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<Flood> {
    let start = tokio::time::Instant::now();
    let deadline = start + ATTACK;
    let mallory = Arc::new(Raw::at("mallory", MALLORY.into())?);
    let mut config = mallory.config(ALPN_DIRECTORY, Expect::AnyKey)?;
    config.transport_config(Arc::new(never_reads()));
    let mut dials = JoinSet::new();
    for _ in 0..connections {
        let (mallory, config) = (mallory.clone(), config.clone());
        dials.spawn(async move { mallory.connect(config, dir).await });
    }
    let mut report = Flood::default();
    let mut held = Vec::new();
    let _ = tokio::time::timeout_at(start + DIALING, async {
        while let Some(dial) = dials.join_next().await {
            match dial {
                Ok(Ok(conn)) => held.push(conn),
                Ok(Err(e)) if is_refused(&e) => report.refused += 1,
                _ => report.failed += 1,
            }
        }
    })
    .await;
    report.connected = held.len() as u64;
    report.failed += dials.len() as u64;
    drop(dials);

    let lookup = framing::encode(&DirectoryRequest::Lookup {
        name: Name::new("c2")?,
    })?;
    let chunk: Arc<[u8]> = lookup.repeat(16 * 1024 / lookup.len()).into();
    let mut pumps = JoinSet::new();
    for conn in &held {
        let (conn, chunk, written, stop) =
            (conn.clone(), chunk.clone(), written.clone(), stop.clone());
        pumps.spawn(async move {
            let mut streams = JoinSet::new();
            while !stop.load(Ordering::Relaxed) {
                // Waits while the directory has as many streams open as it allows.
                let Ok(Ok((mut send, recv))) =
                    tokio::time::timeout_at(deadline, conn.open_bi()).await
                else {
                    break;
                };
                let (chunk, written, stop) = (chunk.clone(), written.clone(), stop.clone());
                streams.spawn(async move {
                    let _unread = recv;
                    while !stop.load(Ordering::Relaxed) {
                        if send.write_all(&chunk).await.is_err() {
                            return;
                        }
                        written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                });
            }
            // Holds the streams to the end of the attack.
            let _ = tokio::time::timeout_at(deadline, streams.join_all()).await;
        });
    }
    let _ = tokio::time::timeout_at(deadline, pumps.join_all()).await;
    Ok(report)
}

/// The attack: 1000 connections from one host, each pipelining lookups on every stream
/// it may open and never reading an answer. The directory's memory stays under 64 MB, and a real
/// peer registers and sends meanwhile. Before the transport limits and the cap per host, each
/// connection could make the directory hold 64 streams × 1.25 MB.
#[test]
fn memory_stays_bounded_under_connections_that_never_read() -> Result<()> {
    const CONNECTIONS: usize = 1000;
    let (net, mut c2, rt) = real_peers()?;
    let pid = net.dir().pid().context("the directory's pid")?;
    let before = rss_kib(pid)?;
    let dir = net.dir().addr();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let attack = rt.spawn(flood(dir, CONNECTIONS, written.clone(), stop.clone()));
    let (peak, real) = thread::scope(|s| {
        let real = s.spawn(|| {
            let pumping = || Ok((written.load(Ordering::Relaxed) > 0).then_some(()));
            poll_until(
                "the attack's requests",
                ATTACK,
                Duration::from_millis(20),
                pumping,
            )?;
            real_message(&net, &mut c2, "during the flood")
        });
        // Sampled until the attack ends (within ATTACK and the dials' margin); stopped early
        // once over the limit, so that a failing run does not take the machine's memory.
        let mut peak = before;
        while !attack.is_finished() {
            peak = peak.max(rss_kib(pid)?);
            if peak > RSS_LIMIT_KIB {
                stop.store(true, Ordering::Relaxed);
            }
            thread::sleep(Duration::from_millis(20));
        }
        // What arrived last is still being buffered.
        for _ in 0..50 {
            peak = peak.max(rss_kib(pid)?);
            thread::sleep(Duration::from_millis(20));
        }
        let real = real
            .join()
            .map_err(|_| anyhow!("the real peer's thread panicked"))?;
        Ok::<_, anyhow::Error>((peak, real))
    })?;
    let report = rt.block_on(attack)??;
    let after = rss_kib(pid)?;
    eprintln!(
        "directory RSS: {before} KiB before, peak {peak} KiB, {after} KiB after; attack: \
         {} connected, {} refused, {} failed, {} KiB of requests written",
        report.connected,
        report.refused,
        report.failed,
        written.load(Ordering::Relaxed) / 1024
    );
    ensure!(
        peak < RSS_LIMIT_KIB,
        "the directory reached {peak} KiB of RSS (from {before} KiB) under {} connections \
         that never read their answers",
        report.connected
    );
    ensure!(
        report.connected <= u64::from(MAX_CONNECTIONS_PER_IP),
        "{} connections from one host were served",
        report.connected
    );
    real.context("a real peer during the flood")?;
    drop(rt);
    net.assert_no_panics()
}

/// One host holds at most --max-connections-per-ip connections (64): the next is refused
/// before its handshake, while a real peer from another host registers and sends; once one
/// of the host's connections ends, the host may open another.
#[test]
fn one_host_cannot_take_every_slot() -> Result<()> {
    let (net, mut c2, rt) = real_peers()?;
    let dir = net.dir().addr();
    let mallory = rt.block_on(async { Raw::at("mallory", MALLORY.into()) })?;
    let mut held = rt.block_on(async {
        let mut held = Vec::new();
        for i in 0..MAX_CONNECTIONS_PER_IP {
            let conn = mallory.dial(dir, ALPN_DIRECTORY, Expect::AnyKey).await;
            held.push(conn.with_context(|| format!("connection {i} of the host's allowance"))?);
        }
        Ok::<_, anyhow::Error>(held)
    })?;
    let over = rt.block_on(mallory.dial(dir, ALPN_DIRECTORY, Expect::AnyKey));
    match over {
        Err(e) if is_refused(&e) => {}
        Err(e) => bail!("connection {MAX_CONNECTIONS_PER_IP} + 1 failed, but not refused: {e:#}"),
        Ok(_) => bail!("connection {MAX_CONNECTIONS_PER_IP} + 1 from one host was served"),
    }
    // A real peer, from another host, while the slots are held.
    real_message(&net, &mut c2, "while one host holds its slots")?;
    // A connection that ends gives its slot back.
    if let Some(conn) = held.pop() {
        conn.close(codes::OK.into(), b"done");
    }
    let again = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match mallory.dial(dir, ALPN_DIRECTORY, Expect::AnyKey).await {
                Ok(conn) => return Ok(conn),
                Err(e) if is_refused(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.context("a connection after one ended")),
            }
        }
    });
    again?;
    drop(held);
    net.assert_no_panics()
}

/// A connection that does not register within the registration timeout (10 s, handshake
/// included) is closed with TIMED_OUT; a registered one stays, and a real peer is served
/// meanwhile. Before, an unregistered connection held its slot for as long as it lived.
#[test]
fn an_unregistered_connection_is_closed_after_the_deadline() -> Result<()> {
    let (net, mut c2, rt) = real_peers()?;
    let dir = net.dir().addr();
    let (lurker, registered) = rt.block_on(async {
        let lurker = Raw::at("lurker", MALLORY.into())?
            .dial(dir, ALPN_DIRECTORY, Expect::AnyKey)
            .await?;
        let registered = Raw::new("honest")?.registered(dir, "honest").await?;
        Ok::<_, anyhow::Error>((lurker, registered))
    })?;
    let started = Instant::now();
    let closed = rt.spawn(async move {
        closed_with(
            &lurker,
            codes::TIMED_OUT,
            REGISTRATION_TIMEOUT + Duration::from_secs(5),
        )
        .await
    });
    real_message(&net, &mut c2, "while a connection lurks")?;
    rt.block_on(closed)?
        .context("the connection that never registered")?;
    not_before(started, REGISTRATION_TIMEOUT)?;
    still_served(&rt, &registered).context("the registered connection, after the deadline")?;
    net.assert_no_panics()
}

/// A registered client that pipelines requests and never reads the answers has that stream
/// stopped and reset with TIMED_OUT once ANSWER_TIMEOUT (10 s) has passed, which frees what
/// the directory held for it; its connection still works, and so does a real peer meanwhile.
/// Before, the directory waited on the answers for as long as the connection lived.
#[test]
fn answers_not_taken_in_time_reset_the_stream() -> Result<()> {
    let (net, mut c2, rt) = real_peers()?;
    let dir = net.dir().addr();
    let (conn, send, _unread, started) = rt.block_on(async {
        let mallory = Raw::at("mallory", MALLORY.into())?;
        let mut config = mallory.config(ALPN_DIRECTORY, Expect::AnyKey)?;
        config.transport_config(Arc::new(never_reads()));
        let conn = mallory.connect(config, dir).await?;
        mallory.register(&conn, "mallory").await?;
        let lookup = framing::encode(&DirectoryRequest::Lookup {
            name: Name::new("c2")?,
        })?;
        // The receiving half is kept, never read: dropping it would stop the answers at once.
        let (mut send, unread) = conn.open_bi().await?;
        // Far more answers than the client's window takes.
        send.write_all(&lookup.repeat(2000)).await?;
        Ok::<_, anyhow::Error>((conn, send, unread, Instant::now()))
    })?;
    real_message(&net, &mut c2, "while answers wait")?;
    let stopped = rt.block_on(async {
        tokio::time::timeout(ANSWER_TIMEOUT + Duration::from_secs(5), send.stopped()).await
    });
    match stopped {
        Ok(Ok(Some(code))) if code.into_inner() == u64::from(codes::TIMED_OUT) => {}
        Ok(other) => bail!("the stream ended with {other:?}, not TIMED_OUT"),
        Err(_) => bail!(
            "the directory still waits on answers after {:?}",
            started.elapsed()
        ),
    }
    not_before(started, ANSWER_TIMEOUT)?;
    still_served(&rt, &conn).context("the same connection afterwards")?;
    net.assert_no_panics()
}

/// A flood of strangers at a listening peer: 100 connections from one host that never say a
/// word. At most PEER_UNVERIFIED (8) are served, the rest refused before their handshake, and
/// those served are closed with TIMED_OUT once PEER_VERIFY_TIMEOUT (10 s) has passed; a real
/// peer's message reaches the peer meanwhile. Before, every one was served for as long as it
/// lived.
#[test]
fn a_peer_bounds_strangers_and_still_receives() -> Result<()> {
    const STRANGERS: usize = 100;
    let (net, mut c2, rt) = real_peers()?;
    let (c2_addr, c2_key) = net.dial_target("c1", "c2")?;
    let started = Instant::now();
    let (served, refused) = rt.block_on(async {
        let mallory = Raw::at("mallory", IpAddr::from([127, 0, 0, 3]))?;
        let (mut served, mut refused) = (Vec::new(), 0);
        for _ in 0..STRANGERS {
            match mallory.dial(c2_addr, ALPN_PEER, Expect::Key(c2_key)).await {
                Ok(conn) => {
                    // A stream with the start of a frame that never ends.
                    let (mut send, recv) = conn.open_bi().await?;
                    send.write_all(&60_000u32.to_be_bytes()).await?;
                    served.push((conn, send, recv));
                }
                Err(e) if is_refused(&e) => refused += 1,
                Err(e) => return Err(e.context("a stranger's connection")),
            }
        }
        Ok::<_, anyhow::Error>((served, refused))
    })?;
    eprintln!("{} strangers served, {refused} refused", served.len());
    ensure!(
        served.len() <= PEER_UNVERIFIED,
        "{} of {STRANGERS} strangers were served at once",
        served.len()
    );
    real_message(&net, &mut c2, "through the strangers")?;
    rt.block_on(async {
        let left = (started + PEER_VERIFY_TIMEOUT + Duration::from_secs(5))
            .saturating_duration_since(Instant::now());
        for (conn, _, _) in &served {
            closed_with(conn, codes::TIMED_OUT, left)
                .await
                .context("a stranger that never sent a message")?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    c2.ensure_running()?;
    c2.terminate()?;
    net.assert_no_panics()
}

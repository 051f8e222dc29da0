//! Bulk transfers between two processes on loopback, shaped as quinn's own perf tool
//! (`quinn-perf`, in quinn's repository under `perf/`) runs them, so that its figure and ours
//! are measured the same way:
//!
//! * **the in-repo reference**: the `quicref` binary, one process receiving and one sending a
//!   single bi-stream, with quinn-perf's configuration ([`Config::Perf`]);
//! * **the peers' configuration**: the same two processes and the same stream on the peers' TLS,
//!   transport settings and sockets ([`Config::Peers`]), which isolates what that configuration
//!   costs;
//! * **quinn-perf itself**, when `QUINN_PERF` names a binary built by hand from quinn's
//!   repository (nothing here builds or ships it): its client uploads streams of the same size
//!   to its server for a few seconds;
//! * **the file**: a whole `peer send-file` process to a `peer listen` process.
//!
//! Every figure is bytes per second and the busy CPU time of the whole machine per GiB moved
//! ([`Bulk`]): both processes and the kernel's work for them.

use crate::{
    figures::Bulk,
    machine_busy,
    process::{online, peer_args, Reaped},
};
use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use common::{
    defaults::ALPN_PEER,
    tls::{self, Expect},
    Identity, KeyId,
};
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

/// Which QUIC configuration both processes of a [`stream`] use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Config {
    /// quinn-perf's defaults: a plain socket with 2 MiB buffers, `max_udp_payload_size` 1472,
    /// quinn's default transport settings (initial MTU 1200), TLS 1.3 with ring's cipher
    /// suites in perf's order (AES-128-GCM first), no client certificate.
    Perf,
    /// The peers' own: key-pinned mutual TLS, their transport settings and their sockets
    /// (`common::tls`, `common::socket`).
    Peers,
}

impl Config {
    fn arg(self) -> &'static str {
        match self {
            Self::Perf => "perf",
            Self::Peers => "peers",
        }
    }
}

/// Socket buffers quinn-perf asks for by default (`--send-buffer-size`, `--recv-buffer-size`).
const PERF_SOCKET_BUFFER: usize = 2 * 1024 * 1024;

/// quinn-perf's `--max-udp-payload-size` default.
const PERF_MAX_UDP_PAYLOAD: u16 = 1472;

/// quinn-perf's ALPN.
const PERF_ALPN: &[u8] = b"perf";

/// What the sender writes: quinn-perf writes 1 MiB static chunks, handed to quinn without a
/// copy.
static CHUNK: [u8; 1 << 20] = [42; 1 << 20];

/// ring's TLS 1.3 suites in quinn-perf's order.
fn perf_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// An endpoint bound as quinn-perf binds its own.
fn perf_endpoint(server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_send_buffer_size(PERF_SOCKET_BUFFER)?;
    socket.set_recv_buffer_size(PERF_SOCKET_BUFFER)?;
    socket.bind(&addr.into())?;
    let mut config = quinn::EndpointConfig::default();
    config.max_udp_payload_size(PERF_MAX_UDP_PAYLOAD)?;
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
    Ok(quinn::Endpoint::new(
        config,
        server,
        socket.into(),
        runtime,
    )?)
}

/// The receiving side, run by `quicref receive`: prints `listening ADDR TRUST` (TRUST is what
/// the sender must accept: the certificate in hex, or the key's fingerprint), takes one
/// connection with one bi-stream, counts its bytes, answers the count (8 bytes, big-endian)
/// and returns when the sender has closed.
pub async fn receive(config: Config) -> Result<()> {
    let (endpoint, trust) = match config {
        Config::Perf => {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
            let cert = ck.cert.der().clone();
            let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
            let mut tls = rustls::ServerConfig::builder_with_provider(perf_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], key.into())?;
            tls.alpn_protocols = vec![PERF_ALPN.to_vec()];
            let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
            let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            (perf_endpoint(Some(server))?, hex::encode(cert))
        }
        Config::Peers => {
            let id = Identity::generate("quicref-receiver")?;
            let server = tls::server_config(&id, ALPN_PEER)?;
            let endpoint =
                common::socket::endpoint(Some(server), SocketAddr::from(([127, 0, 0, 1], 0)))?;
            (endpoint, id.key_id.to_string())
        }
    };
    println!("listening {} {trust}", endpoint.local_addr()?);
    let conn = endpoint.accept().await.context("no connection")?.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut n = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, false).await? {
        n += chunk.bytes.len() as u64;
    }
    send.write_all(&n.to_be_bytes()).await?;
    send.finish()?;
    conn.closed().await;
    endpoint.wait_idle().await;
    Ok(())
}

/// The sending side, run by `quicref send`: connects to `addr` trusting `trust` (from the
/// receiver's first line), sends `bytes` on one bi-stream in [`CHUNK`]s and waits for the
/// receiver's count. Returns the time from opening the stream to the count, which must equal
/// `bytes`.
pub async fn send(config: Config, addr: SocketAddr, trust: &str, bytes: u64) -> Result<Duration> {
    let (endpoint, client, server_name) = match config {
        Config::Perf => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(rustls::pki_types::CertificateDer::from(hex::decode(trust)?))?;
            let mut tls = rustls::ClientConfig::builder_with_provider(perf_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.alpn_protocols = vec![PERF_ALPN.to_vec()];
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
            let client = quinn::ClientConfig::new(Arc::new(crypto));
            (perf_endpoint(None)?, client, "localhost")
        }
        Config::Peers => {
            let id = Identity::generate("quicref-sender")?;
            let key: KeyId = trust.parse()?;
            let client = tls::client_config(&id, ALPN_PEER, Expect::Key(key))?;
            let endpoint = common::socket::endpoint(None, SocketAddr::from(([127, 0, 0, 1], 0)))?;
            (endpoint, client, "peer")
        }
    };
    let conn = endpoint.connect_with(client, addr, server_name)?.await?;
    let t = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut left = bytes;
    while left > 0 {
        let k = left.min(CHUNK.len() as u64) as usize;
        send.write_chunk(Bytes::from_static(&CHUNK[..k])).await?;
        left -= k as u64;
    }
    send.finish()?;
    let count = recv.read_to_end(8).await?;
    let elapsed = t.elapsed();
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    ensure!(
        count == bytes.to_be_bytes(),
        "sent {bytes} bytes, the receiver counted {count:?}"
    );
    Ok(elapsed)
}

/// Waits for `child` to exit within `limit`; its stdout, or why it failed.
fn finish(mut child: Reaped, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    while child.0.try_wait()?.is_none() {
        ensure!(Instant::now() < deadline, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.0.stdout.take() {
        std::io::Read::read_to_string(&mut s, &mut out)?;
    }
    if let Some(mut s) = child.0.stderr.take() {
        std::io::Read::read_to_string(&mut s, &mut err)?;
    }
    let status = child.0.wait()?;
    ensure!(status.success(), "exited with {status}: {}", err.trim());
    Ok(out)
}

/// One stream of `bytes` between a `quicref receive` and a `quicref send` process on
/// `config`: the sender's time from opening the stream to the receiver's count, and the
/// machine's busy time while the sender ran.
pub fn stream(config: Config, bytes: u64) -> Result<Bulk> {
    let bin = crate::binary("quicref", "QUICREF_BIN")?;
    let mut receiver = Reaped(
        Command::new(&bin)
            .args(["receive", "--config", config.arg()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let mut line = String::new();
    BufReader::new(receiver.0.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
    let (addr, trust) = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["listening", addr, trust] => (addr.to_string(), trust.to_string()),
        _ => bail!("unexpected first line from quicref receive: {line:?}"),
    };
    let busy = machine_busy()?;
    let sender = Reaped(
        Command::new(&bin)
            .args(["send", "--config", config.arg(), &addr, &trust])
            .arg(bytes.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let out = finish(sender, Duration::from_secs(120)).context("quicref send")?;
    let busy = machine_busy()? - busy;
    finish(receiver, Duration::from_secs(10)).context("quicref receive")?;
    let secs: f64 = out
        .trim()
        .parse()
        .with_context(|| format!("quicref send printed {out:?}"))?;
    Ok(Bulk::new(bytes, Duration::from_secs_f64(secs), busy))
}

/// quinn-perf, built by hand from quinn's repository, when `QUINN_PERF` names it; `None`
/// otherwise.
pub fn quinn_perf_bin() -> Option<std::path::PathBuf> {
    std::env::var_os("QUINN_PERF").map(Into::into)
}

/// quinn-perf's server and client processes with their default settings, the client
/// uploading streams of `bytes` (`--upload-size`, `--download-size 0`) for `secs` seconds:
/// all bytes of its per-second intervals (its `--json` output) over their time, and the
/// machine's busy time while the client ran, per GiB of those bytes.
pub fn quinn_perf(bin: &Path, bytes: u64, secs: u64) -> Result<Bulk> {
    let mut server = Reaped(
        Command::new(bin)
            .args(["server", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    // Its logs go to stdout: "… perf::server: listening on 127.0.0.1:PORT", after colour codes.
    let lines = BufReader::new(server.0.stdout.take().context("stdout")?).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .context("quinn-perf server did not say where it listens")?;
    let json = tempfile::NamedTempFile::new()?;
    let busy = machine_busy()?;
    let client = Reaped(
        Command::new(bin)
            .args(["client", &addr, "--download-size", "0", "--upload-size"])
            .arg(bytes.to_string())
            .args(["--duration", &secs.to_string(), "--json"])
            .arg(json.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    finish(client, Duration::from_secs(secs + 30)).context("quinn-perf client")?;
    let busy = machine_busy()? - busy;
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(json.path())?)?;
    let (mut moved, mut time) = (0u64, 0f64);
    for interval in report["intervals"].as_array().context("no intervals")? {
        moved += interval["sum"]["bytes"]
            .as_u64()
            .context("interval bytes")?;
        time += interval["sum"]["seconds"]
            .as_f64()
            .context("interval time")?;
    }
    ensure!(moved > 0, "quinn-perf moved nothing");
    let gib = moved as f64 / (1u64 << 30) as f64;
    Ok(Bulk {
        rate: moved as f64 / time,
        cpu_per_gib: busy.as_secs_f64() / gib,
    })
}

/// A whole `peer send-file` process sending `file` to a `peer listen` process (which accepted
/// the sender first, so the file goes over a direct link), timed from spawn to exit: start-up,
/// the directory, the lookup, the dial, the offer, the bytes hashed on both sides, the
/// receiver's writes, its `fsync` and the move into its downloads folder. The received file's
/// size and hash are checked by the receiver (a mismatch fails the command); its size is
/// checked here too.
pub fn send_file(directory: SocketAddr, file: &Path, size: u64) -> Result<Bulk> {
    let bin = crate::peer_bin()?;
    let homes = tempfile::Builder::new().prefix("bench-file").tempdir()?;
    let peer = |name: &str| {
        let mut cmd = Command::new(&bin);
        cmd.args(peer_args(directory, &homes.path().join(name), name))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let run = |mut cmd: Command| finish(Reaped(cmd.spawn()?), Duration::from_secs(30));
    // A directory binds a name to the first key: every call has names of its own.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (a, b) = (format!("file{n}a"), format!("file{n}b"));
    // The sender's first run makes its key and name; the receiver accepts it.
    run({
        let mut c = peer(&a);
        c.args(["whois", &a]);
        c
    })
    .context("the sender's first run")?;
    run({
        let mut c = peer(&b);
        c.args(["accept", &a]);
        c
    })
    .context("accepting the sender")?;
    let mut receiver = Reaped(peer(&b).arg("listen").spawn()?);
    let lines = online(&mut receiver.0, "the receiver")?;
    let (got, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("\"type\":\"file\"") {
                let _ = got.send(line);
            }
        }
    });

    let busy = machine_busy()?;
    let t = Instant::now();
    let mut send = peer(&a);
    send.arg("send-file").arg(&b).arg(file);
    let out = finish(Reaped(send.spawn()?), Duration::from_secs(300)).context("peer send-file")?;
    let elapsed = t.elapsed();
    let busy = machine_busy()? - busy;
    ensure!(
        out.contains("\"status\":\"delivered\"") && out.contains("\"resumed_from\":0"),
        "not sent whole over a direct link: {out:?}"
    );
    let line = received
        .recv_timeout(Duration::from_secs(10))
        .context("the receiver printed no file line")?;
    ensure!(
        line.contains(&format!("\"size\":{size}")) && line.contains("\"via\":\"direct\""),
        "the receiver's file line is not of {size} bytes by a direct link: {line}"
    );
    drop(receiver);
    Ok(Bulk::new(size, elapsed, busy))
}

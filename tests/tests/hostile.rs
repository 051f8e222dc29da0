//! Limits and junk: oversized bodies, mailbox quotas, random datagrams at both programs.
//!
//! Hostile QUIC frames from a real QUIC client (oversized frames, wrong ALPN, requests before
//! Register) need a QUIC stack on the test side; the crates' unit tests cover those.

use anyhow::{ensure, Context, Result};
use rand::Rng;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use tests::{check_messages, is_message_from, DirOpts, Net, SHORT};

/// A 64 KiB body is refused with "too large", as is 32 KiB + 1; exactly 32 KiB goes through
/// intact.
#[test]
fn oversized_body_is_refused() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;

    for len in [64 * 1024, 32 * 1024 + 1] {
        net.peer("c1")
            .args(["send".to_string(), "c2".to_string(), "x".repeat(len)])
            .run(SHORT)?
            .failure(&["too large"])
            .with_context(|| format!("a body of {len} bytes"))?;
    }

    let max = "y".repeat(32 * 1024);
    let s = net.send("c1", "c2", &max)?;
    ensure!(s["status"] == "queued", "c2 is offline, yet: {s}");
    let got = net.register("c2")?;
    check_messages(&got, "c1", "c2", &[max], Some("mailbox"))
        .context("only the 32 KiB body should have reached c2's mailbox, intact")?;
    net.assert_no_panics()
}

/// A mailbox holding --mailbox-quota-messages messages refuses the next with "mailbox is full";
/// once the recipient takes its mail, there is room again.
#[test]
fn mailbox_message_quota() -> Result<()> {
    let net = Net::with(DirOpts {
        quota_messages: Some(3),
        ..DirOpts::default()
    })?;
    net.register("c2")?;
    let bodies: Vec<String> = (0..3).map(|i| format!("fits {i}")).collect();
    for b in &bodies {
        let s = net.send("c1", "c2", b)?;
        ensure!(s["status"] == "queued", "c2 is offline, yet: {s}");
    }
    net.peer("c1")
        .args(["send", "c2", "one too many"])
        .run(SHORT)?
        .failure(&["mailbox is full"])?;

    let got = net.register("c2")?;
    check_messages(&got, "c1", "c2", &bodies, Some("mailbox"))?;
    let s = net.send("c1", "c2", "room again")?;
    ensure!(
        s["status"] == "queued",
        "after the inbox emptied the mailbox: {s}"
    );
    net.assert_no_panics()
}

/// --mailbox-quota-bytes bounds the bytes held for one recipient.
#[test]
fn mailbox_byte_quota() -> Result<()> {
    let net = Net::with(DirOpts {
        quota_bytes: Some(1000),
        ..DirOpts::default()
    })?;
    net.register("c2")?;
    let s = net.send("c1", "c2", &"a".repeat(600))?;
    ensure!(
        s["status"] == "queued",
        "600 bytes fit in a 1000-byte quota, yet: {s}"
    );
    net.peer("c1")
        .args(["send".to_string(), "c2".to_string(), "b".repeat(600)])
        .run(SHORT)?
        .failure(&["mailbox is full"])?;
    let got = net.register("c2")?;
    ensure!(
        got.len() == 1,
        "expected only the first body, got {} messages",
        got.len()
    );
    net.assert_no_panics()
}

/// 1000 random datagrams (1 to 1500 bytes, some shaped like QUIC long headers).
fn spray(sock: &UdpSocket, to: SocketAddr) -> Result<()> {
    let mut rng = rand::rng();
    let mut buf = vec![0u8; 1500];
    for i in 0..1000 {
        let len = rng.random_range(1..=1500);
        rng.fill(&mut buf[..len]);
        if i % 3 == 0 && len >= 7 {
            // Long header, QUIC v1, random connection-id lengths: parsed deeper than noise.
            buf[0] |= 0xc0;
            buf[1..5].copy_from_slice(&1u32.to_be_bytes());
        }
        // Loopback may drop some under load; a failed send is not the point.
        let _ = sock.send_to(&buf[..len], to);
    }
    Ok(())
}

/// Garbage datagrams at the directory and at a listening peer change nothing: afterwards both
/// still run, whois works, a direct send is delivered, a new peer can register.
#[test]
fn garbage_datagrams_are_ignored() -> Result<()> {
    let mut net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let w = net.whois("obs", "c2")?;
    let mut targets: Vec<SocketAddr> = vec![net.dir().addr()];
    if let Some(a) = w["observed_addr"].as_str() {
        targets.push(a.parse().context("observed_addr")?);
    }
    for a in w["listen_addrs"].as_array().into_iter().flatten() {
        let Some(a) = a.as_str().and_then(|a| a.parse::<SocketAddr>().ok()) else {
            continue;
        };
        if a.ip().is_loopback() || a.ip().is_unspecified() {
            targets.push(SocketAddr::from(([127, 0, 0, 1], a.port())));
        }
    }
    targets.sort();
    targets.dedup();
    ensure!(targets.len() >= 2, "no address of c2 found in {w}");

    let sock = UdpSocket::bind("127.0.0.1:0")?;
    for t in &targets {
        spray(&sock, *t)?;
    }

    ensure!(
        net.dir_mut().is_running(),
        "the directory died from garbage datagrams"
    );
    c2.ensure_running()?;
    let w = net.whois("obs", "c2")?;
    ensure!(w["online"] == true, "c2 went offline after garbage: {w}");
    let s = net.send("c1", "c2", "still fine")?;
    ensure!(s["status"] == "delivered", "direct send after garbage: {s}");
    let m = c2.wait_json("the message after garbage", Duration::from_secs(10), |v| {
        is_message_from(v, "c1")
    })?;
    check_messages(
        std::slice::from_ref(&m),
        "c1",
        "c2",
        &["still fine".into()],
        Some("direct"),
    )?;
    net.register("newcomer")?;
    c2.terminate()?;
    net.assert_no_panics()
}

//! Presence: whois while online, offline at once after a clean exit, offline after about three
//! missed heartbeats after kill -9.
//!
//! Each scenario runs on one directory and again with its peers split over two nodes of a
//! cluster on NATS JetStream ([`tests::on_each_topology!`]).

use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tests::{now_ms, on_each_topology, Json, Net, Sig, Topology};

on_each_topology!(
    sigterm_goes_offline_at_once,
    kill9_goes_offline_after_missed_heartbeats,
    stays_online_while_listening,
    sigterm_right_after_online_exits_zero,
);

/// Checks the shape of a whois line for an online peer with key `key`.
fn check_online_whois(w: &Json, name: &str, key: &Json, since_ms: u64) -> Result<()> {
    ensure!(w["name"] == name, "whois names another peer: {w}");
    ensure!(w["online"] == true, "{name} should be online: {w}");
    ensure!(
        w["key"] == *key,
        "whois key differs from the online line's {key}: {w}"
    );
    let observed: SocketAddr = w["observed_addr"]
        .as_str()
        .context("observed_addr missing while online")?
        .parse()
        .with_context(|| format!("observed_addr is not ip:port in {w}"))?;
    ensure!(
        observed.ip().is_loopback() && observed.port() != 0,
        "everything runs on 127.0.0.1, yet observed_addr is {observed}"
    );
    let listen = w["listen_addrs"]
        .as_array()
        .context("listen_addrs is not an array")?;
    ensure!(!listen.is_empty(), "listen_addrs empty while online: {w}");
    for a in listen {
        let a: SocketAddr = a
            .as_str()
            .context("listen_addrs holds a non-string")?
            .parse()
            .with_context(|| format!("listen_addrs entry is not ip:port in {w}"))?;
        ensure!(a.port() != 0, "listen_addrs holds port 0: {w}");
    }
    let seen = w["last_seen_ms"]
        .as_u64()
        .context("last_seen_ms missing while online")?;
    ensure!(
        seen + 5_000 >= since_ms && seen <= now_ms() + 5_000,
        "last_seen_ms {seen} is not about now (test started at {since_ms})"
    );
    Ok(())
}

/// Checks the shape of a whois line for a peer that went offline after `since_ms`.
fn check_offline_whois(w: &Json, since_ms: u64) -> Result<()> {
    ensure!(w["online"] == false, "should be offline: {w}");
    let seen = w["last_seen_ms"]
        .as_u64()
        .with_context(|| format!("last_seen_ms should be set after being online: {w}"))?;
    ensure!(
        seen + 5_000 >= since_ms && seen <= now_ms() + 5_000,
        "last_seen_ms {seen} is not about now (test started at {since_ms})"
    );
    ensure!(
        w["observed_addr"].is_null(),
        "observed_addr should be null while offline: {w}"
    );
    ensure!(
        w["listen_addrs"].as_array().is_some_and(Vec::is_empty),
        "listen_addrs should be empty while offline: {w}"
    );
    Ok(())
}

/// listen → whois online with addresses and key; SIGTERM → exit 0 and offline within 5 s.
/// `listen` runs with stdin on /dev/null, as under a service manager: it must stay up.
fn sigterm_goes_offline_at_once(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    let t0 = now_ms();
    let mut c2 = net
        .peer("c2")
        .heartbeat(0.5)
        .stdin_null()
        .json()
        .args(["listen"])
        .spawn()?;
    let online = c2.wait_online()?;
    ensure!(online["name"] == "c2", "online line names {online}");

    let w = net.whois("obs", "c2")?;
    check_online_whois(&w, "c2", &online["key"], t0)?;
    c2.ensure_running()
        .context("listen must not stop at end of stdin")?;

    c2.terminate()?; // exit 0 required
    let stopped = Instant::now();
    let w = net.wait_presence("obs", "c2", false, Duration::from_secs(5))?;
    check_offline_whois(&w, t0)?;
    eprintln!("offline {:?} after SIGTERM", stopped.elapsed());

    // SIGINT is a clean exit as well.
    let mut c3 = net.listen("c3")?;
    c3.stop_with(Sig::SIGINT)?;
    net.wait_presence("obs", "c3", false, Duration::from_secs(5))?;
    net.assert_no_panics()
}

/// kill -9 closes nothing: the directory notices the missing heartbeats (0.5 s each, ~3 missed)
/// and marks the peer offline well within 10 s. It can come back online with the same key.
fn kill9_goes_offline_after_missed_heartbeats(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    let t0 = now_ms();
    let mut c2 = net
        .peer("c2")
        .heartbeat(0.5)
        .json()
        .args(["listen"])
        .spawn()?;
    let online = c2.wait_online()?;
    let w = net.whois("obs", "c2")?;
    check_online_whois(&w, "c2", &online["key"], t0)?;

    c2.kill9()?;
    let killed = Instant::now();
    let w = net.wait_presence("obs", "c2", false, Duration::from_secs(10))?;
    check_offline_whois(&w, t0)?;
    eprintln!("offline {:?} after kill -9", killed.elapsed());

    let mut again = net
        .peer("c2")
        .heartbeat(0.5)
        .json()
        .args(["listen"])
        .spawn()?;
    let online2 = again.wait_online()?;
    ensure!(
        online2["key"] == online["key"],
        "same home, different key: {online} vs {online2}"
    );
    let w = net.whois("obs", "c2")?;
    check_online_whois(&w, "c2", &online["key"], t0)?;
    again.terminate()?;
    net.assert_no_panics()
}

/// With a 0.5 s heartbeat a listening peer stays online over several expiry periods: its
/// heartbeats keep it there.
fn stays_online_while_listening(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    let mut c2 = net
        .peer("c2")
        .heartbeat(0.5)
        .json()
        .args(["listen"])
        .spawn()?;
    c2.wait_online()?;
    // Poll for at least 3 s (six heartbeat periods, twice the expiry); every answer is online.
    let start = Instant::now();
    let mut polls = 0;
    while start.elapsed() < Duration::from_secs(3) && polls < 100 {
        let w = net.whois("obs", "c2")?;
        ensure!(
            w["online"] == true,
            "c2 flapped offline after {:?} while listening: {w}",
            start.elapsed()
        );
        polls += 1;
    }
    c2.ensure_running()?;
    c2.terminate()?;
    net.assert_no_panics()
}

/// SIGTERM as soon as the ready signal (the `online` line) is out still ends `listen` and
/// `chat` with status 0: the handler must be in place before the process says it is ready.
fn sigterm_right_after_online_exits_zero(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    for round in 0..10 {
        let mut l = net.peer("c2").json().args(["listen"]).spawn()?;
        l.wait_online()?;
        l.terminate()
            .with_context(|| format!("listen, round {round}"))?;
        let mut c = net.peer("c3").json().args(["chat", "c2"]).spawn()?;
        c.wait_online()?;
        c.terminate()
            .with_context(|| format!("chat, round {round}"))?;
    }
    net.assert_no_panics()
}

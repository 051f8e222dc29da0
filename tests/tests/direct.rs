//! Direct delivery between two online peers.
//!
//! Each scenario runs on one directory and again with its peers split over two nodes of a
//! cluster on NATS JetStream ([`tests::on_each_topology!`]).

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use tests::{
    body, check_messages, is_message_from, is_type, now_ms, numbered, on_each_topology, Json, Net,
    Running, Topology, SHORT,
};

on_each_topology!(
    send_to_listener_is_delivered_directly,
    plain_listen_prints_messages,
    two_chats_fifty_each_way,
);

/// `send` to a listening peer: status delivered; the listener prints it once, via direct, with
/// the sender's id. TEXT... words are joined with single spaces.
fn send_to_listener_is_delivered_directly(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    let mut c2 = net.listen("c2")?;
    let t0 = now_ms();
    let out = net
        .peer("c1")
        .json()
        .args(["send", "c2", "hello", "world"])
        .run(SHORT)?
        .success()?;
    let sent = out.one_of_type("sent")?;
    ensure!(
        sent["status"] == "delivered" && sent["to"] == "c2",
        "c2 is listening, yet: {sent}"
    );
    let id = sent["id"].as_str().context("sent line has no id")?;

    let msg = c2.wait_json("the message from c1", Duration::from_secs(10), |v| {
        is_message_from(v, "c1")
    })?;
    check_messages(
        std::slice::from_ref(&msg),
        "c1",
        "c2",
        &["hello world".to_string()],
        Some("direct"),
    )?;
    ensure!(
        msg["id"] == id,
        "received id differs from sent id {id}: {msg}"
    );
    let at = msg["sent_at_ms"].as_u64().unwrap_or(0);
    ensure!(
        at + 5_000 >= t0 && at <= now_ms() + 5_000,
        "sent_at_ms {at} is not about now ({t0})"
    );

    c2.terminate()?;
    let copies = c2
        .json_lines()
        .iter()
        .filter(|v| is_type(v, "message"))
        .count();
    ensure!(
        copies == 1,
        "c2 printed {copies} messages, expected exactly 1"
    );
    net.assert_no_panics()
}

/// Without --json, `listen` still prints each incoming message (the body appears on stdout).
fn plain_listen_prints_messages(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    let mut c2 = net.peer("c2").args(["listen"]).spawn()?;
    // No online line in plain mode: wait for the directory to see c2.
    net.wait_presence("obs", "c2", true, Duration::from_secs(20))?;
    let sent = net.send("c1", "c2", "plain text hello")?;
    ensure!(
        sent["status"] == "delivered",
        "c2 is listening, yet: {sent}"
    );
    c2.wait_line("a line with the body", Duration::from_secs(10), |l| {
        l.contains("plain text hello")
    })?;
    c2.terminate()?;
    net.assert_no_panics()
}

/// Waits until `r` has printed `n` messages from `from` (without taking them).
fn wait_for_messages(r: &mut Running, from: &str, n: usize) -> Result<()> {
    r.wait_json_n(
        &format!("{n} messages from {from}"),
        n,
        Duration::from_secs(60),
        |v| is_message_from(v, from),
    )?;
    Ok(())
}

/// Checks one chat process's complete output after it exited: online line first, then exactly
/// `theirs` from `other` in order via direct, and a delivered `sent` line per own message whose
/// ids are the ones the other side received.
fn check_chat_output(
    me: &str,
    other: &str,
    mine: &Running,
    theirs: &[String],
    their_received: &[Json],
    n_mine: usize,
) -> Result<()> {
    let lines = mine.json_lines();
    ensure!(
        lines.first().is_some_and(|v| is_type(v, "online")),
        "{me}'s first JSON line is not the online line: {:?}",
        lines.first()
    );
    let received: Vec<Json> = lines
        .iter()
        .filter(|v| is_type(v, "message"))
        .cloned()
        .collect();
    check_messages(&received, other, me, theirs, Some("direct"))
        .with_context(|| format!("what {me} received from {other}"))?;
    let sent: Vec<&Json> = lines.iter().filter(|v| is_type(v, "sent")).collect();
    ensure!(
        sent.len() == n_mine,
        "{me} printed {} sent lines, expected {n_mine}",
        sent.len()
    );
    for s in &sent {
        ensure!(
            s["status"] == "delivered" && s["to"] == other,
            "{me}: {other} was online the whole time, yet: {s}"
        );
    }
    // The contract does not say that `sent` lines come in stdin order, so compare as sets.
    let mut sent_ids: Vec<&str> = sent.iter().filter_map(|s| s["id"].as_str()).collect();
    let mut got_ids: Vec<&str> = their_received
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    sent_ids.sort_unstable();
    got_ids.sort_unstable();
    ensure!(
        sent_ids == got_ids,
        "{me}'s sent ids differ from the ids {other} received:\n  sent {sent_ids:?}\n  received {got_ids:?}"
    );
    Ok(())
}

/// Two `chat` processes in line mode, 50 messages each way at the same time: each side receives
/// all of the other's, in order, via direct, exactly once; both exit 0 at end of stdin.
fn two_chats_fifty_each_way(topology: Topology) -> Result<()> {
    const N: usize = 50;
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    // Both dial each other at once; should one fall back to the mailbox, its log says why.
    let chat = |me: &str, to: &str| {
        net.peer(me)
            .json()
            .env("RUST_LOG", "peer=debug")
            .args(["chat", to])
            .spawn()
    };
    let mut c1 = chat("c1", "c2")?;
    let mut c2 = chat("c2", "c1")?;
    c1.wait_online()?;
    c2.wait_online()?;

    let from1 = numbered("c1 says", 0..N);
    let from2 = numbered("c2 says", 0..N);
    for i in 0..N {
        c1.write_line(&from1[i])?;
        c2.write_line(&from2[i])?;
    }
    // Keep both stdins open until each side has everything, so neither leaves early.
    wait_for_messages(&mut c1, "c2", N)?;
    wait_for_messages(&mut c2, "c1", N)?;
    c1.finish(Duration::from_secs(30))?;
    c2.finish(Duration::from_secs(30))?;

    // Both have exited: their output is complete, so counts are exact.
    let got1: Vec<Json> = c1
        .json_lines()
        .into_iter()
        .filter(|v| is_type(v, "message"))
        .collect();
    let got2: Vec<Json> = c2
        .json_lines()
        .into_iter()
        .filter(|v| is_type(v, "message"))
        .collect();
    check_chat_output("c1", "c2", &c1, &from2, &got2, N)?;
    check_chat_output("c2", "c1", &c2, &from1, &got1, N)?;
    ensure!(
        got1.iter().all(|m| !body(m).starts_with("c1 says")),
        "c1 printed its own messages as received"
    );
    net.assert_no_panics()
}

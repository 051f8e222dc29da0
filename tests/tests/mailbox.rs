//! The durable mailbox: messages for an offline peer are queued, handed over once, in order,
//! and survive a directory crash.
//!
//! Each scenario runs on one directory and again with its peers split over two nodes of a
//! cluster on NATS JetStream ([`tests::on_each_topology!`]).

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use tests::{
    check_messages, is_message_from, is_type, numbered, on_each_topology, Json, Net, Sig, Topology,
    SHORT,
};

on_each_topology!(
    queued_then_inbox_once,
    offline_messages_arrive_when_listen_starts,
    mailbox_survives_directory_kill9,
    direct_failure_falls_back_to_mailbox_push,
);

/// Offline recipient: `send` says queued; `inbox` prints it via mailbox once; a second `inbox`
/// prints nothing.
fn queued_then_inbox_once(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    ensure!(net.register("c2")?.is_empty(), "a fresh c2 has mail");

    let sent = net.send("c1", "c2", "while you were out")?;
    ensure!(sent["status"] == "queued", "c2 is offline, yet: {sent}");

    let got = net.register("c2")?;
    check_messages(
        &got,
        "c1",
        "c2",
        &["while you were out".to_string()],
        Some("mailbox"),
    )?;
    ensure!(
        got[0]["id"] == sent["id"],
        "id changed: sent {sent}, got {}",
        got[0]
    );

    let again = net.register("c2")?;
    ensure!(again.is_empty(), "second inbox printed {again:?}");
    net.assert_no_panics()
}

/// 20 messages sent (by a `chat` in line mode) while c2 is offline appear, in order and once,
/// as soon as c2 starts `listen`; afterwards the mailbox is empty.
fn offline_messages_arrive_when_listen_starts(topology: Topology) -> Result<()> {
    const N: usize = 20;
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    net.register("c2")?;

    let bodies = numbered("queued", 0..N);
    let mut c1 = net.peer("c1").json().args(["chat", "c2"]).spawn()?;
    c1.wait_online()?;
    for b in &bodies {
        c1.write_line(b)?;
    }
    c1.finish(Duration::from_secs(60))?;
    let sent: Vec<Json> = c1
        .json_lines()
        .into_iter()
        .filter(|v| is_type(v, "sent"))
        .collect();
    ensure!(
        sent.len() == N,
        "chat printed {} sent lines, expected {N}",
        sent.len()
    );
    for s in &sent {
        ensure!(s["status"] == "queued", "c2 is offline, yet: {s}");
    }

    let mut c2 = net.listen("c2")?;
    let got = c2.wait_json_n("the queued messages", N, Duration::from_secs(30), |v| {
        is_message_from(v, "c1")
    })?;
    check_messages(&got, "c1", "c2", &bodies, Some("mailbox"))?;
    // Order is checked on the bodies; `sent` lines need not come in stdin order.
    let mut got_ids: Vec<&str> = got.iter().filter_map(|m| m["id"].as_str()).collect();
    let mut sent_ids: Vec<&str> = sent.iter().filter_map(|m| m["id"].as_str()).collect();
    got_ids.sort_unstable();
    sent_ids.sort_unstable();
    ensure!(
        got_ids == sent_ids,
        "ids differ: sent {sent_ids:?}, got {got_ids:?}"
    );
    c2.terminate()?;
    let total = c2
        .json_lines()
        .iter()
        .filter(|v| is_type(v, "message"))
        .count();
    ensure!(
        total == N,
        "c2 printed {total} messages, expected exactly {N}"
    );

    let left = net.register("c2")?;
    ensure!(
        left.is_empty(),
        "messages shown by listen are still in the mailbox: {left:?}"
    );
    net.assert_no_panics()
}

/// Queued messages survive kill -9 of the directory and a restart on the same data.
fn mailbox_survives_directory_kill9(topology: Topology) -> Result<()> {
    let Some(mut net) = Net::on(topology)? else {
        return Ok(());
    };
    net.register("c2")?;
    let bodies = numbered("durable", 0..5);
    for b in &bodies {
        let s = net.send("c1", "c2", b)?;
        ensure!(s["status"] == "queued", "c2 is offline, yet: {s}");
    }

    net.dir_mut().kill9()?;
    net.dir_mut().restart()?;

    let got = net.register("c2")?;
    check_messages(&got, "c1", "c2", &bodies, Some("mailbox"))
        .context("after kill -9 and restart")?;
    ensure!(
        net.register("c2")?.is_empty(),
        "mailbox not empty after inbox"
    );

    // The restarted directory keeps queueing.
    let s = net.send("c1", "c2", "after restart")?;
    ensure!(s["status"] == "queued", "c2 is offline, yet: {s}");
    let got = net.register("c2")?;
    check_messages(&got, "c1", "c2", &["after restart".into()], Some("mailbox"))?;
    net.assert_no_panics()
}

/// The recipient is online for the directory but a direct dial cannot complete (its process is
/// frozen with SIGSTOP): the sender falls back to the mailbox after --direct-timeout, and the
/// directory pushes the message to the recipient once it runs again.
fn direct_failure_falls_back_to_mailbox_push(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    // Default heartbeat (10 s): the directory keeps a frozen c2 online for ~30 s.
    let mut c2 = net.listen("c2")?;
    c2.signal(Sig::SIGSTOP)?;
    let result = net
        .peer("c1")
        .direct_timeout(1.0)
        .json()
        .args(["send", "c2", "via the mailbox please"])
        .run(SHORT);
    c2.signal(Sig::SIGCONT)?;
    let sent = result?.success()?.one_of_type("sent")?;
    ensure!(
        sent["status"] == "queued",
        "a frozen c2 cannot ack a direct message, yet: {sent}"
    );

    let msg = c2.wait_json("the pushed message", Duration::from_secs(20), |v| {
        is_message_from(v, "c1")
    })?;
    check_messages(
        std::slice::from_ref(&msg),
        "c1",
        "c2",
        &["via the mailbox please".into()],
        Some("mailbox"),
    )?;
    ensure!(
        msg["id"] == sent["id"],
        "id changed: sent {sent}, got {msg}"
    );
    c2.terminate()?;
    let total = c2
        .json_lines()
        .iter()
        .filter(|v| is_type(v, "message"))
        .count();
    ensure!(
        total == 1,
        "c2 printed {total} messages, expected exactly 1"
    );
    net.assert_no_panics()
}

//! Two directory nodes on one NATS JetStream store (`directory --store nats://…`), sharing one
//! key, with the peers split over them: names, presence, direct chat, the mailbox, receipts
//! and order work across nodes, and a peer whose node is killed moves to the other without
//! losing or repeating a message; mail a killed node acknowledged is delivered by the other.
//! (The single-node scenarios run on two nodes too: `on_each_topology!` in their files.)
//!
//! Each scenario starts its own `nats-server`; without one installed they skip loudly, and
//! fail under `CI=true`.

use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use tests::{
    check_messages, is_message_from,
    metrics::{metrics_addr, sample, scrape},
    numbered, poll_until, DirOpts, Net, SHORT,
};

/// The sample of `directory_log_<series>` in a node's metrics.
fn log_sample(text: &str, series: &str) -> Result<f64> {
    sample(text, &format!("directory_log_{series}"))
        .with_context(|| format!("no directory_log_{series} in the metrics:\n{text}"))
}

/// `whois name`, asked by `asker` at node B, until it says `online`.
fn wait_presence_at_b(net: &Net, asker: &str, name: &str, online: bool) -> Result<()> {
    let b = net.node_b()?.addr();
    poll_until(
        &format!("whois {name} at node B to say online={online}"),
        SHORT,
        Duration::from_millis(100),
        || {
            let out = net
                .peer(asker)
                .directory(b)
                .json()
                .args(["whois", name])
                .run(SHORT)?;
            Ok(
                (out.status.success() && out.one_of_type("whois")?["online"] == online)
                    .then_some(()),
            )
        },
    )
}

/// c2 registered through node B and offline, and `n` numbered messages (`label`) from c1, on
/// node A, queued for it; returns their bodies.
fn queue_for_offline_c2(net: &Net, label: &str, n: usize) -> Result<Vec<String>> {
    net.peer("c2")
        .directory(net.node_b()?.addr())
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    let bodies = numbered(label, 0..n);
    for body in &bodies {
        let sent = net.send("c1", "c2", body)?;
        ensure!(sent["status"] == "queued", "c2 is offline, yet: {sent}");
    }
    Ok(bodies)
}

/// A name bound on node A is refused to another key on node B, and known there; a peer online
/// on A is online to a lookup at B, with the addresses to dial it; c2, on B, chats with c1, on
/// A, directly both ways.
#[test]
fn peers_on_two_nodes_find_each_other_and_chat_directly() -> Result<()> {
    let Some(net) = Net::two_nodes()? else {
        return Ok(());
    };
    let b = net.node_b()?;
    net.register("c1")?;
    let taken = net
        .peer_in("c1", "impostor")
        .directory(b.addr())
        .args(["inbox"])
        .run(SHORT)?;
    taken.failure(&["registered to another key"])?;

    let mut c1 = net.listen("c1")?;
    wait_presence_at_b(&net, "c2", "c1", true)?;
    let mut c2 = net.listen_with(net.peer("c2").directory(b.addr()))?;
    let sent = net
        .peer("c2")
        .directory(b.addr())
        .json()
        .args(["send", "c1", "from node B"])
        .run(SHORT)?
        .success()?
        .one_of_type("sent")?;
    ensure!(
        sent["status"] == "delivered" && sent["path"] == "public",
        "c2 on node B did not reach c1 on node A directly: {sent}"
    );
    let got = c1.wait_json("a message from c2", SHORT, |v| is_message_from(v, "c2"))?;
    ensure!(
        got["body"] == "from node B" && got["via"] == "direct",
        "c1 got {got}"
    );
    let back = net.send("c1", "c2", "from node A")?;
    ensure!(
        back["status"] == "delivered" && back["path"] == "public",
        "c1 on node A did not reach c2 on node B directly: {back}"
    );
    c2.wait_json("a message from c1", SHORT, |v| is_message_from(v, "c1"))?;
    net.assert_no_panics()
}

/// c1 on node A sends 30 messages to c2 while it is offline: queued. When c2 comes online on
/// node B, they arrive from the mailbox once each and in order, and c1's history learns they
/// were delivered (the receipts travel back across nodes).
#[test]
fn the_mailbox_works_across_nodes() -> Result<()> {
    const N: usize = 30;
    let Some(net) = Net::two_nodes()? else {
        return Ok(());
    };
    let b = net.node_b()?;
    let bodies = queue_for_offline_c2(&net, "queued", N)?;
    let mut c1 = net.listen("c1")?;
    let mut c2 = net.listen_with(net.peer("c2").directory(b.addr()))?;
    let got = c2.wait_json_n("messages from c1", N, SHORT, |v| is_message_from(v, "c1"))?;
    check_messages(&got, "c1", "c2", &bodies, Some("mailbox"))?;
    // The receipts reach c1 on node A: its history says delivered (later).
    poll_until(
        "c1's history to say delivered later",
        SHORT,
        Duration::from_millis(200),
        || {
            let history = net.history("c1", "c2")?;
            let mut sent = history.iter().filter(|m| m["from"] == "c1");
            Ok(
                (sent.clone().count() == N && sent.all(|m| m["state"] == "delivered_later"))
                    .then_some(()),
            )
        },
    )?;
    // Nothing more arrives: each message once.
    let again = net.peer("c2").directory(b.addr()).json().args(["inbox"]);
    drop(c2);
    let again = again.run(SHORT)?.success()?.of_type("message");
    ensure!(again.is_empty(), "delivered again: {again:?}");
    c1.ensure_running()?;
    net.assert_no_panics()
}

/// Mail that node A acknowledged (the sender was told `queued`) survives node A's death: with
/// A killed (-9) and never restarted, c2 comes online on node B and gets every message once,
/// in order, from the mailbox; and nothing more arrives after that.
#[test]
fn mail_a_node_acknowledged_outlives_the_node() -> Result<()> {
    const N: usize = 20;
    let Some(mut net) = Net::two_nodes()? else {
        return Ok(());
    };
    let b = net.node_b()?.addr();
    let bodies = queue_for_offline_c2(&net, "acknowledged", N)?;
    net.dir_mut().kill9()?;
    let mut c2 = net.listen_with(net.peer("c2").directory(b))?;
    let got = c2.wait_json_n("messages from c1", N, SHORT, |v| is_message_from(v, "c1"))?;
    check_messages(&got, "c1", "c2", &bodies, Some("mailbox"))?;
    c2.terminate()?;
    let all = c2
        .json_lines()
        .into_iter()
        .filter(|v| is_message_from(v, "c1"))
        .count();
    ensure!(all == N, "c2 got {all} messages from c1, expected {N}");
    let again = net.peer("c2").directory(b).json().args(["inbox"]);
    let again = again.run(SHORT)?.success()?.of_type("message");
    ensure!(again.is_empty(), "delivered again: {again:?}");
    net.assert_no_panics()
}

/// The log compacted (every few entries here), node B is killed and started again with an
/// empty replica: it starts from the newest snapshot, and serves the names and the mail of
/// before the snapshot as the other node does.
#[test]
fn a_node_started_afresh_after_compaction_loads_the_snapshot() -> Result<()> {
    const N: usize = 12;
    let opts = DirOpts {
        args: [
            "--log-compact-after",
            "5",
            "--log-compact-check",
            "1",
            "--metrics",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec(),
        ..DirOpts::default()
    };
    let Some(mut net) = Net::two_nodes_with(opts)? else {
        return Ok(());
    };
    let bodies = queue_for_offline_c2(&net, "before the snapshot", N)?;
    // The node that compacted says so in its metrics: a snapshot stored, and the log holding
    // fewer entries than it has positions.
    let nodes = [metrics_addr(net.dir())?, metrics_addr(net.node_b()?)?];
    let compacted = poll_until(
        "a node to compact the log",
        SHORT,
        Duration::from_millis(100),
        || {
            for at in nodes {
                let text = scrape(at)?;
                if log_sample(&text, "compactions_total{outcome=\"done\"}")? >= 1.0 {
                    return Ok(Some(text));
                }
            }
            Ok(None)
        },
    )?;
    let (entries, last) = (
        log_sample(&compacted, "entries")?,
        log_sample(&compacted, "last_position")?,
    );
    ensure!(
        last >= N as f64 && entries < last && log_sample(&compacted, "snapshot_bytes")? > 0.0,
        "after a compaction, the log holds {entries} of {last} entries:\n{compacted}"
    );
    let node_b = net.node_b_mut()?;
    node_b.kill9()?;
    std::fs::remove_file(node_b.data().join("replica.redb"))?;
    node_b.restart()?;
    ensure!(
        node_b.stderr_tail().contains("loading the newest snapshot"),
        "node B did not start from a snapshot: {}",
        node_b.stderr_tail()
    );
    // Started from a snapshot and caught up: nothing behind, the snapshot's size known.
    let text = scrape(metrics_addr(node_b)?)?;
    ensure!(
        log_sample(&text, "reachable")? == 1.0
            && log_sample(&text, "behind")? == 0.0
            && log_sample(&text, "applied_position")? >= last
            && log_sample(&text, "snapshot_bytes")? > 0.0,
        "node B after starting from the snapshot:\n{text}"
    );
    let b = node_b.addr();
    let whois = net
        .peer("c2")
        .directory(b)
        .json()
        .args(["whois", "c1"])
        .run(SHORT)?
        .success()?
        .one_of_type("whois")?;
    ensure!(whois["name"] == "c1", "c1 unknown at node B: {whois}");
    let mut c2 = net.listen_with(net.peer("c2").directory(b))?;
    let got = c2.wait_json_n("messages from c1", N, SHORT, |v| is_message_from(v, "c1"))?;
    check_messages(&got, "c1", "c2", &bodies, Some("mailbox"))?;
    net.assert_no_panics()
}

/// A mailbox message deposited on node A for a peer online on node B is pushed to it at once:
/// B applies the deposit from the cluster's log and wakes its mailbox.
#[test]
fn mail_deposited_on_one_node_is_pushed_by_the_other() -> Result<()> {
    let Some(net) = Net::two_nodes()? else {
        return Ok(());
    };
    let b = net.node_b()?;
    net.register("c1")?;
    // Closed to strangers, c2 gets c1's message through the mailbox.
    let mut c2 = net.listen_with(net.peer("c2").closed().directory(b.addr()))?;
    let started = Instant::now();
    let sent = net.send("c1", "c2", "through the log")?;
    let got = c2.wait_json("a message from c1", SHORT, |v| is_message_from(v, "c1"))?;
    ensure!(
        got["body"] == "through the log" && got["via"] == "mailbox",
        "c2 got {got} after {sent}"
    );
    eprintln!("deposit on A to shown on B: {:?}", started.elapsed());
    net.assert_no_panics()
}

/// c1 (given both nodes) chats with c2 through node A; node A is killed (-9) mid-conversation.
/// c1 moves to node B, and every message c1 sent, before and after, reaches c2 exactly once.
#[test]
fn a_peer_moves_when_its_node_dies_and_nothing_is_lost_or_repeated() -> Result<()> {
    let Some(mut net) = Net::two_nodes()? else {
        return Ok(());
    };
    let b = net.node_b()?.addr();
    let nodes = format!("{},{b}", net.dir().addr());
    let mut c2 = net.listen_with(net.peer("c2").directory(b))?;
    let mut c1 = net
        .peer("c1")
        .heartbeat(1.0)
        .directory_nodes(&nodes)
        .json()
        .args(["chat", "c2"])
        .spawn()?;
    c1.wait_online()?;
    let before = numbered("before", 0..5);
    for body in &before {
        c1.write_line(body)?;
    }
    let got = c2.wait_json_n("messages from c1", before.len(), SHORT, |v| {
        is_message_from(v, "c1")
    })?;
    check_messages(&got, "c1", "c2", &before, None)?;
    net.dir_mut().kill9()?;
    wait_presence_at_b(&net, "c2", "c1", true)?;
    let after = numbered("after", 0..5);
    for body in &after {
        c1.write_line(body)?;
    }
    let got = c2.wait_json_n("messages from c1", after.len(), SHORT, |v| {
        is_message_from(v, "c1")
    })?;
    check_messages(&got, "c1", "c2", &after, None)?;
    c1.finish(Duration::from_secs(30))?;
    let all = c2
        .json_lines()
        .into_iter()
        .filter(|v| is_message_from(v, "c1"))
        .count();
    ensure!(
        all == before.len() + after.len(),
        "c2 got {all} messages from c1"
    );
    net.assert_no_panics()
}

/// A room with members on both nodes: c1, on node A, creates it and invites c2, on node B,
/// which hears of it at once (node B pushes the op it applied from the log); c1's room message
/// reaches c2; c1 coming online and going offline on A shows in the room on B.
#[test]
fn a_room_spans_both_nodes() -> Result<()> {
    let Some(net) = Net::two_nodes()? else {
        return Ok(());
    };
    let b = net.node_b()?;
    net.register("c1")?;
    let mut c2 = net.listen_with(net.peer("c2").directory(b.addr()))?;
    let room = |args: &[&str]| net.peer("c1").json().args(["room"]).args(args).run(SHORT);
    room(&["create", "#span"])?.success()?;
    room(&["invite", "#span", "c2"])?.success()?;
    c2.wait_json("c2 on node B hears it was invited", SHORT, |v| {
        v["type"] == "room_event" && v["event"] == "invited" && v["name"] == "c2"
    })?;
    let mut c1 = net.listen("c1")?;
    c2.wait_json("c1 online in #span, from node A", SHORT, |v| {
        v["type"] == "room_event" && v["event"] == "online" && v["name"] == "c1"
    })?;
    let sent = net
        .peer("c1")
        .json()
        .args(["send", "#span", "across nodes"])
        .run(SHORT)?
        .success()?
        .one_of_type("sent")?;
    ensure!(sent["delivered"] == 1, "sent: {sent}");
    c2.wait_json("the room message", SHORT, |v| {
        is_message_from(v, "c1") && v["room"] == "#span" && v["body"] == "across nodes"
    })?;
    c1.stop_with(tests::Sig::SIGTERM)?;
    c2.wait_json("c1 offline in #span, from node A", SHORT, |v| {
        v["type"] == "room_event" && v["event"] == "offline" && v["name"] == "c1"
    })?;
    net.assert_no_panics()
}

/// A node that cannot apply an entry of the cluster's log stops serving and exits non-zero,
/// saying why, instead of serving what it holds while every write fails: its peers move to a
/// node that can serve them. The entry here is junk published on the log's subject with the
/// NATS text protocol.
#[test]
fn a_node_that_cannot_apply_the_log_exits() -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let Some(mut net) = Net::two_nodes()? else {
        return Ok(());
    };
    let url = net.nats_url()?.trim_start_matches("nats://").to_string();
    let mut nats = std::net::TcpStream::connect(&url)?;
    nats.set_read_timeout(Some(SHORT))?;
    let mut lines = BufReader::new(nats.try_clone()?);
    let mut info = String::new();
    lines.read_line(&mut info)?;
    ensure!(info.starts_with("INFO"), "not NATS: {info}");
    nats.write_all(
        b"CONNECT {\"verbose\":false}\r\nPUB directory.DIRECTORY.log 4\r\njunk\r\nPING\r\n",
    )?;
    let mut pong = String::new();
    while !pong.starts_with("PONG") {
        pong.clear();
        ensure!(
            lines.read_line(&mut pong)? > 0,
            "NATS closed the connection"
        );
    }
    let b = net.node_b_mut()?;
    poll_until("node B to exit", SHORT, Duration::from_millis(100), || {
        Ok((!b.is_running()).then_some(()))
    })?;
    ensure!(
        b.stderr_tail().contains("cannot apply the cluster's log"),
        "node B's last words: {}",
        b.stderr_tail()
    );
    Ok(())
}

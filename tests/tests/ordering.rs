//! Order across the two paths: messages queued while the recipient was offline come before
//! those sent after it came back, and none is shown twice.
//!
//! Each scenario runs on one directory and again with its peers split over two nodes of a
//! cluster on NATS JetStream ([`tests::on_each_topology!`]).

use anyhow::{ensure, Result};
use std::time::Duration;
use tests::{
    check_messages, is_message_from, is_type, numbered, on_each_topology, Json, Net, Running,
    Topology,
};

on_each_topology!(
    queued_then_direct_in_order,
    no_overtaking_while_mailbox_drains,
);

/// All message lines of a process that has exited (its output is complete).
fn all_messages(r: &Running) -> Vec<Json> {
    r.json_lines()
        .into_iter()
        .filter(|v| is_type(v, "message"))
        .collect()
}

/// 10 `send`s while c2 is offline (queued), c2 listens and shows them, then 10 more `send`s go
/// direct: c2 shows all 20 in order, each once.
fn queued_then_direct_in_order(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    net.register("c2")?;
    let first = numbered("offline", 0..10);
    let second = numbered("online", 0..10);

    for b in &first {
        let s = net.send("c1", "c2", b)?;
        ensure!(s["status"] == "queued", "c2 is offline, yet: {s}");
    }

    let mut c2 = net.listen("c2")?;
    let got = c2.wait_json_n("the 10 queued", 10, Duration::from_secs(30), |v| {
        is_message_from(v, "c1")
    })?;
    check_messages(&got, "c1", "c2", &first, Some("mailbox"))?;

    // c2 has shown the queued ones; from here on the direct path is expected. A sender keeps
    // using the mailbox while its earlier messages are still held there (so the first send may
    // race c2's acknowledgement to the directory), but once one goes direct, all later do.
    let mut statuses = Vec::new();
    for b in &second {
        let s = net.send("c1", "c2", b)?;
        statuses.push(s["status"].as_str().unwrap_or("?").to_string());
    }
    let first_direct = statuses.iter().position(|s| s == "delivered");
    ensure!(
        first_direct.is_some_and(|i| statuses[i..].iter().all(|s| s == "delivered"))
            && statuses.iter().all(|s| s == "delivered" || s == "queued"),
        "statuses of the sends after c2 came online: {statuses:?}; expected delivered \
         (possibly after queued ones, never queued after delivered)"
    );

    let got2 = c2.wait_json_n(
        "the 10 sent while online",
        10,
        Duration::from_secs(30),
        |v| is_message_from(v, "c1"),
    )?;
    check_messages(&got2, "c1", "c2", &second, None)?;
    for (m, st) in got2.iter().zip(&statuses) {
        let via = if st == "delivered" {
            "direct"
        } else {
            "mailbox"
        };
        ensure!(
            m["via"] == via,
            "send said {st}, so expected via {via}: {m}"
        );
    }

    c2.terminate()?;
    let all = all_messages(&c2);
    let expected: Vec<String> = first.iter().chain(&second).cloned().collect();
    check_messages(&all, "c1", "c2", &expected, None)?;
    net.assert_no_panics()
}

/// The sender starts a second batch right as the recipient comes online and its mailbox
/// drains: the direct path must not overtake the queued messages.
fn no_overtaking_while_mailbox_drains(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    net.register("c2")?;
    let first = numbered("queued", 0..10);
    let second = numbered("racing", 0..10);

    let mut c1 = net.peer("c1").json().args(["chat", "c2"]).spawn()?;
    c1.wait_online()?;
    for b in &first {
        c1.write_line(b)?;
    }
    c1.finish(Duration::from_secs(60))?;

    // Start both at once: no waiting for c2's online line before c1 sends again.
    let mut c2 = net.peer("c2").json().args(["listen"]).spawn()?;
    let mut c1 = net.peer("c1").json().args(["chat", "c2"]).spawn()?;
    for b in &second {
        c1.write_line(b)?;
    }
    let expected: Vec<String> = first.iter().chain(&second).cloned().collect();
    c2.wait_json_n("all 20 messages", 20, Duration::from_secs(60), |v| {
        is_message_from(v, "c1")
    })?;
    c1.finish(Duration::from_secs(30))?;
    c2.terminate()?;
    check_messages(&all_messages(&c2), "c1", "c2", &expected, None)?;
    net.assert_no_panics()
}

//! The local history (`HOME/history.redb`): both directions of a conversation, in order,
//! across restarts, through the running peer or straight from the file; and a message
//! delivered twice with the same id shown once, even across a restart.

use anyhow::{ensure, Result};
use common::{
    defaults::ALPN_DIRECTORY,
    seal::Content,
    tls::Expect,
    wire::{ChatMessage, DirectoryResponse, MessageId},
    Name,
};
use tests::{
    body,
    raw::{runtime, Raw},
    Json, Net, SHORT,
};

/// (direction, state, body) of each line.
fn summary(lines: &[Json]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .map(|v| {
            (
                v["direction"].as_str().unwrap_or("?").to_string(),
                v["state"].as_str().unwrap_or("?").to_string(),
                body(v).to_string(),
            )
        })
        .collect()
}

fn row(direction: &str, state: &str, body: &str) -> (String, String, String) {
    (direction.into(), state.into(), body.into())
}

/// Sent and received messages are kept in order across restarts of `listen`; `history` reads
/// them through the running peer, or from the file when none runs.
#[test]
fn both_directions_in_order_across_restarts() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let mut c1 = net.listen("c1")?;
    let sent = net.send("c1", "c2", "one, from c1")?; // through c1's listen
    ensure!(sent["status"] == "delivered", "{sent}");
    net.send("c2", "c1", "two, from c2")?;
    c1.wait_json("c2's message", SHORT, |v| v["body"] == "two, from c2")?;
    // c1's listen holds the database: history goes through it.
    let lines = net.history("c1", "c2")?;
    ensure!(
        summary(&lines)
            == [
                row("out", "delivered", "one, from c1"),
                row("in", "received", "two, from c2"),
            ],
        "history while listen runs: {lines:?}"
    );
    ensure!(lines[0]["id"] == sent["id"], "{lines:?} vs {sent}");
    c1.terminate()?;

    let mut c1 = net.listen("c1")?;
    net.send("c2", "c1", "three, after a restart")?;
    c1.wait_json("c2's message", SHORT, |v| {
        v["body"] == "three, after a restart"
    })?;
    c1.terminate()?;
    // Nobody runs as c1: history reads the file. --limit keeps the latest.
    let lines = net.history("c1", "c2")?;
    ensure!(
        summary(&lines)
            == [
                row("out", "delivered", "one, from c1"),
                row("in", "received", "two, from c2"),
                row("in", "received", "three, after a restart"),
            ],
        "history after a restart: {lines:?}"
    );
    let out = net
        .peer("c1")
        .args(["history", "c2", "--limit", "1"])
        .run(SHORT)?
        .success()?;
    ensure!(
        out.stdout.lines().count() == 1 && out.stdout.contains("c2: three, after a restart"),
        "history --limit 1 printed {:?}",
        out.stdout
    );
    // The other side has its own history, with the directions the other way round.
    let theirs = net.history("c2", "c1")?;
    ensure!(
        summary(&theirs)[0] == row("in", "received", "one, from c1")
            && summary(&theirs)[1] == row("out", "delivered", "two, from c2"),
        "c2's history: {theirs:?}"
    );
    c2.terminate()?;
    net.assert_no_panics()
}

/// The directory forgets an id once its message is delivered, so the same message deposited
/// again is delivered again. The receiver shows it once, whichever process receives it.
#[test]
fn a_message_delivered_twice_is_shown_once_across_restarts() -> Result<()> {
    let net = Net::new()?;
    net.register("c1")?;
    let message = ChatMessage {
        id: MessageId::random(),
        from: Name::new("dup")?,
        to: Name::new("c1")?,
        sent_at_ms: common::now_ms(),
        body: "only once, please".into(),
    };
    // One key for "dup" throughout: the directory binds the name to the first key it sees.
    let rt = runtime()?;
    let raw = rt.block_on(async { Raw::new("dup") })?;
    let deposit = |message: &ChatMessage| -> Result<()> {
        rt.block_on(async {
            let conn = raw
                .dial(net.dir().addr(), ALPN_DIRECTORY, Expect::AnyKey)
                .await?;
            raw.register(&conn, "dup").await?;
            let content = Content::Chat(message.clone());
            let answer = raw.send_letter(&conn, "c1", content).await?;
            ensure!(answer == DirectoryResponse::Stored, "deposit: {answer:?}");
            Ok(())
        })
    };
    deposit(&message)?;
    let first = net.register("c1")?; // `inbox`: shows and acknowledges
    ensure!(
        first.len() == 1 && body(&first[0]) == "only once, please",
        "first inbox: {first:?}"
    );

    // The same id again: a new process receives it, acknowledges it, shows nothing.
    deposit(&message)?;
    let again = net.register("c1")?;
    ensure!(
        again.is_empty(),
        "the redelivery was shown again: {again:?}"
    );
    // It was acknowledged: nothing waits any more.
    let left = net.register("c1")?;
    ensure!(
        left.is_empty(),
        "still waiting after the redelivery: {left:?}"
    );

    let lines = net.history("c1", "dup")?;
    ensure!(
        summary(&lines) == [row("in", "received", "only once, please")],
        "history: {lines:?}"
    );
    ensure!(lines[0]["via"] == "mailbox", "{lines:?}");
    net.assert_no_panics()
}

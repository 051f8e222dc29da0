//! Contacts and message requests (the product's default, without `--open`): a stranger gets
//! no address and no introduction, and its messages are requests through the mailbox;
//! accepting lets it reach us directly, across a directory restart; blocking drops what it
//! sends; a stranger's file waits until it is accepted.

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use tests::{is_message_from, is_type, poll_until, Net, Running, SHORT};

const WAIT: Duration = Duration::from_secs(20);

/// `listen --json` for `name` without `--open`.
fn listen_closed(net: &Net, name: &str) -> Result<Running> {
    net.listen_with(net.peer(name).closed())
}

/// `peer --json COMMAND ARGS` for `name` without `--open`; must succeed.
fn closed(net: &Net, name: &str, args: &[&str]) -> Result<tests::CmdOutput> {
    net.peer(name)
        .closed()
        .json()
        .args(args)
        .run(SHORT)?
        .success()
}

fn whois(net: &Net, asker: &str, name: &str) -> Result<serde_json::Value> {
    closed(net, asker, &["whois", name])?.one_of_type("whois")
}

/// A stranger's lookup has the key and presence, the last-seen time to the day and no
/// address; its message comes through the mailbox as a request, with a notice that says what
/// to do. (Before contacts, the lookup had both addresses and the message came directly.)
#[test]
fn a_stranger_sees_no_address_and_its_message_is_a_request() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = listen_closed(&net, "c2")?;
    let seen = whois(&net, "c1", "c2")?;
    ensure!(seen["online"] == true, "c2 is online: {seen}");
    ensure!(
        seen["observed_addr"].is_null()
            && seen["listen_addrs"]
                .as_array()
                .is_some_and(|a| a.is_empty()),
        "a stranger learned where c2 is: {seen}"
    );
    let day = 24 * 3600 * 1000;
    let last_seen = seen["last_seen_ms"].as_u64().context("last_seen_ms")?;
    ensure!(
        last_seen % day == 0,
        "last seen to the ms for a stranger: {seen}"
    );

    let sent = closed(&net, "c1", &["send", "c2", "hello from a stranger"])?.one_of_type("sent")?;
    ensure!(
        sent["status"] == "queued",
        "not through the mailbox: {sent}"
    );
    let msg = c2.wait_json("c1's request", WAIT, |v| is_message_from(v, "c1"))?;
    ensure!(
        msg["request"] == true && msg["via"] == "mailbox",
        "not shown as a message request: {msg}"
    );
    poll_until(
        "the request notice",
        WAIT,
        Duration::from_millis(50),
        || Ok(c2.stderr_tail().contains("peer accept c1").then_some(())),
    )?;
    // Writing to c1 accepted it on c1's side: c2's answer is no request there.
    let contacts = closed(&net, "c1", &["contacts"])?;
    let line = contacts.one_of_type("contact")?;
    ensure!(
        line["name"] == "c2" && line["standing"] == "accepted",
        "c1 wrote to c2 but did not accept it: {line}"
    );
    c2.terminate()?;
    net.assert_no_panics()
}

/// `peer accept c1`, run while c2 listens, lets c1 find c2's addresses and deliver directly;
/// the directory is told again after it restarts.
#[test]
fn an_accepted_contact_reaches_directly_across_a_directory_restart() -> Result<()> {
    let mut net = Net::new()?;
    net.register("c1")?;
    // Heartbeats of 1 s: c2 notices the killed directory after 3 s and registers again.
    let mut c2 = net.listen_with(net.peer("c2").closed().heartbeat(1.0))?;
    let accepted = closed(&net, "c2", &["accept", "c1"])?.one_of_type("contact")?;
    ensure!(
        accepted["name"] == "c1" && accepted["standing"] == "accepted",
        "{accepted}"
    );
    let seen = whois(&net, "c1", "c2")?;
    ensure!(
        seen["observed_addr"].is_string(),
        "a contact sees no address: {seen}"
    );
    let sent = closed(&net, "c1", &["send", "c2", "direct now"])?.one_of_type("sent")?;
    ensure!(sent["status"] == "delivered", "{sent}");
    let msg = c2.wait_json("c1's message", WAIT, |v| is_message_from(v, "c1"))?;
    ensure!(
        msg["via"] == "direct" && msg.get("request").is_none(),
        "a contact's message: {msg}"
    );

    net.dir_mut().restart()?;
    poll_until(
        "c2's addresses after the restart",
        WAIT,
        Duration::from_millis(200),
        || {
            let seen = net
                .peer("c1")
                .closed()
                .json()
                .args(["whois", "c2"])
                .run(SHORT)?;
            let line = seen.of_type("whois").into_iter().next();
            Ok(line.filter(|v| v["observed_addr"].is_string()))
        },
    )?;
    c2.terminate()?;
    net.assert_no_panics()
}

/// What a blocked sender sends is taken from the mailbox and never shown: a message sent after
/// it by someone else arrives, and the blocked one never does.
#[test]
fn a_blocked_senders_messages_are_dropped_unseen() -> Result<()> {
    let net = Net::new()?;
    net.register("c1")?;
    let mut c2 = listen_closed(&net, "c2")?;
    let blocked = closed(&net, "c2", &["block", "c1"])?.one_of_type("contact")?;
    ensure!(blocked["standing"] == "blocked", "{blocked}");
    let contacts = closed(&net, "c2", &["contacts"])?;
    ensure!(
        contacts.of_type("contact").len() == 1,
        "{}",
        contacts.stdout
    );
    let sent = closed(&net, "c1", &["send", "c2", "let me in"])?.one_of_type("sent")?;
    ensure!(sent["status"] == "queued", "{sent}");
    closed(&net, "c3", &["send", "c2", "after the blocked one"])?;
    let msg = c2.wait_json("c3's message", WAIT, |v| is_type(v, "message"))?;
    ensure!(
        msg["from"] == "c3",
        "the first message shown is not c3's: {msg}"
    );
    c2.terminate()?;
    let from_c1 = c2
        .json_lines()
        .iter()
        .filter(|v| is_message_from(v, "c1"))
        .count();
    ensure!(
        from_c1 == 0,
        "c2 showed {from_c1} messages from a blocked sender"
    );
    net.assert_no_panics()
}

/// A file over the mailbox limit from a stranger waits, saying why, and goes directly once the
/// recipient accepts the sender.
#[test]
fn a_strangers_file_waits_until_it_is_accepted() -> Result<()> {
    let net = Net::new()?;
    net.register("c1")?;
    let mut c2 = listen_closed(&net, "c2")?;
    let path = net.root().join("big.bin");
    std::fs::write(&path, vec![7u8; 200_000])?;
    let mut send = net
        .peer("c1")
        .closed()
        .json()
        .global(["--mailbox-file-max", "1000"])
        .args(["send-file", "c2"])
        .args([&path])
        .spawn()?;
    poll_until(
        "c1 saying why it waits",
        WAIT,
        Duration::from_millis(50),
        || {
            Ok(send
                .stderr_tail()
                .contains("not in its contacts")
                .then_some(()))
        },
    )?;
    ensure!(
        !c2.json_lines().iter().any(|v| is_type(v, "file")),
        "the file arrived before c1 was accepted"
    );
    closed(&net, "c2", &["accept", "c1"])?;
    let file = c2.wait_json("the file", Duration::from_secs(60), |v| is_type(v, "file"))?;
    ensure!(
        file["from"] == "c1" && file["size"] == 200_000 && file["via"] == "direct",
        "{file}"
    );
    send.finish(WAIT)?;
    c2.terminate()?;
    net.assert_no_panics()
}

/// A stranger's small file comes through the mailbox and waits apart, in
/// `downloads/.requests/c1/`; accepting c1 moves it into the downloads folder. (Before, it went
/// straight into the downloads folder, directly.)
#[test]
fn a_strangers_small_file_waits_apart_until_it_is_accepted() -> Result<()> {
    let net = Net::new()?;
    net.register("c1")?;
    let mut c2 = listen_closed(&net, "c2")?;
    let path = net.root().join("note.txt");
    std::fs::write(&path, "from a stranger")?;
    let out = net
        .peer("c1")
        .closed()
        .json()
        .args(["send-file", "c2"])
        .args([&path])
        .run(SHORT)?
        .success()?;
    let sent = out.one_of_type("file_sent")?;
    ensure!(
        sent["status"] == "queued",
        "not through the mailbox: {sent}"
    );
    let file = c2.wait_json("the file", WAIT, |v| is_type(v, "file"))?;
    let downloads = net.home("c2")?.join("downloads");
    let waiting = downloads.join(".requests").join("c1").join("note.txt");
    ensure!(
        file["request"] == true && file["path"] == waiting.display().to_string(),
        "the stranger's file is not held apart: {file}"
    );
    ensure!(!downloads.join("note.txt").exists(), "already in downloads");
    closed(&net, "c2", &["accept", "c1"])?;
    poll_until(
        "the file in downloads",
        WAIT,
        Duration::from_millis(50),
        || Ok(downloads.join("note.txt").exists().then_some(())),
    )?;
    ensure!(std::fs::read_to_string(downloads.join("note.txt"))? == "from a stranger");
    ensure!(!waiting.exists(), "still waiting apart");
    c2.terminate()?;
    net.assert_no_panics()
}

/// A file that would leave the recipient's disk with less than 256 MiB free is refused at its
/// offer, before any byte is sent (a sparse file of 1 TiB minus one byte: the largest a peer
/// takes). Before, the receiver accepted it and started writing.
#[test]
fn a_file_larger_than_the_free_disk_is_refused_at_once() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let path = net.root().join("huge.bin");
    std::fs::File::create(&path)?.set_len((1 << 40) - 1)?;
    let out = net
        .peer("c1")
        .json()
        .args(["send-file", "c2"])
        .args([&path])
        .run(SHORT)?;
    ensure!(
        !out.status.success() && out.stderr.contains("cannot store"),
        "not refused: {} / {}",
        out.stdout,
        out.stderr
    );
    c2.terminate()?;
    net.assert_no_panics()
}

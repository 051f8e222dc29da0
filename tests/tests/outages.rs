//! The directory goes away under running peers: killed and restarted at once on the same data
//! and port, or down for a while. Commands through a running `listen` and lines typed in a
//! running `chat` wait for it and succeed; every message arrives exactly once; the terminal
//! client says what is going on, in one status line, and shows presence as unknown meanwhile.
//!
//! The outage lasts [`outage`] seconds: 8 by default, `CHAT_TESTS_OUTAGE_SECS` to change it
//! (30 is the case users meet when a host reboots).

use anyhow::{ensure, Context, Result};
use std::{collections::HashMap, time::Duration};
use tests::{body, is_message_from, CmdOutput, Json, Net, PeerCmd, EXIT, SHORT};

/// How long the screen may take to show something that depends on the network.
const SHOWN: Duration = Duration::from_secs(20);

/// How long the directory stays down in the outage scenarios.
fn outage() -> Duration {
    let secs = std::env::var("CHAT_TESTS_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    Duration::from_secs(secs)
}

/// `--directory-wait` for the running peers: longer than the outage, so a command started at
/// its beginning still waits it out.
fn wait_flag() -> [String; 2] {
    let secs = (outage() + Duration::from_secs(30)).as_secs();
    ["--directory-wait".into(), secs.to_string()]
}

/// How many times each body arrived, from a `listen --json`'s or an `inbox --json`'s lines.
fn counts(lines: &[Json], from: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for v in lines.iter().filter(|v| is_message_from(v, from)) {
        *counts.entry(body(v).to_string()).or_default() += 1;
    }
    counts
}

/// Requires every body once, and nothing else.
fn exactly_once(counts: &HashMap<String, usize>, bodies: &[String], who: &str) -> Result<()> {
    for b in bodies {
        ensure!(
            counts.get(b) == Some(&1),
            "{who} got {b:?} {} times; all: {counts:?}",
            counts.get(b).copied().unwrap_or(0)
        );
    }
    ensure!(
        counts.len() == bodies.len(),
        "{who} got messages nobody sent: {counts:?}"
    );
    Ok(())
}

/// A short command that must succeed; its stderr names what failed otherwise.
fn run_ok(cmd: PeerCmd, timeout: Duration) -> Result<CmdOutput> {
    cmd.run(timeout)?.success()
}

/// Kill -9 and an immediate restart (same data, same port) under running `listen`s: `whois`
/// and `send` through the running peer right after succeed, none with a connection error;
/// c2 (online) and c3 (offline, mailbox) get every message once.
#[test]
fn a_directory_restart_under_a_running_listen_fails_no_command() -> Result<()> {
    let mut net = Net::new()?;
    net.register("c3")?;
    let mut c2 = net.listen("c2")?;
    let c1 = net.listen("c1")?;
    net.send("c1", "c2", "before")?;
    c2.wait_json("before", SHORT, |v| is_message_from(v, "c1"))?;

    net.dir_mut().kill9()?;
    net.dir_mut().restart()?;

    let mut to_c2 = Vec::new();
    let mut to_c3 = Vec::new();
    for i in 0..3 {
        let w = run_ok(net.peer("c1").json().args(["whois", "c2"]), SHORT)
            .with_context(|| format!("whois #{i} after the restart"))?;
        ensure!(w.one_of_type("whois")?["name"] == "c2", "{}", w.stdout);
        let b = format!("to c2 after the restart #{i}");
        run_ok(net.peer("c1").json().args(["send", "c2", &b]), SHORT)?;
        to_c2.push(b);
        let b = format!("to c3 after the restart #{i}");
        let sent = run_ok(net.peer("c1").json().args(["send", "c3", &b]), SHORT)?;
        ensure!(
            sent.one_of_type("sent")?["status"] == "queued",
            "{}",
            sent.stdout
        );
        to_c3.push(b);
    }
    c2.wait_json_n("the messages after the restart", 3, SHORT, |v| {
        is_message_from(v, "c1") && body(v).contains("after the restart")
    })?;
    let mut all = vec!["before".to_string()];
    all.extend(to_c2);
    exactly_once(&counts(&c2.json_lines(), "c1"), &all, "c2")?;
    exactly_once(&counts(&net.register("c3")?, "c1"), &to_c3, "c3")?;
    drop(c1);
    net.assert_no_panics()
}

/// The directory is down for [`outage`] seconds. Commands started through the running
/// `listen` during the outage wait for it and succeed once it is back; nothing is lost or
/// doubled. A command needing the directory fails only after its own `--directory-wait`, in
/// one line.
#[test]
fn commands_during_an_outage_wait_for_the_directory() -> Result<()> {
    let mut net = Net::new()?;
    net.register("c3")?;
    let mut c2 = net.listen_with(net.peer("c2").global(wait_flag()))?;
    let c1 = net.listen_with(net.peer("c1").global(wait_flag()))?;

    net.dir_mut().kill9()?;
    let outage_started = std::time::Instant::now();
    // A short command of its own (no running peer for c4): fails after its wait, clearly.
    let alone = net
        .peer("c4")
        .global(["--directory-wait", "1"])
        .args(["whois", "c2"]);
    // Commands through c1's running peer, started while the directory is down.
    let mut through = Vec::new();
    let mut to_c2 = Vec::new();
    let mut to_c3 = Vec::new();
    for i in 0..2 {
        let b = format!("to c2 during the outage #{i}");
        through.push(net.peer("c1").json().args(["send", "c2", &b]));
        to_c2.push(b);
        let b = format!("to c3 during the outage #{i}");
        through.push(net.peer("c1").json().args(["send", "c3", &b]));
        to_c3.push(b);
    }
    through.push(net.peer("c1").json().args(["whois", "c3"]));
    let limit = outage() + SHORT + SHORT;
    let handles: Vec<_> = through
        .into_iter()
        .map(|cmd| std::thread::spawn(move || cmd.run(limit)))
        .collect();
    let alone = alone.run(SHORT)?;
    let alone_err = alone.stderr.clone();
    alone.failure(&["directory"])?;
    ensure!(
        alone_err.trim().lines().count() == 1 && !alone_err.contains("connection lost"),
        "not one clear line: {alone_err:?}"
    );

    std::thread::sleep(outage().saturating_sub(outage_started.elapsed()));
    net.dir_mut().restart()?;
    for handle in handles {
        let out = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a command thread panicked"))??;
        out.success()
            .context("a command started during the outage")?;
    }
    c2.wait_json_n("the messages sent during the outage", 2, SHORT, |v| {
        is_message_from(v, "c1") && body(v).contains("during the outage")
    })?;
    exactly_once(&counts(&c2.json_lines(), "c1"), &to_c2, "c2")?;
    exactly_once(&counts(&net.register("c3")?, "c1"), &to_c3, "c3")?;
    drop(c1);
    net.assert_no_panics()
}

/// `chat` on a terminal while the directory is down for [`outage`] seconds: one status line
/// says it is unreachable and then reconnected, presence reads "unknown" meanwhile, a line
/// typed during the outage shows as waiting and is then queued for c3 (offline) and taken by
/// it once; no log line reaches the screen.
#[test]
fn chat_through_an_outage_keeps_the_message_and_says_what_happens() -> Result<()> {
    let mut net = Net::new()?;
    net.register("c3")?;
    let c2 = net.listen_with(net.peer("c2").global(wait_flag()))?;
    let chat = net
        .peer("c1")
        .global(wait_flag())
        .env("RUST_LOG", "info")
        .args(["chat", "c2"])
        .tmux(net.root(), 140, 40)?;
    chat.wait_for("c2 online", SHOWN, |s| s.contains("c2 · online"))?;

    net.dir_mut().kill9()?;
    let outage_started = std::time::Instant::now();
    chat.wait_for(
        "the outage on the status line, presence unknown",
        SHOWN,
        |s| s.contains("directory unreachable, retrying") && s.contains("c2 · unknown"),
    )?;
    chat.line("/to c3")?;
    chat.wait_text("c3 ·", SHOWN)?;
    chat.line("typed during the outage")?;
    chat.wait_for("the line waiting", SHOWN, |s| {
        s.lines().any(|l| {
            l.contains("typed during the outage") && l.contains("waiting for the directory")
        })
    })?;

    std::thread::sleep(outage().saturating_sub(outage_started.elapsed()));
    net.dir_mut().restart()?;
    chat.wait_text("reconnected to the directory", SHOWN)?;
    chat.wait_for("the line queued", SHOWN, |s| {
        s.lines()
            .any(|l| l.contains("typed during the outage") && l.contains("queued"))
    })?;
    let screen = chat.screen()?;
    ensure!(
        !screen.contains("WARN") && !screen.contains("INFO") && !screen.contains("log:"),
        "log lines on the screen:\n{screen}"
    );
    chat.line("/to c2")?;
    chat.wait_for("c2 online again", SHOWN, |s| s.contains("c2 · online"))?;
    chat.keys(&["C-c"])?;
    chat.wait_clean_exit(EXIT)?;
    let log = std::fs::read_to_string(net.home("c1")?.join("peer.log")).unwrap_or_default();
    ensure!(
        log.contains("directory"),
        "the log file does not tell of the outage: {log:?}"
    );
    exactly_once(
        &counts(&net.register("c3")?, "c1"),
        &["typed during the outage".to_string()],
        "c3",
    )?;
    drop(c2);
    net.assert_no_panics()
}

/// A `send` handed to the running peer while the directory is down stops waiting after the
/// running peer's `--directory-wait` and says the message is kept, in one line; the running
/// peer sends it once the directory is back, and c3 gets it once.
#[test]
fn a_send_that_stops_waiting_is_still_sent_by_the_running_peer() -> Result<()> {
    let mut net = Net::new()?;
    net.register("c3")?;
    let c1 = net.listen_with(net.peer("c1").global(["--directory-wait", "2"]))?;
    net.dir_mut().kill9()?;
    let out = net
        .peer("c1")
        .args(["send", "c3", "kept through the outage"])
        .run(SHORT)?;
    let stderr = out.stderr.clone();
    out.failure(&["not sent yet"])?;
    ensure!(
        stderr.contains("keeps the message") && stderr.trim().lines().count() == 1,
        "{stderr:?}"
    );
    net.dir_mut().restart()?;
    let got = tests::poll_until(
        "c3's mailbox to hold the kept message",
        SHORT,
        Duration::from_millis(200),
        || {
            let got = net.register("c3")?;
            Ok((!got.is_empty()).then_some(got))
        },
    )?;
    exactly_once(
        &counts(&got, "c1"),
        &["kept through the outage".to_string()],
        "c3",
    )?;
    let history = net.history("c1", "c3")?;
    ensure!(
        history.iter().any(|v| body(v) == "kept through the outage"
            && (v["state"] == "queued" || v["state"] == "delivered_later")),
        "c1's history: {history:?}"
    );
    drop(c1);
    net.assert_no_panics()
}

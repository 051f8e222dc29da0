//! What a newcomer meets first: no directory running, a wrong port, a second command with
//! another `--directory`. Each is said at once, in one line with what to do.

use anyhow::{ensure, Result};
use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};
use tests::{DirOpts, Net, SHORT};

/// How long the screen may take to show something that depends on the network.
const SHOWN: Duration = Duration::from_secs(20);

/// A loopback UDP port nothing listens on (bound, then released).
fn closed_port() -> Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    Ok(socket.local_addr()?)
}

/// With no directory on the port, a command fails at once (the old code waited out a 10 s
/// handshake), saying that nothing runs there and how to start one.
#[test]
fn no_directory_is_said_at_once_with_how_to_start_one() -> Result<()> {
    let net = Net::new()?;
    let nowhere = closed_port()?;
    for args in [&["whois", "c2"][..], &["send", "c2", "hi"], &["listen"]] {
        let started = Instant::now();
        let out = net.peer("c1").directory(nowhere).args(args).run(SHORT)?;
        let took = started.elapsed();
        let stderr = out.stderr.clone();
        out.failure(&["no directory is running"])?;
        ensure!(
            stderr.contains("directory --bind") && stderr.contains("CHAT_DIRECTORY"),
            "no hint: {stderr:?}"
        );
        ensure!(
            stderr.trim().lines().count() == 1,
            "not one line: {stderr:?}"
        );
        // The refusal comes back at once on loopback; 5 s leaves room for a slow machine and
        // is half of the handshake timeout the old code waited out.
        ensure!(
            took < Duration::from_secs(5),
            "{args:?} took {took:?} to fail"
        );
    }
    Ok(())
}

/// A port where a QUIC server speaks another protocol (here a running peer's own port) is
/// named as not a directory, not as a TLS alert.
#[test]
fn a_port_speaking_another_protocol_is_not_a_directory() -> Result<()> {
    let net = Net::new()?;
    let _c2 = net.listen("c2")?;
    let (peer_port, _) = net.dial_target("c1", "c2")?;
    let out = net
        .peer("c3")
        .directory(peer_port)
        .args(["whois", "c2"])
        .run(SHORT)?;
    let stderr = out.stderr.clone();
    out.failure(&["is not a p2pchat directory"])?;
    ensure!(
        !stderr.contains("error 120") && stderr.trim().lines().count() == 1,
        "{stderr:?}"
    );
    Ok(())
}

/// A command that goes through the running peer uses that peer's directory; when it was given
/// another one, it says so.
#[test]
fn another_directory_given_to_a_running_peer_is_said_to_be_ignored() -> Result<()> {
    let net = Net::new()?;
    let _c2 = net.listen("c2")?;
    let _c1 = net.listen("c1")?;
    let elsewhere = closed_port()?;
    let out = net
        .peer("c1")
        .directory(elsewhere)
        .json()
        .args(["whois", "c2"])
        .run(SHORT)?;
    let stderr = out.stderr.clone();
    let out = out.success()?;
    ensure!(
        out.one_of_type("whois")?["online"] == true,
        "{}",
        out.stdout
    );
    ensure!(
        stderr.contains("was ignored") && stderr.contains(&elsewhere.to_string()),
        "not told: {stderr:?}"
    );
    // The same directory: nothing to say.
    let out = net.peer("c1").json().args(["whois", "c2"]).run(SHORT)?;
    ensure!(!out.stderr.contains("ignored"), "{:?}", out.stderr);
    Ok(())
}

/// The terminal client opens at once and says it is connecting; with no directory there it
/// says so, with the hint, and keeps trying; once one starts on that port it connects.
#[test]
fn chat_opens_at_once_and_connects_when_a_directory_appears() -> Result<()> {
    let net = Net::new()?;
    let port = closed_port()?;
    let chat = net
        .peer("c1")
        .directory(port)
        .args(["chat", "c2"])
        .tmux(net.root(), 160, 30)?;
    chat.wait_for("the status line", SHOWN, |s| {
        s.contains("no directory is running at") && s.contains("directory --bind")
    })?;
    ensure!(chat.alternate_screen()?, "the client is not full-screen");
    let _dir = net.start_directory(DirOpts {
        bind: Some(port),
        ..DirOpts::default()
    })?;
    chat.wait_for("connected: the status line gone", SHOWN, |s| {
        !s.contains("no directory is running") && !s.contains("connecting to")
    })?;
    // The directory answers: it knows no c2.
    chat.line("/who")?;
    chat.wait_text("no peer is named c2", SHOWN)?;
    chat.keys(&["C-c"])?;
    chat.wait_clean_exit(tests::EXIT)?;
    Ok(())
}

/// The first run says, once, what it made and what it pinned, as SSH does: the new key's
/// fingerprint and where it is kept, and the directory's fingerprint now pinned. The second
/// run says neither.
#[test]
fn the_first_run_says_what_it_made_and_pinned() -> Result<()> {
    let net = Net::new()?;
    let first = net.peer("c1").args(["whois", "c1"]).run(SHORT)?.success()?;
    let key = first
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("key "))
        .map(str::to_string);
    let Some(key) = key else {
        anyhow::bail!("whois printed no key: {}", first.stdout)
    };
    let directory = tests::directory_fingerprint(net.dir().data())?;
    ensure!(
        first
            .stderr
            .contains(&format!("first run as c1: made its key, fingerprint {key}")),
        "the first run did not say what key it made: {}",
        first.stderr
    );
    ensure!(
        first
            .stderr
            .contains(&format!("its key fingerprint {directory} is pinned now")),
        "the first run did not say what it pinned: {}",
        first.stderr
    );
    let second = net.peer("c1").args(["whois", "c1"]).run(SHORT)?.success()?;
    ensure!(
        !second.stderr.contains("first"),
        "the second run said it again: {}",
        second.stderr
    );
    net.assert_no_panics()
}

//! Small things a user trips over (issue 14, item 10, and `history --grep`).

use anyhow::{ensure, Result};
use tests::{Net, SHORT};

/// `--json` after the command is taken; `history --grep` prints only what matches, of the
/// last N; an empty message and a message to yourself are refused with a clear line.
#[test]
fn papercuts() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    for body in ["apples", "Bananas", "cherries and APPLES"] {
        net.send("c1", "c2", body)?;
    }
    let out = net
        .peer("c1")
        .args(["history", "c2", "--json"])
        .run(SHORT)?
        .success()?;
    ensure!(out.of_type("message").len() == 3, "{}", out.stdout);

    let grep = |args: &[&str]| -> Result<Vec<String>> {
        let out = net
            .peer("c1")
            .json()
            .args(["history", "c2", "--grep"])
            .args(args)
            .run(SHORT)?
            .success()?;
        Ok(out
            .of_type("message")
            .iter()
            .map(|m| m["body"].as_str().unwrap_or_default().to_string())
            .collect())
    };
    ensure!(grep(&["apple"])? == ["apples", "cherries and APPLES"]);
    ensure!(grep(&["APPLE", "--limit", "1"])? == ["cherries and APPLES"]);
    ensure!(grep(&["kiwi"])?.is_empty());

    net.peer("c1")
        .args(["send", "c2", "   "])
        .run(SHORT)?
        .failure(&["the message is empty"])?;
    net.peer("c1")
        .args(["send", "c1", "note to self"])
        .run(SHORT)?
        .failure(&["c1 is you"])?;
    net.assert_no_panics()
}

/// A multi-line message prints as indented continuation lines in plain output, so it reads as
/// one message and a line of it cannot pass for another message.
#[test]
fn a_multi_line_message_keeps_its_lines_indented() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    net.send("c1", "c2", "line one\nline two\n[00:00] c3: forged?")?;
    let out = net.peer("c2").args(["inbox"]).run(SHORT)?.success()?;
    ensure!(
        out.stdout
            .contains("c1: line one\n    line two\n    [00:00] c3: forged?"),
        "{:?}",
        out.stdout
    );
    net.assert_no_panics()
}

/// Sizes read as sizes (item 9): a file's line says `1.50 MiB`, not a count of bytes. A
/// transfer interrupted with Ctrl-C says how far it got and how to go on, and the same command
/// then resumes.
#[test]
fn file_sizes_read_as_sizes_and_an_interrupted_file_says_how_to_resume() -> Result<()> {
    let net = Net::new()?;
    let _bob = net.listen("bob")?;
    let dir = tempfile::tempdir()?;
    let small = dir.path().join("small.bin");
    std::fs::write(&small, vec![7u8; 3 << 19])?;
    let out = net
        .peer("alice")
        .args(["send-file".as_ref(), "bob".as_ref(), small.as_os_str()])
        .run(SHORT)?
        .success()?;
    ensure!(
        out.stdout.contains("sent 1.50 MiB to bob"),
        "the size is not readable: {}",
        out.stdout
    );

    // Large and sparse: quick to make, long enough to interrupt on the way.
    let big = dir.path().join("big.bin");
    std::fs::File::create(&big)?.set_len(1 << 30)?;
    let partial = net.home("bob")?.join("downloads").join(".partial");
    let mut sending = net
        .peer("alice")
        .args(["send-file".as_ref(), "bob".as_ref(), big.as_os_str()])
        .spawn()?;
    tests::poll_until(
        "part of the file at bob",
        SHORT,
        std::time::Duration::from_millis(20),
        || {
            let arrived = std::fs::read_dir(&partial)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 0));
            Ok(arrived.then_some(()))
        },
    )?;
    sending.signal(tests::Sig::SIGINT)?;
    let status = sending.wait_exit(SHORT)?;
    let said = sending.stderr_tail();
    ensure!(
        !status.success()
            && said.contains("interrupted at")
            && said.contains("of 1.00 GiB; run the same command to resume"),
        "after Ctrl-C ({status}): {said}"
    );
    let again = net
        .peer("alice")
        .args(["send-file".as_ref(), "bob".as_ref(), big.as_os_str()])
        .run(std::time::Duration::from_secs(120))?
        .success()?;
    ensure!(
        again.stdout.contains("sent 1.00 GiB to bob") && again.stdout.contains("resumed after"),
        "{}",
        again.stdout
    );
    net.assert_no_panics()
}

/// No jargon on every line (item 10): a message delivered over a plain direct link says
/// `delivered to bob (direct)`, and the history says `delivered, direct`; how the link came
/// about is for `whois` and the JSON output (`"path":"public"`).
#[test]
fn a_plain_direct_delivery_says_no_jargon() -> Result<()> {
    let net = Net::new()?;
    let _bob = net.listen("bob")?;
    let out = net
        .peer("alice")
        .args(["send", "bob", "hi"])
        .run(SHORT)?
        .success()?;
    ensure!(
        out.stdout.trim() == "delivered to bob (direct)",
        "{}",
        out.stdout
    );
    let history = net
        .peer("alice")
        .args(["history", "bob"])
        .run(SHORT)?
        .success()?;
    ensure!(
        history.stdout.contains("delivered, direct") && !history.stdout.contains("public"),
        "{}",
        history.stdout
    );
    let sent = net.send("alice", "bob", "again")?;
    ensure!(sent["path"] == "public", "{sent}");
    net.assert_no_panics()
}

/// `whois` of yourself (item 10) says what it means: not "offline, never seen" from a short
/// command while no `listen` runs, and "(you)" once one does.
#[test]
fn whois_of_yourself_says_what_it_means() -> Result<()> {
    let net = Net::new()?;
    let whois = || -> Result<String> {
        let out = net
            .peer("alice")
            .args(["whois", "alice"])
            .run(SHORT)?
            .success()?;
        Ok(out.stdout)
    };
    let alone = whois()?;
    ensure!(
        alone.starts_with("alice: you, not online") && !alone.contains("never seen"),
        "{alone}"
    );
    let _alice = net.listen("alice")?;
    let listening = whois()?;
    ensure!(listening.starts_with("alice: online (you)"), "{listening}");
    net.assert_no_panics()
}

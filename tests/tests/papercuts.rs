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

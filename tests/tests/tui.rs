//! The full-screen client on a real terminal: `peer chat` in a tmux pane, driven with keys and
//! checked by what the screen shows, against a real directory and real peers.

use anyhow::{ensure, Result};
use std::time::Duration;
use tests::{body, is_message_from, is_type, poll_until, DirOpts, Net, Sig, EXIT, SHORT};

/// How long the screen may take to show something that depends on the network.
const SHOWN: Duration = Duration::from_secs(20);
/// How often a poll of what tmux says is repeated.
const POLL: Duration = Duration::from_millis(50);

/// Messages both ways, their states, `/to`, unread counts, a multi-line paste, resizing,
/// `/file`, `/quit`, and the terminal as it was afterwards.
#[test]
fn chat_on_a_terminal() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let mut c3 = net.listen("c3")?;
    let chat = net
        .peer("c1")
        .args(["chat", "c2"])
        .tmux(net.root(), 120, 40)?;
    // The side list polls presence: c2 shows as online.
    chat.wait_for("c2 online in the side list", SHOWN, |s| {
        s.contains("● c2") && s.contains("c2 · online")
    })?;
    ensure!(chat.alternate_screen()?, "the client is not full-screen");

    // A message from c2 appears with its sender.
    net.send("c2", "c1", "hello from c2")?;
    chat.wait_text("c2: hello from c2", SHOWN)?;

    // Typing and Enter sends; c2 receives it; the screen says it was delivered.
    chat.line("hi c2, typed")?;
    let got = c2.wait_json("c1's typed message", SHORT, |v| is_message_from(v, "c1"))?;
    ensure!(body(&got) == "hi c2, typed", "c2 got {got}");
    chat.wait_for("the typed message delivered", SHOWN, |s| {
        s.lines()
            .any(|l| l.contains("c1: hi c2, typed") && l.contains("✓ delivered"))
    })?;

    // Editing: backspace, move left, insert, home, delete, end.
    chat.type_text("helox")?;
    chat.keys(&["BSpace", "Left", "Left"])?;
    chat.type_text("l")?;
    chat.keys(&["Home", "Delete"])?;
    chat.type_text("H")?;
    chat.keys(&["End", "Enter"])?;
    let got = c2.wait_json("the edited message", SHORT, |v| is_message_from(v, "c1"))?;
    ensure!(body(&got) == "Hello", "editing gave {got}");

    // /to switches (Tab completes the command).
    chat.type_text("/t")?;
    chat.keys(&["Tab"])?;
    chat.type_text("c3")?;
    chat.keys(&["Enter"])?;
    chat.wait_text("c3 ·", SHOWN)?;
    chat.line("hi c3")?;
    let got = c3.wait_json("c1's message to c3", SHORT, |v| is_message_from(v, "c1"))?;
    ensure!(body(&got) == "hi c3", "c3 got {got}");

    // Tab on a name with two candidates lists them; on one, completes it.
    chat.type_text("/to c")?;
    chat.keys(&["Tab"])?;
    chat.wait_text("-- c2  c3 --", SHOWN)?;
    chat.keys(&["C-u"])?;

    // While c3 is shown, c2's message counts as unread.
    net.send("c2", "c1", "are you there?")?;
    chat.wait_text("c2 (1)", SHOWN)?;

    // A paste of several lines is one message.
    chat.paste("first line\nsecond line")?;
    chat.keys(&["Enter"])?;
    let got = c3.wait_json("the pasted message", SHORT, |v| is_message_from(v, "c1"))?;
    ensure!(
        body(&got) == "first line\nsecond line",
        "the paste arrived as {got}"
    );
    chat.wait_text("second line", SHOWN)?;

    // Resizing redraws to the new size.
    chat.resize(80, 20)?;
    chat.wait_for("a redraw at 80 columns", SHOWN, |s| {
        s.lines()
            .next()
            .is_some_and(|l| l.chars().count() == 80 && l.ends_with('┐'))
    })?;

    // /file sends a file to the peer shown (c3, online: directly).
    let path = net.root().join("for c3.txt");
    std::fs::write(&path, "a file for c3\n")?;
    // Tab completes the path from what is on disk, spaces and all.
    chat.type_text(&format!("/file {}/for", net.root().display()))?;
    chat.keys(&["Tab"])?;
    chat.wait_text("for c3.txt", SHOWN)?;
    chat.keys(&["Enter"])?;
    let got = c3.wait_json("the file", SHORT, |v| is_type(v, "file"))?;
    ensure!(
        got["from"] == "c1" && got["size"] == 14 && got["via"] == "direct",
        "c3 printed {got}"
    );
    chat.wait_text("file delivered to c3", SHOWN)?;

    // /quit leaves and gives the terminal back.
    chat.line("/quit")?;
    chat.wait_clean_exit(EXIT)?;
    c2.terminate()?;
    c3.terminate()?;
    net.assert_no_panics()
}

/// Earlier messages from the history at start, the queued state and then "delivered later",
/// presence notices when the peer comes and goes, and SIGTERM restoring the terminal.
#[test]
fn history_queued_presence_and_sigterm() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    let sent = net.send("c1", "c2", "written before the chat")?;
    ensure!(sent["status"] == "queued", "c2 is offline, yet {sent}");
    let chat = net
        .peer("c1")
        .args(["chat", "c2"])
        .tmux(net.root(), 120, 40)?;
    chat.wait_for("the earlier message, queued", SHOWN, |s| {
        s.lines()
            .any(|l| l.contains("c1: written before the chat") && l.contains("queued"))
    })?;
    chat.wait_text("c2 · last seen", SHOWN)?;

    chat.line("while you are away")?;
    chat.wait_for("the new message queued", SHOWN, |s| {
        s.lines()
            .any(|l| l.contains("c1: while you are away") && l.contains("queued"))
    })?;

    let mut c2 = net.listen("c2")?;
    chat.wait_text("c2 is online", SHOWN)?;
    let got = c2.wait_json_n("both queued messages", 2, SHORT, |v| {
        is_message_from(v, "c1")
    })?;
    ensure!(
        body(&got[0]) == "written before the chat" && body(&got[1]) == "while you are away",
        "c2 got {got:?}"
    );
    // The receipt comes back: both messages turn "delivered later".
    chat.wait_for("both messages delivered later", SHOWN, |s| {
        ["c1: written before the chat", "c1: while you are away"]
            .iter()
            .all(|m| {
                s.lines()
                    .any(|l| l.contains(m) && l.contains("delivered later"))
            })
    })?;
    c2.terminate()?;
    chat.wait_text("c2 left", SHOWN)?;

    chat.signal(Sig::SIGTERM)?;
    chat.wait_clean_exit(EXIT)?;
    net.assert_no_panics()
}

/// Ctrl-D on an empty line and Ctrl-C leave cleanly.
#[test]
fn ctrl_d_and_ctrl_c_leave() -> Result<()> {
    let net = Net::new()?;
    for key in ["C-d", "C-c"] {
        let chat = net
            .peer("c1")
            .args(["chat", "c2"])
            .tmux(net.root(), 100, 30)?;
        chat.wait_text("to c2", SHOWN)?;
        chat.keys(&[key])?;
        chat.wait_clean_exit(EXIT)?;
    }
    net.assert_no_panics()
}

/// Failures are told apart, each with what to do: a full mailbox, an unknown peer, and a
/// directory that cannot be reached say different things on the screen.
#[test]
fn failures_say_what_went_wrong_and_what_to_do() -> Result<()> {
    let mut net = Net::with(DirOpts {
        quota_messages: Some(1),
        ..DirOpts::default()
    })?;
    net.register("c2")?;
    let sent = net.send("c3", "c2", "fills the mailbox")?;
    ensure!(sent["status"] == "queued", "c2 is offline, yet {sent}");
    let chat = net
        .peer("c1")
        .args(["--heartbeat", "1", "chat", "c2"])
        .tmux(net.root(), 160, 40)?;
    chat.wait_text("c2 · last seen", SHOWN)?;

    // Each wait is for the message's own line to show it failed, not only for the notice:
    // `/to` looks the name up too, and its notice can come while the message is still on its
    // way (the directory is killed below, and a message still sending would wait for it).
    chat.line("one more")?;
    chat.wait_for("the full mailbox, with what to do", SHOWN, |s| {
        s.contains("c2's mailbox is full")
            && s.contains("empties when its owner comes online")
            && failed_line(s, "one more")
    })?;

    // A name against the rules is refused on /to, saying which rule.
    chat.line("/to Not-A-Name!")?;
    chat.wait_text("may only hold a-z", SHOWN)?;
    chat.line("/to ghost")?;
    chat.line("anyone there?")?;
    chat.wait_for("the unknown name, with what to do", SHOWN, |s| {
        s.contains("no peer is named ghost")
            && s.contains("check the spelling")
            && failed_line(s, "anyone there?")
    })?;

    // A directory that went away is no failure of the message: it waits, and the status
    // line says why and what to do (tests/outages.rs follows it until the directory is back).
    net.dir_mut().kill9()?;
    chat.line("/to c2")?;
    chat.line("is the directory there?")?;
    chat.wait_for("the unreachable directory, with what to do", SHOWN, |s| {
        s.contains("directory unreachable, retrying")
            && s.contains("is a directory running there?")
            && s.lines().any(|l| {
                l.contains("is the directory there?") && l.contains("waiting for the directory")
            })
    })?;
    // Leaving waits for the message; a second Ctrl-C leaves at once.
    chat.line("/quit")?;
    chat.wait_text("leaving: waiting for 1 message(s)", SHOWN)?;
    chat.keys(&["C-c"])?;
    chat.wait_clean_exit(EXIT)?;
    net.assert_no_panics()
}

/// Whether the screen shows the line of the message `body` as failed.
fn failed_line(screen: &str, body: &str) -> bool {
    screen
        .lines()
        .any(|l| l.contains(body) && l.contains("✗ failed"))
}

/// A room in the full-screen client: `peer chat '#ops'` opens it, members' messages show in
/// it with their senders, a typed line goes to every member, `/members` answers in it, and
/// another member joining shows as a notice.
#[test]
fn a_room_on_a_terminal() -> Result<()> {
    let net = Net::new()?;
    for who in ["c1", "c2", "c3"] {
        net.register(who)?;
    }
    let room = |who: &str, args: &[&str]| -> Result<()> {
        net.peer(who)
            .json()
            .args(["room"])
            .args(args)
            .run(SHORT)?
            .success()?;
        Ok(())
    };
    room("c1", &["create", "#ops", "--public"])?;
    room("c1", &["invite", "#ops", "c2"])?;
    let mut c2 = net.listen("c2")?;
    let chat = net
        .peer("c1")
        .args(["chat", "#ops"])
        .tmux(net.root(), 120, 40)?;
    chat.wait_text("#ops · 2 members", SHOWN)?;

    net.peer("c2")
        .args(["send", "#ops", "hello room"])
        .run(SHORT)?
        .success()?;
    chat.wait_text("c2: hello room", SHOWN)?;

    chat.line("hi everyone")?;
    let got = c2.wait_json("c1's room message", SHORT, |v| {
        is_message_from(v, "c1") && v["room"] == "#ops"
    })?;
    ensure!(body(&got) == "hi everyone", "c2 got {got}");
    chat.wait_for("the room message delivered", SHOWN, |s| {
        s.lines()
            .any(|l| l.contains("c1: hi everyone") && l.contains("✓ delivered"))
    })?;

    room("c3", &["join", "#ops"])?;
    chat.wait_text("c3 joined", SHOWN)?;
    chat.line("/members")?;
    chat.wait_text("#ops (public, 3 members)", SHOWN)?;

    chat.keys(&["C-c"])?;
    chat.wait_clean_exit(EXIT)?;
    c2.stop_with(Sig::SIGTERM)?;
    net.assert_no_panics()
}

/// The box checks a message before it is sent (issue 14, item 7): near the 32 KiB limit its
/// title shows the size; a paste over it is refused on Enter with what to do instead, and
/// stays in the box (nothing is sent).
#[test]
fn an_oversized_message_is_refused_in_the_box() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let chat = net
        .peer("c1")
        .args(["chat", "c2"])
        .tmux(net.root(), 220, 40)?;
    chat.wait_text("to c2", SHOWN)?;
    chat.paste(&"x".repeat(30_000))?;
    chat.wait_text("29.30 KiB of 32.00 KiB", SHOWN)?;
    chat.paste(&"y".repeat(5_000))?;
    chat.keys(&["Enter"])?;
    chat.wait_for("the refusal, with what to do", SHOWN, |s| {
        s.contains("over the 32.00 KiB a message may hold") && s.contains("/file PATH")
    })?;
    // Still in the box: its size is still shown, and nothing reached c2.
    chat.wait_text("34.18 KiB of 32.00 KiB", SHOWN)?;
    chat.keys(&["C-u"])?;
    chat.line("a short one")?;
    let got = c2.wait_json("the short message", SHORT, |v| is_message_from(v, "c1"))?;
    ensure!(got["body"] == "a short one", "c2 got {got}");
    chat.keys(&["C-c"])?;
    chat.wait_clean_exit(EXIT)?;
    net.assert_no_panics()
}

/// One conversation across windows and commands: a line sent with `peer send`, and one typed
/// in a second window, show in the first window (which runs the peer) too, delivered; the
/// second window shows the first one's line; and a `listen` attached beside them prints both.
/// A file received shows in every view too.
#[test]
fn every_window_shows_every_message() -> Result<()> {
    let net = Net::new()?;
    let mut c2 = net.listen("c2")?;
    let first = net
        .peer("c1")
        .args(["chat", "c2"])
        .tmux(net.root(), 120, 30)?;
    first.wait_text("c2 · online", SHOWN)?;
    let second = net
        .peer("c1")
        .args(["chat", "c2"])
        .tmux(net.root(), 120, 30)?;
    second.wait_text("c2 · online", SHOWN)?;
    let mut c1 = net.listen("c1")?;

    let sent = net
        .peer("c1")
        .args(["send", "c2", "from a command"])
        .run(SHORT)?;
    sent.success()?;
    second.line("typed in the second window")?;
    first.line("typed in the first window")?;
    for (window, which) in [(&first, "first"), (&second, "second")] {
        for text in [
            "from a command",
            "typed in the second window",
            "typed in the first window",
        ] {
            window.wait_for(
                &format!("'{text}' delivered in the {which} window"),
                SHOWN,
                |s| {
                    s.lines()
                        .any(|l| l.contains(&format!("c1: {text}")) && l.contains("✓ delivered"))
                },
            )?;
        }
    }
    for text in ["from a command", "typed in the second window"] {
        let got = c2.wait_json(text, SHORT, |v| is_message_from(v, "c1") && body(v) == text)?;
        ensure!(got["to"] == "c2", "c2 got {got}");
        let echo = c1.wait_json(&format!("listen's echo of '{text}'"), SHORT, |v| {
            is_type(v, "echo") && v["body"] == text
        })?;
        ensure!(
            echo["to"] == "c2" && echo["state"] == "sending",
            "listen printed {echo}"
        );
    }
    let settled = c1.wait_json("an echo's outcome", SHORT, |v| {
        is_type(v, "echo") && v["state"] == "delivered"
    })?;
    ensure!(settled["id"].is_string(), "listen printed {settled}");
    // A file c2 sends shows in every view, not only in the one that runs the peer.
    let path = net.root().join("for c1.txt");
    std::fs::write(&path, "a file for c1\n")?;
    net.peer("c2")
        .args(["send-file", "c1"])
        .args([&path])
        .run(SHORT)?
        .success()?;
    for (window, which) in [(&first, "first"), (&second, "second")] {
        window.wait_for(&format!("the file in the {which} window"), SHOWN, |s| {
            s.contains("c2 sent a file")
        })?;
    }
    let file = c1.wait_json("the file in the attached listen", SHORT, |v| {
        is_type(v, "file")
    })?;
    ensure!(
        file["from"] == "c2" && file["size"] == 14,
        "listen printed {file}"
    );
    // The attached views first; then the window that runs the peer.
    c1.terminate()?;
    for window in [second, first] {
        window.keys(&["C-c"])?;
        window.wait_clean_exit(EXIT)?;
    }
    c2.terminate()?;
    net.assert_no_panics()
}

/// A message in a conversation that is not shown rings the bell, asks for a desktop
/// notification (with --notify), and counts in the window title; the conversation then opens
/// on a "new" line above it. A message in the conversation shown does none of that.
#[test]
fn unseen_messages_ring_count_in_the_title_and_are_marked() -> Result<()> {
    let net = Net::new()?;
    let c2 = net.listen("c2")?;
    let c3 = net.listen("c3")?;
    let chat = net
        .peer("c1")
        .args(["chat", "c2", "--notify"])
        .tmux(net.root(), 120, 30)?;
    chat.record_output()?;
    chat.wait_text("c2 · online", SHOWN)?;
    poll_until("the title", SHOWN, POLL, || {
        Ok((chat.title()? == "c1 · c2").then_some(()))
    })?;
    net.send("c2", "c1", "before")?;
    chat.wait_text("c2: before", SHOWN)?;
    chat.line("/to c3")?;
    chat.wait_text("c3 · online", SHOWN)?;

    net.send("c2", "c1", "while you look elsewhere")?;
    chat.wait_text("c2 (1)", SHOWN)?;
    poll_until("the unread count in the title", SHOWN, POLL, || {
        Ok((chat.title()? == "(1) c1 · c3").then_some(()))
    })?;
    let raw = chat.raw_output();
    ensure!(bells(&raw) == 1, "expected one bell, got {}", bells(&raw));
    ensure!(
        raw.contains("\x1b]777;notify;c2;while you look elsewhere\x07"),
        "no desktop notification in {raw:?}"
    );

    // Ctrl-P shows c2's conversation again (the one before c3 in the list): the new line
    // sits between what was read and what was not.
    chat.keys(&["C-p"])?;
    let screen = chat.wait_text("c2 · online", SHOWN)?;
    let lines: Vec<&str> = screen.lines().collect();
    let at = |text: &str| lines.iter().position(|l| l.contains(text));
    let (before, marker, after) = (
        at("c2: before"),
        at("─ new ─"),
        at("c2: while you look elsewhere"),
    );
    ensure!(
        matches!((before, marker, after), (Some(b), Some(m), Some(a)) if b < m && m < a),
        "the new line is not between the read and the unread message:\n{screen}"
    );
    poll_until("the title without a count", SHOWN, POLL, || {
        Ok((chat.title()? == "c1 · c2").then_some(()))
    })?;

    // In the conversation shown: no bell, no notification.
    net.send("c2", "c1", "while you look")?;
    chat.wait_text("c2: while you look", SHOWN)?;
    let raw = chat.raw_output();
    ensure!(
        bells(&raw) == 1,
        "a bell for a message shown: {}",
        bells(&raw)
    );
    ensure!(
        !raw.contains("notify;c2;while you look\x07"),
        "a notification for a message shown"
    );
    chat.keys(&["C-c"])?;
    chat.wait_clean_exit(EXIT)?;
    drop((c2, c3));
    net.assert_no_panics()
}

/// Bells in raw terminal output, not counting the BEL that ends an OSC string.
fn bells(raw: &str) -> usize {
    let mut count = 0;
    let mut rest = raw;
    while let Some(at) = rest.find(['\x07', '\x1b']) {
        let tail = &rest[at..];
        if let Some(osc) = tail.strip_prefix("\x1b]") {
            // Skip to the end of the OSC string (BEL or ESC \).
            match osc.find(['\x07', '\x1b']) {
                Some(end) => rest = &osc[end + 1..],
                None => break,
            }
        } else {
            if tail.starts_with('\x07') {
                count += 1;
            }
            rest = &tail[1..];
        }
    }
    count
}

/// `/to` a name no one has says so at once; `/search` finds the messages of the conversation
/// shown in the history, in any case; `/close` drops a conversation from the list.
#[test]
fn to_search_and_close() -> Result<()> {
    let net = Net::new()?;
    let c2 = net.listen("c2")?;
    net.register("c1")?;
    net.send("c2", "c1", "the Needle in one")?;
    net.send("c2", "c1", "nothing here")?;
    net.send("c2", "c1", "and a needle in two")?;
    let chat = net
        .peer("c1")
        .args(["chat", "c2"])
        .tmux(net.root(), 120, 30)?;
    chat.wait_text("c2: and a needle in two", SHOWN)?;

    chat.line("/search needle")?;
    let screen = chat.wait_text("2 message(s) with \"needle\"", SHOWN)?;
    ensure!(
        screen.contains("c2: the Needle in one --")
            && screen.contains("c2: and a needle in two --"),
        "the matches are not listed:\n{screen}"
    );
    ensure!(
        !screen.contains("c2: nothing here --"),
        "a message without the text was listed:\n{screen}"
    );

    chat.line("/to nobody")?;
    chat.wait_for("the unknown name said at once", SHOWN, |s| {
        s.contains("no peer is named nobody: check the spelling") && s.contains("no such name")
    })?;

    chat.line("/close")?;
    chat.wait_for("nobody gone from the list", SHOWN, |s| {
        !s.contains("✗ nobody") && s.contains("c2 · online")
    })?;
    chat.line("/close")?;
    chat.wait_text("this is the only conversation", SHOWN)?;
    chat.keys(&["C-c"])?;
    chat.wait_clean_exit(EXIT)?;
    drop(c2);
    net.assert_no_panics()
}

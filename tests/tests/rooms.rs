//! Rooms end to end: membership by a signed log that members check, messages to every member
//! (directly, or sealed to its mailbox), notices of who came and went, and nothing for those
//! who are not in the room.

use anyhow::{ensure, Result};
use serde_json::Value;
use tests::{is_type, CmdOutput, Net, Running, Sig, SHORT};

/// `peer --json room ARGS…` run as `who`, expected to succeed; its `room` lines.
fn room(net: &Net, who: &str, args: &[&str]) -> Result<Vec<Value>> {
    let out = net.peer(who).json().args(["room"]).args(args).run(SHORT)?;
    Ok(out.success()?.of_type("room"))
}

/// `peer --json send ROOM TEXT` run as `who`.
fn say(net: &Net, who: &str, room: &str, text: &str) -> Result<CmdOutput> {
    net.peer(who).json().args(["send", room, text]).run(SHORT)
}

/// The names in a `room` line's member list.
fn members(line: &Value) -> Vec<String> {
    line["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect()
}

/// The `sent` lines `chat` printed.
fn sent_lines(chat: &Running) -> Vec<Value> {
    (chat.json_lines().into_iter())
        .filter(|v| is_type(v, "sent"))
        .collect()
}

/// How many members a room's `sent` line says have the message or its mailbox does.
fn copies_left(sent: &Value) -> u64 {
    sent["delivered"].as_u64().unwrap_or_default() + sent["queued"].as_u64().unwrap_or_default()
}

/// Waits for `listener` to show a message in `room` with `body`.
fn heard(listener: &mut Running, room: &str, body: &str) -> Result<Value> {
    listener.wait_json(&format!("{body:?} in {room}"), SHORT, |v| {
        is_type(v, "message") && v["room"] == room && v["body"] == body
    })
}

/// A private room: its creator invites, members hear each other directly, and a stranger can
/// neither post nor hear; whoever leaves hears nothing said after.
#[test]
fn a_private_room_is_for_its_members_only() -> Result<()> {
    let net = Net::new()?;
    for who in ["c1", "c2", "c3"] {
        net.register(who)?;
    }
    let created = room(&net, "c1", &["create", "#ops"])?;
    ensure!(
        created.len() == 1 && created[0]["kind"] == "private" && members(&created[0]) == ["c1"],
        "create: {created:?}"
    );
    let mut c2 = net.listen("c2")?;
    let mut c3 = net.listen("c3")?;
    let invited = room(&net, "c1", &["invite", "#ops", "c2"])?;
    ensure!(members(&invited[0]) == ["c1", "c2"], "invite: {invited:?}");
    c2.wait_json("c2 hears it was invited", SHORT, |v| {
        is_type(v, "room_event") && v["event"] == "invited" && v["name"] == "c2"
    })?;

    let sent = say(&net, "c1", "#ops", "hello room")?.success()?;
    let sent = sent.one_of_type("sent")?;
    ensure!(
        sent["room"] == "#ops" && sent["delivered"] == 1 && sent["queued"] == 0,
        "sent: {sent}"
    );
    let got = heard(&mut c2, "#ops", "hello room")?;
    ensure!(got["from"] == "c1" && got["via"] == "direct", "{got}");
    // Sharing a room lets members reach each other directly; it does not make them contacts.
    let contacts = net
        .peer("c1")
        .json()
        .args(["contacts"])
        .run(SHORT)?
        .success()?;
    ensure!(
        contacts.of_type("contact").is_empty(),
        "{}",
        contacts.stdout
    );

    // Not a member: a clear refusal, and no one hears it.
    say(&net, "c3", "#ops", "let me in")?.failure(&["#ops"])?;
    let members_seen = room(&net, "c2", &["members", "#ops"])?;
    ensure!(
        members_seen[0]["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "c2" && m["online"] == true)),
        "members: {members_seen:?}"
    );

    // Members coming online and going offline show in the room.
    let mut c1 = net.listen("c1")?;
    c2.wait_json("c1 online in #ops", SHORT, |v| {
        is_type(v, "room_event") && v["event"] == "online" && v["name"] == "c1"
    })?;
    c1.stop_with(Sig::SIGTERM)?;
    c2.wait_json("c1 offline in #ops", SHORT, |v| {
        is_type(v, "room_event") && v["event"] == "offline" && v["name"] == "c1"
    })?;
    ensure!(
        !c3.json_lines().iter().any(|v| is_type(v, "room_event")),
        "c3, not a member, was told of #ops"
    );

    room(&net, "c2", &["leave", "#ops"])?;
    let after = say(&net, "c1", "#ops", "after c2 left")?.success()?;
    let after = after.one_of_type("sent")?;
    ensure!(after["delivered"] == 0 && after["queued"] == 0, "{after}");
    let listed = room(&net, "c2", &["list"])?;
    ensure!(listed.is_empty(), "c2 still lists {listed:?}");

    c2.stop_with(Sig::SIGTERM)?;
    c3.stop_with(Sig::SIGTERM)?;
    for (who, listener) in [("c2", &c2), ("c3", &c3)] {
        let leaked: Vec<_> = (listener.json_lines().into_iter())
            .filter(|v| is_type(v, "message") && v["body"] != "hello room")
            .collect();
        ensure!(leaked.is_empty(), "{who} heard {leaked:?}");
    }
    ensure!(
        !c3.json_lines().iter().any(|v| v["body"] == "hello room"),
        "c3 heard the room"
    );
    net.assert_no_panics()
}

/// Makes `room` (private) as `admin`, with `names` invited; each name registered first.
fn room_of(net: &Net, admin: &str, room_name: &str, names: &[String]) -> Result<()> {
    for who in std::iter::once(admin).chain(names.iter().map(String::as_str)) {
        net.register(who)?;
    }
    room(net, admin, &["create", room_name])?;
    let mut args = vec!["invite", room_name];
    args.extend(names.iter().map(String::as_str));
    let made = room(net, admin, &args)?;
    ensure!(
        members(&made[0]).len() == names.len() + 1,
        "invite: {made:?}"
    );
    Ok(())
}

/// Checks that `got` holds `per_sender` messages `SENDER-i` from each of `senders`, each once
/// and in order per sender.
fn in_order(who: &str, got: &[Value], senders: &[String], per_sender: usize) -> Result<()> {
    let mut next: std::collections::HashMap<&str, usize> = Default::default();
    for m in got {
        let from = m["from"].as_str().unwrap_or_default();
        let n = next.entry(from).or_default();
        let want = format!("{from}-{n}");
        ensure!(
            m["body"] == want.as_str(),
            "{who}: {} after {want}",
            m["body"]
        );
        *n += 1;
    }
    for sender in senders {
        let n = next.get(sender.as_str()).copied().unwrap_or_default();
        ensure!(n == per_sender, "{who} has {n} messages from {sender}");
    }
    ensure!(
        got.len() == senders.len() * per_sender,
        "{who}: {} messages",
        got.len()
    );
    Ok(())
}

/// Twenty members talk at once, ten messages each: every one of them hears the other 190
/// once and in order per sender, directly; three members who were offline get all 200 from
/// their mailboxes when they come back, once and in order, and see how the room came about.
#[test]
fn a_busy_room_reaches_everyone_once_and_in_order() -> Result<()> {
    const ONLINE: usize = 20;
    const EACH: usize = 10;
    let net = Net::new()?;
    let online: Vec<String> = (1..=ONLINE).map(|i| format!("m{i}")).collect();
    let away: Vec<String> = (1..=3).map(|i| format!("away{i}")).collect();
    let invited: Vec<String> = online[1..].iter().chain(&away).cloned().collect();
    room_of(&net, &online[0], "#big", &invited)?;

    let mut listeners = Vec::new();
    for who in &online {
        listeners.push(net.listen(who)?);
    }
    // Each member's chat goes through its running listen (the control socket).
    let mut chats = Vec::new();
    for who in &online {
        let mut chat = net.peer(who).json().args(["chat", "#big"]).spawn()?;
        for i in 0..EACH {
            chat.write_line(&format!("{who}-{i}"))?;
        }
        chat.close_stdin();
        chats.push(chat);
    }
    for chat in &mut chats {
        let status = chat.wait_exit(SHORT * 4)?;
        ensure!(status.success(), "{}: {status}", chat.stderr_tail());
        let sent = sent_lines(chat);
        ensure!(
            sent.len() == EACH
                && sent.iter().all(|s| {
                    s["room"] == "#big" && copies_left(s) == (ONLINE + away.len() - 1) as u64
                }),
            "{}: {sent:?}",
            chat.label()
        );
    }
    for (who, listener) in online.iter().zip(&mut listeners) {
        let others: Vec<String> = online.iter().filter(|o| *o != who).cloned().collect();
        let n = others.len() * EACH;
        let got = listener.wait_json_n(&format!("{n} room messages"), n, SHORT * 4, |v| {
            is_type(v, "message") && v["room"] == "#big"
        })?;
        in_order(who, &got, &others, EACH)?;
    }
    for (who, mut listener) in online.iter().zip(listeners) {
        listener.stop_with(Sig::SIGTERM)?;
        let all: Vec<_> = (listener.json_lines().into_iter())
            .filter(|v| is_type(v, "message"))
            .collect();
        ensure!(
            all.len() == (ONLINE - 1) * EACH,
            "{who}: a duplicate ({})",
            all.len()
        );
    }

    for who in &away {
        let out = net
            .peer(who)
            .json()
            .args(["inbox"])
            .run(SHORT * 2)?
            .success()?;
        let got = out.of_type("message");
        in_order(who, &got, &online, EACH)?;
        let events = out.of_type("room_event");
        ensure!(
            events.first().is_some_and(|e| e["event"] == "created")
                && events
                    .iter()
                    .any(|e| e["event"] == "invited" && e["name"] == who.as_str()),
            "{who} saw {events:?}"
        );
        // Once: they are not delivered again.
        let again = net.peer(who).json().args(["inbox"]).run(SHORT)?.success()?;
        ensure!(again.of_type("message").is_empty(), "{who} got some twice");
    }
    net.assert_no_panics()
}

/// A directory (or whoever holds its data folder) replaces a room's log with one of its own
/// making: a creation in c1's name under another key, with a member of its choosing. The
/// members, who hold the real log and c1's real key, refuse it and say so.
#[test]
fn a_room_log_made_up_in_the_store_is_refused_by_the_members() -> Result<()> {
    use common::{
        room::{Action, Kind, Op, RoomName},
        seal::Sealer,
        KeyId, Name,
    };
    let mut net = Net::new()?;
    room_of(&net, "c1", "#ops", &["c2".to_string()])?;
    let c2_key: KeyId = net.whois("c1", "c2")?["key"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    // c2 has the real log (and c1's key) from the invitation on.
    ensure!(members(&room(&net, "c2", &["members", "#ops"])?[0]) == ["c1", "c2"]);

    net.dir_mut().terminate()?;
    let forger = Sealer::from_seed([7; 32], [8; 32])?;
    let room_name: RoomName = "#ops".parse()?;
    let c1 = Name::new("c1")?;
    let mut ops: Vec<Op> = Vec::new();
    for action in [
        Action::Create {
            kind: Kind::Private,
        },
        Action::Invite {
            name: Name::new("c2")?,
            key: c2_key,
        },
        Action::Invite {
            name: Name::new("mallory")?,
            key: KeyId([9; 32]),
        },
    ] {
        let place = match ops.last() {
            Some(last) => (last.version + 1, last.hash()),
            None => (0, [0; 32]),
        };
        ops.push(forger.sign_op(room_name.clone(), place, c1.clone(), 1, action));
    }
    {
        let table: redb::TableDefinition<(&str, u64), &[u8]> =
            redb::TableDefinition::new("room_ops");
        let db = redb::Database::open(net.dir().data().join("directory.redb"))?;
        let txn = db.begin_write()?;
        {
            let mut stored = txn.open_table(table)?;
            for op in &ops {
                stored.insert(("ops", op.version), postcard::to_allocvec(op)?.as_slice())?;
            }
        }
        txn.commit()?;
    }
    net.dir_mut().restart()?;

    let out = net
        .peer("c2")
        .json()
        .args(["room", "members", "#ops"])
        .run(SHORT)?;
    let out = out.failure(&["#ops", "does not follow"])?;
    ensure!(
        !out.stdout.contains("mallory"),
        "c2 took the forged log: {}",
        out.stdout
    );
    // A message in the room still goes only to whom the real log names.
    let sent = say(&net, "c1", "#ops", "to the real members")?;
    ensure!(!sent.stdout.contains("mallory") && !sent.stderr.contains("mallory"));
    net.assert_no_panics()
}

/// An admin removes one member while it listens and another while it is away: both learn they
/// are out (the one away when it comes back), and neither hears what is said afterwards, on
/// either path; a removed member cannot post either.
#[test]
fn a_kicked_member_hears_nothing_more() -> Result<()> {
    let net = Net::new()?;
    room_of(&net, "c1", "#ops", &["c2".into(), "c3".into(), "c4".into()])?;
    let mut c2 = net.listen("c2")?;
    let mut c3 = net.listen("c3")?;
    say(&net, "c1", "#ops", "before")?.success()?;
    heard(&mut c3, "#ops", "before")?;
    // A chat attached to c3's running listen (the control socket) sees the room's notices too.
    let mut attached = net.peer("c3").json().args(["chat", "#ops"]).spawn()?;
    attached.wait_online()?;
    room(&net, "c1", &["kick", "#ops", "c3"])?;
    attached.wait_json("the attached chat hears c3 was removed", SHORT, |v| {
        is_type(v, "room_event") && v["event"] == "kicked" && v["name"] == "c3"
    })?;
    attached.close_stdin();
    attached.wait_exit(SHORT)?;
    room(&net, "c1", &["kick", "#ops", "c4"])?;
    c3.wait_json("c3 hears it was removed", SHORT, |v| {
        is_type(v, "room_event") && v["event"] == "kicked" && v["name"] == "c3"
    })?;
    let sent = say(&net, "c1", "#ops", "after")?.success()?;
    let sent = sent.one_of_type("sent")?;
    ensure!(sent["delivered"] == 1 && sent["queued"] == 0, "{sent}");
    heard(&mut c2, "#ops", "after")?;
    say(&net, "c3", "#ops", "still here?")?.failure(&["not a member of #ops"])?;

    // c4 was away: it learns it is out, and nothing of the room waits for it.
    let out = net
        .peer("c4")
        .json()
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    ensure!(
        out.of_type("message").iter().all(|m| m["body"] == "before"),
        "c4 got {:?}",
        out.of_type("message")
    );
    ensure!(
        room(&net, "c4", &["list"])?.is_empty(),
        "c4 still lists the room"
    );
    say(&net, "c4", "#ops", "me too?")?.failure(&["not a member of #ops"])?;

    c2.stop_with(Sig::SIGTERM)?;
    c3.stop_with(Sig::SIGTERM)?;
    // (c3's listen prints its own attempt as an echo line; what it heard are message lines.)
    ensure!(
        !c3.json_lines()
            .iter()
            .any(|v| is_type(v, "message") && (v["body"] == "after" || v["body"] == "still here?")),
        "c3 heard the room after it was removed"
    );
    ensure!(
        !c2.json_lines()
            .iter()
            .any(|v| is_type(v, "message") && v["body"] == "still here?"),
        "c2 heard a removed member"
    );
    net.assert_no_panics()
}

/// A script posting far faster than a member may is refused past the burst with a clear
/// error, and the members get exactly what was reported sent.
#[test]
fn posting_too_fast_is_refused_clearly() -> Result<()> {
    use common::defaults::ROOM_POSTS_BURST;
    let net = Net::new()?;
    room_of(&net, "c1", "#ops", &["c2".into()])?;
    let mut c2 = net.listen("c2")?;
    let lines = ROOM_POSTS_BURST as usize + 100;
    let mut chat = net.peer("c1").json().args(["chat", "#ops"]).spawn()?;
    for i in 0..lines {
        chat.write_line(&format!("line {i}"))?;
    }
    chat.close_stdin();
    let status = chat.wait_exit(SHORT * 2)?;
    ensure!(!status.success(), "every line was sent");
    let sent = sent_lines(&chat).len();
    ensure!(
        sent >= ROOM_POSTS_BURST as usize && sent < lines,
        "{sent} of {lines} sent"
    );
    ensure!(
        chat.stderr_tail().contains("posting too fast in #ops"),
        "{}",
        chat.stderr_tail()
    );
    c2.wait_json_n("what was sent", sent, SHORT, |v| is_type(v, "message"))?;
    c2.stop_with(Sig::SIGTERM)?;
    let got = (c2.json_lines().iter())
        .filter(|v| is_type(v, "message"))
        .count();
    ensure!(got == sent, "c2 got {got}, {sent} were sent");
    net.assert_no_panics()
}

/// The directory is killed (`kill -9`) in the middle of a busy room and started again: every
/// message the sender reported sent reaches the member online (directly) and the member away
/// (through its mailbox), each once and in order; nothing the directory had acknowledged is
/// lost, and what was sent while it was down waits in the sender and goes once it is back.
#[test]
fn a_directory_killed_in_a_busy_room_loses_nothing() -> Result<()> {
    const LINES: usize = 60;
    let mut net = Net::new()?;
    room_of(&net, "c1", "#ops", &["c2".into(), "c3".into()])?;
    let mut c2 = net.listen("c2")?;
    let mut chat = net.peer("c1").json().args(["chat", "#ops"]).spawn()?;
    chat.wait_online()?;
    for i in 0..LINES / 2 {
        chat.write_line(&format!("c1-{i}"))?;
    }
    chat.wait_json_n("a few sent", 5, SHORT, |v| is_type(v, "sent"))?;
    net.dir_mut().kill9()?;
    for i in LINES / 2..LINES {
        chat.write_line(&format!("c1-{i}"))?;
    }
    net.dir_mut().restart()?;
    chat.close_stdin();
    let status = chat.wait_exit(SHORT * 3)?;
    ensure!(status.success(), "{}", chat.stderr_tail());
    let sent = sent_lines(&chat);
    ensure!(
        sent.len() == LINES && sent.iter().all(|s| copies_left(s) == 2),
        "{sent:?}"
    );
    let senders = ["c1".to_string()];
    let got = c2.wait_json_n("every line", LINES, SHORT, |v| is_type(v, "message"))?;
    in_order("c2", &got, &senders, LINES)?;
    let away = net
        .peer("c3")
        .json()
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    in_order("c3", &away.of_type("message"), &senders, LINES)?;
    c2.stop_with(Sig::SIGTERM)?;
    let all = (c2.json_lines().iter())
        .filter(|v| is_type(v, "message"))
        .count();
    ensure!(all == LINES, "c2 got {all}");
    net.assert_no_panics()
}

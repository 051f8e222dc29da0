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

    // Not a member: a clear refusal, and no one hears it.
    say(&net, "c3", "#ops", "let me in")?.failure(&["#ops"])?;
    let members_seen = room(&net, "c2", &["members", "#ops"])?;
    ensure!(
        members_seen[0]["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "c2" && m["online"] == true)),
        "members: {members_seen:?}"
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

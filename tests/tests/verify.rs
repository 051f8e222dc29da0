//! `peer verify NAME`: the safety number two people compare to know that each holds the
//! other's real key.

use anyhow::{ensure, Context, Result};
use tests::{Net, SHORT};

fn verify(net: &Net, me: &str, other: &str) -> Result<serde_json::Value> {
    net.peer(me)
        .json()
        .args(["verify", other])
        .run(SHORT)?
        .success()?
        .one_of_type("safety_number")
}

/// Both sides print the same 60 digits in 12 groups; a third peer's number with one of them
/// differs; plain output shows the digits grouped for reading aloud.
#[test]
fn both_sides_see_the_same_safety_number() -> Result<()> {
    let net = Net::new()?;
    for name in ["c1", "c2", "c3"] {
        net.register(name)?;
    }
    let one = verify(&net, "c1", "c2")?;
    let two = verify(&net, "c2", "c1")?;
    let digits = one["digits"].as_str().context("digits")?;
    ensure!(
        digits.len() == 60 && digits.bytes().all(|b| b.is_ascii_digit()),
        "{one}"
    );
    ensure!(
        one["digits"] == two["digits"],
        "c1 sees {one}, c2 sees {two}"
    );
    ensure!(
        one["groups"].as_array().is_some_and(|g| g.len() == 12),
        "{one}"
    );
    let other = verify(&net, "c3", "c2")?;
    ensure!(
        other["digits"] != one["digits"],
        "c3 and c1 share a number with c2"
    );
    let plain = net
        .peer("c1")
        .args(["verify", "c2"])
        .run(SHORT)?
        .success()?;
    let first_group = &digits[..5];
    ensure!(
        plain
            .stdout
            .contains(&format!("{first_group} {}", &digits[5..10])),
        "plain output not grouped: {}",
        plain.stdout
    );
    net.assert_no_panics()
}

/// A directory that gives another key for a name c1 has seen (a second directory here, where
/// another key holds the name c2) is caught: c1's send and whois fail loudly, nothing is sent,
/// until `peer trust c2`; after it the send goes through. A letter the new key sent meanwhile
/// is held, and shown by the trust. (Before, c1 took whatever key the directory gave; and the
/// letter was dropped.)
#[test]
fn a_changed_key_is_refused_until_trusted() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    let first = net.whois("c1", "c2")?; // c1 sees c2's key: remembered
    let other = net.start_directory(tests::DirOpts::default())?;
    let on_other = |name: &str, home: &str| net.peer_in(name, home).directory(other.addr());
    on_other("c2", "impostor")
        .args(["inbox"])
        .run(SHORT)?
        .success()?;

    let refused = on_other("c1", "c1")
        .args(["send", "c2", "are you really c2?"])
        .run(SHORT)?
        .failure(&["key of c2 has changed"])?;
    ensure!(
        refused.stderr.contains("peer trust"),
        "no hint: {}",
        refused.stderr
    );
    on_other("c1", "c1")
        .args(["whois", "c2"])
        .run(SHORT)?
        .failure(&["key of c2 has changed"])?;
    let inbox = on_other("c2", "impostor")
        .json()
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    ensure!(
        inbox.of_type("message").is_empty(),
        "the impostor got a message: {}",
        inbox.stdout
    );

    // What the new key sends meanwhile is held, not shown and not lost.
    let sent = on_other("c2", "impostor")
        .json()
        .args(["send", "c1", "from the new key"])
        .run(SHORT)?
        .success()?
        .one_of_type("sent")?;
    ensure!(sent["status"] == "queued", "{sent}");
    let held = on_other("c1", "c1")
        .json()
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    ensure!(
        held.of_type("message").is_empty() && held.stderr.contains("it is held"),
        "the new key's letter was shown or not held: {} / {}",
        held.stdout,
        held.stderr
    );

    let trust = on_other("c1", "c1")
        .json()
        .args(["trust", "c2"])
        .run(SHORT)?
        .success()?;
    let shown = trust.of_type("message");
    ensure!(
        shown.len() == 1 && shown[0]["body"] == "from the new key",
        "trusting did not show the held letter: {}",
        trust.stdout
    );
    let trusted = trust.one_of_type("trusted")?;
    ensure!(trusted["key"] != first["key"], "{trusted} vs {first}");
    let again = on_other("c1", "c1")
        .json()
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    ensure!(
        again.of_type("message").is_empty(),
        "the held letter came twice: {}",
        again.stdout
    );
    let sent = on_other("c1", "c1")
        .json()
        .args(["send", "c2", "trusted now"])
        .run(SHORT)?
        .success()?
        .one_of_type("sent")?;
    ensure!(sent["status"] == "queued", "{sent}");
    net.assert_no_panics()
}

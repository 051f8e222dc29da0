//! Names: the first registration binds a name to a key; another key is refused, also after the
//! directory restarts; invalid names never reach the directory.
//!
//! Each scenario runs on one directory and again with its peers split over two nodes of a
//! cluster on NATS JetStream ([`tests::on_each_topology!`]).

use anyhow::{ensure, Result};
use tests::{is_hex64, on_each_topology, Net, Topology, SHORT};

on_each_topology!(
    first_registration_binds_and_other_key_is_refused,
    whois_key_matches_online_key,
    invalid_names_are_refused,
    unknown_recipient_is_refused,
    binding_survives_directory_kill9,
);

/// The first registration binds the name; the same identity may come back; another key is
/// refused with "another key", and the binding is unchanged afterwards.
fn first_registration_binds_and_other_key_is_refused(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };

    // alice registers (first use binds); whois shows the key it is bound to.
    net.register("alice")?;
    let w = net.whois("obs", "alice")?;
    let alice_key = w["key"].as_str().unwrap_or_default().to_string();
    ensure!(is_hex64(&alice_key), "whois alice has no key: {w}");

    // The same home (same key) registers again without trouble.
    net.register("alice")?;

    // Another home means another key: refused.
    net.peer_in("alice", "mallory-home")
        .args(["inbox"])
        .run(SHORT)?
        .failure(&["another key", "pick another --name"])?;
    // Also when the other key tries to listen or send under that name.
    net.peer_in("alice", "mallory-home")
        .json()
        .args(["listen"])
        .run(SHORT)?
        .failure(&["another key"])?;
    net.register("bob")?;
    net.peer_in("alice", "mallory-home")
        .args(["send", "bob", "i am alice"])
        .run(SHORT)?
        .failure(&["another key"])?;
    ensure!(
        net.register("bob")?.is_empty(),
        "bob received a message sent under a name its sender does not own"
    );

    // The binding still points at the first key.
    let w = net.whois("obs", "alice")?;
    ensure!(
        w["key"] == alice_key.as_str(),
        "alice's key changed after a refused registration: {w}, expected key {alice_key}"
    );
    net.assert_no_panics()
}

/// The online line of `listen` and whois agree on the key.
fn whois_key_matches_online_key(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    let mut c1 = net.peer("c1").json().args(["listen"]).spawn()?;
    let online = c1.wait_online()?;
    ensure!(online["name"] == "c1", "online line names {online}");
    let w = net.whois("obs", "c1")?;
    ensure!(
        w["name"] == "c1" && w["key"] == online["key"],
        "whois c1 {w} disagrees with c1's online line {online}"
    );
    c1.terminate()?;
    net.assert_no_panics()
}

/// Names outside `a-z 0-9 . _ -` (1 to 32, starting with a letter or digit) are refused with
/// the rules, as our own name and as a recipient.
fn invalid_names_are_refused(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    // "Bad Name" breaks the character rule, which the message spells out.
    net.peer("c1")
        .name("Bad Name")
        .args(["inbox"])
        .run(SHORT)?
        .failure(&["a-z"])?;
    let too_long = "a".repeat(33);
    for bad in ["-dash", "UPPER", "", too_long.as_str(), "sp ace", "é"] {
        net.peer("c1")
            .name(bad)
            .args(["inbox"])
            .run(SHORT)?
            .failure(&["name"])?;
    }
    // A recipient name is checked the same way.
    net.peer("c1")
        .args(["send", "Bad Name", "hi"])
        .run(SHORT)?
        .failure(&["a-z"])?;
    // Longest valid name and the allowed punctuation work.
    let longest = "a".repeat(32);
    net.register(&longest)?;
    net.register("a.b_c-9")?;
    net.assert_no_panics()
}

/// Sending to a name nobody registered fails with "no peer".
fn unknown_recipient_is_refused(topology: Topology) -> Result<()> {
    let Some(net) = Net::on(topology)? else {
        return Ok(());
    };
    net.peer("c1")
        .args(["send", "nobody", "hello?"])
        .run(SHORT)?
        .failure(&["no peer"])?;
    net.assert_no_panics()
}

/// The name binding is durable: after kill -9 and a restart on the same data, the other key is
/// still refused and the owner still accepted.
fn binding_survives_directory_kill9(topology: Topology) -> Result<()> {
    let Some(mut net) = Net::on(topology)? else {
        return Ok(());
    };
    net.register("alice")?;
    let before = net.whois("obs", "alice")?;

    net.dir_mut().kill9()?;
    net.dir_mut().restart()?;

    net.peer_in("alice", "mallory-home")
        .args(["inbox"])
        .run(SHORT)?
        .failure(&["another key", "pick another --name"])?;
    net.register("alice")?;
    let after = net.whois("obs", "alice")?;
    ensure!(
        after["key"] == before["key"],
        "alice's key changed across restart: before {before}, after {after}"
    );
    net.assert_no_panics()
}

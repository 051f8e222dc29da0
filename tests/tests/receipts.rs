//! Receipts: when a recipient takes a queued message from its mailbox, the sender learns it
//! ("delivered later"), at once if it is online, and through its own mailbox if it is not.

use anyhow::{ensure, Result};
use std::time::Duration;
use tests::{is_type, poll_until, Json, Net, SHORT};

/// The state of the message with `id` in `me`'s history with `with`.
fn state_of(net: &Net, me: &str, with: &str, id: &Json) -> Result<Option<String>> {
    Ok(net
        .history(me, with)?
        .into_iter()
        .find(|v| v["id"] == *id)
        .and_then(|v| v["state"].as_str().map(str::to_string)))
}

/// c1 stays online; its message to the offline c2 is queued, and turns `delivered_later` in
/// c1's history as soon as c2 starts and takes it; c2's own later message is not held back
/// by the receipt.
#[test]
fn an_online_sender_hears_at_once() -> Result<()> {
    let net = Net::new()?;
    net.register("c2")?;
    let mut c1 = net.listen("c1")?;
    let sent = net.send("c1", "c2", "are you there?")?;
    ensure!(sent["status"] == "queued", "c2 is offline, yet: {sent}");
    ensure!(
        state_of(&net, "c1", "c2", &sent["id"])?.as_deref() == Some("queued"),
        "before c2 comes back: {:?}",
        net.history("c1", "c2")?
    );

    let mut c2 = net.listen("c2")?;
    c2.wait_json("the queued message", SHORT, |v| is_type(v, "message"))?;
    let line = poll_until(
        "c1's history to say delivered_later",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let lines = net.history("c1", "c2")?;
            Ok(lines
                .into_iter()
                .find(|v| v["id"] == sent["id"] && v["state"] == "delivered_later"))
        },
    )?;
    ensure!(
        line["delivered_at_ms"].as_u64().is_some(),
        "no delivery time in {line}"
    );

    let back = net.send("c2", "c1", "yes")?;
    ensure!(
        back["status"] == "delivered",
        "c2's answer was held back: {back}"
    );
    c1.terminate()?;
    c2.terminate()?;
    net.assert_no_panics()
}

/// Both offline in turn: c1 sends and leaves; c2 takes the message while c1 is away; the
/// receipt waits in c1's mailbox and is recorded when c1 next drains it. A message delivered
/// directly stays `delivered`.
#[test]
fn an_offline_sender_hears_when_it_returns() -> Result<()> {
    let net = Net::new()?;
    net.register("c1")?;
    net.register("c2")?;
    let queued = net.send("c1", "c2", "for later")?;
    ensure!(queued["status"] == "queued", "c2 is offline, yet: {queued}");

    let got = net.register("c2")?;
    ensure!(got.len() == 1, "c2 took {got:?}");
    ensure!(
        state_of(&net, "c1", "c2", &queued["id"])?.as_deref() == Some("queued"),
        "c1 has not been back yet, but: {:?}",
        net.history("c1", "c2")?
    );

    ensure!(
        net.register("c1")?.is_empty(),
        "a receipt was shown as a message"
    );
    ensure!(
        state_of(&net, "c1", "c2", &queued["id"])?.as_deref() == Some("delivered_later"),
        "after c1 drained its mailbox: {:?}",
        net.history("c1", "c2")?
    );

    let mut c2 = net.listen("c2")?;
    let direct = net.send("c1", "c2", "now")?;
    ensure!(direct["status"] == "delivered", "c2 is online: {direct}");
    c2.wait_json("the direct message", SHORT, |v| is_type(v, "message"))?;
    c2.terminate()?;
    ensure!(
        state_of(&net, "c1", "c2", &direct["id"])?.as_deref() == Some("delivered"),
        "{:?}",
        net.history("c1", "c2")?
    );
    net.assert_no_panics()
}

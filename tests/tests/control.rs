//! One identity, several commands: while `listen` runs for a home, short commands with the same
//! home hand their work to it, so it stays online and keeps its single directory connection.

use anyhow::{anyhow, ensure, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use tests::{check_messages, is_message_from, Json, Net, SHORT};

/// With `listen` running as c2, `whois`, `send` and `inbox` with c2's home work; c1 sees the
/// send; a third peer polling whois c2 meanwhile always sees it online, at the same address.
#[test]
fn short_commands_hand_over_to_listen() -> Result<()> {
    let net = Net::new()?;
    let mut c1 = net.listen("c1")?;
    let mut c2 = net
        .peer("c2")
        .heartbeat(0.5)
        .json()
        .args(["listen"])
        .spawn()?;
    let online = c2.wait_online()?;
    let before = net.whois("obs", "c2")?;
    ensure!(before["online"] == true, "c2 listening but {before}");

    let stop = AtomicBool::new(false);
    let (observed, main): (Result<Vec<Json>>, Result<()>) = thread::scope(|s| {
        let watcher = s.spawn(|| -> Result<Vec<Json>> {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && seen.len() < 500 {
                seen.push(net.whois("obs", "c2")?);
            }
            Ok(seen)
        });
        let main = (|| -> Result<()> {
            // whois from c2's home, handed to the running listen.
            let w = net
                .peer("c2")
                .json()
                .args(["whois", "c1"])
                .run(SHORT)?
                .success()?
                .one_of_type("whois")?;
            ensure!(
                w["name"] == "c1" && w["online"] == true,
                "c2's whois c1: {w}"
            );

            // send from c2's home: c1 sees it, directly.
            let sent = net.send("c2", "c1", "hi from a second command")?;
            ensure!(sent["status"] == "delivered", "c1 is listening, yet {sent}");
            let m = c1.wait_json("c2's message", Duration::from_secs(10), |v| {
                is_message_from(v, "c2")
            })?;
            check_messages(
                std::slice::from_ref(&m),
                "c2",
                "c1",
                &["hi from a second command".into()],
                Some("direct"),
            )?;
            ensure!(m["id"] == sent["id"], "id changed: sent {sent}, got {m}");

            // Messages to c2 still reach the running listen.
            let back = net.send("c1", "c2", "reply")?;
            ensure!(back["status"] == "delivered", "c2 is listening, yet {back}");
            c2.wait_json("c1's reply", Duration::from_secs(10), |v| {
                is_message_from(v, "c1")
            })?;

            // inbox from c2's home: nothing waits, the listen took it all.
            let out = net
                .peer("c2")
                .json()
                .args(["inbox"])
                .run(SHORT)?
                .success()?;
            let left = out.of_type("message");
            ensure!(
                left.is_empty(),
                "inbox beside a running listen printed {left:?}"
            );

            // An observation window, not synchronisation: the watcher keeps asking for four
            // more heartbeat periods, in case a short command's effect shows up late.
            thread::sleep(Duration::from_secs(2));
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        let observed = watcher
            .join()
            .unwrap_or_else(|_| Err(anyhow!("watcher thread panicked")));
        (observed, main)
    });
    main?;
    let observed = observed?;
    ensure!(
        observed.len() >= 3,
        "the watcher only got {} answers",
        observed.len()
    );
    for w in &observed {
        ensure!(
            w["online"] == true,
            "c2 flapped offline while its home ran short commands: {w}"
        );
        ensure!(
            w["observed_addr"] == before["observed_addr"],
            "c2's directory connection moved from {} during the short commands: {w} \
             (did a short command register itself instead of handing over?)",
            before["observed_addr"]
        );
        ensure!(w["key"] == online["key"], "c2's key changed: {w}");
    }
    c2.ensure_running()?;
    c1.ensure_running()?;
    c2.terminate()?;
    c1.terminate()?;
    net.assert_no_panics()
}

/// A `send` handed over to the running listen still falls back to the mailbox when the
/// recipient is offline.
#[test]
fn handed_over_send_can_queue() -> Result<()> {
    let net = Net::new()?;
    net.register("c1")?;
    let mut c2 = net.listen("c2")?;
    let sent = net.send("c2", "c1", "for later")?;
    ensure!(sent["status"] == "queued", "c1 is offline, yet {sent}");
    c2.ensure_running()?;
    let got = net.register("c1")?;
    check_messages(&got, "c2", "c1", &["for later".into()], Some("mailbox"))?;
    c2.terminate()?;
    net.assert_no_panics()
}

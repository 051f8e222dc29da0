//! Fifty peers on one directory.

use anyhow::{anyhow, ensure, Result};
use std::thread;
use std::time::{Duration, Instant};
use tests::{check_messages, is_message_from, is_type, Net, Running, Sig};

const PEERS: usize = 50;
/// Sends in flight at once.
const PARALLEL: usize = 8;

fn name(i: usize) -> String {
    format!("p{i:02}")
}

/// 50 `listen` peers come online; each sends one message to the next (ring) through its own
/// running process; every message is delivered directly and shown exactly once.
#[test]
fn fifty_peers_ring() -> Result<()> {
    let started = Instant::now();
    let net = Net::new()?;
    let mut peers: Vec<Running> = (0..PEERS)
        .map(|i| net.peer(&name(i)).json().args(["listen"]).spawn())
        .collect::<Result<_>>()?;
    for p in &mut peers {
        p.wait_json("the online line", Duration::from_secs(60), |v| {
            is_type(v, "online")
        })?;
    }
    eprintln!("{PEERS} peers online after {:?}", started.elapsed());

    // Peer i sends to i+1, PARALLEL at a time.
    let results: Vec<Result<()>> = thread::scope(|s| {
        let handles: Vec<_> = (0..PARALLEL)
            .map(|worker| {
                let net = &net;
                s.spawn(move || -> Result<()> {
                    for i in (worker..PEERS).step_by(PARALLEL) {
                        let to = name((i + 1) % PEERS);
                        let sent = net.send(&name(i), &to, &format!("ring {i}"))?;
                        ensure!(
                            sent["status"] == "delivered",
                            "{} -> {to}: every peer is listening, yet {sent}",
                            name(i)
                        );
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("sender thread panicked")))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    eprintln!("{PEERS} sends done after {:?}", started.elapsed());

    for (i, p) in peers.iter_mut().enumerate() {
        let from = name((i + PEERS - 1) % PEERS);
        p.wait_json(
            &format!("the ring message from {from}"),
            Duration::from_secs(30),
            |v| is_message_from(v, &from),
        )?;
    }

    // Stop all at once, then collect: each showed exactly its one message.
    for p in &mut peers {
        p.signal(Sig::SIGTERM)?;
    }
    for (i, p) in peers.iter_mut().enumerate() {
        let st = p.wait_exit(Duration::from_secs(20))?;
        ensure!(st.success(), "{} exited with {st} after SIGTERM", name(i));
        let from = name((i + PEERS - 1) % PEERS);
        let msgs: Vec<_> = p
            .json_lines()
            .into_iter()
            .filter(|v| is_type(v, "message"))
            .collect();
        check_messages(
            &msgs,
            &from,
            &name(i),
            &[format!("ring {}", (i + PEERS - 1) % PEERS)],
            Some("direct"),
        )?;
    }
    eprintln!("done after {:?}", started.elapsed());
    net.assert_no_panics()
}

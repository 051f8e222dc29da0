//! What an operator sets on a directory: one key for several nodes (`--key FILE`), and logs
//! as JSON for log shippers (`--log-format json`).

use anyhow::{ensure, Result};
use std::process::Command;
use tests::{bins, DirOpts, Net, SHORT};

/// Two directories started with the same key file present the same fingerprint, the one
/// `directory fingerprint --key FILE` prints, so a peer pins one key for both; each logs a
/// node id of its own, as JSON lines.
#[test]
fn nodes_sharing_a_key_file_are_one_directory_to_peers() -> Result<()> {
    let net = Net::new()?;
    let key = net.dir().data().join("key.der");
    let shared = || DirOpts {
        args: vec![
            "--key".into(),
            key.display().to_string(),
            "--log-format".into(),
            "json".into(),
        ],
        ..DirOpts::default()
    };
    let (a, b) = (
        net.start_directory(shared())?,
        net.start_directory(shared())?,
    );
    let printed = Command::new(&bins()?.directory)
        .args(["fingerprint", "--key"])
        .arg(&key)
        .output()?;
    let printed = String::from_utf8_lossy(&printed.stdout).trim().to_string();
    ensure!(
        a.fingerprint() == net.dir().fingerprint()
            && b.fingerprint() == a.fingerprint()
            && printed == a.fingerprint(),
        "fingerprints differ: {} {} {} {printed}",
        net.dir().fingerprint(),
        a.fingerprint(),
        b.fingerprint()
    );
    // A peer that pinned the first node's key talks to the second as the same directory.
    net.register("c1")?;
    net.peer("c1")
        .directory(b.addr())
        .args(["whois", "c1"])
        .run(SHORT)?
        .success()?;

    let node = |stderr: String| -> Result<String> {
        let line = stderr
            .lines()
            .find(|l| l.contains("directory listening"))
            .unwrap_or_default()
            .to_string();
        let v: serde_json::Value = serde_json::from_str(&line)?;
        Ok(v["fields"]["node"].as_str().unwrap_or_default().to_string())
    };
    let (node_a, node_b) = (node(a.stderr_tail())?, node(b.stderr_tail())?);
    ensure!(
        node_a.len() == 16 && node_b.len() == 16 && node_a != node_b,
        "node ids {node_a:?} and {node_b:?}"
    );
    net.assert_no_panics()
}

/// A peer given two nodes of one directory (`--directory A,B`, one key) that loses the node it
/// uses (kill -9) moves to the other within a few heartbeats, and is online there.
#[test]
fn a_peer_moves_to_another_node_when_its_node_dies() -> Result<()> {
    let mut net = Net::new()?;
    let key = net.dir().data().join("key.der");
    let b = net.start_directory(DirOpts {
        args: vec!["--key".into(), key.display().to_string()],
        ..DirOpts::default()
    })?;
    let nodes = format!("{},{}", net.dir().addr(), b.addr());
    let mut c1 = net
        .peer("c1")
        .heartbeat(1.0)
        .directory_nodes(&nodes)
        .json()
        .args(["listen"])
        .spawn()?;
    c1.wait_online()?;
    net.wait_presence("c2", "c1", true, SHORT)?;
    net.dir_mut().kill9()?;
    let online_at_b = || -> Result<bool> {
        let out = net
            .peer("c2")
            .directory(b.addr())
            .json()
            .args(["whois", "c1"])
            .run(SHORT)?;
        Ok(out.status.success() && out.one_of_type("whois")?["online"] == true)
    };
    let deadline = std::time::Instant::now() + SHORT;
    while !online_at_b()? {
        ensure!(
            std::time::Instant::now() < deadline,
            "c1 did not move to the other node: {}",
            c1.stderr_tail()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    c1.ensure_running()?;
    net.assert_no_panics()
}

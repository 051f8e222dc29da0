//! One-shot commands as a user or a script runs them: a whole `peer` process for
//! `peer --name alice whois bob` and for `peer --name alice send bob hello` to an online bob
//! (who accepted alice, so the message goes direct), each timed from spawn to exit. The figure
//! is the (p50 ≤ 20 ms): start-up, the directory connection and registration, the
//! request, the direct link and the ack, and leaving, all included.

use crate::{
    process::{online, peer_args, Reaped},
    DirectoryProcess,
};
use anyhow::{ensure, Result};
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The wall times of the runs, in ms, in the order they ran.
pub struct OneShot {
    /// `whois bob`.
    pub whois: Vec<f64>,
    /// `send bob hello`, delivered direct.
    pub send: Vec<f64>,
}

/// A `peer` command for `name` against `dir`, its home under `homes`.
fn peer(bin: &Path, dir: &DirectoryProcess, homes: &Path, name: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(peer_args(dir.addr, &homes.join(name), name))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to its end; its stdout, or why it failed.
fn run(mut cmd: Command) -> Result<String> {
    let out = cmd.stderr(Stdio::piped()).output()?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `runs` timed runs of each command, after one untimed run of each (alice's first run makes
/// her key and registers her name; a first run is not what a script waits on).
pub fn measure(dir: &DirectoryProcess, runs: usize) -> Result<OneShot> {
    let bin = crate::peer_bin()?;
    let homes = tempfile::Builder::new().prefix("bench-oneshot").tempdir()?;
    let mut bob = peer(&bin, dir, homes.path(), "bob");
    let mut bob = Reaped(bob.arg("listen").stdout(Stdio::piped()).spawn()?);
    let lines = online(&mut bob.0, "bob")?;
    // Bob's output is read (and dropped) on a thread of its own, so its pipe never fills.
    std::thread::spawn(move || lines.for_each(drop));

    let alice = |args: &[&str]| {
        let mut cmd = peer(&bin, dir, homes.path(), "alice");
        cmd.args(args);
        cmd
    };
    run(alice(&["whois", "bob"]))?;
    let mut accept = peer(&bin, dir, homes.path(), "bob");
    accept.args(["accept", "alice"]);
    run(accept)?;
    let sent = run(alice(&["send", "bob", "warm-up"]))?;
    ensure!(
        sent.contains("\"delivered\""),
        "not delivered direct: {sent}"
    );

    let mut out = OneShot {
        whois: Vec::with_capacity(runs),
        send: Vec::with_capacity(runs),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..runs {
        ensure!(
            Instant::now() < deadline,
            "the one-shot runs took over 120 s"
        );
        let t = Instant::now();
        let found = run(alice(&["whois", "bob"]))?;
        out.whois.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(found.contains("\"online\":true"), "bob not online: {found}");

        let t = Instant::now();
        let sent = run(alice(&["send", "bob", &format!("hello {i}")]))?;
        out.send.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(
            sent.contains("\"delivered\""),
            "not delivered direct: {sent}"
        );
    }
    drop(bob);
    Ok(out)
}

//! Small helpers: clocks, text tails, polling with a deadline, JSON predicates, signals.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    if start > 0 {
        let _ = writeln!(out, "    [... {start} earlier lines]");
    }
    for l in &lines[start..] {
        let _ = writeln!(out, "    {l}");
    }
    out
}

pub(crate) fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Calls `f` until it returns `Some`, at most until `timeout` has passed, pausing `every`
/// between calls. The error names `what` and the last failure `f` reported.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last_err = match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            let why = last_err
                .map(|e| format!("; last error: {e:#}"))
                .unwrap_or_default();
            bail!("timed out after {timeout:?} ({attempts} attempts) waiting for {what}{why}");
        }
        thread::sleep(every);
    }
}

/// Is `v` a JSON object whose `type` is `t`?
pub fn is_type(v: &Value, t: &str) -> bool {
    v["type"] == t
}

/// Is `v` a `message` line from `from`?
pub fn is_message_from(v: &Value, from: &str) -> bool {
    is_type(v, "message") && v["from"] == from
}

/// The `body` of a message line, or "" when it has none.
pub fn body(v: &Value) -> &str {
    v["body"].as_str().unwrap_or("")
}

/// Checks that `s` is 64 hex digits.
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks that `s` is 32 hex digits (a message id).
pub fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn send_signal(pid: u32, sig: Signal) -> Result<()> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    signal::kill(Pid::from_raw(pid), sig).with_context(|| format!("kill({pid}, {sig})"))
}

pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A command that runs `program` inside the network namespace `ns`: `ip netns exec NS
/// PROGRAM`. `ip` switches namespace and then execs the program, so the child's pid is the
/// program's.
pub(crate) fn in_netns(ns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Removes the binaries' own environment settings (`CHAT_*`, `DIRECTORY_*`) that a developer's
/// shell or CI may hold, so that only the flags a scenario passes count.
pub(crate) fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CHAT_") || k.starts_with("DIRECTORY_") {
            cmd.env_remove(&key);
        }
    }
}

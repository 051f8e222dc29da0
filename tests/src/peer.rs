//! [`PeerCmd`]: one `peer` invocation being built; [`CmdOutput`]: what a short one did.

use crate::bins::bins;
use crate::logs::Logs;
use crate::running::Running;
use crate::util::{in_netns, is_type, read_lossy, scrub_env, tail, wait_child};
use crate::TAIL;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// One `peer` invocation being built.
#[derive(Debug)]
pub struct PeerCmd {
    label: String,
    name: OsString,
    home: Result<PathBuf>,
    directory: String,
    bind: Option<SocketAddr>,
    json: bool,
    open: bool,
    globals: Vec<OsString>,
    command: Vec<OsString>,
    stdin_null: bool,
    netns: Option<String>,
    envs: Vec<(OsString, OsString)>,
    logs: Arc<Logs>,
}

impl PeerCmd {
    /// `peer --name NAME --directory DIR --home HOME --bind 127.0.0.1:0`, nothing else yet.
    pub(crate) fn new(
        label: String,
        name: &str,
        home: Result<PathBuf>,
        directory: SocketAddr,
        logs: Arc<Logs>,
    ) -> Self {
        Self {
            label,
            name: name.into(),
            home,
            directory: directory.to_string(),
            bind: Some("127.0.0.1:0".parse().expect("literal addr")),
            json: false,
            open: true,
            globals: Vec::new(),
            command: Vec::new(),
            stdin_null: false,
            netns: None,
            envs: Vec::new(),
            logs,
        }
    }

    /// Without `--open`: the product's default, where only contacts reach the peer directly
    /// and strangers' messages are message requests through the mailbox. Commands are built
    /// with `--open` otherwise: most scenarios are about delivery between peers that know
    /// each other, and the contacts tests (`contacts.rs`, and a NAT case) accept explicitly.
    pub fn closed(mut self) -> Self {
        self.open = false;
        self
    }

    /// `--json`.
    pub fn json(mut self) -> Self {
        self.json = true;
        self
    }

    /// Appends the command and its arguments (after the global flags).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.command.extend(args.into_iter().map(Into::into));
        self
    }

    /// Appends a global flag (before the command).
    pub fn global<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.globals.extend(args.into_iter().map(Into::into));
        self
    }

    /// `--heartbeat SECS`.
    pub fn heartbeat(self, secs: f64) -> Self {
        self.global(["--heartbeat".to_string(), secs.to_string()])
    }

    /// `--direct-timeout SECS`.
    pub fn direct_timeout(self, secs: f64) -> Self {
        self.global(["--direct-timeout".to_string(), secs.to_string()])
    }

    /// `--pin HEX`.
    pub fn pin(self, hex: &str) -> Self {
        self.global(["--pin", hex])
    }

    /// `--directory ADDR` (instead of the net's main directory).
    pub fn directory(mut self, addr: SocketAddr) -> Self {
        self.directory = addr.to_string();
        self
    }

    /// `--directory NODES`: several nodes of one directory, comma-separated.
    pub fn directory_nodes(mut self, nodes: &str) -> Self {
        self.directory = nodes.to_string();
        self
    }

    /// `--bind ADDR` (the default here is `127.0.0.1:0`).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = Some(addr);
        self
    }

    /// Overrides `--name` (e.g. with an invalid one).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Spawned processes get /dev/null as stdin instead of a pipe.
    pub fn stdin_null(mut self) -> Self {
        self.stdin_null = true;
        self
    }

    /// Runs the peer inside the network namespace `ns` (`ip netns exec NS peer ...`; `ip`
    /// execs the peer, so the child's pid and signals are the peer's own).
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self
    }

    /// Sets an environment variable for the process (e.g. `RUST_LOG`).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Its stderr log file (with the command line as the first line) and its label.
    pub(crate) fn stderr_log(&self, cmdline: &str) -> Result<(String, PathBuf)> {
        let (label, path, file) = self.logs.create(&self.label)?;
        let mut f = &file;
        let _ = writeln!(f, "[harness] {cmdline}");
        Ok((label, path))
    }

    /// The process to run and its command line, for messages.
    pub(crate) fn command(&self) -> Result<(Command, String)> {
        let bins = bins()?;
        let home = self
            .home
            .as_ref()
            .map_err(|e| anyhow!("home for {}: {e:#}", self.label))?;
        let mut argv: Vec<OsString> = vec![
            "--name".into(),
            self.name.clone(),
            "--directory".into(),
            self.directory.clone().into(),
            "--home".into(),
            home.into(),
        ];
        if let Some(b) = self.bind {
            argv.push("--bind".into());
            argv.push(b.to_string().into());
        }
        if self.json {
            argv.push("--json".into());
        }
        if self.open {
            argv.push("--open".into());
        }
        argv.extend(self.globals.iter().cloned());
        argv.extend(self.command.iter().cloned());
        let shown: Vec<String> = argv
            .iter()
            .map(|a| {
                let s = a.to_string_lossy();
                if s.len() > 60 {
                    format!("<{} bytes>", s.len())
                } else {
                    s.into_owned()
                }
            })
            .collect();
        let mut cmdline = format!("peer {}", shown.join(" "));
        let mut cmd = match &self.netns {
            Some(ns) => {
                cmdline = format!("ip netns exec {ns} {cmdline}");
                in_netns(ns, &bins.peer)
            }
            None => Command::new(&bins.peer),
        };
        scrub_env(&mut cmd);
        cmd.args(&argv)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        Ok((cmd, cmdline))
    }

    /// Runs a short command to completion, killing it after `timeout`. Does not judge the
    /// exit status: see [`CmdOutput::success`] and [`CmdOutput::failure`].
    pub fn run(self, timeout: Duration) -> Result<CmdOutput> {
        let (mut cmd, cmdline) = self.command()?;
        let (label, stderr_path, stderr_file) = self.logs.create(&self.label)?;
        {
            let mut f = &stderr_file;
            let _ = writeln!(f, "[harness] {cmdline}");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_file)
            .spawn()
            .with_context(|| format!("spawn {cmdline}"))?;
        let mut stdout = child.stdout.take().context("stdout")?;
        let reader = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
        let status = wait_child(&mut child, timeout)?;
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            let out = reader.join().unwrap_or_default();
            bail!(
                "`{cmdline}` ({label}) did not finish within {timeout:?}; stdout:\n{}stderr:\n{}",
                tail(&out, TAIL),
                tail(&read_lossy(&stderr_path), TAIL)
            );
        };
        let stdout = reader.join().unwrap_or_default();
        let stderr = read_lossy(&stderr_path);
        // The first stderr line is ours.
        let stderr = stderr.split_once('\n').map_or("", |(_, s)| s).to_string();
        Ok(CmdOutput {
            cmdline,
            status,
            stdout,
            stderr,
        })
    }

    /// Spawns a long-lived command (`listen`, `chat`).
    pub fn spawn(self) -> Result<Running> {
        let (mut cmd, cmdline) = self.command()?;
        let (label, stderr_path, stderr_file) = self.logs.create(&self.label)?;
        {
            let mut f = &stderr_file;
            let _ = writeln!(f, "[harness] {cmdline}");
        }
        let child = cmd
            .stdin(if self.stdin_null {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(stderr_file)
            .spawn()
            .with_context(|| format!("spawn {cmdline}"))?;
        Running::start(child, label, cmdline, stderr_path)
    }
}

/// What a short command did.
#[derive(Debug)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl CmdOutput {
    /// Requires exit 0.
    pub fn success(self) -> Result<Self> {
        ensure!(
            self.status.success(),
            "`{}` failed with {}, expected success; stdout:\n{}stderr:\n{}",
            self.cmdline,
            self.status,
            tail(&self.stdout, TAIL),
            tail(&self.stderr, TAIL)
        );
        Ok(self)
    }

    /// Requires a non-zero exit and a stderr that mentions one of `needles`
    /// (case-insensitive).
    pub fn failure(self, needles: &[&str]) -> Result<Self> {
        ensure!(
            !self.status.success(),
            "`{}` succeeded, expected it to be refused ({}); stdout:\n{}stderr:\n{}",
            self.cmdline,
            needles.join(" / "),
            tail(&self.stdout, TAIL),
            tail(&self.stderr, TAIL)
        );
        ensure!(
            self.status.code().is_some(),
            "`{}` was killed by a signal ({}), expected an error exit; stderr:\n{}",
            self.cmdline,
            self.status,
            tail(&self.stderr, TAIL)
        );
        let lower = self.stderr.to_lowercase();
        ensure!(
            needles.is_empty() || needles.iter().any(|n| lower.contains(&n.to_lowercase())),
            "`{}` was refused ({}) but stderr does not mention any of {:?}; stderr:\n{}",
            self.cmdline,
            self.status,
            needles,
            tail(&self.stderr, TAIL)
        );
        Ok(self)
    }

    /// Every stdout line that parses as JSON.
    pub fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The JSON lines of type `t`.
    pub fn of_type(&self, t: &str) -> Vec<Value> {
        self.json().into_iter().filter(|v| is_type(v, t)).collect()
    }

    /// The single JSON line of type `t`.
    pub fn one_of_type(&self, t: &str) -> Result<Value> {
        let mut v = self.of_type(t);
        ensure!(
            v.len() == 1,
            "`{}` printed {} lines of type {t:?}, expected 1; stdout:\n{}stderr:\n{}",
            self.cmdline,
            v.len(),
            tail(&self.stdout, TAIL),
            tail(&self.stderr, TAIL)
        );
        Ok(v.remove(0))
    }
}

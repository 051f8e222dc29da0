//! A `directory` process: start (reading its start line), kill -9, SIGTERM, restart.

use crate::bins::bins;
use crate::logs::Logs;
use crate::util::{in_netns, is_hex64, read_lossy, scrub_env, send_signal, tail, wait_child};
use crate::{DIRECTORY_START, EXIT, TAIL};
use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;

/// How to start a directory.
#[derive(Debug, Clone, Default)]
pub struct DirOpts {
    /// `--bind`; `127.0.0.1:0` when `None`.
    pub bind: Option<SocketAddr>,
    /// `--mailbox-quota-messages`.
    pub quota_messages: Option<u64>,
    /// `--mailbox-quota-bytes`.
    pub quota_bytes: Option<u64>,
    /// Run inside this network namespace (`ip netns exec NS directory ...`).
    pub netns: Option<String>,
    /// Extra environment variables (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Extra flags (e.g. `--max-connections-per-ip 4`).
    pub args: Vec<String>,
}

/// A running (or stopped) `directory` process and its data directory.
#[derive(Debug)]
pub struct Directory {
    label: String,
    opts: DirOpts,
    data: PathBuf,
    logs: Arc<Logs>,
    child: Option<Child>,
    addr: SocketAddr,
    fingerprint: String,
    stderr: PathBuf,
}

impl Directory {
    /// Starts a directory on a fresh data directory `data` (created if missing).
    pub fn start(label: &str, data: PathBuf, logs: Arc<Logs>, opts: DirOpts) -> Result<Self> {
        fs::create_dir_all(&data)?;
        let mut d = Self {
            label: label.to_string(),
            opts,
            data,
            logs,
            child: None,
            addr: "127.0.0.1:0".parse().expect("literal addr"),
            fingerprint: String::new(),
            stderr: PathBuf::new(),
        };
        let bind = d.opts.bind;
        d.spawn(bind)?;
        Ok(d)
    }

    fn spawn(&mut self, bind: Option<SocketAddr>) -> Result<()> {
        let bins = bins()?;
        let bind = bind.unwrap_or_else(|| "127.0.0.1:0".parse().expect("literal addr"));
        let (log_label, stderr_path, stderr_file) = self.logs.create(&self.label)?;
        let mut cmd = match &self.opts.netns {
            Some(ns) => in_netns(ns, &bins.directory),
            None => Command::new(&bins.directory),
        };
        scrub_env(&mut cmd);
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--bind")
            .arg(bind.to_string())
            .arg("--data")
            .arg(&self.data);
        if let Some(n) = self.opts.quota_messages {
            cmd.arg("--mailbox-quota-messages").arg(n.to_string());
        }
        if let Some(n) = self.opts.quota_bytes {
            cmd.arg("--mailbox-quota-bytes").arg(n.to_string());
        }
        cmd.args(&self.opts.args);
        cmd.env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_file);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bins.directory.display()))?;
        let stdout = child.stdout.take().context("directory stdout")?;
        self.stderr = stderr_path;

        // The first stdout line announces the address; later lines are kept in the log only.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let extra = self
            .logs
            .dir
            .join(format!("{}.stdout", log_label.replace('#', "_")));
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            if reader.read_line(&mut first).unwrap_or(0) > 0 {
                let _ = tx.send(first);
            }
            drop(tx);
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            if !rest.is_empty() {
                let _ = fs::write(extra, rest);
            }
        });
        let line = match rx.recv_timeout(DIRECTORY_START) {
            Ok(line) => line,
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} (bind {bind}) printed no start line within {DIRECTORY_START:?} \
                     (exit status: {status:?}); stderr:\n{}",
                    self.label,
                    tail(&read_lossy(&self.stderr), TAIL)
                );
            }
        };
        self.child = Some(child);
        let (addr, fp) = parse_start_line(&line).with_context(|| {
            format!(
                "{}: unexpected start line {line:?}; stderr:\n{}",
                self.label,
                tail(&read_lossy(&self.stderr), TAIL)
            )
        })?;
        self.addr = addr;
        self.fingerprint = fp;
        Ok(())
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its key's fingerprint, from the start line.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Its data directory.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// Its process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The current process's whole stderr.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// The tail of the current process's stderr.
    pub fn stderr_tail(&self) -> String {
        tail(&read_lossy(&self.stderr), TAIL)
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("kill -9 directory")?;
            c.wait()?;
        }
        Ok(())
    }

    /// Sends `sig` and waits for the exit; returns the status.
    pub fn stop_with(&mut self, sig: Signal) -> Result<ExitStatus> {
        let mut c = self.child.take().context("directory is not running")?;
        send_signal(c.id(), sig)?;
        match wait_child(&mut c, EXIT)? {
            Some(st) => Ok(st),
            None => {
                let _ = c.kill();
                let _ = c.wait();
                bail!(
                    "{} did not exit within {EXIT:?} after {sig}; stderr:\n{}",
                    self.label,
                    self.stderr_tail()
                )
            }
        }
    }

    /// SIGTERM and wait; the contract says the exit is clean (0).
    pub fn terminate(&mut self) -> Result<()> {
        let st = self.stop_with(Signal::SIGTERM)?;
        ensure!(
            st.success(),
            "{} exited with {st} after SIGTERM, expected 0; stderr:\n{}",
            self.label,
            self.stderr_tail()
        );
        Ok(())
    }

    /// Starts it again on the same data directory, preferably on the same port (peers pin the
    /// key per address, so this is the realistic case); if that port was taken meanwhile, on a
    /// fresh one.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.kill9()?;
        }
        let old = self.addr;
        match self.spawn(Some(old)) {
            Ok(()) => Ok(()),
            Err(first) => self
                .spawn(self.opts.bind)
                .with_context(|| format!("restart on {old} failed first: {first:#}")),
        }
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Parses `directory listening on 127.0.0.1:PORT fingerprint HEX64`.
pub fn parse_start_line(line: &str) -> Result<(SocketAddr, String)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["directory", "listening", "on", addr, "fingerprint", fp] => {
            let addr: SocketAddr = addr.parse().context("address")?;
            ensure!(is_hex64(fp), "fingerprint {fp:?} is not 64 hex digits");
            Ok((addr, fp.to_string()))
        }
        _ => bail!("expected `directory listening on ADDR fingerprint HEX64`"),
    }
}

/// Runs `directory fingerprint --data DIR` and returns its trimmed stdout.
pub fn directory_fingerprint(data: &Path) -> Result<String> {
    let bins = bins()?;
    let mut cmd = Command::new(&bins.directory);
    scrub_env(&mut cmd);
    let out = cmd
        .arg("fingerprint")
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .context("run directory fingerprint")?;
    ensure!(
        out.status.success(),
        "`directory fingerprint` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

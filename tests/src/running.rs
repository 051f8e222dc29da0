//! [`Running`]: a long-lived `peer` process whose stdout lines are collected on a thread.

use crate::util::{is_hex64, is_type, read_lossy, send_signal, tail, wait_child};
use crate::{EXIT, ONLINE, TAIL};
use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ExitStatus};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    json: Vec<Option<Value>>,
    taken: Vec<bool>,
    eof: bool,
}

/// A long-lived `peer` process. Its stdout lines are collected on a thread; each `wait_*`
/// takes the first matching line not taken before, so waits may come in any order.
pub struct Running {
    label: String,
    cmdline: String,
    child: Child,
    stdin: Option<ChildStdin>,
    shared: Arc<(Mutex<Lines>, Condvar)>,
    reader: Option<JoinHandle<()>>,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Running {
    /// Takes over a spawned child whose stdout is piped; starts the reader thread.
    pub(crate) fn start(
        mut child: Child,
        label: String,
        cmdline: String,
        stderr_path: PathBuf,
    ) -> Result<Self> {
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("stdout")?;
        let shared = Arc::new((Mutex::new(Lines::default()), Condvar::new()));
        let s2 = shared.clone();
        let reader = thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        let (m, cv) = &*s2;
                        let mut l = m.lock().expect("lines lock");
                        l.json.push(serde_json::from_str(&line).ok());
                        l.lines.push(line);
                        l.taken.push(false);
                        cv.notify_all();
                    }
                }
            }
            let (m, cv) = &*s2;
            m.lock().expect("lines lock").eof = true;
            cv.notify_all();
        });
        Ok(Self {
            label,
            cmdline,
            child,
            stdin,
            shared,
            reader: Some(reader),
            stderr: stderr_path,
            status: None,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its label in the logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The tail of its stderr.
    pub fn stderr_tail(&self) -> String {
        tail(&read_lossy(&self.stderr), TAIL)
    }

    /// Is it still running?
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.status = Some(st);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Fails, with diagnostics, unless it is still running.
    pub fn ensure_running(&mut self) -> Result<()> {
        if !self.is_running() {
            bail!("{}", self.diagnose("expected it to be still running"));
        }
        Ok(())
    }

    fn diagnose(&mut self, what: &str) -> String {
        let status = match self.status {
            Some(st) => format!("exited with {st}"),
            None => match self.child.try_wait() {
                Ok(Some(st)) => format!("exited with {st}"),
                _ => "still running".into(),
            },
        };
        let lines = self.lines();
        let shown = tail(&lines.join("\n"), TAIL);
        format!(
            "{what}\n  process {} `{}` ({status})\n  stdout ({} lines):\n{shown}  stderr:\n{}",
            self.label,
            self.cmdline,
            lines.len(),
            self.stderr_tail()
        )
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.shared.0.lock().expect("lines lock").lines.clone()
    }

    /// Every stdout line so far that parsed as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        self.shared
            .0
            .lock()
            .expect("lines lock")
            .json
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Takes the first `n` not-yet-taken lines matching `pred`, in order, waiting up to
    /// `timeout` for them.
    pub fn wait_lines_n(
        &mut self,
        what: &str,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&str, Option<&Value>) -> bool,
    ) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut got: Vec<usize> = Vec::new();
        let shared = self.shared.clone();
        let (m, cv) = &*shared;
        let mut l = m.lock().expect("lines lock");
        let mut scanned = 0;
        loop {
            while scanned < l.lines.len() && got.len() < n {
                if !l.taken[scanned] && pred(&l.lines[scanned], l.json[scanned].as_ref()) {
                    got.push(scanned);
                }
                scanned += 1;
            }
            if got.len() == n {
                for &i in &got {
                    l.taken[i] = true;
                }
                return Ok(got.iter().map(|&i| l.lines[i].clone()).collect());
            }
            let now = Instant::now();
            if l.eof || now >= deadline {
                let why = if l.eof { "stdout closed" } else { "timed out" };
                drop(l);
                let found = got.len();
                // Give a process that just closed stdout a moment to be reaped, for the status.
                if why == "stdout closed" {
                    let _ = wait_child(&mut self.child, Duration::from_millis(500))
                        .map(|st| self.status = st);
                }
                bail!(
                    "{}",
                    self.diagnose(&format!(
                        "{why} after {:?} waiting for {n} line(s): {what} (found {found})",
                        timeout.saturating_sub(deadline.saturating_duration_since(now))
                    ))
                );
            }
            l = cv.wait_timeout(l, deadline - now).expect("lines lock").0;
        }
    }

    /// Takes the first not-yet-taken line matching `pred`.
    pub fn wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let mut v = self.wait_lines_n(what, 1, timeout, |l, _| pred(l))?;
        Ok(v.remove(0))
    }

    /// Takes the first `n` not-yet-taken JSON lines matching `pred`, in order.
    pub fn wait_json_n(
        &mut self,
        what: &str,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Value>> {
        let lines = self.wait_lines_n(what, n, timeout, |_, v| v.is_some_and(&pred))?;
        lines
            .iter()
            .map(|l| serde_json::from_str(l).context("reparse"))
            .collect()
    }

    /// Takes the first not-yet-taken JSON line matching `pred`.
    pub fn wait_json(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let mut v = self.wait_json_n(what, 1, timeout, pred)?;
        Ok(v.remove(0))
    }

    /// Waits for the `online` line and checks its shape; returns it.
    pub fn wait_online(&mut self) -> Result<Value> {
        let v = self.wait_json("the `online` line", ONLINE, |v| is_type(v, "online"))?;
        let ok = v["name"].is_string() && v["key"].as_str().is_some_and(is_hex64);
        if !ok {
            bail!("{}", self.diagnose(&format!("malformed online line {v}")));
        }
        Ok(v)
    }

    /// Writes one line to its stdin.
    pub fn write_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin is closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("write to stdin of {}", self.label))
    }

    /// Closes its stdin (end of input for `chat`).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a signal without waiting.
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        send_signal(self.child.id(), sig)
    }

    /// Waits for the exit (and for all of stdout to be read); returns the status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if self.status.is_none() {
            match wait_child(&mut self.child, timeout)? {
                Some(st) => self.status = Some(st),
                None => bail!(
                    "{}",
                    self.diagnose(&format!("did not exit within {timeout:?}"))
                ),
            }
        }
        self.join_reader()?;
        Ok(self.status.expect("set above"))
    }

    fn join_reader(&mut self) -> Result<()> {
        // The process is gone; its stdout reaches EOF unless a grandchild holds it.
        let deadline = Instant::now() + Duration::from_secs(5);
        {
            let (m, cv) = &*self.shared;
            let mut l = m.lock().expect("lines lock");
            while !l.eof {
                let now = Instant::now();
                ensure!(
                    now < deadline,
                    "stdout of {} stayed open after exit",
                    self.label
                );
                l = cv.wait_timeout(l, deadline - now).expect("lines lock").0;
            }
        }
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
        Ok(())
    }

    /// Sends `sig`, waits for the exit and requires status 0.
    pub fn stop_with(&mut self, sig: Signal) -> Result<()> {
        self.signal(sig)?;
        let st = self.wait_exit(EXIT)?;
        if !st.success() {
            bail!(
                "{}",
                self.diagnose(&format!("exited with {st} after {sig}, expected 0"))
            );
        }
        Ok(())
    }

    /// SIGTERM, wait, require exit 0.
    pub fn terminate(&mut self) -> Result<()> {
        self.stop_with(Signal::SIGTERM)
    }

    /// Closes stdin, waits for the exit and requires status 0 (end of a `chat`).
    pub fn finish(&mut self, timeout: Duration) -> Result<()> {
        self.close_stdin();
        let st = self.wait_exit(timeout)?;
        if !st.success() {
            bail!(
                "{}",
                self.diagnose(&format!("exited with {st} at end of stdin, expected 0"))
            );
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> Result<()> {
        if self.status.is_none() {
            self.child.kill().context("kill -9")?;
            self.status = Some(self.child.wait()?);
        }
        self.join_reader()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stdin = None;
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

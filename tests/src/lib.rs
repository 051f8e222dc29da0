//! Harness for the end-to-end scenarios in `tests/tests/*.rs`: it builds and runs the real
//! `directory` and `peer` binaries, each in its own temporary directory, and talks to them only
//! through their command line, stdin/stdout and signals, exactly as a user would.
//!
//! # Layout
//!
//! - [`Net`]: one test's world: a temporary root, one [`Directory`], and one home per peer
//!   identity, so that repeated commands of the same name reuse the same key.
//! - [`Directory`]: a running `directory` process; kill -9, SIGTERM, restart on the same data.
//! - [`PeerCmd`]: a builder for one `peer` invocation; [`PeerCmd::run`] for short commands,
//!   [`PeerCmd::spawn`] for `listen` and `chat`, which give a [`Running`].
//! - [`Running`]: a long-lived process whose stdout lines are read on a thread; `wait_*`
//!   return the first matching line or fail with what was received and the stderr tail.
//!
//! # Rules the scenarios follow
//!
//! - Never a fixed port: everything binds `127.0.0.1:0` and learns its address from output.
//! - Never a sleep as synchronisation: wait for a line, or poll a command with a deadline
//!   ([`poll_until`]). Every loop is bounded.
//! - Every process's stderr goes to a file under the test's root. When a [`Net`] is dropped it
//!   prints the tail of every log; libtest shows that only for a failed test. Set
//!   `CHAT_TESTS_KEEP=1` to keep the root directory for inspection.

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use nix::sys::signal::Signal as Sig;
pub use serde_json::Value as Json;

/// How long a directory may take to print its start line.
pub const DIRECTORY_START: Duration = Duration::from_secs(20);
/// Default bound for one short `peer` command.
pub const SHORT: Duration = Duration::from_secs(30);
/// Default bound for a `listen`/`chat` to print its `online` line.
pub const ONLINE: Duration = Duration::from_secs(20);
/// Default bound for a process to exit after a signal or end of stdin.
pub const EXIT: Duration = Duration::from_secs(15);

/// Lines of each log shown in diagnostics.
const TAIL: usize = 40;

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// Paths of the two binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    /// The `directory` executable.
    pub directory: PathBuf,
    /// The `peer` executable.
    pub peer: PathBuf,
}

/// The workspace root: the parent of this crate.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// Builds `directory` and `peer` once per test process and returns their paths.
pub fn bins() -> Result<&'static Bins> {
    static BINS: OnceLock<std::result::Result<Bins, String>> = OnceLock::new();
    BINS.get_or_init(|| build_bins().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("building the binaries failed: {e}"))
}

fn build_bins() -> Result<Bins> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            "directory",
            "-p",
            "peer",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run {cargo:?} build"))?;
    if !out.status.success() {
        bail!(
            "`cargo build -p directory -p peer` failed ({}):\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 60)
        );
    }
    // Cargo names the executables it produced; fall back to the usual target layout.
    let mut found: HashMap<String, PathBuf> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    let mut pick = |name: &str| -> Result<PathBuf> {
        let path = found
            .remove(name)
            .unwrap_or_else(|| target.join("debug").join(name));
        ensure!(
            path.is_file(),
            "binary {name} not found at {}",
            path.display()
        );
        Ok(path)
    };
    Ok(Bins {
        directory: pick("directory")?,
        peer: pick("peer")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

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

fn read_lossy(path: &Path) -> String {
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

fn send_signal(pid: u32, sig: Signal) -> Result<()> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    signal::kill(Pid::from_raw(pid), sig).with_context(|| format!("kill({pid}, {sig})"))
}

fn wait_child(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
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

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

/// The stderr files of every process of one test.
#[derive(Debug)]
pub struct Logs {
    dir: PathBuf,
    files: Mutex<Vec<(String, PathBuf)>>,
    seq: Mutex<HashMap<String, u32>>,
}

impl Logs {
    fn new(dir: PathBuf) -> Result<Arc<Self>> {
        fs::create_dir_all(&dir)?;
        Ok(Arc::new(Self {
            dir,
            files: Mutex::new(Vec::new()),
            seq: Mutex::new(HashMap::new()),
        }))
    }

    /// A fresh stderr file for a process labelled `label`.
    fn create(&self, label: &str) -> Result<(String, PathBuf, File)> {
        let n = {
            let mut seq = self.seq.lock().expect("logs lock");
            let n = seq.entry(label.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        let label = format!("{label}#{n}");
        let safe: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = self.dir.join(format!("{safe}.stderr"));
        let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
        self.files
            .lock()
            .expect("logs lock")
            .push((label.clone(), path.clone()));
        Ok((label, path, file))
    }

    /// Fails if any log holds "panicked", quoting the lines around it.
    pub fn assert_no_panics(&self) -> Result<()> {
        let mut report = String::new();
        for (label, path) in self.files.lock().expect("logs lock").iter() {
            let text = read_lossy(path);
            if let Some(pos) = text.find("panicked") {
                let start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
                let excerpt: String = text[start..]
                    .lines()
                    .take(15)
                    .collect::<Vec<_>>()
                    .join("\n");
                let _ = writeln!(report, "--- {label} ({}):\n{excerpt}", path.display());
            }
        }
        ensure!(report.is_empty(), "a process panicked:\n{report}");
        Ok(())
    }

    /// The tail of every log.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (label, path) in self.files.lock().expect("logs lock").iter() {
            let text = read_lossy(path);
            let _ = writeln!(out, "--- stderr of {label}:");
            out.push_str(&tail(&text, TAIL));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Directory
// ---------------------------------------------------------------------------------------------

/// How to start a directory.
#[derive(Debug, Clone, Default)]
pub struct DirOpts {
    /// `--bind`; `127.0.0.1:0` when `None`.
    pub bind: Option<SocketAddr>,
    /// `--mailbox-quota-messages`.
    pub quota_messages: Option<u64>,
    /// `--mailbox-quota-bytes`.
    pub quota_bytes: Option<u64>,
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
        let mut cmd = Command::new(&bins.directory);
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
    let out = Command::new(&bins.directory)
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

// ---------------------------------------------------------------------------------------------
// Net: one test's world
// ---------------------------------------------------------------------------------------------

/// One test's world: a temporary root, a directory, and a home per peer identity.
pub struct Net {
    // Fields drop in order: the directory must die before its data directory is removed.
    dir: Directory,
    homes: Mutex<HashMap<String, PathBuf>>,
    extra_dirs: Mutex<u32>,
    logs: Arc<Logs>,
    root_path: PathBuf,
    root: Option<tempfile::TempDir>,
}

impl Net {
    /// A directory with default options.
    pub fn new() -> Result<Self> {
        Self::with(DirOpts::default())
    }

    /// A directory started with `opts`.
    pub fn with(opts: DirOpts) -> Result<Self> {
        let root = tempfile::Builder::new().prefix("chat-e2e-").tempdir()?;
        let root_path = root.path().to_path_buf();
        let logs = Logs::new(root_path.join("logs"))?;
        let dir = Directory::start("directory", root_path.join("dir-data"), logs.clone(), opts)?;
        Ok(Self {
            root: Some(root),
            root_path,
            logs,
            dir,
            homes: Mutex::new(HashMap::new()),
            extra_dirs: Mutex::new(0),
        })
    }

    /// The test's temporary root.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// The main directory.
    pub fn dir(&self) -> &Directory {
        &self.dir
    }

    /// The main directory, to kill or restart it.
    pub fn dir_mut(&mut self) -> &mut Directory {
        &mut self.dir
    }

    /// The logs of every process of this test.
    pub fn logs(&self) -> &Arc<Logs> {
        &self.logs
    }

    /// Starts another directory with its own fresh data directory.
    pub fn start_directory(&self, opts: DirOpts) -> Result<Directory> {
        let n = {
            let mut n = self.extra_dirs.lock().expect("lock");
            *n += 1;
            *n
        };
        Directory::start(
            &format!("directory-{n}"),
            self.root_path.join(format!("dir-data-{n}")),
            self.logs.clone(),
            opts,
        )
    }

    /// The home directory labelled `label` (created on first use).
    pub fn home(&self, label: &str) -> Result<PathBuf> {
        let mut homes = self.homes.lock().expect("homes lock");
        if let Some(p) = homes.get(label) {
            return Ok(p.clone());
        }
        let p = self.root_path.join("homes").join(label);
        fs::create_dir_all(&p)?;
        homes.insert(label.to_string(), p.clone());
        Ok(p)
    }

    /// A `peer` command for `name`, with the home of the same label, against the main
    /// directory.
    pub fn peer(&self, name: &str) -> PeerCmd {
        self.peer_in(name, name)
    }

    /// A `peer` command for `name` with the home labelled `home` (another home = another key).
    pub fn peer_in(&self, name: &str, home: &str) -> PeerCmd {
        let home_path = self.home(home);
        PeerCmd {
            label: if name == home {
                name.to_string()
            } else {
                format!("{name}@{home}")
            },
            name: name.into(),
            home: home_path,
            directory: self.dir.addr(),
            bind: Some("127.0.0.1:0".parse().expect("literal addr")),
            json: false,
            globals: Vec::new(),
            command: Vec::new(),
            stdin_null: false,
            logs: self.logs.clone(),
        }
    }

    /// `peer --name NAME inbox`, which registers the name (binding it to its home's key) and
    /// takes whatever waits; returns the message lines.
    pub fn register(&self, name: &str) -> Result<Vec<Value>> {
        let out = self
            .peer(name)
            .json()
            .args(["inbox"])
            .run(SHORT)?
            .success()?;
        Ok(out.of_type("message"))
    }

    /// `whois name` run by `asker`; returns the whois line.
    pub fn whois(&self, asker: &str, name: &str) -> Result<Value> {
        let out = self
            .peer(asker)
            .json()
            .args(["whois", name])
            .run(SHORT)?
            .success()?;
        out.one_of_type("whois")
    }

    /// `send to body` from `from`; returns the `sent` line.
    pub fn send(&self, from: &str, to: &str, body: &str) -> Result<Value> {
        let out = self
            .peer(from)
            .json()
            .args(["send", to, body])
            .run(SHORT)?
            .success()?;
        let sent = out.one_of_type("sent")?;
        ensure!(
            sent["to"] == to && sent["id"].as_str().is_some_and(is_hex32),
            "malformed sent line {sent} for send {from}->{to}"
        );
        Ok(sent)
    }

    /// Spawns `listen --json` for `name` and waits for its `online` line.
    pub fn listen(&self, name: &str) -> Result<Running> {
        self.listen_with(self.peer(name))
    }

    /// Spawns `cmd` + `listen --json` and waits for its `online` line.
    pub fn listen_with(&self, cmd: PeerCmd) -> Result<Running> {
        let mut r = cmd.json().args(["listen"]).spawn()?;
        r.wait_online()?;
        Ok(r)
    }

    /// Polls `whois name` (asked by `asker`) until `online` equals `online`; returns that line.
    pub fn wait_presence(
        &self,
        asker: &str,
        name: &str,
        online: bool,
        timeout: Duration,
    ) -> Result<Value> {
        poll_until(
            &format!("whois {name} to say online={online}"),
            timeout,
            Duration::from_millis(100),
            || {
                let w = self.whois(asker, name)?;
                Ok((w["online"] == online).then_some(w))
            },
        )
    }

    /// Fails if any process of this test logged a panic.
    pub fn assert_no_panics(&self) -> Result<()> {
        self.logs.assert_no_panics()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Shown by libtest only when the test failed.
        eprintln!(
            "==== logs of this test's processes (root {}) ====\n{}",
            self.root_path.display(),
            self.logs.dump()
        );
        if std::env::var_os("CHAT_TESTS_KEEP").is_some() {
            if let Some(root) = self.root.take() {
                let kept = root.keep();
                eprintln!("kept {}", kept.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Peer commands
// ---------------------------------------------------------------------------------------------

/// One `peer` invocation being built.
#[derive(Debug)]
pub struct PeerCmd {
    label: String,
    name: OsString,
    home: Result<PathBuf>,
    directory: SocketAddr,
    bind: Option<SocketAddr>,
    json: bool,
    globals: Vec<OsString>,
    command: Vec<OsString>,
    stdin_null: bool,
    logs: Arc<Logs>,
}

impl PeerCmd {
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
        self.directory = addr;
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

    fn command(&self) -> Result<(Command, String)> {
        let bins = bins()?;
        let home = self
            .home
            .as_ref()
            .map_err(|e| anyhow!("home for {}: {e:#}", self.label))?;
        let mut argv: Vec<OsString> = vec![
            "--name".into(),
            self.name.clone(),
            "--directory".into(),
            self.directory.to_string().into(),
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
        let cmdline = format!("peer {}", shown.join(" "));
        let mut cmd = Command::new(&bins.peer);
        cmd.args(&argv)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1");
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
        let mut child = cmd
            .stdin(if self.stdin_null {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(stderr_file)
            .spawn()
            .with_context(|| format!("spawn {cmdline}"))?;
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
        Ok(Running {
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

// ---------------------------------------------------------------------------------------------
// Running processes
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Checks shared by scenarios
// ---------------------------------------------------------------------------------------------

/// Checks that `msgs` are message lines from `from` to `to` with exactly the bodies `bodies`,
/// in that order, each via `via` (when given).
pub fn check_messages(
    msgs: &[Value],
    from: &str,
    to: &str,
    bodies: &[String],
    via: Option<&str>,
) -> Result<()> {
    let got: Vec<&str> = msgs.iter().map(body).collect();
    ensure!(
        got == bodies.iter().map(String::as_str).collect::<Vec<_>>(),
        "bodies from {from} to {to} differ:\n  expected {bodies:?}\n  received {got:?}"
    );
    for m in msgs {
        ensure!(
            m["from"] == from && m["to"] == to,
            "message {m} is not from {from} to {to}"
        );
        ensure!(
            m["id"].as_str().is_some_and(is_hex32),
            "message {m} has no 32-hex id"
        );
        ensure!(m["sent_at_ms"].is_u64(), "message {m} has no sent_at_ms");
        if let Some(via) = via {
            ensure!(m["via"] == via, "message {m} did not come via {via}");
        }
    }
    let mut ids: Vec<&str> = msgs.iter().filter_map(|m| m["id"].as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    ensure!(
        ids.len() == before,
        "duplicate ids among messages from {from}"
    );
    Ok(())
}

/// Numbered bodies `"{prefix} {i}"` for `i` in `range`.
pub fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn start_line_parses() {
        let fp = "ab".repeat(32);
        let (addr, got) = parse_start_line(&format!(
            "directory listening on 127.0.0.1:4242 fingerprint {fp}\n"
        ))
        .expect("valid line");
        assert_eq!(addr, "127.0.0.1:4242".parse::<SocketAddr>().expect("addr"));
        assert_eq!(got, fp);
        assert!(parse_start_line("directory listening on 127.0.0.1:1 fingerprint xyz").is_err());
        assert!(parse_start_line("listening on 127.0.0.1:1").is_err());
    }

    #[test]
    fn tail_keeps_last_lines() {
        let t = tail("a\nb\nc\n", 2);
        assert!(t.contains("1 earlier") && t.contains("    b") && t.contains("    c"));
    }
}

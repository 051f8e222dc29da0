//! A `nats-server` with JetStream for the cluster scenarios: on a free loopback port, its
//! storage in a temporary folder, stopped when dropped.
//!
//! Without `nats-server` on the PATH, [`Nats::start`] says so loudly and returns `None`, so the
//! scenario skips; with `CI=true` that is a failure instead (CI installs it: `.ci/run`).

use crate::util::in_netns;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to say it is ready.
const READY: Duration = Duration::from_secs(20);

/// A running `nats-server -js`.
#[derive(Debug)]
pub struct Nats {
    child: Child,
    url: String,
    _storage: tempfile::TempDir,
}

impl Nats {
    /// Starts one, or returns `None` (after saying why) when `nats-server` is not installed
    /// and `CI` is not `true`.
    pub fn start() -> Result<Option<Self>> {
        Self::start_in(None)
    }

    /// [`Nats::start`] inside the network namespace `netns`, if given: it listens on that
    /// namespace's loopback, for directories run in the same namespace.
    pub fn start_in(netns: Option<&str>) -> Result<Option<Self>> {
        let found = Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match found {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    bail!("nats-server is not installed, and CI=true (.ci/run installs it)");
                }
                eprintln!("SKIPPED: nats-server is not installed (.ci/run installs it)");
                return Ok(None);
            }
            Err(e) => return Err(e).context("running nats-server --version"),
        }
        let storage = tempfile::Builder::new().prefix("chat-nats-").tempdir()?;
        let mut cmd = match netns {
            Some(ns) => in_netns(ns, Path::new("nats-server")),
            None => Command::new("nats-server"),
        };
        let mut child = cmd
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(storage.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nats-server")?;
        let stderr = child.stderr.take().context("nats-server stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads its log for the port, then keeps draining it so the server never blocks.
        std::thread::spawn(move || {
            let mut ready = Some(tx);
            let mut url = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                    url = Some(format!("nats://{}", addr.trim()));
                }
                if line.contains("Server is ready") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(url.take());
                    }
                }
            }
        });
        let started = Instant::now();
        let url = match rx.recv_timeout(READY) {
            Ok(Some(url)) => url,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nats-server was not ready within {:?}", started.elapsed());
            }
        };
        Ok(Some(Self {
            child,
            url,
            _storage: storage,
        }))
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! [`Net`]: one test's world: a temporary root, a directory (one node, or two nodes of a
//! cluster), and a home per identity.

use crate::directory::{DirOpts, Directory};
use crate::logs::Logs;
use crate::nats::Nats;
use crate::peer::PeerCmd;
use crate::running::Running;
use crate::util::{is_hex32, poll_until};
use crate::SHORT;
use anyhow::{anyhow, ensure, Result};
use common::KeyId;
use serde_json::Value;
use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a scenario's directory runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One directory on its embedded store.
    OneNode,
    /// Two nodes of one directory on a NATS JetStream store, sharing one key. The peers are
    /// split over them in the order they first appear in the scenario (the first on node A,
    /// the second on node B, the third on A...). Each is told of both nodes, its own first,
    /// so a peer whose node dies moves to the other.
    TwoNodes,
}

/// The second node of a cluster, and the NATS server under both.
struct NodeB {
    // Fields drop in order: node B goes before the server it writes to.
    dir: Directory,
    nats: Nats,
    /// Whether peers are placed on both nodes ([`Topology::TwoNodes`]), or all on node A
    /// unless a scenario says otherwise ([`Net::two_nodes`]).
    spread: bool,
    /// Each peer label seen, with whether it was placed on node B.
    placed: Mutex<HashMap<String, bool>>,
}

/// One test's world: a temporary root, a directory, and a home per peer identity.
pub struct Net {
    // Fields drop in order: the directories must die before their data directories are
    // removed, and node A before the NATS server that node B holds.
    dir: Directory,
    node_b: Option<NodeB>,
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
            node_b: None,
            homes: Mutex::new(HashMap::new()),
            extra_dirs: Mutex::new(0),
        })
    }

    /// A world on `topology`, or `None` when it needs a program that is not installed (said
    /// loudly, and a failure under `CI=true`; see [`Nats::start`]).
    pub fn on(topology: Topology) -> Result<Option<Self>> {
        match topology {
            Topology::OneNode => Self::new().map(Some),
            Topology::TwoNodes => Self::cluster(DirOpts::default(), true),
        }
    }

    /// Two nodes started with `opts` each (and the store's flags) on a NATS server in
    /// `opts`' network namespace, if any, with the peers split over them as on
    /// [`Topology::TwoNodes`]. `None` as for [`Net::on`].
    pub fn two_nodes_with(opts: DirOpts) -> Result<Option<Self>> {
        Self::cluster(opts, true)
    }

    /// Two nodes of one directory on one NATS JetStream store, sharing node A's key; every
    /// peer uses node A unless a scenario points it at [`Net::node_b`]. `None` as for
    /// [`Net::on`].
    pub fn two_nodes() -> Result<Option<Self>> {
        Self::cluster(DirOpts::default(), false)
    }

    fn cluster(opts: DirOpts, spread: bool) -> Result<Option<Self>> {
        let Some(nats) = Nats::start_in(opts.netns.as_deref())? else {
            return Ok(None);
        };
        let store = |extra: &[String]| {
            let mut opts = opts.clone();
            opts.args
                .extend(["--store".to_string(), nats.url().to_string()]);
            opts.args.extend_from_slice(extra);
            opts
        };
        let mut net = Self::with(store(&[]))?;
        let key = net.dir.data().join("key.der").display().to_string();
        let dir = net.start_directory(store(&["--key".into(), key]))?;
        net.node_b = Some(NodeB {
            dir,
            nats,
            spread,
            placed: Mutex::new(HashMap::new()),
        });
        Ok(Some(net))
    }

    /// Node B of a cluster ([`Topology::TwoNodes`], [`Net::two_nodes`]).
    pub fn node_b(&self) -> Result<&Directory> {
        self.node_b
            .as_ref()
            .map(|b| &b.dir)
            .ok_or_else(|| anyhow!("this world has one directory node"))
    }

    /// Node B, to kill or restart it.
    pub fn node_b_mut(&mut self) -> Result<&mut Directory> {
        self.node_b
            .as_mut()
            .map(|b| &mut b.dir)
            .ok_or_else(|| anyhow!("this world has one directory node"))
    }

    /// `nats://127.0.0.1:PORT` of a cluster's NATS server.
    pub fn nats_url(&self) -> Result<&str> {
        self.node_b
            .as_ref()
            .map(|b| b.nats.url())
            .ok_or_else(|| anyhow!("this world has one directory node"))
    }

    /// The test's temporary root.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// The main directory (node A of a cluster).
    pub fn dir(&self) -> &Directory {
        &self.dir
    }

    /// The main directory (node A of a cluster), to kill or restart it.
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
    /// directory (or, on [`Topology::TwoNodes`], both nodes, its own first).
    pub fn peer(&self, name: &str) -> PeerCmd {
        self.peer_in(name, name)
    }

    /// A `peer` command for `name` with the home labelled `home` (another home = another key).
    pub fn peer_in(&self, name: &str, home: &str) -> PeerCmd {
        let label = if name == home {
            name.to_string()
        } else {
            format!("{name}@{home}")
        };
        let cmd = PeerCmd::new(
            label.clone(),
            name,
            self.home(home),
            self.dir.addr(),
            self.logs.clone(),
        );
        match &self.node_b {
            Some(b) if b.spread => {
                let on_b = {
                    let mut placed = b.placed.lock().expect("placed lock");
                    let next = placed.len() % 2 == 1;
                    *placed.entry(label).or_insert(next)
                };
                let (own, other) = if on_b {
                    (b.dir.addr(), self.dir.addr())
                } else {
                    (self.dir.addr(), b.dir.addr())
                };
                cmd.directory_nodes(&format!("{own},{other}"))
            }
            _ => cmd,
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

    /// Where `name` can be dialed directly and the key it must present, from `whois name`
    /// run by `asker`: what a hand-made client needs to talk to it.
    pub fn dial_target(&self, asker: &str, name: &str) -> Result<(SocketAddr, KeyId)> {
        let info = self.whois(asker, name)?;
        let addr = info["observed_addr"]
            .as_str()
            .ok_or_else(|| anyhow!("no address for {name}: {info}"))?
            .parse()?;
        let key = info["key"].as_str().unwrap_or_default().parse()?;
        Ok((addr, key))
    }

    /// `peer history with --json`, run as `me`; returns the message lines.
    pub fn history(&self, me: &str, with: &str) -> Result<Vec<Value>> {
        let out = self
            .peer(me)
            .json()
            .args(["history", with])
            .run(SHORT)?
            .success()?;
        Ok(out.of_type("message"))
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

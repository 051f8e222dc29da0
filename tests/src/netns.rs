//! [`Topology`]: real Linux NATs for the NAT traversal scenarios, built from network
//! namespaces, veth pairs, bridges and iptables, and removed again when it is dropped.
//!
//! # The shape
//!
//! ```text
//!                      hub namespace: bridge br0 = the "public" segment 198.18.0.0/24
//!        +----------------+------------------+--------------------+
//!   directory host   public hosts        router N (wan)        router M (wan) ...
//!   198.18.0.2       198.18.0.101..      198.18.0.(10+N)
//!                                         | NAT (MASQUERADE)
//!                                        bridge `lan` 198.19.N.1/24
//!                                         +-- private host 198.19.N.2 (default via .1)
//!                                         +-- private host 198.19.N.3 ...
//! ```
//!
//! Every host (the directory's too) and every router is a namespace of its own; the hub only
//! switches. Nothing is created in the caller's namespace: veth pairs are made inside the hub or
//! a router and their other end is moved straight into the host, so interface names only need
//! to be unique within one namespace and parallel tests never collide.
//!
//! Hosts on the public segment have no route into any private LAN: only the routers' NAT
//! mappings let traffic in, as on the Internet.
//!
//! # The routers
//!
//! - [`Nat::Plain`]: `MASQUERADE` on the WAN leg. Linux keeps the host's source port when it is
//!   free, and uses one mapping for every destination (endpoint-independent mapping).
//! - [`Nat::Symmetric`]: `MASQUERADE --random-fully`: a new random port for every new
//!   destination (endpoint-dependent mapping), what breaks hole punching.
//!
//! Both filter like a home router: forwarded traffic from the WAN is accepted only when
//! conntrack says it belongs to a flow a LAN host started (`ESTABLISHED,RELATED`; the tuple
//! must match exactly, i.e. address- and port-dependent filtering), and unsolicited packets to
//! the router itself are dropped silently. That last rule matters for hole punching: were such
//! a packet delivered locally, conntrack would confirm an entry for it and the router would
//! then pick another port for the LAN host's own flow to that same peer.
//!
//! # Cleanup and skipping
//!
//! Namespaces are named `p2pc-PID-N-ROLE`. Dropping the [`Topology`] deletes all of them (and
//! so every veth); declare it before the [`Net`] so that it drops after the processes running
//! inside have been killed. Namespaces left by a test process that died without unwinding are
//! deleted by the next [`Topology::new`] (their PID is gone).
//!
//! [`Topology::new`] returns `None`, after a loud message on stderr, when `ip netns add` does not
//! work (not root, no `ip`); with `CI=true` that is an error instead.

use crate::directory::DirOpts;
use crate::net::Net;
use crate::peer::PeerCmd;
use crate::util::tail;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The directory's address on the public segment.
pub const DIRECTORY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

const NS_PREFIX: &str = "p2pc";
const PUBLIC_PREFIX: u8 = 24;

/// How a router translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// `MASQUERADE`: one mapping per LAN socket for every destination, source port kept.
    Plain,
    /// `MASQUERADE --random-fully`: a new random port per destination (symmetric NAT).
    Symmetric,
}

/// A host: a namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    /// The label the test gave it.
    pub label: String,
    /// Its namespace.
    pub ns: String,
    /// Its only address (on `eth0`).
    pub ip: Ipv4Addr,
}

/// A NAT router between the public segment and one private LAN.
#[derive(Debug, Clone)]
pub struct Router {
    /// The label the test gave it.
    pub label: String,
    /// Its namespace.
    pub ns: String,
    /// Its address on the public segment: what the world sees of its LAN hosts.
    pub wan: Ipv4Addr,
    /// Its address on the LAN, the hosts' default gateway.
    pub gateway: Ipv4Addr,
    /// How it translates.
    pub nat: Nat,
    index: u8,
}

/// One test's namespaces; all are deleted on drop.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    hub: String,
    created: Vec<String>,
    hub_ports: u32,
    public_hosts: u8,
    routers: Vec<Router>,
    lan_hosts: HashMap<u8, u8>,
    directory: Option<Host>,
}

impl Topology {
    /// The hub (public segment) and the directory's host. `None` (after a loud message) when
    /// network namespaces cannot be used here and `CI` is not `true`.
    pub fn new(test: &str) -> Result<Option<Self>> {
        remove_stale();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "{NS_PREFIX}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let hub = format!("{prefix}-hub");
        if let Err(e) = ip(&["netns", "add", &hub]) {
            let msg = format!(
                "\n{bar}\n!!! SKIPPED NAT test `{test}`: network namespaces are not usable here\n\
                 !!! (these tests need root, iproute2, iptables and conntrack).\n!!! {e:#}\n{bar}\n",
                bar = "!".repeat(78)
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                bail!("{msg}CI=true: a skipped NAT test is a failure");
            }
            eprintln!("{msg}");
            return Ok(None);
        }
        let mut t = Self {
            prefix,
            hub: hub.clone(),
            created: vec![hub.clone()],
            hub_ports: 0,
            public_hosts: 0,
            routers: Vec::new(),
            lan_hosts: HashMap::new(),
            directory: None,
        };
        // From here on, an error drops `t`, which deletes whatever was made.
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        bridge_without_netfilter(&hub);
        let dir = t.host_on_public("dir", DIRECTORY_IP)?;
        t.directory = Some(dir);
        Ok(Some(t))
    }

    /// The host the directory runs on (198.18.0.2).
    pub fn directory_host(&self) -> &Host {
        self.directory.as_ref().expect("made in new")
    }

    /// A host on the public segment (198.18.0.101, .102, ...), reachable by everyone.
    pub fn public_host(&mut self, label: &str) -> Result<Host> {
        ensure!(self.public_hosts < 100, "too many public hosts");
        self.public_hosts += 1;
        let ip = Ipv4Addr::new(198, 18, 0, 100 + self.public_hosts);
        self.host_on_public(label, ip)
    }

    fn host_on_public(&mut self, label: &str, ip_addr: Ipv4Addr) -> Result<Host> {
        let ns = self.add_ns(label)?;
        self.plug_into_hub(&ns, "eth0", ip_addr)?;
        Ok(Host {
            label: label.to_string(),
            ns,
            ip: ip_addr,
        })
    }

    /// Makes a veth pair in the hub, enslaves the hub's end to br0 and moves the other end,
    /// named `ifname`, into `ns` with address `addr`/24.
    fn plug_into_hub(&mut self, ns: &str, ifname: &str, addr: Ipv4Addr) -> Result<()> {
        self.hub_ports += 1;
        let port = format!("p{}", self.hub_ports);
        let hub = self.hub.clone();
        ip(&[
            "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns", ns,
        ])?;
        ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/{PUBLIC_PREFIX}"),
            "dev",
            ifname,
        ])?;
        ip(&["-n", ns, "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// A NAT router: WAN leg 198.18.0.(10+N) on the public segment, LAN 198.19.N.0/24.
    pub fn router(&mut self, label: &str, nat: Nat) -> Result<Router> {
        ensure!(self.routers.len() < 80, "too many routers");
        let index = u8::try_from(self.routers.len() + 1).expect("checked");
        let ns = self.add_ns(label)?;
        let wan = Ipv4Addr::new(198, 18, 0, 10 + index);
        let gateway = Ipv4Addr::new(198, 19, index, 1);
        self.plug_into_hub(&ns, "wan", wan)?;
        ip(&["-n", &ns, "link", "add", "lan", "type", "bridge"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            "lan",
        ])?;
        ip(&["-n", &ns, "link", "set", "lan", "up"])?;
        bridge_without_netfilter(&ns);
        sysctl(&ns, "net.ipv4.ip_forward", "1")?;
        let mut masquerade = vec![
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan",
            "-j",
            "MASQUERADE",
        ];
        if nat == Nat::Symmetric {
            masquerade.push("--random-fully");
        }
        let est = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"];
        let rules: Vec<Vec<&str>> = vec![
            masquerade,
            vec!["-P", "FORWARD", "DROP"],
            vec!["-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT"],
            // LAN to LAN stays on the bridge; accepted should bridge netfilter be on anyway.
            vec!["-A", "FORWARD", "-i", "lan", "-o", "lan", "-j", "ACCEPT"],
            [
                &["-A", "FORWARD", "-i", "wan", "-o", "lan"][..],
                &est,
                &["-j", "ACCEPT"],
            ]
            .concat(),
            [&["-A", "INPUT", "-i", "wan"][..], &est, &["-j", "ACCEPT"]].concat(),
            vec!["-A", "INPUT", "-i", "wan", "-j", "DROP"],
        ];
        for rule in rules {
            let mut argv = vec!["iptables", "-w", "5"];
            argv.extend(rule);
            exec(&ns, &argv)?;
        }
        let r = Router {
            label: label.to_string(),
            ns,
            wan,
            gateway,
            nat,
            index,
        };
        self.routers.push(r.clone());
        Ok(r)
    }

    /// A host on `router`'s LAN: 198.19.N.2, .3, ..., default route via the router.
    pub fn private_host(&mut self, label: &str, router: &Router) -> Result<Host> {
        let k = self.lan_hosts.entry(router.index).or_insert(0);
        ensure!(*k < 200, "too many hosts on {}", router.label);
        *k += 1;
        let k = *k;
        let ip_addr = Ipv4Addr::new(198, 19, router.index, 1 + k);
        let ns = self.add_ns(label)?;
        let port = format!("l{k}");
        ip(&[
            "-n", &router.ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        ip(&[
            "-n", &router.ns, "link", "set", &port, "master", "lan", "up",
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &router.gateway.to_string(),
        ])?;
        Ok(Host {
            label: label.to_string(),
            ns,
            ip: ip_addr,
        })
    }

    /// `conntrack -F` on `router`: every NAT mapping and every filter state is forgotten.
    pub fn flush_conntrack(&self, router: &Router) -> Result<()> {
        exec(&router.ns, &["conntrack", "-F"]).map(drop)
    }

    /// `conntrack -L` on `router` (for diagnostics).
    pub fn conntrack_list(&self, router: &Router) -> String {
        exec(&router.ns, &["conntrack", "-L"]).unwrap_or_else(|e| format!("{e:#}"))
    }

    /// A [`Net`] whose directory runs on [`Topology::directory_host`], bound to
    /// 198.18.0.2 on an ephemeral port.
    pub fn net(&self) -> Result<Net> {
        Net::with(self.directory_opts())
    }

    /// Two nodes of one directory on the public host instead (and their NATS server, on its
    /// loopback), with the peers split over them ([`crate::Topology::TwoNodes`]); `None`
    /// without `nats-server` (see [`crate::Nats::start`]).
    pub fn two_nodes(&self) -> Result<Option<Net>> {
        Net::two_nodes_with(self.directory_opts())
    }

    fn directory_opts(&self) -> DirOpts {
        DirOpts {
            bind: Some(SocketAddr::new(DIRECTORY_IP.into(), 0)),
            netns: Some(self.directory_host().ns.clone()),
            env: vec![("RUST_LOG".into(), log_filter())],
            ..DirOpts::default()
        }
    }

    /// `peer --name NAME --bind 0.0.0.0:0` run inside `host`'s namespace, with the home
    /// labelled `name` (so a `send` while `listen` runs goes through the control socket).
    pub fn peer(&self, net: &Net, name: &str, host: &Host) -> PeerCmd {
        net.peer(name)
            .netns(&host.ns)
            .bind(SocketAddr::from(([0, 0, 0, 0], 0)))
            .env("RUST_LOG", log_filter())
    }

    fn add_ns(&mut self, role: &str) -> Result<String> {
        ensure!(
            !role.is_empty()
                && role
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "bad namespace label {role:?}"
        );
        let ns = format!("{}-{role}", self.prefix);
        ensure!(!self.created.contains(&ns), "label {role:?} used twice");
        ip(&["netns", "add", &ns])?;
        self.created.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The routers' rule counters and conntrack tables (for diagnostics).
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for r in &self.routers {
            out.push_str(&format!(
                "--- router {} ({:?}, wan {}, ns {})\n",
                r.label, r.nat, r.wan, r.ns
            ));
            for table in ["nat", "filter"] {
                let rules = exec(
                    &r.ns,
                    &["iptables", "-w", "5", "-t", table, "-L", "-n", "-v"],
                )
                .unwrap_or_else(|e| format!("{e:#}"));
                out.push_str(&tail(&rules, 30));
            }
            out.push_str("    conntrack -L:\n");
            out.push_str(&tail(&self.conntrack_list(r), 30));
        }
        out
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Shown by libtest only when the test failed.
        eprintln!(
            "==== NAT routers of this test ({}) ====\n{}",
            self.prefix,
            self.dump()
        );
        // Hosts and routers first, then the hub; deleting a namespace removes its veths.
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("could not delete namespace {ns}: {e:#}");
            }
        }
    }
}

/// Deletes namespaces of ours whose test process no longer exists (killed without unwinding).
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let mut parts = name.split('-');
        if parts.next() != Some(NS_PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The log filter for processes in namespaces: the caller's `RUST_LOG`, else debug for ours.
fn log_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info,peer=debug,directory=debug".into())
}

/// Bridged frames must not go through iptables (where `br_netfilter` is loaded, new namespaces
/// get `bridge-nf-call-iptables=1`). Best effort: without `br_netfilter` the key is absent.
fn bridge_without_netfilter(ns: &str) {
    let _ = sysctl(ns, "net.bridge.bridge-nf-call-iptables", "0");
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    match exec(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")]) {
        Ok(_) => Ok(()),
        // Without procps: the same through /proc/sys, which shows the writer's namespace.
        Err(first) => {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            exec(ns, &["sh", "-c", &format!("echo {value} > {path}")])
                .map(drop)
                .with_context(|| format!("sysctl {key}={value} failed first: {first:#}"))
        }
    }
}

/// Runs `ip ARGS...`; returns stdout, or fails with stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Runs `ARGV` inside namespace `ns` (`ip netns exec NS ARGV...`); returns stdout.
pub fn exec(ns: &str, argv: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(argv);
    run("ip", &all)
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{program}`"))?;
    ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A UDP socket bound to `bind` inside namespace `ns`. A socket stays in the namespace it was
/// made in, so it can then be used from any thread of the test.
pub fn udp_socket(ns: &str, bind: SocketAddr) -> Result<UdpSocket> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || -> Result<UdpSocket> {
        let f = File::open(&path).with_context(|| format!("open {path}"))?;
        // Only this short-lived thread switches namespace.
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {path}"))?;
        UdpSocket::bind(bind).with_context(|| format!("bind {bind} in {path}"))
    })
    .join()
    .map_err(|_| anyhow!("the setns thread panicked"))?
}

/// A UDP "what is my address" server: answers every datagram with the text of its source
/// address (as a STUN server would), until dropped.
pub struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    /// Starts one on `host`, on an ephemeral port.
    pub fn start(host: &Host) -> Result<Self> {
        let sock = udp_socket(&host.ns, SocketAddr::new(host.ip.into(), 0))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(from.to_string().as_bytes(), from);
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asks `echo` from `sock` what address it sees (retrying every 100 ms, up to `timeout`).
pub fn observed_by(sock: &UdpSocket, echo: SocketAddr, timeout: Duration) -> Result<SocketAddr> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        sock.send_to(b"?", echo)?;
        let retry = Instant::now() + Duration::from_millis(100);
        while Instant::now() < retry {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == echo => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    return text
                        .parse()
                        .with_context(|| format!("echo answered {text:?}"));
                }
                Ok(_) | Err(_) => {}
            }
        }
    }
    bail!(
        "no answer from {echo} to {} within {timeout:?}",
        sock.local_addr()?
    )
}

/// Does any datagram reach `sock` within `timeout` from a source other than `ignore`?
pub fn receives_within(
    sock: &UdpSocket,
    ignore: &[SocketAddr],
    timeout: Duration,
) -> Result<Option<SocketAddr>> {
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            if !ignore.contains(&from) {
                return Ok(Some(from));
            }
        }
    }
    Ok(None)
}

/// Raw UDP hole punching: `a` sends to `a_to` and `b` to `b_to` every 50 ms, up to `timeout`,
/// until both have received something from the other side. Returns the source each side saw
/// first, or `None` for a side that received nothing. Datagrams from `ignore` do not count.
pub fn punch(
    a: &UdpSocket,
    a_to: SocketAddr,
    b: &UdpSocket,
    b_to: SocketAddr,
    ignore: &[SocketAddr],
    timeout: Duration,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>)> {
    let deadline = Instant::now() + timeout;
    let (mut got_a, mut got_b) = (None, None);
    a.set_read_timeout(Some(Duration::from_millis(10)))?;
    b.set_read_timeout(Some(Duration::from_millis(10)))?;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline && (got_a.is_none() || got_b.is_none()) {
        a.send_to(b"punch from a", a_to)?;
        b.send_to(b"punch from b", b_to)?;
        let round = Instant::now() + Duration::from_millis(50);
        while Instant::now() < round {
            if got_a.is_none() {
                if let Ok((_, from)) = a.recv_from(&mut buf) {
                    if !ignore.contains(&from) {
                        got_a = Some(from);
                    }
                }
            }
            if got_b.is_none() {
                if let Ok((_, from)) = b.recv_from(&mut buf) {
                    if !ignore.contains(&from) {
                        got_b = Some(from);
                    }
                }
            }
            if got_a.is_some() && got_b.is_some() {
                break;
            }
        }
    }
    Ok((got_a, got_b))
}

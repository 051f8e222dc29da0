//! NAT traversal on real Linux NATs (issue 4): network namespaces, a public segment holding the
//! directory, and private LANs behind routers doing iptables MASQUERADE (see `tests::netns`).
//!
//! The `topology_*` tests check the NATs themselves with plain UDP sockets, independently of the
//! binaries: what they map, what they filter, and where raw UDP hole punching can work. They are
//! the ground truth for what the `case*` tests expect from the peers.
//!
//! Every test needs root (`ip netns`); without it, it prints a loud message and passes, unless
//! `CI=true`. Each `case*` test prints how long its first direct delivery took (run with
//! `--nocapture` to see it).
//!
//! Paths reported by `send --json` (`sent.path`): `lan` = reached on one of the recipient's own
//! interface addresses that is not its directory-observed address, `public` = a plain dial to the
//! recipient's observed address, `punched` = the directory's introduction was needed.

use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tests::netns::{observed_by, punch, receives_within, udp_socket, Echo, Host, Nat, Topology};
use tests::{check_messages, is_hex32, is_message_from, is_type, numbered, Json, Net, PeerCmd};
use tests::{Running, SHORT};

const ANY: &str = "0.0.0.0:0";
/// How long a message may take to show up at a listening recipient.
const ARRIVAL: Duration = Duration::from_secs(20);

/// The LAN prefix of a router (its gateway address with the last octet zeroed).
fn lan_net(r: &tests::netns::Router) -> std::net::Ipv4Addr {
    let [a, b, c, _] = r.gateway.octets();
    std::net::Ipv4Addr::new(a, b, c, 0)
}

fn any() -> SocketAddr {
    ANY.parse().expect("literal")
}

// ---------------------------------------------------------------------------------------------
// The topology itself, with raw UDP.
// ---------------------------------------------------------------------------------------------

/// Plain MASQUERADE: the host's port is kept, one mapping serves every destination, unsolicited
/// traffic is dropped (also with a route into the LAN), and raw UDP hole punching between two
/// such NATs works. A host on the public segment has no route into a private LAN.
#[test]
fn topology_plain_nat_maps_filters_and_can_be_punched() -> Result<()> {
    let Some(mut topo) = Topology::new("topology_plain")? else {
        return Ok(());
    };
    let r1 = topo.router("r1", Nat::Plain)?;
    let r2 = topo.router("r2", Nat::Plain)?;
    let h1 = topo.private_host("h1", &r1)?;
    let h2 = topo.private_host("h2", &r2)?;
    let p = topo.public_host("p")?;
    let echo = Echo::start(topo.directory_host())?;
    let echo2 = Echo::start(&p)?;
    let echoes = [echo.addr(), echo2.addr()];

    // Outbound through the NAT: the echo sees the router's WAN address and the host's own port.
    let s1 = udp_socket(&h1.ns, any())?;
    let port1 = s1.local_addr()?.port();
    let o1 = observed_by(&s1, echo.addr(), Duration::from_secs(5))
        .context("a private host cannot reach the public segment through its NAT")?;
    ensure!(
        o1 == SocketAddr::new(r1.wan.into(), port1),
        "plain MASQUERADE should map {}:{port1} to {}:{port1}, the echo saw {o1}",
        h1.ip,
        r1.wan
    );
    // Endpoint-independent mapping: another destination sees the same mapping.
    let o1b = observed_by(&s1, echo2.addr(), Duration::from_secs(5))?;
    ensure!(o1b == o1, "plain NAT mapped to {o1} and then {o1b}");

    // Filtering: a socket h1 never talked to cannot use the mapping.
    let sp = udp_socket(&p.ns, any())?;
    for _ in 0..5 {
        sp.send_to(b"unsolicited", o1)?;
    }
    ensure!(
        receives_within(&s1, &echoes, Duration::from_secs(1))?.is_none(),
        "an unsolicited datagram from {} went through the NAT to {}",
        sp.local_addr()?,
        h1.ip
    );
    // No route into the LAN from the public segment...
    let lan_target = SocketAddr::new(h1.ip.into(), port1);
    let routed = sp.send_to(b"to the lan", lan_target);
    ensure!(
        routed.is_err(),
        "the public host has a route to the private {lan_target}"
    );
    // ...and with one, the router's filter still refuses what the LAN did not start.
    tests::netns::ip(&[
        "-n",
        &p.ns,
        "route",
        "add",
        &format!("{}/24", lan_net(&r1)),
        "via",
        &r1.wan.to_string(),
    ])?;
    for _ in 0..5 {
        sp.send_to(b"to the lan, routed", lan_target)?;
    }
    ensure!(
        receives_within(&s1, &echoes, Duration::from_secs(1))?.is_none(),
        "router {} forwarded unsolicited traffic into its LAN",
        r1.label
    );

    // Raw UDP hole punching between two plain NATs works.
    let s2 = udp_socket(&h2.ns, any())?;
    let o2 = observed_by(&s2, echo.addr(), Duration::from_secs(5))?;
    let (a, b) = punch(&s1, o2, &s2, o1, &echoes, Duration::from_secs(3))?;
    ensure!(
        a == Some(o2) && b == Some(o1),
        "raw UDP punching between two plain NATs failed: h1 got {a:?} (expected {o2}), \
         h2 got {b:?} (expected {o1})"
    );
    Ok(())
}

/// `--random-fully`: a new port for every destination. A host behind it reaches a public host
/// (which answers to the source it saw), but raw UDP hole punching fails against a plain NAT
/// and against another symmetric NAT.
#[test]
fn topology_symmetric_nat_defeats_punching() -> Result<()> {
    let Some(mut topo) = Topology::new("topology_symmetric")? else {
        return Ok(());
    };
    let rs = topo.router("rs", Nat::Symmetric)?;
    let rp = topo.router("rp", Nat::Plain)?;
    let rs2 = topo.router("rs2", Nat::Symmetric)?;
    let hs = topo.private_host("hs", &rs)?;
    let hp = topo.private_host("hp", &rp)?;
    let hs2 = topo.private_host("hs2", &rs2)?;
    let p = topo.public_host("p")?;
    let echo = Echo::start(topo.directory_host())?;
    let echo2 = Echo::start(&p)?;
    let echoes = [echo.addr(), echo2.addr()];

    let s = udp_socket(&hs.ns, any())?;
    let o = observed_by(&s, echo.addr(), Duration::from_secs(5))?;
    let ob = observed_by(&s, echo2.addr(), Duration::from_secs(5))?;
    ensure!(
        o.ip() == rs.wan && ob.ip() == rs.wan && o.port() != ob.port(),
        "a symmetric NAT should use a new port per destination; the two echoes saw {o} and {ob}"
    );

    // To a public host: it answers to the source it saw.
    let sp = udp_socket(&p.ns, any())?;
    let sp_addr = SocketAddr::new(p.ip.into(), sp.local_addr()?.port());
    s.send_to(b"hello public", sp_addr)?;
    let seen = receives_within(&sp, &[], Duration::from_secs(2))?
        .context("a datagram from behind the symmetric NAT did not reach the public host")?;
    ensure!(
        seen.ip() == rs.wan && seen != o,
        "expected a fresh mapping of {} towards {sp_addr}, saw {seen}",
        rs.wan
    );
    sp.send_to(b"reply", seen)?;
    ensure!(
        receives_within(&s, &echoes, Duration::from_secs(2))? == Some(sp_addr),
        "the public host's reply did not come back through the symmetric NAT"
    );

    // Against a plain NAT: each side aims at the address the directory (echo) saw for the
    // other. hs's datagrams leave from a new port that hp's NAT never sent to, so they are
    // filtered; hp's go to the mapping hs made towards the echo, which only the echo may use.
    let sp2 = udp_socket(&hp.ns, any())?;
    let op = observed_by(&sp2, echo.addr(), Duration::from_secs(5))?;
    let (a, b) = punch(&s, op, &sp2, o, &echoes, Duration::from_secs(2))?;
    ensure!(
        a.is_none() && b.is_none(),
        "raw punching symmetric vs plain was not expected to work: hs got {a:?}, hp got {b:?}"
    );

    // Two symmetric NATs: hopeless as well.
    let s2 = udp_socket(&hs2.ns, any())?;
    let o2 = observed_by(&s2, echo.addr(), Duration::from_secs(5))?;
    let (a, b) = punch(&s, o2, &s2, o, &echoes, Duration::from_secs(2))?;
    ensure!(
        a.is_none() && b.is_none(),
        "raw punching symmetric vs symmetric was not expected to work: got {a:?} / {b:?}"
    );
    Ok(())
}

/// Two hosts on one LAN reach each other on their LAN addresses; the router's conntrack flush
/// works.
#[test]
fn topology_same_lan_and_flush() -> Result<()> {
    let Some(mut topo) = Topology::new("topology_lan")? else {
        return Ok(());
    };
    let r = topo.router("r", Nat::Plain)?;
    let h1 = topo.private_host("h1", &r)?;
    let h2 = topo.private_host("h2", &r)?;
    let echo = Echo::start(topo.directory_host())?;
    let s1 = udp_socket(&h1.ns, any())?;
    let s2 = udp_socket(&h2.ns, any())?;
    let a1 = SocketAddr::new(h1.ip.into(), s1.local_addr()?.port());
    let a2 = SocketAddr::new(h2.ip.into(), s2.local_addr()?.port());
    let (a, b) = punch(&s1, a2, &s2, a1, &[], Duration::from_secs(2))?;
    ensure!(
        a == Some(a2) && b == Some(a1),
        "LAN neighbours did not reach each other: {a:?} {b:?}"
    );
    observed_by(&s1, echo.addr(), Duration::from_secs(5))?;
    ensure!(
        topo.conntrack_list(&r).contains(&h1.ip.to_string()),
        "no conntrack entry for {} on the router",
        h1.ip
    );
    topo.flush_conntrack(&r)?;
    ensure!(
        !topo.conntrack_list(&r).contains(&h1.ip.to_string()),
        "conntrack -F left an entry for {}",
        h1.ip
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The peers across the NATs.
// ---------------------------------------------------------------------------------------------

/// One test's topology and chat network. `net` is declared first so that it drops first: the
/// directory dies before its namespace is deleted (peers are locals of the test, declared after
/// the scene, so they die even earlier).
struct Scene {
    net: Net,
    topo: Topology,
    direct_timeout: Option<f64>,
    /// Peers run without `--open`: only contacts reach them.
    closed: bool,
}

impl Scene {
    fn new(topo: Topology) -> Result<Self> {
        Ok(Self {
            net: topo.net()?,
            topo,
            direct_timeout: None,
            closed: false,
        })
    }

    /// On two directory nodes, the peers split over them; `None` without `nats-server`.
    fn on_two_nodes(topo: Topology) -> Result<Option<Self>> {
        let Some(net) = topo.two_nodes()? else {
            return Ok(None);
        };
        Ok(Some(Self {
            net,
            topo,
            direct_timeout: None,
            closed: false,
        }))
    }

    fn cmd(&self, name: &str, host: &Host) -> PeerCmd {
        let mut c = self.topo.peer(&self.net, name, host).heartbeat(1.0);
        if self.closed {
            c = c.closed();
        }
        match self.direct_timeout {
            Some(t) => c.direct_timeout(t),
            None => c,
        }
    }

    /// `listen --json` for `name` inside `host`, once online.
    fn listen(&self, name: &str, host: &Host) -> Result<Running> {
        self.net.listen_with(self.cmd(name, host))
    }

    /// `send to body` from `from` (inside `host`; handed to `from`'s running `listen`); returns
    /// the `sent` line and how long the command took.
    fn send(&self, from: &str, host: &Host, to: &str, body: &str) -> Result<(Json, Duration)> {
        let t = Instant::now();
        let out = self
            .cmd(from, host)
            .json()
            .args(["send", to, body])
            .run(SHORT)?
            .success()?;
        let took = t.elapsed();
        let sent = out.one_of_type("sent")?;
        ensure!(
            sent["to"] == to && sent["id"].as_str().is_some_and(is_hex32),
            "malformed sent line {sent} for send {from}->{to}"
        );
        Ok((sent, took))
    }

    /// `whois name` asked by `asker` inside `host`.
    fn whois(&self, asker: &str, host: &Host, name: &str) -> Result<Json> {
        let out = self
            .cmd(asker, host)
            .json()
            .args(["whois", name])
            .run(SHORT)?
            .success()?;
        out.one_of_type("whois")
    }

    /// Checks that the directory sees `name` (on `host`) online at an address of `public_ip`,
    /// and publishes `host`'s own address among its listen addresses.
    fn check_seen(
        &self,
        asker: &str,
        asker_host: &Host,
        name: &str,
        host: &Host,
        public_ip: std::net::Ipv4Addr,
    ) -> Result<()> {
        let w = self.whois(asker, asker_host, name)?;
        ensure!(w["online"] == true, "{name} should be online: {w}");
        let observed: SocketAddr = w["observed_addr"]
            .as_str()
            .context("observed_addr missing")?
            .parse()
            .with_context(|| format!("observed_addr is not ip:port in {w}"))?;
        ensure!(
            observed.ip() == public_ip,
            "the directory should see {name} at {public_ip} (its NAT's WAN address or its own \
             public one), sees {observed}: {w}"
        );
        let listen: Vec<&str> = w["listen_addrs"]
            .as_array()
            .context("listen_addrs is not an array")?
            .iter()
            .filter_map(Json::as_str)
            .collect();
        ensure!(
            listen
                .iter()
                .any(|a| a.parse::<SocketAddr>().is_ok_and(|a| a.ip() == host.ip)),
            "{name} runs on {} with --bind {ANY}, yet listen_addrs is {listen:?}",
            host.ip
        );
        Ok(())
    }
}

/// Creates the topology or returns from the test (skip) when namespaces are unusable.
macro_rules! topology {
    ($test:expr) => {
        match Topology::new($test)? {
            Some(t) => t,
            None => return Ok(()),
        }
    };
}

/// Requires a direct delivery over one of `paths`.
fn expect_direct(sent: &Json, paths: &[&str], what: &str) -> Result<()> {
    ensure!(
        sent["status"] == "delivered" && sent["path"].as_str().is_some_and(|p| paths.contains(&p)),
        "{what}: expected status delivered over a direct path {paths:?}, got {sent}"
    );
    Ok(())
}

/// Requires a mailbox fallback.
fn expect_queued(sent: &Json, what: &str) -> Result<()> {
    ensure!(
        sent["status"] == "queued" && (sent["path"].is_null() || sent["path"] == "mailbox"),
        "{what}: no direct path exists, expected status queued (no direct path), got {sent}"
    );
    Ok(())
}

/// Waits until `r` has printed the message `id` from `from`; checks its `via`.
fn receive(r: &mut Running, from: &str, sent: &Json, via: &str) -> Result<Json> {
    let id = sent["id"].clone();
    let m = r.wait_json(&format!("message {id} from {from}"), ARRIVAL, |v| {
        is_message_from(v, from) && v["id"] == id
    })?;
    ensure!(
        m["via"] == via,
        "message {id} from {from} came via {}, expected {via}: {m}",
        m["via"]
    );
    Ok(m)
}

/// After `r` exited: exactly `bodies` from `from`, in order, no duplicates, via `via` if given.
fn check_all_received(
    r: &Running,
    me: &str,
    from: &str,
    bodies: &[String],
    via: Option<&str>,
) -> Result<()> {
    let got: Vec<Json> = r
        .json_lines()
        .into_iter()
        .filter(|v| is_type(v, "message"))
        .collect();
    check_messages(&got, from, me, bodies, via)
        .with_context(|| format!("everything {me} received (exactly once, in order)"))
}

fn report(test: &str, what: &str, took: Duration, sent: &Json) {
    eprintln!(
        "[{test}] {what}: `send` took {} ms, status {}, path {}",
        took.as_millis(),
        sent["status"],
        sent["path"]
    );
}

/// Case 1: c1 and c2 each behind its own plain MASQUERADE NAT. Neither can be dialed
/// unsolicited (the NATs filter), but both NATs keep one mapping per socket, so once the
/// directory introduces them and both send towards the other's observed address at the same
/// time, each NAT sees outbound traffic first and lets the other side's packets in: direct,
/// `punched`. The reverse direction then rides the same (or an equally punched) connection,
/// reaching c1 at its observed address: `punched` or `public`, never `lan`.
#[test]
fn case1_both_behind_plain_nats_are_punched() -> Result<()> {
    both_behind_plain_nats_are_punched("case1", false)
}

/// Case 1 with c1 and c2 on different nodes of a directory cluster: c2's node passes c1's
/// introduction to c2 through the other node, and the punch works the same.
#[test]
fn case1_across_two_directory_nodes() -> Result<()> {
    both_behind_plain_nats_are_punched("case1-nodes", true)
}

fn both_behind_plain_nats_are_punched(t: &'static str, two_nodes: bool) -> Result<()> {
    let mut topo = topology!(t);
    let r1 = topo.router("r1", Nat::Plain)?;
    let r2 = topo.router("r2", Nat::Plain)?;
    let h1 = topo.private_host("c1", &r1)?;
    let h2 = topo.private_host("c2", &r2)?;
    let s = match two_nodes {
        false => Scene::new(topo)?,
        true => match Scene::on_two_nodes(topo)? {
            Some(s) => s,
            None => return Ok(()),
        },
    };
    let mut c1 = s.listen("c1", &h1)?;
    let mut c2 = s.listen("c2", &h2)?;
    s.check_seen("c2", &h2, "c1", &h1, r1.wan)?;
    s.check_seen("c1", &h1, "c2", &h2, r2.wan)?;

    let (sent, took) = s.send("c1", &h1, "c2", "punch 0")?;
    report(t, "first direct delivery c1->c2", took, &sent);
    expect_direct(&sent, &["punched"], "c1->c2, both behind plain NATs")?;
    receive(&mut c2, "c1", &sent, "direct")?;

    let (back, took) = s.send("c2", &h2, "c1", "back 0")?;
    report(t, "c2->c1", took, &back);
    expect_direct(&back, &["punched", "public"], "c2->c1 after the punch")?;
    receive(&mut c1, "c2", &back, "direct")?;

    for i in 1..3 {
        let (sent, _) = s.send("c1", &h1, "c2", &format!("punch {i}"))?;
        expect_direct(&sent, &["punched", "public"], "c1->c2 on the punched link")?;
        let (back, _) = s.send("c2", &h2, "c1", &format!("back {i}"))?;
        expect_direct(&back, &["punched", "public"], "c2->c1 on the punched link")?;
    }
    c1.terminate()?;
    c2.terminate()?;
    check_all_received(&c2, "c2", "c1", &numbered("punch", 0..3), Some("direct"))?;
    check_all_received(&c1, "c1", "c2", &numbered("back", 0..3), Some("direct"))?;
    s.net.assert_no_panics()
}

/// Case 1b: short-lived senders. c3, behind a plain NAT and not running, sends to c2 (behind
/// another) five times in a row, each `peer send` a new process with a new port. Every one is
/// punched directly: c2 answers each introduction, since each comes from a new address (it
/// used to ignore a second one from the same name within a second, so every other send waited
/// out the direct timeout and went to the mailbox).
#[test]
fn case1b_short_lived_senders_are_punched_every_time() -> Result<()> {
    const T: &str = "case1b";
    let mut topo = topology!(T);
    let r1 = topo.router("r1", Nat::Plain)?;
    let r2 = topo.router("r2", Nat::Plain)?;
    let h3 = topo.private_host("c3", &r1)?;
    let h2 = topo.private_host("c2", &r2)?;
    let s = Scene::new(topo)?;
    let mut c2 = s.listen("c2", &h2)?;
    s.check_seen("c3", &h3, "c2", &h2, r2.wan)?;
    for i in 0..5 {
        let (sent, took) = s.send("c3", &h3, "c2", &format!("short {i}"))?;
        report(T, &format!("send {i} from a new process"), took, &sent);
        expect_direct(&sent, &["punched"], &format!("send {i} from a new process"))?;
        receive(&mut c2, "c3", &sent, "direct")?;
    }
    c2.terminate()?;
    check_all_received(&c2, "c2", "c3", &numbered("short", 0..5), Some("direct"))?;
    s.net.assert_no_panics()
}

/// Case 1c: case 1b without `--open`, the default. c3 is a stranger to c2 at first: its lookup
/// has no address and its message is a request through the mailbox, though both are online.
/// Once c2 accepts c3, each send from a new process is punched directly, introductions
/// included (the directory introduces only contacts, and c2 answers only contacts).
#[test]
fn case1c_a_contact_is_punched_and_a_stranger_goes_through_the_mailbox() -> Result<()> {
    const T: &str = "case1c";
    let mut topo = topology!(T);
    let r1 = topo.router("r1", Nat::Plain)?;
    let r2 = topo.router("r2", Nat::Plain)?;
    let h3 = topo.private_host("c3", &r1)?;
    let h2 = topo.private_host("c2", &r2)?;
    let mut s = Scene::new(topo)?;
    s.closed = true;
    let mut c2 = s.listen("c2", &h2)?;
    let seen = s.whois("c3", &h3, "c2")?;
    ensure!(
        seen["online"] == true && seen["observed_addr"].is_null(),
        "a stranger sees where c2 is: {seen}"
    );
    let (sent, took) = s.send("c3", &h3, "c2", "short 0")?;
    report(T, "send 0 as a stranger", took, &sent);
    ensure!(
        sent["status"] == "queued",
        "a stranger's message went direct: {sent}"
    );
    let request = receive(&mut c2, "c3", &sent, "mailbox")?;
    ensure!(
        request["request"] == true,
        "not a message request: {request}"
    );
    let accepted = s
        .cmd("c2", &h2)
        .json()
        .args(["accept", "c3"])
        .run(SHORT)?
        .success()?
        .one_of_type("contact")?;
    ensure!(accepted["standing"] == "accepted", "{accepted}");
    s.check_seen("c3", &h3, "c2", &h2, r2.wan)?;
    for i in 1..4 {
        let (sent, took) = s.send("c3", &h3, "c2", &format!("short {i}"))?;
        report(T, &format!("send {i} as a contact"), took, &sent);
        expect_direct(&sent, &["punched"], &format!("send {i} as a contact"))?;
        receive(&mut c2, "c3", &sent, "direct")?;
    }
    c2.terminate()?;
    s.net.assert_no_panics()
}

/// Case 2: c1 behind a plain NAT, c2 on the public segment. c1's plain dial to c2's public
/// address works at once: `public`. c2 → c1 is direct as well: it either reuses that
/// connection or dials c1's observed address (open towards c2 since c1 sent there) or gets
/// punched: `public` or `punched`.
#[test]
fn case2_plain_nat_to_public_peer_is_direct() -> Result<()> {
    natted_to_public_is_direct(
        "case2",
        Nat::Plain,
        "c2->c1",
        "c2 (public) -> c1 (plain NAT)",
    )
}

/// Case 3a: c1 behind a symmetric NAT (`--random-fully`), c2 public. Expected: direct both ways.
/// c1 → c2: c1 dials out to c2's public address; the new mapping its NAT picks for that
/// destination does not matter, c2 answers to whatever source it sees: `public`.
/// c2 → c1: c2 cannot dial c1's observed address (that mapping belongs to c1's flow to the
/// directory and only the directory may use it), but the connection c1 opened is still up and
/// is reused in the other direction: direct. Its remote address on c2's side is c1's mapping
/// towards c2, neither c1's observed nor a LAN address, so the label is `public` or `punched`.
#[test]
fn case3_symmetric_nat_to_public_peer_is_direct() -> Result<()> {
    natted_to_public_is_direct(
        "case3_public",
        Nat::Symmetric,
        "c2->c1 (reusing c1's connection)",
        "c2 -> c1 while c1's connection is up",
    )
}

/// Cases 2 and 3a: c1 behind a NAT of kind `nat`, c2 on the public segment. One message each
/// way: c1 -> c2 must be direct on `public`, c2 -> c1 direct on `public` or `punched`
/// (`back_step` and `back_case` name that second step in the report and in a failure).
fn natted_to_public_is_direct(t: &str, nat: Nat, back_step: &str, back_case: &str) -> Result<()> {
    let mut topo = topology!(t);
    let r1 = topo.router("r1", nat)?;
    let h1 = topo.private_host("c1", &r1)?;
    let h2 = topo.public_host("c2")?;
    let s = Scene::new(topo)?;
    let mut c1 = s.listen("c1", &h1)?;
    let mut c2 = s.listen("c2", &h2)?;
    s.check_seen("c2", &h2, "c1", &h1, r1.wan)?;
    s.check_seen("c1", &h1, "c2", &h2, h2.ip)?;

    let (sent, took) = s.send("c1", &h1, "c2", "out 0")?;
    report(t, "first direct delivery c1->c2", took, &sent);
    let nat_name = match nat {
        Nat::Plain => "plain",
        Nat::Symmetric => "symmetric",
    };
    expect_direct(
        &sent,
        &["public"],
        &format!("c1 ({nat_name} NAT) -> c2 (public)"),
    )?;
    receive(&mut c2, "c1", &sent, "direct")?;

    let (back, took) = s.send("c2", &h2, "c1", "in 0")?;
    report(t, back_step, took, &back);
    expect_direct(&back, &["public", "punched"], back_case)?;
    receive(&mut c1, "c2", &back, "direct")?;

    c1.terminate()?;
    c2.terminate()?;
    check_all_received(&c2, "c2", "c1", &numbered("out", 0..1), Some("direct"))?;
    check_all_received(&c1, "c1", "c2", &numbered("in", 0..1), Some("direct"))?;
    s.net.assert_no_panics()
}

/// Case 3b: c1 behind a symmetric NAT, c2 behind a plain NAT. Expected: NO direct path, the
/// mailbox delivers each message exactly once (what `topology_symmetric_nat_defeats_punching`
/// shows with raw UDP on the same NATs):
/// - c2's packets go to c1's observed address, i.e. the port c1's NAT chose towards the
///   directory; that mapping only accepts the directory's address and port, so they are dropped;
/// - c1's packets towards c2's observed address leave c1's NAT from a new random port; c2's
///   NAT only lets in replies from the exact address and port c2 sent to (c1's observed one),
///   so they are dropped too; and c2 never learns the new port, since nothing of c1 reaches it.
///
/// Both directions end `queued` within the direct timeout and arrive `via: mailbox` (both are
/// listening, so the directory pushes at once).
#[test]
fn case3_symmetric_nat_to_plain_nat_falls_back_to_mailbox() -> Result<()> {
    const T: &str = "case3_plain";
    let mut topo = topology!(T);
    let r1 = topo.router("r1", Nat::Symmetric)?;
    let r2 = topo.router("r2", Nat::Plain)?;
    let h1 = topo.private_host("c1", &r1)?;
    let h2 = topo.private_host("c2", &r2)?;
    let mut s = Scene::new(topo)?;
    s.direct_timeout = Some(2.0);
    let mut c1 = s.listen("c1", &h1)?;
    let mut c2 = s.listen("c2", &h2)?;

    let (sent, took) = s.send("c1", &h1, "c2", "out 0")?;
    report(T, "c1->c2 (no direct path expected)", took, &sent);
    expect_queued(&sent, "c1 (symmetric) -> c2 (plain NAT)")?;
    ensure!(
        took < Duration::from_secs(8),
        "send took {took:?} with --direct-timeout 2"
    );
    receive(&mut c2, "c1", &sent, "mailbox")?;

    let (back, took) = s.send("c2", &h2, "c1", "in 0")?;
    report(T, "c2->c1 (no direct path expected)", took, &back);
    expect_queued(&back, "c2 (plain NAT) -> c1 (symmetric)")?;
    receive(&mut c1, "c2", &back, "mailbox")?;

    c1.terminate()?;
    c2.terminate()?;
    check_all_received(&c2, "c2", "c1", &numbered("out", 0..1), Some("mailbox"))?;
    check_all_received(&c1, "c1", "c2", &numbered("in", 0..1), Some("mailbox"))?;
    s.net.assert_no_panics()
}

/// Case 4: both behind symmetric NATs: no direct path can exist (each NAT only admits the exact
/// address and port its host sent to, and each host's packets to the other leave from a port
/// nobody announced). Ten messages c1 → c2 are all `queued`, and c2 (listening) receives each
/// exactly once, in order, via the mailbox push.
#[test]
fn case4_both_symmetric_use_the_mailbox() -> Result<()> {
    const T: &str = "case4";
    const N: usize = 10;
    let mut topo = topology!(T);
    let r1 = topo.router("r1", Nat::Symmetric)?;
    let r2 = topo.router("r2", Nat::Symmetric)?;
    let h1 = topo.private_host("c1", &r1)?;
    let h2 = topo.private_host("c2", &r2)?;
    let mut s = Scene::new(topo)?;
    s.direct_timeout = Some(2.0);
    let mut c1 = s.listen("c1", &h1)?;
    let mut c2 = s.listen("c2", &h2)?;

    let bodies = numbered("via mailbox", 0..N);
    let started = Instant::now();
    for (i, b) in bodies.iter().enumerate() {
        let (sent, took) = s.send("c1", &h1, "c2", b)?;
        if i == 0 {
            report(T, "c1->c2 #0 (no direct path expected)", took, &sent);
        }
        expect_queued(&sent, &format!("message {i}, both behind symmetric NATs"))?;
    }
    eprintln!(
        "[{T}] {N} sends took {} ms in all",
        started.elapsed().as_millis()
    );
    c2.wait_json_n(
        &format!("{N} messages from c1"),
        N,
        Duration::from_secs(60),
        |v| is_message_from(v, "c1"),
    )?;
    c2.terminate()?;
    c1.terminate()?;
    check_all_received(&c2, "c2", "c1", &bodies, Some("mailbox"))?;
    s.net.assert_no_panics()
}

/// Case 5: c1 and c2 on the same private LAN behind one NAT. Their observed addresses are both
/// the router's WAN address, which does not hairpin; their LAN addresses (listen addresses, not
/// observed) reach each other directly: `lan`, both ways.
#[test]
fn case5_same_lan_is_direct_over_lan_addresses() -> Result<()> {
    const T: &str = "case5";
    let mut topo = topology!(T);
    let r = topo.router("r", Nat::Plain)?;
    let h1 = topo.private_host("c1", &r)?;
    let h2 = topo.private_host("c2", &r)?;
    let s = Scene::new(topo)?;
    let mut c1 = s.listen("c1", &h1)?;
    let mut c2 = s.listen("c2", &h2)?;
    s.check_seen("c1", &h1, "c2", &h2, r.wan)?;

    let (sent, took) = s.send("c1", &h1, "c2", "lan 0")?;
    report(T, "first direct delivery c1->c2", took, &sent);
    expect_direct(&sent, &["lan"], "c1 -> c2 on the same LAN")?;
    receive(&mut c2, "c1", &sent, "direct")?;

    let (back, took) = s.send("c2", &h2, "c1", "lan back 0")?;
    report(T, "c2->c1", took, &back);
    expect_direct(&back, &["lan"], "c2 -> c1 on the same LAN")?;
    receive(&mut c1, "c2", &back, "direct")?;

    c1.terminate()?;
    c2.terminate()?;
    check_all_received(&c2, "c2", "c1", &numbered("lan", 0..1), Some("direct"))?;
    check_all_received(&c1, "c1", "c2", &numbered("lan back", 0..1), Some("direct"))?;
    s.net.assert_no_panics()
}

/// Case 6: c1 and c2 behind plain NATs with a punched link; then both routers forget every
/// mapping (`conntrack -F`) in the middle of the conversation. Ten more messages each way: each
/// `send` is `delivered` (re-punched, or the old connection's packets recreate the mappings)
/// or `queued` (mailbox); every message arrives exactly once, in order, nothing lost.
#[test]
fn case6_conntrack_flush_loses_nothing() -> Result<()> {
    const T: &str = "case6";
    const BEFORE: usize = 3;
    const AFTER: usize = 10;
    let mut topo = topology!(T);
    let r1 = topo.router("r1", Nat::Plain)?;
    let r2 = topo.router("r2", Nat::Plain)?;
    let h1 = topo.private_host("c1", &r1)?;
    let h2 = topo.private_host("c2", &r2)?;
    let s = Scene::new(topo)?;
    let mut c1 = s.listen("c1", &h1)?;
    let mut c2 = s.listen("c2", &h2)?;

    let out = numbered("c1 says", 0..BEFORE + AFTER);
    let back = numbered("c2 says", 0..BEFORE + AFTER);
    for i in 0..BEFORE {
        let (sent, took) = s.send("c1", &h1, "c2", &out[i])?;
        if i == 0 {
            report(T, "first direct delivery c1->c2", took, &sent);
            expect_direct(&sent, &["punched"], "c1->c2, both behind plain NATs")?;
        } else {
            expect_direct(&sent, &["punched", "public"], "c1->c2 on the punched link")?;
        }
        let (b, _) = s.send("c2", &h2, "c1", &back[i])?;
        expect_direct(&b, &["punched", "public"], "c2->c1 on the punched link")?;
    }

    s.topo.flush_conntrack(&r1)?;
    s.topo.flush_conntrack(&r2)?;
    eprintln!("[{T}] conntrack flushed on both routers");

    let mut paths = Vec::new();
    for i in BEFORE..BEFORE + AFTER {
        let (sent, took) = s.send("c1", &h1, "c2", &out[i])?;
        ensure!(
            sent["status"] == "delivered" || sent["status"] == "queued",
            "c1->c2 after the flush: {sent}"
        );
        paths.push(format!(
            "c1->c2 #{i}: {} {} {} ms",
            sent["status"],
            sent["path"],
            took.as_millis()
        ));
        let (b, took) = s.send("c2", &h2, "c1", &back[i])?;
        ensure!(
            b["status"] == "delivered" || b["status"] == "queued",
            "c2->c1 after the flush: {b}"
        );
        paths.push(format!(
            "c2->c1 #{i}: {} {} {} ms",
            b["status"],
            b["path"],
            took.as_millis()
        ));
    }
    eprintln!("[{T}] after the flush:\n  {}", paths.join("\n  "));

    let n = BEFORE + AFTER;
    c2.wait_json_n(&format!("{n} messages from c1"), n, ARRIVAL * 3, |v| {
        is_message_from(v, "c1")
    })?;
    c1.wait_json_n(&format!("{n} messages from c2"), n, ARRIVAL * 3, |v| {
        is_message_from(v, "c2")
    })?;
    c1.terminate()?;
    c2.terminate()?;
    check_all_received(&c2, "c2", "c1", &out, None)?;
    check_all_received(&c1, "c1", "c2", &back, None)?;
    s.net.assert_no_panics()
}

//! Reaching a peer directly, across NATs where they allow it.
//!
//! To reach c2, c1 dials every address the directory knows for it at once: the address the
//! directory observes (c2's public side, through its NAT) and the addresses c2 listens on (its
//! LAN). If nothing answers within [`PUNCH_DELAY`], c1 asks the directory to introduce it: the
//! directory sends c2 c1's observed and listen addresses and key, and c2 dials them from the one
//! socket it also uses for the directory. Each side's outgoing packets open its own NAT for the
//! other's, so whichever handshake completes first, c1's dial or c2's, becomes the link
//! (simultaneous open, as in RFC 8445's connectivity checks and libp2p's DCUtR). Every dial
//! accepts only the key the directory holds for the name, so a wrong address can waste a
//! packet but never reach the wrong peer; and declared listen addresses are dialed only when a
//! LAN could hold them ([`plausible`]), so a peer cannot aim others' packets at arbitrary hosts.
//!
//! What it cannot do: two NATs that both pick a new port per destination (symmetric) leave no
//! address to aim at; then messages go through the directory's mailbox.
//!
//! The decisions of one attempt (when to introduce, who won, what to report) are [`race`]'s, a
//! state machine with no I/O; [`Dialer`] does the dialing and answers introductions.

use crate::{
    accept::Acceptor,
    contacts::{Contacts, Verdict},
    directory_client::{DirectoryClient, Introduction},
    links::{DirectPath, Links},
};
use anyhow::{anyhow, bail, Context, Result};
use common::{
    admit::{self, Buckets},
    defaults::ALPN_PEER,
    tls::{self, Expect},
    wire::PeerInfo,
    Identity, KeyId, Name,
};
use futures::{future::FusedFuture as _, stream::FuturesUnordered, FutureExt, StreamExt as _};
use std::{
    collections::HashSet,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::time::Instant;
use tracing::{debug, info};

pub mod race;

pub use race::PUNCH_DELAY;
use race::{Action, Input, Outcome, Race, Winner};

/// Delay between starting dials to successive candidate addresses.
pub const DIAL_STAGGER: Duration = Duration::from_millis(25);

/// Everything needed to make and keep direct links.
pub struct Dialer {
    /// Our identity, presented on every dial.
    pub identity: Arc<Identity>,
    /// Our one endpoint.
    pub endpoint: quinn::Endpoint,
    /// The directory, for lookups and introductions.
    pub directory: DirectoryClient,
    /// Serves the streams the remote opens on links we make.
    pub acceptor: Acceptor,
    /// Live links.
    pub links: Arc<Links>,
    /// Bound on a direct dial plus delivery.
    pub direct_timeout: Duration,
    /// When we last answered an introduction from each peer at each address (see
    /// [`Dialer::answer`]).
    pub answered: std::sync::Mutex<std::collections::HashMap<(Name, Option<SocketAddr>), Instant>>,
    /// Who we answer introductions from: contacts only.
    pub contacts: Contacts,
    /// Introductions answered, from anyone: [`ANSWERS_PER_SECOND`], [`ANSWERS_BURST`] at once.
    pub answers: Buckets<()>,
}

/// Introductions a peer answers per second in all, whoever they are from: each makes it send
/// handshakes to addresses it was given, so a bound on them bounds what it can be made to send.
pub const ANSWERS_PER_SECOND: u32 = 10;
/// Introductions answered at once, from a full budget.
pub const ANSWERS_BURST: u32 = 30;

/// The budget of answers a new [`Dialer`] starts with.
pub fn answer_budget() -> Buckets<()> {
    Buckets::new(admit::per_second(ANSWERS_PER_SECOND, ANSWERS_BURST))
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Sleeps until `at`; forever when there is no such time.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Least time between two answers to introductions from the same peer. A peer asks again only
/// when a link stalls; more often is a peer trying to make us send packets for it.
pub const ANSWER_GAP: Duration = Duration::from_secs(1);

impl Dialer {
    /// A direct link to the peer `info` describes, made by `deadline`; `None` when no direct
    /// path came up.
    pub async fn connect(
        &self,
        info: &PeerInfo,
        deadline: Instant,
    ) -> Option<(quinn::Connection, DirectPath)> {
        if let Some(link) = self.links.get(&info.name) {
            return Some(link);
        }
        let candidates = self.candidates(info.observed_addr, &info.listen_addrs);
        if candidates.is_empty() {
            debug!("no address to dial");
            return None;
        }
        self.links.expect(info.key, info.name.clone());
        let result = self.race(info, &candidates, deadline).await;
        self.links.unexpect(&info.key);
        result
    }

    /// Drives one [`Race`]: dials, introduces when it says so, and takes the first link to
    /// come up either way.
    async fn race(
        &self,
        info: &PeerInfo,
        candidates: &[SocketAddr],
        deadline: Instant,
    ) -> Option<(quinn::Connection, DirectPath)> {
        let mut race = Race::new(info.clone(), now(), deadline.into_std());
        let mut dial = self.dial(&info.name, info.key, candidates).fuse();
        let mut dialed = None;
        loop {
            while let Some(action) = race.poll_action() {
                match action {
                    Action::Introduce => {
                        let (directory, name) = (self.directory.clone(), info.name.clone());
                        self.acceptor.tasks.spawn(async move {
                            if let Err(e) = directory.introduce(&name).await {
                                debug!(cause = %e, "no introduction");
                            }
                        });
                    }
                    Action::Done(outcome) => {
                        if !dial.is_terminated() {
                            self.finish_dial(info.name.clone(), dial);
                        }
                        return self.conclude(info, outcome, dialed);
                    }
                }
            }
            let changed = self.links.changed();
            if let Some((_, path)) = self.links.get(&info.name) {
                // The peer dialed us (answering our introduction).
                race.handle(Input::Accepted(path), now());
                continue;
            }
            let wake = race.poll_timeout();
            tokio::select! {
                result = &mut dial, if race.dialing() => match result {
                    Ok((conn, addr)) => {
                        dialed = Some(conn);
                        race.handle(Input::Dialed(addr), now());
                    }
                    Err(e) => {
                        debug!(cause = %format!("{e:#}"), "dial failed");
                        race.handle(Input::DialFailed, now());
                    }
                },
                _ = changed => {}
                _ = sleep_until(wake) => race.handle_timeout(now()),
            }
        }
    }

    /// Lets a dial the race no longer waits for complete, and serves the connection it makes:
    /// the remote completes its side of a handshake first, and when both of us dialed at once
    /// it may have taken that connection as its link. Dropping it mid-handshake would close
    /// the link the remote sends on.
    fn finish_dial(&self, name: Name, dial: impl Future<Output = DialResult> + Send + 'static) {
        let acceptor = self.acceptor.clone();
        self.acceptor.tasks.spawn(async move {
            if let Ok((conn, _)) = dial.await {
                debug!(peer = %name, "a dial that lost the race completed; serving it");
                acceptor.adopt(name, conn);
            }
        });
    }

    /// The link a race ended with, adopted if we dialed it; its report goes to the directory.
    fn conclude(
        &self,
        info: &PeerInfo,
        outcome: Outcome,
        dialed: Option<quinn::Connection>,
    ) -> Option<(quinn::Connection, DirectPath)> {
        if let Some((success, millis)) = outcome.report {
            self.directory.report_punch(&info.name, success, millis);
            info!(success, after_ms = millis, "hole punching");
        }
        match (outcome.link?, dialed) {
            ((Winner::Us, path), Some(conn)) => Some(self.adopt(info.name.clone(), conn, path)),
            (_, Some(conn)) => {
                // The peer's connection came first here, but when both of us dialed at once
                // the peer may have taken ours as its link, its own having lost there.
                // Dropping ours would close the connection it sends on, so it is served too.
                self.acceptor.adopt(info.name.clone(), conn);
                self.links.get(&info.name)
            }
            _ => self.links.get(&info.name),
        }
    }

    /// Answers an introduction: dials the peer that is dialing us, so both NATs open. We dial
    /// even when a link exists: the peer asks again when that link stalls, and our packets
    /// from this socket are what reopen our NAT for it.
    pub async fn answer(&self, intro: Introduction) {
        if self.contacts.verdict(&intro.name) != Verdict::Contact {
            debug!(peer = %intro.name, "introduction ignored: not a contact");
            return;
        }
        if !matches!(
            self.contacts.check_key(&intro.name, intro.key),
            Ok(crate::contacts::KeyCheck::Known)
        ) {
            debug!(peer = %intro.name, "introduction ignored: not the key remembered");
            return;
        }
        if !self.answers.check(&()) {
            debug!(peer = %intro.name, "introduction ignored: answered too many just before");
            return;
        }
        {
            // Keyed by the peer's address too: the same name from a new address is a new
            // process (a short command run again), which must not wait out the gap.
            let key = (intro.name.clone(), intro.addrs.first().copied());
            let mut answered = self.answered.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if answered.get(&key).is_some_and(|t| now < *t + ANSWER_GAP) {
                debug!(peer = %intro.name, "introduction ignored: answered one just before");
                return;
            }
            answered.retain(|_, t| now < *t + ANSWER_GAP);
            answered.insert(key, now);
        }
        let candidates = self.candidates(intro.addrs.first().copied(), &intro.addrs);
        let deadline = Instant::now() + self.direct_timeout;
        let dial = self.dial(&intro.name, intro.key, &candidates);
        match tokio::time::timeout_at(deadline, dial).await {
            Ok(Ok((conn, _))) => {
                debug!(peer = %intro.name, remote = %conn.remote_address(), "punched through");
                self.adopt(intro.name, conn, DirectPath::Punched);
            }
            Ok(Err(e)) => {
                debug!(peer = %intro.name, cause = %format!("{e:#}"), "answering an introduction failed")
            }
            Err(_) => debug!(peer = %intro.name, "answering an introduction timed out"),
        }
    }

    /// Records a new link and serves the streams the remote opens on it.
    pub fn adopt(
        &self,
        name: Name,
        conn: quinn::Connection,
        path: DirectPath,
    ) -> (quinn::Connection, DirectPath) {
        self.links.insert(name.clone(), conn.clone(), path);
        let link = self.links.get(&name).unwrap_or((conn.clone(), path));
        self.acceptor.adopt(name, conn);
        link
    }

    /// The addresses worth dialing: observed first, then the listen addresses that pass
    /// [`plausible`], of our family, each once.
    fn candidates(&self, observed: Option<SocketAddr>, listen: &[SocketAddr]) -> Vec<SocketAddr> {
        let v4 = self
            .endpoint
            .local_addr()
            .map(|a| a.is_ipv4())
            .unwrap_or(true);
        candidates(self.directory.observed_addr(), observed, listen, v4)
    }

    /// Dials every candidate, accepting only `key`; the first handshake wins. Runs until one
    /// succeeds or all fail (QUIC retransmits its handshake meanwhile, which is what lets a
    /// punch that opens late still succeed). The future owns what it needs, so that a caller
    /// that stops waiting can let it finish ([`Dialer::finish_dial`]).
    fn dial(
        &self,
        name: &Name,
        key: KeyId,
        candidates: &[SocketAddr],
    ) -> futures::future::BoxFuture<'static, DialResult> {
        let config = match tls::client_config(&self.identity, ALPN_PEER, Expect::Key(key)) {
            Ok(config) => config,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        // Set once a handshake has won: candidates still waiting their turn do not start.
        let won = Arc::new(AtomicBool::new(false));
        // Staggered, as in Happy Eyeballs (RFC 8305): a candidate that answers within
        // DIAL_STAGGER spares the others a handshake, which on a small machine is most of the
        // cost of a first message; one that does not costs the next only DIAL_STAGGER.
        let mut attempts: FuturesUnordered<_> = candidates
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let (endpoint, config, won) = (self.endpoint.clone(), config.clone(), won.clone());
                async move {
                    // Not even a zero sleep for the first: tokio's timer rounds up to its next
                    // millisecond tick, which would be a third of a first message's time.
                    if i > 0 {
                        tokio::time::sleep(DIAL_STAGGER * i as u32).await;
                        if won.load(Ordering::Relaxed) {
                            bail!("another address answered first");
                        }
                    }
                    let conn = endpoint
                        .connect_with(config, addr, "peer")?
                        .await
                        .with_context(|| format!("dialing {addr}"))?;
                    Ok::<_, anyhow::Error>((conn, addr))
                }
            })
            .collect();
        let (acceptor, name) = (self.acceptor.clone(), name.clone());
        async move {
            let mut failed = None;
            while let Some(attempt) = attempts.next().await {
                match attempt {
                    Ok(first) => {
                        won.store(true, Ordering::Relaxed);
                        // Handshakes under way go on, and what they make is served, as for a
                        // dial that lost the race (Dialer::finish_dial): the remote may have
                        // taken one of them as its link.
                        if !attempts.is_empty() {
                            let tasks = acceptor.tasks.clone();
                            tasks.spawn(async move {
                                while let Some(attempt) = attempts.next().await {
                                    if let Ok((conn, _)) = attempt {
                                        acceptor.adopt(name.clone(), conn);
                                    }
                                }
                            });
                        }
                        return Ok(first);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            Err(failed.unwrap_or_else(|| anyhow!("no address could be dialed")))
        }
        .boxed()
    }
}

/// What a dial ends with: a connection and the address that answered.
type DialResult = Result<(quinn::Connection, SocketAddr)>;

/// Most addresses dialed for one peer: its observed address and a few on its LAN. Every one
/// is a handshake sent on the word of a peer (or of whoever asked for an introduction).
pub const MAX_CANDIDATES: usize = 4;

/// The addresses worth dialing for a peer whose address the directory observes as `observed`
/// and that declares `listen`, when the directory observes us as `ours`: observed first, then
/// at most [`MAX_CANDIDATES`] in all, each once, of our address family (`v4`). A declared
/// listen address is dialed only when it passes [`plausible`] and the peer is behind the same
/// public address as we are (the same NAT, or the same host): only then can its LAN be ours,
/// and a peer elsewhere cannot aim our packets at hosts on our own network.
pub fn candidates(
    ours: Option<SocketAddr>,
    observed: Option<SocketAddr>,
    listen: &[SocketAddr],
    v4: bool,
) -> Vec<SocketAddr> {
    let same_network = matches!((ours, observed), (Some(a), Some(b)) if a.ip() == b.ip());
    let mut seen = HashSet::new();
    observed
        .into_iter()
        .chain(listen.iter().copied().filter(|a| {
            plausible(*a, observed) && (same_network || observed.is_some_and(|o| o.ip() == a.ip()))
        }))
        .filter(|a| a.is_ipv4() == v4 && !a.ip().is_unspecified() && a.port() != 0)
        .filter(|a| seen.insert(*a))
        .take(MAX_CANDIDATES)
        .collect()
}

/// Whether a listen address a peer declares is worth a packet. The observed address is the
/// directory's to vouch for; listen addresses are only the peer's word, and a hostile peer
/// could name any host to make others send it handshakes. So only addresses a LAN can hold
/// are dialed (private, shared, link-local, benchmarking and unique-local ranges), loopback only
/// when the peer is on our loopback too, and a public address only on the observed host.
pub fn plausible(listen: SocketAddr, observed: Option<SocketAddr>) -> bool {
    let ip = listen.ip();
    if observed.is_some_and(|o| o.ip() == ip) {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                return observed.is_some_and(|o| o.ip().is_loopback());
            }
            v4.is_private()
                || v4.is_link_local()
                || (a == 100 && (64..128).contains(&b)) // shared address space, RFC 6598
                || (a == 198 && (18..20).contains(&b)) // benchmarking, RFC 2544
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                return observed.is_some_and(|o| o.ip().is_loopback());
            }
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 // unique local, RFC 4193
                || (first & 0xffc0) == 0xfe80 // link-local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_addresses_are_dialed_only_behind_the_same_public_address_and_few() {
        let a = |s: &str| -> SocketAddr { s.parse().expect("addr") };
        let lan = [a("192.168.1.4:5"), a("10.0.0.9:5")];
        let peer = Some(a("203.0.113.7:4000"));
        // Behind the same NAT as we are: its LAN is ours.
        let same = candidates(Some(a("203.0.113.7:5000")), peer, &lan, true);
        assert_eq!(same, [a("203.0.113.7:4000"), lan[0], lan[1]]);
        // Elsewhere: only the address the directory vouches for.
        let elsewhere = candidates(Some(a("198.51.100.1:5000")), peer, &lan, true);
        assert_eq!(elsewhere, [a("203.0.113.7:4000")]);
        // Never more than a few, however many it declares.
        let many: Vec<SocketAddr> = (1..50).map(|i| a(&format!("10.0.0.{i}:5"))).collect();
        let capped = candidates(Some(a("203.0.113.7:5000")), peer, &many, true);
        assert_eq!(capped.len(), MAX_CANDIDATES);
        assert_eq!(capped[0], a("203.0.113.7:4000"));
    }

    #[test]
    fn only_listen_addresses_a_lan_could_hold_are_dialed() {
        let a = |s: &str| -> SocketAddr { s.parse().expect("addr") };
        let observed = Some(a("203.0.113.7:4000"));
        for lan in [
            "10.1.2.3:5",
            "172.16.0.9:5",
            "192.168.1.4:5",
            "169.254.3.3:5",
            "100.64.0.1:5",
            "198.19.1.2:5",
            "[fd00::1]:5",
            "[fe80::1]:5",
            "203.0.113.7:5000",
        ] {
            assert!(
                plausible(a(lan), observed),
                "{lan} is a LAN or the same host"
            );
        }
        for elsewhere in [
            "8.8.8.8:53",
            "203.0.113.8:4000",
            "127.0.0.1:22",
            "[2001:db8::1]:5",
        ] {
            assert!(
                !plausible(a(elsewhere), observed),
                "{elsewhere} is someone else"
            );
        }
        // Loopback only between peers on one host.
        assert!(plausible(a("127.0.0.1:9"), Some(a("127.0.0.1:4000"))));
        assert!(!plausible(a("127.0.0.1:9"), None));
    }
}

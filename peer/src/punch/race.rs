//! One attempt to reach a peer directly, as a state machine with no I/O: the dial to its
//! addresses races the introduction that makes it dial us back. The driver
//! ([`super::Dialer::connect`]) feeds it what happened with the time and does what it asks;
//! every rule is a plain test in simulated time.
//!
//! The rules:
//! * The dial starts at once. A LAN or public peer answers within a round trip.
//! * If no handshake completed after [`PUNCH_DELAY`], ask the directory to introduce us, once:
//!   the peer then dials us too, and each side's packets open its own NAT to the other.
//! * The first link to come up wins: our dial, or the peer's dial accepted by us.
//! * When our dial fails before any introduction, there is no path; after an introduction,
//!   the peer may still reach us, so wait for the deadline.
//! * At the deadline, there is no path.
//! * When an introduction was asked for, its outcome is reported to the directory: whether the
//!   link came by punching, and how long after the introduction.

use crate::links::DirectPath;
use common::wire::PeerInfo;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

/// How long a plain dial may take before we ask the directory for an introduction. A LAN or
/// public peer answers within a round trip; waiting longer only delays the punch.
pub const PUNCH_DELAY: Duration = Duration::from_millis(250);

/// What happened, for [`Race::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Our dial completed a handshake with this address.
    Dialed(SocketAddr),
    /// Every address of our dial failed.
    DialFailed,
    /// The peer dialed us and we accepted it (a link it made answering our introduction).
    Accepted(DirectPath),
}

/// What the driver should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask the directory to introduce us to the peer; nothing to answer.
    Introduce,
    /// The race is over.
    Done(Outcome),
}

/// How the race ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The link and how it came about: won by our dial, by the peer's, or none.
    pub link: Option<(Winner, DirectPath)>,
    /// For the directory, when it introduced us: (punched, ms since the introduction).
    pub report: Option<(bool, u32)>,
}

/// Whose dial made the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    /// Ours: the driver adopts the connection it dialed.
    Us,
    /// The peer's: the connection is already among the links.
    Them,
}

/// One race; see the module docs.
#[derive(Debug)]
pub struct Race {
    info: PeerInfo,
    started: Instant,
    deadline: Instant,
    introduced: Option<Instant>,
    dial_failed: bool,
    done: bool,
    action: Option<Action>,
}

impl Race {
    /// A race to the peer `info` describes, started at `now`, given up at `deadline`.
    pub fn new(info: PeerInfo, now: Instant, deadline: Instant) -> Self {
        Self {
            info,
            started: now,
            deadline,
            introduced: None,
            dial_failed: false,
            done: false,
            action: None,
        }
    }

    /// Takes what happened at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) {
        if self.done {
            return;
        }
        match input {
            Input::Dialed(addr) => {
                let path = DirectPath::classify(addr, &self.info, self.introduced.is_some());
                self.finish(Some((Winner::Us, path)), now);
            }
            Input::Accepted(path) => self.finish(Some((Winner::Them, path)), now),
            Input::DialFailed => {
                self.dial_failed = true;
                if self.introduced.is_none() {
                    self.finish(None, now);
                }
            }
        }
    }

    /// Takes the passing of time: the introduction, then the deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if now >= self.deadline {
            self.finish(None, now);
        } else if self.introduced.is_none() && now >= self.started + PUNCH_DELAY {
            self.introduced = Some(now);
            self.action = Some(Action::Introduce);
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.action.take()
    }

    /// When [`Race::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        Some(match self.introduced {
            None => (self.started + PUNCH_DELAY).min(self.deadline),
            Some(_) => self.deadline,
        })
    }

    /// True while our dial may still succeed (the driver keeps polling it).
    pub fn dialing(&self) -> bool {
        !self.done && !self.dial_failed
    }

    fn finish(&mut self, link: Option<(Winner, DirectPath)>, now: Instant) {
        let report = self.introduced.map(|at| {
            let punched = link.is_some_and(|(_, path)| path == DirectPath::Punched);
            let millis = now.saturating_duration_since(at).as_millis();
            (punched, millis.min(u32::MAX as u128) as u32)
        });
        self.done = true;
        self.action = Some(Action::Done(Outcome { link, report }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::{KeyId, Name};

    const DEADLINE: Duration = Duration::from_secs(3);

    fn natted() -> PeerInfo {
        PeerInfo {
            name: Name::new("c2").expect("name"),
            key: KeyId([0; 32]),
            online: true,
            last_seen_ms: None,
            observed_addr: Some(observed()),
            listen_addrs: vec![lan()],
            queued_from_you: 0,
            published: None,
        }
    }

    fn observed() -> SocketAddr {
        "198.18.0.11:4000".parse().expect("addr")
    }

    fn lan() -> SocketAddr {
        "198.19.1.2:5000".parse().expect("addr")
    }

    fn start() -> (Race, Instant) {
        let now = Instant::now();
        (Race::new(natted(), now, now + DEADLINE), now)
    }

    fn done(race: &mut Race) -> Outcome {
        match race.poll_action() {
            Some(Action::Done(outcome)) => outcome,
            other => panic!("expected the end, got {other:?}"),
        }
    }

    #[test]
    fn a_dial_answered_before_the_punch_delay_needs_no_introduction() {
        let (mut race, t0) = start();
        assert_eq!(race.poll_timeout(), Some(t0 + PUNCH_DELAY));
        race.handle(Input::Dialed(lan()), t0 + Duration::from_millis(3));
        let outcome = done(&mut race);
        assert_eq!(outcome.link, Some((Winner::Us, DirectPath::Lan)));
        assert_eq!(outcome.report, None, "nothing to report: no introduction");
        let (mut race, t0) = start();
        race.handle(Input::Dialed(observed()), t0 + Duration::from_millis(3));
        assert_eq!(done(&mut race).link, Some((Winner::Us, DirectPath::Public)));
    }

    #[test]
    fn a_silent_dial_asks_for_one_introduction_after_the_delay() {
        let (mut race, t0) = start();
        race.handle_timeout(t0 + PUNCH_DELAY - Duration::from_millis(1));
        assert_eq!(race.poll_action(), None);
        race.handle_timeout(t0 + PUNCH_DELAY);
        assert_eq!(race.poll_action(), Some(Action::Introduce));
        assert_eq!(race.poll_timeout(), Some(t0 + DEADLINE));
        race.handle_timeout(t0 + PUNCH_DELAY * 2);
        assert_eq!(race.poll_action(), None, "one introduction only");
        // The peer dials us back first: a punched link, reported as such.
        race.handle(
            Input::Accepted(DirectPath::Punched),
            t0 + PUNCH_DELAY + Duration::from_millis(40),
        );
        let outcome = done(&mut race);
        assert_eq!(outcome.link, Some((Winner::Them, DirectPath::Punched)));
        assert_eq!(outcome.report, Some((true, 40)));
    }

    #[test]
    fn our_dial_to_the_observed_address_after_an_introduction_is_punched() {
        let (mut race, t0) = start();
        race.handle_timeout(t0 + PUNCH_DELAY);
        race.poll_action();
        race.handle(Input::Dialed(observed()), t0 + PUNCH_DELAY * 2);
        let outcome = done(&mut race);
        assert_eq!(outcome.link, Some((Winner::Us, DirectPath::Punched)));
        assert_eq!(outcome.report, Some((true, 250)));
    }

    #[test]
    fn a_failed_dial_ends_the_race_unless_an_introduction_may_still_bring_the_peer() {
        let (mut race, t0) = start();
        race.handle(Input::DialFailed, t0 + Duration::from_millis(1));
        assert_eq!(
            done(&mut race),
            Outcome {
                link: None,
                report: None
            }
        );
        assert_eq!(race.poll_timeout(), None);

        let (mut race, t0) = start();
        race.handle_timeout(t0 + PUNCH_DELAY);
        race.poll_action();
        race.handle(Input::DialFailed, t0 + Duration::from_secs(1));
        assert_eq!(race.poll_action(), None, "the peer may still dial us");
        assert!(!race.dialing());
        race.handle_timeout(t0 + DEADLINE);
        let outcome = done(&mut race);
        assert_eq!(outcome.link, None);
        assert_eq!(outcome.report, Some((false, 2750)));
    }

    #[test]
    fn nothing_happens_after_the_end() {
        let (mut race, t0) = start();
        race.handle_timeout(t0 + DEADLINE);
        assert_eq!(done(&mut race).link, None);
        race.handle(Input::Dialed(lan()), t0 + DEADLINE);
        race.handle_timeout(t0 + DEADLINE * 2);
        assert_eq!(race.poll_action(), None);
    }
}

//! Which incoming connections the directory serves, decided from the first packet, before any
//! handshake: the global cap, a stateless Retry under load, then each host's cap and its token
//! bucket for new connections (a host is an IPv4 address or an IPv6 /64, see
//! [`common::admit`]). A decision is a plain function of the address, whether QUIC validated
//! it, and how many connections are open, so each rule has a unit test.
//!
//! The order matters. Under load, Retry comes before the host limits: it proves the address in
//! one round trip at no cost to us, so spoofed packets can neither take a victim's slots nor
//! empty its bucket. The cap per host is checked before the bucket, so that a host at its cap
//! does not also spend tokens on connections that would be refused anyway.

use common::{
    admit::{self, host, Buckets, Clock, DefaultClock, Slot, Slots},
    defaults,
};
use std::{net::IpAddr, time::Duration};

/// The directory's limits on connections beyond the global cap; every one has a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections one host may hold at once.
    pub per_ip: u32,
    /// New connections one host may open per second, sustained.
    pub new_per_second: u32,
    /// New connections one host may open at once.
    pub new_burst: u32,
    /// Longest a connection may take to register, handshake included.
    pub registration_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_ip: defaults::MAX_CONNECTIONS_PER_IP,
            new_per_second: defaults::NEW_CONNECTIONS_PER_SECOND,
            new_burst: defaults::NEW_CONNECTIONS_BURST,
            registration_timeout: defaults::REGISTRATION_TIMEOUT,
        }
    }
}

/// What to do with an incoming connection.
#[derive(Debug)]
pub enum Decision {
    /// Serve it; the slot is its host's, held until the connection ends.
    Accept(Slot),
    /// Ask the client to prove its address first (a stateless QUIC Retry).
    Retry,
    /// Refuse it, for this reason.
    Refuse(Refusal),
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The directory serves as many connections as it may (`--max-connections`).
    Full,
    /// The host holds as many connections as it may (`--max-connections-per-ip`).
    HostFull,
    /// The host opened new connections too fast (`--new-connections-per-second`).
    HostRate,
}

/// The admission state: connections held per host and each host's bucket.
pub struct Admission<C: Clock = DefaultClock> {
    max_connections: usize,
    slots: Slots,
    new: Buckets<IpAddr, C>,
}

impl Admission {
    /// Admission for a directory serving at most `max_connections`, with `limits`.
    pub fn new(max_connections: u32, limits: Limits) -> Self {
        Self::with_clock(max_connections, limits, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> Admission<C> {
    /// The same on `clock` (tests use a fake one).
    pub fn with_clock(max_connections: u32, limits: Limits, clock: &C) -> Self {
        let quota = admit::per_second(limits.new_per_second, limits.new_burst);
        Self {
            max_connections: max_connections as usize,
            slots: Slots::new(limits.per_ip),
            new: Buckets::with_clock(quota, clock),
        }
    }

    /// The decision for a connection from `ip` while `open` connections exist (handshakes
    /// included); `validated` says whether QUIC has proven the address (a Retry answered).
    pub fn decide(&self, ip: IpAddr, validated: bool, open: usize) -> Decision {
        if open >= self.max_connections {
            return Decision::Refuse(Refusal::Full);
        }
        if !validated && open * 100 >= self.max_connections * defaults::RETRY_ABOVE_LOAD_PERCENT {
            return Decision::Retry;
        }
        if self.slots.held(ip) >= self.slots.per_host() {
            return Decision::Refuse(Refusal::HostFull);
        }
        if !self.new.check(&host(ip)) {
            return Decision::Refuse(Refusal::HostRate);
        }
        match self.slots.take(ip) {
            Some(slot) => Decision::Accept(slot),
            None => Decision::Refuse(Refusal::HostFull),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::admit::FakeRelativeClock;

    fn limits(per_ip: u32, per_second: u32, burst: u32) -> Limits {
        Limits {
            per_ip,
            new_per_second: per_second,
            new_burst: burst,
            ..Limits::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn accepted(d: Decision) -> Slot {
        match d {
            Decision::Accept(slot) => slot,
            other => panic!("expected Accept, got {other:?}"),
        }
    }

    fn refused(d: Decision) -> Refusal {
        match d {
            Decision::Refuse(why) => why,
            other => panic!("expected Refuse, got {other:?}"),
        }
    }

    #[test]
    fn the_global_cap_refuses_even_validated_addresses() {
        let a = Admission::new(10, Limits::default());
        assert_eq!(refused(a.decide(ip(1), true, 10)), Refusal::Full);
        assert_eq!(refused(a.decide(ip(1), false, 11)), Refusal::Full);
    }

    #[test]
    fn above_half_the_cap_an_unvalidated_address_gets_a_retry_first() {
        let a = Admission::new(10, Limits::default());
        let _below = accepted(a.decide(ip(1), false, 4));
        assert!(matches!(a.decide(ip(1), false, 5), Decision::Retry));
        let _validated = accepted(a.decide(ip(1), true, 5));
    }

    #[test]
    fn a_host_holds_at_most_its_slots_until_one_ends() {
        let a = Admission::new(100, limits(2, 100, 100));
        let first = accepted(a.decide(ip(1), true, 0));
        let _second = accepted(a.decide(ip(1), true, 1));
        assert_eq!(refused(a.decide(ip(1), true, 2)), Refusal::HostFull);
        let _other_host = accepted(a.decide(ip(2), true, 2));
        drop(first);
        let _again = accepted(a.decide(ip(1), true, 2));
    }

    #[test]
    fn a_host_opens_its_burst_then_its_rate() {
        let clock = FakeRelativeClock::default();
        let a = Admission::with_clock(100, limits(100, 2, 3), &clock);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(accepted(a.decide(ip(1), true, held.len())));
        }
        assert_eq!(refused(a.decide(ip(1), true, 3)), Refusal::HostRate);
        let _other_host = accepted(a.decide(ip(2), true, 3));
        clock.advance(Duration::from_millis(500));
        let _later = accepted(a.decide(ip(1), true, 4));
    }

    #[test]
    fn a_host_at_its_cap_spends_no_tokens() {
        let clock = FakeRelativeClock::default();
        let a = Admission::with_clock(100, limits(1, 1, 2), &clock);
        let first = accepted(a.decide(ip(1), true, 0));
        for _ in 0..10 {
            assert_eq!(refused(a.decide(ip(1), true, 1)), Refusal::HostFull);
        }
        drop(first);
        let _second = accepted(a.decide(ip(1), true, 0));
    }
}

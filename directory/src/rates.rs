//! Token buckets for what a caller may ask of the directory at a rate: introductions, counted
//! per asking key, per asking host and per target, and new name bindings per host (a host is an
//! IPv4 address or an IPv6 /64, see [`common::admit::host`]).
//!
//! Each bucket holds a minute's (or, for bindings, an hour's) worth of tokens and refills at
//! that rate, so a peer that has been quiet may spend them all at once. Introductions are
//! counted three ways because each alone can be got around: a connection is cheap to open
//! again, a key cheap to make, and many hosts can aim at one target. The target's bucket is
//! spent last, only by asks that passed the asker's buckets, so an asker out of tokens cannot
//! drain a victim's budget as well.

use common::{
    admit::{host, Buckets, Clock, DefaultClock, Quota},
    defaults::{
        INTRODUCTIONS_PER_IP_PER_MINUTE, INTRODUCTIONS_PER_KEY_PER_MINUTE,
        INTRODUCTIONS_PER_TARGET_PER_MINUTE, LOOKUPS_PER_KEY_PER_MINUTE,
        NAME_BINDS_PER_IP_PER_HOUR,
    },
    KeyId, Name,
};
use std::{net::IpAddr, num::NonZeroU32};

/// The rates, each with a flag of the `directory` binary; each is at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// Introductions one key may ask for per minute.
    pub introductions_per_key: u32,
    /// Introductions one host may ask for per minute, whatever its keys.
    pub introductions_per_ip: u32,
    /// Introductions one peer may be sent per minute, whoever asks.
    pub introductions_per_target: u32,
    /// New names one host may bind per hour.
    pub name_binds_per_ip: u32,
    /// Lookups one key may make per minute.
    pub lookups_per_key: u32,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            introductions_per_key: INTRODUCTIONS_PER_KEY_PER_MINUTE,
            introductions_per_ip: INTRODUCTIONS_PER_IP_PER_MINUTE,
            introductions_per_target: INTRODUCTIONS_PER_TARGET_PER_MINUTE,
            name_binds_per_ip: NAME_BINDS_PER_IP_PER_HOUR,
            lookups_per_key: LOOKUPS_PER_KEY_PER_MINUTE,
        }
    }
}

/// Why a request was refused by a bucket, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The asking key's bucket is empty.
    Key,
    /// The asking host's bucket is empty.
    Ip,
    /// The target's bucket is empty.
    Target,
}

/// Every bucket the directory keeps, one per key of each kind.
pub struct Allowances<C: Clock = DefaultClock> {
    introductions_per_key: Buckets<KeyId, C>,
    introductions_per_ip: Buckets<IpAddr, C>,
    introductions_per_target: Buckets<Name, C>,
    name_binds_per_ip: Buckets<IpAddr, C>,
    lookups_per_key: Buckets<KeyId, C>,
}

impl<C: Clock> std::fmt::Debug for Allowances<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allowances").finish_non_exhaustive()
    }
}

impl Allowances {
    /// Full buckets at `rates`, on the system clock.
    pub fn new(rates: Rates) -> Self {
        Self::with_clock(rates, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> Allowances<C> {
    /// Full buckets at `rates`, on `clock` (tests use a fake one).
    pub fn with_clock(rates: Rates, clock: &C) -> Self {
        let minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        let hour = |n: u32| Quota::per_hour(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Self {
            introductions_per_key: Buckets::with_clock(minute(rates.introductions_per_key), clock),
            introductions_per_ip: Buckets::with_clock(minute(rates.introductions_per_ip), clock),
            introductions_per_target: Buckets::with_clock(
                minute(rates.introductions_per_target),
                clock,
            ),
            name_binds_per_ip: Buckets::with_clock(hour(rates.name_binds_per_ip), clock),
            lookups_per_key: Buckets::with_clock(minute(rates.lookups_per_key), clock),
        }
    }

    /// Takes a token for an introduction asked by `key` from `ip`: from the key's bucket, then
    /// the host's. The target's is taken by [`Allowances::introduce_to`] once the target is
    /// known to be online.
    pub fn introduce_from(&self, key: KeyId, ip: IpAddr) -> Result<(), Limited> {
        if !self.introductions_per_key.check(&key) {
            return Err(Limited::Key);
        }
        if !self.introductions_per_ip.check(&host(ip)) {
            return Err(Limited::Ip);
        }
        Ok(())
    }

    /// Takes a token from `target`'s introduction bucket.
    pub fn introduce_to(&self, target: &Name) -> Result<(), Limited> {
        match self.introductions_per_target.check(target) {
            true => Ok(()),
            false => Err(Limited::Target),
        }
    }

    /// Takes a token for binding a new name from `ip`.
    /// Takes one lookup from `key`'s allowance.
    pub fn lookup_by(&self, key: KeyId) -> Result<(), Limited> {
        match self.lookups_per_key.check(&key) {
            true => Ok(()),
            false => Err(Limited::Key),
        }
    }

    pub fn bind_from(&self, ip: IpAddr) -> Result<(), Limited> {
        match self.name_binds_per_ip.check(&host(ip)) {
            true => Ok(()),
            false => Err(Limited::Ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::admit::FakeRelativeClock;
    use std::time::Duration;

    fn rates(n: u32) -> Rates {
        Rates {
            introductions_per_key: n,
            introductions_per_ip: 2 * n,
            introductions_per_target: n,
            name_binds_per_ip: n,
            lookups_per_key: n,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn name(s: &str) -> Name {
        Name::new(s).expect("name")
    }

    #[test]
    fn a_key_gets_its_minute_at_once_then_its_rate_from_any_host() {
        let clock = FakeRelativeClock::default();
        let buckets = Allowances::with_clock(rates(3), &clock);
        let key = KeyId([1; 32]);
        for i in 0..3 {
            assert_eq!(buckets.introduce_from(key, ip(i)), Ok(()), "{i}");
        }
        // Another connection, another host: the same key.
        assert_eq!(buckets.introduce_from(key, ip(9)), Err(Limited::Key));
        clock.advance(Duration::from_secs(20));
        assert_eq!(buckets.introduce_from(key, ip(9)), Ok(()));
        assert_eq!(buckets.introduce_from(key, ip(9)), Err(Limited::Key));
    }

    #[test]
    fn a_host_is_limited_whatever_its_keys() {
        let clock = FakeRelativeClock::default();
        let buckets = Allowances::with_clock(rates(3), &clock);
        for k in 0..6 {
            assert_eq!(buckets.introduce_from(KeyId([k; 32]), ip(1)), Ok(()), "{k}");
        }
        assert_eq!(
            buckets.introduce_from(KeyId([7; 32]), ip(1)),
            Err(Limited::Ip)
        );
        assert_eq!(buckets.introduce_from(KeyId([7; 32]), ip(2)), Ok(()));
    }

    #[test]
    fn a_target_is_limited_whoever_asks() {
        let clock = FakeRelativeClock::default();
        let buckets = Allowances::with_clock(rates(2), &clock);
        assert_eq!(buckets.introduce_to(&name("bob")), Ok(()));
        assert_eq!(buckets.introduce_to(&name("bob")), Ok(()));
        assert_eq!(buckets.introduce_to(&name("bob")), Err(Limited::Target));
        assert_eq!(buckets.introduce_to(&name("carol")), Ok(()));
        clock.advance(Duration::from_secs(30));
        assert_eq!(buckets.introduce_to(&name("bob")), Ok(()));
    }

    #[test]
    fn name_bindings_are_counted_per_host_by_the_hour() {
        let clock = FakeRelativeClock::default();
        let buckets = Allowances::with_clock(rates(2), &clock);
        let v6 = |s: &str| s.parse::<IpAddr>().expect("address");
        assert_eq!(buckets.bind_from(v6("2001:db8::1")), Ok(()));
        assert_eq!(buckets.bind_from(v6("2001:db8::2")), Ok(()));
        assert_eq!(
            buckets.bind_from(v6("2001:db8::3")),
            Err(Limited::Ip),
            "same /64"
        );
        assert_eq!(buckets.bind_from(v6("2001:db8:0:1::1")), Ok(()));
        clock.advance(Duration::from_secs(29 * 60));
        assert_eq!(buckets.bind_from(v6("2001:db8::3")), Err(Limited::Ip));
        clock.advance(Duration::from_secs(60));
        assert_eq!(buckets.bind_from(v6("2001:db8::3")), Ok(()));
    }
}

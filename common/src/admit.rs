//! Who may open a connection, by address: a cap on the connections one host holds at once
//! ([`Slots`]), and token buckets ([`Buckets`]) for what a host, a key or a name may do at a
//! rate, such as opening new connections. Both programs use them before they spend anything on
//! a handshake: the directory for every client, the peer for connections it did not dial.
//!
//! A host is an IPv4 address or an IPv6 /64 ([`host`]): an IPv6 host usually holds a whole /64,
//! so counting single IPv6 addresses would give it billions of slots.

use governor::{middleware::NoOpMiddleware, state::keyed::HashMapStateStore, RateLimiter};
use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
};

/// The clocks [`Buckets`] run on: the real one, and a fake one tests advance by hand.
pub use governor::clock::{Clock, DefaultClock, FakeRelativeClock};
/// How many tokens a bucket holds and how fast it refills.
pub use governor::Quota;

/// The host `ip` belongs to: the address itself for IPv4 (an IPv4-mapped IPv6 address counts as
/// its IPv4 address), the /64 prefix for IPv6.
pub fn host(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Connections held per host, at most `per_host` each. Cheap to clone; clones share the counts.
#[derive(Clone, Debug)]
pub struct Slots {
    held: Arc<Mutex<HashMap<IpAddr, u32>>>,
    per_host: u32,
}

/// One connection's place in [`Slots`], given back when dropped.
#[derive(Debug)]
pub struct Slot {
    held: Arc<Mutex<HashMap<IpAddr, u32>>>,
    host: IpAddr,
}

impl Slots {
    /// At most `per_host` connections per host.
    pub fn new(per_host: u32) -> Self {
        Self {
            held: Arc::default(),
            per_host,
        }
    }

    /// A slot for a connection from `ip`, or `None` when its host holds all it may.
    pub fn take(&self, ip: IpAddr) -> Option<Slot> {
        let host = host(ip);
        let mut held = lock(&self.held);
        let n = held.entry(host).or_default();
        if *n >= self.per_host {
            return None;
        }
        *n += 1;
        Some(Slot {
            held: self.held.clone(),
            host,
        })
    }

    /// The most connections one host may hold.
    pub fn per_host(&self) -> u32 {
        self.per_host
    }

    /// How many connections the host of `ip` holds.
    pub fn held(&self, ip: IpAddr) -> u32 {
        lock(&self.held).get(&host(ip)).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(n) = held.get_mut(&self.host) {
            *n -= 1;
            if *n == 0 {
                // Only hosts holding a connection are kept: the map is as large as they are.
                held.remove(&self.host);
            }
        }
    }
}

/// Completes the handshake of an admitted connection by `deadline`, or abandons it (dropped,
/// it ends): an admitted stranger holds its slot no longer. A failure is the remote's
/// business, so it is logged at debug only. A program of an older protocol version is told to
/// upgrade, in the close's reason, which it prints.
pub async fn handshake(
    incoming: quinn::Incoming,
    deadline: tokio::time::Instant,
) -> Option<quinn::Connection> {
    match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(conn)) if outdated(&conn) => {
            tracing::debug!("an outdated program connected");
            conn.close(
                crate::wire::codes::OUTDATED.into(),
                b"this side speaks a newer protocol version (sealed mail, chat-dir/2 and chat-peer/4): upgrade the program",
            );
            None
        }
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            tracing::debug!(cause = %e, "handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("no handshake in time");
            None
        }
    }
}

/// True when the remote negotiated one of [`crate::defaults::ALPN_OUTDATED`].
fn outdated(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|alpn| crate::defaults::ALPN_OUTDATED.contains(&alpn.as_slice()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is one map operation, so a panic cannot leave it half done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A token bucket per key (a host, a key, a name), all with the same [`Quota`].
pub struct Buckets<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: RateLimiter<K, HashMapStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    /// Checks since the keys back at a full bucket were last forgotten.
    checks: AtomicU32,
}

/// How often [`Buckets`] forgets keys whose bucket is full again, in checks: it then holds only
/// keys seen recently, whatever the number of keys or addresses an attacker has.
const FORGET_EVERY: u32 = 1024;

/// `per_second` tokens a second, `burst` at once (each at least 1).
pub fn per_second(per_second: u32, burst: u32) -> Quota {
    Quota::per_second(at_least_one(per_second)).allow_burst(at_least_one(burst))
}

/// `per_minute` tokens a minute, `burst` at once (each at least 1).
pub fn per_minute(per_minute: u32, burst: u32) -> Quota {
    Quota::per_minute(at_least_one(per_minute)).allow_burst(at_least_one(burst))
}

fn at_least_one(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Full buckets of `quota`, on the system clock.
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, &DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Buckets<K, C> {
    /// Full buckets of `quota`, on `clock` (tests use a fake one).
    pub fn with_clock(quota: Quota, clock: &C) -> Self {
        Self {
            limiter: RateLimiter::hashmap_with_clock(quota, clock.clone()),
            checks: AtomicU32::new(0),
        }
    }

    /// Takes a token from `key`'s bucket; false when it is empty.
    pub fn check(&self, key: &K) -> bool {
        if self.checks.fetch_add(1, Ordering::Relaxed) + 1 >= FORGET_EVERY {
            self.checks.store(0, Ordering::Relaxed);
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(key).is_ok()
    }

    /// Keys remembered: those whose bucket is not full.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn an_ipv6_host_is_its_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(host(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            host(ip("2001:db8:1:2:ffff::9")),
            host(ip("2001:db8:1:2::7"))
        );
        assert_ne!(host(ip("2001:db8:1:3::1")), host(ip("2001:db8:1:2::1")));
        assert_eq!(host(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(host(ip("10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn slots_cap_each_host_and_come_back_when_dropped() {
        let slots = Slots::new(2);
        let a = slots.take(ip("10.0.0.1")).expect("first");
        let _b = slots
            .take(ip("::ffff:10.0.0.1"))
            .expect("second, same host");
        assert!(slots.take(ip("10.0.0.1")).is_none(), "a third");
        let _other = slots.take(ip("10.0.0.2")).expect("another host");
        drop(a);
        assert_eq!(slots.held(ip("10.0.0.1")), 1);
        assert!(slots.take(ip("10.0.0.1")).is_some(), "after one left");
    }

    #[test]
    fn slots_forget_hosts_that_hold_nothing() {
        let slots = Slots::new(1);
        for i in 0..100u8 {
            drop(slots.take(IpAddr::from([10, 0, 0, i])));
        }
        assert!(lock(&slots.held).is_empty());
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let clock = FakeRelativeClock::default();
        let buckets = Buckets::with_clock(per_second(2, 3), &clock);
        let a = host(ip("2001:db8::1"));
        for i in 0..3 {
            assert!(buckets.check(&a), "burst {i}");
        }
        assert!(
            !buckets.check(&host(ip("2001:db8::2"))),
            "same /64, bucket empty"
        );
        assert!(buckets.check(&host(ip("2001:db8:0:1::1"))), "another /64");
        clock.advance(Duration::from_millis(500));
        assert!(buckets.check(&a), "one token after half a second at 2/s");
        assert!(!buckets.check(&a));
    }

    #[test]
    fn keys_back_at_a_full_bucket_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let buckets = Buckets::with_clock(per_second(10, 10), &clock);
        for i in 0..FORGET_EVERY - 1 {
            assert!(buckets.check(&i));
        }
        assert_eq!(buckets.keys(), (FORGET_EVERY - 1) as usize);
        clock.advance(Duration::from_secs(2));
        buckets.check(&u32::MAX);
        assert!(buckets.keys() <= 1, "{} keys kept", buckets.keys());
    }
}

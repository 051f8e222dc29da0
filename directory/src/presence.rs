//! When a peer counts as online. Pure functions of the times involved, with no clock of their
//! own, so they can be tested without waiting.

use common::defaults::{HEARTBEAT_MAX, HEARTBEAT_MIN, MISSED_HEARTBEATS};
use std::time::{Duration, Instant};

/// The heartbeat interval the directory holds a peer to: what it asked for, within bounds.
pub fn interval(requested_ms: u32) -> Duration {
    Duration::from_millis(requested_ms.into()).clamp(HEARTBEAT_MIN, HEARTBEAT_MAX)
}

/// True once a peer heard from at `last` has missed [`MISSED_HEARTBEATS`] heartbeats at `now`.
pub fn expired(last: Instant, interval: Duration, now: Instant) -> bool {
    now.saturating_duration_since(last) > interval * MISSED_HEARTBEATS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_after_three_missed_heartbeats() {
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        assert!(!expired(t0, every, t0));
        assert!(!expired(t0, every, t0 + Duration::from_secs(29)));
        assert!(!expired(t0, every, t0 + Duration::from_secs(30)));
        assert!(expired(t0, every, t0 + Duration::from_secs(31)));
        // A clock that went backwards is not a reason to drop anyone.
        assert!(!expired(t0 + every, every, t0));
    }

    #[test]
    fn requested_interval_is_bounded() {
        assert_eq!(interval(0), HEARTBEAT_MIN);
        assert_eq!(interval(u32::MAX), HEARTBEAT_MAX);
        assert_eq!(interval(5_000), Duration::from_secs(5));
    }
}

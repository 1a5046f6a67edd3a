//! The one time source of the client side: wall time (token `exp`, revocation `until`) and
//! monotonic time (JWKS freshness, the refetch rate limit, feed staleness).
//!
//! Production reads the system clocks. Tests advance an offset instead of sleeping, so cache
//! lifetimes, rate limits, staleness and expiry are tested without waiting
//! (`tokio::time::pause` would move only tokio's timers, not the wall clock, and auto-advances
//! while a test waits on real sockets). [`Changes`] lets a waiter wake on state changes instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Cheap to clone; clones share the offset.
#[derive(Clone, Debug)]
pub(crate) struct Clock {
    /// The origin of [`Clock::now`].
    origin: Instant,
    /// Milliseconds added to both clocks; only tests change it.
    offset_ms: Arc<AtomicU64>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { origin: Instant::now(), offset_ms: Arc::default() }
    }
}

impl Clock {
    /// Monotonic time since this clock was made.
    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed() + self.offset()
    }

    /// Wall time in milliseconds since the Unix epoch.
    pub(crate) fn unix_ms(&self) -> i64 {
        let sys = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + self.offset();
        i64::try_from(sys.as_millis()).unwrap_or(i64::MAX)
    }

    /// Wall time in whole seconds since the Unix epoch (JWT `exp`, `iat`).
    pub(crate) fn unix_secs(&self) -> i64 {
        self.unix_ms().div_euclid(1000)
    }

    /// Moves this clock (and every clone) forward. For tests.
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }
}

/// A counter bumped on every change of the verifier's state (a feed event, a byte on a synced
/// stream, a connect or disconnect, a JWKS fetch), so a waiter can re-check a condition exactly
/// when it may have changed instead of polling. Clones share the counter.
#[derive(Clone, Debug)]
pub(crate) struct Changes(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for Changes {
    fn default() -> Self {
        Changes(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl Changes {
    pub(crate) fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    #[cfg(test)]
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

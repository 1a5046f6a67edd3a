//! The one time source for tokens, sessions and sweeps.
//!
//! Production reads the system clock. Tests advance an offset instead of sleeping, so expiry,
//! grace windows and key retirement are tested without waiting (`tokio::time::pause` would move
//! only tokio's clock, not the wall clock that `exp` and stored times use).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: how every time is stored.
pub type Millis = i64;

/// Cheap to clone; clones share the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Added to the system time; only tests change it.
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    /// Now, in milliseconds since the epoch.
    pub fn now_ms(&self) -> Millis {
        let sys = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        sys + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Now, in whole seconds since the epoch (JWT `iat`/`exp`).
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves this clock (and every clone) forward. For tests.
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

/// A duration in whole milliseconds, saturating.
pub fn ms(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 UTC with second precision, e.g. `2026-11-27T03:12:34Z`.
pub fn rfc3339(at: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(at.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

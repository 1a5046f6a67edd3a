//! What one instance knows about the others (PostgreSQL only, docs/API.md §6): whether its
//! revocation listener is up (the denylist is current, else authentication fails closed), and
//! the acknowledgements an admin logout waits for. The sessions service reads it; the
//! backplane (`crate::backplane`), which runs the listener, writes it. Lower than both, so
//! neither depends on the other through it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::clock::Millis;

/// Channel on which instances acknowledge a revocation with the number of sockets they told.
pub const ACKS_CHANNEL: &str = "sessiond_acks";
/// How long the listener may be down before `/readyz` reports 503.
pub const READY_GRACE_MS: Millis = 5_000;
/// An instance whose heartbeat is older than this no longer counts (presence, acks).
pub const INSTANCE_TTL_MS: Millis = 15_000;
/// Presence rows of instances silent for this long are deleted.
pub const INSTANCE_FORGET_MS: Millis = 30_000;

/// Listener health and pending acknowledgements of this instance.
pub struct Link {
    /// True while the listener is connected and resynced.
    listening: AtomicBool,
    /// When the listener went down (ms); meaningful while not listening.
    down_since: AtomicI64,
    /// The first LISTEN + resync has completed.
    synced_once: AtomicBool,
    /// When the listener last proved it delivers (ms; 0: never).
    last_proof: AtomicI64,
    /// Asks the listener to reconnect and resync (a revoking write whose outcome is unknown).
    resync: tokio::sync::Notify,
    /// request id → where acknowledgements go.
    acks: DashMap<String, mpsc::Sender<(String, i64)>>,
}

impl Link {
    pub fn new(now: Millis) -> Self {
        Link {
            listening: AtomicBool::new(false),
            down_since: AtomicI64::new(now),
            synced_once: AtomicBool::new(false),
            last_proof: AtomicI64::new(0),
            resync: tokio::sync::Notify::new(),
            acks: DashMap::new(),
        }
    }

    /// The listener is connected and resynced: the denylist is current.
    pub fn is_up(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Ready: the first sync is done and the listener is not down for longer than 5 s.
    pub fn is_ready(&self, now: Millis) -> bool {
        self.synced_once.load(Ordering::Acquire)
            && (self.is_up() || now - self.down_since.load(Ordering::Acquire) < READY_GRACE_MS)
    }

    /// The listener is down (or a notified range could not be read): fail closed from now.
    pub fn set_down(&self, now: Millis) {
        if self.listening.swap(false, Ordering::AcqRel) {
            self.down_since.store(now, Ordering::Release);
        }
    }

    /// Connected and resynced (or the range that made it fail closed is applied after all).
    pub fn set_up(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// The first LISTEN + resync has completed.
    pub fn set_synced(&self) {
        self.synced_once.store(true, Ordering::Release);
    }

    /// The listener heard something at `now`: it delivers.
    pub fn proved(&self, now: Millis) {
        self.last_proof.store(now, Ordering::Release);
    }

    /// When the listener last proved it delivers (ms), if ever.
    pub fn last_proof(&self) -> Option<Millis> {
        Some(self.last_proof.load(Ordering::Acquire)).filter(|t| *t > 0)
    }

    /// A revoking write of this instance failed after it may have committed: its revocation
    /// may be in the database but not in the denylist (and this instance skips its own
    /// notifications). Fail closed now; the listener reconnects and resyncs, which applies it.
    pub fn request_resync(&self, now: Millis) {
        self.set_down(now);
        self.resync.notify_one();
    }

    /// Resolves when a resync was requested (for the listener).
    pub async fn resync_requested(&self) {
        self.resync.notified().await
    }

    /// Registers a request id; acknowledgements of it arrive on the receiver.
    pub fn expect_acks(&self, req: &str) -> mpsc::Receiver<(String, i64)> {
        let (tx, rx) = mpsc::channel(64);
        self.acks.insert(req.to_string(), tx);
        rx
    }

    pub fn forget_acks(&self, req: &str) {
        self.acks.remove(req);
    }

    /// Routes one acknowledgement (`instance` told `n` sockets about `req`) to its waiter.
    pub fn on_ack(&self, req: &str, instance: String, n: i64) {
        if let Some(tx) = self.acks.get(req) {
            let _ = tx.try_send((instance, n));
        }
    }
}

/// Sockets told on other instances about request `req` (waits at most `wait`).
pub async fn collect_acks(mut rx: mpsc::Receiver<(String, i64)>, expected: HashSet<String>, wait: Duration) -> i64 {
    let mut pending = expected;
    let mut total = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((instance, n))) => {
                if pending.remove(&instance) {
                    total += n;
                }
            }
            _ => break,
        }
    }
    if !pending.is_empty() {
        tracing::warn!(missing = pending.len(), "some instances did not acknowledge in time");
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_listener() {
        let link = Link::new(1_000);
        assert!(!link.is_ready(1_000), "not ready before the first LISTEN + resync");
        link.set_up();
        link.set_synced();
        assert!(link.is_ready(50_000));
        link.set_down(60_000);
        assert!(!link.is_up(), "fails closed at once");
        assert!(link.is_ready(60_000 + READY_GRACE_MS - 1), "ready for 5 s while reconnecting");
        assert!(!link.is_ready(60_000 + READY_GRACE_MS), "503 after 5 s down");
    }
}

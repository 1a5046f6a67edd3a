//! The revocation feed's wake-up source (docs/API.md §9): one per instance.
//!
//! Every revocation this instance makes or applies (its own through `sessions::publish`,
//! another instance's through the PostgreSQL backplane, both via `sessions::apply`) bumps one
//! counter; every follower waiting in a long poll on this instance is woken by it and reads the
//! log once. So followers never poll the database in a loop: a follower with nothing new costs
//! one read when it asks and one per wake-up. The entries themselves always come from the
//! database log, whose cursors follow commit order; the signal only says "look again".

pub mod tail;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Cheap to clone; clones share the signal.
#[derive(Clone)]
pub struct FeedSignal {
    commits: Arc<watch::Sender<u64>>,
    /// Open event streams, on this instance and per credential (caps of docs/API.md §9).
    streams: Arc<Streams>,
    /// Cancelled at shutdown: waiting followers get their (empty) answer at once instead of
    /// holding the graceful shutdown for up to the longest wait.
    closing: CancellationToken,
    /// Wakes this instance's Shared Signals dispatcher (the revoking transaction wrote outbox
    /// rows). A `Notify` keeps one permit, so a commit while it works is not lost; kept apart
    /// from `commits`, whose receivers count the waiting followers.
    outbox: Arc<tokio::sync::Notify>,
}

impl Default for FeedSignal {
    fn default() -> Self {
        FeedSignal {
            commits: Arc::new(watch::channel(0).0),
            streams: Arc::default(),
            closing: CancellationToken::new(),
            outbox: Arc::default(),
        }
    }
}

impl FeedSignal {
    /// Revocations were committed (here or elsewhere, and applied here): wake every follower.
    pub fn committed(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
        self.outbox.notify_one();
    }

    /// Resolves after the next [`committed`](Self::committed) (or at once if one happened since
    /// the last call): for the one Shared Signals dispatcher of this instance.
    pub async fn outbox_written(&self) {
        self.outbox.notified().await
    }

    /// A receiver that sees the commits signalled from now on: take it *before* reading the log,
    /// so a commit between the read and the wait still wakes the waiter.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Ends every wait (graceful shutdown).
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Resolves once [`close`](Self::close) was called.
    pub async fn closed(&self) {
        self.closing.cancelled().await
    }

    /// A place for one more follower of `credential` held open on this instance (an event
    /// stream, a long poll, a snapshot being sent), or `None` past a cap: at most
    /// [`MAX_STREAMS_PER_INSTANCE`] here and [`MAX_STREAMS_PER_CREDENTIAL`] per credential, all
    /// three kinds together (SECURITY.md G-5). The place is freed when the guard drops (the
    /// answer or the stream ended).
    pub fn admit(&self, credential: &str) -> Option<StreamSlot> {
        let mut per = self.streams.per_credential.lock().unwrap_or_else(|p| p.into_inner());
        let total = self.streams.total.load(Ordering::Acquire);
        let mine = per.get(credential).copied().unwrap_or(0);
        if total >= MAX_STREAMS_PER_INSTANCE || mine >= MAX_STREAMS_PER_CREDENTIAL {
            return None;
        }
        per.insert(credential.to_string(), mine + 1);
        self.streams.total.fetch_add(1, Ordering::AcqRel);
        Some(StreamSlot { streams: self.streams.clone(), credential: credential.to_string() })
    }

    /// Followers held open on this instance (event streams, long polls, snapshots).
    pub fn open_streams(&self) -> usize {
        self.streams.total.load(Ordering::Acquire)
    }

    /// How many followers are waiting now (a receiver is held only while one waits).
    pub fn waiting(&self) -> usize {
        self.commits.receiver_count()
    }
}

/// Most followers (event streams, long polls, snapshots) one instance serves at once; the next
/// gets 503 with `Retry-After`.
pub const MAX_STREAMS_PER_INSTANCE: usize = 1024;
/// Most followers one service credential holds on one instance (a follower needs one; a few
/// more cover restarts and several processes of one service).
pub const MAX_STREAMS_PER_CREDENTIAL: usize = 16;

#[derive(Default)]
struct Streams {
    total: AtomicUsize,
    per_credential: Mutex<std::collections::HashMap<String, usize>>,
}

/// One follower's place under the caps; freed on drop.
pub struct StreamSlot {
    streams: Arc<Streams>,
    credential: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut per = self.streams.per_credential.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&self.credential) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.credential);
            }
        }
        self.streams.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_commit_after_subscribing_wakes_the_waiter_and_one_before_does_not() {
        let signal = FeedSignal::default();
        signal.committed();
        let mut rx = signal.subscribe();
        assert!(!rx.has_changed().unwrap(), "a commit before subscribing is in what the reader reads");
        signal.committed();
        tokio::time::timeout(std::time::Duration::from_secs(1), rx.changed()).await.unwrap().unwrap();
        assert_eq!(signal.waiting(), 1);
        drop(rx);
        assert_eq!(signal.waiting(), 0);
        signal.close();
        signal.closed().await;
    }

    #[test]
    fn stream_caps_hold_per_credential_and_free_on_drop() {
        let signal = FeedSignal::default();
        let held: Vec<_> = (0..MAX_STREAMS_PER_CREDENTIAL).map(|_| signal.admit("a").unwrap()).collect();
        assert!(signal.admit("a").is_none(), "the credential's cap");
        let other = signal.admit("b").expect("another credential has its own");
        assert_eq!(signal.open_streams(), MAX_STREAMS_PER_CREDENTIAL + 1);
        drop(held);
        drop(other);
        assert_eq!(signal.open_streams(), 0);
        assert!(signal.admit("a").is_some());
    }
}

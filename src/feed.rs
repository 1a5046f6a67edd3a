//! The revocation feed's wake-up source (docs/API.md §9): one per instance.
//!
//! Every revocation this instance makes or applies (its own through `sessions::publish`,
//! another instance's through the PostgreSQL backplane, both via `sessions::apply`) bumps one
//! counter; every follower waiting in a long poll on this instance is woken by it and reads the
//! log once. So followers never poll the database in a loop: a follower with nothing new costs
//! one read when it asks and one per wake-up. The entries themselves always come from the
//! database log, whose cursors follow commit order; the signal only says "look again".

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Cheap to clone; clones share the signal.
#[derive(Clone)]
pub struct FeedSignal {
    commits: Arc<watch::Sender<u64>>,
    /// Cancelled at shutdown: waiting followers get their (empty) answer at once instead of
    /// holding the graceful shutdown for up to the longest wait.
    closing: CancellationToken,
}

impl Default for FeedSignal {
    fn default() -> Self {
        FeedSignal { commits: Arc::new(watch::channel(0).0), closing: CancellationToken::new() }
    }
}

impl FeedSignal {
    /// Revocations were committed (here or elsewhere, and applied here): wake every follower.
    pub fn committed(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
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

    /// How many followers are waiting now (a receiver is held only while one waits).
    pub fn waiting(&self) -> usize {
        self.commits.receiver_count()
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
}

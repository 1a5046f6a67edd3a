//! The realtime logout hub: which sockets are open for which user and session, and the push of
//! a `logout` event to exactly the sockets of ended sessions.
//!
//! The registry holds one entry per *authenticated* socket, indexed by connection id, by session
//! and by user. Fan-out never blocks: each socket has a small bounded queue and `try_send`; a
//! socket whose queue is full is killed instead of delaying everyone else. Entries are removed
//! by a guard's `Drop`, so a socket that ends for any reason leaves the registry.
//!
//! Race-freedom with revocation: `sessions::publish` inserts into the denylist *before* it calls
//! [`Hub::notify`]; a connection registers *before* it re-checks the denylist. Whatever the
//! interleaving, either `notify` sees the registration or the re-check sees the revocation.

pub mod connection;
pub mod protocol;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Millis;
use crate::metrics::Metrics;
use crate::store::Revoked;

/// Outbound queue per socket. Only hub events go through it (a socket gets at most one logout),
/// so a full queue means the socket's task is stuck writing to a slow reader.
pub const HUB_CHANNEL_CAPACITY: usize = 4;

/// A socket's bounded outbound queue. Not a Tokio mpsc channel: that allocates a 32-slot block
/// (~2 KiB) per socket up front for what is at most a few events; this allocates on first use.
#[derive(Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<HubEvent>>,
    ready: Notify,
}

impl Mailbox {
    /// Queues `event`; gives it back when the queue is full.
    fn push(&self, event: HubEvent) -> Result<(), HubEvent> {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= HUB_CHANNEL_CAPACITY {
                return Err(event);
            }
            q.push_back(event);
        }
        // Stores a permit if the socket is not waiting right now, so no wake-up is lost.
        self.ready.notify_one();
        Ok(())
    }

    /// The next event, waiting for one.
    pub async fn recv(&self) -> HubEvent {
        loop {
            if let Some(e) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
                return e;
            }
            self.ready.notified().await;
        }
    }
}

/// An event for one socket.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// The socket's session ended: send the logout event, then close 4001.
    Logout { reason: Arc<str>, session_id: Arc<str>, at: Millis, published: Instant },
}

struct Conn {
    user_id: Arc<str>,
    session_id: Arc<str>,
    mailbox: Arc<Mailbox>,
    /// Cancelled to end the socket at once (queue full).
    kill: CancellationToken,
}

struct Inner {
    conns: DashMap<u64, Conn>,
    by_session: DashMap<Arc<str>, HashSet<u64>>,
    by_user: DashMap<Arc<str>, HashSet<u64>>,
    next_id: AtomicU64,
    /// Authenticated sockets registered now; tests and shutdown wait on it.
    count: watch::Sender<usize>,
    /// Cancelled on graceful shutdown: every socket closes with 1012.
    shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
}

/// The hub handle. Clones share the registry.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// Why a registration was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// The user already has the maximum number of sockets.
    TooMany,
}

/// Removes its connection from the registry when dropped.
pub struct Registration {
    hub: Hub,
    conn_id: u64,
    pub mailbox: Arc<Mailbox>,
    pub kill: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.conn_id);
    }
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            inner: Arc::new(Inner {
                conns: DashMap::new(),
                by_session: DashMap::new(),
                by_user: DashMap::new(),
                next_id: AtomicU64::new(1),
                count: watch::channel(0).0,
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
                metrics,
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// A fresh connection id (for logs and the registry).
    pub fn next_conn_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers an authenticated socket, unless its user is at `max_per_user`.
    pub fn register(
        &self,
        conn_id: u64,
        user_id: &str,
        session_id: &str,
        max_per_user: usize,
    ) -> Result<Registration, RegisterError> {
        let user: Arc<str> = user_id.into();
        let session: Arc<str> = session_id.into();
        {
            // The user's entry lock makes check-and-insert atomic against concurrent sockets.
            let mut set = self.inner.by_user.entry(user.clone()).or_default();
            if set.len() >= max_per_user {
                return Err(RegisterError::TooMany);
            }
            set.insert(conn_id);
        }
        let mailbox = Arc::new(Mailbox::default());
        let kill = CancellationToken::new();
        self.inner.conns.insert(
            conn_id,
            Conn { user_id: user, session_id: session.clone(), mailbox: mailbox.clone(), kill: kill.clone() },
        );
        self.inner.by_session.entry(session).or_default().insert(conn_id);
        self.inner.count.send_modify(|n| *n += 1);
        self.inner.metrics.ws_authenticated.inc();
        Ok(Registration { hub: self.clone(), conn_id, mailbox, kill })
    }

    fn unregister(&self, conn_id: u64) {
        let Some((_, conn)) = self.inner.conns.remove(&conn_id) else { return };
        self.inner.by_session.remove_if_mut(&conn.session_id, |_, set| {
            set.remove(&conn_id);
            set.is_empty()
        });
        self.inner.by_user.remove_if_mut(&conn.user_id, |_, set| {
            set.remove(&conn_id);
            set.is_empty()
        });
        self.inner.count.send_modify(|n| *n = n.saturating_sub(1));
        self.inner.metrics.ws_authenticated.dec();
    }

    /// Queues a logout event to every socket of the revoked sessions; returns how many sockets
    /// it reached. Never blocks: a socket whose queue is full is killed.
    pub fn notify(&self, revoked: &[Revoked]) -> usize {
        let published = Instant::now();
        let mut reached = 0;
        for r in revoked {
            let Some(ids) =
                self.inner.by_session.get(r.session_id.as_str()).map(|s| s.iter().copied().collect::<Vec<_>>())
            else {
                continue;
            };
            let (reason, session_id): (Arc<str>, Arc<str>) = (r.reason.as_str().into(), r.session_id.as_str().into());
            for id in ids {
                let Some(conn) = self.inner.conns.get(&id) else { continue };
                let event =
                    HubEvent::Logout { reason: reason.clone(), session_id: session_id.clone(), at: r.at, published };
                match conn.mailbox.push(event) {
                    Ok(()) => reached += 1,
                    Err(_) => {
                        self.inner.metrics.ws_queue_full_closes.inc();
                        conn.kill.cancel();
                    }
                }
            }
        }
        reached
    }

    /// Whether a socket of this session is open on this instance.
    pub fn is_connected(&self, session_id: &str) -> bool {
        self.inner.by_session.get(session_id).is_some_and(|s| !s.is_empty())
    }

    /// Sessions with at least one socket on this instance.
    pub fn sessions(&self) -> Vec<String> {
        self.inner.by_session.iter().map(|e| e.key().to_string()).collect()
    }

    /// Authenticated sockets of a user on this instance.
    pub fn user_connections(&self, user_id: &str) -> usize {
        self.inner.by_user.get(user_id).map_or(0, |s| s.len())
    }

    /// Authenticated sockets registered now.
    pub fn len(&self) -> usize {
        *self.inner.count.borrow()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver of the registered-socket count (wait for a value without sleeping).
    pub fn watch_count(&self) -> watch::Receiver<usize> {
        self.inner.count.subscribe()
    }

    /// The shutdown signal every connection task listens to.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Sockets open on this instance (upgraded, authenticated or not).
    pub fn open_sockets(&self) -> usize {
        self.inner.tracker.len()
    }

    /// A token that keeps shutdown waiting until the socket it stands for has ended.
    pub fn track(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.inner.tracker.token()
    }

    /// Starts the shutdown: every socket closes with 1012; new upgrades are refused.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Closes every socket with 1012 and waits (bounded) for their tasks to end.
    pub async fn shutdown(&self, drain: std::time::Duration) {
        self.begin_shutdown();
        self.inner.tracker.close();
        if tokio::time::timeout(drain, self.inner.tracker.wait()).await.is_err() {
            tracing::warn!(remaining = self.inner.tracker.len(), "socket drain timed out");
        }
    }
}

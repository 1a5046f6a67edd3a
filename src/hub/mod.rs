//! The realtime logout hub: which sockets are open for which user and session, and the push of
//! a `logout` event to exactly the sockets of ended sessions.
//!
//! The registry holds one entry per *authenticated* socket, indexed by connection id, by session
//! and by user. Fan-out never blocks: each socket has a small bounded queue and `try_send`; a
//! socket whose queue is full is killed instead of delaying everyone else. Entries are removed
//! by a guard's `Drop`, so a socket that ends for any reason leaves the registry.
//!
//! Per-user cap (`--ws-max-sockets-per-user`): at the cap a new authenticated socket is admitted
//! and an older one of the same user is evicted (closed with 4429): the oldest socket of the
//! session that holds the most of the user's sockets, the newcomer counted (on a tie, the
//! newcomer's own session). Refusing the
//! newcomer instead let anyone holding a stolen token of the user fill every slot, so the
//! owner's own tab was refused and missed its forced logout (SECURITY.md RT11); now a flood from
//! one session evicts that session's own sockets, and a single-tab session survives it.
//!
//! Race-freedom with revocation: `sessions::publish` inserts into the denylist *before* it calls
//! [`Hub::notify`]; a connection registers *before* it re-checks the denylist. Whatever the
//! interleaving, either `notify` sees the registration or the re-check sees the revocation.

pub mod protocol;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// The socket's session ended: send the logout event (`frame`, serialised once per session),
    /// then close 4001.
    Logout { frame: Utf8Bytes, reason: Arc<str>, published: Instant },
    /// A newer socket of the same user took this one's place under the per-user cap: close
    /// 4429. The socket has already left the registry.
    Evicted,
}

struct Conn {
    user_id: Arc<str>,
    session_id: Arc<str>,
    mailbox: Arc<Mailbox>,
    /// Cancelled to end the socket at once, without a close frame (queue full).
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
    /// The per-user cap is 0: no socket may register.
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

    /// Registers an authenticated socket. At `max_per_user` sockets of its user, one of them is
    /// evicted to make room (see the module doc); refused only when the cap is 0.
    pub fn register(
        &self,
        conn_id: u64,
        user_id: &str,
        session_id: &str,
        max_per_user: usize,
    ) -> Result<Registration, RegisterError> {
        if max_per_user == 0 {
            return Err(RegisterError::TooMany);
        }
        let user: Arc<str> = user_id.into();
        let session: Arc<str> = session_id.into();
        // Registered everywhere but in its user's set first: a socket in a user's set is always
        // in `conns` too, unless it is leaving (`unregister` removes it from `conns` first).
        let mailbox = Arc::new(Mailbox::default());
        let kill = CancellationToken::new();
        self.inner.conns.insert(
            conn_id,
            Conn { user_id: user.clone(), session_id: session.clone(), mailbox: mailbox.clone(), kill: kill.clone() },
        );
        self.inner.by_session.entry(session.clone()).or_default().insert(conn_id);
        self.inner.count.send_modify(|n| *n += 1);
        self.inner.metrics.ws_authenticated.inc();
        let victim = {
            // The user's entry lock makes check, eviction and insert atomic against concurrent
            // sockets of the same user: the set never holds more than the cap.
            let mut set = self.inner.by_user.entry(user).or_default();
            let victim = if set.len() >= max_per_user { self.victim(&set, &session) } else { None };
            if let Some(v) = victim {
                set.remove(&v);
            }
            set.insert(conn_id);
            victim
        };
        // Out of the user's lock (nothing takes it while holding another map's).
        if let Some(v) = victim {
            self.evict(v);
        }
        Ok(Registration { hub: self.clone(), conn_id, mailbox, kill })
    }

    /// Which of a user's sockets (`ids`, at the cap) makes room for a new one of `session`: the
    /// oldest (lowest id) socket of the session holding the most, the newcomer counted; on a
    /// tie the newcomer's own session pays, else the one with the oldest socket. So a session
    /// takes a slot from another only while it holds fewer. A socket already leaving the
    /// registry is taken first. Runs only at the cap, under the user's entry lock.
    fn victim(&self, ids: &HashSet<u64>, session: &Arc<str>) -> Option<u64> {
        // session → (sockets, is the newcomer's, oldest socket): at most `ids.len()` entries.
        let mut sessions: std::collections::HashMap<Arc<str>, (usize, bool, u64)> = std::collections::HashMap::new();
        for &id in ids {
            let Some(conn) = self.inner.conns.get(&id) else { return Some(id) };
            let own = conn.session_id == *session;
            let e = sessions.entry(conn.session_id.clone()).or_insert((usize::from(own), own, id));
            e.0 += 1;
            e.2 = e.2.min(id);
        }
        let rank = |&(n, own, oldest): &(usize, bool, u64)| (n, own, std::cmp::Reverse(oldest));
        sessions.into_values().max_by_key(rank).map(|(_, _, oldest)| oldest)
    }

    /// Removes `conn_id` (already out of its user's set) from the registry and tells its task to
    /// close with 4429. Its guard's later `Drop` then finds nothing to remove.
    fn evict(&self, conn_id: u64) {
        // `None`: its own guard is unregistering it right now, and does the accounting.
        let Some((_, conn)) = self.inner.conns.remove(&conn_id) else { return };
        self.forget(conn_id, &conn);
        self.inner.metrics.ws_evicted.inc();
        if conn.mailbox.push(HubEvent::Evicted).is_err() {
            // A full queue: the task is stuck writing to a slow reader; end it without a word.
            self.inner.metrics.ws_queue_full_closes.inc();
            conn.kill.cancel();
        }
    }

    fn unregister(&self, conn_id: u64) {
        let Some((_, conn)) = self.inner.conns.remove(&conn_id) else { return };
        self.inner.by_user.remove_if_mut(&conn.user_id, |_, set| {
            set.remove(&conn_id);
            set.is_empty()
        });
        self.forget(conn_id, &conn);
    }

    /// The accounting of a connection just removed from `conns`: its session's set, the count.
    fn forget(&self, conn_id: u64, conn: &Conn) {
        self.inner.by_session.remove_if_mut(&conn.session_id, |_, set| {
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
            let frame = protocol::logout_frame(&r.reason, &r.session_id, r.at);
            let reason: Arc<str> = r.reason.as_str().into();
            for id in ids {
                let Some(conn) = self.inner.conns.get(&id) else { continue };
                let event = HubEvent::Logout { frame: frame.clone(), reason: reason.clone(), published };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn evicted(r: &Registration) -> bool {
        r.mailbox.queue.lock().unwrap().iter().any(|e| matches!(e, HubEvent::Evicted))
    }

    #[test]
    fn at_the_cap_the_biggest_sessions_oldest_socket_makes_room() {
        let hub = Hub::new(Arc::new(Metrics::default()));
        let reg = |id, session| hub.register(id, "u", session, 4).unwrap();
        let (t1, t2, t3, v1) = (reg(1, "thief"), reg(2, "thief"), reg(3, "thief"), reg(4, "victim"));
        assert!(![&t1, &t2, &t3, &v1].into_iter().any(evicted), "below the cap nobody goes");
        // Counts below include the newcomer.
        let v2 = reg(5, "victim"); // victim 2 < thief 3: the thief's oldest
        assert!(evicted(&t1) && !evicted(&t2) && !evicted(&v1));
        assert_eq!((hub.len(), hub.user_connections("u")), (4, 4));
        drop(t1); // its guard finds nothing left to remove
        assert_eq!((hub.len(), hub.user_connections("u")), (4, 4));
        let t4 = reg(6, "thief"); // thief 3 > victim 2: the thief's own oldest
        assert!(evicted(&t2) && !evicted(&v1) && !evicted(&v2));
        let v3 = reg(7, "victim"); // victim 3 > thief 2: the victim's own oldest (a fair share)
        assert!(evicted(&v1) && !evicted(&t3) && !evicted(&t4));
        let o1 = reg(8, "other"); // thief 2 = victim 2, neither the newcomer's: the oldest socket
        assert!(evicted(&t3) && !evicted(&v2));
        let t5 = reg(9, "thief"); // thief 2 = victim 2 > other 1: a tie, the newcomer's session pays
        assert!(evicted(&t4) && !evicted(&v2) && !evicted(&o1));
        assert!(hub.is_connected("thief") && hub.is_connected("victim") && hub.is_connected("other"));
        assert_eq!(hub.register(10, "u", "x", 0).err(), Some(RegisterError::TooMany));
        drop((t2, t3, t4, t5, v1, v2, v3, o1));
        assert!(hub.is_empty() && hub.sessions().is_empty() && hub.user_connections("u") == 0);
    }

    #[test]
    fn concurrent_registrations_keep_the_cap_and_the_counts() {
        let hub = Hub::new(Arc::new(Metrics::default()));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let hub = hub.clone();
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for i in 0..500u64 {
                        let r = hub.register(t * 1000 + i, "u", if i % 3 == 0 { "a" } else { "b" }, 4).unwrap();
                        assert!(hub.user_connections("u") <= 4);
                        // Sockets end the way tasks end them: evicted ones, and some others.
                        kept.push(r);
                        kept.retain(|r| !evicted(r) && r.conn_id % 7 != 0);
                    }
                    kept
                })
            })
            .collect();
        let kept: Vec<Registration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let live = kept.iter().filter(|r| !evicted(r)).count();
        assert!(live <= 4);
        assert_eq!((hub.len(), hub.inner.conns.len(), hub.user_connections("u")), (live, live, live));
        let in_sessions: usize = hub.inner.by_session.iter().map(|e| e.value().len()).sum();
        assert_eq!(in_sessions, live);
        drop(kept);
        assert!(hub.is_empty() && hub.inner.by_user.is_empty() && hub.inner.by_session.is_empty());
    }
}

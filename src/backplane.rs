//! The multi-instance backplane (PostgreSQL only, docs/API.md §6): every instance `LISTEN`s for the
//! revocations other instances commit, applies them exactly like a local revocation (denylist,
//! then the hub closes local sockets), and publishes its socket presence.
//!
//! Notifications sent while the listener is disconnected are lost, so every (re)connect first
//! `LISTEN`s, then re-reads every revocation whose tokens may still live (a superset of what
//! was missed: the overlap makes commit order irrelevant) and applies it. While the listener is
//! down the instance fails closed: `authenticate` checks the session in the database on every
//! request and socket `auth`, and `/readyz` answers 503 once it has been down for 5 s.
//!
//! A notification whose log rows cannot be read leaves the denylist stale. The listener then
//! fails closed, retries the read briefly ([`NOTIFIED_READ_ATTEMPTS`]), and if it still fails it
//! drops its connection and starts over (LISTEN, then the full resync, which re-applies the
//! unread range too). So "down" always ends by itself: either the read succeeds or the
//! reconnect resyncs; the listener is never left connected but marked down (SECURITY.md RT4).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde::Deserialize;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::Millis;
use crate::state::AppState;
use crate::store::sql::REVOCATIONS_CHANNEL;
use crate::store::Revoked;

/// Channel on which instances acknowledge a revocation with the number of sockets they told.
pub const ACKS_CHANNEL: &str = "sessiond_acks";
/// How long the listener may be down before `/readyz` reports 503.
pub const READY_GRACE_MS: Millis = 5_000;
/// An instance whose heartbeat is older than this no longer counts (presence, acks).
pub const INSTANCE_TTL_MS: Millis = 15_000;
/// Presence rows of instances silent for this long are deleted.
pub const INSTANCE_FORGET_MS: Millis = 30_000;
/// Presence sync period.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(1);
/// Reads of a notified range before the listener gives up and reconnects + resyncs.
pub const NOTIFIED_READ_ATTEMPTS: usize = 3;
/// Pause before each retry of that read.
const NOTIFIED_READ_BACKOFF: [Duration; NOTIFIED_READ_ATTEMPTS - 1] =
    [Duration::from_millis(50), Duration::from_millis(250)];
/// Bound on one attempt: a pool that has no connection for this long is starved, and waiting
/// out its acquire timeout on every attempt would keep the instance failing closed for longer
/// than a resync takes.
const NOTIFIED_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// First pause before a reconnect; doubles up to 2 s, and starts over once the listener was up.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// Listener health and pending acknowledgements, shared with handlers.
pub struct Backplane {
    /// True while the listener is connected and resynced.
    listening: AtomicBool,
    /// When the listener went down (ms); meaningful while not listening.
    down_since: AtomicI64,
    /// The first LISTEN + resync has completed.
    synced_once: AtomicBool,
    /// request id → where acknowledgements go.
    acks: DashMap<String, mpsc::Sender<(String, i64)>>,
}

#[derive(Deserialize)]
struct RevocationNote {
    from: i64,
    to: i64,
    origin: String,
    req: Option<String>,
}

#[derive(Deserialize, serde::Serialize)]
struct AckNote {
    req: String,
    instance: String,
    n: i64,
}

impl Backplane {
    pub fn new(now: Millis) -> Self {
        Backplane {
            listening: AtomicBool::new(false),
            down_since: AtomicI64::new(now),
            synced_once: AtomicBool::new(false),
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

    fn set_down(&self, now: Millis) {
        if self.listening.swap(false, Ordering::AcqRel) {
            self.down_since.store(now, Ordering::Release);
        }
    }

    /// Connected and resynced (or the range that made it fail closed is applied after all).
    fn set_up(&self) {
        self.listening.store(true, Ordering::Release);
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
}

/// The `application_name` of an instance's listener connection.
pub fn listener_name(instance_id: &str) -> String {
    format!("sessiond-listener-{instance_id}")
}

/// Runs the listener until `stop`, reconnecting with backoff.
pub async fn run_listener(state: AppState, stop: CancellationToken) {
    let Some(bp) = state.backplane.clone() else { return };
    let mut backoff = RECONNECT_BACKOFF;
    loop {
        match listen_once(&state, &bp, &stop, &mut backoff).await {
            Ok(()) => break,
            Err(_) if stop.is_cancelled() => break,
            Err(e) => {
                bp.set_down(state.clock.now_ms());
                tracing::warn!(error = %e, retry_in = ?backoff, "revocation listener down; failing closed");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    bp.set_down(state.clock.now_ms());
}

/// One connection's life: LISTEN, resync, then apply notifications until the connection drops
/// or a notified range cannot be read (then the caller starts over, and the resync covers it).
async fn listen_once(
    state: &AppState,
    bp: &Backplane,
    stop: &CancellationToken,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    // A dedicated connection (not from the request pool), named so operators and tests can
    // find it in pg_stat_activity.
    let opts = PgConnectOptions::from_str(state.store.url())?.application_name(&listener_name(&state.instance_id));
    let pool = PgPoolOptions::new().max_connections(1).connect_with(opts).await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen_all([REVOCATIONS_CHANNEL, ACKS_CHANNEL]).await?;
    let n = crate::sessions::rebuild_denylist(state).await?;
    bp.set_up();
    bp.synced_once.store(true, Ordering::Release);
    // A forced resync is routine, not a sign of a database that refuses connections: the next
    // reconnect starts at the short pause again.
    *backoff = RECONNECT_BACKOFF;
    tracing::info!(resynced = n, "revocation listener up");
    loop {
        let note = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            n = listener.try_recv() => n?,
        };
        // `None`: the connection was lost. Start over: a new connection, LISTEN, resync.
        let Some(note) = note else { anyhow::bail!("listener connection lost") };
        match note.channel() {
            REVOCATIONS_CHANNEL => on_revocation(state, bp, note.payload()).await?,
            ACKS_CHANNEL => on_ack(bp, note.payload()),
            _ => {}
        }
    }
}

/// Applies another instance's revocation. Errs only when its log rows stay unreadable: the
/// listener must then reconnect and resync.
async fn on_revocation(state: &AppState, bp: &Backplane, payload: &str) -> anyhow::Result<()> {
    let Ok(note) = serde_json::from_str::<RevocationNote>(payload) else {
        tracing::warn!("malformed revocation notification ignored");
        return Ok(());
    };
    if note.origin == *state.instance_id {
        return Ok(()); // this instance made it and already published it
    }
    let revoked = read_notified(state, bp, note.from, note.to).await?;
    let n = crate::sessions::apply(state, &revoked);
    // Current again (a no-op unless a failed attempt made it fail closed).
    bp.set_up();
    if let Some(req) = note.req {
        let ack = AckNote { req, instance: state.instance_id.to_string(), n: n as i64 };
        let payload = serde_json::to_string(&ack).unwrap_or_default();
        if let Err(e) = state.store.notify(ACKS_CHANNEL, &payload).await {
            tracing::warn!(error = %e, "acknowledging a revocation failed");
        }
    }
    Ok(())
}

/// Reads the notified log range, retrying a failed read briefly. From the first failure until
/// the rows are applied (or the reconnect resyncs) the instance fails closed: its denylist
/// lacks a committed revocation.
async fn read_notified(state: &AppState, bp: &Backplane, from: i64, to: i64) -> anyhow::Result<Vec<Revoked>> {
    let mut attempt = 0;
    loop {
        let error = match tokio::time::timeout(NOTIFIED_READ_TIMEOUT, state.store.revocations_between(from, to)).await {
            Ok(Ok(rows)) => return Ok(rows),
            Ok(Err(e)) => anyhow::Error::from(e),
            Err(_) => anyhow::anyhow!("timed out after {NOTIFIED_READ_TIMEOUT:?}"),
        };
        bp.set_down(state.clock.now_ms());
        let Some(pause) = NOTIFIED_READ_BACKOFF.get(attempt) else {
            return Err(error.context("reading notified revocations failed; reconnecting to resync"));
        };
        tracing::warn!(error = %error, retry_in = ?pause, "reading notified revocations failed; failing closed");
        tokio::time::sleep(*pause).await;
        attempt += 1;
    }
}

fn on_ack(bp: &Backplane, payload: &str) {
    let Ok(ack) = serde_json::from_str::<AckNote>(payload) else { return };
    if let Some(tx) = bp.acks.get(&ack.req) {
        let _ = tx.try_send((ack.instance, ack.n));
    }
}

/// Publishes this instance's sessions with open sockets, every second, with a heartbeat.
pub async fn run_presence(state: AppState, stop: CancellationToken) {
    if state.backplane.is_none() {
        return;
    }
    let mut synced: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(PRESENCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = state.clock.now_ms();
        let current: HashSet<String> = state.hub.sessions().into_iter().collect();
        let added: Vec<String> = current.difference(&synced).cloned().collect();
        let removed: Vec<String> = synced.difference(&current).cloned().collect();
        match state.store.sync_presence(&state.instance_id, &added, &removed, now).await {
            Ok(()) => synced = current,
            Err(e) => tracing::warn!(error = %e, "presence sync failed"),
        }
        round += 1;
        if round % 10 == 0 {
            if let Err(e) = state.store.forget_instances(now - INSTANCE_FORGET_MS, None).await {
                tracing::warn!(error = %e, "forgetting dead instances failed");
            }
            let _ = state.store.prune_revocation_log(now - 24 * 3600 * 1000).await;
        }
    }
    let _ = state.store.forget_instances(i64::MIN, Some(&state.instance_id)).await;
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

/// Shared handle type in the state.
pub type SharedBackplane = Arc<Backplane>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_listener() {
        let bp = Backplane::new(1_000);
        assert!(!bp.is_ready(1_000), "not ready before the first LISTEN + resync");
        bp.listening.store(true, Ordering::Release);
        bp.synced_once.store(true, Ordering::Release);
        assert!(bp.is_ready(50_000));
        bp.set_down(60_000);
        assert!(!bp.is_up(), "fails closed at once");
        assert!(bp.is_ready(60_000 + READY_GRACE_MS - 1), "ready for 5 s while reconnecting");
        assert!(!bp.is_ready(60_000 + READY_GRACE_MS), "503 after 5 s down");
    }
}

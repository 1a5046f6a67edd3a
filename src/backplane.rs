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
//! A listener that stops delivering without an error (a silent network: packets dropped,
//! nothing reset) counts as down too: it probes itself every [`PROBE_EVERY`] (a `NOTIFY` on its
//! own channel, sent through the request pool) and, having heard nothing for [`PROOF_WITHIN`],
//! drops its connection and starts over, failing closed meanwhile (SECURITY.md G-4).
//!
//! A notification whose log rows cannot be read leaves the denylist stale. The listener then
//! fails closed, retries the read briefly ([`NOTIFIED_READ_ATTEMPTS`]), and if it still fails it
//! drops its connection and starts over (LISTEN, then the full resync, which re-applies the
//! unread range too). So "down" always ends by itself: either the read succeeds or the
//! reconnect resyncs; the listener is never left connected but marked down (SECURITY.md RT4).
//!
//! Notifications that are already queued when the listener wakes are handled as one batch: the
//! id ranges of the other instances' notes are merged and read in one query, then applied note
//! by note (so each admin logout's acknowledgement counts its own sockets). A burst of
//! revocations elsewhere costs this instance one read, not one per revocation.

use std::collections::HashSet;
use std::time::Duration;

use futures::FutureExt;
use serde::Deserialize;
use sqlx::postgres::{PgListener, PgNotification};
use tokio_util::sync::CancellationToken;

use crate::cluster::Link;
use crate::cluster::{ACKS_CHANNEL, INSTANCE_FORGET_MS};
use crate::sessions::Sessions;
use crate::store::postgres::REVOCATIONS_CHANNEL;
use crate::store::{PgStore, Revoked};

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
/// Most notifications handled as one batch (one read of the log).
const MAX_BATCH: usize = 512;
/// How often the listener proves that it still delivers: a `NOTIFY` to itself, sent through
/// the request pool, that it must hear back (docs/API.md §6: at least every 2 s).
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// With nothing heard for this long, its own probes included, the listener counts as down
/// (a silent network: packets dropped, nothing reset, no error ever comes): the instance fails
/// closed, and the listener reconnects and resyncs (docs/API.md §6: 5 s; SECURITY.md G-4).
pub const PROOF_WITHIN: Duration = Duration::from_secs(5);

/// The channel an instance's listener probes itself on (only it listens there).
pub fn probe_channel(instance_id: &str) -> String {
    format!("sessiond_probe_{instance_id}")
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

/// The `application_name` of an instance's listener connection.
pub fn listener_name(instance_id: &str) -> String {
    format!("sessiond-listener-{instance_id}")
}

/// Runs the listener until `stop`, reconnecting with backoff.
pub async fn run_listener(sessions: Sessions, stop: CancellationToken) {
    let (Some(bp), Some(pg)) = (sessions.link.clone(), sessions.store.postgres().cloned()) else { return };
    let mut backoff = RECONNECT_BACKOFF;
    loop {
        match listen_once(&sessions, &pg, &bp, &stop, &mut backoff).await {
            Ok(()) => break,
            Err(_) if stop.is_cancelled() => break,
            Err(e) => {
                bp.set_down(sessions.clock.now_ms());
                tracing::warn!(error = %e, retry_in = ?backoff, "revocation listener down; failing closed");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    bp.set_down(sessions.clock.now_ms());
}

/// One connection's life: LISTEN, resync, then apply notifications until the connection drops
/// or a notified range cannot be read (then the caller starts over, and the resync covers it).
async fn listen_once(
    sessions: &Sessions,
    pg: &PgStore,
    bp: &Link,
    stop: &CancellationToken,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    // Every step is bounded: on a silent network none of them would ever fail by itself.
    let bound = sessions.store.db_timeout();
    let probe = probe_channel(&sessions.instance_id);
    let mut listener = tokio::time::timeout(bound, pg.listener(&listener_name(&sessions.instance_id)))
        .await
        .map_err(|_| anyhow::anyhow!("connecting the listener took longer than {bound:?}"))??;
    tokio::time::timeout(bound, listener.listen_all([REVOCATIONS_CHANNEL, ACKS_CHANNEL, probe.as_str()]))
        .await
        .map_err(|_| anyhow::anyhow!("LISTEN took longer than {bound:?}"))??;
    let n = sessions.rebuild_denylist().await?;
    bp.set_up();
    bp.set_synced();
    bp.proved(sessions.clock.now_ms());
    // A forced resync is routine, not a sign of a database that refuses connections: the next
    // reconnect starts at the short pause again.
    *backoff = RECONNECT_BACKOFF;
    tracing::info!(resynced = n, "revocation listener up");
    let mut heard = tokio::time::Instant::now();
    let mut probes = tokio::time::interval(PROBE_EVERY);
    probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let note = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = bp.resync_requested() => anyhow::bail!("a resync was requested"),
            _ = tokio::time::sleep_until(heard + PROOF_WITHIN) => anyhow::bail!(
                "the listener heard nothing for {PROOF_WITHIN:?}, its own probes included: a silent network"
            ),
            _ = probes.tick() => {
                send_probe(pg.clone(), probe.clone());
                continue;
            }
            n = listener.try_recv() => n?,
        };
        // `None`: the connection was lost. Start over: a new connection, LISTEN, resync.
        let Some(note) = note else { anyhow::bail!("listener connection lost") };
        // Anything heard proves the connection delivers.
        heard = tokio::time::Instant::now();
        bp.proved(sessions.clock.now_ms());
        let (batch, lost) = drain_queued(&mut listener, note)?;
        let mut revocations = Vec::new();
        for note in &batch {
            match note.channel() {
                REVOCATIONS_CHANNEL => revocations.push(note.payload()),
                ACKS_CHANNEL => on_ack(bp, note.payload()),
                _ => {}
            }
        }
        on_revocations(sessions, pg, bp, &revocations).await?;
        if lost {
            anyhow::bail!("listener connection lost");
        }
    }
}

/// Sends one liveness probe through the request pool, in the background (bounded: a probe that
/// cannot be sent is a probe not heard).
fn send_probe(pg: PgStore, channel: String) {
    tokio::spawn(async move {
        match tokio::time::timeout(PROBE_EVERY, pg.notify(&channel, "")).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "the listener's probe could not be sent"),
            Err(_) => tracing::debug!("the listener's probe could not be sent in time"),
        }
    });
}

/// `first` and the notifications already received behind it (at most [`MAX_BATCH`]), without
/// waiting for more; and whether the connection was found lost meanwhile. Polling `try_recv`
/// once is cancel-safe: sqlx keeps a partly read message in the connection's buffer.
fn drain_queued(listener: &mut PgListener, first: PgNotification) -> anyhow::Result<(Vec<PgNotification>, bool)> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match listener.try_recv().now_or_never() {
            Some(Ok(Some(note))) => batch.push(note),
            Some(Ok(None)) => return Ok((batch, true)),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    Ok((batch, false))
}

/// The revocation notes of a batch that this instance must apply: well-formed, and made by
/// another instance (the origin has applied and published its own already).
fn foreign_notes(payloads: &[&str], instance_id: &str) -> Vec<RevocationNote> {
    let mut notes = Vec::with_capacity(payloads.len());
    for payload in payloads {
        match serde_json::from_str::<RevocationNote>(payload) {
            Ok(note) if note.origin == instance_id => {}
            Ok(note) => notes.push(note),
            Err(_) => tracing::warn!("malformed revocation notification ignored"),
        }
    }
    notes
}

/// Applies other instances' revocations: one read of every notified range, then each note's
/// rows in turn, acknowledging those that carry a request id with the sockets told here. Errs
/// only when the log rows stay unreadable: the listener must then reconnect and resync.
async fn on_revocations(sessions: &Sessions, pg: &PgStore, bp: &Link, payloads: &[&str]) -> anyhow::Result<()> {
    let notes = foreign_notes(payloads, &sessions.instance_id);
    if notes.is_empty() {
        return Ok(());
    }
    let ranges: Vec<(i64, i64)> = notes.iter().map(|n| (n.from, n.to)).collect();
    let rows = read_notified(sessions, pg, bp, &ranges).await?;
    let mut acks = Vec::new();
    for note in notes {
        // Rows come in id order: a note's rows are one slice.
        let start = rows.partition_point(|(id, _)| *id < note.from);
        let end = rows.partition_point(|(id, _)| *id <= note.to).max(start);
        let revoked: Vec<Revoked> = rows[start..end].iter().map(|(_, r)| r.clone()).collect();
        let n = sessions.apply(&revoked);
        if let Some(req) = note.req {
            acks.push(AckNote { req, instance: sessions.instance_id.to_string(), n: n as i64 });
        }
    }
    // Current again (a no-op unless a failed attempt made it fail closed).
    bp.set_up();
    for ack in acks {
        let payload = serde_json::to_string(&ack).unwrap_or_default();
        if let Err(e) = pg.notify(ACKS_CHANNEL, &payload).await {
            tracing::warn!(error = %e, "acknowledging a revocation failed");
        }
    }
    Ok(())
}

/// Reads the notified log ranges, retrying a failed read briefly. From the first failure until
/// the rows are applied (or the reconnect resyncs) the instance fails closed: its denylist
/// lacks a committed revocation.
async fn read_notified(
    sessions: &Sessions,
    pg: &PgStore,
    bp: &Link,
    ranges: &[(i64, i64)],
) -> anyhow::Result<Vec<(i64, Revoked)>> {
    let mut attempt = 0;
    loop {
        let error = match tokio::time::timeout(NOTIFIED_READ_TIMEOUT, pg.revocations_in(ranges)).await {
            Ok(Ok(rows)) => return Ok(rows),
            Ok(Err(e)) => anyhow::Error::from(e),
            Err(_) => anyhow::anyhow!("timed out after {NOTIFIED_READ_TIMEOUT:?}"),
        };
        bp.set_down(sessions.clock.now_ms());
        let Some(pause) = NOTIFIED_READ_BACKOFF.get(attempt) else {
            return Err(error.context("reading notified revocations failed; reconnecting to resync"));
        };
        tracing::warn!(error = %error, retry_in = ?pause, "reading notified revocations failed; failing closed");
        tokio::time::sleep(*pause).await;
        attempt += 1;
    }
}

fn on_ack(bp: &Link, payload: &str) {
    let Ok(ack) = serde_json::from_str::<AckNote>(payload) else { return };
    bp.on_ack(&ack.req, ack.instance, ack.n);
}

/// Publishes this instance's sessions with open sockets, every second, with a heartbeat.
pub async fn run_presence(sessions: Sessions, stop: CancellationToken) {
    let (Some(_), Some(pg)) = (&sessions.link, sessions.store.postgres()) else { return };
    let mut synced: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(PRESENCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = sessions.clock.now_ms();
        let current: HashSet<String> = sessions.hub.sessions().into_iter().collect();
        let added: Vec<String> = current.difference(&synced).cloned().collect();
        let removed: Vec<String> = synced.difference(&current).cloned().collect();
        match pg.sync_presence(&sessions.instance_id, &added, &removed, now).await {
            Ok(()) => synced = current,
            Err(e) => tracing::warn!(error = %e, "presence sync failed"),
        }
        round += 1;
        if round % 10 == 0 {
            if let Err(e) = pg.forget_silent_instances(now - INSTANCE_FORGET_MS).await {
                tracing::warn!(error = %e, "forgetting dead instances failed");
            }
        }
    }
    let _ = pg.forget_instance(&sessions.instance_id).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_applies_only_other_instances_well_formed_notes() {
        let note = |from: i64, to: i64, origin: &str, req: Option<&str>| {
            serde_json::json!({ "from": from, "to": to, "origin": origin, "req": req }).to_string()
        };
        let (a, mine, b) = (note(1, 3, "other", None), note(4, 9, "me", None), note(10, 10, "third", Some("r1")));
        let notes = foreign_notes(&[&a, &mine, "not json", &b], "me");
        let seen: Vec<_> = notes.iter().map(|n| (n.from, n.to, n.origin.as_str(), n.req.as_deref())).collect();
        assert_eq!(seen, [(1, 3, "other", None), (10, 10, "third", Some("r1"))], "own and malformed notes skipped");
    }
}

//! Shared Signals storage (docs/SSF.md §3.3): the SET keys, the streams and their subject
//! rules, the outbox (`ssf_signals`, written by the revoking transactions in `revoke_in` and
//! `signal_user`) and the stored SETs (`ssf_deliveries`). The store knows rows and states only;
//! what a SET says and to whom is the `ssf` room's business (it passes a `build` function to
//! [`expand`](super::Store::ssf_expand)).
//!
//! Written once for both backends by [`ssf_store!`], like `shared_store!`: PostgreSQL claims
//! rows `FOR UPDATE SKIP LOCKED` (any number of instances dispatch and push at once, none
//! waits for another's rows), SQLite needs no lock under `BEGIN IMMEDIATE`.

use crate::clock::Millis;

/// An RS256 key that signs SETs.
#[derive(Clone, sqlx::FromRow)]
pub struct SsfKeyRow {
    pub kid: String,
    pub private_der: Vec<u8>,
    #[sqlx(try_from = "super::Ts")]
    pub created_at: Millis,
    #[sqlx(try_from = "super::OptTs")]
    pub retired_at: Option<Millis>,
}

impl std::fmt::Debug for SsfKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsfKeyRow").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// A stream (one per receiver credential). JSON columns are kept as text.
#[derive(Clone, sqlx::FromRow)]
pub struct StreamRow {
    pub id: String,
    pub owner: String,
    pub aud: String,
    pub delivery: String,
    pub method: String,
    pub endpoint_url: Option<String>,
    pub authorization_header: Option<String>,
    pub events_requested: Option<String>,
    pub events_delivered: String,
    pub description: Option<String>,
    pub event_subject: bool,
    pub status: String,
    pub status_reason: Option<String>,
    pub health: String,
    #[sqlx(try_from = "super::OptTs")]
    pub last_success_at: Option<Millis>,
    pub last_error: Option<String>,
    #[sqlx(try_from = "super::OptTs")]
    pub last_verify_at: Option<Millis>,
    #[sqlx(try_from = "super::Ts")]
    pub created_at: Millis,
    #[sqlx(try_from = "super::Ts")]
    pub updated_at: Millis,
}

/// Never prints the receiver's `authorization_header` (docs/SSF.md §1.2).
impl std::fmt::Debug for StreamRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRow")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// An outbox row: one event, not yet expanded into SETs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SignalRow {
    pub id: i64,
    pub kind: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub reason: String,
    pub txn: Option<String>,
    #[sqlx(try_from = "super::Ts")]
    pub occurred_at: Millis,
    pub stream_id: Option<String>,
    pub payload: Option<String>,
}

/// A SET built and signed for one stream by the dispatcher.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub stream_id: String,
    pub jti: String,
    pub kind: String,
    pub subject_key: String,
    pub kid: String,
    pub set_jws: String,
}

/// A stored SET, as `ssf stream show` lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub stream_id: String,
    pub jti: String,
    pub kind: String,
    pub state: String,
    pub attempts: i32,
    #[sqlx(try_from = "super::Ts")]
    pub next_attempt_at: Millis,
    pub last_error: Option<String>,
    #[sqlx(try_from = "super::Ts")]
    pub created_at: Millis,
}

/// A SET due for a push attempt, leased to this worker.
#[derive(Clone, sqlx::FromRow)]
pub struct PushJob {
    pub id: i64,
    pub stream_id: String,
    pub jti: String,
    pub kind: String,
    pub set_jws: String,
    pub attempts: i32,
    #[sqlx(try_from = "super::Ts")]
    pub created_at: Millis,
    pub endpoint_url: Option<String>,
    pub authorization_header: Option<String>,
}

impl std::fmt::Debug for PushJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushJob").field("id", &self.id).field("jti", &self.jti).finish_non_exhaustive()
    }
}

/// Per-stream counts for metrics and `ssf stream show`.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct StreamCounts {
    pub stream_id: String,
    pub pending: i64,
    pub dead: i64,
}

/// The dispatcher's SET builder: given an outbox row, a stream and that stream's excluded
/// subjects, the SET to store for the stream, or `None`.
pub type BuildSet = dyn Fn(&SignalRow, &StreamRow, &[String]) -> Option<NewDelivery> + Send + Sync;

/// What a push attempt came to, as the store records it.
#[derive(Debug, Clone)]
pub enum PushResult {
    Delivered,
    Retry { next_attempt_at: Millis, error: String, failing: bool },
    Dead { error: String },
}

/// The columns of [`StreamRow`].
pub(super) const STREAM_COLS: &str = "id, owner, aud, delivery, method, endpoint_url, authorization_header, \
    events_requested, events_delivered, description, event_subject, status, status_reason, health, \
    last_success_at, last_error, last_verify_at, created_at, updated_at";

/// The columns of [`DeliveryRow`].
pub(super) const DELIVERY_COLS: &str =
    "id, stream_id, jti, kind, state, attempts, next_attempt_at, last_error, created_at";

/// Paused streams hold at most this many SETs (docs/SSF.md §4); past it the oldest are dropped.
pub const PAUSED_MAX: i64 = 100_000;
/// How long a returned, unacknowledged polled SET waits before it is handed out again (§3.2).
pub const REDELIVER_AFTER_MS: Millis = 30_000;
/// Retention: delivered rows 24 h, dead, dropped or never-delivered ones 7 days (§3.3).
pub const KEEP_DELIVERED_MS: Millis = 24 * 3_600_000;
pub const KEEP_UNDELIVERED_MS: Millis = 7 * 24 * 3_600_000;

/// Expands to the SSF statements as methods of the backend store `$Store` (connection type
/// `$Conn`); `$lock_signals` and `$lock_push` are the claims' lock clauses.
macro_rules! ssf_store {
    ($Store:ident, $Conn:ty, $lock_signals:literal, $lock_push:literal) => {
        /// The Shared Signals statements (`store/ssf.rs`), expanded for this backend.
        pub(super) mod ssf_shared {
            use super::$Store as Backend;
            use $crate::clock::Millis;
            use $crate::store::ssf::*;
            use $crate::store::{StoreResult, Ts};

            impl Backend {
                // ---- keys ----

                pub(crate) async fn ssf_keys(&self) -> StoreResult<Vec<SsfKeyRow>> {
                    Ok(sqlx::query_as("SELECT * FROM ssf_keys ORDER BY created_at, kid").fetch_all(self.reader()).await?)
                }

                /// Kids whose SETs are still stored undelivered or dead (their keys stay
                /// published after retirement).
                pub(crate) async fn ssf_kids_in_use(&self) -> StoreResult<Vec<String>> {
                    Ok(sqlx::query_scalar(
                        "SELECT DISTINCT kid FROM ssf_deliveries WHERE state IN ('pending', 'dead')",
                    )
                    .fetch_all(self.reader())
                    .await?)
                }

                /// Adds a signing key. `only_if_empty`: only when there is no key yet (first
                /// start, racing instances); otherwise the other keys are retired (rotation).
                pub(crate) async fn ssf_insert_key(&self, k: &SsfKeyRow, only_if_empty: bool) -> StoreResult<bool> {
                    let mut tx = self.begin().await?;
                    self.lock_signing_keys(&mut tx).await?;
                    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ssf_keys WHERE retired_at IS NULL")
                        .fetch_one(&mut *tx)
                        .await?;
                    if only_if_empty && n > 0 {
                        return Ok(false);
                    }
                    sqlx::query("UPDATE ssf_keys SET retired_at = $1 WHERE retired_at IS NULL")
                        .bind(Ts(k.created_at))
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("INSERT INTO ssf_keys (kid, private_der, created_at) VALUES ($1, $2, $3)")
                        .bind(&k.kid)
                        .bind(&k.private_der)
                        .bind(Ts(k.created_at))
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(true)
                }

                // ---- streams ----

                /// Creates a stream; false when its owner has one already.
                pub(crate) async fn ssf_create_stream(&self, s: &StreamRow) -> StoreResult<bool> {
                    let r = sqlx::query(
                        "INSERT INTO ssf_streams (id, owner, aud, delivery, method, endpoint_url, authorization_header, \
                           events_requested, events_delivered, description, event_subject, status, status_reason, \
                           health, created_at, updated_at) \
                         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'ok', $14, $14 \
                         WHERE NOT EXISTS (SELECT 1 FROM ssf_streams WHERE owner = $2)",
                    )
                    .bind(&s.id)
                    .bind(&s.owner)
                    .bind(&s.aud)
                    .bind(&s.delivery)
                    .bind(&s.method)
                    .bind(&s.endpoint_url)
                    .bind(&s.authorization_header)
                    .bind(&s.events_requested)
                    .bind(&s.events_delivered)
                    .bind(&s.description)
                    .bind(s.event_subject)
                    .bind(&s.status)
                    .bind(&s.status_reason)
                    .bind(Ts(s.created_at))
                    .execute(self.writer())
                    .await;
                    match r {
                        Ok(r) => Ok(r.rows_affected() == 1),
                        // Two creates racing past NOT EXISTS: the UNIQUE owner decides.
                        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
                        Err(e) => Err(e.into()),
                    }
                }

                pub(crate) async fn ssf_stream(&self, id: &str) -> StoreResult<Option<StreamRow>> {
                    Ok(sqlx::query_as(&format!("SELECT {STREAM_COLS} FROM ssf_streams WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?)
                }

                pub(crate) async fn ssf_streams(&self) -> StoreResult<Vec<StreamRow>> {
                    Ok(sqlx::query_as(&format!("SELECT {STREAM_COLS} FROM ssf_streams ORDER BY created_at, id"))
                        .fetch_all(self.reader())
                        .await?)
                }

                /// Replaces the Receiver-supplied configuration (and what derives from it).
                pub(crate) async fn ssf_update_stream(&self, s: &StreamRow, now: Millis) -> StoreResult<bool> {
                    let r = sqlx::query(
                        "UPDATE ssf_streams SET delivery = $2, method = $3, endpoint_url = $4, authorization_header = $5, \
                           events_requested = $6, events_delivered = $7, description = $8, updated_at = $9 \
                         WHERE id = $1",
                    )
                    .bind(&s.id)
                    .bind(&s.delivery)
                    .bind(&s.method)
                    .bind(&s.endpoint_url)
                    .bind(&s.authorization_header)
                    .bind(&s.events_requested)
                    .bind(&s.events_delivered)
                    .bind(&s.description)
                    .bind(Ts(now))
                    .execute(self.writer())
                    .await?;
                    Ok(r.rows_affected() == 1)
                }

                /// Deletes a stream; its stored SETs and subject rules go with it (cascade).
                pub(crate) async fn ssf_delete_stream(&self, id: &str) -> StoreResult<bool> {
                    let mut tx = self.begin().await?;
                    sqlx::query("DELETE FROM ssf_deliveries WHERE stream_id = $1").bind(id).execute(&mut *tx).await?;
                    sqlx::query("DELETE FROM ssf_subject_rules WHERE stream_id = $1").bind(id).execute(&mut *tx).await?;
                    let r = sqlx::query("DELETE FROM ssf_streams WHERE id = $1").bind(id).execute(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(r.rows_affected() == 1)
                }

                /// Sets a stream's status. Disabling drops what it held (§4). `announce`: the
                /// stream-updated event's payload, queued in the same transaction (a status
                /// change by sessiond itself, §8.1.5). False when there is no such stream.
                pub(crate) async fn ssf_set_status(
                    &self,
                    id: &str,
                    status: &str,
                    reason: Option<&str>,
                    announce: Option<&str>,
                    now: Millis,
                ) -> StoreResult<bool> {
                    let mut tx = self.begin().await?;
                    let r = sqlx::query(
                        "UPDATE ssf_streams SET status = $2, status_reason = $3, updated_at = $4 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(status)
                    .bind(reason)
                    .bind(Ts(now))
                    .execute(&mut *tx)
                    .await?;
                    if r.rows_affected() != 1 {
                        return Ok(false);
                    }
                    if status == "disabled" {
                        sqlx::query(
                            "UPDATE ssf_deliveries SET state = 'dropped', updated_at = $2 \
                             WHERE stream_id = $1 AND state = 'pending' AND kind <> 'stream-updated'",
                        )
                        .bind(id)
                        .bind(Ts(now))
                        .execute(&mut *tx)
                        .await?;
                    }
                    if let Some(payload) = announce {
                        sqlx::query(
                            "INSERT INTO ssf_signals (kind, reason, occurred_at, stream_id, payload) \
                             VALUES ('stream-updated', 'stream_updated', $1, $2, $3)",
                        )
                        .bind(Ts(now))
                        .bind(id)
                        .bind(payload)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(true)
                }

                /// Queues a verification event unless the last one was less than
                /// `min_interval` ago; false when it is too soon.
                pub(crate) async fn ssf_verify(
                    &self,
                    id: &str,
                    payload: &str,
                    now: Millis,
                    min_interval: Millis,
                ) -> StoreResult<bool> {
                    let mut tx = self.begin().await?;
                    let r = sqlx::query(
                        "UPDATE ssf_streams SET last_verify_at = $2 \
                         WHERE id = $1 AND (last_verify_at IS NULL OR last_verify_at <= $3)",
                    )
                    .bind(id)
                    .bind(Ts(now))
                    .bind(Ts(now - min_interval))
                    .execute(&mut *tx)
                    .await?;
                    if r.rows_affected() != 1 {
                        return Ok(false);
                    }
                    sqlx::query(
                        "INSERT INTO ssf_signals (kind, reason, occurred_at, stream_id, payload) \
                         VALUES ('verification', 'verification', $1, $2, $3)",
                    )
                    .bind(Ts(now))
                    .bind(id)
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(true)
                }

                pub(crate) async fn ssf_exclude_subject(&self, id: &str, subject: &str, exclude: bool) -> StoreResult<()> {
                    let sql = if exclude {
                        "INSERT INTO ssf_subject_rules (stream_id, subject) SELECT $1, $2 \
                         WHERE NOT EXISTS (SELECT 1 FROM ssf_subject_rules WHERE stream_id = $1 AND subject = $2)"
                    } else {
                        "DELETE FROM ssf_subject_rules WHERE stream_id = $1 AND subject = $2"
                    };
                    match sqlx::query(sql).bind(id).bind(subject).execute(self.writer()).await {
                        Ok(_) => Ok(()),
                        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(()),
                        Err(e) => Err(e.into()),
                    }
                }

                // ---- the dispatcher ----

                /// Whether some outbox row waits to be expanded (a read: the idle dispatcher,
                /// every second and every revocation, takes no write transaction, which on
                /// SQLite is the one write lock).
                pub(crate) async fn ssf_has_unexpanded(&self) -> StoreResult<bool> {
                    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ssf_signals WHERE expanded_at IS NULL)")
                        .fetch_one(self.reader())
                        .await?)
                }

                /// Whether a poll of `stream_id` would hand out a SET now (a read: a waiting long
                /// poll asks this before taking a write transaction).
                pub(crate) async fn ssf_poll_ready(&self, stream_id: &str, active: bool, now: Millis) -> StoreResult<bool> {
                    Ok(sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM ssf_deliveries WHERE stream_id = $1 AND state = 'pending' \
                           AND ($2 OR kind = 'stream-updated') AND (returned_at IS NULL OR returned_at <= $3))",
                    )
                    .bind(stream_id)
                    .bind(active)
                    .bind(Ts(now - REDELIVER_AFTER_MS))
                    .fetch_one(self.reader())
                    .await?)
                }

                /// Claims up to `limit` outbox rows, builds their SETs with `build` (given the
                /// signal, a stream and that stream's excluded subjects; `None` = not for this
                /// stream) and stores them with the rows marked expanded, in one transaction.
                /// Returns how many signals were expanded and the SETs stored.
                pub(crate) async fn ssf_expand(
                    &self,
                    limit: i64,
                    now: Millis,
                    build: &BuildSet,
                ) -> StoreResult<(usize, usize)> {
                    let mut tx = self.begin().await?;
                    let signals: Vec<SignalRow> = sqlx::query_as(concat!(
                        "SELECT id, kind, user_id, session_id, reason, txn, occurred_at, stream_id, payload \
                         FROM ssf_signals WHERE expanded_at IS NULL ORDER BY id LIMIT $1",
                        $lock_signals
                    ))
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                    if signals.is_empty() {
                        return Ok((0, 0));
                    }
                    let streams: Vec<StreamRow> =
                        sqlx::query_as(&format!("SELECT {STREAM_COLS} FROM ssf_streams ORDER BY id"))
                            .fetch_all(&mut *tx)
                            .await?;
                    let rules: Vec<(String, String)> =
                        sqlx::query_as("SELECT stream_id, subject FROM ssf_subject_rules").fetch_all(&mut *tx).await?;
                    let mut stored = 0;
                    for signal in &signals {
                        for stream in &streams {
                            let excluded: Vec<String> =
                                rules.iter().filter(|(s, _)| *s == stream.id).map(|(_, r)| r.clone()).collect();
                            let Some(d) = build(signal, stream, &excluded) else { continue };
                            sqlx::query(
                                "INSERT INTO ssf_deliveries (stream_id, jti, signal_id, kind, subject_key, kid, set_jws, \
                                   state, attempts, next_attempt_at, created_at, updated_at) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8, $8)",
                            )
                            .bind(&d.stream_id)
                            .bind(&d.jti)
                            .bind(signal.id)
                            .bind(&d.kind)
                            .bind(&d.subject_key)
                            .bind(&d.kid)
                            .bind(&d.set_jws)
                            .bind(Ts(now))
                            .execute(&mut *tx)
                            .await?;
                            stored += 1;
                        }
                        sqlx::query("UPDATE ssf_signals SET expanded_at = $2 WHERE id = $1")
                            .bind(signal.id)
                            .bind(Ts(now))
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok((signals.len(), stored))
                }

                // ---- push ----

                /// Leases up to `limit` SETs due for a push: on enabled push streams (a
                /// stream-updated SET goes out whatever the status, ahead of what is held), the
                /// oldest pending SET of each subject only (SETs about one subject are never in
                /// flight together nor reordered, §3.1), not leased by another worker. "Oldest"
                /// is by outbox row (the order events were written), not by stored SET: two
                /// instances may expand one user's events in either order.
                ///
                /// "Oldest pending of its subject" is `row_number() = 1` over the pending SETs
                /// partitioned by (stream, subject): one sort of the backlog per claim, whatever
                /// the planner believes. It was a correlated `NOT EXISTS (an older pending SET
                /// of this subject)`, which PostgreSQL runs as a nested loop probing through
                /// `ssf_deliveries_stream_idx` (every pending SET of the stream, per candidate)
                /// when its statistics say few SETs are pending, as they do while a burst is
                /// new (measured: the generic plan of sqlx's prepared statement, at 5,000
                /// pending, even with `ssf_deliveries_subject_idx`): quadratic in the backlog,
                /// 4.4 s per claim, so a logout-everyone over 5,000 sessions was pushed at ~10
                /// SETs/s (BENCHMARKS.md, `ssf`). This form takes 15 ms there (generic or
                /// custom plan), and 29 ms on SQLite (the probe with that index: 11 ms; SQLite
                /// has no such plan flip, but one query serves both). Poll streams' rows and a
                /// paused stream's held rows are left out before the window: their partitions
                /// go whole (a paused stream keeps only its stream-updated rows, a subject of
                /// their own), so the numbering of the rest is unchanged. The outer query
                /// repeats the state and lease checks, which PostgreSQL re-evaluates on a row
                /// another instance has just leased.
                pub(crate) async fn ssf_claim_push(
                    &self,
                    now: Millis,
                    lease_until: Millis,
                    limit: i64,
                ) -> StoreResult<Vec<PushJob>> {
                    // A read first (`ssf_deliveries_due_idx`): nothing due, no write transaction.
                    let due: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM ssf_deliveries WHERE state = 'pending' AND next_attempt_at <= $1)",
                    )
                    .bind(Ts(now))
                    .fetch_one(self.reader())
                    .await?;
                    if !due {
                        return Ok(Vec::new());
                    }
                    let mut tx = self.begin().await?;
                    let jobs: Vec<PushJob> = sqlx::query_as(concat!(
                        "SELECT d.id, d.stream_id, d.jti, d.kind, d.set_jws, d.attempts, d.created_at, \
                           s.endpoint_url, s.authorization_header \
                         FROM ssf_deliveries d JOIN ssf_streams s ON s.id = d.stream_id \
                         WHERE d.state = 'pending' AND (d.leased_until IS NULL OR d.leased_until <= $1) \
                           AND d.id IN ( \
                             SELECT h.id FROM ( \
                               SELECT e.id, e.kind, e.signal_id, e.next_attempt_at, e.leased_until, \
                                 row_number() OVER (PARTITION BY e.stream_id, e.subject_key \
                                                    ORDER BY e.signal_id, e.id) AS rn \
                               FROM ssf_deliveries e JOIN ssf_streams t ON t.id = e.stream_id \
                               WHERE e.state = 'pending' AND t.method = 'push' \
                                 AND (t.status = 'enabled' OR e.kind = 'stream-updated')) h \
                             WHERE h.rn = 1 AND h.next_attempt_at <= $1 \
                               AND (h.leased_until IS NULL OR h.leased_until <= $1) \
                             ORDER BY CASE WHEN h.kind = 'stream-updated' THEN 0 ELSE 1 END, h.signal_id, h.id \
                             LIMIT $2) \
                         ORDER BY CASE WHEN d.kind = 'stream-updated' THEN 0 ELSE 1 END, d.signal_id, d.id LIMIT $2",
                        $lock_push
                    ))
                    .bind(Ts(now))
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                    for j in &jobs {
                        sqlx::query("UPDATE ssf_deliveries SET leased_until = $2 WHERE id = $1")
                            .bind(j.id)
                            .bind(Ts(lease_until))
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(jobs)
                }

                /// Gives a leased SET back at once (this worker will not push it now).
                pub(crate) async fn ssf_release_lease(&self, id: i64) -> StoreResult<()> {
                    sqlx::query("UPDATE ssf_deliveries SET leased_until = NULL WHERE id = $1 AND state = 'pending'")
                        .bind(id)
                        .execute(self.writer())
                        .await?;
                    Ok(())
                }

                /// Drops every lease: for a single-instance database at start, where any lease
                /// left is a killed process's push that will never report.
                pub(crate) async fn ssf_clear_leases(&self) -> StoreResult<u64> {
                    let r = sqlx::query("UPDATE ssf_deliveries SET leased_until = NULL WHERE leased_until IS NOT NULL")
                        .execute(self.writer())
                        .await?;
                    Ok(r.rows_affected())
                }

                /// Records a push attempt's result (and the stream's health).
                pub(crate) async fn ssf_push_result(
                    &self,
                    job: &PushJob,
                    result: &PushResult,
                    now: Millis,
                ) -> StoreResult<()> {
                    let mut tx = self.begin().await?;
                    match result {
                        PushResult::Delivered => {
                            sqlx::query(
                                "UPDATE ssf_deliveries SET state = 'delivered', attempts = attempts + 1, \
                                   leased_until = NULL, updated_at = $2 WHERE id = $1 AND state = 'pending'",
                            )
                            .bind(job.id)
                            .bind(Ts(now))
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query(
                                "UPDATE ssf_streams SET health = 'ok', last_success_at = $2, last_error = NULL WHERE id = $1",
                            )
                            .bind(&job.stream_id)
                            .bind(Ts(now))
                            .execute(&mut *tx)
                            .await?;
                        }
                        PushResult::Retry { next_attempt_at, error, failing } => {
                            sqlx::query(
                                "UPDATE ssf_deliveries SET attempts = attempts + 1, next_attempt_at = $2, \
                                   leased_until = NULL, last_error = $3, updated_at = $4 WHERE id = $1 AND state = 'pending'",
                            )
                            .bind(job.id)
                            .bind(Ts(*next_attempt_at))
                            .bind(error)
                            .bind(Ts(now))
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query("UPDATE ssf_streams SET health = $2, last_error = $3 WHERE id = $1")
                                .bind(&job.stream_id)
                                .bind(if *failing { "failing" } else { "retrying" })
                                .bind(error)
                                .execute(&mut *tx)
                                .await?;
                        }
                        PushResult::Dead { error } => {
                            sqlx::query(
                                "UPDATE ssf_deliveries SET state = 'dead', attempts = attempts + 1, leased_until = NULL, \
                                   last_error = $2, updated_at = $3 WHERE id = $1 AND state = 'pending'",
                            )
                            .bind(job.id)
                            .bind(error)
                            .bind(Ts(now))
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query("UPDATE ssf_streams SET last_error = $2 WHERE id = $1")
                                .bind(&job.stream_id)
                                .bind(error)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                    tx.commit().await?;
                    Ok(())
                }

                // ---- poll ----

                /// One poll (RFC 8936 §2): applies `acks` (delivered) and `errs` (dead, never
                /// resent), then hands out up to `max` pending SETs, never-returned ones and
                /// ones returned before `redeliver_before`, in order. `active`: whether the
                /// stream may hand out SETs (enabled). The bool: more are available.
                pub(crate) async fn ssf_poll(
                    &self,
                    stream_id: &str,
                    acks: &[String],
                    errs: &[(String, String)],
                    max: i64,
                    active: bool,
                    now: Millis,
                ) -> StoreResult<(Vec<(String, String)>, bool)> {
                    let mut tx = self.begin().await?;
                    for jti in acks {
                        sqlx::query(
                            "UPDATE ssf_deliveries SET state = 'delivered', updated_at = $3 \
                             WHERE stream_id = $1 AND jti = $2 AND state = 'pending'",
                        )
                        .bind(stream_id)
                        .bind(jti)
                        .bind(Ts(now))
                        .execute(&mut *tx)
                        .await?;
                    }
                    for (jti, err) in errs {
                        sqlx::query(
                            "UPDATE ssf_deliveries SET state = 'dead', last_error = $3, updated_at = $4 \
                             WHERE stream_id = $1 AND jti = $2 AND state = 'pending'",
                        )
                        .bind(stream_id)
                        .bind(jti)
                        .bind(err)
                        .bind(Ts(now))
                        .execute(&mut *tx)
                        .await?;
                    }
                    let mut out: Vec<(String, String)> = Vec::new();
                    let mut more = false;
                    if max > 0 {
                        let rows: Vec<(i64, String, String)> = sqlx::query_as(
                            "SELECT id, jti, set_jws FROM ssf_deliveries \
                             WHERE stream_id = $1 AND state = 'pending' AND ($2 OR kind = 'stream-updated') \
                               AND (returned_at IS NULL OR returned_at <= $3) ORDER BY signal_id, id LIMIT $4",
                        )
                        .bind(stream_id)
                        .bind(active)
                        .bind(Ts(now - REDELIVER_AFTER_MS))
                        .bind(max + 1)
                        .fetch_all(&mut *tx)
                        .await?;
                        more = rows.len() as i64 > max;
                        for (id, jti, set) in rows.into_iter().take(max as usize) {
                            sqlx::query("UPDATE ssf_deliveries SET returned_at = $2, attempts = attempts + 1 WHERE id = $1")
                                .bind(id)
                                .bind(Ts(now))
                                .execute(&mut *tx)
                                .await?;
                            out.push((jti, set));
                        }
                    }
                    tx.commit().await?;
                    Ok((out, more))
                }

                // ---- the operator's view ----

                /// The stream's pending and dead SETs, oldest first (at most `limit`).
                pub(crate) async fn ssf_undelivered(&self, stream_id: &str, limit: i64) -> StoreResult<Vec<DeliveryRow>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {DELIVERY_COLS} FROM ssf_deliveries WHERE stream_id = $1 AND state IN ('pending', 'dead') \
                         ORDER BY id LIMIT $2"
                    ))
                    .bind(stream_id)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?)
                }

                pub(crate) async fn ssf_counts(&self) -> StoreResult<Vec<StreamCounts>> {
                    Ok(sqlx::query_as(
                        "SELECT stream_id, \
                           SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending, \
                           SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END) AS dead \
                         FROM ssf_deliveries GROUP BY stream_id",
                    )
                    .fetch_all(self.reader())
                    .await?)
                }

                /// Re-queues the stream's dead letters (created at or after `since`).
                pub(crate) async fn ssf_redeliver(&self, stream_id: &str, since: Millis, now: Millis) -> StoreResult<u64> {
                    let r = sqlx::query(
                        "UPDATE ssf_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $3, \
                           leased_until = NULL, returned_at = NULL, updated_at = $3 \
                         WHERE stream_id = $1 AND state = 'dead' AND created_at >= $2",
                    )
                    .bind(stream_id)
                    .bind(Ts(since))
                    .bind(Ts(now))
                    .execute(self.writer())
                    .await?;
                    Ok(r.rows_affected())
                }

                /// Retention (§3.3) and the paused-stream bound (§4): returns how many held
                /// SETs were dropped for the bound.
                pub(crate) async fn ssf_prune(&self, now: Millis) -> StoreResult<u64> {
                    sqlx::query(
                        "DELETE FROM ssf_deliveries WHERE (state = 'delivered' AND updated_at < $1) \
                           OR (state IN ('dead', 'dropped') AND updated_at < $2)",
                    )
                    .bind(Ts(now - KEEP_DELIVERED_MS))
                    .bind(Ts(now - KEEP_UNDELIVERED_MS))
                    .execute(self.writer())
                    .await?;
                    let old = sqlx::query(
                        "UPDATE ssf_deliveries SET state = 'dropped', updated_at = $2 \
                         WHERE state = 'pending' AND created_at < $1",
                    )
                    .bind(Ts(now - KEEP_UNDELIVERED_MS))
                    .bind(Ts(now))
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                    let mut over = 0;
                    for c in self.ssf_counts().await? {
                        if c.pending <= PAUSED_MAX {
                            continue;
                        }
                        over += sqlx::query(
                            "UPDATE ssf_deliveries SET state = 'dropped', updated_at = $3 WHERE id IN ( \
                               SELECT id FROM ssf_deliveries WHERE stream_id = $1 AND state = 'pending' \
                               ORDER BY id LIMIT $2)",
                        )
                        .bind(&c.stream_id)
                        .bind(c.pending - PAUSED_MAX)
                        .bind(Ts(now))
                        .execute(self.writer())
                        .await?
                        .rows_affected();
                    }
                    sqlx::query("DELETE FROM ssf_signals WHERE expanded_at IS NOT NULL AND expanded_at < $1")
                        .bind(Ts(now - KEEP_DELIVERED_MS))
                        .execute(self.writer())
                        .await?;
                    Ok(old + over)
                }
            }

            #[allow(dead_code)]
            type Conn = $Conn;
        }
    };
}
pub(crate) use ssf_store;

//! Shared Signals storage (docs/SSF.md §3.3): the SET keys, the streams and their subject
//! rules, the outbox (`ssf_signals`, written by the revoking transactions in `revoke_in` and
//! `signal_user`), the stored SETs (`ssf_deliveries`) and the head of each push stream's subjects
//! (`ssf_heads`). The store knows rows and states only; what a SET says and to whom is the `ssf`
//! room's business.
//!
//! Written once for both backends by [`ssf_store!`], like `shared_store!`. What the backends do
//! differently is in the lock clauses the macro is given: PostgreSQL claims outbox rows `FOR
//! UPDATE SKIP LOCKED` (any number of instances expand at once, none waits for another's rows)
//! and locks a stream's row before it touches the stream's SETs or heads (`FOR SHARE` to store
//! SETs, `FOR UPDATE` to change the stream), so a disable and an expansion serialise and no two
//! transactions take the same locks in opposite orders; SQLite's one writer needs none of it.
//!
//! **No write transaction does more than write** (SECURITY.md G-2, G-6): outbox rows are leased
//! in one short transaction, their SETs built, matched against subject rules (one indexed lookup
//! per signal) and signed outside any, and stored in another short one; a push claim reads the
//! due heads of one stream through an index outside any transaction, then leases them with
//! conditional updates.
//!
//! **Heads.** For each (push stream, subject) with a pending SET, `ssf_heads` holds the oldest
//! (by outbox row, then id): the only one of that subject that may be pushed, leased while its
//! push is in flight. A stored SET becomes the head when its subject has none, or replaces a
//! younger head not in flight; a head's completion (delivered, dead letter) makes the next
//! pending SET of the subject the head ([`recompute_head`]); the rare bulk changes (disable,
//! redelivery, the retention sweep, a method change) rebuild a stream's heads, keeping those in
//! flight. A head whose SET is no longer pending (a crash between a bulk change and the end of
//! its push) is repaired when a claim meets it.

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
    /// The owning credential's immutable id (SECURITY.md G-1): what every ownership check uses.
    pub owner_id: String,
    /// The owning credential's name, for listings.
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
    /// Who set the status: `operator`, `receiver`, or `None` (never changed).
    pub status_by: Option<String>,
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

impl StreamRow {
    /// Disabled by an operator: the receiver's own status call cannot lift it (G-1).
    pub fn operator_disabled(&self) -> bool {
        self.status == "disabled" && self.status_by.as_deref() == Some(STATUS_BY_OPERATOR)
    }
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

/// `status_by` of a status set by the operator (the CLI).
pub const STATUS_BY_OPERATOR: &str = "operator";
/// `status_by` of a status set by the stream's receiver (`POST /ssf/status`).
pub const STATUS_BY_RECEIVER: &str = "receiver";

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

/// One leased outbox row and the SETs made of it, to store together.
#[derive(Debug, Clone)]
pub struct Expanded {
    pub signal_id: i64,
    pub deliveries: Vec<NewDelivery>,
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

/// A due head of a push stream as a claim reads it: the SET to push, or (`state` not pending) a
/// stale head to repair.
#[derive(Clone, sqlx::FromRow)]
pub struct PushJob {
    pub id: i64,
    pub stream_id: String,
    pub subject_key: String,
    /// The SET's state; `None` when its row is gone.
    pub state: Option<String>,
    pub jti: Option<String>,
    pub kind: Option<String>,
    pub set_jws: Option<String>,
    pub attempts: Option<i32>,
    #[sqlx(try_from = "super::OptTs")]
    pub created_at: Option<Millis>,
}

impl PushJob {
    /// Whether this head's SET is pending (else the head is stale and must be repaired).
    pub fn is_pending(&self) -> bool {
        self.state.as_deref() == Some("pending") && self.set_jws.is_some()
    }
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

/// What a push attempt came to, as the store records it.
#[derive(Debug, Clone)]
pub enum PushResult {
    Delivered,
    Retry { next_attempt_at: Millis, error: String, failing: bool },
    Dead { error: String },
}

/// What a stream create came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    /// The credential has a stream already.
    Exists,
    /// The credential is gone (removed since the request was authenticated).
    NoOwner,
}

/// What a status change came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Changed,
    NotFound,
    /// A receiver's change of a stream its operator disabled (G-1): nothing written.
    OperatorDisabled,
}

/// What storing a subject rule came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleChange {
    Done,
    /// The stream holds [`MAX_SUBJECT_RULES`] rules already: nothing written (G-2).
    Full,
}

/// The columns of [`StreamRow`].
pub(super) const STREAM_COLS: &str = "id, owner_id, owner, aud, delivery, method, endpoint_url, authorization_header, \
    events_requested, events_delivered, description, event_subject, status, status_reason, status_by, health, \
    last_success_at, last_error, last_verify_at, created_at, updated_at";

/// The columns of [`DeliveryRow`].
pub(super) const DELIVERY_COLS: &str =
    "id, stream_id, jti, kind, state, attempts, next_attempt_at, last_error, created_at";

/// The head row of a pending SET `d` (a `SELECT` list over `ssf_deliveries d`): its user id is
/// the `user:` subject key's rest.
pub(super) const HEAD_OF_D: &str = "d.stream_id AS stream_id, d.subject_key AS subject_key, d.id AS delivery_id, \
    d.signal_id AS signal_id, CASE WHEN d.subject_key LIKE 'user:%' THEN substr(d.subject_key, 6) END AS user_id, \
    d.next_attempt_at AS next_attempt_at";

/// The columns a head is inserted with, in [`HEAD_OF_D`]'s order.
pub(super) const HEAD_COLS: &str = "stream_id, subject_key, delivery_id, signal_id, user_id, next_attempt_at";

/// Paused streams hold at most this many SETs (docs/SSF.md §4); past it the oldest are dropped.
pub const PAUSED_MAX: i64 = 100_000;
/// The most subject rules one stream holds (G-2; docs/SSF.md §8.7): the next `subjects:remove`
/// is 400.
pub const MAX_SUBJECT_RULES: i64 = 2_000;
/// How long a returned, unacknowledged polled SET waits before it is handed out again (§3.2).
pub const REDELIVER_AFTER_MS: Millis = 30_000;
/// Retention: delivered rows 24 h, dead, dropped or never-delivered ones 7 days (§3.3).
pub const KEEP_DELIVERED_MS: Millis = 24 * 3_600_000;
pub const KEEP_UNDELIVERED_MS: Millis = 7 * 24 * 3_600_000;

/// Expands to the SSF statements as methods of the backend store `$Store` (database `$DB`,
/// connection type `$Conn`). `$skip_locked`, `$for_update` and `$for_share` are the backend's lock clauses
/// (PostgreSQL's; empty on SQLite, whose one writer needs none).
macro_rules! ssf_store {
    ($Store:ident, $DB:ty, $Conn:ty, $skip_locked:literal, $for_update:literal, $for_share:literal) => {
        /// The Shared Signals statements (`store/ssf.rs`), expanded for this backend.
        pub(super) mod ssf_shared {
            use super::$Store as Backend;
            use $crate::clock::Millis;
            use $crate::store::ssf::*;
            use $crate::store::{StoreResult, Ts};

            type Conn = $Conn;
            type Builder<'a> = sqlx::QueryBuilder<'a, $DB>;

            /// Locks stream `id`'s row for a change of the stream (PostgreSQL): first, before any
            /// of its SETs or heads, as every transaction that touches them does.
            async fn lock_stream(c: &mut Conn, id: &str) -> StoreResult<()> {
                sqlx::query(concat!("SELECT id FROM ssf_streams WHERE id = $1", $for_update))
                    .bind(id)
                    .fetch_optional(&mut *c)
                    .await?;
                Ok(())
            }

            /// Deletes stream `id` with every SET, head and subject rule of it (its removal by
            /// the receiver, the operator, or the removal of its credential: G-1).
            pub(super) async fn delete_stream_rows(c: &mut Conn, id: &str) -> StoreResult<bool> {
                lock_stream(c, id).await?;
                sqlx::query("DELETE FROM ssf_heads WHERE stream_id = $1").bind(id).execute(&mut *c).await?;
                sqlx::query("DELETE FROM ssf_deliveries WHERE stream_id = $1").bind(id).execute(&mut *c).await?;
                sqlx::query("DELETE FROM ssf_subject_rules WHERE stream_id = $1").bind(id).execute(&mut *c).await?;
                let r = sqlx::query("DELETE FROM ssf_streams WHERE id = $1").bind(id).execute(&mut *c).await?;
                Ok(r.rows_affected() == 1)
            }

            /// Makes the oldest pending SET of (`stream`, `subject`) its head, or leaves it
            /// without one (a completion, or a repair).
            async fn recompute_head(c: &mut Conn, stream: &str, subject: &str) -> StoreResult<()> {
                sqlx::query("DELETE FROM ssf_heads WHERE stream_id = $1 AND subject_key = $2")
                    .bind(stream)
                    .bind(subject)
                    .execute(&mut *c)
                    .await?;
                sqlx::query(&format!(
                    "INSERT INTO ssf_heads ({HEAD_COLS}) SELECT {HEAD_OF_D} \
                     FROM ssf_deliveries d JOIN ssf_streams s ON s.id = d.stream_id \
                     WHERE d.stream_id = $1 AND d.subject_key = $2 AND d.state = 'pending' AND s.method = 'push' \
                     ORDER BY d.signal_id, d.id LIMIT 1"
                ))
                .bind(stream)
                .bind(subject)
                .execute(&mut *c)
                .await?;
                Ok(())
            }

            /// Rebuilds the heads of stream `id` after a bulk change of its SETs (disable,
            /// redelivery, the retention sweep, a change of method); heads in flight are kept
            /// (their push's end recomputes them), so a subject never has two in flight.
            async fn rebuild_heads(c: &mut Conn, id: &str, now: Millis) -> StoreResult<()> {
                sqlx::query("DELETE FROM ssf_heads WHERE stream_id = $1 AND (leased_until IS NULL OR leased_until <= $2)")
                    .bind(id)
                    .bind(Ts(now))
                    .execute(&mut *c)
                    .await?;
                sqlx::query(&format!(
                    "INSERT INTO ssf_heads ({HEAD_COLS}) \
                     SELECT {HEAD_COLS} FROM ( \
                       SELECT {HEAD_OF_D}, row_number() OVER (PARTITION BY d.subject_key ORDER BY d.signal_id, d.id) AS rn \
                       FROM ssf_deliveries d JOIN ssf_streams s ON s.id = d.stream_id \
                       WHERE d.stream_id = $1 AND d.state = 'pending' AND s.method = 'push') AS x \
                     WHERE rn = 1 ON CONFLICT (stream_id, subject_key) DO NOTHING"
                ))
                .bind(id)
                .execute(&mut *c)
                .await?;
                Ok(())
            }

            impl Backend {
                // ---- keys ----

                pub(crate) async fn ssf_keys(&self) -> StoreResult<Vec<SsfKeyRow>> {
                    Ok(sqlx::query_as("SELECT * FROM ssf_keys ORDER BY created_at, kid").fetch_all(self.reader()).await?)
                }

                /// Retired kids whose SETs are still stored undelivered or dead (their keys stay
                /// published): one index probe per retired key, never a scan of the SETs (G-6).
                pub(crate) async fn ssf_kids_in_use(&self) -> StoreResult<Vec<String>> {
                    Ok(sqlx::query_scalar(
                        "SELECT k.kid FROM ssf_keys k WHERE k.retired_at IS NOT NULL AND (\
                           EXISTS (SELECT 1 FROM ssf_deliveries d WHERE d.kid = k.kid AND d.state = 'pending') \
                           OR EXISTS (SELECT 1 FROM ssf_deliveries d WHERE d.kid = k.kid AND d.state = 'dead'))",
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

                /// Creates a stream for the credential `s.owner_id`, if it still exists and has
                /// no stream yet.
                pub(crate) async fn ssf_create_stream(&self, s: &StreamRow) -> StoreResult<Created> {
                    let mut tx = self.begin().await?;
                    let owner: Option<String> =
                        sqlx::query_scalar(concat!("SELECT id FROM service_credentials WHERE id = $1", $for_share))
                            .bind(&s.owner_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if owner.is_none() {
                        return Ok(Created::NoOwner);
                    }
                    let r = sqlx::query(
                        "INSERT INTO ssf_streams (id, owner_id, owner, aud, delivery, method, endpoint_url, \
                           authorization_header, events_requested, events_delivered, description, event_subject, \
                           status, status_reason, health, created_at, updated_at) \
                         SELECT $1, $15, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'ok', $14, $14 \
                         WHERE NOT EXISTS (SELECT 1 FROM ssf_streams WHERE owner_id = $15 OR owner = $2)",
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
                    .bind(&s.owner_id)
                    .execute(&mut *tx)
                    .await;
                    match r {
                        Ok(r) if r.rows_affected() == 1 => {
                            tx.commit().await?;
                            Ok(Created::Created)
                        }
                        Ok(_) => Ok(Created::Exists),
                        // Two creates racing past NOT EXISTS: the UNIQUE owner decides.
                        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Created::Exists),
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
                    let mut tx = self.begin().await?;
                    lock_stream(&mut tx, &s.id).await?;
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
                    .execute(&mut *tx)
                    .await?;
                    if r.rows_affected() != 1 {
                        return Ok(false);
                    }
                    // The method may have changed: only push streams have heads.
                    rebuild_heads(&mut tx, &s.id, now).await?;
                    tx.commit().await?;
                    Ok(true)
                }

                /// Deletes a stream with its stored SETs, heads and subject rules.
                pub(crate) async fn ssf_delete_stream(&self, id: &str) -> StoreResult<bool> {
                    let mut tx = self.begin().await?;
                    let deleted = delete_stream_rows(&mut tx, id).await?;
                    tx.commit().await?;
                    Ok(deleted)
                }

                /// Sets a stream's status, recording who set it (`by`: [`STATUS_BY_OPERATOR`] or
                /// [`STATUS_BY_RECEIVER`]). A receiver cannot change the status of a stream its
                /// operator disabled (G-1). Disabling drops what it held (§4). `announce`: the
                /// stream-updated event's payload, queued in the same transaction (a status
                /// change by sessiond itself, §8.1.5).
                pub(crate) async fn ssf_set_status(
                    &self,
                    id: &str,
                    status: &str,
                    reason: Option<&str>,
                    by: &str,
                    announce: Option<&str>,
                    now: Millis,
                ) -> StoreResult<StatusChange> {
                    let mut tx = self.begin().await?;
                    lock_stream(&mut tx, id).await?;
                    let current: Option<(String, Option<String>)> =
                        sqlx::query_as("SELECT status, status_by FROM ssf_streams WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let Some((current, current_by)) = current else { return Ok(StatusChange::NotFound) };
                    if by != STATUS_BY_OPERATOR
                        && current == "disabled"
                        && current_by.as_deref() == Some(STATUS_BY_OPERATOR)
                    {
                        return Ok(StatusChange::OperatorDisabled);
                    }
                    sqlx::query(
                        "UPDATE ssf_streams SET status = $2, status_reason = $3, status_by = $4, updated_at = $5 \
                         WHERE id = $1",
                    )
                    .bind(id)
                    .bind(status)
                    .bind(reason)
                    .bind(by)
                    .bind(Ts(now))
                    .execute(&mut *tx)
                    .await?;
                    if status == "disabled" {
                        let dropped = sqlx::query(
                            "UPDATE ssf_deliveries SET state = 'dropped', updated_at = $2 \
                             WHERE stream_id = $1 AND state = 'pending' AND kind <> 'stream-updated'",
                        )
                        .bind(id)
                        .bind(Ts(now))
                        .execute(&mut *tx)
                        .await?;
                        if dropped.rows_affected() > 0 {
                            rebuild_heads(&mut tx, id, now).await?;
                        }
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
                    Ok(StatusChange::Changed)
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

                // ---- subject rules ----

                /// Adds (`exclude`) or deletes the exclusion of `subject` (normalised JSON) on
                /// stream `id`, stored with its lookup `keys` (`ssf::events::rule_keys`). A new
                /// rule past [`MAX_SUBJECT_RULES`] is refused ([`RuleChange::Full`]).
                pub(crate) async fn ssf_exclude_subject(
                    &self,
                    id: &str,
                    subject: &str,
                    keys: (&str, &str),
                    exclude: bool,
                ) -> StoreResult<RuleChange> {
                    if !exclude {
                        sqlx::query("DELETE FROM ssf_subject_rules WHERE stream_id = $1 AND subject = $2")
                            .bind(id)
                            .bind(subject)
                            .execute(self.writer())
                            .await?;
                        return Ok(RuleChange::Done);
                    }
                    let mut tx = self.begin().await?;
                    lock_stream(&mut tx, id).await?;
                    let exists: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM ssf_subject_rules WHERE stream_id = $1 AND subject = $2)",
                    )
                    .bind(id)
                    .bind(subject)
                    .fetch_one(&mut *tx)
                    .await?;
                    if exists {
                        return Ok(RuleChange::Done);
                    }
                    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ssf_subject_rules WHERE stream_id = $1")
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                    if n >= MAX_SUBJECT_RULES {
                        return Ok(RuleChange::Full);
                    }
                    sqlx::query(
                        "INSERT INTO ssf_subject_rules (stream_id, subject, user_key, session_key) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(id)
                    .bind(subject)
                    .bind(keys.0)
                    .bind(keys.1)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(RuleChange::Done)
                }

                /// Rules stored before their keys existed (migration 0007), at most `limit`:
                /// `(stream_id, subject)`.
                pub(crate) async fn ssf_unkeyed_rules(&self, limit: i64) -> StoreResult<Vec<(String, String)>> {
                    Ok(sqlx::query_as(
                        "SELECT stream_id, subject FROM ssf_subject_rules WHERE user_key IS NULL ORDER BY stream_id, subject LIMIT $1",
                    )
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?)
                }

                pub(crate) async fn ssf_set_rule_keys(
                    &self,
                    id: &str,
                    subject: &str,
                    keys: (&str, &str),
                ) -> StoreResult<()> {
                    sqlx::query(
                        "UPDATE ssf_subject_rules SET user_key = $3, session_key = $4 WHERE stream_id = $1 AND subject = $2",
                    )
                    .bind(id)
                    .bind(subject)
                    .bind(keys.0)
                    .bind(keys.1)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                /// Whether any stream has a subject rule (when none has, expansion skips the
                /// lookups).
                pub(crate) async fn ssf_has_rules(&self) -> StoreResult<bool> {
                    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ssf_subject_rules)")
                        .fetch_one(self.reader())
                        .await?)
                }

                /// The streams that exclude a subject whose `user` member has the key `user_key`
                /// and whose `session` member (if it has one) has the key `session_key`: one
                /// indexed lookup (G-2), whatever the number of rules.
                pub(crate) async fn ssf_excluding_streams(
                    &self,
                    user_key: &str,
                    session_key: Option<&str>,
                ) -> StoreResult<Vec<String>> {
                    Ok(sqlx::query_scalar(
                        "SELECT DISTINCT stream_id FROM ssf_subject_rules \
                         WHERE user_key IN ($1, '*') AND (CAST($2 AS TEXT) IS NULL OR session_key IN ($2, '*'))",
                    )
                    .bind(user_key)
                    .bind(session_key)
                    .fetch_all(self.reader())
                    .await?)
                }

                // ---- the dispatcher ----

                /// Whether some outbox row waits to be expanded and is not leased (a read: the
                /// idle dispatcher, every second and every revocation, takes no write
                /// transaction, which on SQLite is the one write lock).
                pub(crate) async fn ssf_has_unexpanded(&self, now: Millis) -> StoreResult<bool> {
                    Ok(sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM ssf_signals WHERE expanded_at IS NULL \
                           AND (claimed_until IS NULL OR claimed_until <= $1))",
                    )
                    .bind(Ts(now))
                    .fetch_one(self.reader())
                    .await?)
                }

                /// Leases up to `limit` unexpanded outbox rows, oldest first, until
                /// `lease_until`: one short write transaction (the SETs are built and signed
                /// outside it, G-2). Another instance takes a row whose lease ran out.
                pub(crate) async fn ssf_claim_signals(
                    &self,
                    limit: i64,
                    now: Millis,
                    lease_until: Millis,
                ) -> StoreResult<Vec<SignalRow>> {
                    let mut tx = self.begin().await?;
                    let mut rows: Vec<SignalRow> = sqlx::query_as(concat!(
                        "UPDATE ssf_signals SET claimed_until = $3 WHERE id IN ( \
                           SELECT id FROM ssf_signals WHERE expanded_at IS NULL \
                             AND (claimed_until IS NULL OR claimed_until <= $2) ORDER BY id LIMIT $1",
                        $skip_locked,
                        ") RETURNING id, kind, user_id, session_id, reason, txn, occurred_at, stream_id, payload"
                    ))
                    .bind(limit)
                    .bind(Ts(now))
                    .bind(Ts(lease_until))
                    .fetch_all(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    rows.sort_by_key(|r| r.id);
                    Ok(rows)
                }

                /// Stores the SETs made of leased outbox rows and marks the rows expanded, in one
                /// short transaction of a few multi-row statements. A row another instance
                /// expanded meanwhile (its lease ran out) is skipped with its SETs; a SET for a
                /// stream deleted meanwhile is not stored, nor one for a stream disabled meanwhile
                /// (but its stream-updated announcements). A stored SET becomes its subject's
                /// head unless the subject has an older one or one in flight. Returns the SETs
                /// stored.
                pub(crate) async fn ssf_store_expanded(&self, batch: &[Expanded], now: Millis) -> StoreResult<usize> {
                    if batch.is_empty() {
                        return Ok(0);
                    }
                    let mut tx = self.begin().await?;
                    // Every stream row first (a disable waits for this transaction, or this one
                    // sees the disable), in id order.
                    let streams: Vec<(String, String, String)> =
                        sqlx::query_as(concat!("SELECT id, status, method FROM ssf_streams ORDER BY id", $for_share))
                            .fetch_all(&mut *tx)
                            .await?;
                    let mut q = Builder::new("UPDATE ssf_signals SET expanded_at = ");
                    q.push_bind(Ts(now)).push(", claimed_until = NULL WHERE expanded_at IS NULL AND id IN (");
                    let mut ids = q.separated(", ");
                    for e in batch {
                        ids.push_bind(e.signal_id);
                    }
                    q.push(") RETURNING id");
                    let mine: std::collections::HashSet<i64> =
                        q.build_query_scalar::<i64>().fetch_all(&mut *tx).await?.into_iter().collect();
                    let stream = |id: &str| streams.iter().find(|(s, _, _)| s == id);
                    let rows: Vec<(i64, &NewDelivery)> = batch
                        .iter()
                        .filter(|e| mine.contains(&e.signal_id))
                        .flat_map(|e| e.deliveries.iter().map(move |d| (e.signal_id, d)))
                        .filter(|(_, d)| {
                            stream(&d.stream_id).is_some_and(|(_, status, _)| status != "disabled" || d.kind == "stream-updated")
                        })
                        .collect();
                    // (stream, subject) → the oldest stored SET of this batch: (signal, id).
                    let mut heads: std::collections::BTreeMap<(&str, &str), (i64, i64)> = Default::default();
                    for chunk in rows.chunks(500) {
                        let mut q = Builder::new(
                            "INSERT INTO ssf_deliveries (stream_id, jti, signal_id, kind, subject_key, kid, set_jws, \
                               state, attempts, next_attempt_at, created_at, updated_at) ",
                        );
                        q.push_values(chunk, |mut b, (signal_id, d)| {
                            b.push_bind(&d.stream_id)
                                .push_bind(&d.jti)
                                .push_bind(*signal_id)
                                .push_bind(&d.kind)
                                .push_bind(&d.subject_key)
                                .push_bind(&d.kid)
                                .push_bind(&d.set_jws)
                                .push("'pending'")
                                .push("0")
                                .push_bind(Ts(now))
                                .push_bind(Ts(now))
                                .push_bind(Ts(now));
                        });
                        q.push(" RETURNING id, jti");
                        let ids: Vec<(i64, String)> = q.build_query_as().fetch_all(&mut *tx).await?;
                        for (id, jti) in ids {
                            let Some((signal_id, d)) = chunk.iter().find(|(_, d)| d.jti == jti) else { continue };
                            if !stream(&d.stream_id).is_some_and(|(_, _, method)| method == "push") {
                                continue;
                            }
                            let head = heads.entry((d.stream_id.as_str(), d.subject_key.as_str())).or_insert((*signal_id, id));
                            *head = (*head).min((*signal_id, id));
                        }
                    }
                    if !heads.is_empty() {
                        let heads: Vec<_> = heads.into_iter().collect();
                        let mut q = Builder::new(
                            "INSERT INTO ssf_heads (stream_id, subject_key, delivery_id, signal_id, user_id, next_attempt_at) ",
                        );
                        q.push_values(&heads, |mut b, ((stream, subject), (signal_id, id))| {
                            b.push_bind(*stream)
                                .push_bind(*subject)
                                .push_bind(*id)
                                .push_bind(*signal_id)
                                .push_bind(subject.strip_prefix("user:"))
                                .push_bind(Ts(now));
                        });
                        q.push(
                            " ON CONFLICT (stream_id, subject_key) DO UPDATE SET delivery_id = excluded.delivery_id, \
                               signal_id = excluded.signal_id, next_attempt_at = excluded.next_attempt_at, \
                               leased_until = NULL \
                             WHERE ssf_heads.signal_id > excluded.signal_id \
                               AND (ssf_heads.leased_until IS NULL OR ssf_heads.leased_until <= ",
                        );
                        q.push_bind(Ts(now)).push(")");
                        q.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(rows.len())
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

                // ---- push ----

                /// Up to `limit` heads of push stream `stream_id` due at `now` and not leased,
                /// read outside any transaction: its stream-updated head first, then (`all`: the
                /// stream is enabled) the others by due time through `ssf_heads_due_idx`. A head
                /// waits while an older outbox row about its user is still unexpanded (SETs about
                /// one user are never reordered, even when instances expand out of order).
                /// Heads whose SET is no longer pending come back too (`!is_pending()`), to be
                /// repaired. Only one stream's heads are read, so a stream whose receiver stalls
                /// never fills the claims of another (G-3).
                pub(crate) async fn ssf_due_heads(
                    &self,
                    stream_id: &str,
                    now: Millis,
                    limit: i64,
                    all: bool,
                ) -> StoreResult<Vec<PushJob>> {
                    const SELECT: &str = "SELECT h.delivery_id AS id, h.stream_id, h.subject_key, d.state, d.jti, \
                          d.kind, d.set_jws, d.attempts, d.created_at \
                        FROM ssf_heads h LEFT JOIN ssf_deliveries d ON d.id = h.delivery_id \
                        WHERE h.stream_id = $1 AND h.next_attempt_at <= $2 \
                          AND (h.leased_until IS NULL OR h.leased_until <= $2) \
                          AND NOT EXISTS (SELECT 1 FROM ssf_signals g \
                            WHERE g.expanded_at IS NULL AND g.user_id = h.user_id AND g.id < h.signal_id)";
                    // The stream-updated head first; then, on an enabled stream, the others by
                    // due time (each part through the primary key or `ssf_heads_due_idx`).
                    Ok(sqlx::query_as(&format!(
                        "SELECT * FROM ({SELECT} AND h.subject_key = 'stream-updated') AS a UNION ALL \
                         SELECT * FROM ({SELECT} AND $4 AND h.subject_key <> 'stream-updated' \
                           ORDER BY h.next_attempt_at LIMIT $3) AS b"
                    ))
                    .bind(stream_id)
                    .bind(Ts(now))
                    .bind(limit)
                    .bind(all)
                    .fetch_all(self.reader())
                    .await?)
                }

                /// Leases the heads of `jobs` (read by [`ssf_due_heads`](Self::ssf_due_heads) for
                /// one stream) until `lease_until`, each only if it is still that SET's head and
                /// not leased by another worker: one conditional update (a delivery is its own
                /// subject's, so a head matches both lists only as it was read). Returns the jobs
                /// leased.
                pub(crate) async fn ssf_lease(
                    &self,
                    jobs: Vec<PushJob>,
                    now: Millis,
                    lease_until: Millis,
                ) -> StoreResult<Vec<PushJob>> {
                    let Some(stream) = jobs.first().map(|j| j.stream_id.clone()) else { return Ok(jobs) };
                    let mut q = Builder::new("UPDATE ssf_heads SET leased_until = ");
                    q.push_bind(Ts(lease_until)).push(" WHERE stream_id = ").push_bind(stream.clone());
                    q.push(" AND (leased_until IS NULL OR leased_until <= ").push_bind(Ts(now)).push(") AND subject_key IN (");
                    let mut subjects = q.separated(", ");
                    for j in &jobs {
                        subjects.push_bind(j.subject_key.clone());
                    }
                    q.push(") AND delivery_id IN (");
                    let mut ids = q.separated(", ");
                    for j in &jobs {
                        ids.push_bind(j.id);
                    }
                    q.push(") RETURNING delivery_id");
                    let leased: std::collections::HashSet<i64> =
                        q.build_query_scalar::<i64>().fetch_all(self.writer()).await?.into_iter().collect();
                    Ok(jobs.into_iter().filter(|j| j.stream_id == stream && leased.contains(&j.id)).collect())
                }

                /// Gives a leased head back at once (this worker will not push it now).
                pub(crate) async fn ssf_release_lease(&self, job: &PushJob) -> StoreResult<()> {
                    sqlx::query(
                        "UPDATE ssf_heads SET leased_until = NULL \
                         WHERE stream_id = $1 AND subject_key = $2 AND delivery_id = $3",
                    )
                    .bind(&job.stream_id)
                    .bind(&job.subject_key)
                    .bind(job.id)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                /// Repairs a stale head (its SET is no longer pending): the subject's next pending
                /// SET becomes its head.
                pub(crate) async fn ssf_repair_head(&self, job: &PushJob) -> StoreResult<()> {
                    let mut tx = self.begin().await?;
                    lock_stream(&mut tx, &job.stream_id).await?;
                    recompute_head(&mut tx, &job.stream_id, &job.subject_key).await?;
                    tx.commit().await?;
                    Ok(())
                }

                /// Drops every push lease and outbox lease: for a single-instance database at
                /// start, where any lease left is a killed process's work that will never report.
                pub(crate) async fn ssf_clear_leases(&self) -> StoreResult<u64> {
                    let heads = sqlx::query("UPDATE ssf_heads SET leased_until = NULL WHERE leased_until IS NOT NULL")
                        .execute(self.writer())
                        .await?;
                    sqlx::query(
                        "UPDATE ssf_signals SET claimed_until = NULL WHERE claimed_until IS NOT NULL AND expanded_at IS NULL",
                    )
                    .execute(self.writer())
                    .await?;
                    Ok(heads.rows_affected())
                }

                /// Records a push attempt's result (and the stream's health); a SET that is done
                /// hands its subject's head to the next pending SET.
                pub(crate) async fn ssf_push_result(
                    &self,
                    job: &PushJob,
                    result: &PushResult,
                    now: Millis,
                ) -> StoreResult<()> {
                    let mut tx = self.begin().await?;
                    // The stream's row first (its health), as every transaction on its SETs.
                    match result {
                        PushResult::Delivered => {
                            sqlx::query(
                                "UPDATE ssf_streams SET health = 'ok', last_success_at = $2, last_error = NULL WHERE id = $1",
                            )
                            .bind(&job.stream_id)
                            .bind(Ts(now))
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query(
                                "UPDATE ssf_deliveries SET state = 'delivered', attempts = attempts + 1, \
                                   updated_at = $2 WHERE id = $1 AND state = 'pending'",
                            )
                            .bind(job.id)
                            .bind(Ts(now))
                            .execute(&mut *tx)
                            .await?;
                            recompute_head(&mut tx, &job.stream_id, &job.subject_key).await?;
                        }
                        PushResult::Retry { next_attempt_at, error, failing } => {
                            sqlx::query("UPDATE ssf_streams SET health = $2, last_error = $3 WHERE id = $1")
                                .bind(&job.stream_id)
                                .bind(if *failing { "failing" } else { "retrying" })
                                .bind(error)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query(
                                "UPDATE ssf_deliveries SET attempts = attempts + 1, next_attempt_at = $2, \
                                   last_error = $3, updated_at = $4 WHERE id = $1 AND state = 'pending'",
                            )
                            .bind(job.id)
                            .bind(Ts(*next_attempt_at))
                            .bind(error)
                            .bind(Ts(now))
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query(
                                "UPDATE ssf_heads SET next_attempt_at = $4, leased_until = NULL \
                                 WHERE stream_id = $1 AND subject_key = $2 AND delivery_id = $3",
                            )
                            .bind(&job.stream_id)
                            .bind(&job.subject_key)
                            .bind(job.id)
                            .bind(Ts(*next_attempt_at))
                            .execute(&mut *tx)
                            .await?;
                        }
                        PushResult::Dead { error } => {
                            sqlx::query("UPDATE ssf_streams SET last_error = $2 WHERE id = $1")
                                .bind(&job.stream_id)
                                .bind(error)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query(
                                "UPDATE ssf_deliveries SET state = 'dead', attempts = attempts + 1, \
                                   last_error = $2, updated_at = $3 WHERE id = $1 AND state = 'pending'",
                            )
                            .bind(job.id)
                            .bind(error)
                            .bind(Ts(now))
                            .execute(&mut *tx)
                            .await?;
                            recompute_head(&mut tx, &job.stream_id, &job.subject_key).await?;
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

                /// Pending and dead SETs per stream (through `ssf_deliveries_stream_idx`; streams
                /// with neither are absent).
                pub(crate) async fn ssf_counts(&self) -> StoreResult<Vec<StreamCounts>> {
                    Ok(sqlx::query_as(
                        "SELECT stream_id, \
                           SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending, \
                           SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END) AS dead \
                         FROM ssf_deliveries WHERE state IN ('pending', 'dead') GROUP BY stream_id",
                    )
                    .fetch_all(self.reader())
                    .await?)
                }

                /// Re-queues the stream's dead letters (created at or after `since`).
                pub(crate) async fn ssf_redeliver(&self, stream_id: &str, since: Millis, now: Millis) -> StoreResult<u64> {
                    let mut tx = self.begin().await?;
                    lock_stream(&mut tx, stream_id).await?;
                    let r = sqlx::query(
                        "UPDATE ssf_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $3, \
                           leased_until = NULL, returned_at = NULL, updated_at = $3 \
                         WHERE stream_id = $1 AND state = 'dead' AND created_at >= $2",
                    )
                    .bind(stream_id)
                    .bind(Ts(since))
                    .bind(Ts(now))
                    .execute(&mut *tx)
                    .await?;
                    if r.rows_affected() > 0 {
                        rebuild_heads(&mut tx, stream_id, now).await?;
                    }
                    tx.commit().await?;
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
                    let mut dropped = 0;
                    let old: Vec<String> = sqlx::query_scalar(
                        "SELECT DISTINCT stream_id FROM ssf_deliveries WHERE state = 'pending' AND created_at < $1",
                    )
                    .bind(Ts(now - KEEP_UNDELIVERED_MS))
                    .fetch_all(self.reader())
                    .await?;
                    for stream in old {
                        let mut tx = self.begin().await?;
                        lock_stream(&mut tx, &stream).await?;
                        dropped += sqlx::query(
                            "UPDATE ssf_deliveries SET state = 'dropped', updated_at = $3 \
                             WHERE stream_id = $1 AND state = 'pending' AND created_at < $2",
                        )
                        .bind(&stream)
                        .bind(Ts(now - KEEP_UNDELIVERED_MS))
                        .bind(Ts(now))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        rebuild_heads(&mut tx, &stream, now).await?;
                        tx.commit().await?;
                    }
                    for c in self.ssf_counts().await? {
                        if c.pending <= PAUSED_MAX {
                            continue;
                        }
                        let mut tx = self.begin().await?;
                        lock_stream(&mut tx, &c.stream_id).await?;
                        dropped += sqlx::query(
                            "UPDATE ssf_deliveries SET state = 'dropped', updated_at = $3 WHERE id IN ( \
                               SELECT id FROM ssf_deliveries WHERE stream_id = $1 AND state = 'pending' \
                               ORDER BY id LIMIT $2)",
                        )
                        .bind(&c.stream_id)
                        .bind(c.pending - PAUSED_MAX)
                        .bind(Ts(now))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        rebuild_heads(&mut tx, &c.stream_id, now).await?;
                        tx.commit().await?;
                    }
                    sqlx::query("DELETE FROM ssf_signals WHERE expanded_at IS NOT NULL AND expanded_at < $1")
                        .bind(Ts(now - KEEP_DELIVERED_MS))
                        .execute(self.writer())
                        .await?;
                    Ok(dropped)
                }
            }
        }
    };
}
pub(crate) use ssf_store;

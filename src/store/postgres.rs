//! The PostgreSQL backend: one database shared by every instance of a cluster.
//!
//! One pool serves reads and writes; write transactions take row locks where they read what
//! they are about to change (see `read_presented`, `user_for_session`,
//! `admin_flag_for_update`). Every revocation is appended to the `revocations` log (ids in
//! commit order, under an advisory lock: see `revoke_in`) and announced with `NOTIFY` in the
//! transaction that makes it, so other instances apply it (the backplane, `src/backplane.rs`)
//! and the revocation feed serves it (docs/API.md §9). The operations only a cluster has —
//! reading notified ranges of that log, presence and heartbeats, notifications, the listener connection — exist on [`PgStore`]
//! alone, reached through [`Store::postgres`](super::Store::postgres). Times are `timestamptz`,
//! flags `boolean` (migration 0004).
//!
//! The statements and transactions shared with SQLite are expanded here from
//! [`shared_store!`](super::shared::shared_store); this file holds what is PostgreSQL's own.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

use super::shared::{
    log_insert, revoke_update, shared_store, signal_sessions_insert, signals_revocation, Presented, RevokedRow,
    TokenRow, ADMIN_FLAG, DISABLED_FLAG, SESSION_COLS,
};
use super::shared::{ROTATE_INSERT, ROTATE_MARK, TOKEN_COLS, USER_FOR_SESSION};
use super::{Millis, Revoked, Selector, SessionRow, StoreError, StoreResult, Ts, UserRow};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The `NOTIFY` channel of revocations.
pub const REVOCATIONS_CHANNEL: &str = "sessiond_revocations";

/// The transaction-level advisory lock under which revocation log ids are allocated (see
/// `PgStore::revoke_in`). Signing-key creation uses 7305813.
const REVOCATION_LOG_LOCK: i64 = 7_305_814;

/// The PostgreSQL store. Clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// What the pool connects with: the listener opens its own connection from these.
    options: Arc<PgConnectOptions>,
    /// This process's id among the instances: each notification carries it, so the instance
    /// that made a revocation (and has applied it already) skips its own note.
    instance_id: Arc<str>,
    #[cfg(any(test, feature = "test-util"))]
    pub(super) failpoints: super::failpoint::Failpoints,
}

impl PgStore {
    /// Connects to the database named by `url`.
    ///
    /// One connection is tried first, alone: a pool retries a refused connection until its
    /// acquire timeout and then reports only "pool timed out", while an operator needs the
    /// server's address and the reason (refused, unknown host, authentication, missing
    /// database…). The address comes from the parsed options, never from the URL text, so a
    /// password in the URL is never printed.
    pub(super) async fn connect(url: &str, instance_id: Arc<str>, store: &super::StoreOptions) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let connect_timeout = store.db_timeout;
        let target = format!("connect to PostgreSQL at {}", address(&options));
        match tokio::time::timeout(connect_timeout, PgConnection::connect_with(&options)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
            Ok(Err(error)) => return Err(StoreError::Connect { target, error }),
            Err(_) => {
                let error =
                    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer in {connect_timeout:?}"));
                return Err(StoreError::Connect { target, error: error.into() });
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(store.db_timeout)
            .after_connect(|conn, _| Box::pin(keepalives(conn)))
            .connect_with(options.clone())
            .await
            .map_err(|error| StoreError::Connect { target, error })?;
        Ok(PgStore {
            pool,
            options: Arc::new(options),
            instance_id,
            #[cfg(any(test, feature = "test-util"))]
            failpoints: Default::default(),
        })
    }

    pub(super) async fn migrate(&self) -> StoreResult<()> {
        Ok(MIGRATOR.run(&self.pool).await?)
    }

    pub(super) async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Ends the selected sessions, appends them to the revocation log and announces the log's
    /// id range, in the caller's transaction (nothing is logged or announced on rollback;
    /// `NOTIFY` is delivered at commit). The note carries this instance's id and, for an admin
    /// logout, the `request` id that other instances acknowledge.
    ///
    /// Log ids grow in commit order (docs/API.md §9: a follower that has seen id N must never
    /// later find a new entry below N). A sequence hands out ids in the order transactions
    /// *ask*, not the order they commit: two revoking transactions could take ids 7 and 8 and
    /// commit 8 first, and a follower reading in between would move its cursor past 7 for
    /// ever. So the ids are taken under a transaction-level advisory lock
    /// ([`REVOCATION_LOG_LOCK`]), held until commit or rollback: the next appender waits until
    /// this transaction's entries are visible before it allocates its own. It is the last lock
    /// a revocation takes, after every row lock (the sessions' here, the user's or the token's
    /// earlier in the transaction), and the transaction only commits after it, so a holder
    /// never waits for a lock another appender holds: no lock cycle, no deadlock. The cost is
    /// that revoking commits that append (not other writes) run one at a time across the
    /// cluster, one commit (WAL flush) each.
    ///
    /// It touches no refresh-token rows: every writer locks a session row before any of its
    /// token rows (see `read_presented`), so a revocation never waits on a refresh in a cycle;
    /// the sweep later drops the ended sessions' sealed successors.
    async fn revoke_in(
        &self,
        tx: &mut PgConnection,
        sel: &Selector,
        reason: &str,
        now: Millis,
        request: Option<&str>,
        txn: &str,
    ) -> StoreResult<Vec<Revoked>> {
        let sql = revoke_update(sel, reason);
        let rows: Vec<RevokedRow> = shared::bind_selector(&sql, sel, reason, now).fetch_all(&mut *tx).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(REVOCATION_LOG_LOCK).execute(&mut *tx).await?;
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let (from, to): (Option<i64>, Option<i64>) = sqlx::query_as(&format!(
            "WITH l AS ({} RETURNING id) SELECT MIN(id), MAX(id) FROM l",
            log_insert("= ANY($1::text[])")
        ))
        .bind(&ids)
        .bind(reason)
        .bind(Ts(now))
        .fetch_one(&mut *tx)
        .await?;
        if signals_revocation(reason) {
            sqlx::query(&signal_sessions_insert("= ANY($1::text[])"))
                .bind(&ids)
                .bind(reason)
                .bind(Ts(now))
                .bind(txn)
                .execute(&mut *tx)
                .await?;
        }
        // Tests: a fault after the log rows are written must leave neither them nor the
        // revocation behind.
        crate::store::fail_at!(self.failpoints, super::failpoint::REVOKE_AFTER_LOG);
        let note = serde_json::json!({ "from": from.unwrap_or(0), "to": to.unwrap_or(0), "origin": &*self.instance_id, "req": request });
        self.notify_in(tx, REVOCATIONS_CHANNEL, &note.to_string()).await?;
        Ok(rows.into_iter().map(|r| r.revoked(reason, now)).collect())
    }

    /// A rotation's three writes, one statement at a time (PostgreSQL prepares one statement per
    /// query; the SQLite store sends them as one batch).
    async fn write_rotation(
        &self,
        tx: &mut PgConnection,
        p: &Presented,
        r: &super::Rotation,
        idle: Millis,
        access_exp: Millis,
    ) -> StoreResult<SessionRow> {
        sqlx::query(ROTATE_MARK)
            .bind(Ts(r.now))
            .bind(&r.candidate.id)
            .bind(&r.sealed_candidate)
            .bind(&p.token.id)
            .bind(&p.session.id)
            .bind(&r.client[..])
            .execute(&mut *tx)
            .await?;
        // Tests: a fault between the two writes must roll the whole rotation back (SECURITY.md R6).
        crate::store::fail_at!(self.failpoints, super::failpoint::ROTATE_AFTER_MARK);
        sqlx::query(ROTATE_INSERT)
            .bind(&r.candidate.id)
            .bind(&p.session.id)
            .bind(&r.candidate.hash[..])
            .bind(&p.token.id)
            .bind(Ts(r.now))
            .execute(&mut *tx)
            .await?;
        shared::use_session(tx, &p.session.id, r, Some(idle), access_exp).await
    }

    /// Locks the session row first, then the token row, in two statements. Every writer that
    /// touches a session's tokens (refreshes of any of its tokens) or the session (revocations,
    /// which touch no token rows) takes the session lock first, so racing refreshes and
    /// revocations serialise without lock cycles. The token is read by a second statement,
    /// after the session lock is held, so that (READ COMMITTED) it sees the commit of a refresh
    /// that held the lock before us; a join would re-check only the locked session row and
    /// could return the token as it was before that commit.
    ///
    /// The user row is read without a lock: disabling, demoting and password changes lock the
    /// user row and then the user's session rows, so locking it here (after the session row)
    /// could deadlock with them. Unlocked is enough: such a writer ends this session after us,
    /// in its own transaction, if it had not committed before this read.
    async fn read_presented(&self, tx: &mut PgConnection, hash: &[u8; 32]) -> StoreResult<Option<Presented>> {
        let session: Option<SessionRow> = sqlx::query_as(&format!(
            "SELECT {SESSION_COLS} FROM sessions \
             WHERE id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $1) FOR UPDATE"
        ))
        .bind(&hash[..])
        .fetch_optional(&mut *tx)
        .await?;
        let Some(session) = session else { return Ok(None) };
        let token: TokenRow =
            sqlx::query_as(&format!("SELECT {TOKEN_COLS} FROM refresh_tokens t WHERE t.token_hash = $1 FOR UPDATE"))
                .bind(&hash[..])
                .fetch_one(&mut *tx)
                .await?;
        let disabled_at: Option<Ts> = sqlx::query_scalar("SELECT disabled_at FROM users WHERE id = $1")
            .bind(&session.user_id)
            .fetch_one(&mut *tx)
            .await?;
        Ok(Some(Presented { session, token, disabled: disabled_at.is_some() }))
    }

    /// Session creation's credential check, `FOR SHARE`: that conflicts with the row lock of a
    /// password change, disable or demotion (an INSERT's foreign-key check takes only
    /// `KEY SHARE`, which does not), so either that writer commits first and this statement
    /// (READ COMMITTED, re-evaluated after the wait) no longer finds the row, or this commits
    /// first and the writer's revoking statement, which runs after its UPDATE, sees the new
    /// session.
    async fn user_for_session(
        &self,
        tx: &mut PgConnection,
        user_id: &str,
        version: i64,
    ) -> StoreResult<Option<UserRow>> {
        Ok(sqlx::query_as(&format!("{USER_FOR_SESSION} FOR SHARE"))
            .bind(user_id)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?)
    }

    /// Disabling's read of the flag, locking the user row (as demotion does).
    async fn disabled_flag_for_update(&self, tx: &mut PgConnection, id: &str) -> StoreResult<Option<bool>> {
        Ok(sqlx::query_scalar(&format!("{DISABLED_FLAG} FOR UPDATE")).bind(id).fetch_optional(&mut *tx).await?)
    }

    /// Demotion's read of the admin flag, locked until the role change and the revocation of
    /// the user's sessions commit.
    async fn admin_flag_for_update(&self, tx: &mut PgConnection, id: &str) -> StoreResult<Option<bool>> {
        Ok(sqlx::query_scalar(&format!("{ADMIN_FLAG} FOR UPDATE")).bind(id).fetch_optional(&mut *tx).await?)
    }

    /// Serialises first-key creation across instances starting together.
    async fn lock_signing_keys(&self, tx: &mut PgConnection) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(7305813)").execute(&mut *tx).await?;
        Ok(())
    }

    // ---- PostgreSQL only: the backplane's side of the store ----

    /// Revocation log rows whose ids fall in any of `ranges` (inclusive; they may overlap), in
    /// id order, each with its log id: one read for every notification a listener has queued.
    pub async fn revocations_in(&self, ranges: &[(i64, i64)]) -> StoreResult<Vec<(i64, Revoked)>> {
        crate::store::fail_at!(self.failpoints, super::failpoint::REVOCATIONS_READ);
        let merged = merge_ranges(ranges);
        let (lo, hi): (Vec<i64>, Vec<i64>) = merged.into_iter().unzip();
        let rows: Vec<(i64, String, String, Ts, String, Ts)> = sqlx::query_as(
            "SELECT r.id, r.session_id, r.user_id, r.access_expires_at, r.reason, r.at FROM revocations r \
             JOIN unnest($1::int8[], $2::int8[]) AS q(lo, hi) ON r.id BETWEEN q.lo AND q.hi ORDER BY r.id",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, session_id, user_id, exp, reason, at)| {
                (id, Revoked { session_id, user_id, access_expires_at: exp.0, reason, at: at.0 })
            })
            .collect())
    }

    /// Records this instance's heartbeat and updates its presence rows (sessions with a socket
    /// here): `added` appear, `removed` go.
    pub async fn sync_presence(
        &self,
        instance: &str,
        added: &[String],
        removed: &[String],
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO instances (id, heartbeat_at) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(instance)
        .bind(Ts(now))
        .execute(&mut *tx)
        .await?;
        if !added.is_empty() {
            sqlx::query(
                "INSERT INTO presence (instance_id, session_id) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            )
            .bind(instance)
            .bind(added)
            .execute(&mut *tx)
            .await?;
        }
        if !removed.is_empty() {
            sqlx::query("DELETE FROM presence WHERE instance_id = $1 AND session_id = ANY($2)")
                .bind(instance)
                .bind(removed)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes this instance and its presence (graceful shutdown).
    pub async fn forget_instance(&self, id: &str) -> StoreResult<()> {
        sqlx::query(
            "WITH gone AS (DELETE FROM instances WHERE id = $1 RETURNING id) \
             DELETE FROM presence WHERE instance_id IN (SELECT id FROM gone)",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes the instances silent since before `before` and their presence (crashed ones).
    pub async fn forget_silent_instances(&self, before: Millis) -> StoreResult<()> {
        sqlx::query(
            "WITH gone AS (DELETE FROM instances WHERE heartbeat_at < $1 RETURNING id) \
             DELETE FROM presence WHERE instance_id IN (SELECT id FROM gone)",
        )
        .bind(Ts(before))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Of `user_id`'s sessions, those with a socket on an instance alive after `alive_after`.
    pub async fn connected_sessions(&self, user_id: &str, alive_after: Millis) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT p.session_id FROM presence p \
               JOIN instances i ON i.id = p.instance_id \
               JOIN sessions s ON s.id = p.session_id \
             WHERE s.user_id = $1 AND i.heartbeat_at > $2",
        )
        .bind(user_id)
        .bind(Ts(alive_after))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Ids of the instances with a heartbeat after `alive_after`, except `this`.
    pub async fn other_instances(&self, this: &str, alive_after: Millis) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM instances WHERE heartbeat_at > $1 AND id <> $2")
            .bind(Ts(alive_after))
            .bind(this)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Every instance whose heartbeat is after `alive_after`, with it (ms), by id.
    pub async fn instances(&self, alive_after: Millis) -> StoreResult<Vec<(String, Millis)>> {
        let rows: Vec<(String, Ts)> =
            sqlx::query_as("SELECT id, heartbeat_at FROM instances WHERE heartbeat_at > $1 ORDER BY id")
                .bind(Ts(alive_after))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id, t)| (id, t.0)).collect())
    }

    /// Sends a notification now (outside any transaction).
    pub async fn notify(&self, channel: &str, payload: &str) -> StoreResult<()> {
        self.notify_in(&mut *self.pool.acquire().await?, channel, payload).await
    }

    async fn notify_in(&self, conn: &mut PgConnection, channel: &str, payload: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&mut *conn).await?;
        Ok(())
    }

    /// A listener on a dedicated connection (not from the request pool), opened with this
    /// store's options under `application_name`, so operators and tests can find it in
    /// `pg_stat_activity`. The listener reconnects through its own one-connection pool.
    pub async fn listener(&self, application_name: &str) -> StoreResult<PgListener> {
        let options = PgConnectOptions::clone(&self.options).application_name(application_name);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .after_connect(|conn, _| Box::pin(keepalives(conn)))
            .connect_with(options)
            .await?;
        Ok(PgListener::connect_with(&pool).await?)
    }
}

super::ssf::ssf_store!(
    PgStore,
    sqlx::Postgres,
    sqlx::PgConnection,
    " FOR UPDATE SKIP LOCKED",
    " FOR UPDATE",
    " FOR SHARE"
);
shared_store!(PgStore, sqlx::Postgres, sqlx::PgConnection);

/// Asks the server to drop this connection once its peer goes silent: TCP keepalives, and a
/// user timeout for data left unacknowledged (PostgreSQL 12+). sqlx sets no socket option on
/// its own side, so sessiond's bounds are `--db-timeout` on every call and the listener's
/// liveness probe (`backplane`); this frees the server's end of a partitioned connection. Set
/// with `SET` after connecting (not as startup options, which connection poolers refuse); a
/// server or pooler that refuses them still serves, without them.
async fn keepalives(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    let set = "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3; \
               SET tcp_user_timeout = 20000";
    if let Err(e) = conn.execute(set).await {
        tracing::debug!(error = %e, "the server refused the TCP keepalive settings");
    }
    Ok(())
}

/// Where `options` point, for error messages: host and port (or socket) and database. Built
/// from the parsed options, so it can never contain the password.
fn address(options: &PgConnectOptions) -> String {
    let server = match options.get_socket() {
        Some(socket) => format!("socket {}", socket.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    match options.get_database() {
        Some(db) => format!("{server} (database {db})"),
        None => server,
    }
}

/// `ranges` (inclusive) sorted and merged where they overlap or touch.
pub(crate) fn merge_ranges(ranges: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut sorted: Vec<(i64, i64)> = ranges.iter().copied().filter(|(lo, hi)| lo <= hi).collect();
    sorted.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(sorted.len());
    for (lo, hi) in sorted {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_where_they_overlap_or_touch() {
        assert_eq!(merge_ranges(&[]), vec![]);
        assert_eq!(merge_ranges(&[(5, 7), (1, 2), (3, 4), (10, 12), (11, 11)]), vec![(1, 7), (10, 12)]);
        assert_eq!(merge_ranges(&[(1, 1), (3, 3)]), vec![(1, 1), (3, 3)]);
        assert_eq!(merge_ranges(&[(4, 2)]), vec![], "an empty range reads nothing");
    }

    #[test]
    fn the_address_never_shows_the_password() {
        let o = PgConnectOptions::from_str("postgres://u:hunter2@db.example:6543/sessiond").unwrap();
        assert_eq!(address(&o), "db.example:6543 (database sessiond)");
    }
}

//! The SQLite backend: one embedded database file for one instance.
//!
//! SQLite allows one writer at a time. Every write transaction goes through a pool of exactly
//! one connection (our own writers queue fairly in the pool instead of spinning in SQLite's busy
//! handler) and starts with `BEGIN IMMEDIATE`, which takes the write lock up front: a deferred
//! transaction that reads then writes fails with SQLITE_BUSY_SNAPSHOT when another process
//! (e.g. `sessiond user add`) wrote in between. Holding the write lock from the start, a
//! transaction's reads need no row locks: nothing else writes until it commits. WAL lets a pool
//! of readers run beside the writer, and a background task checkpoints the WAL off the write
//! path. Times are INTEGER milliseconds, flags INTEGER 0/1 (sqlx decodes `bool` from them).
//!
//! The statements and transactions shared with PostgreSQL are expanded here from
//! [`shared_store!`](super::shared::shared_store); this file holds what is SQLite's own.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::shared::{
    log_insert, renumber, revoke_update, shared_store, signal_sessions_insert, signals_revocation, Presented,
    RevokedRow, TokenRow, ADMIN_FLAG, DISABLED_FLAG, ROTATE_INSERT, ROTATE_MARK, TOKEN_COLS, USER_FOR_SESSION,
    USE_SESSION,
};
use super::{Millis, OptTs, Revoked, Selector, SessionRow, StoreError, StoreResult, Ts, UserRow};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store. Clones share the pools.
#[derive(Clone)]
pub struct SqliteStore {
    /// Exactly one connection: every write transaction (see the module doc).
    writer: SqlitePool,
    /// Readers, beside the writer (WAL).
    reader: SqlitePool,
    #[cfg(any(test, feature = "test-util"))]
    pub(super) failpoints: super::failpoint::Failpoints,
}

impl SqliteStore {
    /// Opens (creating it unless the URL says `mode=`) the database file named by `url`.
    pub(super) async fn connect(url: &str, options: &super::StoreOptions) -> StoreResult<Self> {
        // WAL with NORMAL: commits do not sync; checkpoints do (in the background task). A
        // commit survives the process being killed, not a power loss or an OS crash
        // (docs/operations.md); FULL syncs every commit.
        let synchronous =
            if options.sqlite_synchronous_full { SqliteSynchronous::Full } else { SqliteSynchronous::Normal };
        let mut opts = SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(options.db_timeout)
            .foreign_keys(true)
            // Checkpoints (and their fsyncs) run in the background task below, off the write
            // path; this is the backstop.
            .pragma("wal_autocheckpoint", "10000");
        if !url.contains("mode=") {
            opts = opts.create_if_missing(true);
        }
        let target = || format!("open the SQLite database at {}", opts.get_filename().display());
        // No ping before handing out a connection (sqlx's default): a connection to a local file
        // does not go stale, and each ping is one more hand-off to the connection's thread, for
        // every transaction and read (BENCHMARKS.md, issue 15).
        let pool = |n| {
            SqlitePoolOptions::new().max_connections(n).acquire_timeout(options.db_timeout).test_before_acquire(false)
        };
        let writer = pool(1)
            .after_release(|conn, _| Box::pin(still_usable(conn)))
            .connect_with(opts.clone())
            .await
            .map_err(|error| StoreError::Connect { target: target(), error })?;
        let reader = pool(4)
            .connect_with(opts.clone())
            .await
            .map_err(|error| StoreError::Connect { target: target(), error })?;
        spawn_checkpointer(reader.clone());
        Ok(SqliteStore {
            writer,
            reader,
            #[cfg(any(test, feature = "test-util"))]
            failpoints: Default::default(),
        })
    }

    /// Tests only: caps the database file at `pages` pages (`PRAGMA max_page_count` on the one
    /// writer connection; `None`: SQLite's default), so a test can fill the "disk".
    #[cfg(any(test, feature = "test-util"))]
    pub(super) async fn limit_pages(&self, pages: Option<i64>) -> StoreResult<i64> {
        let pages = pages.unwrap_or(4_294_967_294);
        let mut conn = self.writer.acquire().await?;
        let now: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut *conn).await?;
        sqlx::query(&format!("PRAGMA max_page_count = {pages}")).execute(&mut *conn).await?;
        Ok(now)
    }

    /// An online, consistent copy of the database at `path` (`VACUUM INTO`: one read
    /// transaction, so writers go on meanwhile), which must not exist yet.
    pub(super) async fn backup_into(&self, path: &std::path::Path) -> StoreResult<()> {
        let path = path
            .to_str()
            .ok_or_else(|| StoreError::Db(sqlx::Error::Configuration("the backup path is not valid UTF-8".into())))?;
        sqlx::query("VACUUM INTO $1").bind(path).execute(&self.reader).await?;
        Ok(())
    }

    pub(super) async fn migrate(&self) -> StoreResult<()> {
        Ok(MIGRATOR.run(&self.writer).await?)
    }

    pub(super) async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// A write transaction holding the database's write lock from its first statement.
    async fn begin(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Ends the selected sessions and appends them to the revocation log, in the caller's
    /// transaction (nothing is logged on rollback). Log ids grow in commit order without any
    /// lock of ours: SQLite has one writer at a time, and this runs inside a `BEGIN IMMEDIATE`
    /// transaction, so no other transaction can allocate an id until this one has committed
    /// (docs/API.md §9). There is no one to notify: the one instance publishes its own
    /// revocations.
    async fn revoke_in(
        &self,
        tx: &mut SqliteConnection,
        sel: &Selector,
        reason: &str,
        now: Millis,
        _request: Option<&str>,
        txn: &str,
    ) -> StoreResult<Vec<Revoked>> {
        let sql = revoke_update(sel, reason);
        let rows: Vec<RevokedRow> = shared::bind_selector(&sql, sel, reason, now).fetch_all(&mut *tx).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(&rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
            .map_err(|e| StoreError::Db(sqlx::Error::Encode(e.into())))?;
        sqlx::query(&log_insert("IN (SELECT value FROM json_each($1))"))
            .bind(&ids)
            .bind(reason)
            .bind(Ts(now))
            .execute(&mut *tx)
            .await?;
        if signals_revocation(reason) {
            sqlx::query(&signal_sessions_insert("IN (SELECT value FROM json_each($1))"))
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
        Ok(rows.into_iter().map(|r| r.revoked(reason, now)).collect())
    }

    /// A rotation's three writes (mark the presented token, insert its successor, use the
    /// session) as one batch, in that order: one hand-off to sqlx's SQLite thread instead of
    /// three (a sequential rotation ~20 % faster: BENCHMARKS.md, issue 15). `$1`…`$10` are shared
    /// by the three statements; the session row comes back from the last one's `RETURNING`.
    async fn write_rotation(
        &self,
        tx: &mut SqliteConnection,
        p: &Presented,
        r: &super::Rotation,
        idle: Millis,
        access_exp: Millis,
    ) -> StoreResult<SessionRow> {
        static BATCH: LazyLock<String> = LazyLock::new(|| {
            format!(
                "{ROTATE_MARK}; {}; {}",
                renumber(ROTATE_INSERT, &[2, 5, 7, 4, 1]),
                renumber(&USE_SESSION, &[1, 8, 9, 10, 5])
            )
        });
        let session = sqlx::query_as(&BATCH)
            .bind(Ts(r.now))
            .bind(&r.candidate.id)
            .bind(&r.sealed_candidate)
            .bind(&p.token.id)
            .bind(&p.session.id)
            .bind(&r.client[..])
            .bind(&r.candidate.hash[..])
            .bind(Ts(r.now - r.grace))
            .bind(Ts(idle))
            .bind(Ts(access_exp))
            .fetch_one(&mut *tx)
            .await?;
        // Tests: a fault after the writes, before the commit, must roll them all back
        // (SECURITY.md R6).
        crate::store::fail_at!(self.failpoints, super::failpoint::ROTATE_AFTER_MARK);
        Ok(session)
    }

    /// One round trip reads the token, its session and the user: the write lock is held already.
    async fn read_presented(&self, tx: &mut SqliteConnection, hash: &[u8; 32]) -> StoreResult<Option<Presented>> {
        #[derive(sqlx::FromRow)]
        struct Joined {
            #[sqlx(flatten)]
            session: SessionRow,
            #[sqlx(flatten)]
            token: TokenRow,
            #[sqlx(try_from = "OptTs")]
            u_disabled_at: Option<Millis>,
        }
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT s.*, {TOKEN_COLS}, u.disabled_at AS u_disabled_at \
                 FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id \
                 WHERE t.token_hash = $1"
            )
        });
        let row: Option<Joined> = sqlx::query_as(&SQL).bind(&hash[..]).fetch_optional(&mut *tx).await?;
        Ok(row.map(|j| Presented { session: j.session, token: j.token, disabled: j.u_disabled_at.is_some() }))
    }

    /// Session creation's credential check. `BEGIN IMMEDIATE` serialises it with every writer
    /// (password change, disable, demotion), so the row cannot change before the commit.
    async fn user_for_session(
        &self,
        tx: &mut SqliteConnection,
        user_id: &str,
        version: i64,
    ) -> StoreResult<Option<UserRow>> {
        Ok(sqlx::query_as(USER_FOR_SESSION).bind(user_id).bind(version).fetch_optional(&mut *tx).await?)
    }

    /// Demotion's read of the admin flag (under the write lock).
    async fn admin_flag_for_update(&self, tx: &mut SqliteConnection, id: &str) -> StoreResult<Option<bool>> {
        Ok(sqlx::query_scalar(ADMIN_FLAG).bind(id).fetch_optional(&mut *tx).await?)
    }

    /// Disabling's read of the flag (under the write lock).
    async fn disabled_flag_for_update(&self, tx: &mut SqliteConnection, id: &str) -> StoreResult<Option<bool>> {
        Ok(sqlx::query_scalar(DISABLED_FLAG).bind(id).fetch_optional(&mut *tx).await?)
    }

    /// First-key creation is serialised by the write lock already.
    async fn lock_signing_keys(&self, _tx: &mut SqliteConnection) -> StoreResult<()> {
        Ok(())
    }
}

/// Whether the writer connection may go back to the pool. SQLite rolls a transaction back by
/// itself on some errors (`SQLITE_FULL`, `SQLITE_IOERR`, …: a full disk); sqlx's rollback then
/// fails ("no transaction is active") and sqlx still counts the connection as inside a
/// transaction, so every later `BEGIN` on it would fail for good (a 500 until a restart). Such a
/// connection is closed instead and the pool opens a new one. The check costs a round trip to
/// the connection's thread only after a transaction that was not committed (the rollback of a
/// dropped transaction is still queued then: the ping lets it run first).
async fn still_usable(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!("the SQLite writer connection lost track of a rolled-back transaction; replacing it");
        return Ok(false);
    }
    Ok(true)
}

super::ssf::ssf_store!(SqliteStore, sqlx::Sqlite, sqlx::SqliteConnection, "", "", "");
shared_store!(SqliteStore, sqlx::Sqlite, sqlx::SqliteConnection);

/// Copies the WAL back into the database every 250 ms with a passive checkpoint on a reader
/// connection, so that writers never pay for the checkpoint's page writes and fsync (in WAL
/// mode with `synchronous = NORMAL`, commits do not sync; checkpoints do). Passive checkpoints
/// never wait for or block writers. Stops when the pool is closed.
fn spawn_checkpointer(reader: SqlitePool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if reader.is_closed() {
                return;
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&reader).await {
                if reader.is_closed() {
                    return;
                }
                tracing::debug!(error = %e, "background WAL checkpoint failed");
            }
        }
    });
}

//! SQLite backend: WAL, a busy timeout, one writer connection and a small reader pool.
//!
//! SQLite allows one writer at a time. Every write transaction goes through a pool of exactly
//! one connection (so our own writers queue fairly in the pool instead of spinning in SQLite's
//! busy handler) and starts with `BEGIN IMMEDIATE`, which takes the write lock up front: a
//! deferred transaction that reads and then writes can fail with SQLITE_BUSY_SNAPSHOT when
//! another process (e.g. `sessiond user add`) wrote in between, and busy_timeout cannot help.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};

use super::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const SESSION_COLS: &str = "id, user_id, device_name, user_agent, ip, created_at, last_used_at, \
    idle_expires_at, absolute_expires_at, access_expires_at, revoked_at, revoked_reason";

#[derive(Clone)]
pub(super) struct SqliteStore {
    /// Exactly one connection: every write transaction.
    writer: SqlitePool,
    /// Reads; WAL lets them run beside the writer.
    reader: SqlitePool,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    session_id: String,
    rotated_at: Option<i64>,
    successor_id: Option<String>,
    sealed_successor: Option<Vec<u8>>,
}

impl SqliteStore {
    pub(super) async fn connect(url: &str) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.read_only(false))
            .await?;
        Ok(Self { writer, reader })
    }

    pub(super) async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    // ---- users ----

    pub(super) async fn create_user(
        &self,
        id: &str,
        email: &str,
        hash: &str,
        admin: bool,
        now: Millis,
    ) -> StoreResult<()> {
        let res = sqlx::query(
            "INSERT INTO users (id, email, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(email)
        .bind(hash)
        .bind(admin)
        .bind(now)
        .execute(&self.writer)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn count_users(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.reader).await?)
    }

    pub(super) async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE email = $1").bind(email).fetch_optional(&self.reader).await?)
    }

    pub(super) async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE id = $1").bind(id).fetch_optional(&self.reader).await?)
    }

    pub(super) async fn list_users(
        &self,
        limit: i64,
        after: Option<&str>,
        now: Millis,
    ) -> StoreResult<Vec<UserSummary>> {
        Ok(sqlx::query_as(
            "SELECT u.id, u.email, u.is_admin, u.created_at, \
               (SELECT COUNT(*) FROM sessions s WHERE s.user_id = u.id AND s.revoked_at IS NULL \
                  AND s.idle_expires_at > $3 AND s.absolute_expires_at > $3) AS active_sessions \
             FROM users u WHERE ($1 IS NULL OR u.id > $1) ORDER BY u.id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .bind(now)
        .fetch_all(&self.reader)
        .await?)
    }

    pub(super) async fn change_password(
        &self,
        user_id: &str,
        hash: &str,
        keep: &str,
        now: Millis,
    ) -> StoreResult<Vec<Revoked>> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let sel = Selector::User { user_id: user_id.to_string(), except: Some(keep.to_string()) };
        let revoked = revoke_in(&mut tx, &sel, "password_changed", now).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    // ---- sessions ----

    pub(super) async fn create_session(&self, s: NewSession) -> StoreResult<SessionRow> {
        let idle = s.now + s.idle_ttl;
        let absolute = s.now + s.max_age;
        let access_exp = (s.now + s.access_ttl).min(idle).min(absolute);
        let mut tx = self.begin().await?;
        let row: SessionRow = sqlx::query_as(&format!(
            "INSERT INTO sessions (id, user_id, device_name, user_agent, ip, created_at, last_used_at, \
               idle_expires_at, absolute_expires_at, access_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9) RETURNING {SESSION_COLS}"
        ))
        .bind(&s.id)
        .bind(&s.user_id)
        .bind(&s.device_name)
        .bind(&s.user_agent)
        .bind(&s.ip)
        .bind(s.now)
        .bind(idle)
        .bind(absolute)
        .bind(access_exp)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&s.refresh.id)
            .bind(&s.id)
            .bind(&s.refresh.hash[..])
            .bind(s.now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub(super) async fn live_sessions(&self, user_id: &str, now: Millis) -> StoreResult<Vec<SessionRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {SESSION_COLS} FROM sessions WHERE user_id = $1 AND revoked_at IS NULL \
               AND idle_expires_at > $2 AND absolute_expires_at > $2 ORDER BY created_at DESC, id DESC"
        ))
        .bind(user_id)
        .bind(now)
        .fetch_all(&self.reader)
        .await?)
    }

    pub(super) async fn session(&self, id: &str) -> StoreResult<Option<SessionRow>> {
        Ok(sqlx::query_as(&format!("SELECT {SESSION_COLS} FROM sessions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?)
    }

    pub(super) async fn count_live_sessions(&self, now: Millis) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND idle_expires_at > $1 AND absolute_expires_at > $1",
        )
        .bind(now)
        .fetch_one(&self.reader)
        .await?)
    }

    pub(super) async fn revoke(&self, sel: &Selector, reason: &str, now: Millis) -> StoreResult<Vec<Revoked>> {
        let mut tx = self.begin().await?;
        let revoked = revoke_in(&mut tx, sel, reason, now).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    pub(super) async fn sweep_expired(&self, now: Millis, grace: Millis) -> StoreResult<Vec<Revoked>> {
        let mut tx = self.begin().await?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = 'session_expired' \
             WHERE revoked_at IS NULL AND (idle_expires_at <= $1 OR absolute_expires_at <= $1) \
             RETURNING id, user_id, access_expires_at",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        forget_successors(&mut tx, now).await?;
        // Past the grace window a sealed successor can never be used again.
        sqlx::query(
            "UPDATE refresh_tokens SET sealed_successor = NULL WHERE sealed_successor IS NOT NULL AND rotated_at < $1",
        )
        .bind(now - grace)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(to_revoked(rows, "session_expired", now))
    }

    pub(super) async fn revoked_since(&self, min_exp: Millis) -> StoreResult<Vec<Revoked>> {
        let rows: Vec<(String, String, i64, String, i64)> = sqlx::query_as(
            "SELECT id, user_id, access_expires_at, COALESCE(revoked_reason, ''), revoked_at FROM sessions \
             WHERE revoked_at IS NOT NULL AND access_expires_at >= $1",
        )
        .bind(min_exp)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(session_id, user_id, access_expires_at, reason, at)| Revoked {
                session_id,
                user_id,
                access_expires_at,
                reason,
                at,
            })
            .collect())
    }

    // ---- refresh tokens ----

    pub(super) async fn rotate_refresh(&self, r: Rotation) -> StoreResult<RotateOutcome> {
        let mut tx = self.begin().await?;
        let outcome = rotate_in(&mut tx, &r).await?;
        // Commit on every path: a reuse or expiry revocation must stick although the client
        // gets an error (RFC 9700 §4.14.2; Supabase's commit-with-error).
        tx.commit().await?;
        Ok(outcome)
    }

    pub(super) async fn session_of_refresh(&self, hash: &[u8; 32]) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT session_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(&hash[..])
            .fetch_optional(&self.reader)
            .await?)
    }

    // ---- signing keys ----

    pub(super) async fn signing_keys(&self) -> StoreResult<Vec<KeyRow>> {
        Ok(sqlx::query_as("SELECT * FROM signing_keys ORDER BY activates_at, created_at, kid")
            .fetch_all(&self.reader)
            .await?)
    }

    pub(super) async fn insert_signing_key(&self, k: &KeyRow, only_if_empty: bool) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        if only_if_empty {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM signing_keys").fetch_one(&mut *tx).await?;
            if n > 0 {
                return Ok(false);
            }
        }
        sqlx::query(
            "INSERT INTO signing_keys (kid, private_der, public_x, created_at, activates_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&k.kid)
        .bind(&k.private_der)
        .bind(&k.public_x)
        .bind(k.created_at)
        .bind(k.activates_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The decision of one refresh, inside the caller's write transaction (API.md §3.3).
async fn rotate_in(tx: &mut Transaction<'static, Sqlite>, r: &Rotation) -> StoreResult<RotateOutcome> {
    let token: Option<TokenRow> = sqlx::query_as(
        "SELECT id, session_id, rotated_at, successor_id, sealed_successor FROM refresh_tokens WHERE token_hash = $1",
    )
    .bind(&r.presented_hash[..])
    .fetch_optional(&mut **tx)
    .await?;
    let Some(token) = token else { return Ok(RotateOutcome::Invalid) };
    let session: SessionRow = sqlx::query_as(&format!("SELECT {SESSION_COLS} FROM sessions WHERE id = $1"))
        .bind(&token.session_id)
        .fetch_one(&mut **tx)
        .await?;
    if session.revoked_at.is_some() {
        return Ok(RotateOutcome::Invalid);
    }
    if session.expires_at() <= r.now {
        let sel = Selector::Session(session.id.clone());
        return Ok(RotateOutcome::Expired(revoke_in(tx, &sel, "session_expired", r.now).await?));
    }

    let idle = r.now + (r.idle_ttl);
    let access_exp = (r.now + r.access_ttl).min(idle).min(session.absolute_expires_at);

    match token.rotated_at {
        None => {
            // The live token: rotate it.
            let session = rotate_live(tx, &session, &token, r, idle, access_exp).await?;
            Ok(RotateOutcome::Rotated { session, access_exp })
        }
        Some(rotated_at) => {
            let successor_live = match &token.successor_id {
                Some(sid) => {
                    sqlx::query_scalar::<_, Option<i64>>("SELECT rotated_at FROM refresh_tokens WHERE id = $1")
                        .bind(sid)
                        .fetch_optional(&mut **tx)
                        .await?
                        .map(|ra| ra.is_none())
                        .unwrap_or(false)
                }
                None => false,
            };
            let within = r.now - rotated_at <= r.grace;
            match (&token.sealed_successor, successor_live && within) {
                (Some(sealed), true) => {
                    sqlx::query("UPDATE sessions SET last_used_at = $1, access_expires_at = MAX(access_expires_at, $2) WHERE id = $3")
                        .bind(r.now)
                        .bind(access_exp)
                        .bind(&session.id)
                        .execute(&mut **tx)
                        .await?;
                    Ok(RotateOutcome::Grace { session, sealed_successor: sealed.clone(), access_exp })
                }
                _ => {
                    let sel = Selector::Session(session.id.clone());
                    Ok(RotateOutcome::Reused(revoke_in(tx, &sel, "refresh_token_reused", r.now).await?))
                }
            }
        }
    }
}

/// Marks `token` rotated, stores the candidate as the live token, and extends the session's
/// idle expiry. The old token is marked first: the partial unique index allows one live token.
async fn rotate_live(
    tx: &mut Transaction<'static, Sqlite>,
    session: &SessionRow,
    token: &TokenRow,
    r: &Rotation,
    idle: Millis,
    access_exp: Millis,
) -> StoreResult<SessionRow> {
    sqlx::query("UPDATE refresh_tokens SET rotated_at = $1, successor_id = $2, sealed_successor = $3 WHERE id = $4")
        .bind(r.now)
        .bind(&r.candidate.id)
        .bind(&r.sealed_candidate)
        .bind(&token.id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (id, session_id, token_hash, prev_id, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&r.candidate.id)
    .bind(&session.id)
    .bind(&r.candidate.hash[..])
    .bind(&token.id)
    .bind(r.now)
    .execute(&mut **tx)
    .await?;
    // Only the immediately previous token may converge: forget older sealed successors.
    sqlx::query("UPDATE refresh_tokens SET sealed_successor = NULL WHERE session_id = $1 AND id <> $2 AND sealed_successor IS NOT NULL")
        .bind(&session.id)
        .bind(&token.id)
        .execute(&mut **tx)
        .await?;
    Ok(sqlx::query_as(&format!(
        "UPDATE sessions SET last_used_at = $1, idle_expires_at = $2, access_expires_at = MAX(access_expires_at, $3) \
         WHERE id = $4 RETURNING {SESSION_COLS}"
    ))
    .bind(r.now)
    .bind(idle)
    .bind(access_exp)
    .bind(&session.id)
    .fetch_one(&mut **tx)
    .await?)
}

/// Ends the selected live sessions inside `tx`.
async fn revoke_in(
    tx: &mut Transaction<'static, Sqlite>,
    sel: &Selector,
    reason: &str,
    now: Millis,
) -> StoreResult<Vec<Revoked>> {
    // Only live sessions: an expired one is left to end as `session_expired`.
    let base = if reason == "session_expired" {
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE revoked_at IS NULL"
    } else {
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE revoked_at IS NULL \
         AND idle_expires_at > $1 AND absolute_expires_at > $1"
    };
    let ret = "RETURNING id, user_id, access_expires_at";
    let sql = match sel {
        Selector::Session(_) => format!("{base} AND id = $3 {ret}"),
        Selector::OwnSession { .. } => format!("{base} AND id = $3 AND user_id = $4 {ret}"),
        Selector::User { .. } => format!("{base} AND user_id = $3 AND ($4 IS NULL OR id <> $4) {ret}"),
        Selector::Everyone => format!("{base} {ret}"),
    };
    let q = sqlx::query_as(&sql).bind(now).bind(reason);
    let q = match sel {
        Selector::Session(id) => q.bind(id),
        Selector::OwnSession { user_id, session_id } => q.bind(session_id).bind(user_id),
        Selector::User { user_id, except } => q.bind(user_id).bind(except),
        Selector::Everyone => q,
    };
    let rows: Vec<(String, String, i64)> = q.fetch_all(&mut **tx).await?;
    forget_successors(tx, now).await?;
    Ok(to_revoked(rows, reason, now))
}

/// Sessions just ended at `now` need no convergence material: drop their sealed successors.
async fn forget_successors(tx: &mut Transaction<'static, Sqlite>, now: Millis) -> StoreResult<()> {
    sqlx::query(
        "UPDATE refresh_tokens SET sealed_successor = NULL WHERE sealed_successor IS NOT NULL \
           AND session_id IN (SELECT id FROM sessions WHERE revoked_at = $1)",
    )
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn to_revoked(rows: Vec<(String, String, i64)>, reason: &str, at: Millis) -> Vec<Revoked> {
    rows.into_iter()
        .map(|(session_id, user_id, access_expires_at)| Revoked {
            session_id,
            user_id,
            access_expires_at,
            reason: reason.to_string(),
            at,
        })
        .collect()
}

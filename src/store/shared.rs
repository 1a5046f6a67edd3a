//! The SQL both backends run, written once.
//!
//! Each backend has a typed pool (`SqlitePool`, `PgPool`), so a statement's Rust code is
//! compiled once per backend. Writing it generically over `sqlx::Database` would need a long
//! list of higher-ranked bounds on every function; instead [`shared_store!`] holds the shared
//! statements as ordinary functions and is expanded once in each backend module
//! (`shared_store!(SqliteStore, sqlx::Sqlite, sqlx::SqliteConnection)`), where they become
//! methods of that backend's store. The placeholders are `$N` (SQLite accepts them too), times
//! are bound as [`Ts`](super::Ts), flags as `bool`.
//!
//! The macro also holds the transactions, written once: what differs per backend inside them
//! are the reads that lock and the revocation, which each backend module writes its own way,
//! as these methods of its store:
//! - `begin()`: SQLite `BEGIN IMMEDIATE` on its one writer connection (every other writer
//!   waits, so its reads need no lock); PostgreSQL a plain transaction whose reads lock rows;
//! - `revoke_in(tx, selector, reason, now, request, txn)`: ends the sessions, appends them to
//!   the revocation log ([`log_insert`]) and writes their Shared Signals outbox rows
//!   ([`signal_sessions_insert`], one `txn` per cause); PostgreSQL allocates the log ids under an advisory lock
//!   (commit order) and sends `NOTIFY`, in the same transaction;
//! - `read_presented(tx, hash)`: a refresh token, its session and the user's disabled flag
//!   (SQLite: one join; PostgreSQL: the session row locked before the token row);
//! - `user_for_session(tx, user_id, version)`: session creation's credential check
//!   (PostgreSQL: `FOR SHARE`), `admin_flag_for_update(tx, id)`: demotion's read (PostgreSQL:
//!   `FOR UPDATE`), `disabled_flag_for_update(tx, id)`: disabling's read, `lock_signing_keys(tx)`: first-key creation (PostgreSQL: an advisory lock).
//!
//! Everything PostgreSQL-only (revocation log reads, presence, `NOTIFY`, the listener) is in
//! `postgres.rs` alone.

use super::types::{RotateOutcome, Rotation, Selector, SessionRow};

/// The columns of [`SessionRow`], in a `SELECT` or `RETURNING`.
pub(super) const SESSION_COLS: &str = "id, user_id, device_name, user_agent, ip, created_at, last_used_at, \
    settled_used_at, idle_expires_at, absolute_expires_at, access_expires_at, revoked_at, revoked_reason";

/// Session creation's credential check: the user, only if the credential the login verified is
/// still current and the account enabled (SECURITY.md RT1). PostgreSQL adds a row lock.
pub(super) const USER_FOR_SESSION: &str =
    "SELECT * FROM users WHERE id = $1 AND credential_version = $2 AND disabled_at IS NULL";

/// Demotion's read of the admin flag. PostgreSQL adds a row lock.
pub(super) const ADMIN_FLAG: &str = "SELECT is_admin FROM users WHERE id = $1";

/// Disabling's read of the disabled flag (whether the account changes, so whether to signal
/// it). PostgreSQL adds a row lock.
pub(super) const DISABLED_FLAG: &str = "SELECT disabled_at IS NOT NULL FROM users WHERE id = $1";

/// The columns of [`TokenRow`] from `refresh_tokens t`.
pub(super) const TOKEN_COLS: &str = "t.id AS t_id, t.rotated_at AS t_rotated_at, t.successor_id AS t_successor_id, \
    t.sealed_successor AS t_sealed_successor, t.rotated_by AS t_rotated_by";

/// A refresh token as a rotation reads it (columns aliased `t_*`: see [`TOKEN_COLS`]).
#[derive(sqlx::FromRow)]
pub(super) struct TokenRow {
    #[sqlx(rename = "t_id")]
    pub id: String,
    #[sqlx(rename = "t_rotated_at", try_from = "super::OptTs")]
    pub rotated_at: Option<crate::clock::Millis>,
    #[sqlx(rename = "t_successor_id")]
    pub successor_id: Option<String>,
    #[sqlx(rename = "t_sealed_successor")]
    pub sealed_successor: Option<Vec<u8>>,
    /// The binding of the client that rotated this token out.
    #[sqlx(rename = "t_rotated_by")]
    pub rotated_by: Option<Vec<u8>>,
}

/// What a rotation decides from: the presented token, its session, and whether the user is
/// disabled, read by each backend under its own locking (`read_presented`).
pub(super) struct Presented {
    pub session: SessionRow,
    pub token: TokenRow,
    pub disabled: bool,
}

/// A rotation that ends the session; the backend's `revoke_in` commits the revocation.
pub(super) enum Ending {
    Expired,
    Disabled,
    Reused { foreign_client: bool },
}

impl Ending {
    pub fn reason(&self) -> &'static str {
        match self {
            Ending::Expired => "session_expired",
            Ending::Disabled => "account_disabled",
            Ending::Reused { .. } => "refresh_token_reused",
        }
    }

    pub fn outcome(self, revoked: Vec<super::Revoked>) -> RotateOutcome {
        match self {
            Ending::Expired => RotateOutcome::Expired(revoked),
            Ending::Disabled => RotateOutcome::Disabled(revoked),
            Ending::Reused { foreign_client } => RotateOutcome::Reused { revoked, foreign_client },
        }
    }
}

/// The first decision of a rotation, from what was read (API.md §3.3), before any write.
pub(super) enum Decision {
    /// The session had already ended.
    Invalid,
    /// End the session (committed although the client gets an error).
    End(Ending),
    /// The presented token is the live one: rotate it.
    RotateLive,
    /// The presented token was rotated at this time: grace or reuse, depending on its successor.
    Rotated(crate::clock::Millis),
}

pub(super) fn decide(p: &Presented, r: &Rotation) -> Decision {
    if p.session.revoked_at.is_some() {
        return Decision::Invalid;
    }
    if p.session.expires_at() <= r.now {
        return Decision::End(Ending::Expired);
    }
    // A disabled account's sessions end with the flag (same transaction), so this finds only
    // one that is somehow still live (e.g. from before that was so): end it too (RT1).
    if p.disabled {
        return Decision::End(Ending::Disabled);
    }
    match p.token.rotated_at {
        None => Decision::RotateLive,
        Some(at) => Decision::Rotated(at),
    }
}

/// Grace or reuse for a rotated token whose successor is (not) still the live token.
///
/// Grace exists for the client that rotated (racing tabs of one browser, a retry after a lost
/// response), not for whoever else holds a copy of the token: a thief who replays the previous
/// token just after the victim's rotation is a reuse like any other (RT6). Only the immediately
/// previous token converges: its successor must still be live.
pub(super) fn grace_for<'a>(
    token: &'a TokenRow,
    rotated_at: crate::clock::Millis,
    successor_live: bool,
    r: &Rotation,
) -> Result<&'a [u8], Ending> {
    let within = r.now - rotated_at <= r.grace;
    let same_client = token.rotated_by.as_deref() == Some(&r.client[..]);
    match &token.sealed_successor {
        Some(sealed) if successor_live && within && same_client => Ok(sealed),
        sealed => Err(Ending::Reused { foreign_client: sealed.is_some() && successor_live && within }),
    }
}

/// A rotation's first write. The old token is marked first: the partial unique index allows one
/// live token per session. One statement marks it rotated (keeping its sealed successor and the
/// rotating client's binding) and forgets every older sealed successor: only the immediately
/// previous token may converge. `$1` now, `$2` the new token's id, `$3` its sealed copy, `$4`
/// the presented token's id, `$5` the session, `$6` the rotating client.
pub(super) const ROTATE_MARK: &str = "UPDATE refresh_tokens SET \
       rotated_at = CASE WHEN id = $4 THEN $1 ELSE rotated_at END, \
       successor_id = CASE WHEN id = $4 THEN $2 ELSE successor_id END, \
       sealed_successor = CASE WHEN id = $4 THEN $3 ELSE NULL END, \
       rotated_by = CASE WHEN id = $4 THEN $6 ELSE rotated_by END \
     WHERE session_id = $5 AND (id = $4 OR sealed_successor IS NOT NULL)";

/// A rotation's second write, the new live token: `$1` its id, `$2` the session, `$3` its
/// digest, `$4` the previous token's id, `$5` now.
pub(super) const ROTATE_INSERT: &str = "INSERT INTO refresh_tokens (id, session_id, token_hash, prev_id, created_at) \
     VALUES ($1, $2, $3, $4, $5)";

/// A session's use by a rotation or a grace use, returning the session: `$1` now, `$2` now minus
/// the grace, `$3` the new idle expiry (NULL: unchanged), `$4` the new access token's `exp`,
/// `$5` the session.
pub(super) static USE_SESSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE sessions SET last_used_at = $1, \
           settled_used_at = CASE WHEN last_used_at < $2 THEN last_used_at ELSE settled_used_at END, \
           idle_expires_at = COALESCE($3, idle_expires_at), \
           access_expires_at = CASE WHEN access_expires_at > $4 THEN access_expires_at ELSE $4 END \
         WHERE id = $5 RETURNING {SESSION_COLS}"
    )
});

/// `sql` with each placeholder `$k` renamed `$to[k - 1]`: to run statements written for their
/// own arguments in one batch over a shared argument list (SQLite binds `$N` across the
/// statements of one query).
pub(super) fn renumber(sql: &str, to: &[usize]) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut k = 0usize;
        while let Some(&(_, d)) = chars.peek() {
            let Some(v) = d.to_digit(10) else { break };
            k = k * 10 + v as usize;
            chars.next();
        }
        if k > 0 {
            out.push_str(&to[k - 1].to_string());
        }
    }
    out
}

/// The `UPDATE` that ends the sessions `sel` picks, `RETURNING id, user_id, access_expires_at`:
/// `$1` is now, `$2` the reason, then [`selector_args`]. Only live sessions, except when ending
/// expired ones.
pub(super) fn revoke_update(sel: &Selector, reason: &str) -> String {
    let live = if reason == "session_expired" { "" } else { " AND idle_expires_at > $1 AND absolute_expires_at > $1" };
    let filter = match sel {
        Selector::Session(_) => " AND id = $3",
        Selector::OwnSession { .. } => " AND id = $3 AND user_id = $4",
        Selector::User { .. } => " AND user_id = $3 AND ($4 IS NULL OR id <> $4)",
        Selector::Everyone => "",
        Selector::Expired => " AND (idle_expires_at <= $1 OR absolute_expires_at <= $1)",
    };
    format!(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE revoked_at IS NULL{live}{filter} \
         RETURNING id, user_id, access_expires_at"
    )
}

/// The values of [`revoke_update`]'s placeholders from `$3` on.
pub(super) fn selector_args(sel: &Selector) -> Vec<Option<&str>> {
    match sel {
        Selector::Session(id) => vec![Some(id)],
        Selector::OwnSession { user_id, session_id } => vec![Some(session_id), Some(user_id)],
        Selector::User { user_id, except } => vec![Some(user_id), except.as_deref()],
        Selector::Everyone | Selector::Expired => Vec::new(),
    }
}

/// A session [`revoke_update`] ended.
#[derive(sqlx::FromRow)]
pub(super) struct RevokedRow {
    pub id: String,
    pub user_id: String,
    #[sqlx(try_from = "super::Ts")]
    pub access_expires_at: crate::clock::Millis,
}

impl RevokedRow {
    pub fn revoked(self, reason: &str, at: crate::clock::Millis) -> super::Revoked {
        super::Revoked {
            session_id: self.id,
            user_id: self.user_id,
            access_expires_at: self.access_expires_at,
            reason: reason.to_string(),
            at,
        }
    }
}

/// The columns of [`LogRow`] in a `SELECT` from `revocations`.
pub(super) const LOG_COLS: &str = "id, session_id, user_id, reason, at, access_expires_at";

/// A row of the revocation log.
#[derive(sqlx::FromRow)]
pub(super) struct LogRow {
    pub id: i64,
    pub session_id: String,
    pub user_id: String,
    pub reason: String,
    #[sqlx(try_from = "super::Ts")]
    pub at: crate::clock::Millis,
    #[sqlx(try_from = "super::Ts")]
    pub access_expires_at: crate::clock::Millis,
}

impl LogRow {
    pub fn entry(self) -> super::LogEntry {
        super::LogEntry {
            cursor: self.id,
            session_id: self.session_id,
            user_id: self.user_id,
            reason: self.reason,
            at: self.at,
            until: super::revocation_until(self.access_expires_at),
        }
    }
}

/// Appends the sessions `ids` (just ended by [`revoke_update`], in the caller's transaction) to
/// the revocation log: `$1` the ids (bound per backend: a `text[]` on PostgreSQL, a JSON array
/// read with `json_each` on SQLite, as `ids_in` says), `$2` the reason, `$3` the time they ended.
/// The values come from the session rows just updated (the transaction holds them), so the log
/// says exactly what the sessions say.
pub(super) fn log_insert(ids_in: &str) -> String {
    format!(
        "INSERT INTO revocations (session_id, user_id, reason, at, access_expires_at) \
         SELECT id, user_id, $2, $3, access_expires_at FROM sessions WHERE id {ids_in} ORDER BY id"
    )
}

/// The Shared Signals outbox rows (docs/SSF.md §3.3) of the sessions `ids` just ended, in the
/// revoking transaction: one `session-revoked` signal each, `$1` the ids (bound as in
/// [`log_insert`]), `$2` the reason, `$3` the time, `$4` the cause's `txn`. Written only while
/// some stream exists (a deployment without receivers pays one empty-table probe).
pub(super) fn signal_sessions_insert(ids_in: &str) -> String {
    format!(
        "INSERT INTO ssf_signals (kind, user_id, session_id, reason, txn, occurred_at) \
         SELECT 'session-revoked', user_id, id, $2, $4, $3 FROM sessions \
         WHERE id {ids_in} AND EXISTS (SELECT 1 FROM ssf_streams) ORDER BY id"
    )
}

/// Whether a revocation for `reason` is announced to Shared Signals receivers: expiry is not a
/// revocation (docs/SSF.md §2, A8).
pub(super) fn signals_revocation(reason: &str) -> bool {
    reason != "session_expired"
}

/// A new `txn` (docs/SSF.md §2): shared by every SET of one cause, on every stream.
pub(super) fn new_txn() -> String {
    format!("tx_{}", uuid::Uuid::new_v4().simple())
}

/// Expands to the shared statements and transactions as methods of the backend store `$Store`
/// (over the database `$DB`, whose connection type is `$Conn`), in a module `shared` of the
/// backend that also holds the helpers its transactions use. `$Store` provides `reader()`,
/// `writer()` and the methods listed in the module doc, and with `test-util` a `failpoints`
/// field.
macro_rules! shared_store {
    ($Store:ident, $DB:ty, $Conn:ty) => {
        /// The statements both backends share (`store/shared.rs`), expanded for this backend.
        pub(super) mod shared {
            use sqlx::Row as _;

            use super::$Store as Backend;
            use $crate::clock::Millis;
            use $crate::store::shared::*;
            use $crate::store::{
                AuditOf, AuditRow, KeyRow, LogEntry, NewAuditEvent, NewSession, Revoked, RotateOutcome, Rotation, Selector,
                ServiceCredentialBinding, ServiceCredentialRow, SessionRow, StoreError, StoreResult, Ts, UserRow, UserSummary,
            };

            type Conn = $Conn;

            /// Appends one audit event on `c` (a transaction's connection, or the writer's).
            async fn append_audit_in(c: &mut Conn, e: &NewAuditEvent<'_>) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO audit_log \
                       (at, event, actor_user_id, target_user_id, target_session_id, ip, user_agent, detail) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(Ts(e.at))
                .bind(e.event)
                .bind(e.actor_user_id)
                .bind(e.target_user_id)
                .bind(e.target_session_id)
                .bind(e.ip)
                .bind(e.user_agent)
                .bind(e.detail.as_deref())
                .execute(&mut *c)
                .await?;
                Ok(())
            }

            impl Backend {
                // ---- users ----

                pub(crate) async fn create_user(
                    &self,
                    id: &str,
                    email: &str,
                    hash: &str,
                    admin: bool,
                    now: Millis,
                ) -> StoreResult<()> {
                    let res = sqlx::query(
                        "INSERT INTO users (id, email, password_hash, is_admin, created_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(id)
                    .bind(email)
                    .bind(hash)
                    .bind(admin)
                    .bind(Ts(now))
                    .execute(self.writer())
                    .await;
                    match res {
                        Ok(_) => Ok(()),
                        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::EmailTaken),
                        Err(e) => Err(e.into()),
                    }
                }

                pub(crate) async fn count_users(&self) -> StoreResult<i64> {
                    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(self.reader()).await?)
                }

                pub(crate) async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRow>> {
                    Ok(sqlx::query_as("SELECT * FROM users WHERE email = $1")
                        .bind(email)
                        .fetch_optional(self.reader())
                        .await?)
                }

                pub(crate) async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRow>> {
                    Ok(sqlx::query_as("SELECT * FROM users WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?)
                }

                pub(crate) async fn email_of(&self, id: &str) -> StoreResult<Option<String>> {
                    Ok(sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?)
                }

                pub(crate) async fn rehash_password(
                    &self,
                    id: &str,
                    verified: &str,
                    rehashed: &str,
                ) -> StoreResult<bool> {
                    let r = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2 AND password_hash = $3")
                        .bind(rehashed)
                        .bind(id)
                        .bind(verified)
                        .execute(self.writer())
                        .await?;
                    Ok(r.rows_affected() == 1)
                }

                pub(crate) async fn set_user_disabled(
                    &self,
                    id: &str,
                    disabled: bool,
                    now: Millis,
                ) -> StoreResult<Option<Vec<Revoked>>> {
                    let mut tx = self.begin().await?;
                    let Some(was) = self.disabled_flag_for_update(&mut tx, id).await? else { return Ok(None) };
                    sqlx::query("UPDATE users SET disabled_at = $1 WHERE id = $2")
                        .bind(disabled.then_some(Ts(now)))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    let txn = new_txn();
                    let revoked = if disabled {
                        if !was {
                            self.signal_user(&mut tx, "account-disabled", id, "account_disabled", &txn, now).await?;
                        }
                        let sel = Selector::User { user_id: id.to_string(), except: None };
                        self.revoke_in(&mut tx, &sel, "account_disabled", now, None, &txn).await?
                    } else {
                        if was {
                            self.signal_user(&mut tx, "account-enabled", id, "account_enabled", &txn, now).await?;
                        }
                        Vec::new()
                    };
                    tx.commit().await?;
                    Ok(Some(revoked))
                }

                /// A Shared Signals outbox row about a user (credential-change, account-disabled,
                /// account-enabled), in the caller's transaction; only while some stream exists.
                async fn signal_user(
                    &self,
                    tx: &mut Conn,
                    kind: &str,
                    user_id: &str,
                    reason: &str,
                    txn: &str,
                    now: Millis,
                ) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO ssf_signals (kind, user_id, reason, txn, occurred_at) \
                         SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM ssf_streams)",
                    )
                    .bind(kind)
                    .bind(user_id)
                    .bind(reason)
                    .bind(txn)
                    .bind(Ts(now))
                    .execute(&mut *tx)
                    .await?;
                    Ok(())
                }

                pub(crate) async fn change_password(
                    &self,
                    user_id: &str,
                    verified_version: i64,
                    hash: &str,
                    keep: &str,
                    now: Millis,
                ) -> StoreResult<Option<Vec<Revoked>>> {
                    let mut tx = self.begin().await?;
                    let r = sqlx::query(
                        "UPDATE users SET password_hash = $1, credential_version = credential_version + 1 \
                         WHERE id = $2 AND credential_version = $3 AND disabled_at IS NULL",
                    )
                    .bind(hash)
                    .bind(user_id)
                    .bind(verified_version)
                    .execute(&mut *tx)
                    .await?;
                    if r.rows_affected() != 1 {
                        return Ok(None);
                    }
                    let sel = Selector::User { user_id: user_id.to_string(), except: Some(keep.to_string()) };
                    let txn = new_txn();
                    self.signal_user(&mut tx, "credential-change", user_id, "password_changed", &txn, now).await?;
                    let revoked = self.revoke_in(&mut tx, &sel, "password_changed", now, None, &txn).await?;
                    tx.commit().await?;
                    Ok(Some(revoked))
                }

                pub(crate) async fn set_user_admin(
                    &self,
                    id: &str,
                    admin: bool,
                    now: Millis,
                ) -> StoreResult<Option<Vec<Revoked>>> {
                    let mut tx = self.begin().await?;
                    let Some(was) = self.admin_flag_for_update(&mut tx, id).await? else { return Ok(None) };
                    sqlx::query("UPDATE users SET is_admin = $1 WHERE id = $2")
                        .bind(admin)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    let revoked = if was && !admin {
                        let sel = Selector::User { user_id: id.to_string(), except: None };
                        self.revoke_in(&mut tx, &sel, "admin_revoked", now, None, &new_txn()).await?
                    } else {
                        Vec::new()
                    };
                    tx.commit().await?;
                    Ok(Some(revoked))
                }

                pub(crate) async fn list_users(
                    &self,
                    limit: i64,
                    after: Option<&str>,
                    q: Option<&str>,
                    now: Millis,
                ) -> StoreResult<Vec<UserSummary>> {
                    let q = q.unwrap_or("").to_lowercase();
                    let pattern = format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
                    Ok(sqlx::query_as(
                        "SELECT u.id, u.email, u.is_admin, u.created_at, \
                           (SELECT COUNT(*) FROM sessions s WHERE s.user_id = u.id AND s.revoked_at IS NULL \
                              AND s.idle_expires_at > $3 AND s.absolute_expires_at > $3) AS active_sessions \
                         FROM users u WHERE u.id > $1 AND u.email LIKE $4 ESCAPE '\\' ORDER BY u.id LIMIT $2",
                    )
                    .bind(after.unwrap_or(""))
                    .bind(limit)
                    .bind(Ts(now))
                    .bind(pattern)
                    .fetch_all(self.reader())
                    .await?)
                }

                // ---- audit log ----

                pub(crate) async fn append_audit(&self, e: &NewAuditEvent<'_>) -> StoreResult<()> {
                    append_audit_in(&mut *self.writer().acquire().await?, e).await
                }

                pub(crate) async fn audit_events(
                    &self,
                    user_id: Option<&str>,
                    after: i64,
                    limit: i64,
                ) -> StoreResult<Vec<AuditRow>> {
                    Ok(sqlx::query_as(
                        "SELECT id, at, event, actor_user_id, target_user_id, target_session_id, ip, user_agent, \
                           detail FROM audit_log \
                         WHERE id > $1 AND ($2 IS NULL OR target_user_id = $2 OR actor_user_id = $2) \
                         ORDER BY id LIMIT $3",
                    )
                    .bind(after)
                    .bind(user_id)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?)
                }

                // ---- sessions ----

                pub(crate) async fn create_session(
                    &self,
                    s: NewSession,
                ) -> StoreResult<Option<(UserRow, SessionRow)>> {
                    let idle = s.now + s.idle_ttl;
                    let absolute = s.now + s.max_age;
                    let access_exp = (s.now + s.access_ttl).min(idle).min(absolute);
                    let mut tx = self.begin().await?;
                    let Some(user) = self.user_for_session(&mut tx, &s.user_id, s.credential_version).await? else {
                        return Ok(None);
                    };
                    let row: SessionRow = sqlx::query_as(&format!(
                        "INSERT INTO sessions (id, user_id, device_name, user_agent, ip, created_at, last_used_at, \
                           settled_used_at, idle_expires_at, absolute_expires_at, access_expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $6, $6, $7, $8, $9) RETURNING {SESSION_COLS}"
                    ))
                    .bind(&s.id)
                    .bind(&s.user_id)
                    .bind(&s.device_name)
                    .bind(&s.user_agent)
                    .bind(&s.ip)
                    .bind(Ts(s.now))
                    .bind(Ts(idle))
                    .bind(Ts(absolute))
                    .bind(Ts(access_exp))
                    .fetch_one(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&s.refresh.id)
                    .bind(&s.id)
                    .bind(&s.refresh.hash[..])
                    .bind(Ts(s.now))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(Some((user, row)))
                }

                pub(crate) async fn live_sessions(&self, user_id: &str, now: Millis) -> StoreResult<Vec<SessionRow>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {SESSION_COLS} FROM sessions WHERE user_id = $1 AND revoked_at IS NULL \
                           AND idle_expires_at > $2 AND absolute_expires_at > $2 ORDER BY created_at DESC, id DESC"
                    ))
                    .bind(user_id)
                    .bind(Ts(now))
                    .fetch_all(self.reader())
                    .await?)
                }

                pub(crate) async fn session(&self, id: &str) -> StoreResult<Option<SessionRow>> {
                    Ok(sqlx::query_as(&format!("SELECT {SESSION_COLS} FROM sessions WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?)
                }

                pub(crate) async fn count_live_sessions(&self, now: Millis) -> StoreResult<i64> {
                    Ok(sqlx::query_scalar(
                        "SELECT COUNT(*) FROM sessions \
                         WHERE revoked_at IS NULL AND idle_expires_at > $1 AND absolute_expires_at > $1",
                    )
                    .bind(Ts(now))
                    .fetch_one(self.reader())
                    .await?)
                }

                pub(crate) async fn revoke(
                    &self,
                    sel: &Selector,
                    reason: &str,
                    now: Millis,
                    request: Option<&str>,
                    audit: Option<AuditOf<'_>>,
                ) -> StoreResult<Vec<Revoked>> {
                    let mut tx = self.begin().await?;
                    let revoked = self.revoke_in(&mut tx, sel, reason, now, request, &new_txn()).await?;
                    // The audit row commits with the revocation or not at all (docs/API.md §14).
                    if let Some(row) = audit.and_then(|a| a(&revoked)) {
                        append_audit_in(&mut tx, &row.as_new()).await?;
                    }
                    tx.commit().await?;
                    Ok(revoked)
                }

                pub(crate) async fn sweep_expired(&self, now: Millis, grace: Millis) -> StoreResult<Vec<Revoked>> {
                    let revoked = self.revoke(&Selector::Expired, "session_expired", now, None, None).await?;
                    sqlx::query(
                        "UPDATE refresh_tokens SET sealed_successor = NULL \
                         WHERE sealed_successor IS NOT NULL AND (rotated_at < $1 OR EXISTS (SELECT 1 FROM sessions s \
                           WHERE s.id = refresh_tokens.session_id AND s.revoked_at IS NOT NULL))",
                    )
                    .bind(Ts(now - grace))
                    .execute(self.writer())
                    .await?;
                    // Log entries past their `until` are useless to every reader: a follower
                    // drops them (docs/API.md §9), and the PostgreSQL backplane reads only the
                    // ranges just notified, whose sessions have no socket left once their
                    // tokens are dead (a socket closes at its token's `exp`, within the leeway).
                    // The newest entry stays whatever its age, so the head (the cursor a
                    // follower may hold) never moves back.
                    sqlx::query(
                        "DELETE FROM revocations WHERE access_expires_at <= $1 \
                           AND id < (SELECT MAX(id) FROM revocations)",
                    )
                    .bind(Ts($crate::store::revocation_exp_floor(now)))
                    .execute(self.writer())
                    .await?;
                    Ok(revoked)
                }

                pub(crate) async fn revoked_since(&self, min_exp: Millis) -> StoreResult<Vec<Revoked>> {
                    let rows: Vec<(String, String, Ts, String, Ts)> = sqlx::query_as(
                        "SELECT id, user_id, access_expires_at, COALESCE(revoked_reason, ''), revoked_at FROM sessions \
                         WHERE revoked_at IS NOT NULL AND access_expires_at >= $1",
                    )
                    .bind(Ts(min_exp))
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(session_id, user_id, exp, reason, at)| Revoked {
                            session_id,
                            user_id,
                            access_expires_at: exp.0,
                            reason,
                            at: at.0,
                        })
                        .collect())
                }

                // ---- the revocation log (docs/API.md §9) ----

                pub(crate) async fn feed_epoch(&self) -> StoreResult<String> {
                    Ok(sqlx::query_scalar("SELECT value FROM sessiond_meta WHERE key = 'feed_epoch'")
                        .fetch_one(self.reader())
                        .await?)
                }

                pub(crate) async fn set_feed_epoch(&self, epoch: &str) -> StoreResult<()> {
                    sqlx::query("UPDATE sessiond_meta SET value = $1 WHERE key = 'feed_epoch'")
                        .bind(epoch)
                        .execute(self.writer())
                        .await?;
                    Ok(())
                }

                pub(crate) async fn revocation_head(&self) -> StoreResult<i64> {
                    Ok(sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM revocations")
                        .fetch_one(self.reader())
                        .await?)
                }

                pub(crate) async fn revocations_after(&self, cursor: i64, limit: i64) -> StoreResult<Vec<LogEntry>> {
                    // Counted, so a test can see how many reads the feed's followers make.
                    $crate::store::fail_at!(self.failpoints, $crate::store::failpoint::FEED_READ);
                    let rows: Vec<LogRow> =
                        sqlx::query_as(&format!("SELECT {LOG_COLS} FROM revocations WHERE id > $1 ORDER BY id LIMIT $2"))
                            .bind(cursor)
                            .bind(limit)
                            .fetch_all(self.reader())
                            .await?;
                    Ok(rows.into_iter().map(LogRow::entry).collect())
                }

                pub(crate) async fn revocations_in_force(
                    &self,
                    after: i64,
                    head: i64,
                    now: Millis,
                    limit: i64,
                ) -> StoreResult<Vec<LogEntry>> {
                    let rows: Vec<LogRow> = sqlx::query_as(&format!(
                        "SELECT {LOG_COLS} FROM revocations WHERE id > $1 AND id <= $2 AND access_expires_at > $3 \
                         ORDER BY id LIMIT $4"
                    ))
                    .bind(after)
                    .bind(head)
                    .bind(Ts($crate::store::revocation_exp_floor(now)))
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows.into_iter().map(LogRow::entry).collect())
                }

                // ---- service credentials (docs/API.md §8) ----

                pub(crate) async fn create_service_credential(
                    &self,
                    name: &str,
                    digest: &[u8; 32],
                    scopes: &str,
                    ssf_aud: Option<&str>,
                    now: Millis,
                ) -> StoreResult<bool> {
                    let res = sqlx::query(
                        "INSERT INTO service_credentials (id, name, secret_digest, scopes, created_at, ssf_aud) \
                         VALUES ($6, $1, $2, $3, $4, $5)",
                    )
                    .bind(name)
                    .bind(&digest[..])
                    .bind(scopes)
                    .bind(Ts(now))
                    .bind(ssf_aud)
                    .bind(format!("svc_{}", uuid::Uuid::new_v4().simple()))
                    .execute(self.writer())
                    .await;
                    match res {
                        Ok(_) => Ok(true),
                        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
                        Err(e) => Err(e.into()),
                    }
                }

                pub(crate) async fn service_credentials(&self) -> StoreResult<Vec<ServiceCredentialRow>> {
                    Ok(sqlx::query_as(
                        "SELECT id, name, scopes, created_at, last_used_at, ssf_aud FROM service_credentials ORDER BY name",
                    )
                    .fetch_all(self.reader())
                    .await?)
                }

                /// Deletes a credential and, in the same transaction, the Shared Signals streams it
                /// owns with every SET, head and subject rule of theirs (SECURITY.md G-1). `None`
                /// when there is no credential of that name; else the ids of the streams deleted.
                pub(crate) async fn remove_service_credential(&self, name: &str) -> StoreResult<Option<Vec<String>>> {
                    let mut tx = self.begin().await?;
                    let id: Option<String> = sqlx::query_scalar("SELECT id FROM service_credentials WHERE name = $1")
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(id) = id else { return Ok(None) };
                    let streams: Vec<String> =
                        sqlx::query_scalar("SELECT id FROM ssf_streams WHERE owner_id = $1 ORDER BY id")
                            .bind(&id)
                            .fetch_all(&mut *tx)
                            .await?;
                    for stream in &streams {
                        super::ssf_shared::delete_stream_rows(&mut tx, stream).await?;
                    }
                    sqlx::query("DELETE FROM service_credentials WHERE id = $1").bind(&id).execute(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(Some(streams))
                }

                pub(crate) async fn service_credential_by_digest(
                    &self,
                    digest: &[u8; 32],
                ) -> StoreResult<Option<ServiceCredentialRow>> {
                    Ok(sqlx::query_as(
                        "SELECT id, name, scopes, created_at, last_used_at, ssf_aud FROM service_credentials \
                         WHERE secret_digest = $1",
                    )
                    .bind(&digest[..])
                    .fetch_optional(self.reader())
                    .await?)
                }

                pub(crate) async fn service_credential_binding(
                    &self,
                    name: &str,
                ) -> StoreResult<Option<ServiceCredentialBinding>> {
                    Ok(sqlx::query_as(
                        "SELECT id, name, scopes, created_at, last_used_at, ssf_aud, secret_digest \
                         FROM service_credentials WHERE name = $1",
                    )
                    .bind(name)
                    .fetch_optional(self.reader())
                    .await?)
                }

                pub(crate) async fn touch_service_credential(
                    &self,
                    name: &str,
                    now: Millis,
                    unless_after: Millis,
                ) -> StoreResult<()> {
                    sqlx::query(
                        "UPDATE service_credentials SET last_used_at = $1 \
                         WHERE name = $2 AND (last_used_at IS NULL OR last_used_at <= $3)",
                    )
                    .bind(Ts(now))
                    .bind(name)
                    .bind(Ts(unless_after))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                // ---- refresh tokens ----

                pub(crate) async fn rotate_refresh(&self, r: Rotation) -> StoreResult<RotateOutcome> {
                    let mut tx = self.begin().await?;
                    let outcome = match self.read_presented(&mut tx, &r.presented_hash).await? {
                        None => RotateOutcome::Invalid,
                        Some(p) => match rotate_presented(&mut tx, p, &r, self).await? {
                            Ok(outcome) => outcome,
                            Err((session_id, ending)) => {
                                let sel = Selector::Session(session_id);
                                let revoked = self.revoke_in(&mut tx, &sel, ending.reason(), r.now, None, &new_txn()).await?;
                                ending.outcome(revoked)
                            }
                        },
                    };
                    // Commit on every path: a reuse or expiry revocation must stick although the
                    // client gets an error (RFC 9700 §4.14.2; Supabase's commit-with-error).
                    tx.commit().await?;
                    Ok(outcome)
                }

                pub(crate) async fn session_of_refresh(&self, hash: &[u8; 32]) -> StoreResult<Option<String>> {
                    Ok(sqlx::query_scalar("SELECT session_id FROM refresh_tokens WHERE token_hash = $1")
                        .bind(&hash[..])
                        .fetch_optional(self.reader())
                        .await?)
                }

                pub(crate) async fn live_session_user_of_refresh(
                    &self,
                    hash: &[u8; 32],
                    now: Millis,
                ) -> StoreResult<Option<String>> {
                    Ok(sqlx::query_scalar(
                        "SELECT s.user_id FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id \
                         WHERE t.token_hash = $1 AND t.rotated_at IS NULL AND s.revoked_at IS NULL \
                           AND s.idle_expires_at > $2 AND s.absolute_expires_at > $2",
                    )
                    .bind(&hash[..])
                    .bind(Ts(now))
                    .fetch_optional(self.reader())
                    .await?)
                }

                pub(crate) async fn live_refresh(
                    &self,
                    hash: &[u8; 32],
                    now: Millis,
                ) -> StoreResult<Option<crate::store::LiveRefresh>> {
                    let row: Option<(String, String, Ts, Ts)> = sqlx::query_as(
                        "SELECT s.id, s.user_id, s.idle_expires_at, s.absolute_expires_at \
                         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id \
                         WHERE t.token_hash = $1 AND t.rotated_at IS NULL AND s.revoked_at IS NULL \
                           AND s.idle_expires_at > $2 AND s.absolute_expires_at > $2",
                    )
                    .bind(&hash[..])
                    .bind(Ts(now))
                    .fetch_optional(self.reader())
                    .await?;
                    Ok(row.map(|(session_id, user_id, idle, absolute)| crate::store::LiveRefresh {
                        session_id,
                        user_id,
                        expires_at: idle.0.min(absolute.0),
                    }))
                }

                pub(crate) async fn session_ips_since(
                    &self,
                    user_id: &str,
                    since: Millis,
                    limit: i64,
                ) -> StoreResult<Vec<String>> {
                    Ok(sqlx::query_scalar(
                        "SELECT ip FROM sessions WHERE user_id = $1 AND created_at > $2 AND ip IS NOT NULL \
                         ORDER BY created_at DESC LIMIT $3",
                    )
                    .bind(user_id)
                    .bind(Ts(since))
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?)
                }

                pub(crate) async fn refresh_token_counts(&self, session_id: &str) -> StoreResult<(i64, i64)> {
                    let row = sqlx::query(
                        "SELECT COALESCE(SUM(CASE WHEN rotated_at IS NULL THEN 1 ELSE 0 END), 0), \
                                COALESCE(SUM(CASE WHEN rotated_at IS NULL THEN 0 ELSE 1 END), 0) \
                         FROM refresh_tokens WHERE session_id = $1",
                    )
                    .bind(session_id)
                    .fetch_one(self.reader())
                    .await?;
                    Ok((row.try_get(0)?, row.try_get(1)?))
                }

                // ---- signing keys ----

                pub(crate) async fn signing_keys(&self) -> StoreResult<Vec<KeyRow>> {
                    Ok(sqlx::query_as("SELECT * FROM signing_keys ORDER BY activates_at, created_at, kid")
                        .fetch_all(self.reader())
                        .await?)
                }

                pub(crate) async fn insert_signing_key(&self, k: &KeyRow, only_if_empty: bool) -> StoreResult<bool> {
                    let mut tx = self.begin().await?;
                    self.lock_signing_keys(&mut tx).await?;
                    if only_if_empty {
                        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM signing_keys").fetch_one(&mut *tx).await?;
                        if n > 0 {
                            return Ok(false);
                        }
                    }
                    sqlx::query(
                        "INSERT INTO signing_keys (kid, private_der, public_x, created_at, activates_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(&k.kid)
                    .bind(&k.private_der)
                    .bind(&k.public_x)
                    .bind(Ts(k.created_at))
                    .bind(Ts(k.activates_at))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(true)
                }
            }

            /// [`revoke_update`] (or a statement around it) with its placeholders bound.
            pub(super) fn bind_selector<'q, O>(
                sql: &'q str,
                sel: &'q Selector,
                reason: &'q str,
                now: Millis,
            ) -> sqlx::query::QueryAs<'q, $DB, O, <$DB as sqlx::Database>::Arguments<'q>>
            where
                O: for<'r> sqlx::FromRow<'r, <$DB as sqlx::Database>::Row>,
            {
                let mut q = sqlx::query_as(sql).bind(Ts(now)).bind(reason);
                for arg in selector_args(sel) {
                    q = q.bind(arg);
                }
                q
            }

            /// The rest of a rotation once [`Presented`] is read: the writes of a rotation or a
            /// grace use, or the [`Ending`] for the caller to revoke with.
            async fn rotate_presented(
                tx: &mut Conn,
                p: Presented,
                r: &Rotation,
                #[allow(unused_variables)] backend: &Backend,
            ) -> StoreResult<Result<RotateOutcome, (String, Ending)>> {
                let idle = r.now + r.idle_ttl;
                let access_exp = (r.now + r.access_ttl).min(idle).min(p.session.absolute_expires_at);
                let rotated_at = match decide(&p, r) {
                    Decision::Invalid => return Ok(Ok(RotateOutcome::Invalid)),
                    Decision::End(ending) => return Ok(Err((p.session.id, ending))),
                    Decision::RotateLive => {
                        let session = backend.write_rotation(tx, &p, r, idle, access_exp).await?;
                        return Ok(Ok(RotateOutcome::Rotated { session, access_exp }));
                    }
                    Decision::Rotated(at) => at,
                };
                let successor_live = match &p.token.successor_id {
                    Some(id) => sqlx::query_scalar::<_, i64>(
                        "SELECT COUNT(*) FROM refresh_tokens WHERE id = $1 AND rotated_at IS NULL",
                    )
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?
                        == 1,
                    None => false,
                };
                match grace_for(&p.token, rotated_at, successor_live, r) {
                    Ok(sealed) => {
                        let sealed_successor = sealed.to_vec();
                        use_session(tx, &p.session.id, r, None, access_exp).await?;
                        Ok(Ok(RotateOutcome::Grace { session: p.session, sealed_successor, access_exp }))
                    }
                    Err(ending) => Ok(Err((p.session.id, ending))),
                }
            }

            /// Records a use of the session at `r.now`: `last_used_at`, the settled use (the
            /// previous use becomes it once older than the grace window; in an UPDATE every
            /// column reads its old value), the access-token high-water mark, and with `idle`
            /// the new idle expiry (a rotation; a grace use does not extend it).
            pub(in super::super) async fn use_session(
                tx: &mut Conn,
                id: &str,
                r: &Rotation,
                idle: Option<Millis>,
                access_exp: Millis,
            ) -> StoreResult<SessionRow> {
                Ok(sqlx::query_as(&USE_SESSION)
                .bind(Ts(r.now))
                .bind(Ts(r.now - r.grace))
                .bind(idle.map(Ts))
                .bind(Ts(access_exp))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?)
            }
        }
    };
}
pub(super) use shared_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumber_maps_every_placeholder_and_leaves_the_rest() {
        assert_eq!(
            renumber("VALUES ($1, $2, $10) -- $", &[7, 3, 0, 0, 0, 0, 0, 0, 0, 12]),
            "VALUES ($7, $3, $12) -- $"
        );
        // The SQLite rotation batch binds ten arguments across three statements.
        let insert = renumber(ROTATE_INSERT, &[2, 5, 7, 4, 1]);
        assert!(insert.ends_with("VALUES ($2, $5, $7, $4, $1)"), "{insert}");
        let used = renumber(&USE_SESSION, &[1, 8, 9, 10, 5]);
        assert!(used.contains("COALESCE($9, idle_expires_at)") && used.contains("WHERE id = $5 RETURNING"), "{used}");
    }
}

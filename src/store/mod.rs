//! Storage: one API over the database, so handlers never see SQL or the backend.
//!
//! `Store` is a cheap handle (pools are shared on clone) over SQLite (embedded, one instance)
//! or PostgreSQL (shared by many instances), chosen by the URL. The SQL is written once for both
//! through sqlx's `Any` driver ([`sql`] holds the transactions); the few dialect differences are
//! explicit in [`Kind`]. Times are milliseconds since the epoch from the application's
//! [`Clock`](crate::clock::Clock), passed in explicitly.

pub mod sql;

use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Transaction};

use crate::clock::Millis;

/// A user row. `Debug` omits the password hash.
#[derive(Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    /// 0 or 1 (one integer type on both backends).
    pub is_admin: i64,
    pub created_at: Millis,
    pub disabled_at: Option<Millis>,
    /// Bumped by every password change. A session is only ever created against the version
    /// the login verified (see [`Store::create_session`]); rehashing does not change it.
    pub credential_version: i64,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow").field("id", &self.id).field("is_admin", &(self.is_admin != 0)).finish_non_exhaustive()
    }
}

impl UserRow {
    pub fn roles(&self) -> Vec<String> {
        if self.is_admin != 0 {
            vec!["admin".to_string()]
        } else {
            Vec::new()
        }
    }
}

/// A user with the number of live sessions, for the admin listing.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserSummary {
    pub id: String,
    pub email: String,
    pub is_admin: i64,
    pub created_at: Millis,
    pub active_sessions: i64,
}

/// A session row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub device_name: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub created_at: Millis,
    pub last_used_at: Millis,
    /// The latest use that was already older than the refresh grace window when the session
    /// was last used (0 before migration 0003): what listings show while `last_used_at` is
    /// still inside the window (see `http::listed_times`).
    pub settled_used_at: Millis,
    pub idle_expires_at: Millis,
    pub absolute_expires_at: Millis,
    pub access_expires_at: Millis,
    pub revoked_at: Option<Millis>,
    pub revoked_reason: Option<String>,
}

impl SessionRow {
    /// The earlier of the idle and the absolute expiry.
    pub fn expires_at(&self) -> Millis {
        self.idle_expires_at.min(self.absolute_expires_at)
    }
}

/// A refresh token about to be stored: only its id and SHA-256 digest.
#[derive(Clone)]
pub struct NewRefresh {
    pub id: String,
    pub hash: [u8; 32],
}

/// Everything needed to start a session with its first refresh token.
pub struct NewSession {
    pub id: String,
    pub user_id: String,
    pub device_name: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub now: Millis,
    pub idle_ttl: Millis,
    pub max_age: Millis,
    pub access_ttl: Millis,
    pub refresh: NewRefresh,
    /// The user's `credential_version` read with the password hash that was verified.
    pub credential_version: i64,
}

/// Which sessions a revocation ends. Only live sessions are ever affected.
#[derive(Debug, Clone)]
pub enum Selector {
    /// One session by id (admin).
    Session(String),
    /// One session, only if it belongs to this user.
    OwnSession { user_id: String, session_id: String },
    /// Every live session of a user, optionally sparing one.
    User { user_id: String, except: Option<String> },
    /// Every live session of every user.
    Everyone,
    /// Every session past its idle or absolute expiry (ended as `session_expired`).
    Expired,
}

/// A session that a committed transaction has just ended.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub session_id: String,
    pub user_id: String,
    /// The latest `exp` (ms) of any access token of the session: the denylist keeps the
    /// session at least until then (plus leeway).
    pub access_expires_at: Millis,
    pub reason: String,
    pub at: Millis,
}

/// Inputs of one refresh rotation.
pub struct Rotation {
    pub now: Millis,
    pub presented_hash: [u8; 32],
    /// The successor to store if the presented token is live.
    pub candidate: NewRefresh,
    /// The candidate sealed under a key derived from the presented token.
    pub sealed_candidate: Vec<u8>,
    pub grace: Millis,
    pub idle_ttl: Millis,
    pub access_ttl: Millis,
    /// The presenting client's binding (`sessions::client_binding`): stored with the token it
    /// rotates out, and compared with that when a rotated token is presented inside grace.
    pub client: [u8; 32],
}

/// What a refresh did. Revocations in `Reused`/`Expired`/`Disabled` are committed.
pub enum RotateOutcome {
    /// The presented token was live; the candidate is now the live token.
    Rotated { session: SessionRow, access_exp: Millis },
    /// The presented token is the immediately previous one, inside grace: the client gets the
    /// same successor, unsealed from this blob with the presented token.
    Grace { session: SessionRow, sealed_successor: Vec<u8>, access_exp: Millis },
    /// Reuse outside the policy: the session was revoked (`refresh_token_reused`).
    /// `foreign_client`: the token was the immediately previous one, inside grace, but
    /// presented by another client than the one that rotated it (a thief's replay).
    Reused { revoked: Vec<Revoked>, foreign_client: bool },
    /// The session had expired; it was ended (`session_expired`).
    Expired(Vec<Revoked>),
    /// The user is disabled; the session, if still live, was ended (`account_disabled`).
    Disabled(Vec<Revoked>),
    /// Unknown token, or its session had already ended.
    Invalid,
}

/// An audit event to append.
pub struct NewAuditEvent<'a> {
    pub at: Millis,
    pub event: &'a str,
    pub actor_user_id: Option<&'a str>,
    pub target_user_id: Option<&'a str>,
    pub target_session_id: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// JSON text.
    pub detail: Option<String>,
}

/// An audit event as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: Millis,
    pub event: String,
    pub actor_user_id: Option<String>,
    pub target_user_id: Option<String>,
    pub target_session_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub detail: Option<String>,
}

/// A signing key as stored.
#[derive(Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub kid: String,
    pub private_der: Vec<u8>,
    pub public_x: String,
    pub created_at: Millis,
    pub activates_at: Millis,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("email taken")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported DATABASE_URL scheme (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    /// A fault injected by an armed [failpoint](Store::arm_failpoint) (tests only): reported
    /// like a lost database connection, so the request answers 503 `unavailable`.
    #[error("injected fault at failpoint {0}")]
    Injected(&'static str),
}

impl From<StoreError> for crate::error::AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => crate::error::AppError::EmailTaken,
            StoreError::Db(e) => e.into(),
            e @ StoreError::Injected(_) => crate::error::AppError::Unavailable(e.into()),
            other => crate::error::AppError::Internal(other.into()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which database a [`Store`] talks to, and its dialect differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    pub fn of_url(url: &str) -> Option<Kind> {
        if url.starts_with("sqlite:") {
            Some(Kind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Kind::Postgres)
        } else {
            None
        }
    }

    /// The two-argument maximum.
    pub fn greatest(self) -> &'static str {
        match self {
            Kind::Sqlite => "MAX",
            Kind::Postgres => "GREATEST",
        }
    }

    /// Row lock suffix for a SELECT inside a write transaction.
    pub fn for_update(self) -> &'static str {
        match self {
            Kind::Sqlite => "",
            Kind::Postgres => " FOR UPDATE",
        }
    }

    /// Shared row lock suffix for a SELECT inside a write transaction: the row may not change
    /// until the transaction ends (SQLite: `BEGIN IMMEDIATE` already excludes every writer).
    pub fn for_share(self) -> &'static str {
        match self {
            Kind::Sqlite => "",
            Kind::Postgres => " FOR SHARE",
        }
    }
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static DRIVERS: Once = Once::new();

/// SQLite: copies the WAL back into the database every 250 ms with a passive checkpoint on a
/// reader connection, so that writers never pay for the checkpoint's page writes and fsync (in
/// WAL mode with `synchronous = NORMAL`, commits do not sync; checkpoints do). Passive
/// checkpoints never wait for or block writers. Stops when the pool is closed.
fn spawn_checkpointer(reader: AnyPool) {
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

/// Names of the [failpoints](Store::arm_failpoint) in the store.
#[doc(hidden)]
pub mod failpoint {
    /// In a refresh rotation, after the presented token is marked rotated and before its
    /// successor is inserted.
    pub const ROTATE_AFTER_MARK: &str = "rotate_after_mark";
    /// [`Store::revocations_between`](super::Store::revocations_between): the backplane's read of
    /// a notified range of the revocation log (a pool timeout or a refused `SELECT` in production).
    pub const REVOCATIONS_READ: &str = "revocations_read";
}

/// Test-only fault injection: the armed failpoint names, shared by a store's clones, each armed
/// until disarmed or for a number of hits. While nothing is armed (always, outside tests) a
/// check costs one relaxed atomic load.
#[derive(Clone, Default)]
pub(crate) struct Failpoints(std::sync::Arc<FailpointsInner>);

#[derive(Default)]
struct FailpointsInner {
    any_armed: std::sync::atomic::AtomicBool,
    /// name → hits left (`None`: until disarmed).
    armed: std::sync::Mutex<Vec<(&'static str, Option<u32>)>>,
}

enum Arm {
    Off,
    UntilDisarmed,
    Times(u32),
}

impl Failpoints {
    /// Whether `name` is armed (and, if armed for a number of hits, uses one): the code at that
    /// point then fails with [`StoreError::Injected`].
    pub(crate) fn hit(&self, name: &'static str) -> bool {
        use std::sync::atomic::Ordering;
        if !self.0.any_armed.load(Ordering::Relaxed) {
            return false;
        }
        let mut armed = self.0.armed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = armed.iter().position(|(n, _)| *n == name) else { return false };
        if let Some(left) = &mut armed[i].1 {
            *left -= 1;
            if *left == 0 {
                armed.swap_remove(i);
                self.0.any_armed.store(!armed.is_empty(), Ordering::Relaxed);
            }
        }
        true
    }

    fn set(&self, name: &'static str, arm: Arm) {
        use std::sync::atomic::Ordering;
        let mut armed = self.0.armed.lock().unwrap_or_else(|p| p.into_inner());
        armed.retain(|(n, _)| *n != name);
        match arm {
            Arm::Off | Arm::Times(0) => {}
            Arm::UntilDisarmed => armed.push((name, None)),
            Arm::Times(n) => armed.push((name, Some(n))),
        }
        self.0.any_armed.store(!armed.is_empty(), Ordering::Relaxed);
    }

    fn is_armed(&self, name: &'static str) -> bool {
        self.0.armed.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|(n, _)| *n == name)
    }
}

/// The storage handle. Clones share the connection pools.
///
/// SQLite allows one writer at a time: every write transaction goes through a pool of exactly
/// one connection (our own writers queue fairly in the pool instead of spinning in SQLite's
/// busy handler) and starts with `BEGIN IMMEDIATE`, which takes the write lock up front (a
/// deferred transaction that reads then writes fails with SQLITE_BUSY_SNAPSHOT when another
/// process, e.g. `sessiond user add`, wrote in between). WAL lets readers run beside it.
/// PostgreSQL uses one pool and row locks.
#[derive(Clone)]
pub struct Store {
    kind: Kind,
    writer: AnyPool,
    reader: AnyPool,
    url: std::sync::Arc<str>,
    /// This process's id among instances: notifications carry it so an instance can skip its
    /// own (already published) revocations.
    instance_id: std::sync::Arc<str>,
    /// user id → email. Emails never change, so entries never go stale; bounded, emptied when
    /// full. Saves `/v1/me` a database read per request.
    emails: std::sync::Arc<dashmap::DashMap<String, std::sync::Arc<str>>>,
    /// Armed failpoints (tests only; see [`Store::arm_failpoint`]).
    failpoints: Failpoints,
}

/// Most emails remembered by [`Store::user_email`].
const EMAIL_CACHE_MAX: usize = 65_536;

impl Store {
    /// Opens (creating an SQLite file if needed) the database named by `url`. Does not migrate.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let kind = Kind::of_url(url).ok_or(StoreError::UnsupportedUrl)?;
        let (writer, reader) = match kind {
            Kind::Sqlite => {
                let url = if url.contains("mode=") {
                    url.to_string()
                } else if url.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                };
                let opts: AnyConnectOptions = url.parse()?;
                let pool = |n| {
                    AnyPoolOptions::new()
                        .max_connections(n)
                        .acquire_timeout(Duration::from_secs(10))
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                // One statement per call: through the `Any` driver only the
                                // first statement of a multi-statement string takes effect.
                                for pragma in [
                                    "PRAGMA journal_mode = WAL",
                                    "PRAGMA synchronous = NORMAL",
                                    "PRAGMA busy_timeout = 5000",
                                    "PRAGMA foreign_keys = ON",
                                    // Checkpoints (and their fsyncs) run in the background
                                    // task below, off the write path; this is the backstop.
                                    "PRAGMA wal_autocheckpoint = 10000",
                                ] {
                                    conn.execute(pragma).await?;
                                }
                                Ok(())
                            })
                        })
                        .connect_with(opts.clone())
                };
                let writer = pool(1).await?;
                let reader = pool(4).await?;
                spawn_checkpointer(reader.clone());
                (writer, reader)
            }
            Kind::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await?;
                (pool.clone(), pool)
            }
        };
        let instance_id = uuid::Uuid::new_v4().simple().to_string().into();
        Ok(Store {
            kind,
            writer,
            reader,
            url: url.into(),
            instance_id,
            emails: Default::default(),
            failpoints: Failpoints::default(),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// This process's instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The URL this store was opened with (the backplane opens its own listener connection).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// **Test-only.** Arms the failpoint `name` (one of [`failpoint`]) for this store and its
    /// clones: until [disarmed](Store::disarm_failpoint), every transaction that reaches it fails
    /// there with [`StoreError::Injected`] (answered as 503 `unavailable`) and rolls back.
    /// Lets integration tests inject a database fault at an exact point (SECURITY.md R6).
    #[doc(hidden)]
    pub fn arm_failpoint(&self, name: &'static str) {
        self.failpoints.set(name, Arm::UntilDisarmed);
    }

    /// **Test-only.** Arms the failpoint `name` for its next `hits` hits only (see
    /// [`Store::arm_failpoint`]); then it disarms itself.
    #[doc(hidden)]
    pub fn arm_failpoint_times(&self, name: &'static str, hits: u32) {
        self.failpoints.set(name, Arm::Times(hits));
    }

    /// **Test-only.** Disarms the failpoint `name` (see [`Store::arm_failpoint`]).
    #[doc(hidden)]
    pub fn disarm_failpoint(&self, name: &'static str) {
        self.failpoints.set(name, Arm::Off);
    }

    /// **Test-only.** Whether `name` is still armed (a failpoint armed for a number of hits is
    /// not once they are used up).
    #[doc(hidden)]
    pub fn failpoint_armed(&self, name: &'static str) -> bool {
        self.failpoints.is_armed(name)
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> StoreResult<()> {
        match self.kind {
            Kind::Sqlite => SQLITE_MIGRATOR.run(&self.writer).await?,
            Kind::Postgres => POSTGRES_MIGRATOR.run(&self.writer).await?,
        }
        Ok(())
    }

    /// Cheap liveness probe of the database.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    fn tag<'a>(&'a self, request: Option<&'a str>) -> sql::NoteTag<'a> {
        sql::NoteTag { origin: &self.instance_id, request }
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Any>> {
        Ok(match self.kind {
            Kind::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Kind::Postgres => self.writer.begin().await?,
        })
    }

    // ---- users ----

    pub async fn create_user(&self, id: &str, email: &str, hash: &str, admin: bool, now: Millis) -> StoreResult<()> {
        let res = sqlx::query(
            "INSERT INTO users (id, email, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(email)
        .bind(hash)
        .bind(i64::from(admin))
        .bind(now)
        .execute(&self.writer)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn count_users(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.reader).await?)
    }

    pub async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE email = $1").bind(email).fetch_optional(&self.reader).await?)
    }

    pub async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE id = $1").bind(id).fetch_optional(&self.reader).await?)
    }

    /// A user's email, from memory after the first read (emails are immutable).
    pub async fn user_email(&self, id: &str) -> StoreResult<Option<std::sync::Arc<str>>> {
        if let Some(e) = self.emails.get(id) {
            return Ok(Some(e.clone()));
        }
        let email: Option<String> =
            sqlx::query_scalar("SELECT email FROM users WHERE id = $1").bind(id).fetch_optional(&self.reader).await?;
        let Some(email) = email else { return Ok(None) };
        let email: std::sync::Arc<str> = email.into();
        if self.emails.len() >= EMAIL_CACHE_MAX {
            self.emails.clear();
        }
        self.emails.insert(id.to_string(), email.clone());
        Ok(Some(email))
    }

    /// Disables (`Some(at)`) or re-enables (`None`) a user; disabling ends every live session
    /// of the user (`account_disabled`) in the same transaction, so the flag is never committed
    /// with sessions alive. `None` when there is no such user; else what it ended (committed).
    pub async fn set_user_disabled(&self, id: &str, at: Option<Millis>) -> StoreResult<Option<Vec<Revoked>>> {
        let mut tx = self.begin().await?;
        let r =
            sqlx::query("UPDATE users SET disabled_at = $1 WHERE id = $2").bind(at).bind(id).execute(&mut *tx).await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        let revoked = match at {
            Some(now) => {
                let sel = Selector::User { user_id: id.to_string(), except: None };
                sql::revoke_in(&mut tx, self.kind, &sel, "account_disabled", now, &self.tag(None)).await?
            }
            None => Vec::new(),
        };
        tx.commit().await?;
        Ok(Some(revoked))
    }

    /// Replaces the password hash `verified` (the one a login just checked) with `rehashed`, the
    /// same password under today's parameters. A compare-and-swap: if the password changed
    /// meanwhile nothing is written (returns false), so a login with the old password can never
    /// write the old password back over a new one (SECURITY.md RT5). Sessions and the
    /// credential version are untouched: the password is the same.
    pub async fn rehash_password(&self, id: &str, verified: &str, rehashed: &str) -> StoreResult<bool> {
        let r = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2 AND password_hash = $3")
            .bind(rehashed)
            .bind(id)
            .bind(verified)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Grants or revokes the admin role. Revoking it from an admin also ends every live session
    /// of the user (`admin_revoked`) in the same transaction: their unexpired access tokens
    /// claim `admin`, and verifiers outside sessiond believe the claim until `exp` unless the
    /// session is revoked (SECURITY.md RT14). `None` when there is no such user; else what it
    /// ended (committed).
    pub async fn set_user_admin(&self, id: &str, admin: bool, now: Millis) -> StoreResult<Option<Vec<Revoked>>> {
        let mut tx = self.begin().await?;
        let was: Option<i64> =
            sqlx::query_scalar(&format!("SELECT is_admin FROM users WHERE id = $1{}", self.kind.for_update()))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(was) = was else { return Ok(None) };
        sqlx::query("UPDATE users SET is_admin = $1 WHERE id = $2")
            .bind(i64::from(admin))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let revoked = if was != 0 && !admin {
            let sel = Selector::User { user_id: id.to_string(), except: None };
            sql::revoke_in(&mut tx, self.kind, &sel, "admin_revoked", now, &self.tag(None)).await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        Ok(Some(revoked))
    }

    // ---- audit log ----

    /// Appends one audit event (the table refuses updates and deletes).
    pub async fn append_audit(&self, e: &NewAuditEvent<'_>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, event, actor_user_id, target_user_id, target_session_id, ip, user_agent, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(e.at)
        .bind(e.event)
        .bind(e.actor_user_id)
        .bind(e.target_user_id)
        .bind(e.target_session_id)
        .bind(e.ip)
        .bind(e.user_agent)
        .bind(e.detail.as_deref())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Audit events in id order after `after`, at most `limit`; with `user_id`, only those the
    /// user did or that were done to the user.
    pub async fn audit_events(&self, user_id: Option<&str>, after: i64, limit: i64) -> StoreResult<Vec<AuditRow>> {
        Ok(sqlx::query_as(
            "SELECT id, at, event, actor_user_id, target_user_id, target_session_id, ip, user_agent, detail \
             FROM audit_log WHERE id > $1 AND ($2 IS NULL OR target_user_id = $2 OR actor_user_id = $2) \
             ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(user_id)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Users ordered by id (ids are time-ordered UUIDv7), after `after`, at most `limit`, whose
    /// email contains `q` (case-insensitive; emails are stored lower-case).
    pub async fn list_users(
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
        .bind(now)
        .bind(pattern)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Sets a new password hash, bumps the credential version and revokes every other live
    /// session of the user, atomically — only if the credential is still the one the caller
    /// verified (`verified_version`) and the account is enabled; `None` otherwise (nothing
    /// written). On PostgreSQL the UPDATE's row lock makes a racing login's
    /// [`create_session`](Store::create_session) wait, and the revoking statement, which runs
    /// after it, sees every session committed before.
    pub async fn change_password(
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
        let revoked = sql::revoke_in(&mut tx, self.kind, &sel, "password_changed", now, &self.tag(None)).await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }

    // ---- sessions ----

    /// Inserts a session and its first refresh token in one transaction, only if the user's
    /// credential is still the verified one (`s.credential_version`) and the account is not
    /// disabled; returns the user as it is now (its roles go into the tokens) and the session,
    /// or `None` when the credential state changed since it was verified (SECURITY.md RT1).
    ///
    /// The check and the insert are one transaction against the user row. SQLite: `BEGIN
    /// IMMEDIATE` serialises it with every writer (password change, disable, demotion). On
    /// PostgreSQL the row is read `FOR SHARE`: that conflicts with the row lock of a password
    /// change, disable or demotion (an INSERT's foreign-key check takes only `KEY SHARE`, which
    /// does not), so either that writer commits first and this statement (READ COMMITTED,
    /// re-evaluated after the wait) no longer finds the row, or this commits first and the
    /// writer's revoking statement, which runs after its UPDATE, sees the new session.
    pub async fn create_session(&self, s: NewSession) -> StoreResult<Option<(UserRow, SessionRow)>> {
        let idle = s.now + s.idle_ttl;
        let absolute = s.now + s.max_age;
        let access_exp = (s.now + s.access_ttl).min(idle).min(absolute);
        let mut tx = self.begin().await?;
        let lock = self.kind.for_share();
        let user: Option<UserRow> = sqlx::query_as(&format!(
            "SELECT * FROM users WHERE id = $1 AND credential_version = $2 AND disabled_at IS NULL{lock}"
        ))
        .bind(&s.user_id)
        .bind(s.credential_version)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user) = user else { return Ok(None) };
        let row: SessionRow = sqlx::query_as(&format!(
            "INSERT INTO sessions (id, user_id, device_name, user_agent, ip, created_at, last_used_at, \
               settled_used_at, idle_expires_at, absolute_expires_at, access_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $6, $7, $8, $9) RETURNING {}",
            sql::SESSION_COLS
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
        Ok(Some((user, row)))
    }

    /// Live sessions of a user, newest first.
    pub async fn live_sessions(&self, user_id: &str, now: Millis) -> StoreResult<Vec<SessionRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM sessions WHERE user_id = $1 AND revoked_at IS NULL \
               AND idle_expires_at > $2 AND absolute_expires_at > $2 ORDER BY created_at DESC, id DESC",
            sql::SESSION_COLS
        ))
        .bind(user_id)
        .bind(now)
        .fetch_all(&self.reader)
        .await?)
    }

    pub async fn session(&self, id: &str) -> StoreResult<Option<SessionRow>> {
        Ok(sqlx::query_as(&format!("SELECT {} FROM sessions WHERE id = $1", sql::SESSION_COLS))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?)
    }

    pub async fn count_live_sessions(&self, now: Millis) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND idle_expires_at > $1 AND absolute_expires_at > $1",
        )
        .bind(now)
        .fetch_one(&self.reader)
        .await?)
    }

    /// Ends the selected live sessions with `reason`; returns what it ended (committed).
    /// `request` tags the PostgreSQL notification so acknowledgements can be matched.
    pub async fn revoke(
        &self,
        sel: &Selector,
        reason: &str,
        now: Millis,
        request: Option<&str>,
    ) -> StoreResult<Vec<Revoked>> {
        let mut tx = self.begin().await?;
        let revoked = sql::revoke_in(&mut tx, self.kind, sel, reason, now, &self.tag(request)).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Ends every session past its idle or absolute expiry (`session_expired`), then drops
    /// sealed successors that can never be used again: past the grace window, or of an ended
    /// session (revocations leave them, so as not to lock token rows after session rows).
    pub async fn sweep_expired(&self, now: Millis, grace: Millis) -> StoreResult<Vec<Revoked>> {
        let mut tx = self.begin().await?;
        let revoked =
            sql::revoke_in(&mut tx, self.kind, &Selector::Expired, "session_expired", now, &self.tag(None)).await?;
        tx.commit().await?;
        sqlx::query(
            "UPDATE refresh_tokens SET sealed_successor = NULL WHERE sealed_successor IS NOT NULL AND (rotated_at < $1 \
               OR EXISTS (SELECT 1 FROM sessions s WHERE s.id = refresh_tokens.session_id AND s.revoked_at IS NOT NULL))",
        )
        .bind(now - grace)
        .execute(&self.writer)
        .await?;
        Ok(revoked)
    }

    /// Revoked sessions some of whose access tokens may still be unexpired at `min_exp`.
    pub async fn revoked_since(&self, min_exp: Millis) -> StoreResult<Vec<Revoked>> {
        let rows: Vec<(String, String, i64, String, i64)> = sqlx::query_as(
            "SELECT id, user_id, access_expires_at, COALESCE(revoked_reason, ''), revoked_at FROM sessions \
             WHERE revoked_at IS NOT NULL AND access_expires_at >= $1",
        )
        .bind(min_exp)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(revoked_from).collect())
    }

    /// Revocation log rows in an id range (PostgreSQL backplane).
    pub async fn revocations_between(&self, from: i64, to: i64) -> StoreResult<Vec<Revoked>> {
        if self.failpoints.hit(failpoint::REVOCATIONS_READ) {
            return Err(StoreError::Injected(failpoint::REVOCATIONS_READ));
        }
        let rows: Vec<(String, String, i64, String, i64)> = sqlx::query_as(
            "SELECT session_id, user_id, access_expires_at, reason, at FROM revocations WHERE id BETWEEN $1 AND $2",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(revoked_from).collect())
    }

    /// Drops revocation log rows older than `before` (their tokens are long dead).
    pub async fn prune_revocation_log(&self, before: Millis) -> StoreResult<u64> {
        if self.kind != Kind::Postgres {
            return Ok(0);
        }
        let r = sqlx::query("DELETE FROM revocations WHERE at < $1").bind(before).execute(&self.writer).await?;
        Ok(r.rows_affected())
    }

    // ---- refresh tokens ----

    /// One refresh, in one write transaction (see [`RotateOutcome`]).
    pub async fn rotate_refresh(&self, r: Rotation) -> StoreResult<RotateOutcome> {
        let mut tx = self.begin().await?;
        let outcome = sql::rotate_in(&mut tx, self.kind, &r, &self.tag(None), &self.failpoints).await?;
        // Commit on every path: a reuse or expiry revocation must stick although the client
        // gets an error (RFC 9700 §4.14.2; Supabase's commit-with-error).
        tx.commit().await?;
        Ok(outcome)
    }

    /// The session a refresh token (live or rotated) belongs to.
    pub async fn session_of_refresh(&self, hash: &[u8; 32]) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT session_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(&hash[..])
            .fetch_optional(&self.reader)
            .await?)
    }

    /// The user of the live session whose *current* (unrotated) refresh token has this digest:
    /// the cookie proof of the login throttle (`limits::check_login`).
    pub async fn live_session_user_of_refresh(&self, hash: &[u8; 32], now: Millis) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT s.user_id FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id \
             WHERE t.token_hash = $1 AND t.rotated_at IS NULL AND s.revoked_at IS NULL \
               AND s.idle_expires_at > $2 AND s.absolute_expires_at > $2",
        )
        .bind(&hash[..])
        .bind(now)
        .fetch_optional(&self.reader)
        .await?)
    }

    /// The client addresses of a user's sessions created after `since` (ended ones too), newest
    /// first, at most `limit`: the address proof of the login throttle (`limits::check_login`).
    pub async fn session_ips_since(&self, user_id: &str, since: Millis, limit: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT ip FROM sessions WHERE user_id = $1 AND created_at > $2 AND ip IS NOT NULL \
             ORDER BY created_at DESC LIMIT $3",
        )
        .bind(user_id)
        .bind(since)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// (live, rotated) refresh tokens of a session: for tests and diagnostics.
    pub async fn refresh_token_counts(&self, session_id: &str) -> StoreResult<(i64, i64)> {
        let live: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM refresh_tokens WHERE session_id = $1 AND rotated_at IS NULL")
                .bind(session_id)
                .fetch_one(&self.reader)
                .await?;
        let rotated: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM refresh_tokens WHERE session_id = $1 AND rotated_at IS NOT NULL")
                .bind(session_id)
                .fetch_one(&self.reader)
                .await?;
        Ok((live, rotated))
    }

    // ---- signing keys ----

    pub async fn signing_keys(&self) -> StoreResult<Vec<KeyRow>> {
        Ok(sqlx::query_as("SELECT * FROM signing_keys ORDER BY activates_at, created_at, kid")
            .fetch_all(&self.reader)
            .await?)
    }

    /// Inserts `key`; with `only_if_empty`, only when no key exists yet (first start, raced by
    /// several instances). Returns whether it was inserted.
    pub async fn insert_signing_key(&self, k: &KeyRow, only_if_empty: bool) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        if self.kind == Kind::Postgres {
            // Serialise first-start key creation across instances.
            sqlx::query("SELECT pg_advisory_xact_lock(7305813)").execute(&mut *tx).await?;
        }
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

    // ---- cluster presence (PostgreSQL) ----

    /// Records this instance's heartbeat and replaces its presence rows with `sessions`.
    pub async fn sync_presence(
        &self,
        instance: &str,
        added: &[String],
        removed: &[String],
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO instances (id, heartbeat_at) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(instance)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for s in added {
            sqlx::query("INSERT INTO presence (instance_id, session_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(instance)
                .bind(s)
                .execute(&mut *tx)
                .await?;
        }
        for s in removed {
            sqlx::query("DELETE FROM presence WHERE instance_id = $1 AND session_id = $2")
                .bind(instance)
                .bind(s)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes an instance and its presence (graceful shutdown, or a dead instance's leftovers).
    pub async fn forget_instances(&self, stale_before: Millis, this: Option<&str>) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "DELETE FROM presence WHERE instance_id IN \
               (SELECT id FROM instances WHERE heartbeat_at < $1 OR id = $2)",
        )
        .bind(stale_before)
        .bind(this.unwrap_or(""))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM instances WHERE heartbeat_at < $1 OR id = $2")
            .bind(stale_before)
            .bind(this.unwrap_or(""))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Of `user_id`'s sessions, those with a socket on a live instance.
    pub async fn connected_sessions(&self, user_id: &str, alive_after: Millis) -> StoreResult<Vec<String>> {
        if self.kind != Kind::Postgres {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT p.session_id FROM presence p \
               JOIN instances i ON i.id = p.instance_id \
               JOIN sessions s ON s.id = p.session_id \
             WHERE s.user_id = $1 AND i.heartbeat_at > $2",
        )
        .bind(user_id)
        .bind(alive_after)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Ids of the instances with a heartbeat after `alive_after`, except `this`.
    pub async fn other_instances(&self, this: &str, alive_after: Millis) -> StoreResult<Vec<String>> {
        if self.kind != Kind::Postgres {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar("SELECT id FROM instances WHERE heartbeat_at > $1 AND id <> $2")
            .bind(alive_after)
            .bind(this)
            .fetch_all(&self.reader)
            .await?)
    }

    /// Sends a notification (outside any transaction).
    pub async fn notify(&self, channel: &str, payload: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&self.writer).await?;
        Ok(())
    }
}

fn revoked_from((session_id, user_id, access_expires_at, reason, at): (String, String, i64, String, i64)) -> Revoked {
    Revoked { session_id, user_id, access_expires_at, reason, at }
}

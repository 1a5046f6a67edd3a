//! Storage: one API over the database, so handlers never see SQL or the backend.
//!
//! `Store` is a cheap handle (pools are shared on clone). Today it wraps SQLite; the PostgreSQL
//! backend plugs in as another `Backend` arm with the same methods and semantics. All SQL lives
//! in the backend modules, one function per query or transaction. Times are milliseconds since
//! the epoch from the application's [`Clock`](crate::clock::Clock), passed in explicitly.

mod sqlite;

use crate::clock::Millis;

/// A user row. `Debug` omits the password hash.
#[derive(Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub is_admin: bool,
    pub created_at: Millis,
    pub disabled_at: Option<Millis>,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow").field("id", &self.id).field("is_admin", &self.is_admin).finish_non_exhaustive()
    }
}

impl UserRow {
    pub fn roles(&self) -> Vec<String> {
        if self.is_admin {
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
    pub is_admin: bool,
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
}

/// What a refresh did. Revocations in `Reused`/`Expired` are committed.
pub enum RotateOutcome {
    /// The presented token was live; the candidate is now the live token.
    Rotated { session: SessionRow, access_exp: Millis },
    /// The presented token is the immediately previous one, inside grace: the client gets the
    /// same successor, unsealed from this blob with the presented token.
    Grace { session: SessionRow, sealed_successor: Vec<u8>, access_exp: Millis },
    /// Reuse outside the policy: the session was revoked (`refresh_token_reused`).
    Reused(Vec<Revoked>),
    /// The session had expired; it was ended (`session_expired`).
    Expired(Vec<Revoked>),
    /// Unknown token, or its session had already ended.
    Invalid,
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
}

impl From<StoreError> for crate::error::AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => crate::error::AppError::EmailTaken,
            StoreError::Db(e) => e.into(),
            other => crate::error::AppError::Internal(other.into()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
}

/// The storage handle. Clones share the connection pools.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

macro_rules! dispatch {
    ($self:ident . $m:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(s) => s.$m($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens (creating if needed) the database named by `url`. Does not migrate.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        if url.starts_with("sqlite:") {
            Ok(Store { backend: Backend::Sqlite(sqlite::SqliteStore::connect(url).await?) })
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> StoreResult<()> {
        dispatch!(self.migrate())
    }

    /// Cheap liveness probe of the database.
    pub async fn ping(&self) -> StoreResult<()> {
        dispatch!(self.ping())
    }

    pub async fn close(&self) {
        dispatch!(self.close())
    }

    // ---- users ----

    pub async fn create_user(&self, id: &str, email: &str, hash: &str, admin: bool, now: Millis) -> StoreResult<()> {
        dispatch!(self.create_user(id, email, hash, admin, now))
    }

    pub async fn count_users(&self) -> StoreResult<i64> {
        dispatch!(self.count_users())
    }

    pub async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRow>> {
        dispatch!(self.user_by_email(email))
    }

    pub async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRow>> {
        dispatch!(self.user_by_id(id))
    }

    /// Users ordered by id (ids are time-ordered UUIDv7), after `after`, at most `limit`.
    pub async fn list_users(&self, limit: i64, after: Option<&str>, now: Millis) -> StoreResult<Vec<UserSummary>> {
        dispatch!(self.list_users(limit, after, now))
    }

    /// Sets a new password hash and revokes every other live session of the user, atomically.
    pub async fn change_password(
        &self,
        user_id: &str,
        hash: &str,
        keep_session: &str,
        now: Millis,
    ) -> StoreResult<Vec<Revoked>> {
        dispatch!(self.change_password(user_id, hash, keep_session, now))
    }

    // ---- sessions ----

    /// Inserts a session and its first refresh token in one transaction; returns the row.
    pub async fn create_session(&self, s: NewSession) -> StoreResult<SessionRow> {
        dispatch!(self.create_session(s))
    }

    /// Live sessions of a user, newest first.
    pub async fn live_sessions(&self, user_id: &str, now: Millis) -> StoreResult<Vec<SessionRow>> {
        dispatch!(self.live_sessions(user_id, now))
    }

    pub async fn session(&self, id: &str) -> StoreResult<Option<SessionRow>> {
        dispatch!(self.session(id))
    }

    pub async fn count_live_sessions(&self, now: Millis) -> StoreResult<i64> {
        dispatch!(self.count_live_sessions(now))
    }

    /// Ends the selected live sessions with `reason`; returns what it ended (committed).
    pub async fn revoke(&self, sel: &Selector, reason: &str, now: Millis) -> StoreResult<Vec<Revoked>> {
        dispatch!(self.revoke(sel, reason, now))
    }

    /// Ends every session past its idle or absolute expiry (`session_expired`).
    /// Also drops sealed successors older than the grace window.
    pub async fn sweep_expired(&self, now: Millis, grace: Millis) -> StoreResult<Vec<Revoked>> {
        dispatch!(self.sweep_expired(now, grace))
    }

    /// Revoked sessions some of whose access tokens may still be unexpired at `min_exp`.
    pub async fn revoked_since(&self, min_exp: Millis) -> StoreResult<Vec<Revoked>> {
        dispatch!(self.revoked_since(min_exp))
    }

    // ---- refresh tokens ----

    /// One refresh, in one write transaction (see [`RotateOutcome`]).
    pub async fn rotate_refresh(&self, r: Rotation) -> StoreResult<RotateOutcome> {
        dispatch!(self.rotate_refresh(r))
    }

    /// The session a refresh token (live or rotated) belongs to.
    pub async fn session_of_refresh(&self, hash: &[u8; 32]) -> StoreResult<Option<String>> {
        dispatch!(self.session_of_refresh(hash))
    }

    // ---- signing keys ----

    pub async fn signing_keys(&self) -> StoreResult<Vec<KeyRow>> {
        dispatch!(self.signing_keys())
    }

    /// Inserts `key`; with `only_if_empty`, only when no key exists yet (first start, raced by
    /// several instances). Returns whether it was inserted.
    pub async fn insert_signing_key(&self, key: &KeyRow, only_if_empty: bool) -> StoreResult<bool> {
        dispatch!(self.insert_signing_key(key, only_if_empty))
    }
}

//! The store's vocabulary: rows as the application sees them, the inputs of its writes, and its
//! errors. Backend-neutral: times are [`Millis`], flags are `bool` (each backend's column type is
//! the SQL layer's business, see [`super::time`]).

use crate::clock::Millis;

/// A user row. `Debug` omits the password hash.
#[derive(Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub is_admin: bool,
    #[sqlx(try_from = "super::Ts")]
    pub created_at: Millis,
    #[sqlx(try_from = "super::OptTs")]
    pub disabled_at: Option<Millis>,
    /// Bumped by every password change. A session is only ever created against the version
    /// the login verified (see [`Store::create_session`](super::Store::create_session));
    /// rehashing does not change it.
    pub credential_version: i64,
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
    #[sqlx(try_from = "super::Ts")]
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
    #[sqlx(try_from = "super::Ts")]
    pub created_at: Millis,
    #[sqlx(try_from = "super::Ts")]
    pub last_used_at: Millis,
    /// The latest use that was already older than the refresh grace window when the session
    /// was last used (0 before migration 0003): what listings show while `last_used_at` is
    /// still inside the window (see `http::listed_times`).
    #[sqlx(try_from = "super::Ts")]
    pub settled_used_at: Millis,
    #[sqlx(try_from = "super::Ts")]
    pub idle_expires_at: Millis,
    #[sqlx(try_from = "super::Ts")]
    pub absolute_expires_at: Millis,
    #[sqlx(try_from = "super::Ts")]
    pub access_expires_at: Millis,
    #[sqlx(try_from = "super::OptTs")]
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

/// How long after the latest `exp` of a session's access tokens one of them can still be
/// accepted: the verification leeway, plus a second because `exp` is whole seconds (a token
/// whose `exp` is second `e` verifies until the end of second `e + leeway`).
pub const UNTIL_AFTER_ACCESS_EXPIRY_MS: Millis = sessiond_verify::LEEWAY_SECS * 1000 + 1000;

/// The `until` of a revocation (docs/API.md §9): the instant after which no access token of the
/// session can still be valid, from the latest `exp` (ms) of its access tokens. The one place
/// this rule is written: the denylist keeps an entry until then, the revocation log reports it
/// and is pruned by it.
pub fn revocation_until(access_expires_at: Millis) -> Millis {
    access_expires_at.saturating_add(UNTIL_AFTER_ACCESS_EXPIRY_MS)
}

/// The largest `access_expires_at` whose revocation is no longer in force at `now`:
/// `revocation_until(e) > now` exactly when `e > revocation_exp_floor(now)` (the inverse of
/// [`revocation_until`], for SQL that selects by the stored `access_expires_at`).
pub fn revocation_exp_floor(now: Millis) -> Millis {
    now.saturating_sub(UNTIL_AFTER_ACCESS_EXPIRY_MS)
}

/// One entry of the revocation log (docs/API.md §9): a session that a committed transaction
/// ended. Entries are ordered by `cursor`, which grows in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub cursor: i64,
    pub session_id: String,
    pub user_id: String,
    pub reason: String,
    pub at: Millis,
    /// See [`revocation_until`].
    pub until: Millis,
}

/// A service credential as stored, without its digest (docs/API.md §8).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ServiceCredentialRow {
    /// Immutable, never reused (migration 0007): what owns the credential's Shared Signals
    /// stream, so a credential added later under the same name owns nothing of the old one's.
    pub id: String,
    pub name: String,
    /// Space-separated scopes.
    pub scopes: String,
    #[sqlx(try_from = "super::Ts")]
    pub created_at: Millis,
    #[sqlx(try_from = "super::OptTs")]
    pub last_used_at: Option<Millis>,
    /// The `aud` of its SSF stream as stored (migration 0006); `None` means the name.
    pub ssf_aud: Option<String>,
}

/// A service credential with the digest of its secret: what an SSF access token is checked
/// against on every use (the token is bound to the digest, so a credential removed and created
/// again under the same name does not revive the old one's tokens).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ServiceCredentialBinding {
    #[sqlx(flatten)]
    pub row: ServiceCredentialRow,
    pub secret_digest: Vec<u8>,
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

/// An audit event to write, owned (a revocation's: built once its sessions are known, and
/// written in the revoking transaction).
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    pub at: Millis,
    pub event: &'static str,
    pub actor_user_id: Option<String>,
    pub target_user_id: Option<String>,
    pub target_session_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// JSON text.
    pub detail: Option<String>,
}

impl AuditRecord {
    pub fn as_new(&self) -> NewAuditEvent<'_> {
        NewAuditEvent {
            at: self.at,
            event: self.event,
            actor_user_id: self.actor_user_id.as_deref(),
            target_user_id: self.target_user_id.as_deref(),
            target_session_id: self.target_session_id.as_deref(),
            ip: self.ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            detail: self.detail.clone(),
        }
    }
}

/// The audit row of a revocation, given what it ended (`None`: none). Called inside the
/// revoking transaction, so the row commits with the revocation or not at all.
pub type AuditOf<'a> = &'a (dyn Fn(&[Revoked]) -> Option<AuditRecord> + Send + Sync);

/// An audit event as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    #[sqlx(try_from = "super::Ts")]
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
    #[sqlx(try_from = "super::Ts")]
    pub created_at: Millis,
    #[sqlx(try_from = "super::Ts")]
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
    #[error("unsupported DATABASE_URL (expected sqlite://… or postgres://…)")]
    UnsupportedUrl,
    /// The database named by the URL could not be opened or reached. `target` says which one
    /// (an SQLite path, or PostgreSQL's host:port and database) and never holds a password.
    /// The cause is part of the message, not a `source`: sqlx's errors repeat their own source
    /// in their message, so a chain printed with `{:#}` would say everything twice.
    #[error("cannot {target}: {error}")]
    Connect { target: String, error: sqlx::Error },
    /// A call waited on the database longer than `--db-timeout` (docs/API.md §6).
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A fault injected by an armed [failpoint](super::Store::arm_failpoint) (tests only):
    /// reported like a lost database connection, so the request answers 503 `unavailable`.
    #[cfg(any(test, feature = "test-util"))]
    #[error("injected fault at failpoint {0}")]
    Injected(&'static str),
}

impl StoreError {
    /// Whether this is the database being out of reach or refusing for now (503, and worth
    /// another attempt), not a fault of the request or of sessiond.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Db(e) | StoreError::Connect { error: e, .. } => {
                crate::error::is_outage(e) || matches!(self, StoreError::Connect { .. })
            }
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => crate::error::is_outage(e),
            StoreError::Timeout(_) => true,
            #[cfg(any(test, feature = "test-util"))]
            StoreError::Injected(_) => true,
            _ => false,
        }
    }
}

impl From<StoreError> for crate::error::AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => crate::error::AppError::EmailTaken,
            StoreError::Db(e) => e.into(),
            e if e.is_outage() => crate::error::AppError::Unavailable(e.into()),
            other => crate::error::AppError::Internal(other.into()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A live session's current refresh token, as introspection reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRefresh {
    pub session_id: String,
    pub user_id: String,
    /// The session's expiry: the earlier of the idle and the absolute expiry.
    pub expires_at: Millis,
}

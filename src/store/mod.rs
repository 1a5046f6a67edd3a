//! Storage: one API over the database, so handlers never see SQL or the backend.
//!
//! [`Store`] is a cheap handle (pools are shared on clone) over one of two backends, chosen by
//! the URL, each with its own typed pool:
//! - [`sqlite`]: an embedded file for one instance (one writer connection with
//!   `BEGIN IMMEDIATE`, a reader pool, PRAGMAs, WAL checkpoints in the background);
//! - [`postgres`]: a database shared by many instances (row locks, the revocation log's ids
//!   under an advisory lock and `NOTIFY`, presence, the listener connection). What only PostgreSQL has is reached through
//!   [`Store::postgres`], never through the facade.
//!
//! The statements both run are written once, in [`shared`], and expanded for each backend; what
//! differs (the locking reads, the revocation) each backend writes its own way. Times are
//! [`Millis`] from the application's [`Clock`](crate::clock::Clock), passed in explicitly; how
//! each backend stores them is [`time`]'s business. [`types`] holds the rows and inputs.

pub mod postgres;
mod shared;
pub mod sqlite;
pub mod ssf;
mod time;
mod types;

#[cfg(any(test, feature = "test-util"))]
pub mod failpoint;

use std::sync::Arc;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use time::{OptTs, Ts};
pub use types::*;

use crate::clock::Millis;

/// Marks a [failpoint](failpoint): `fail_at!(self.failpoints, NAME)` returns
/// `Err(StoreError::Injected(NAME))` from the enclosing function while `NAME` is armed. Expands
/// to nothing without the `test-util` feature, so a release build has no check at all.
macro_rules! fail_at {
    ($failpoints:expr, $name:expr) => {
        #[cfg(any(test, feature = "test-util"))]
        {
            if $failpoints.hit($name) {
                return Err($crate::store::StoreError::Injected($name));
            }
        }
    };
}
pub(crate) use fail_at;

/// How the store talks to its database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The longest any call of the facade waits on the database (docs/API.md §6,
    /// `--db-timeout`): pool acquire, connect and statements. The revoking writes are the
    /// exception: they run to their end in a task of their own (`Sessions`), whose caller
    /// stops waiting after this long.
    pub db_timeout: std::time::Duration,
    /// SQLite `synchronous = FULL` (every commit on disk before it is answered) instead of
    /// NORMAL (`--sqlite-synchronous`).
    pub sqlite_synchronous_full: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { db_timeout: std::time::Duration::from_secs(5), sqlite_synchronous_full: false }
    }
}

/// The storage handle. Clones share the connection pools and the email cache.
#[derive(Clone)]
pub struct Store {
    db: Db,
    /// `StoreOptions::db_timeout`.
    timeout: std::time::Duration,
    /// The feed epoch, read once ([`Store::feed_epoch`]).
    epoch: Arc<std::sync::OnceLock<Arc<str>>>,
    /// This process's id among instances (notifications carry it on PostgreSQL).
    instance_id: Arc<str>,
    /// user id → email. Emails never change, so entries never go stale; bounded, the coldest
    /// evicted first. Saves `/v1/me` a database read per request.
    emails: Arc<quick_cache::sync::Cache<String, Arc<str>>>,
}

#[derive(Clone)]
enum Db {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// A new random feed epoch: 16 hex digits.
fn new_feed_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

/// Most emails remembered by [`Store::user_email`].
const EMAIL_CACHE_MAX: usize = 65_536;

/// Runs the same method on whichever backend the store has (each backend has every method of
/// the facade, from `shared_store!` or its own module). The facade's calls wait at most
/// `--db-timeout` ([`Store::bounded`]), but for the migrations and the revoking writes.
macro_rules! on_backend {
    ($store:expr, $b:ident => $call:expr) => {
        match &$store.db {
            Db::Sqlite($b) => $call,
            Db::Postgres($b) => $call,
        }
    };
}

impl Store {
    /// Opens (creating an SQLite file if needed) the database named by `url`. Does not migrate.
    /// The error names the database (an SQLite path, or PostgreSQL's host:port and database)
    /// and the reason, never a password.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Store::connect_with(url, &StoreOptions::default()).await
    }

    /// [`connect`](Store::connect) with `options`.
    pub async fn connect_with(url: &str, options: &StoreOptions) -> StoreResult<Self> {
        let instance_id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let db = if url.starts_with("sqlite:") {
            Db::Sqlite(SqliteStore::connect(url, options).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Db::Postgres(PgStore::connect(url, instance_id.clone(), options).await?)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        Ok(Store {
            db,
            timeout: options.db_timeout,
            epoch: Arc::default(),
            instance_id,
            emails: Arc::new(quick_cache::sync::Cache::new(EMAIL_CACHE_MAX)),
        })
    }

    /// `call`, or [`StoreError::Timeout`] once it has waited `--db-timeout` (docs/API.md §6):
    /// a silent network makes a statement wait for ever, and no caller may.
    async fn bounded<T>(&self, call: impl std::future::Future<Output = StoreResult<T>>) -> StoreResult<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// The longest a call waits on the database (`--db-timeout`).
    pub fn db_timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// The PostgreSQL store, for what only a cluster has (the backplane); `None` on SQLite.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.db {
            Db::Postgres(pg) => Some(pg),
            Db::Sqlite(_) => None,
        }
    }

    /// User emails held in the bounded cache (for `/metrics`).
    pub fn email_cache_len(&self) -> usize {
        self.emails.len()
    }

    /// This process's instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> StoreResult<()> {
        on_backend!(self, b => b.migrate().await)
    }

    /// Cheap liveness probe of the database.
    pub async fn ping(&self) -> StoreResult<()> {
        self.bounded(async { on_backend!(self, b => b.ping().await) }).await
    }

    pub async fn close(&self) {
        on_backend!(self, b => b.close().await)
    }

    // ---- users ----

    pub async fn create_user(&self, id: &str, email: &str, hash: &str, admin: bool, now: Millis) -> StoreResult<()> {
        self.bounded(async { on_backend!(self, b => b.create_user(id, email, hash, admin, now).await) }).await
    }

    pub async fn count_users(&self) -> StoreResult<i64> {
        self.bounded(async { on_backend!(self, b => b.count_users().await) }).await
    }

    pub async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRow>> {
        self.bounded(async { on_backend!(self, b => b.user_by_email(email).await) }).await
    }

    pub async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRow>> {
        self.bounded(async { on_backend!(self, b => b.user_by_id(id).await) }).await
    }

    /// A user's email, from memory after the first read (emails are immutable).
    pub async fn user_email(&self, id: &str) -> StoreResult<Option<Arc<str>>> {
        if let Some(e) = self.emails.get(id) {
            return Ok(Some(e));
        }
        let Some(email) = self.bounded(async { on_backend!(self, b => b.email_of(id).await) }).await? else {
            return Ok(None);
        };
        let email: Arc<str> = email.into();
        self.emails.insert(id.to_string(), email.clone());
        Ok(Some(email))
    }

    /// Disables or re-enables a user at `now`; disabling ends every live session of the user
    /// (`account_disabled`) in the same transaction, so the flag is never committed with
    /// sessions alive. A real change also writes its Shared Signals outbox row
    /// (account-disabled before the sessions' session-revoked, or account-enabled; docs/SSF.md
    /// §2). `None` when there is no such user; else what it ended (committed).
    pub async fn set_user_disabled(&self, id: &str, disabled: bool, now: Millis) -> StoreResult<Option<Vec<Revoked>>> {
        on_backend!(self, b => b.set_user_disabled(id, disabled, now).await)
    }

    /// Replaces the password hash `verified` (the one a login just checked) with `rehashed`, the
    /// same password under today's parameters. A compare-and-swap: if the password changed
    /// meanwhile nothing is written (returns false), so a login with the old password can never
    /// write the old password back over a new one (SECURITY.md RT5). Sessions and the
    /// credential version are untouched: the password is the same.
    pub async fn rehash_password(&self, id: &str, verified: &str, rehashed: &str) -> StoreResult<bool> {
        self.bounded(async { on_backend!(self, b => b.rehash_password(id, verified, rehashed).await) }).await
    }

    /// Grants or revokes the admin role. Revoking it from an admin also ends every live session
    /// of the user (`admin_revoked`) in the same transaction: their unexpired access tokens
    /// claim `admin`, and verifiers outside sessiond believe the claim until `exp` unless the
    /// session is revoked (SECURITY.md RT14). `None` when there is no such user; else what it
    /// ended (committed).
    pub async fn set_user_admin(&self, id: &str, admin: bool, now: Millis) -> StoreResult<Option<Vec<Revoked>>> {
        on_backend!(self, b => b.set_user_admin(id, admin, now).await)
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
        on_backend!(self, b => b.change_password(user_id, verified_version, hash, keep, now).await)
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
        self.bounded(async { on_backend!(self, b => b.list_users(limit, after, q, now).await) }).await
    }

    // ---- audit log ----

    /// Appends one audit event (the table refuses updates and deletes).
    pub async fn append_audit(&self, e: &NewAuditEvent<'_>) -> StoreResult<()> {
        self.bounded(async { on_backend!(self, b => b.append_audit(e).await) }).await
    }

    /// Audit events in id order after `after`, at most `limit`; with `user_id`, only those the
    /// user did or that were done to the user.
    pub async fn audit_events(&self, user_id: Option<&str>, after: i64, limit: i64) -> StoreResult<Vec<AuditRow>> {
        self.bounded(async { on_backend!(self, b => b.audit_events(user_id, after, limit).await) }).await
    }

    // ---- sessions ----

    /// Inserts a session and its first refresh token in one transaction, only if the user's
    /// credential is still the verified one (`s.credential_version`) and the account is not
    /// disabled; returns the user as it is now (its roles go into the tokens) and the session,
    /// or `None` when the credential state changed since it was verified (SECURITY.md RT1).
    /// The check and the insert are one transaction against the user row: SQLite's write lock
    /// or PostgreSQL's `FOR SHARE` keeps a password change, disable or demotion from slipping
    /// between them.
    pub async fn create_session(&self, s: NewSession) -> StoreResult<Option<(UserRow, SessionRow)>> {
        self.bounded(async { on_backend!(self, b => b.create_session(s).await) }).await
    }

    /// Live sessions of a user, newest first.
    pub async fn live_sessions(&self, user_id: &str, now: Millis) -> StoreResult<Vec<SessionRow>> {
        self.bounded(async { on_backend!(self, b => b.live_sessions(user_id, now).await) }).await
    }

    pub async fn session(&self, id: &str) -> StoreResult<Option<SessionRow>> {
        self.bounded(async { on_backend!(self, b => b.session(id).await) }).await
    }

    pub async fn count_live_sessions(&self, now: Millis) -> StoreResult<i64> {
        self.bounded(async { on_backend!(self, b => b.count_live_sessions(now).await) }).await
    }

    /// Ends the selected live sessions with `reason`; returns what it ended (committed).
    /// `request` tags the PostgreSQL notification so acknowledgements can be matched.
    /// `audit`, given what was ended, makes the revocation's audit row, written in the same
    /// transaction (a crash between the commit and a later write would lose it).
    pub async fn revoke(
        &self,
        sel: &Selector,
        reason: &str,
        now: Millis,
        request: Option<&str>,
        audit: Option<AuditOf<'_>>,
    ) -> StoreResult<Vec<Revoked>> {
        on_backend!(self, b => b.revoke(sel, reason, now, request, audit).await)
    }

    /// Ends every session past its idle or absolute expiry (`session_expired`), then drops
    /// sealed successors that can never be used again: past the grace window, or of an ended
    /// session (revocations leave them, so as not to lock token rows after session rows).
    pub async fn sweep_expired(&self, now: Millis, grace: Millis) -> StoreResult<Vec<Revoked>> {
        on_backend!(self, b => b.sweep_expired(now, grace).await)
    }

    /// Revoked sessions some of whose access tokens may still be unexpired at `min_exp`.
    pub async fn revoked_since(&self, min_exp: Millis) -> StoreResult<Vec<Revoked>> {
        self.bounded(async { on_backend!(self, b => b.revoked_since(min_exp).await) }).await
    }

    // ---- the revocation log (docs/API.md §9) ----
    //
    // Every revocation appends one entry per ended session in the transaction that ends it
    // (`revoke_in` of each backend). Cursors are log ids, which grow in commit order: on
    // SQLite because one writer commits at a time, on PostgreSQL because ids are allocated
    // under an advisory lock held until commit (see `PgStore::revoke_in`).

    /// The revocation feed's epoch (docs/API.md §14): the cursors of this database carry it.
    /// Read once: it only changes while no server runs (`sessiond backup`'s copy, `sessiond
    /// epoch renew`).
    pub async fn feed_epoch(&self) -> StoreResult<Arc<str>> {
        if let Some(e) = self.epoch.get() {
            return Ok(e.clone());
        }
        let epoch: Arc<str> = self.bounded(async { on_backend!(self, b => b.feed_epoch().await) }).await?.into();
        Ok(self.epoch.get_or_init(|| epoch).clone())
    }

    /// Gives the database a new feed epoch: every follower's cursor becomes unknown, and it
    /// starts over from a snapshot (after a restore).
    pub async fn renew_feed_epoch(&self) -> StoreResult<String> {
        let epoch = new_feed_epoch();
        self.bounded(async { on_backend!(self, b => b.set_feed_epoch(&epoch).await) }).await?;
        Ok(epoch)
    }

    /// SQLite: an online, consistent copy of the database at `path` (which must not exist),
    /// with a feed epoch of its own, so followers of this database never take the copy's
    /// cursors for theirs once it is restored (docs/API.md §14). PostgreSQL has its own tools
    /// (`pg_dump`): [`StoreError::UnsupportedUrl`].
    pub async fn backup(&self, path: &std::path::Path) -> StoreResult<()> {
        let Db::Sqlite(s) = &self.db else { return Err(StoreError::UnsupportedUrl) };
        s.backup_into(path).await?;
        let copy = Store::connect(&format!("sqlite://{}?mode=rw", path.display())).await?;
        let renewed = copy.renew_feed_epoch().await;
        copy.close().await;
        renewed.map(|_| ())
    }

    /// The newest cursor (0 for an empty log). Never moves back: the expiry sweep keeps the
    /// newest entry.
    pub async fn revocation_head(&self) -> StoreResult<i64> {
        self.bounded(async { on_backend!(self, b => b.revocation_head().await) }).await
    }

    /// Entries after `cursor`, oldest first, at most `limit`.
    pub async fn revocations_after(&self, cursor: i64, limit: i64) -> StoreResult<Vec<LogEntry>> {
        self.bounded(async { on_backend!(self, b => b.revocations_after(cursor, limit).await) }).await
    }

    /// One page of a snapshot: the entries after `after` and at most `head` still in force at
    /// `now` (`until` after it), oldest first, at most `limit`. Ids grow in commit order on both
    /// backends, so everything committed after the head was read has a larger id: the entries
    /// in force up to the head are exactly the set a follower needs before it follows from the
    /// head, and reading them page by page after reading the head misses none.
    pub async fn revocations_in_force(
        &self,
        after: i64,
        head: i64,
        now: Millis,
        limit: i64,
    ) -> StoreResult<Vec<LogEntry>> {
        self.bounded(async { on_backend!(self, b => b.revocations_in_force(after, head, now, limit).await) }).await
    }

    /// Every entry still in force at `now`, oldest first, and the head they were read at: the
    /// cursor to follow from. Held in memory whole: the feed pages
    /// ([`revocations_in_force`](Store::revocations_in_force)) instead.
    pub async fn revocations_snapshot(&self, now: Millis) -> StoreResult<(Vec<LogEntry>, i64)> {
        let head = self.revocation_head().await?;
        let mut out: Vec<LogEntry> = Vec::new();
        loop {
            let after = out.last().map_or(0, |e| e.cursor);
            let page = self.revocations_in_force(after, head, now, 1000).await?;
            let done = page.len() < 1000;
            out.extend(page);
            if done {
                return Ok((out, head));
            }
        }
    }

    // ---- service credentials (docs/API.md §8) ----

    /// Stores a credential (only the digest of its secret) with the `aud` of its SSF stream;
    /// false when the name is taken.
    pub async fn create_service_credential(
        &self,
        name: &str,
        digest: &[u8; 32],
        scopes: &str,
        ssf_aud: Option<&str>,
        now: Millis,
    ) -> StoreResult<bool> {
        self.bounded(async {
            on_backend!(self, b => b.create_service_credential(name, digest, scopes, ssf_aud, now).await)
        })
        .await
    }

    /// Every credential, by name.
    pub async fn service_credentials(&self) -> StoreResult<Vec<ServiceCredentialRow>> {
        self.bounded(async { on_backend!(self, b => b.service_credentials().await) }).await
    }

    /// Deletes a credential and, in the same transaction, the Shared Signals streams it owns
    /// with everything they hold (SECURITY.md G-1); `None` when there is none of that name, else
    /// the ids of the streams deleted.
    pub async fn remove_service_credential(&self, name: &str) -> StoreResult<Option<Vec<String>>> {
        self.bounded(async { on_backend!(self, b => b.remove_service_credential(name).await) }).await
    }

    /// The credential whose secret has this SHA-256 digest.
    pub async fn service_credential_by_digest(&self, digest: &[u8; 32]) -> StoreResult<Option<ServiceCredentialRow>> {
        self.bounded(async { on_backend!(self, b => b.service_credential_by_digest(digest).await) }).await
    }

    /// The credential of this name with its secret's digest (what an SSF access token is bound
    /// to, `tokens::ssf`).
    pub async fn service_credential_binding(&self, name: &str) -> StoreResult<Option<ServiceCredentialBinding>> {
        self.bounded(async { on_backend!(self, b => b.service_credential_binding(name).await) }).await
    }

    /// Sets `last_used_at` to `now` unless it is already after `unless_after` (so racing
    /// requests and instances write it at most once per period).
    pub async fn touch_service_credential(&self, name: &str, now: Millis, unless_after: Millis) -> StoreResult<()> {
        self.bounded(async { on_backend!(self, b => b.touch_service_credential(name, now, unless_after).await) }).await
    }

    // ---- refresh tokens ----

    /// One refresh, in one write transaction (see [`RotateOutcome`]).
    pub async fn rotate_refresh(&self, r: Rotation) -> StoreResult<RotateOutcome> {
        on_backend!(self, b => b.rotate_refresh(r).await)
    }

    /// The session a refresh token (live or rotated) belongs to.
    pub async fn session_of_refresh(&self, hash: &[u8; 32]) -> StoreResult<Option<String>> {
        self.bounded(async { on_backend!(self, b => b.session_of_refresh(hash).await) }).await
    }

    /// The user of the live session whose *current* (unrotated) refresh token has this digest:
    /// the cookie proof of the login throttle (`Sessions::check_login`).
    pub async fn live_session_user_of_refresh(&self, hash: &[u8; 32], now: Millis) -> StoreResult<Option<String>> {
        self.bounded(async { on_backend!(self, b => b.live_session_user_of_refresh(hash, now).await) }).await
    }

    /// The live session whose *current* refresh token has this digest, read only (RFC 7662
    /// introspection: nothing is rotated, extended or counted as reuse).
    pub async fn live_refresh(&self, hash: &[u8; 32], now: Millis) -> StoreResult<Option<LiveRefresh>> {
        self.bounded(async { on_backend!(self, b => b.live_refresh(hash, now).await) }).await
    }

    /// The client addresses of a user's sessions created after `since` (ended ones too), newest
    /// first, at most `limit`: the address proof of the login throttle (`Sessions::check_login`).
    pub async fn session_ips_since(&self, user_id: &str, since: Millis, limit: i64) -> StoreResult<Vec<String>> {
        self.bounded(async { on_backend!(self, b => b.session_ips_since(user_id, since, limit).await) }).await
    }

    /// (live, rotated) refresh tokens of a session: for tests and diagnostics.
    pub async fn refresh_token_counts(&self, session_id: &str) -> StoreResult<(i64, i64)> {
        self.bounded(async { on_backend!(self, b => b.refresh_token_counts(session_id).await) }).await
    }

    // ---- signing keys ----

    // ---- Shared Signals (docs/SSF.md; statements and their rules in `ssf.rs`) ----

    pub async fn ssf_keys(&self) -> StoreResult<Vec<ssf::SsfKeyRow>> {
        self.bounded(async { on_backend!(self, b => b.ssf_keys().await) }).await
    }

    pub async fn ssf_kids_in_use(&self) -> StoreResult<Vec<String>> {
        self.bounded(async { on_backend!(self, b => b.ssf_kids_in_use().await) }).await
    }

    pub async fn ssf_insert_key(&self, k: &ssf::SsfKeyRow, only_if_empty: bool) -> StoreResult<bool> {
        self.bounded(async { on_backend!(self, b => b.ssf_insert_key(k, only_if_empty).await) }).await
    }

    pub async fn ssf_create_stream(&self, s: &ssf::StreamRow) -> StoreResult<ssf::Created> {
        self.bounded(async { on_backend!(self, b => b.ssf_create_stream(s).await) }).await
    }

    pub async fn ssf_stream(&self, id: &str) -> StoreResult<Option<ssf::StreamRow>> {
        self.bounded(async { on_backend!(self, b => b.ssf_stream(id).await) }).await
    }

    pub async fn ssf_streams(&self) -> StoreResult<Vec<ssf::StreamRow>> {
        self.bounded(async { on_backend!(self, b => b.ssf_streams().await) }).await
    }

    pub async fn ssf_update_stream(&self, s: &ssf::StreamRow, now: Millis) -> StoreResult<bool> {
        self.bounded(async { on_backend!(self, b => b.ssf_update_stream(s, now).await) }).await
    }

    pub async fn ssf_delete_stream(&self, id: &str) -> StoreResult<bool> {
        self.bounded(async { on_backend!(self, b => b.ssf_delete_stream(id).await) }).await
    }

    pub async fn ssf_set_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
        by: &str,
        announce: Option<&str>,
        now: Millis,
    ) -> StoreResult<ssf::StatusChange> {
        self.bounded(async { on_backend!(self, b => b.ssf_set_status(id, status, reason, by, announce, now).await) })
            .await
    }

    pub async fn ssf_verify(&self, id: &str, payload: &str, now: Millis, min_interval: Millis) -> StoreResult<bool> {
        self.bounded(async { on_backend!(self, b => b.ssf_verify(id, payload, now, min_interval).await) }).await
    }

    pub async fn ssf_exclude_subject(
        &self,
        id: &str,
        subject: &str,
        keys: (&str, &str),
        exclude: bool,
    ) -> StoreResult<ssf::RuleChange> {
        self.bounded(async { on_backend!(self, b => b.ssf_exclude_subject(id, subject, keys, exclude).await) }).await
    }

    pub async fn ssf_unkeyed_rules(&self, limit: i64) -> StoreResult<Vec<(String, String)>> {
        self.bounded(async { on_backend!(self, b => b.ssf_unkeyed_rules(limit).await) }).await
    }

    pub async fn ssf_set_rule_keys(&self, id: &str, subject: &str, keys: (&str, &str)) -> StoreResult<()> {
        self.bounded(async { on_backend!(self, b => b.ssf_set_rule_keys(id, subject, keys).await) }).await
    }

    pub async fn ssf_has_rules(&self) -> StoreResult<bool> {
        self.bounded(async { on_backend!(self, b => b.ssf_has_rules().await) }).await
    }

    pub async fn ssf_excluding_streams(&self, user_key: &str, session_key: Option<&str>) -> StoreResult<Vec<String>> {
        self.bounded(async { on_backend!(self, b => b.ssf_excluding_streams(user_key, session_key).await) }).await
    }

    pub async fn ssf_has_unexpanded(&self, now: Millis) -> StoreResult<bool> {
        self.bounded(async { on_backend!(self, b => b.ssf_has_unexpanded(now).await) }).await
    }

    pub async fn ssf_claim_signals(
        &self,
        limit: i64,
        now: Millis,
        lease_until: Millis,
    ) -> StoreResult<Vec<ssf::SignalRow>> {
        self.bounded(async { on_backend!(self, b => b.ssf_claim_signals(limit, now, lease_until).await) }).await
    }

    pub async fn ssf_store_expanded(&self, batch: &[ssf::Expanded], now: Millis) -> StoreResult<usize> {
        self.bounded(async { on_backend!(self, b => b.ssf_store_expanded(batch, now).await) }).await
    }

    pub async fn ssf_poll_ready(&self, stream_id: &str, active: bool, now: Millis) -> StoreResult<bool> {
        self.bounded(async { on_backend!(self, b => b.ssf_poll_ready(stream_id, active, now).await) }).await
    }

    pub async fn ssf_due_heads(
        &self,
        stream_id: &str,
        now: Millis,
        limit: i64,
        all: bool,
    ) -> StoreResult<Vec<ssf::PushJob>> {
        self.bounded(async { on_backend!(self, b => b.ssf_due_heads(stream_id, now, limit, all).await) }).await
    }

    pub async fn ssf_lease(
        &self,
        jobs: Vec<ssf::PushJob>,
        now: Millis,
        lease_until: Millis,
    ) -> StoreResult<Vec<ssf::PushJob>> {
        self.bounded(async { on_backend!(self, b => b.ssf_lease(jobs, now, lease_until).await) }).await
    }

    pub async fn ssf_release_lease(&self, job: &ssf::PushJob) -> StoreResult<()> {
        self.bounded(async { on_backend!(self, b => b.ssf_release_lease(job).await) }).await
    }

    pub async fn ssf_repair_head(&self, job: &ssf::PushJob) -> StoreResult<()> {
        self.bounded(async { on_backend!(self, b => b.ssf_repair_head(job).await) }).await
    }

    pub async fn ssf_clear_leases(&self) -> StoreResult<u64> {
        self.bounded(async { on_backend!(self, b => b.ssf_clear_leases().await) }).await
    }

    pub async fn ssf_push_result(&self, job: &ssf::PushJob, result: &ssf::PushResult, now: Millis) -> StoreResult<()> {
        self.bounded(async { on_backend!(self, b => b.ssf_push_result(job, result, now).await) }).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn ssf_poll(
        &self,
        stream_id: &str,
        acks: &[String],
        errs: &[(String, String)],
        max: i64,
        active: bool,
        now: Millis,
    ) -> StoreResult<(Vec<(String, String)>, bool)> {
        self.bounded(async { on_backend!(self, b => b.ssf_poll(stream_id, acks, errs, max, active, now).await) }).await
    }

    pub async fn ssf_undelivered(&self, stream_id: &str, limit: i64) -> StoreResult<Vec<ssf::DeliveryRow>> {
        self.bounded(async { on_backend!(self, b => b.ssf_undelivered(stream_id, limit).await) }).await
    }

    pub async fn ssf_counts(&self) -> StoreResult<Vec<ssf::StreamCounts>> {
        self.bounded(async { on_backend!(self, b => b.ssf_counts().await) }).await
    }

    pub async fn ssf_redeliver(&self, stream_id: &str, since: Millis, now: Millis) -> StoreResult<u64> {
        self.bounded(async { on_backend!(self, b => b.ssf_redeliver(stream_id, since, now).await) }).await
    }

    pub async fn ssf_prune(&self, now: Millis) -> StoreResult<u64> {
        self.bounded(async { on_backend!(self, b => b.ssf_prune(now).await) }).await
    }

    pub async fn signing_keys(&self) -> StoreResult<Vec<KeyRow>> {
        self.bounded(async { on_backend!(self, b => b.signing_keys().await) }).await
    }

    /// Inserts `key`; with `only_if_empty`, only when no key exists yet (first start, raced by
    /// several instances). Returns whether it was inserted.
    pub async fn insert_signing_key(&self, k: &KeyRow, only_if_empty: bool) -> StoreResult<bool> {
        self.bounded(async { on_backend!(self, b => b.insert_signing_key(k, only_if_empty).await) }).await
    }
}

/// Test-only fault injection (feature `test-util`): see [`failpoint`].
#[cfg(any(test, feature = "test-util"))]
impl Store {
    fn failpoints(&self) -> &failpoint::Failpoints {
        on_backend!(self, b => &b.failpoints)
    }

    /// Arms the failpoint `name` (one of [`failpoint`]) for this store and its clones: until
    /// [disarmed](Store::disarm_failpoint), every transaction that reaches it fails there with
    /// [`StoreError::Injected`] (answered as 503 `unavailable`) and rolls back. Lets integration
    /// tests inject a database fault at an exact point (SECURITY.md R6).
    pub fn arm_failpoint(&self, name: &'static str) {
        self.failpoints().set(name, failpoint::Arm::UntilDisarmed);
    }

    /// Arms the failpoint `name` for its next `hits` hits only; then it disarms itself.
    pub fn arm_failpoint_times(&self, name: &'static str, hits: u32) {
        self.failpoints().set(name, failpoint::Arm::Times(hits));
    }

    /// Disarms the failpoint `name`.
    pub fn disarm_failpoint(&self, name: &'static str) {
        self.failpoints().set(name, failpoint::Arm::Off);
    }

    /// Whether `name` is still armed (a failpoint armed for a number of hits is not once they
    /// are used up).
    pub fn failpoint_armed(&self, name: &'static str) -> bool {
        self.failpoints().is_armed(name)
    }

    /// SQLite only: caps the database file at `pages` pages (`None`: no cap), so a test can
    /// make the "disk" full; returns the pages it holds now. `None` on PostgreSQL.
    pub async fn sqlite_limit_pages(&self, pages: Option<i64>) -> Option<StoreResult<i64>> {
        match &self.db {
            Db::Sqlite(s) => Some(s.limit_pages(pages).await),
            Db::Postgres(_) => None,
        }
    }

    /// How many times the code passed the failpoint `name`, armed or not (e.g. how many reads
    /// of the revocation log a listener made).
    pub fn failpoint_passes(&self, name: &'static str) -> u64 {
        self.failpoints().passes(name)
    }
}

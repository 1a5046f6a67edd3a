//! The sessions service: login, refresh, authentication and every way a session ends. The only
//! place that combines the store, the tokens, the denylist and the hub.
//!
//! Every revocation path commits in the database first and then goes through
//! [`Sessions::publish`], the one function that makes a revocation take effect in memory (the
//! denylist, then the sockets of the hub). Revoking before announcing means a client cannot
//! refresh in between. Account changes that end sessions (password change, disabling, the admin
//! role) live here too: they commit with the revocation they cause.
//!
//! Credential state is checked where sessions are created: a login verifies the password
//! outside any transaction (argon2 takes tens of milliseconds), so the session is inserted only
//! if the credential it verified (`credential_version`) is still current and the account still
//! enabled, in the insert's own transaction ([`Store::create_session`]). Password changes,
//! disabling and demotion change the user row and end the user's sessions in one transaction,
//! so every login racing them either fails or creates a session that they end.
//!
//! [`Store::create_session`]: crate::store::Store::create_session

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

use crate::audit::{self, Event, Who};
use crate::clock::{ms, Clock, Millis};
use crate::cluster::Link;
use crate::config::Config;
use crate::denylist::Denylist;
use crate::error::{AppError, Result};
use crate::feed::FeedSignal;
use crate::hub::Hub;
use crate::limits::{Limits, LoginGate};
use crate::metrics::Metrics;
use crate::password::Passwords;
use crate::reason::Reason;
use crate::store::{NewRefresh, NewSession, Revoked, RotateOutcome, Rotation, Selector, SessionRow, Store, UserRow};
use crate::tokens::jwt::{Keys, VerifyError};
use crate::tokens::refresh::RefreshToken;

/// A revocation ending more sessions than this logs one line for all of them (each at debug).
const LOG_EACH_UP_TO: usize = 64;

/// The sessions service: cheap to clone (one `Arc`), so every handler and socket task holds
/// its own handle. Its parts are public for the read-only uses of the rooms above (listings,
/// health, the socket's settings).
#[derive(Clone)]
pub struct Sessions(Arc<Parts>);

/// What the sessions service is made of.
pub struct Parts {
    pub store: Store,
    pub keys: Keys,
    pub denylist: Denylist,
    pub hub: Hub,
    pub passwords: Passwords,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub config: Arc<Config>,
    /// This process's id among the instances sharing a database.
    pub instance_id: Arc<str>,
    /// The link to the other instances (PostgreSQL); `None` on SQLite.
    pub link: Option<Arc<Link>>,
    /// Wakes the revocation feed's followers on this instance (docs/API.md §9).
    pub feed: FeedSignal,
}

impl Sessions {
    pub fn new(parts: Parts) -> Self {
        Sessions(Arc::new(parts))
    }
}

impl std::ops::Deref for Sessions {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// An active token, as RFC 7662 introspection reports it.
#[derive(Debug, Clone)]
pub enum Introspection {
    /// An access token sessiond itself would accept, of a live session.
    Access(crate::tokens::jwt::Claims),
    /// The live session's current refresh token.
    Refresh(crate::store::LiveRefresh),
}

/// The caller of a Bearer-protected endpoint or socket: a valid access token of a live session.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: String,
    pub session_id: String,
    pub roles: Vec<String>,
    /// The token's `exp` (seconds).
    pub exp: i64,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

/// `TokenResponse` of docs/API.md §4.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// An EdDSA JWT (docs/API.md §3.1).
    pub access_token: String,
    #[schema(value_type = String, pattern = "^Bearer$")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Absent in cookie mode, where the token travels only in the `__Host-` cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub refresh_token: Option<String>,
    /// Seconds until the session expires (the earlier of the idle and the absolute expiry).
    pub refresh_expires_in: i64,
    pub session_id: String,
    pub user_id: String,
}

/// Where a login comes from, stored with the session.
#[derive(Debug, Default, Clone)]
pub struct ClientInfo {
    pub device_name: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The client address rate limits are keyed on (after `--trusted-proxies`).
    pub addr: Option<std::net::IpAddr>,
    /// A refresh cookie sent along with a login: proof that lifts the account-wide backoff
    /// when it is a live session of the same account (`Sessions::check_login`).
    pub refresh_cookie: Option<RefreshToken>,
}

impl ClientInfo {
    /// The audit context of this client acting as `actor`.
    pub fn who(&self, actor: Option<&str>) -> Who {
        Who { actor: actor.map(str::to_string), ip: self.ip.clone(), user_agent: self.user_agent.clone() }
    }
}

/// Who a refresh comes from, as one digest: SHA-256 over the client address (after
/// `--trusted-proxies`) and the `User-Agent`, length-prefixed and domain-separated. A rotation
/// stores it with the token it rotates out; inside the grace window only a client with the
/// same binding converges on the successor (SECURITY.md RT6). The one place that decides what
/// "the same client" means: e.g. keying IPv6 clients by their /64 is a change here alone.
///
/// Not a secret (the session row already holds the address and user agent); it only has to be
/// equal for the racing tabs of one browser and unequal for a thief elsewhere.
/// The address part is the client's [`AddressKey`](crate::limits::AddressKey) (its /64 on
/// IPv6, so a privacy-address change inside one network does not count as another client).
pub fn client_binding(addr: Option<crate::limits::AddressKey>, user_agent: Option<&str>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let addr = addr.map(|a| a.to_string()).unwrap_or_default();
    let ua = user_agent.unwrap_or_default();
    let mut h = Sha256::new();
    h.update(b"sessiond client binding v1\0");
    for part in [addr.as_bytes(), ua.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

fn new_refresh() -> (RefreshToken, NewRefresh) {
    let token = RefreshToken::generate();
    let stored = NewRefresh { id: uuid::Uuid::now_v7().to_string(), hash: token.digest() };
    (token, stored)
}

impl Sessions {
    /// Verifies a token and checks that its session is live: the whole hot path, memory only
    /// (see [`Sessions::check_live`] for the fail-closed exception).
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser> {
        let user = self.verify(token, true)?;
        self.check_live(&user).await?;
        Ok(user)
    }

    /// Signature and claims only (no revocation check); `remember` as in [`Keys::verify_with`].
    pub fn verify(&self, token: &str, remember: bool) -> Result<AuthUser> {
        let claims = self.keys.verify_with(token, self.clock.now_secs(), remember).map_err(|e| {
            tracing::debug!(reason = ?e, "access token refused");
            match e {
                VerifyError::Expired => AppError::TokenExpired,
                VerifyError::Invalid(_) => AppError::InvalidToken { presented: true },
            }
        })?;
        Ok(AuthUser { user_id: claims.sub, session_id: claims.sid, roles: claims.roles, exp: claims.exp })
    }

    /// 401 `session_revoked` when the session is in the denylist. While the PostgreSQL listener
    /// is down (the denylist may miss other instances' revocations) it fails closed: the
    /// session is checked in the database.
    pub async fn check_live(&self, user: &AuthUser) -> Result<()> {
        if self.denylist.contains(&user.session_id) {
            tracing::debug!(session_id = %user.session_id, "access token of a revoked session");
            return Err(AppError::SessionRevoked);
        }
        if let Some(link) = &self.link {
            if !link.is_up() {
                match self.store.session(&user.session_id).await? {
                    Some(s) if s.revoked_at.is_none() && s.expires_at() > self.clock.now_ms() => {}
                    Some(s) => {
                        let at = s.revoked_at.unwrap_or(s.expires_at());
                        let reason = s.revoked_reason.as_deref().unwrap_or(Reason::SessionExpired.as_str());
                        self.denylist.insert(&s.id, s.access_expires_at, reason, at);
                        return Err(AppError::SessionRevoked);
                    }
                    None => return Err(AppError::InvalidToken { presented: true }),
                }
            }
        }
        Ok(())
    }

    /// The login throttle of [`crate::limits`], before any password work: `Ok` to go on, else
    /// `429 rate_limited` (exact `Retry-After` for the caller's own block; the cap for an
    /// unproven client blocked by the account key alone). `cookie` is a refresh cookie sent
    /// along (login only). Reads the database only when the account key is what blocks.
    async fn check_login(
        &self,
        account: Option<&str>,
        ip: Option<IpAddr>,
        cookie: Option<&RefreshToken>,
    ) -> Result<()> {
        match self.limits.login_gate(account, ip, self.clock.now_ms()) {
            LoginGate::Open => Ok(()),
            LoginGate::Blocked(wait) => Err(AppError::RateLimited { retry_after_secs: wait.0 }),
            LoginGate::AccountBlocked => {
                let proven = match account {
                    Some(a) => self.proven(a, ip, cookie).await?,
                    None => false,
                };
                if proven {
                    return Ok(());
                }
                Err(AppError::RateLimited { retry_after_secs: crate::limits::account_block_retry_after() })
            }
        }
    }

    /// Whether the client has proven itself for `account` ([`crate::limits`]): the refresh
    /// cookie of a live session of it, or a session of it created recently from the same
    /// address key.
    async fn proven(&self, account: &str, ip: Option<IpAddr>, cookie: Option<&RefreshToken>) -> Result<bool> {
        let Some(user) = self.store.user_by_email(account).await? else { return Ok(false) };
        let now = self.clock.now_ms();
        if let Some(token) = cookie {
            if self.store.live_session_user_of_refresh(&token.digest(), now).await?.as_deref() == Some(&user.id) {
                return Ok(true);
            }
        }
        let Some(key) = ip.map(|ip| self.limits.key(ip)) else { return Ok(false) };
        let (since, most) = crate::limits::proven_address_window(now);
        let ips = self.store.session_ips_since(&user.id, since, most).await?;
        // Stored as text; compared as keys, so a user's other address in the same /64 counts.
        Ok(ips.iter().filter_map(|s| s.parse::<IpAddr>().ok()).any(|ip| self.limits.key(ip) == key))
    }

    /// Verifies the password and starts a new session (never reuses one: no fixation).
    ///
    /// Throttled before any password work (see [`crate::limits`]): `429` while the pair or the
    /// address is in backoff, or the account is and the client is not proven. Unknown, disabled and
    /// wrong-password logins all fail the same way, after the same work, and count the same way.
    pub async fn login(&self, email: &str, password: String, client: ClientInfo) -> Result<TokenResponse> {
        // Malformed email or password length: same answer as a wrong password, after the same work.
        let email = crate::accounts::normalize_email(email).ok();
        let now = self.clock.now_ms();
        if let Err(e) = self.check_login(email.as_deref(), client.addr, client.refresh_cookie.as_ref()).await {
            if let AppError::RateLimited { .. } = e {
                self.metrics.login("rate_limited");
                tracing::info!(ip = client.ip.as_deref(), "login throttled");
            }
            return Err(e);
        }
        let user = match &email {
            Some(e) => self.store.user_by_email(e).await?,
            None => None,
        };
        let hash = user.as_ref().filter(|u| u.disabled_at.is_none()).map(|u| u.password_hash.clone());
        let needs_rehash = hash.as_deref().is_some_and(crate::password::needs_rehash);
        let password_for_rehash = needs_rehash.then(|| password.clone());
        let ok = self.passwords.verify(password, hash, client.addr.map(|a| self.limits.key(a))).await?;
        let Some(user) = user.as_ref().filter(|_| ok) else {
            let detail = user.as_ref().map(|u| (u.id.as_str(), json!({ "disabled": u.disabled_at.is_some() })));
            return Err(self.login_failed(email.as_deref(), &client, now, detail).await);
        };
        if crate::password::needs_rehash(&user.password_hash) {
            self.rehash(user, password_for_rehash).await;
        }
        let cfg = &self.config;
        let (token, stored) = new_refresh();
        let now = self.clock.now_ms();
        let created = self
            .store
            .create_session(NewSession {
                id: uuid::Uuid::now_v7().to_string(),
                user_id: user.id.clone(),
                device_name: client.device_name.clone(),
                user_agent: client.user_agent.clone(),
                ip: client.ip.clone(),
                now,
                idle_ttl: ms(cfg.refresh_idle_ttl),
                max_age: ms(cfg.session_max_age),
                access_ttl: ms(cfg.access_ttl),
                refresh: stored,
                credential_version: user.credential_version,
            })
            .await?;
        // The password was changed or the account disabled while it was being verified: the
        // password proved is no longer the credential, so it fails like a wrong one (RT1).
        let Some((user, session)) = created else {
            let detail = Some((user.id.as_str(), json!({ "stale_credential": true })));
            return Err(self.login_failed(email.as_deref(), &client, now, detail).await);
        };
        if let Some(e) = &email {
            self.limits.login_succeeded(e, client.addr);
        }
        self.metrics.login("success");
        let who = client.who(Some(&user.id));
        audit::record(&self.store, now, &who, Event::new("login_succeeded").user(&user.id).session(&session.id)).await;
        // `user` as read in the session's transaction: its roles, not those of before the wait.
        self.token_response(now, &user, &session, session.access_expires_at, token)
    }

    /// The one way a login fails after the password work (unknown email, wrong password, disabled
    /// account, credential changed meanwhile): counted, throttled and audited alike, one answer.
    /// `target`: the known user and the audit detail.
    async fn login_failed(
        &self,
        email: Option<&str>,
        client: &ClientInfo,
        now: Millis,
        target: Option<(&str, serde_json::Value)>,
    ) -> AppError {
        self.limits.login_failed(email, client.addr, self.clock.now_ms());
        self.metrics.login("invalid_credentials");
        let mut ev = Event::new("login_failed");
        if let Some((id, detail)) = target {
            ev = ev.user(id).detail(detail);
        }
        audit::record(&self.store, now, &client.who(None), ev).await;
        AppError::InvalidCredentials
    }

    /// Stores a hash of `password` made with today's parameters in place of the hash the login
    /// verified, unless that hash has been replaced meanwhile (a password change: the rehash of the
    /// old password is dropped, RT5). Best effort: a failure is logged and the login goes on.
    async fn rehash(&self, user: &UserRow, password: Option<String>) {
        let Some(password) = password else { return };
        let user_id = user.id.as_str();
        // No address share: the login that proved the password has just released its place.
        let res = match self.passwords.hash(password, None).await {
            Ok(h) => self.store.rehash_password(user_id, &user.password_hash, &h).await.map_err(AppError::from),
            Err(e) => Err(e),
        };
        match res {
            Ok(true) => tracing::info!(user_id, "password rehashed with the current parameters"),
            Ok(false) => tracing::info!(user_id, "password changed meanwhile: rehash dropped"),
            Err(e) => tracing::warn!(user_id, error = %e, "password rehash failed"),
        }
    }

    /// One refresh (docs/API.md §3.3). `client` is who presents the token: inside the grace window only
    /// the client that rotated the token converges on its successor ([`client_binding`]).
    pub async fn refresh(&self, presented: &str, client: &ClientInfo) -> Result<TokenResponse> {
        let Some(presented) = RefreshToken::parse(presented) else {
            self.metrics.refresh("invalid");
            return Err(AppError::InvalidRefreshToken);
        };
        let (candidate, stored) = new_refresh();
        let cfg = &self.config;
        let now = self.clock.now_ms();
        let rotation = Rotation {
            now,
            presented_hash: presented.digest(),
            sealed_candidate: presented.seal(&candidate),
            candidate: stored,
            grace: ms(cfg.refresh_reuse_grace),
            idle_ttl: ms(cfg.refresh_idle_ttl),
            access_ttl: ms(cfg.access_ttl),
            client: client_binding(client.addr.map(|a| self.limits.key(a)), client.user_agent.as_deref()),
        };
        // The transaction, and publishing and auditing what it commits, run detached: if the client
        // disconnects, the rotation still completes or rolls back whole, and a reuse revocation
        // never stays committed but unannounced.
        let (st, who) = (self.clone(), client.who(None));
        let outcome = self.detached(async move {
        let outcome = st.revoking(st.store.rotate_refresh(rotation).await)?;
        match &outcome {
            RotateOutcome::Reused { revoked, foreign_client } => {
                tracing::warn!(session_id = ?revoked.first().map(|r| &r.session_id), foreign_client, "refresh token reused: session revoked");
                st.publish(revoked);
                if let Some(r) = revoked.first() {
                    let ev = Event::new("refresh_token_reused").user(&r.user_id).session(&r.session_id);
                    let detail = json!({ "reason": Reason::RefreshTokenReused.as_str(), "foreign_client_in_grace": foreign_client });
                    audit::record(&st.store, now, &who, ev.detail(detail)).await;
                }
            }
            RotateOutcome::Expired(revoked) => {
                st.publish(revoked);
            }
            RotateOutcome::Disabled(revoked) => {
                tracing::warn!(session_id = ?revoked.first().map(|r| &r.session_id), "live session of a disabled account ended");
                st.publish(revoked);
                if let Some(r) = revoked.first() {
                    let sel = Selector::Session(r.session_id.clone());
                    st.audit_revocation(now, &who, &sel, Reason::AccountDisabled, revoked).await;
                }
            }
            // Every convergence on a successor is on record (who, from where): racing tabs
            // and retries are benign, anything else stands out (RT6).
            RotateOutcome::Grace { session, .. } => {
                let ev = Event::new("refresh_grace_used").user(&session.user_id).session(&session.id);
                audit::record(&st.store, now, &who, ev).await;
            }
            RotateOutcome::Rotated { .. } | RotateOutcome::Invalid => {}
        }
        Ok(outcome)
    })
    .await?;
        let (session, access_exp, token) = match outcome {
            RotateOutcome::Rotated { session, access_exp } => {
                self.metrics.refresh("rotated");
                (session, access_exp, candidate)
            }
            RotateOutcome::Grace { session, sealed_successor, access_exp } => {
                let successor = presented
                    .open(&sealed_successor)
                    .ok_or_else(|| AppError::Internal(anyhow::anyhow!("sealed successor does not open")))?;
                self.metrics.refresh("grace");
                (session, access_exp, successor)
            }
            RotateOutcome::Reused { .. } => {
                self.metrics.refresh("reused");
                return Err(AppError::RefreshTokenReused);
            }
            RotateOutcome::Disabled(_) => {
                self.metrics.refresh("disabled");
                return Err(AppError::InvalidRefreshToken);
            }
            RotateOutcome::Expired(_) => {
                self.metrics.refresh("expired");
                return Err(AppError::InvalidRefreshToken);
            }
            RotateOutcome::Invalid => {
                self.metrics.refresh("invalid");
                return Err(AppError::InvalidRefreshToken);
            }
        };
        let user = self.store.user_by_id(&session.user_id).await?.ok_or(AppError::InvalidRefreshToken)?;
        self.token_response(now, &user, &session, access_exp, token)
    }

    /// The token pair; `now` is the instant the session's expiries were computed from, so that
    /// `exp - iat` is exactly the access TTL (unless capped by the session's expiry).
    fn token_response(
        &self,
        now: Millis,
        user: &UserRow,
        session: &SessionRow,
        access_exp: Millis,
        refresh: RefreshToken,
    ) -> Result<TokenResponse> {
        let (access_token, exp) = self.keys.issue(&user.id, &session.id, user.roles(), now, access_exp)?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: (exp - now.div_euclid(1000)).max(0),
            refresh_token: Some(refresh.as_str().to_string()),
            refresh_expires_in: ((session.expires_at() - now) / 1000).max(0),
            session_id: session.id.clone(),
            user_id: user.id.clone(),
        })
    }

    /// Ends the selected live sessions with `reason` and publishes the revocations. Returns the
    /// ended sessions and how many sockets were told: on this instance, plus, with
    /// `count_cluster` on PostgreSQL, those other live instances acknowledge (waited for ≤ 1 s).
    pub async fn end_sessions(
        &self,
        sel: Selector,
        reason: Reason,
        count_cluster: bool,
        who: &Who,
    ) -> Result<(Vec<Revoked>, usize)> {
        let (st, who) = (self.clone(), who.clone());
        self.detached(async move {
            let now = st.clock.now_ms();
            // The audit row is written in the revoking transaction: a crash after the commit
            // cannot lose it (docs/API.md §14).
            let row =
                |revoked: &[Revoked]| revocation_event(&sel, reason, revoked).map(|ev| audit::row(now, &who, &ev));
            let (revoked, notified) = st.revoke_and_publish(&sel, reason, count_cluster, now, Some(&row)).await?;
            if let Some(ev) = revocation_event(&sel, reason, &revoked) {
                audit::log(&who, &ev);
            }
            Ok((revoked, notified))
        })
        .await
    }

    /// One `sessions_revoked` audit event per revocation, written after its commit (the reuse
    /// and expiry paths; `end_sessions` writes its row in the revoking transaction).
    async fn audit_revocation(&self, now: Millis, who: &Who, sel: &Selector, reason: Reason, revoked: &[Revoked]) {
        if let Some(ev) = revocation_event(sel, reason, revoked) {
            audit::record(&self.store, now, who, ev).await;
        }
    }

    /// Commits the revocation, then publishes it; with `count_cluster` on PostgreSQL, adds the
    /// sockets other live instances acknowledge (waited for ≤ 1 s). Call it detached.
    async fn revoke_and_publish(
        &self,
        sel: &Selector,
        reason: Reason,
        count_cluster: bool,
        now: Millis,
        audit: Option<crate::store::AuditOf<'_>>,
    ) -> Result<(Vec<Revoked>, usize)> {
        let cluster = match (&self.link, self.store.postgres(), count_cluster) {
            (Some(bp), Some(pg), true) => {
                let alive_after = now - crate::cluster::INSTANCE_TTL_MS;
                let others = pg.other_instances(&self.instance_id, alive_after).await?;
                let req = uuid::Uuid::new_v4().simple().to_string();
                Some((bp.clone(), bp.expect_acks(&req), req, others))
            }
            _ => None,
        };
        let req = cluster.as_ref().map(|c| c.2.as_str());
        let revoked = match self.revoking(self.store.revoke(sel, reason.as_str(), now, req, audit).await) {
            Ok(r) => r,
            Err(e) => {
                if let Some((bp, _, req, _)) = &cluster {
                    bp.forget_acks(req);
                }
                return Err(e.into());
            }
        };
        let mut notified = self.publish(&revoked);
        if let Some((bp, rx, req, others)) = cluster {
            if !revoked.is_empty() {
                let expected = others.into_iter().collect();
                let remote = crate::cluster::collect_acks(rx, expected, std::time::Duration::from_secs(1)).await;
                notified += remote as usize;
            }
            bp.forget_acks(&req);
        }
        Ok((revoked, notified))
    }

    /// RFC 7009 revocation (docs/API.md §10): a refresh token (live or in its rotation history)
    /// or a genuine access token, expired or not, ends its session with reason `logout`, exactly
    /// like `POST /v1/auth/logout`. Anything else is ignored (the caller answers 200 regardless).
    /// `hint` only orders the attempts, as the RFC allows.
    pub async fn revoke_token(&self, token: &str, hint: Option<&str>, who: &Who) -> Result<()> {
        let access_first = hint == Some("access_token");
        for kind in if access_first { [true, false] } else { [false, true] } {
            if kind {
                if let Ok(claims) = self.keys.verify_ignoring_expiry(token, self.clock.now_secs()) {
                    let who = Who { actor: Some(claims.sub.clone()), ..who.clone() };
                    self.end_sessions(Selector::Session(claims.sid), Reason::Logout, false, &who).await?;
                    return Ok(());
                }
            } else if let Some(rt) = RefreshToken::parse(token) {
                if let Some(session_id) = self.store.session_of_refresh(&rt.digest()).await? {
                    self.end_sessions(Selector::Session(session_id), Reason::Logout, false, who).await?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// RFC 7662 introspection (docs/API.md §10): what the token is, if it is active. Read only:
    /// nothing is rotated, extended or revoked, and a rotated-out refresh token is simply
    /// inactive (never reuse detection).
    pub async fn introspect(&self, token: &str, hint: Option<&str>) -> Result<Option<Introspection>> {
        let refresh_first = hint == Some("refresh_token");
        for refresh in if refresh_first { [true, false] } else { [false, true] } {
            if refresh {
                let Some(rt) = RefreshToken::parse(token) else { continue };
                if let Some(live) = self.store.live_refresh(&rt.digest(), self.clock.now_ms()).await? {
                    return Ok(Some(Introspection::Refresh(live)));
                }
            } else if let Ok(claims) = self.keys.verify_with(token, self.clock.now_secs(), false) {
                let user = AuthUser {
                    user_id: claims.sub.clone(),
                    session_id: claims.sid.clone(),
                    roles: Vec::new(),
                    exp: claims.exp,
                };
                match self.check_live(&user).await {
                    Ok(()) => return Ok(Some(Introspection::Access(claims))),
                    Err(AppError::SessionRevoked | AppError::InvalidToken { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(None)
    }

    /// Logout with a refresh token: ends its session (idempotent: unknown tokens are ignored).
    pub async fn logout_by_refresh(&self, presented: &str, who: &Who) -> Result<()> {
        let Some(token) = RefreshToken::parse(presented) else { return Ok(()) };
        if let Some(session_id) = self.store.session_of_refresh(&token.digest()).await? {
            self.end_sessions(Selector::Session(session_id), Reason::Logout, false, who).await?;
        }
        Ok(())
    }

    /// Changes the password and ends every other session of the user (`password_changed`).
    ///
    /// The current-password check is a login in all but name, so it is throttled exactly like one,
    /// under the same keys (guesses here and at login add up) and before any password work; each
    /// wrong guess is audited (`password_change_failed`) and counted. No session credential counts
    /// as proof against the account-wide backoff here: a stolen session is what this defends against.
    pub async fn change_password(
        &self,
        user_id: &str,
        session_id: &str,
        current: String,
        new: String,
        who: &Who,
    ) -> Result<()> {
        let user = self.store.user_by_id(user_id).await?.ok_or(AppError::InvalidCredentials)?;
        let addr = addr_of(who);
        if let Err(e) = self.check_login(Some(&user.email), addr, None).await {
            if let AppError::RateLimited { .. } = e {
                self.metrics.password_change("rate_limited");
            }
            return Err(e);
        }
        let from = addr.map(|a| self.limits.key(a));
        if !self.passwords.verify(current, Some(user.password_hash), from).await? {
            let now = self.clock.now_ms();
            self.limits.login_failed(Some(&user.email), addr, now);
            self.metrics.password_change("invalid_credentials");
            let ev = Event::new("password_change_failed").user(user_id).session(session_id);
            audit::record(&self.store, now, who, ev).await;
            return Err(AppError::InvalidCredentials);
        }
        self.limits.login_succeeded(&user.email, addr);
        if let Err(e) = crate::password::validate(&new) {
            self.metrics.password_change("invalid_request");
            return Err(e);
        }
        let hash = self.passwords.hash(new, from).await?;
        let (st, uid, sid, who, now) =
            (self.clone(), user_id.to_string(), session_id.to_string(), who.clone(), self.clock.now_ms());
        let verified = user.credential_version;
        self.detached(async move {
            // Another change committed since `current` was verified: it is no longer current.
            let revoked = st
                .revoking(st.store.change_password(&uid, verified, &hash, &sid, now).await)?
                .ok_or(AppError::InvalidCredentials)?;
            st.publish(&revoked);
            st.metrics.password_change("success");
            audit::record(&st.store, now, &who, Event::new("password_changed").user(&uid).session(&sid)).await;
            Ok(())
        })
        .await
    }

    /// Disables a user and ends every session (`account_disabled`, pushed like every revocation),
    /// the flag and the revocation in one transaction; logins then fail like a wrong password, and
    /// so does one that verified the password before the flag (RT1). Re-enabling lets the user log
    /// in again (ended sessions stay ended). `NotFound` for an unknown user.
    pub async fn set_disabled(&self, user_id: &str, disabled: bool, who: &Who) -> Result<usize> {
        let (st, uid, who) = (self.clone(), user_id.to_string(), who.clone());
        // Detached: a committed revocation is always published and audited.
        self.detached(async move {
            let now = st.clock.now_ms();
            let revoked =
                st.revoking(st.store.set_user_disabled(&uid, disabled, now).await)?.ok_or(AppError::NotFound)?;
            st.publish(&revoked);
            let kind = if disabled { "user_disabled" } else { "user_enabled" };
            let ev = Event::new(kind).user(&uid).detail(json!({ "sessions_revoked": revoked.len() }));
            audit::record(&st.store, now, &who, ev).await;
            Ok(revoked.len())
        })
        .await
    }

    /// Grants or revokes the admin role. Admin endpoints check the role in the database on every
    /// call; revoking it also ends every session of the user (`admin_revoked`, in the role change's
    /// transaction, published like every revocation), because verifiers outside sessiond believe
    /// the `admin` claim of an unexpired access token unless its session is revoked (RT14).
    pub async fn set_admin(&self, user_id: &str, admin: bool, who: &Who) -> Result<()> {
        let (st, uid, who) = (self.clone(), user_id.to_string(), who.clone());
        self.detached(async move {
            let now = st.clock.now_ms();
            let revoked = st.revoking(st.store.set_user_admin(&uid, admin, now).await)?.ok_or(AppError::NotFound)?;
            st.publish(&revoked);
            let kind = if admin { "admin_granted" } else { "admin_revoked" };
            let ev = Event::new(kind).user(&uid).detail(json!({ "sessions_revoked": revoked.len() }));
            audit::record(&st.store, now, &who, ev).await;
            Ok(())
        })
        .await
    }

    /// Makes committed revocations take effect in this process: the denylist refuses the
    /// sessions' access tokens from now on, then every socket of those sessions gets the logout
    /// event. Every revocation path ends here. Returns how many sockets were notified.
    pub fn publish(&self, revoked: &[Revoked]) -> usize {
        // One line per session, unless a revocation ends many (logging out everyone at 19k
        // sessions wrote 19k lines inside the fan-out); then one line, and each at debug level.
        if revoked.len() <= LOG_EACH_UP_TO {
            for r in revoked {
                tracing::info!(session_id = %r.session_id, user_id = %r.user_id, reason = %r.reason, "session revoked");
            }
        } else {
            tracing::info!(sessions = revoked.len(), reason = %revoked[0].reason, "sessions revoked");
            for r in revoked {
                tracing::debug!(session_id = %r.session_id, user_id = %r.user_id, reason = %r.reason, "session revoked");
            }
        }
        if let Some(first) = revoked.first() {
            self.metrics.revoked(&first.reason, revoked.len());
        }
        self.apply(revoked)
    }

    /// The in-memory half of [`publish`], idempotent: what another instance's revocation (or a
    /// resync) does here. Logged and counted only where the revocation was made.
    pub fn apply(&self, revoked: &[Revoked]) -> usize {
        for r in revoked {
            self.denylist.insert(&r.session_id, r.access_expires_at, &r.reason, r.at);
        }
        self.metrics.denylist_entries.set(self.denylist.len() as i64);
        if !revoked.is_empty() {
            self.feed.committed();
        }
        // After the denylist: a socket registering meanwhile re-checks it (see `hub`).
        self.hub.notify(revoked)
    }

    /// Ends expired sessions (`session_expired`) and prunes the denylist. Run periodically.
    pub async fn sweep(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let revoked = self.revoking(self.store.sweep_expired(now, ms(self.config.refresh_reuse_grace)).await)?;
        self.publish(&revoked);
        self.audit_revocation(now, &Who::system(), &Selector::Expired, Reason::SessionExpired, &revoked).await;
        self.limits.prune(now);
        self.denylist.prune(now);
        self.metrics.denylist_entries.set(self.denylist.len() as i64);
        self.count_live_sessions().await;
        Ok(revoked.len())
    }

    /// Recounts the live sessions of every instance for the `active_sessions` gauge. Done here, by
    /// the periodic sweep, and never per scrape: a `COUNT(*)` over the sessions per `/metrics`
    /// request let anonymous scrapers load the database (SECURITY.md RT10).
    pub async fn count_live_sessions(&self) {
        match self.store.count_live_sessions(self.clock.now_ms()).await {
            Ok(n) => {
                self.metrics.active_sessions.set(n);
            }
            Err(e) => tracing::warn!(error = %e, "counting live sessions failed"),
        }
    }

    /// Rebuilds the denylist from the database: every revoked session whose tokens may live (and
    /// closes any local socket of those sessions: the listener's resync after a reconnect).
    pub async fn rebuild_denylist(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let min_exp = crate::store::revocation_exp_floor(now);
        let revoked = self.store.revoked_since(min_exp).await?;
        self.apply(&revoked);
        Ok(revoked.len())
    }
}

impl Sessions {
    /// Runs `work` in its own task and waits for it, at most `--db-timeout` (docs/API.md §6):
    /// if the request is dropped (the client went away) or stops waiting (503), the work still
    /// completes, so a committed change is never left unpublished or unaudited.
    async fn detached<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let task = tokio::spawn(work);
        match tokio::time::timeout(self.store.db_timeout(), task).await {
            Ok(joined) => joined.map_err(|e| AppError::Internal(e.into()))?,
            Err(_) => Err(AppError::Unavailable(anyhow::anyhow!(
                "the database did not answer within --db-timeout; the change goes on and is published once it commits"
            ))),
        }
    }

    /// A revoking write's result. When it failed because the database could not be reached, it
    /// may have committed all the same (the commit sent, its answer lost): its revocations may
    /// be in the database but not in this instance's denylist, and this instance skips its own
    /// notifications. On PostgreSQL the instance then fails closed and its listener resyncs
    /// (SECURITY.md G-4); SQLite's one writer answers every commit.
    fn revoking<T>(&self, result: crate::store::StoreResult<T>) -> crate::store::StoreResult<T> {
        if let (Err(e), Some(link)) = (&result, &self.link) {
            if e.is_outage() {
                tracing::warn!(error = %e, "a revoking write failed with its outcome unknown: failing closed until a resync");
                link.request_resync(self.clock.now_ms());
            }
        }
        result
    }
}

/// The `sessions_revoked` audit event of a revocation (one per revocation, not per session:
/// "log out everyone" is one row), naming the user or session it was aimed at; `None` when it
/// ended nothing.
fn revocation_event<'a>(sel: &'a Selector, reason: Reason, revoked: &'a [Revoked]) -> Option<Event<'a>> {
    let first = revoked.first()?;
    let mut ev = Event::new("sessions_revoked").detail(json!({ "reason": reason.as_str(), "sessions": revoked.len() }));
    match sel {
        Selector::Session(id) | Selector::OwnSession { session_id: id, .. } => {
            ev = ev.session(id).user(&first.user_id);
        }
        Selector::User { user_id, .. } => ev = ev.user(user_id),
        Selector::Everyone | Selector::Expired => {}
    }
    Some(ev)
}

/// The client address of an audited caller (its `ip` is that address as text).
fn addr_of(who: &Who) -> Option<std::net::IpAddr> {
    who.ip.as_deref().and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::client_binding;
    use crate::limits::AddressKey;

    #[test]
    fn rt6_the_client_binding_separates_addresses_and_user_agents() {
        let key = |ip: &str| Some(AddressKey::new(ip.parse().unwrap(), 32, 64));
        let (a, b, mapped) = (key("198.51.100.7"), key("203.0.113.66"), key("::ffff:198.51.100.7"));
        let (v6, same_64, other_64) = (key("2001:db8:1:2::7"), key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:3::7"));
        assert_eq!(client_binding(v6, Some("UA/1")), client_binding(same_64, Some("UA/1")), "one /64");
        assert_ne!(client_binding(v6, Some("UA/1")), client_binding(other_64, Some("UA/1")));
        assert_eq!(client_binding(a, Some("UA/1")), client_binding(a, Some("UA/1")));
        assert_eq!(client_binding(a, Some("UA/1")), client_binding(mapped, Some("UA/1")), "one address, two spellings");
        assert_ne!(client_binding(a, Some("UA/1")), client_binding(b, Some("UA/1")));
        assert_ne!(client_binding(a, Some("UA/1")), client_binding(a, Some("UA/2")));
        assert_ne!(client_binding(a, None), client_binding(None, None));
    }
}

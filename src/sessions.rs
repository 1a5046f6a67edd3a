//! Login, refresh, logout and every other way a session ends: the only place that combines the
//! store, the tokens and the revocation fan-out.
//!
//! Every revocation path commits in the database first and then goes through [`publish`], the
//! one function that makes a revocation take effect in memory (the denylist; the WebSocket hub
//! hooks in here). Revoking before announcing means a client cannot refresh in between.
//!
//! Credential state is checked where sessions are created: a login verifies the password
//! outside any transaction (argon2 takes tens of milliseconds), so the session is inserted only
//! if the credential it verified (`credential_version`) is still current and the account still
//! enabled, in the insert's own transaction ([`Store::create_session`]). Password changes,
//! disabling and demotion change the user row and end the user's sessions in one transaction,
//! so every login racing them either fails or creates a session that they end.
//!
//! [`Store::create_session`]: crate::store::Store::create_session

use serde::Serialize;
use serde_json::json;

use crate::audit::{self, Event, Who};
use crate::clock::{ms, Millis};
use crate::error::{AppError, Result};
use crate::state::AppState;
use crate::store::{NewRefresh, NewSession, Revoked, RotateOutcome, Rotation, Selector, SessionRow, UserRow};
use crate::tokens::refresh::RefreshToken;

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
    /// when it is a live session of the same account (`limits::check_login`).
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

/// Normalises an email: trimmed, lower case, one `@` with both sides non-empty.
pub fn normalize_email(email: &str) -> Result<String> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= 254
        && e.split('@').count() == 2
        && e.split('@').all(|p| !p.is_empty())
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(AppError::InvalidRequest("The email address is not valid."));
    }
    Ok(e)
}

/// Creates a user. Fails with `email_taken` for a known email.
pub async fn register(state: &AppState, email: &str, password: String, admin: bool, who: &Who) -> Result<String> {
    let email = normalize_email(email)?;
    crate::password::validate(&password)?;
    let hash = state.passwords.hash(password, addr_of(who).map(|a| state.limits.key(a))).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let now = state.clock.now_ms();
    state.store.create_user(&id, &email, &hash, admin, now).await?;
    audit::record(&state.store, now, who, Event::new("user_registered").user(&id).detail(json!({ "admin": admin })))
        .await;
    Ok(id)
}

/// Verifies the password and starts a new session (never reuses one: no fixation).
///
/// Throttled before any password work (see [`crate::limits`]): `429` while the pair or the
/// address is in backoff, or the account is and the client is not proven. Unknown, disabled and
/// wrong-password logins all fail the same way, after the same work, and count the same way.
pub async fn login(state: &AppState, email: &str, password: String, client: ClientInfo) -> Result<TokenResponse> {
    // Malformed email or password length: same answer as a wrong password, after the same work.
    let email = normalize_email(email).ok();
    let now = state.clock.now_ms();
    if let Err(e) =
        crate::limits::check_login(state, email.as_deref(), client.addr, client.refresh_cookie.as_ref()).await
    {
        if let AppError::RateLimited { .. } = e {
            state.metrics.login("rate_limited");
            tracing::info!(ip = client.ip.as_deref(), "login throttled");
        }
        return Err(e);
    }
    let user = match &email {
        Some(e) => state.store.user_by_email(e).await?,
        None => None,
    };
    let hash = user.as_ref().filter(|u| u.disabled_at.is_none()).map(|u| u.password_hash.clone());
    let needs_rehash = hash.as_deref().is_some_and(crate::password::needs_rehash);
    let password_for_rehash = needs_rehash.then(|| password.clone());
    let ok = state.passwords.verify(password, hash, client.addr.map(|a| state.limits.key(a))).await?;
    let Some(user) = user.as_ref().filter(|_| ok) else {
        let detail = user.as_ref().map(|u| (u.id.as_str(), json!({ "disabled": u.disabled_at.is_some() })));
        return Err(login_failed(state, email.as_deref(), &client, now, detail).await);
    };
    if crate::password::needs_rehash(&user.password_hash) {
        rehash(state, user, password_for_rehash).await;
    }
    let cfg = &state.config;
    let (token, stored) = new_refresh();
    let now = state.clock.now_ms();
    let created = state
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
        return Err(login_failed(state, email.as_deref(), &client, now, detail).await);
    };
    if let Some(e) = &email {
        state.limits.login_succeeded(e, client.addr);
    }
    state.metrics.login("success");
    let who = client.who(Some(&user.id));
    audit::record(&state.store, now, &who, Event::new("login_succeeded").user(&user.id).session(&session.id)).await;
    // `user` as read in the session's transaction: its roles, not those of before the wait.
    token_response(state, now, &user, &session, session.access_expires_at, token)
}

/// The one way a login fails after the password work (unknown email, wrong password, disabled
/// account, credential changed meanwhile): counted, throttled and audited alike, one answer.
/// `target`: the known user and the audit detail.
async fn login_failed(
    state: &AppState,
    email: Option<&str>,
    client: &ClientInfo,
    now: Millis,
    target: Option<(&str, serde_json::Value)>,
) -> AppError {
    state.limits.login_failed(email, client.addr, state.clock.now_ms());
    state.metrics.login("invalid_credentials");
    let mut ev = Event::new("login_failed");
    if let Some((id, detail)) = target {
        ev = ev.user(id).detail(detail);
    }
    audit::record(&state.store, now, &client.who(None), ev).await;
    AppError::InvalidCredentials
}

/// Stores a hash of `password` made with today's parameters in place of the hash the login
/// verified, unless that hash has been replaced meanwhile (a password change: the rehash of the
/// old password is dropped, RT5). Best effort: a failure is logged and the login goes on.
async fn rehash(state: &AppState, user: &UserRow, password: Option<String>) {
    let Some(password) = password else { return };
    let user_id = user.id.as_str();
    // No address share: the login that proved the password has just released its place.
    let res = match state.passwords.hash(password, None).await {
        Ok(h) => state.store.rehash_password(user_id, &user.password_hash, &h).await.map_err(AppError::from),
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
pub async fn refresh(state: &AppState, presented: &str, client: &ClientInfo) -> Result<TokenResponse> {
    let Some(presented) = RefreshToken::parse(presented) else {
        state.metrics.refresh("invalid");
        return Err(AppError::InvalidRefreshToken);
    };
    let (candidate, stored) = new_refresh();
    let cfg = &state.config;
    let now = state.clock.now_ms();
    let rotation = Rotation {
        now,
        presented_hash: presented.digest(),
        sealed_candidate: presented.seal(&candidate),
        candidate: stored,
        grace: ms(cfg.refresh_reuse_grace),
        idle_ttl: ms(cfg.refresh_idle_ttl),
        access_ttl: ms(cfg.access_ttl),
        client: client_binding(client.addr.map(|a| state.limits.key(a)), client.user_agent.as_deref()),
    };
    // The transaction, and publishing and auditing what it commits, run detached: if the client
    // disconnects, the rotation still completes or rolls back whole, and a reuse revocation
    // never stays committed but unannounced.
    let (st, who) = (state.clone(), client.who(None));
    let outcome = detached(async move {
        let outcome = st.store.rotate_refresh(rotation).await?;
        match &outcome {
            RotateOutcome::Reused { revoked, foreign_client } => {
                tracing::warn!(session_id = ?revoked.first().map(|r| &r.session_id), foreign_client, "refresh token reused: session revoked");
                publish(&st, revoked);
                if let Some(r) = revoked.first() {
                    let ev = Event::new("refresh_token_reused").user(&r.user_id).session(&r.session_id);
                    let detail = json!({ "reason": "refresh_token_reused", "foreign_client_in_grace": foreign_client });
                    audit::record(&st.store, now, &who, ev.detail(detail)).await;
                }
            }
            RotateOutcome::Expired(revoked) => {
                publish(&st, revoked);
            }
            RotateOutcome::Disabled(revoked) => {
                tracing::warn!(session_id = ?revoked.first().map(|r| &r.session_id), "live session of a disabled account ended");
                publish(&st, revoked);
                if let Some(r) = revoked.first() {
                    let sel = Selector::Session(r.session_id.clone());
                    audit_revocation(&st, now, &who, &sel, "account_disabled", revoked).await;
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
            state.metrics.refresh("rotated");
            (session, access_exp, candidate)
        }
        RotateOutcome::Grace { session, sealed_successor, access_exp } => {
            let successor = presented
                .open(&sealed_successor)
                .ok_or_else(|| AppError::Internal(anyhow::anyhow!("sealed successor does not open")))?;
            state.metrics.refresh("grace");
            (session, access_exp, successor)
        }
        RotateOutcome::Reused { .. } => {
            state.metrics.refresh("reused");
            return Err(AppError::RefreshTokenReused);
        }
        RotateOutcome::Disabled(_) => {
            state.metrics.refresh("disabled");
            return Err(AppError::InvalidRefreshToken);
        }
        RotateOutcome::Expired(_) => {
            state.metrics.refresh("expired");
            return Err(AppError::InvalidRefreshToken);
        }
        RotateOutcome::Invalid => {
            state.metrics.refresh("invalid");
            return Err(AppError::InvalidRefreshToken);
        }
    };
    let user = state.store.user_by_id(&session.user_id).await?.ok_or(AppError::InvalidRefreshToken)?;
    token_response(state, now, &user, &session, access_exp, token)
}

/// The token pair; `now` is the instant the session's expiries were computed from, so that
/// `exp - iat` is exactly the access TTL (unless capped by the session's expiry).
fn token_response(
    state: &AppState,
    now: Millis,
    user: &UserRow,
    session: &SessionRow,
    access_exp: Millis,
    refresh: RefreshToken,
) -> Result<TokenResponse> {
    let (access_token, exp) = state.keys.issue(&user.id, &session.id, user.roles(), now, access_exp)?;
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
    state: &AppState,
    sel: Selector,
    reason: &'static str,
    count_cluster: bool,
    who: &Who,
) -> Result<(Vec<Revoked>, usize)> {
    let (st, who) = (state.clone(), who.clone());
    detached(async move {
        let now = st.clock.now_ms();
        let (revoked, notified) = revoke_and_publish(&st, &sel, reason, count_cluster, now).await?;
        audit_revocation(&st, now, &who, &sel, reason, &revoked).await;
        Ok((revoked, notified))
    })
    .await
}

/// Runs `work` in its own task and waits for it: if the request is dropped (the client went
/// away), the work still completes, so a committed change is never left unpublished or
/// unaudited.
async fn detached<T: Send + 'static>(work: impl std::future::Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    tokio::spawn(work).await.map_err(|e| AppError::Internal(e.into()))?
}

/// One `sessions_revoked` audit event per revocation (not per session: "log out everyone" is one
/// row), naming the user or session it was aimed at.
async fn audit_revocation(state: &AppState, now: Millis, who: &Who, sel: &Selector, reason: &str, revoked: &[Revoked]) {
    if revoked.is_empty() {
        return;
    }
    let mut ev = Event::new("sessions_revoked").detail(json!({ "reason": reason, "sessions": revoked.len() }));
    match sel {
        Selector::Session(id) | Selector::OwnSession { session_id: id, .. } => {
            ev = ev.session(id).user(&revoked[0].user_id);
        }
        Selector::User { user_id, .. } => ev = ev.user(user_id),
        Selector::Everyone | Selector::Expired => {}
    }
    audit::record(&state.store, now, who, ev).await;
}

/// Commits the revocation, then publishes it; with `count_cluster` on PostgreSQL, adds the
/// sockets other live instances acknowledge (waited for ≤ 1 s). Call it detached.
async fn revoke_and_publish(
    st: &AppState,
    sel: &Selector,
    reason: &'static str,
    count_cluster: bool,
    now: Millis,
) -> Result<(Vec<Revoked>, usize)> {
    let cluster = match (&st.backplane, st.store.postgres(), count_cluster) {
        (Some(bp), Some(pg), true) => {
            let alive_after = now - crate::backplane::INSTANCE_TTL_MS;
            let others = pg.other_instances(&st.instance_id, alive_after).await?;
            let req = uuid::Uuid::new_v4().simple().to_string();
            Some((bp.clone(), bp.expect_acks(&req), req, others))
        }
        _ => None,
    };
    let req = cluster.as_ref().map(|c| c.2.as_str());
    let revoked = match st.store.revoke(sel, reason, now, req).await {
        Ok(r) => r,
        Err(e) => {
            if let Some((bp, _, req, _)) = &cluster {
                bp.forget_acks(req);
            }
            return Err(e.into());
        }
    };
    let mut notified = publish(st, &revoked);
    if let Some((bp, rx, req, others)) = cluster {
        if !revoked.is_empty() {
            let expected = others.into_iter().collect();
            let remote = crate::backplane::collect_acks(rx, expected, std::time::Duration::from_secs(1)).await;
            notified += remote as usize;
        }
        bp.forget_acks(&req);
    }
    Ok((revoked, notified))
}

/// Logout with a refresh token: ends its session (idempotent: unknown tokens are ignored).
pub async fn logout_by_refresh(state: &AppState, presented: &str, who: &Who) -> Result<()> {
    let Some(token) = RefreshToken::parse(presented) else { return Ok(()) };
    if let Some(session_id) = state.store.session_of_refresh(&token.digest()).await? {
        end_sessions(state, Selector::Session(session_id), "logout", false, who).await?;
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
    state: &AppState,
    user_id: &str,
    session_id: &str,
    current: String,
    new: String,
    who: &Who,
) -> Result<()> {
    let user = state.store.user_by_id(user_id).await?.ok_or(AppError::InvalidCredentials)?;
    let addr = addr_of(who);
    if let Err(e) = crate::limits::check_login(state, Some(&user.email), addr, None).await {
        if let AppError::RateLimited { .. } = e {
            state.metrics.password_change("rate_limited");
        }
        return Err(e);
    }
    let from = addr.map(|a| state.limits.key(a));
    if !state.passwords.verify(current, Some(user.password_hash), from).await? {
        let now = state.clock.now_ms();
        state.limits.login_failed(Some(&user.email), addr, now);
        state.metrics.password_change("invalid_credentials");
        let ev = Event::new("password_change_failed").user(user_id).session(session_id);
        audit::record(&state.store, now, who, ev).await;
        return Err(AppError::InvalidCredentials);
    }
    state.limits.login_succeeded(&user.email, addr);
    if let Err(e) = crate::password::validate(&new) {
        state.metrics.password_change("invalid_request");
        return Err(e);
    }
    let hash = state.passwords.hash(new, from).await?;
    let (st, uid, sid, who, now) =
        (state.clone(), user_id.to_string(), session_id.to_string(), who.clone(), state.clock.now_ms());
    let verified = user.credential_version;
    detached(async move {
        // Another change committed since `current` was verified: it is no longer current.
        let revoked =
            st.store.change_password(&uid, verified, &hash, &sid, now).await?.ok_or(AppError::InvalidCredentials)?;
        publish(&st, &revoked);
        st.metrics.password_change("success");
        audit::record(&st.store, now, &who, Event::new("password_changed").user(&uid).session(&sid)).await;
        Ok(())
    })
    .await
}

/// The client address of an audited caller (its `ip` is that address as text).
fn addr_of(who: &Who) -> Option<std::net::IpAddr> {
    who.ip.as_deref().and_then(|ip| ip.parse().ok())
}

/// Disables a user and ends every session (`account_disabled`, pushed like every revocation),
/// the flag and the revocation in one transaction; logins then fail like a wrong password, and
/// so does one that verified the password before the flag (RT1). Re-enabling lets the user log
/// in again (ended sessions stay ended). `NotFound` for an unknown user.
pub async fn set_disabled(state: &AppState, user_id: &str, disabled: bool, who: &Who) -> Result<usize> {
    let (st, uid, who) = (state.clone(), user_id.to_string(), who.clone());
    // Detached: a committed revocation is always published and audited.
    detached(async move {
        let now = st.clock.now_ms();
        let revoked = st.store.set_user_disabled(&uid, disabled.then_some(now)).await?.ok_or(AppError::NotFound)?;
        publish(&st, &revoked);
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
pub async fn set_admin(state: &AppState, user_id: &str, admin: bool, who: &Who) -> Result<()> {
    let (st, uid, who) = (state.clone(), user_id.to_string(), who.clone());
    detached(async move {
        let now = st.clock.now_ms();
        let revoked = st.store.set_user_admin(&uid, admin, now).await?.ok_or(AppError::NotFound)?;
        publish(&st, &revoked);
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
pub fn publish(state: &AppState, revoked: &[Revoked]) -> usize {
    for r in revoked {
        tracing::info!(session_id = %r.session_id, user_id = %r.user_id, reason = %r.reason, "session revoked");
    }
    if let Some(first) = revoked.first() {
        state.metrics.revoked(&first.reason, revoked.len());
    }
    apply(state, revoked)
}

/// The in-memory half of [`publish`], idempotent: what another instance's revocation (or a
/// resync) does here. Logged and counted only where the revocation was made.
pub fn apply(state: &AppState, revoked: &[Revoked]) -> usize {
    for r in revoked {
        state.denylist.insert(&r.session_id, r.access_expires_at, &r.reason, r.at);
    }
    state.metrics.denylist_entries.set(state.denylist.len() as i64);
    if !revoked.is_empty() {
        state.feed.committed();
    }
    // After the denylist: a socket registering meanwhile re-checks it (see `hub`).
    state.hub.notify(revoked)
}

/// Ends expired sessions (`session_expired`) and prunes the denylist. Run periodically.
pub async fn sweep(state: &AppState) -> Result<usize> {
    let now = state.clock.now_ms();
    let revoked = state.store.sweep_expired(now, ms(state.config.refresh_reuse_grace)).await?;
    publish(state, &revoked);
    audit_revocation(state, now, &Who::system(), &Selector::Expired, "session_expired", &revoked).await;
    state.limits.prune(now);
    state.denylist.prune(now);
    state.metrics.denylist_entries.set(state.denylist.len() as i64);
    count_live_sessions(state).await;
    Ok(revoked.len())
}

/// Recounts the live sessions of every instance for the `active_sessions` gauge. Done here, by
/// the periodic sweep, and never per scrape: a `COUNT(*)` over the sessions per `/metrics`
/// request let anonymous scrapers load the database (SECURITY.md RT10).
pub async fn count_live_sessions(state: &AppState) {
    match state.store.count_live_sessions(state.clock.now_ms()).await {
        Ok(n) => {
            state.metrics.active_sessions.set(n);
        }
        Err(e) => tracing::warn!(error = %e, "counting live sessions failed"),
    }
}

/// Rebuilds the denylist from the database: every revoked session whose tokens may live (and
/// closes any local socket of those sessions: the listener's resync after a reconnect).
pub async fn rebuild_denylist(state: &AppState) -> Result<usize> {
    let now = state.clock.now_ms();
    let min_exp = crate::store::revocation_exp_floor(now);
    let revoked = state.store.revoked_since(min_exp).await?;
    apply(state, &revoked);
    Ok(revoked.len())
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

//! `/v1/auth/*`: register, login, refresh, logout, logout-all, own sessions, password change.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::cookie::{check_csrf, clear_refresh_cookie, refresh_from_cookie, set_refresh_cookie};
use super::extract::{authenticate, bearer, truncate, AuthUser, Client, JsonBody};
use super::session_views;
use crate::error::{AppError, Result};
use crate::sessions::{self, ClientInfo, TokenResponse};
use crate::state::AppState;
use crate::store::Selector;

/// Longest `device_name` kept.
const MAX_DEVICE_NAME: usize = 128;

pub fn router(state: &AppState) -> Router<AppState> {
    // The two endpoints that accept the refresh cookie check CSRF before anything else, so a
    // cross-site form post gets 403 whatever its body.
    let cookie_routes = Router::new()
        .route("/v1/auth/refresh", post(refresh_session))
        .route("/v1/auth/logout", post(logout))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), csrf_guard));
    Router::new()
        .merge(cookie_routes)
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/logout-all", post(logout_all))
        .route("/v1/auth/sessions", get(list_sessions))
        .route("/v1/auth/sessions/{id}", delete(revoke_session))
        .route("/v1/auth/password", post(change_password))
}

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
    device_name: Option<String>,
    /// Browsers: put the refresh token in a `__Host-` cookie instead of the body.
    #[serde(default)]
    refresh_cookie: bool,
}

/// https://datatracker.ietf.org/doc/html/rfc9457 bodies on failure; 201 `{user_id}`.
async fn register(
    State(state): State<AppState>,
    client: Client,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<impl IntoResponse> {
    if !state.config.allow_registration {
        return Err(AppError::RegistrationDisabled);
    }
    if let Err(wait) = state.limits.register_allowed(client.addr) {
        return Err(AppError::RateLimited { retry_after_secs: wait.0 });
    }
    let user_id = sessions::register(&state, &body.email, body.password, false, &client.who(None)).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "user_id": user_id }))))
}

/// A refresh cookie sent along is a session this browser is leaving: it ends once the new one
/// exists (SECURITY.md S4, ASVS 7.2.4: a login never keeps or adopts a presented session).
async fn login(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Response> {
    let info = ClientInfo {
        device_name: body.device_name.map(|d| truncate(d.trim(), MAX_DEVICE_NAME)).filter(|d| !d.is_empty()),
        user_agent: client.user_agent.clone(),
        ip: client.ip.clone(),
        addr: client.addr,
    };
    let tokens = sessions::login(&state, &body.email, body.password, info).await?;
    if let Some(previous) = refresh_from_cookie(&headers) {
        sessions::logout_by_refresh(&state, &previous, &client.who(Some(&tokens.user_id))).await?;
    }
    Ok(token_reply(tokens, body.refresh_cookie))
}

/// 403 for a request from a foreign browser `Origin` (a cross-site form post, whether or not
/// its browser attached the cookie), and for one that carries the refresh cookie without our
/// Origin and CSRF header. Runs before the body is read.
async fn csrf_guard(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let foreign_origin = req.headers().get(header::ORIGIN).is_some_and(|o| !state.origin_allowed(o));
    if foreign_origin {
        return AppError::Forbidden.into_response();
    }
    if refresh_from_cookie(req.headers()).is_some() {
        if let Err(e) = check_csrf(&state, req.headers()) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// A token response; in cookie mode the refresh token moves from the body to `Set-Cookie`.
fn token_reply(mut tokens: TokenResponse, cookie: bool) -> Response {
    if !cookie {
        return Json(tokens).into_response();
    }
    let refresh = tokens.refresh_token.take().unwrap_or_default();
    let set = set_refresh_cookie(&refresh, tokens.refresh_expires_in);
    let mut res = Json(tokens).into_response();
    res.headers_mut().insert(header::SET_COOKIE, set);
    res
}

/// An error that also deletes the refresh cookie (it is no longer any good).
fn clearing_cookie(e: AppError) -> Response {
    let mut res = e.into_response();
    res.headers_mut().insert(header::SET_COOKIE, clear_refresh_cookie());
    res
}

#[derive(Deserialize)]
struct RefreshBody {
    /// Required unless the request uses the refresh cookie.
    refresh_token: Option<String>,
}

/// Body token (any client), or the `__Host-` cookie (browsers; CSRF-checked).
async fn refresh_session(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<Response> {
    if let Some(token) = body.refresh_token {
        return Ok(token_reply(sessions::refresh(&state, &token, &client.who(None)).await?, false));
    }
    let Some(token) = refresh_from_cookie(&headers) else {
        // A browser in cookie mode without (or with an expired) cookie: signed out.
        if headers.contains_key(super::cookie::CSRF_HEADER) {
            return Err(AppError::InvalidRefreshToken);
        }
        return Err(AppError::InvalidRequest("A required field is missing or has the wrong type."));
    };
    // (CSRF was checked by `csrf_guard`.)
    match sessions::refresh(&state, &token, &client.who(None)).await {
        Ok(tokens) => Ok(token_reply(tokens, true)),
        Err(e @ (AppError::InvalidRefreshToken | AppError::RefreshTokenReused)) => Ok(clearing_cookie(e)),
        Err(e) => Err(e),
    }
}

#[derive(Deserialize, Default)]
struct LogoutBody {
    refresh_token: Option<String>,
}

/// Idempotent: 204 also for an already-ended session or an unknown refresh token. Uses the body
/// refresh token, else the Bearer token, else the refresh cookie (CSRF-checked); a browser's
/// cookie is deleted whenever one was sent.
async fn logout(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LogoutBody>,
) -> Result<Response> {
    let done = || {
        let mut res = StatusCode::NO_CONTENT.into_response();
        if refresh_from_cookie(&headers).is_some() {
            res.headers_mut().insert(header::SET_COOKIE, clear_refresh_cookie());
        }
        res
    };
    if let Some(rt) = body.refresh_token {
        sessions::logout_by_refresh(&state, &rt, &client.who(None)).await?;
        return Ok(done());
    }
    if let Some(token) = bearer(&headers)? {
        match authenticate(&state, token).await {
            Ok(user) => {
                let who = client.who(Some(&user.user_id));
                sessions::end_sessions(&state, Selector::Session(user.session_id), "logout", false, &who).await?;
            }
            Err(AppError::SessionRevoked) => {}
            Err(e) => return Err(e),
        }
        return Ok(done());
    }
    let Some(rt) = refresh_from_cookie(&headers) else {
        return Err(AppError::InvalidToken { presented: false });
    };
    sessions::logout_by_refresh(&state, &rt, &client.who(None)).await?;
    Ok(done())
}

#[derive(Deserialize, Default)]
struct LogoutAllBody {
    #[serde(default)]
    keep_current: bool,
}

async fn logout_all(
    State(state): State<AppState>,
    client: Client,
    user: AuthUser,
    JsonBody(body): JsonBody<LogoutAllBody>,
) -> Result<Json<serde_json::Value>> {
    let (except, reason) =
        if body.keep_current { (Some(user.session_id.clone()), "logout_others") } else { (None, "logout_all") };
    let who = client.who(Some(&user.user_id));
    let (revoked, _) =
        sessions::end_sessions(&state, Selector::User { user_id: user.user_id, except }, reason, false, &who).await?;
    Ok(Json(serde_json::json!({ "revoked_sessions": revoked.len() })))
}

async fn list_sessions(State(state): State<AppState>, user: AuthUser) -> Result<Json<serde_json::Value>> {
    let sessions = session_views(&state, &user.user_id, &user.session_id).await?;
    Ok(Json(serde_json::json!({ "sessions": sessions })))
}

/// 404 for a session that is not the caller's or no longer live.
async fn revoke_session(
    State(state): State<AppState>,
    client: Client,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let who = client.who(Some(&user.user_id));
    let sel = Selector::OwnSession { user_id: user.user_id, session_id: id };
    let (revoked, _) = sessions::end_sessions(&state, sel, "session_revoked", false, &who).await?;
    if revoked.is_empty() {
        return Err(AppError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct PasswordChange {
    current_password: String,
    new_password: String,
}

async fn change_password(
    State(state): State<AppState>,
    client: Client,
    user: AuthUser,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<StatusCode> {
    let who = client.who(Some(&user.user_id));
    let (uid, sid) = (&user.user_id, &user.session_id);
    sessions::change_password(&state, uid, sid, body.current_password, body.new_password, &who).await?;
    Ok(StatusCode::NO_CONTENT)
}

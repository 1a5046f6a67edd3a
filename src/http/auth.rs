//! `/v1/auth/*`: register, login, refresh, logout, logout-all, own sessions, password change.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::cookie::{check_csrf, clear_refresh_cookie, refresh_from_cookie, set_refresh_cookie};
use std::sync::Arc;

use super::extract::{bearer, truncate, AuthUser, Client, JsonBody, PathId};
use super::{session_views, SessionList};
use crate::accounts::{Accounts, Via};
use crate::config::Config;
use crate::error::{AppError, Result};
use crate::limits::Limits;
use crate::reason::Reason;
use crate::sessions::{ClientInfo, Sessions, TokenResponse};
use crate::state::{AllowedOrigins, AppState};
use crate::store::Selector;
use crate::tokens::refresh::RefreshToken;

/// Longest `device_name` kept.
const MAX_DEVICE_NAME: usize = 128;

pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    // The two endpoints that accept the refresh cookie check CSRF before anything else, so a
    // cross-site form post gets 403 whatever its body.
    let cookie_routes = OpenApiRouter::default()
        .routes(routes!(refresh_session))
        .routes(routes!(logout))
        .route_layer(axum::middleware::from_fn_with_state(state.allowed_origins.clone(), csrf_guard));
    OpenApiRouter::default()
        .merge(cookie_routes)
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(logout_all))
        .routes(routes!(list_sessions))
        .routes(routes!(revoke_session))
        .routes(routes!(change_password))
}

/// The body of `POST /v1/auth/register`.
#[derive(Deserialize, ToSchema)]
struct Registration {
    /// An email address: after trimming and lower-casing, one `@` with text on both sides, no
    /// whitespace or control characters, at most 254 bytes.
    #[schema(pattern = r"^\s*[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+\s*$", max_length = 254)]
    email: String,
    /// 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
}

/// `{user_id}` of the new account.
#[derive(Serialize, ToSchema)]
struct Registered {
    user_id: String,
}

/// The body of `POST /v1/auth/login`.
#[derive(Deserialize, ToSchema)]
struct Credentials {
    email: String,
    password: String,
    /// A name for the session, shown in session lists (trimmed, at most 128 bytes kept).
    device_name: Option<String>,
    /// Browsers: put the refresh token in the `__Host-sessiond_refresh` cookie (`Secure;
    /// HttpOnly; SameSite=Strict`) instead of the body.
    #[serde(default)]
    refresh_cookie: bool,
}

problems!(RegisterProblems: InvalidRequest, RegistrationDisabled, EmailTaken, PayloadTooLarge, RateLimited, Unavailable);

/// Creates an account.
#[utoipa::path(
    post,
    path = "/v1/auth/register",
    tag = "auth",
    request_body = Registration,
    responses(
        (status = 201, description = "The account exists; log in next.", body = Registered,
            links(
                ("login" = (operation_id = "login", description = "Log in with the new account.",
                    request_body = json!({"email": "$request.body#/email", "password": "$request.body#/password"}))),
                ("user_sessions" = (operation_id = "user_sessions", parameters(("id" = "$response.body#/user_id")))),
                ("force_logout_user" = (operation_id = "force_logout_user", parameters(("id" = "$response.body#/user_id")))),
                ("disable_user" = (operation_id = "disable_user", parameters(("id" = "$response.body#/user_id")))),
                ("enable_user" = (operation_id = "enable_user", parameters(("id" = "$response.body#/user_id")))),
                ("grant_admin" = (operation_id = "grant_admin", parameters(("id" = "$response.body#/user_id")))),
                ("revoke_admin" = (operation_id = "revoke_admin", parameters(("id" = "$response.body#/user_id")))),
                ("audit_log" = (operation_id = "audit_log", parameters(("user_id" = "$response.body#/user_id")))),
            )
        ),
        RegisterProblems,
    )
)]
async fn register(
    State(accounts): State<Accounts>,
    State(config): State<Arc<Config>>,
    State(limits): State<Arc<Limits>>,
    client: Client,
    JsonBody(body): JsonBody<Registration>,
) -> Result<impl IntoResponse> {
    if !config.allow_registration {
        return Err(AppError::RegistrationDisabled);
    }
    if let Err(wait) = limits.register_allowed(client.addr) {
        return Err(AppError::RateLimited { retry_after_secs: wait.0 });
    }
    let user_id = accounts.register(&body.email, body.password, false, &client.who(None), Via::Api).await?;
    Ok((StatusCode::CREATED, Json(Registered { user_id })))
}

problems!(LoginProblems: InvalidRequest, InvalidCredentials, PayloadTooLarge, RateLimited, Unavailable);

/// Logs in.
///
/// Starts a new session (never reuses one). Throttled on failures per (account, address),
/// per address and per account; the account-wide block spares a client that proves itself (a
/// live refresh cookie of the account, or an address it logged in from recently) and gives
/// others `Retry-After: 60`.
///
/// A refresh cookie sent along is a session this browser is leaving: it ends once the new one
/// exists (SECURITY.md S4, ASVS 7.2.4: a login never keeps or adopts a presented session).
#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "auth",
    request_body = Credentials,
    params(
        ("__Host-sessiond_refresh" = Option<String>, Cookie, nullable = false,
            description = "Cookie mode: a refresh cookie sent along is a session this browser is leaving; \
                it ends once the new one exists."),
    ),
    responses(
        (status = 200, description = "A new session and its token pair. With `refresh_cookie: true` the \
            refresh token is not in the body but in the `__Host-sessiond_refresh` cookie.",
            body = TokenResponse,
            headers(
                ("Cache-Control" = String, description = "`no-store`"),
                ("Set-Cookie" = String, description = "Cookie mode only: `__Host-sessiond_refresh=…; Path=/; \
                    Secure; HttpOnly; SameSite=Strict; Max-Age=…`"),
            ),
            links(
                ("refresh" = (operation_id = "refresh", request_body = json!({"refresh_token": "$response.body#/refresh_token"}))),
                ("logout" = (operation_id = "logout", request_body = json!({"refresh_token": "$response.body#/refresh_token"}))),
                ("user_sessions" = (operation_id = "user_sessions", parameters(("id" = "$response.body#/user_id")))),
                ("revoke_any_session" = (operation_id = "revoke_any_session", parameters(("id" = "$response.body#/session_id")))),
            )
        ),
        LoginProblems,
    )
)]
async fn login(
    State(sessions): State<Sessions>,
    client: Client,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Response> {
    let info = ClientInfo {
        device_name: body.device_name.map(|d| device_name(&d)).filter(|d| !d.is_empty()),
        refresh_cookie: refresh_from_cookie(&headers).as_deref().and_then(RefreshToken::parse),
        ..client.info()
    };
    let tokens = sessions.login(&body.email, body.password, info).await?;
    if let Some(previous) = refresh_from_cookie(&headers) {
        sessions.logout_by_refresh(&previous, &client.who(Some(&tokens.user_id))).await?;
    }
    Ok(token_reply(tokens, body.refresh_cookie))
}

/// A `device_name` as kept: display text without control characters (PostgreSQL refuses NUL in
/// text), trimmed, at most [`MAX_DEVICE_NAME`] bytes.
fn device_name(raw: &str) -> String {
    let printable: String = raw.chars().filter(|c| !c.is_control()).collect();
    truncate(printable.trim(), MAX_DEVICE_NAME)
}

/// 403 for a request from a foreign browser `Origin` (a cross-site form post, whether or not
/// its browser attached the cookie), and for one that carries the refresh cookie without our
/// Origin and CSRF header. Runs before the body is read.
async fn csrf_guard(
    State(origins): State<Arc<AllowedOrigins>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let foreign_origin = req.headers().get(header::ORIGIN).is_some_and(|o| !origins.allows(o));
    if foreign_origin {
        return AppError::Forbidden.into_response();
    }
    if refresh_from_cookie(req.headers()).is_some() {
        if let Err(e) = check_csrf(&origins, req.headers()) {
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

/// The body of `POST /v1/auth/refresh`.
#[derive(Deserialize, ToSchema)]
struct RefreshBody {
    /// Required, except in cookie mode (then the body may be `{}` or empty).
    #[schema(value_type = String)]
    refresh_token: Option<String>,
}

problems!(RefreshProblems: InvalidRequest, InvalidRefreshToken, RefreshTokenReused, Forbidden, PayloadTooLarge, Unavailable);

/// Refreshes: rotates a refresh token.
///
/// docs/API.md §3.3: the presented token is consumed and a new pair returned. The token comes from the body (any client) or, in cookie mode (browsers), from the
/// `__Host-sessiond_refresh` cookie; a cookie request must come from an allowed `Origin` and
/// carry `X-Sessiond-Csrf` (else 403, before the body is read).
#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    operation_id = "refresh",
    request_body(content = RefreshBody, description = "`{refresh_token}`. In cookie mode (outside this schema) \
        the body is `{}` or empty and the token comes from the cookie."),
    params(
        ("__Host-sessiond_refresh" = Option<String>, Cookie, nullable = false,
            description = "Cookie mode: the refresh token (set by login with `refresh_cookie: true`)."),
        ("X-Sessiond-Csrf" = Option<String>, Header, nullable = false,
            description = "Cookie mode: any non-empty value; required with the cookie."),
    ),
    responses(
        (status = 200, description = "The new pair. In cookie mode the refresh token moves to `Set-Cookie`.",
            body = TokenResponse,
            headers(
                ("Cache-Control" = String, description = "`no-store`"),
                ("Set-Cookie" = String, description = "Cookie mode only: the rotated refresh cookie (or its \
                    deletion on a 401)."),
            ),
            links(
                ("refresh" = (operation_id = "refresh", request_body = json!({"refresh_token": "$response.body#/refresh_token"}))),
                ("logout" = (operation_id = "logout", request_body = json!({"refresh_token": "$response.body#/refresh_token"}))),
            )
        ),
        RefreshProblems,
    )
)]
async fn refresh_session(
    State(sessions): State<Sessions>,
    client: Client,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<Response> {
    if let Some(token) = body.refresh_token {
        return Ok(token_reply(sessions.refresh(&token, &client.info()).await?, false));
    }
    let Some(token) = refresh_from_cookie(&headers) else {
        // No token at all: a missing field (docs/API.md §3.3), also for a browser in cookie
        // mode that has no cookie (never signed in, or signed out). Only a token that was sent
        // and does not work is 401, so `sessiond.js` can tell "signed out" (no banner) from
        // "your session ended while the page was closed" (the banner).
        return Err(AppError::InvalidRequest("No refresh token was sent (neither in the body nor as the cookie)."));
    };
    // (CSRF was checked by `csrf_guard`.)
    match sessions.refresh(&token, &client.info()).await {
        Ok(tokens) => Ok(token_reply(tokens, true)),
        Err(e @ (AppError::InvalidRefreshToken | AppError::RefreshTokenReused)) => Ok(clearing_cookie(e)),
        Err(e) => Err(e),
    }
}

/// The body of `POST /v1/auth/logout` (optional).
#[derive(Deserialize, Default, ToSchema)]
struct LogoutBody {
    refresh_token: Option<String>,
}

problems!(LogoutProblems: InvalidRequest, InvalidToken, TokenExpired, Forbidden, PayloadTooLarge, Unavailable);

/// Logs out.
///
/// Ends the caller's session (reason `logout`). Idempotent: 204 also for an already-ended
/// session or an unknown refresh token. Uses the body's refresh token, else the Bearer token,
/// else the refresh cookie (cookie mode, CSRF-checked); a browser's cookie is deleted whenever
/// one was sent. 401 only without any credential (or with an unusable Bearer token).
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    request_body(content = Option<LogoutBody>, description = "`{refresh_token}`, or nothing with a Bearer token or the cookie."),
    params(
        ("__Host-sessiond_refresh" = Option<String>, Cookie, nullable = false, description = "Cookie mode: the refresh token."),
        ("X-Sessiond-Csrf" = Option<String>, Header, nullable = false,
            description = "Cookie mode: any non-empty value; required with the cookie."),
    ),
    security((), ("bearer" = [])),
    responses(
        (status = 204, description = "The session has ended (or had already).",
            headers(("Set-Cookie" = String, description = "Cookie mode: deletes the refresh cookie."))),
        LogoutProblems,
    )
)]
async fn logout(
    State(sessions): State<Sessions>,
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
        sessions.logout_by_refresh(&rt, &client.who(None)).await?;
        return Ok(done());
    }
    if let Some(token) = bearer(&headers)? {
        match sessions.authenticate(token).await {
            Ok(user) => {
                let who = client.who(Some(&user.user_id));
                sessions.end_sessions(Selector::Session(user.session_id), Reason::Logout, false, &who).await?;
            }
            Err(AppError::SessionRevoked) => {}
            Err(e) => return Err(e),
        }
        return Ok(done());
    }
    let Some(rt) = refresh_from_cookie(&headers) else {
        return Err(AppError::InvalidToken { presented: false });
    };
    sessions.logout_by_refresh(&rt, &client.who(None)).await?;
    Ok(done())
}

/// The body of `POST /v1/auth/logout-all` (optional).
#[derive(Deserialize, Default, ToSchema)]
struct LogoutAllBody {
    /// Keep the caller's own session (reason `logout_others` instead of `logout_all`).
    #[serde(default)]
    keep_current: bool,
}

/// `{revoked_sessions}`.
#[derive(Serialize, ToSchema)]
struct Revoked {
    /// How many live sessions ended.
    revoked_sessions: usize,
}

problems!(LogoutAllProblems: InvalidRequest, InvalidToken, TokenExpired, SessionRevoked, PayloadTooLarge, Unavailable);

/// Logs the caller out everywhere.
///
/// Every session of the caller ends (reason `logout_all`), or every other one with
/// `keep_current` (reason `logout_others`).
#[utoipa::path(
    post,
    path = "/v1/auth/logout-all",
    tag = "auth",
    request_body = Option<LogoutAllBody>,
    security(("bearer" = [])),
    responses((status = 200, description = "The sessions have ended.", body = Revoked), LogoutAllProblems)
)]
async fn logout_all(
    State(sessions): State<Sessions>,
    client: Client,
    user: AuthUser,
    JsonBody(body): JsonBody<LogoutAllBody>,
) -> Result<Json<Revoked>> {
    let (except, reason) = if body.keep_current {
        (Some(user.session_id.clone()), Reason::LogoutOthers)
    } else {
        (None, Reason::LogoutAll)
    };
    let who = client.who(Some(&user.user_id));
    let (revoked, _) =
        sessions.end_sessions(Selector::User { user_id: user.user_id, except }, reason, false, &who).await?;
    Ok(Json(Revoked { revoked_sessions: revoked.len() }))
}

problems!(BearerProblems: InvalidToken, TokenExpired, SessionRevoked, Unavailable);

/// The caller's live sessions.
#[utoipa::path(
    get,
    path = "/v1/auth/sessions",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, description = "Live sessions only.", body = SessionList), BearerProblems)
)]
async fn list_sessions(State(sessions): State<Sessions>, user: AuthUser) -> Result<Json<SessionList>> {
    let views = session_views(&sessions, &user.user_id, &user.session_id).await?;
    Ok(Json(SessionList { sessions: views }))
}

problems!(RevokeSessionProblems: InvalidRequest, InvalidToken, TokenExpired, SessionRevoked, NotFound, Unavailable);

/// Ends one of the caller's sessions.
///
/// Reason `session_revoked`; 404 for a session that is not the caller's or no longer live.
#[utoipa::path(
    delete,
    path = "/v1/auth/sessions/{id}",
    tag = "auth",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._~-]{1,128}$", description = "A session id.")),
    security(("bearer" = [])),
    responses((status = 204, description = "The session has ended."), RevokeSessionProblems)
)]
async fn revoke_session(
    State(sessions): State<Sessions>,
    client: Client,
    user: AuthUser,
    PathId(id): PathId,
) -> Result<StatusCode> {
    let who = client.who(Some(&user.user_id));
    let sel = Selector::OwnSession { user_id: user.user_id, session_id: id };
    let (revoked, _) = sessions.end_sessions(sel, Reason::SessionRevoked, false, &who).await?;
    if revoked.is_empty() {
        return Err(AppError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /v1/auth/password`.
#[derive(Deserialize, ToSchema)]
struct PasswordChange {
    current_password: String,
    /// 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    new_password: String,
}

problems!(PasswordProblems: InvalidRequest, InvalidCredentials, InvalidToken, TokenExpired, SessionRevoked, PayloadTooLarge, RateLimited, Unavailable);

/// Changes the caller's password.
///
/// 401 `invalid_credentials` when `current_password` is wrong; every other session ends
/// (reason `password_changed`). Wrong current passwords count as failed logins of the account
/// (the same backoff, then 429 `rate_limited` with `Retry-After`) and are audited
/// (`password_change_failed`).
#[utoipa::path(
    post,
    path = "/v1/auth/password",
    tag = "auth",
    request_body = PasswordChange,
    security(("bearer" = [])),
    responses((status = 204, description = "Changed; the caller's session stays."), PasswordProblems)
)]
async fn change_password(
    State(sessions): State<Sessions>,
    client: Client,
    user: AuthUser,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<StatusCode> {
    let who = client.who(Some(&user.user_id));
    let (uid, sid) = (&user.user_id, &user.session_id);
    sessions.change_password(uid, sid, body.current_password, body.new_password, &who).await?;
    Ok(StatusCode::NO_CONTENT)
}

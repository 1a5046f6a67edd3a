//! `/v1/auth/*`: register, login, refresh, logout, logout-all, own sessions, password change.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::extract::{authenticate, bearer, truncate, AuthUser, Client, JsonBody};
use super::session_views;
use crate::error::{AppError, Result};
use crate::sessions::{self, ClientInfo, TokenResponse};
use crate::state::AppState;
use crate::store::Selector;

/// Longest `device_name` kept.
const MAX_DEVICE_NAME: usize = 128;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh_session))
        .route("/v1/auth/logout", post(logout))
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
}

/// https://datatracker.ietf.org/doc/html/rfc9457 bodies on failure; 201 `{user_id}`.
async fn register(State(state): State<AppState>, JsonBody(body): JsonBody<Credentials>) -> Result<impl IntoResponse> {
    if !state.config.allow_registration {
        return Err(AppError::RegistrationDisabled);
    }
    let user_id = sessions::register(&state, &body.email, body.password, false).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "user_id": user_id }))))
}

async fn login(
    State(state): State<AppState>,
    client: Client,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Json<TokenResponse>> {
    let info = ClientInfo {
        device_name: body.device_name.map(|d| truncate(d.trim(), MAX_DEVICE_NAME)).filter(|d| !d.is_empty()),
        user_agent: client.user_agent,
        ip: client.ip,
    };
    Ok(Json(sessions::login(&state, &body.email, body.password, info).await?))
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh_session(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<Json<TokenResponse>> {
    Ok(Json(sessions::refresh(&state, &body.refresh_token).await?))
}

#[derive(Deserialize, Default)]
struct LogoutBody {
    refresh_token: Option<String>,
}

/// Idempotent: 204 also for an already-ended session or an unknown refresh token.
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LogoutBody>,
) -> Result<StatusCode> {
    if let Some(rt) = body.refresh_token {
        sessions::logout_by_refresh(&state, &rt).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    let Some(token) = bearer(&headers)? else {
        return Err(AppError::InvalidToken { presented: false });
    };
    let user = match authenticate(&state, token).await {
        Ok(u) => u,
        Err(AppError::SessionRevoked) => return Ok(StatusCode::NO_CONTENT),
        Err(e) => return Err(e),
    };
    sessions::end_sessions(&state, Selector::Session(user.session_id), "logout", false).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct LogoutAllBody {
    #[serde(default)]
    keep_current: bool,
}

async fn logout_all(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<LogoutAllBody>,
) -> Result<Json<serde_json::Value>> {
    let (except, reason) =
        if body.keep_current { (Some(user.session_id.clone()), "logout_others") } else { (None, "logout_all") };
    let (revoked, _) =
        sessions::end_sessions(&state, Selector::User { user_id: user.user_id, except }, reason, false).await?;
    Ok(Json(serde_json::json!({ "revoked_sessions": revoked.len() })))
}

async fn list_sessions(State(state): State<AppState>, user: AuthUser) -> Result<Json<serde_json::Value>> {
    let sessions = session_views(&state, &user.user_id, &user.session_id).await?;
    Ok(Json(serde_json::json!({ "sessions": sessions })))
}

/// 404 for a session that is not the caller's or no longer live.
async fn revoke_session(State(state): State<AppState>, user: AuthUser, Path(id): Path<String>) -> Result<StatusCode> {
    let sel = Selector::OwnSession { user_id: user.user_id, session_id: id };
    let (revoked, _) = sessions::end_sessions(&state, sel, "session_revoked", false).await?;
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
    user: AuthUser,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<StatusCode> {
    sessions::change_password(&state, &user.user_id, &user.session_id, body.current_password, body.new_password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

//! `/v1/admin/*`: users, their sessions, and forced logout. Every handler takes `AdminUser`
//! (401 without a valid token, 403 without the admin role).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::extract::AdminUser;
use super::session_views;
use crate::clock::rfc3339;
use crate::error::{AppError, Result};
use crate::sessions;
use crate::state::AppState;
use crate::store::Selector;

/// Page size bounds of `GET /v1/admin/users`.
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/users", get(list_users))
        .route("/v1/admin/users/{id}/sessions", get(user_sessions))
        .route("/v1/admin/users/{id}/logout-all", post(force_logout_user))
        .route("/v1/admin/sessions/{id}", delete(revoke_any_session))
        .route("/v1/admin/logout-everyone", post(logout_everyone))
}

#[derive(Deserialize)]
struct Page {
    limit: Option<String>,
    after: Option<String>,
    /// Case-insensitive substring of the email.
    q: Option<String>,
}

async fn list_users(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(page): Query<Page>,
) -> Result<Json<serde_json::Value>> {
    let limit = match page.limit.as_deref() {
        None | Some("") => DEFAULT_PAGE,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or(AppError::InvalidRequest("limit must be an integer from 1 to 500."))?,
    };
    let after = page.after.filter(|a| !a.is_empty());
    let q = page.q.filter(|q| !q.is_empty());
    let mut rows = state.store.list_users(limit + 1, after.as_deref(), q.as_deref(), state.clock.now_ms()).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|u| u.id.clone())
    } else {
        None
    };
    let users: Vec<_> = rows
        .iter()
        .map(|u| {
            serde_json::json!({
                "user_id": u.id,
                "email": u.email,
                "roles": if u.is_admin != 0 { vec!["admin"] } else { vec![] },
                "created_at": rfc3339(u.created_at),
                "active_sessions": u.active_sessions,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "users": users, "next": next })))
}

async fn user_sessions(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    state.store.user_by_id(&id).await?.ok_or(AppError::NotFound)?;
    let sessions = session_views(&state, &id, &admin.session_id).await?;
    Ok(Json(serde_json::json!({ "sessions": sessions })))
}

async fn force_logout_user(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    state.store.user_by_id(&id).await?.ok_or(AppError::NotFound)?;
    let (revoked, notified) =
        sessions::end_sessions(&state, Selector::User { user_id: id, except: None }, "admin_logout", true).await?;
    Ok(Json(serde_json::json!({
        "revoked_sessions": revoked.len(),
        "notified_connections": notified,
    })))
}

async fn revoke_any_session(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let (revoked, _) = sessions::end_sessions(&state, Selector::Session(id), "admin_revoked", false).await?;
    if revoked.is_empty() {
        return Err(AppError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The "signing key leaked" button: every live session of every user ends, the caller's too.
async fn logout_everyone(State(state): State<AppState>, _admin: AdminUser) -> Result<Json<serde_json::Value>> {
    let (revoked, notified) = sessions::end_sessions(&state, Selector::Everyone, "admin_logout", true).await?;
    Ok(Json(serde_json::json!({
        "revoked_sessions": revoked.len(),
        "notified_connections": notified,
    })))
}

//! `/v1/admin/*`: users, their sessions, and forced logout. Every handler takes `AdminUser`
//! (401 without a valid token, 403 without the admin role).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::extract::{AdminUser, Client};
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
        .route("/v1/admin/users/{id}/disable", post(disable_user))
        .route("/v1/admin/users/{id}/enable", post(enable_user))
        .route("/v1/admin/users/{id}/admin", post(grant_admin).delete(revoke_admin))
        .route("/v1/admin/audit", get(audit_log))
}

/// `limit` of a page: absent → the default, else an integer in 1..=MAX_PAGE.
fn page_limit(limit: Option<&str>) -> Result<i64> {
    match limit {
        None | Some("") => Ok(DEFAULT_PAGE),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or(AppError::InvalidRequest("limit must be an integer from 1 to 500.")),
    }
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
    let limit = page_limit(page.limit.as_deref())?;
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
    client: Client,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    state.store.user_by_id(&id).await?.ok_or(AppError::NotFound)?;
    let who = client.who(Some(&admin.user_id));
    let sel = Selector::User { user_id: id, except: None };
    let (revoked, notified) = sessions::end_sessions(&state, sel, "admin_logout", true, &who).await?;
    Ok(Json(serde_json::json!({
        "revoked_sessions": revoked.len(),
        "notified_connections": notified,
    })))
}

async fn revoke_any_session(
    State(state): State<AppState>,
    client: Client,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let who = client.who(Some(&admin.user_id));
    let (revoked, _) = sessions::end_sessions(&state, Selector::Session(id), "admin_revoked", false, &who).await?;
    if revoked.is_empty() {
        return Err(AppError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The "signing key leaked" button: every live session of every user ends, the caller's too.
async fn logout_everyone(
    State(state): State<AppState>,
    client: Client,
    AdminUser(admin): AdminUser,
) -> Result<Json<serde_json::Value>> {
    let who = client.who(Some(&admin.user_id));
    let (revoked, notified) = sessions::end_sessions(&state, Selector::Everyone, "admin_logout", true, &who).await?;
    Ok(Json(serde_json::json!({
        "revoked_sessions": revoked.len(),
        "notified_connections": notified,
    })))
}

/// An admin may not disable or demote themself (the last admin could lock everyone out).
fn not_self(admin: &crate::http::extract::AuthUser, id: &str) -> Result<()> {
    if admin.user_id == id {
        return Err(AppError::InvalidRequest("Admins cannot disable or demote themselves."));
    }
    Ok(())
}

/// Disables the user and ends every session (`account_disabled`, pushed to their sockets).
async fn disable_user(
    State(state): State<AppState>,
    client: Client,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    not_self(&admin, &id)?;
    let revoked = sessions::set_disabled(&state, &id, true, &client.who(Some(&admin.user_id))).await?;
    Ok(Json(serde_json::json!({ "user_id": id, "disabled": true, "revoked_sessions": revoked })))
}

async fn enable_user(
    State(state): State<AppState>,
    client: Client,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    sessions::set_disabled(&state, &id, false, &client.who(Some(&admin.user_id))).await?;
    Ok(Json(serde_json::json!({ "user_id": id, "disabled": false })))
}

async fn grant_admin(
    State(state): State<AppState>,
    client: Client,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    sessions::set_admin(&state, &id, true, &client.who(Some(&admin.user_id))).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_admin(
    State(state): State<AppState>,
    client: Client,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    not_self(&admin, &id)?;
    sessions::set_admin(&state, &id, false, &client.who(Some(&admin.user_id))).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AuditQuery {
    user_id: Option<String>,
    /// The `id` of the last event already seen.
    after: Option<String>,
    limit: Option<String>,
}

/// The audit log in order, `limit` events after `after`, optionally about one user (as actor
/// or target). `next` is the `after` of the following page, `null` at the end.
async fn audit_log(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>> {
    let limit = page_limit(q.limit.as_deref())?;
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or(AppError::InvalidRequest("after must be the id of an audit event."))?,
    };
    let user = q.user_id.filter(|u| !u.is_empty());
    let mut rows = state.store.audit_events(user.as_deref(), after, limit + 1).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|e| e.id.to_string())
    } else {
        None
    };
    let events: Vec<_> = rows
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "id": e.id.to_string(),
                "at": rfc3339(e.at),
                "event": e.event,
                "actor_user_id": e.actor_user_id,
                "target_user_id": e.target_user_id,
                "target_session_id": e.target_session_id,
                "ip": e.ip,
                "user_agent": e.user_agent,
                "detail": e.detail.and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok()),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "events": events, "next": next })))
}

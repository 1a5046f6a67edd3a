//! `/v1/admin/*`: users, their sessions, and forced logout. Every handler takes `AdminUser`
//! (401 without a valid token, 403 without the admin role).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{no_nul, AdminUser, Client, PathId};
use super::{session_views, SessionList};
use crate::clock::rfc3339;
use crate::error::{AppError, Result};
use crate::reason::Reason;
use crate::sessions::Sessions;
use crate::state::AppState;
use crate::store::Selector;

/// Page size bounds of `GET /v1/admin/users`.
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(list_users))
        .routes(routes!(user_sessions))
        .routes(routes!(force_logout_user))
        .routes(routes!(revoke_any_session))
        .routes(routes!(logout_everyone))
        .routes(routes!(disable_user))
        .routes(routes!(enable_user))
        .routes(routes!(grant_admin, revoke_admin))
        .routes(routes!(audit_log))
}

problems!(AdminProblems: InvalidToken, TokenExpired, SessionRevoked, Forbidden, Unavailable);
problems!(AdminPageProblems: InvalidRequest, InvalidToken, TokenExpired, SessionRevoked, Forbidden, Unavailable);
problems!(AdminUserProblems: InvalidRequest, InvalidToken, TokenExpired, SessionRevoked, Forbidden, NotFound, Unavailable);

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

/// `limit`: an integer from 1 to 500; empty or absent means the default (50).
fn page_size() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).maximum(Some(MAX_PAGE)))
        .item(ObjectBuilder::new().schema_type(Type::String).max_length(Some(0)))
        .into()
}

/// `after` of the audit log: an event id (an integer from 0); empty or absent means the start.
fn event_cursor() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).maximum(Some(i64::MAX)))
        .item(ObjectBuilder::new().schema_type(Type::String).max_length(Some(0)))
        .into()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Page size, 1 to 500; empty or absent: 50.
    #[param(schema_with = page_size)]
    limit: Option<String>,
    /// The `next` of the previous page.
    #[param(pattern = "^[^\\x00]*$")]
    after: Option<String>,
    /// Case-insensitive substring of the email.
    #[param(pattern = "^[^\\x00]*$")]
    q: Option<String>,
}

/// A user as the admin list shows it.
#[derive(Serialize, ToSchema)]
struct UserView {
    user_id: String,
    email: String,
    /// `["admin"]` or `[]`.
    roles: Vec<&'static str>,
    #[schema(format = DateTime)]
    created_at: String,
    /// Live sessions now.
    active_sessions: i64,
}

/// One page of users, in id order; `next` is the `after` of the following page, `null` at the end.
#[derive(Serialize, ToSchema)]
struct UserPage {
    users: Vec<UserView>,
    #[schema(required = true)]
    next: Option<String>,
}

/// Every user, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/admin/users",
    tag = "admin",
    params(Page),
    security(("bearer" = [])),
    responses((status = 200, description = "A page of users.", body = UserPage), AdminPageProblems)
)]
async fn list_users(
    State(sessions): State<Sessions>,
    _admin: AdminUser,
    Query(page): Query<Page>,
) -> Result<Json<UserPage>> {
    let limit = page_limit(page.limit.as_deref())?;
    no_nul(&[page.after.as_deref(), page.q.as_deref()])?;
    let after = page.after.filter(|a| !a.is_empty());
    let q = page.q.filter(|q| !q.is_empty());
    let mut rows =
        sessions.store.list_users(limit + 1, after.as_deref(), q.as_deref(), sessions.clock.now_ms()).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|u| u.id.clone())
    } else {
        None
    };
    let users = rows
        .iter()
        .map(|u| UserView {
            user_id: u.id.clone(),
            email: u.email.clone(),
            roles: if u.is_admin { vec!["admin"] } else { vec![] },
            created_at: rfc3339(u.created_at),
            active_sessions: u.active_sessions,
        })
        .collect();
    Ok(Json(UserPage { users, next }))
}

/// A user's live sessions.
#[utoipa::path(
    get,
    path = "/v1/admin/users/{id}/sessions",
    tag = "admin",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._~-]{1,128}$", description = "A user id.")),
    security(("bearer" = [])),
    responses((status = 200, description = "Live sessions only.", body = SessionList), AdminUserProblems)
)]
async fn user_sessions(
    State(sessions): State<Sessions>,
    AdminUser(admin): AdminUser,
    PathId(id): PathId,
) -> Result<Json<SessionList>> {
    sessions.store.user_by_id(&id).await?.ok_or(AppError::NotFound)?;
    let views = session_views(&sessions, &id, &admin.session_id).await?;
    Ok(Json(SessionList { sessions: views }))
}

/// `{revoked_sessions, notified_connections}`.
#[derive(Serialize, ToSchema)]
struct ForcedLogout {
    /// How many live sessions ended.
    revoked_sessions: usize,
    /// How many sockets were told, on every instance.
    notified_connections: usize,
}

/// Logs a user out everywhere.
///
/// Every session of the user ends (reason `admin_logout`); their sockets are told.
#[utoipa::path(
    post,
    path = "/v1/admin/users/{id}/logout-all",
    tag = "admin",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._~-]{1,128}$", description = "A user id.")),
    security(("bearer" = [])),
    responses((status = 200, description = "The sessions have ended.", body = ForcedLogout), AdminUserProblems)
)]
async fn force_logout_user(
    State(sessions): State<Sessions>,
    client: Client,
    AdminUser(admin): AdminUser,
    PathId(id): PathId,
) -> Result<Json<ForcedLogout>> {
    sessions.store.user_by_id(&id).await?.ok_or(AppError::NotFound)?;
    let who = client.who(Some(&admin.user_id));
    let sel = Selector::User { user_id: id, except: None };
    let (revoked, notified) = sessions.end_sessions(sel, Reason::AdminLogout, true, &who).await?;
    Ok(Json(ForcedLogout { revoked_sessions: revoked.len(), notified_connections: notified }))
}

/// Ends any session.
///
/// Reason `admin_revoked`; 404 when it is not live.
#[utoipa::path(
    delete,
    path = "/v1/admin/sessions/{id}",
    tag = "admin",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._~-]{1,128}$", description = "A session id.")),
    security(("bearer" = [])),
    responses((status = 204, description = "The session has ended."), AdminUserProblems)
)]
async fn revoke_any_session(
    State(sessions): State<Sessions>,
    client: Client,
    AdminUser(admin): AdminUser,
    PathId(id): PathId,
) -> Result<StatusCode> {
    let who = client.who(Some(&admin.user_id));
    let (revoked, _) = sessions.end_sessions(Selector::Session(id), Reason::AdminRevoked, false, &who).await?;
    if revoked.is_empty() {
        return Err(AppError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Logs out everyone.
///
/// The "signing key leaked" button: every live session of every user ends, the caller's too
/// (reason `admin_logout`).
#[utoipa::path(
    post,
    path = "/v1/admin/logout-everyone",
    tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, description = "Every session has ended.", body = ForcedLogout), AdminProblems)
)]
async fn logout_everyone(
    State(sessions): State<Sessions>,
    client: Client,
    AdminUser(admin): AdminUser,
) -> Result<Json<ForcedLogout>> {
    let who = client.who(Some(&admin.user_id));
    let (revoked, notified) = sessions.end_sessions(Selector::Everyone, Reason::AdminLogout, true, &who).await?;
    Ok(Json(ForcedLogout { revoked_sessions: revoked.len(), notified_connections: notified }))
}

/// An admin may not disable or demote themself (the last admin could lock everyone out).
fn not_self(admin: &crate::http::extract::AuthUser, id: &str) -> Result<()> {
    if admin.user_id == id {
        return Err(AppError::InvalidRequest("Admins cannot disable or demote themselves."));
    }
    Ok(())
}

/// `{user_id, disabled, revoked_sessions?}`.
#[derive(Serialize, ToSchema)]
struct AccountState {
    user_id: String,
    disabled: bool,
    /// Disable only: how many live sessions ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    revoked_sessions: Option<usize>,
}

/// Disables a user.
///
/// Ends every session of the user (`account_disabled`, pushed to their sockets); their logins
/// then fail like a wrong password. 400 for the caller themself.
#[utoipa::path(
    post,
    path = "/v1/admin/users/{id}/disable",
    tag = "admin",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._~-]{1,128}$", description = "A user id.")),
    security(("bearer" = [])),
    responses((status = 200, description = "Disabled.", body = AccountState), AdminUserProblems)
)]
async fn disable_user(
    State(sessions): State<Sessions>,
    client: Client,
    AdminUser(admin): AdminUser,
    PathId(id): PathId,
) -> Result<Json<AccountState>> {
    not_self(&admin, &id)?;
    let revoked = sessions.set_disabled(&id, true, &client.who(Some(&admin.user_id))).await?;
    Ok(Json(AccountState { user_id: id, disabled: true, revoked_sessions: Some(revoked) }))
}

/// Enables a user.
///
/// A disabled user may log in again (ended sessions stay ended).
#[utoipa::path(
    post,
    path = "/v1/admin/users/{id}/enable",
    tag = "admin",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._~-]{1,128}$", description = "A user id.")),
    security(("bearer" = [])),
    responses((status = 200, description = "Enabled.", body = AccountState), AdminUserProblems)
)]
async fn enable_user(
    State(sessions): State<Sessions>,
    client: Client,
    AdminUser(admin): AdminUser,
    PathId(id): PathId,
) -> Result<Json<AccountState>> {
    sessions.set_disabled(&id, false, &client.who(Some(&admin.user_id))).await?;
    Ok(Json(AccountState { user_id: id, disabled: false, revoked_sessions: None }))
}

/// Grants the admin role.
///
/// Effective at once (admin calls check the role in the database); the user's next tokens
/// carry it.
#[utoipa::path(
    post,
    path = "/v1/admin/users/{id}/admin",
    tag = "admin",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._~-]{1,128}$", description = "A user id.")),
    security(("bearer" = [])),
    responses((status = 204, description = "The user is an admin."), AdminUserProblems)
)]
async fn grant_admin(
    State(sessions): State<Sessions>,
    client: Client,
    AdminUser(admin): AdminUser,
    PathId(id): PathId,
) -> Result<StatusCode> {
    sessions.set_admin(&id, true, &client.who(Some(&admin.user_id))).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes the admin role.
///
/// At once: every session of the user ends (reason `admin_revoked`, pushed to their sockets),
/// so no unexpired access token that says `admin` stays usable, here or at any verifier that
/// follows revocations. Idempotent (a user who is no admin keeps their sessions). 400 for the
/// caller themself.
#[utoipa::path(
    delete,
    path = "/v1/admin/users/{id}/admin",
    tag = "admin",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._~-]{1,128}$", description = "A user id.")),
    security(("bearer" = [])),
    responses((status = 204, description = "The user is no longer an admin."), AdminUserProblems)
)]
async fn revoke_admin(
    State(sessions): State<Sessions>,
    client: Client,
    AdminUser(admin): AdminUser,
    PathId(id): PathId,
) -> Result<StatusCode> {
    not_self(&admin, &id)?;
    sessions.set_admin(&id, false, &client.who(Some(&admin.user_id))).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only events about this user (as actor or target).
    #[param(pattern = "^[^\\x00]*$")]
    user_id: Option<String>,
    /// The `id` of the last event already seen; empty or absent: from the start.
    #[param(schema_with = event_cursor)]
    after: Option<String>,
    /// Page size, 1 to 500; empty or absent: 50.
    #[param(schema_with = page_size)]
    limit: Option<String>,
}

/// One audit event.
#[derive(Serialize, ToSchema)]
struct AuditEventView {
    /// Increasing; the `after` of the next page.
    id: String,
    #[schema(format = DateTime)]
    at: String,
    /// What happened: `user_registered`, `login_succeeded`, `login_failed`, `sessions_revoked`, …
    event: String,
    #[schema(required = true)]
    actor_user_id: Option<String>,
    #[schema(required = true)]
    target_user_id: Option<String>,
    #[schema(required = true)]
    target_session_id: Option<String>,
    #[schema(required = true)]
    ip: Option<String>,
    #[schema(required = true)]
    user_agent: Option<String>,
    /// Event-specific details (never a secret).
    #[schema(required = true, value_type = Option<Object>)]
    detail: Option<serde_json::Value>,
}

/// `{events: [...], next}`.
#[derive(Serialize, ToSchema)]
struct AuditPage {
    events: Vec<AuditEventView>,
    #[schema(required = true)]
    next: Option<String>,
}

/// The audit log.
///
/// In order, `limit` events after `after`, optionally about one user (as actor or target).
/// `next` is the `after` of the following page, `null` at the end.
#[utoipa::path(
    get,
    path = "/v1/admin/audit",
    tag = "admin",
    params(AuditQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "A page of events, oldest first.", body = AuditPage), AdminPageProblems)
)]
async fn audit_log(
    State(sessions): State<Sessions>,
    _admin: AdminUser,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>> {
    let limit = page_limit(q.limit.as_deref())?;
    no_nul(&[q.user_id.as_deref()])?;
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or(AppError::InvalidRequest("after must be the id of an audit event."))?,
    };
    let user = q.user_id.filter(|u| !u.is_empty());
    let mut rows = sessions.store.audit_events(user.as_deref(), after, limit + 1).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|e| e.id.to_string())
    } else {
        None
    };
    let events = rows
        .into_iter()
        .map(|e| AuditEventView {
            id: e.id.to_string(),
            at: rfc3339(e.at),
            event: e.event,
            actor_user_id: e.actor_user_id,
            target_user_id: e.target_user_id,
            target_session_id: e.target_session_id,
            ip: e.ip,
            user_agent: e.user_agent,
            detail: e.detail.and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok()),
        })
        .collect();
    Ok(Json(AuditPage { events, next }))
}

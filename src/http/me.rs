//! `GET /v1/me`: the model protected resource. A revoked session's unexpired token is refused
//! here at once by the `AuthUser` extractor (denylist, no database read).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::AuthUser;
use crate::error::{AppError, Result};
use crate::state::AppState;
use crate::store::Store;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(me))
}

/// `{user_id, email, roles, session_id}` of the caller.
#[derive(Serialize, ToSchema)]
struct Me {
    user_id: String,
    email: String,
    /// `"admin"` for admins (as of the token's issue).
    roles: Vec<String>,
    session_id: String,
}

problems!(MeProblems: InvalidToken, TokenExpired, SessionRevoked, Unavailable);

/// The caller.
///
/// The model protected resource: a revoked session's still-unexpired access token is refused
/// here at once (401 `session_revoked`), on every instance.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "me",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller.", body = Me), MeProblems)
)]
async fn me(State(store): State<Store>, user: AuthUser) -> Result<Json<Me>> {
    let email = store.user_email(&user.user_id).await?.ok_or(AppError::InvalidToken { presented: true })?;
    Ok(Json(Me { user_id: user.user_id, email: email.to_string(), roles: user.roles, session_id: user.session_id }))
}

//! `GET /v1/me`: the model protected resource. A revoked session's unexpired token is refused
//! here at once by the `AuthUser` extractor (denylist, no database read).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::extract::AuthUser;
use crate::error::{AppError, Result};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/me", get(me))
}

async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<serde_json::Value>> {
    let email = state.store.user_email(&user.user_id).await?.ok_or(AppError::InvalidToken { presented: true })?;
    Ok(Json(serde_json::json!({
        "user_id": user.user_id,
        "email": &*email,
        "roles": user.roles,
        "session_id": user.session_id,
    })))
}

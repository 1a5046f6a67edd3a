//! The HTTP API (API.md §4): one router per area, merged by [`crate::app::router`]. Each area's
//! router is a `utoipa_axum::OpenApiRouter`, so it also builds the area's part of the OpenAPI
//! document ([`openapi`]).

#[macro_use]
pub mod openapi;
pub mod admin;
pub mod auth;
pub mod cookie;
pub mod extract;
pub mod health;
pub mod me;
pub mod pages;
pub mod ws;

use std::collections::HashSet;

use axum::http::{header, HeaderValue};
use serde::Serialize;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::clock::rfc3339;
use crate::state::AppState;
use crate::store::SessionRow;

/// The account and token endpoints (`/v1/auth/*`, `/v1/me`, `/v1/admin/*`): their responses
/// carry tokens or account data, so they are never cached (RFC 6749 §5.1).
pub fn api_router(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .merge(auth::router(state))
        .merge(me::router())
        .merge(admin::router())
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
}

/// `Session` of API.md §4.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Session)]
pub struct SessionView {
    pub id: String,
    /// As given at login (trimmed, at most 128 bytes).
    #[schema(required = true)]
    pub device_name: Option<String>,
    #[schema(required = true)]
    pub user_agent: Option<String>,
    /// The client address the session was created from.
    #[schema(required = true)]
    pub ip: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub last_used_at: String,
    /// The earlier of the idle and the absolute expiry.
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// The session of the caller's token.
    pub current: bool,
    /// A socket of the session is open now, on any instance.
    pub connected: bool,
}

/// `{sessions: [Session]}`: live sessions only.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// A user's live sessions as the API shows them: `current` compares with the caller's session;
/// `connected` is true when a socket of the session is open here or on any live instance.
pub async fn session_views(
    state: &AppState,
    user_id: &str,
    caller_session: &str,
) -> crate::error::Result<Vec<SessionView>> {
    let now = state.clock.now_ms();
    let rows = state.store.live_sessions(user_id, now).await?;
    let elsewhere: HashSet<String> = match state.backplane {
        Some(_) => state
            .store
            .connected_sessions(user_id, now - crate::backplane::INSTANCE_TTL_MS)
            .await?
            .into_iter()
            .collect(),
        None => HashSet::new(),
    };
    Ok(rows.iter().map(|s| session_json(state, s, Some(caller_session), &elsewhere)).collect())
}

fn session_json(
    state: &AppState,
    s: &SessionRow,
    caller_session: Option<&str>,
    elsewhere: &HashSet<String>,
) -> SessionView {
    SessionView {
        id: s.id.clone(),
        device_name: s.device_name.clone(),
        user_agent: s.user_agent.clone(),
        ip: s.ip.clone(),
        created_at: rfc3339(s.created_at),
        last_used_at: rfc3339(s.last_used_at),
        expires_at: rfc3339(s.expires_at()),
        current: caller_session == Some(s.id.as_str()),
        connected: state.hub.is_connected(&s.id) || elsewhere.contains(&s.id),
    }
}

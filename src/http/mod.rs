//! The HTTP API (API.md §4): one router per area, merged by [`crate::app::router`].

pub mod admin;
pub mod auth;
pub mod cookie;
pub mod extract;
pub mod health;
pub mod me;
pub mod pages;
pub mod ws;

use std::collections::HashSet;

use serde::Serialize;

use crate::clock::rfc3339;
use crate::state::AppState;
use crate::store::SessionRow;

/// `Session` of API.md §4.
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub id: String,
    pub device_name: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub created_at: String,
    pub last_used_at: String,
    pub expires_at: String,
    pub current: bool,
    pub connected: bool,
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

//! The HTTP API (docs/API.md §4): one router per area, merged by [`crate::app::router`]. Each area's
//! router is a `utoipa_axum::OpenApiRouter`, so it also builds the area's part of the OpenAPI
//! document ([`openapi`]).

#[macro_use]
pub mod openapi;
pub mod admin;
pub mod admin_health;
pub mod auth;
pub mod cookie;
pub mod extract;
pub mod feed;
pub mod health;
pub mod me;
pub mod oauth;
pub mod oauth_token;
pub mod pages;
pub mod service;
pub mod ssf;
pub mod ssf_auth;
pub mod ws;

pub use ssf_auth::SsfCaller;

use std::collections::HashSet;

use axum::http::{header, HeaderValue};
use serde::Serialize;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::clock::{ms, rfc3339, Millis};
use crate::sessions::Sessions;
use crate::state::AppState;
use crate::store::SessionRow;

/// The account and token endpoints (`/v1/auth/*`, `/v1/me`, `/v1/admin/*`): their responses
/// carry tokens or account data, so they are never cached (RFC 6749 §5.1).
pub fn api_router(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .merge(auth::router(state))
        .merge(me::router())
        .merge(admin::router())
        .merge(admin_health::router())
        .merge(oauth::router())
        .merge(feed::router())
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
}

/// `Session` of docs/API.md §4.
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
    /// To the minute, and only uses older than the refresh grace window (see `listed_times`).
    #[schema(format = DateTime)]
    pub last_used_at: String,
    /// The earlier of the idle and the absolute expiry, to the minute (see `listed_times`).
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
    sessions: &Sessions,
    user_id: &str,
    caller_session: &str,
) -> crate::error::Result<Vec<SessionView>> {
    let now = sessions.clock.now_ms();
    let rows = sessions.store.live_sessions(user_id, now).await?;
    let elsewhere: HashSet<String> = match sessions.store.postgres() {
        Some(pg) => pg.connected_sessions(user_id, now - crate::cluster::INSTANCE_TTL_MS).await?.into_iter().collect(),
        None => HashSet::new(),
    };
    Ok(rows.iter().map(|s| session_json(sessions, s, Some(caller_session), &elsewhere, now)).collect())
}

/// One minute, the precision of the times a listing shows.
const MINUTE_MS: Millis = 60_000;

/// `(last_used_at, expires_at)` of a session as listings show them (SECURITY.md RT6).
///
/// A refresh moves both (the use, and the idle expiry it extends). Shown exactly, they tell
/// whoever can list the sessions (a thief holding an access token of the user) the moment
/// the victim rotated, i.e. when to replay a stolen copy of the previous token inside the grace
/// window. So a listing never reflects a use younger than the grace window: while
/// `last_used_at` is inside it, the session's settled use (`settled_used_at`: the latest use that
/// was already out of the window when the session was last used) is shown instead, and the
/// expiry shown is the one that use gives (shown use + `--refresh-idle-ttl`, capped by the
/// absolute expiry; never the stored idle expiry, which a rotation moves). A use therefore never
/// changes what a listing shows; it appears when its window closes. On top, both are coarsened
/// to the minute (`last_used_at` down, `expires_at` up, so a live session never shows a past
/// expiry), which blurs the rhythm of a client's refreshes (one per access-token lifetime) that
/// would let the next rotation be predicted. The expiry shown can differ from
/// `refresh_expires_in` by up to the grace window plus a minute (a grace use counts as a use
/// here, but does not extend the idle expiry).
fn listed_times(s: &SessionRow, now: Millis, grace: Millis, idle_ttl: Millis) -> (Millis, Millis) {
    let used = if now - s.last_used_at > grace { s.last_used_at } else { s.settled_used_at.max(s.created_at) };
    let expires = s.absolute_expires_at.min(used.saturating_add(idle_ttl));
    let floor = |t: Millis| t - t.rem_euclid(MINUTE_MS);
    let ceil = |t: Millis| if t.rem_euclid(MINUTE_MS) == 0 { t } else { floor(t).saturating_add(MINUTE_MS) };
    (floor(used), ceil(expires))
}

fn session_json(
    sessions: &Sessions,
    s: &SessionRow,
    caller_session: Option<&str>,
    elsewhere: &HashSet<String>,
    now: Millis,
) -> SessionView {
    let cfg = &sessions.config;
    let (last_used_at, expires_at) = listed_times(s, now, ms(cfg.refresh_reuse_grace), ms(cfg.refresh_idle_ttl));
    SessionView {
        id: s.id.clone(),
        device_name: s.device_name.clone(),
        user_agent: s.user_agent.clone(),
        ip: s.ip.clone(),
        created_at: rfc3339(s.created_at),
        last_used_at: rfc3339(last_used_at),
        expires_at: rfc3339(expires_at),
        current: caller_session == Some(s.id.as_str()),
        connected: sessions.hub.is_connected(&s.id) || elsewhere.contains(&s.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionRow {
        SessionRow {
            id: "s".into(),
            user_id: "u".into(),
            device_name: None,
            user_agent: None,
            ip: None,
            created_at: 1_000_123,
            last_used_at: 1_000_123,
            settled_used_at: 1_000_123,
            idle_expires_at: 0,
            absolute_expires_at: i64::MAX / 2,
            access_expires_at: 0,
            revoked_at: None,
            revoked_reason: None,
        }
    }

    /// Uses at irregular gaps (many inside one grace window, some far apart), each applied with
    /// the store's rule (`use_session` in `store/shared.rs`): a use never changes what a listing
    /// shows at that instant, and what it shows is never younger than the grace window (or the
    /// creation).
    #[test]
    fn rt6_a_use_never_changes_what_a_listing_shows() {
        let (grace, idle) = (10_000, 3_600_000);
        let mut s = session();
        let mut now = s.created_at;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += [1, 40, 900, 4_000, 9_999, 10_000, 10_001, 65_000, 400_000][(x % 9) as usize];
            let before = listed_times(&s, now, grace, idle);
            if now - s.last_used_at > grace {
                s.settled_used_at = s.last_used_at;
            }
            s.last_used_at = now;
            let after = listed_times(&s, now, grace, idle);
            assert_eq!(before, after, "a use at {now} moved the listing");
            assert!(after.0 <= (now - grace).max(s.created_at), "shows a use inside the window");
            assert_eq!(after.0 % MINUTE_MS, 0);
            assert_eq!(after.1 % MINUTE_MS, 0);
            assert!(after.1 >= after.0 + idle);
        }
    }
}

//! Signing keys: rotation keeps old tokens valid, retired keys leave the JWKS, and a restart
//! keeps keys and revocations (SECURITY.md J12, F4).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

pub fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    v["kid"].as_str().unwrap().to_string()
}

pub async fn jwks_kids(app: &TestApp) -> Vec<String> {
    let v: Value = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    v["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn j12_rotation_publishes_first_then_signs_and_old_tokens_keep_working() {
    let Some(app) = spawn_app().await else { return };
    let t_old = app.new_session().await;
    let k1 = kid_of(&t_old.access);
    assert_eq!(jwks_kids(&app).await, vec![k1.clone()]);

    let (k2, _) = sessiond::tokens::jwt::rotate(&app.state.store, &app.clock, false).await.unwrap();
    app.state.keys.reload(&app.state.store, app.clock.now_ms()).await.unwrap();
    let kids = jwks_kids(&app).await;
    assert!(kids.contains(&k1) && kids.contains(&k2), "published before it signs");
    let t = app.new_session().await;
    assert_eq!(kid_of(&t.access), k1, "the new key does not sign yet");

    // After the JWKS cache lifetime (+ the reload bound) the new key signs.
    app.clock.advance(Duration::from_secs(361));
    app.state.keys.reload(&app.state.store, app.clock.now_ms()).await.unwrap();
    let t_new = app.new_session().await;
    assert_eq!(kid_of(&t_new.access), k2);
    assert_eq!(app.me(&t_new.access).await.status(), StatusCode::OK);
    // The old key stays published while its tokens may live (a token signed just before the switch).
    let kids = jwks_kids(&app).await;
    assert!(kids.contains(&k1));

    // Once every K1 token has expired (access TTL + leeway after the switch), K1 leaves.
    app.clock.advance(Duration::from_secs(300 + 31));
    app.state.keys.reload(&app.state.store, app.clock.now_ms()).await.unwrap();
    assert_eq!(jwks_kids(&app).await, vec![k2]);
    assert_eq!(app.me(&t.access).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn j12_rotate_now_signs_at_once_and_old_tokens_stay_valid() {
    let Some(app) = spawn_app().await else { return };
    let t_old = app.new_session().await;
    let (k2, _) = sessiond::tokens::jwt::rotate(&app.state.store, &app.clock, true).await.unwrap();
    app.state.keys.reload(&app.state.store, app.clock.now_ms()).await.unwrap();
    let t_new = app.new_session().await;
    assert_eq!(kid_of(&t_new.access), k2);
    assert_eq!(app.me(&t_old.access).await.status(), StatusCode::OK, "old key keeps verifying");
    assert_eq!(jwks_kids(&app).await.len(), 2);
}

#[tokio::test]
async fn j12_running_server_picks_up_rotated_keys() {
    let Some(app) = spawn_app_with(|c| c.keys_reload_interval = Duration::from_millis(100)).await else { return };
    let (k2, _) = sessiond::tokens::jwt::rotate(&app.state.store, &app.clock, false).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !jwks_kids(&app).await.contains(&k2) {
        assert!(tokio::time::Instant::now() < deadline, "new key not published by the reload task");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn f4_restart_keeps_keys_sessions_and_revocations() {
    let Some(app) = spawn_app().await else { return };
    let live = app.new_session().await;
    let dead = app.new_session().await;
    assert_eq!(app.post_auth("/v1/auth/logout", &dead.access, None).await.status(), StatusCode::NO_CONTENT);
    let kids = jwks_kids(&app).await;

    let app = app.restart().await;
    assert_eq!(jwks_kids(&app).await, kids, "same signing keys");
    assert_eq!(app.me(&live.access).await.status(), StatusCode::OK, "tokens survive a restart");
    // The revoked session's unexpired token is refused on the first request (F4).
    assert_problem(app.me(&dead.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    assert_eq!(app.refresh(&live.refresh).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn f5_denylist_entries_outlive_the_tokens_then_are_pruned() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    // Just before exp + leeway the token is still refused as revoked (F5)…
    app.clock.advance(Duration::from_secs(300 + 29));
    app.state.sessions.sweep().await.unwrap();
    assert!(app.state.sessions.denylist.contains(&t.session_id));
    assert_problem(app.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    // …and once every token is dead the entry is pruned: memory stays bounded.
    app.clock.advance(Duration::from_secs(10));
    app.state.sessions.sweep().await.unwrap();
    assert!(!app.state.sessions.denylist.contains(&t.session_id));
    assert_problem(app.me(&t.access).await, StatusCode::UNAUTHORIZED, "token_expired").await;
    // A restart does not resurrect pruned entries but keeps live ones.
    let t2 = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t2.access, None).await;
    let app = app.restart().await;
    assert!(app.state.sessions.denylist.contains(&t2.session_id));
    assert!(!app.state.sessions.denylist.contains(&t.session_id));
}

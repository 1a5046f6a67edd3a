//! Refresh rotation and the reuse policy of docs/API.md §3.3 (SECURITY.md R1–R7).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn refresh_ok(app: &TestApp, rt: &str) -> Tokens {
    let r = app.refresh(rt).await;
    assert_eq!(r.status(), StatusCode::OK, "refresh failed");
    assert_eq!(r.headers()["cache-control"], "no-store");
    Tokens::from(r.json::<Value>().await.unwrap())
}

async fn reason(app: &TestApp, session_id: &str) -> Option<String> {
    app.state.store.session(session_id).await.unwrap().unwrap().revoked_reason
}

#[tokio::test]
async fn refresh_rotates_the_token() {
    let Some(app) = spawn_app().await else { return };
    let t0 = app.new_session().await;
    let t1 = refresh_ok(&app, &t0.refresh).await;
    assert_ne!(t1.refresh, t0.refresh);
    assert_ne!(t1.access, t0.access);
    assert_eq!(t1.session_id, t0.session_id);
    assert_eq!(t1.user_id, t0.user_id);
    assert_eq!(app.me(&t1.access).await.status(), StatusCode::OK);
    let t2 = refresh_ok(&app, &t1.refresh).await;
    assert_ne!(t2.refresh, t1.refresh);
    // Exactly one live refresh token per session; the two rotated ones stay as the chain.
    assert_eq!(app.state.store.refresh_token_counts(&t0.session_id).await.unwrap(), (1, 2));
}

#[tokio::test]
async fn r5_retry_inside_grace_converges_on_the_same_successor() {
    let Some(app) = spawn_app().await else { return };
    let t0 = app.new_session().await;
    let a = refresh_ok(&app, &t0.refresh).await;
    // A retry after a lost response.
    app.clock.advance(Duration::from_millis(9_500));
    let b = refresh_ok(&app, &t0.refresh).await;
    assert_eq!(a.refresh, b.refresh, "same successor");
    assert_eq!(app.me(&b.access).await.status(), StatusCode::OK);
    assert_eq!(reason(&app, &t0.session_id).await, None, "nobody logged out");
    // The converged successor is the live token.
    let c = refresh_ok(&app, &a.refresh).await;
    assert_ne!(c.refresh, a.refresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_eight_parallel_refreshes_converge() {
    let Some(app) = spawn_app().await else { return };
    for _ in 0..5 {
        let t0 = app.new_session().await;
        let calls = (0..8).map(|_| app.refresh(&t0.refresh));
        let responses = futures::future::join_all(calls).await;
        let mut successors = Vec::new();
        for r in responses {
            assert_eq!(r.status(), StatusCode::OK, "every racing tab succeeds");
            successors.push(Tokens::from(r.json::<Value>().await.unwrap()).refresh);
        }
        successors.dedup();
        assert_eq!(successors.len(), 1, "all converge on one successor");
        assert_eq!(reason(&app, &t0.session_id).await, None);
        refresh_ok(&app, &successors[0]).await;
    }
}

#[tokio::test]
async fn r1_r2_reuse_after_grace_revokes_the_session_and_the_revocation_sticks() {
    let Some(app) = spawn_app().await else { return };
    let t0 = app.new_session().await;
    let t1 = refresh_ok(&app, &t0.refresh).await;
    app.clock.advance(Duration::from_millis(10_500));
    let r = app.refresh(&t0.refresh).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
    // The revocation committed although the answer was an error (R2): everything is dead.
    assert_eq!(reason(&app, &t0.session_id).await.as_deref(), Some("refresh_token_reused"));
    assert_problem(app.refresh(&t1.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    assert_problem(app.me(&t1.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
}

#[tokio::test]
async fn r3_grace_covers_only_the_immediately_previous_token() {
    let Some(app) = spawn_app().await else { return };
    let t0 = app.new_session().await;
    let t1 = refresh_ok(&app, &t0.refresh).await;
    let t2 = refresh_ok(&app, &t1.refresh).await;
    // t0 is two generations back, inside the grace window: reuse (R3).
    assert_problem(app.refresh(&t0.refresh).await, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
    assert_eq!(reason(&app, &t0.session_id).await.as_deref(), Some("refresh_token_reused"));
    assert_problem(app.refresh(&t2.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
}

#[tokio::test]
async fn the_newest_previous_token_still_converges() {
    let Some(app) = spawn_app().await else { return };
    let t0 = app.new_session().await;
    let t1 = refresh_ok(&app, &t0.refresh).await;
    let t2 = refresh_ok(&app, &t1.refresh).await;
    // t1 is now the immediately previous token and inside grace: converges on t2.
    let again = refresh_ok(&app, &t1.refresh).await;
    assert_eq!(again.refresh, t2.refresh);
}

#[tokio::test]
async fn zero_grace_makes_any_second_use_a_reuse() {
    let Some(app) = spawn_app_with(|c| c.refresh_reuse_grace = Duration::ZERO).await else { return };
    let t0 = app.new_session().await;
    refresh_ok(&app, &t0.refresh).await;
    app.clock.advance(Duration::from_millis(5));
    assert_problem(app.refresh(&t0.refresh).await, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
}

#[tokio::test]
async fn r7_idle_expiry_ends_the_session() {
    let Some(app) = spawn_app_with(|c| c.refresh_idle_ttl = Duration::from_secs(3600)).await else { return };
    let t0 = app.new_session().await;
    app.clock.advance(Duration::from_secs(3000));
    let t1 = refresh_ok(&app, &t0.refresh).await; // use extends the idle expiry
    app.clock.advance(Duration::from_secs(3000));
    let t2 = refresh_ok(&app, &t1.refresh).await;
    app.clock.advance(Duration::from_secs(3601));
    assert_problem(app.refresh(&t2.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    assert_eq!(reason(&app, &t0.session_id).await.as_deref(), Some("session_expired"));
}

#[tokio::test]
async fn r7_absolute_expiry_cannot_be_extended() {
    let Some(app) = spawn_app_with(|c| c.session_max_age = Duration::from_secs(600)).await else { return };
    let t0 = app.new_session().await;
    assert!(t0.raw["refresh_expires_in"].as_i64().unwrap() <= 600);
    app.clock.advance(Duration::from_secs(480));
    let t1 = refresh_ok(&app, &t0.refresh).await;
    // The access token never outlives the session: 120 s left, not the full 300.
    let expires_in = t1.raw["expires_in"].as_i64().unwrap();
    assert!((118..=120).contains(&expires_in), "expires_in {expires_in}");
    assert!(t1.raw["refresh_expires_in"].as_i64().unwrap() <= 120);
    app.clock.advance(Duration::from_secs(121));
    assert_problem(app.refresh(&t1.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    assert_eq!(reason(&app, &t0.session_id).await.as_deref(), Some("session_expired"));
}

#[tokio::test]
async fn the_sweep_ends_expired_sessions() {
    let Some(app) = spawn_app_with(|c| c.refresh_idle_ttl = Duration::from_secs(60)).await else { return };
    let t0 = app.new_session().await;
    app.clock.advance(Duration::from_secs(61));
    let n = app.state.sessions.sweep().await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(reason(&app, &t0.session_id).await.as_deref(), Some("session_expired"));
    assert!(app.state.sessions.denylist.contains(&t0.session_id));
}

#[tokio::test]
async fn r10_unknown_and_malformed_refresh_tokens_are_refused() {
    let Some(app) = spawn_app().await else { return };
    assert_problem(
        app.refresh("rt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    )
    .await;
    assert_problem(app.refresh("garbage").await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    assert_problem(app.refresh("").await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    let r = app.post_json("/v1/auth/refresh", json!({"refresh_token": 12})).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = app.post_json("/v1/auth/refresh", json!({})).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_concurrent_refreshes_never_hit_a_locked_database() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let mut tokens = Vec::new();
    for _ in 0..16 {
        tokens.push(app.session_of(&email).await.refresh);
    }
    for _round in 0..5 {
        let calls = tokens.iter().map(|t| app.refresh(t));
        let responses = futures::future::join_all(calls).await;
        let mut next = Vec::new();
        for r in responses {
            assert_eq!(r.status(), StatusCode::OK, "no 5xx, no 'database is locked'");
            next.push(Tokens::from(r.json::<Value>().await.unwrap()).refresh);
        }
        tokens = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f9_revoke_racing_refresh_leaves_no_live_token() {
    // SECURITY.md F9: whatever the interleaving, the session ends revoked and denylisted.
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    for _ in 0..20 {
        let t = app.new_session().await;
        let path = format!("/v1/admin/sessions/{}", t.session_id);
        let (_, r) = tokio::join!(app.refresh(&t.refresh), app.delete_auth(&path, &admin.access));
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(app.state.sessions.denylist.contains(&t.session_id));
        let next = app.refresh(&t.refresh).await;
        assert_eq!(next.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f9_previous_and_current_tokens_racing_a_revocation_never_fail_with_5xx() {
    // Two tabs (one holding the previous token, one the current) and an admin revoke, at once:
    // every refresh ends in 200 or 401 (no deadlock 503), and the session ends revoked.
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    for _ in 0..20 {
        let t0 = app.new_session().await;
        let t1 = refresh_ok(&app, &t0.refresh).await;
        let path = format!("/v1/admin/sessions/{}", t0.session_id);
        let (a, b, c) =
            tokio::join!(app.refresh(&t0.refresh), app.refresh(&t1.refresh), app.delete_auth(&path, &admin.access));
        for r in [a, b] {
            assert!(matches!(r.status().as_u16(), 200 | 401), "status {}", r.status());
        }
        assert!(matches!(c.status().as_u16(), 204 | 404), "revoke status {}", c.status());
        assert!(app.state.store.session(&t0.session_id).await.unwrap().unwrap().revoked_at.is_some());
        assert!(app.state.sessions.denylist.contains(&t0.session_id));
    }
}

/// A refresh as a given client: its address (believed through `X-Forwarded-For` from the
/// loopback proxy) and its `User-Agent`.
async fn refresh_as(app: &TestApp, rt: &str, addr: &str, user_agent: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/auth/refresh"))
        .header("x-forwarded-for", addr)
        .header("user-agent", user_agent)
        .json(&json!({ "refresh_token": rt }))
        .send()
        .await
        .unwrap()
}

/// A server that believes `X-Forwarded-For` from loopback, so tests can pose as any address.
async fn behind_proxy() -> Option<TestApp> {
    spawn_app_with(|c| c.trusted_proxies = "127.0.0.1".parse().unwrap()).await
}

const VICTIM: (&str, &str) = ("198.51.100.7", "Victim/1.0");

/// Audit events about `user_id` of kind `event`.
async fn audit_events(app: &TestApp, admin: &str, user_id: &str, event: &str) -> Vec<Value> {
    let r = app.get_auth(&format!("/v1/admin/audit?limit=500&user_id={user_id}"), admin).await;
    let v: Value = r.json().await.unwrap();
    v["events"].as_array().unwrap().iter().filter(|e| e["event"] == event).cloned().collect()
}

#[tokio::test]
async fn rt6_a_replay_inside_grace_from_another_client_is_reuse() {
    let Some(app) = behind_proxy().await else { return };
    let admin = app.new_admin().await;
    // The thief replays the victim's previous token just after the victim's rotation, from
    // another address (same user agent), or from the same address with another user agent.
    for thief in [("203.0.113.66", VICTIM.1), (VICTIM.0, "Thief/2.0")] {
        let t0 = app.new_session().await;
        let r = refresh_as(&app, &t0.refresh, VICTIM.0, VICTIM.1).await;
        assert_eq!(r.status(), StatusCode::OK);
        let t1 = Tokens::from(r.json::<Value>().await.unwrap());
        let r = refresh_as(&app, &t0.refresh, thief.0, thief.1).await;
        let body = r.text().await.map(|b| (b.contains(&t1.refresh), b));
        let (leaked, body) = body.unwrap();
        assert!(!leaked, "the thief never receives the victim's successor");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "refresh_token_reused", "{body}");
        assert_eq!(body["status"], 401);
        // Reuse: the whole session is over, the victim's successor too.
        assert_eq!(reason(&app, &t0.session_id).await.as_deref(), Some("refresh_token_reused"));
        let r = refresh_as(&app, &t1.refresh, VICTIM.0, VICTIM.1).await;
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
        assert_problem(app.me(&t1.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
        let ev = audit_events(&app, &admin.access, &t0.user_id, "refresh_token_reused").await;
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["detail"]["foreign_client_in_grace"], true);
        assert_eq!(ev[0]["ip"], thief.0);
        assert_eq!(ev[0]["user_agent"], thief.1);
    }
}

#[tokio::test]
async fn rt6_the_rotating_client_still_converges_and_every_grace_use_is_audited() {
    let Some(app) = behind_proxy().await else { return };
    let admin = app.new_admin().await;
    let t0 = app.new_session().await;
    let a = Tokens::from(refresh_as(&app, &t0.refresh, VICTIM.0, VICTIM.1).await.json::<Value>().await.unwrap());
    app.clock.advance(Duration::from_millis(9_500));
    let r = refresh_as(&app, &t0.refresh, VICTIM.0, VICTIM.1).await;
    assert_eq!(r.status(), StatusCode::OK);
    let b = Tokens::from(r.json::<Value>().await.unwrap());
    assert_eq!(a.refresh, b.refresh, "same client inside grace: same successor");
    assert_eq!(reason(&app, &t0.session_id).await, None);
    let ev = audit_events(&app, &admin.access, &t0.user_id, "refresh_grace_used").await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["target_session_id"], t0.session_id.as_str());
    assert_eq!(ev[0]["ip"], VICTIM.0);
    assert_eq!(ev[0]["user_agent"], VICTIM.1);
}

/// `(last_used_at, expires_at)` of `session_id` in a listing.
async fn listed(app: &TestApp, path: &str, token: &str, session_id: &str) -> (String, String) {
    let v: Value = app.get_auth(path, token).await.json().await.unwrap();
    let s = v["sessions"].as_array().unwrap().iter().find(|s| s["id"] == session_id).unwrap().clone();
    (s["last_used_at"].as_str().unwrap().to_string(), s["expires_at"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn rt6_session_listings_do_not_time_a_rotation_inside_grace() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let t0 = app.new_session().await;
    let own = "/v1/auth/sessions".to_string();
    let admins = format!("/v1/admin/users/{}/sessions", t0.user_id);
    // Minutes after the login, so a rotation now lands in another minute than the login.
    app.clock.advance(Duration::from_secs(150));
    let before = listed(&app, &own, &t0.access, &t0.session_id).await;
    let admin_before = listed(&app, &admins, &admin.access, &t0.session_id).await;
    for t in [&before.0, &before.1] {
        assert!(t.ends_with(":00Z"), "to the minute: {t}");
    }

    // The victim rotates: nothing a listing shows moves while the previous token is in grace.
    let t1 = refresh_ok(&app, &t0.refresh).await;
    assert_eq!(listed(&app, &own, &t1.access, &t0.session_id).await, before, "own listing during grace");
    assert_eq!(listed(&app, &admins, &admin.access, &t0.session_id).await, admin_before, "admin listing");
    // (Late in the window; real time passes too, so not to its last millisecond.)
    app.clock.advance(Duration::from_millis(9_000));
    assert_eq!(listed(&app, &own, &t1.access, &t0.session_id).await, before, "late in grace");

    // Once the window has closed, the use shows, to the minute.
    app.clock.advance(Duration::from_millis(1_100));
    let after = listed(&app, &own, &t1.access, &t0.session_id).await;
    assert!(after.0 > before.0 && after.1 > before.1, "{before:?} then {after:?}");
    for t in [&after.0, &after.1] {
        assert!(t.ends_with(":00Z"), "to the minute: {t}");
    }
}

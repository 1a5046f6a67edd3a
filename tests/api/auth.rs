//! Register, login, /me, logout, logout-all, own sessions, password change.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn register_login_and_me() {
    let Some(app) = spawn_app().await else { return };
    let r = app.register("  Alice@Example.COM ", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user_id = r.json::<Value>().await.unwrap()["user_id"].as_str().unwrap().to_string();

    let r = app
        .post_json(
            "/v1/auth/login",
            json!({"email": "alice@example.com", "password": PASSWORD, "device_name": "laptop"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 300);
    assert_eq!(t["user_id"], user_id.as_str());
    let rexp = t["refresh_expires_in"].as_i64().unwrap();
    assert!((14 * 86400 - 5..=14 * 86400).contains(&rexp), "{rexp}");
    let t = Tokens::from(t);
    assert!(t.refresh.len() >= 43, "refresh token carries >= 256 bits");

    let me: Value = app.me(&t.access).await.json().await.unwrap();
    assert_eq!(me, json!({"user_id": user_id, "email": "alice@example.com", "roles": [], "session_id": t.session_id}));
}

#[tokio::test]
async fn register_rejects_duplicates_bad_input_and_closed_registration() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    assert_problem(app.register(&email.to_uppercase(), PASSWORD).await, StatusCode::CONFLICT, "email_taken").await;
    assert_problem(app.register("not-an-email", PASSWORD).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_problem(app.register("short@example.com", "1234567").await, StatusCode::BAD_REQUEST, "invalid_request")
        .await;
    let long = "x".repeat(1025);
    assert_problem(app.register("long@example.com", &long).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    // 8 and 1024 characters (multi-byte) are fine.
    assert_eq!(app.register("eight@example.com", "ééééééé1").await.status(), StatusCode::CREATED);
    assert_eq!(app.register("max@example.com", &"é".repeat(1024)).await.status(), StatusCode::CREATED);

    let Some(closed) = spawn_app_with(|c| c.allow_registration = false).await else { return };
    assert_problem(closed.register("x@example.com", PASSWORD).await, StatusCode::FORBIDDEN, "registration_disabled")
        .await;
}

#[tokio::test]
async fn p2_wrong_password_and_unknown_email_look_the_same() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let a = app.login(&email, "wrong password!").await;
    let b = app.login("nobody@example.com", "wrong password!").await;
    let c = app.login("not an email", "wrong password!").await;
    let (sa, sb, sc) = (a.status(), b.status(), c.status());
    let (ba, bb, bc) = (a.bytes().await.unwrap(), b.bytes().await.unwrap(), c.bytes().await.unwrap());
    assert_eq!((sa, sb, sc), (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED));
    assert_eq!(ba, bb, "byte-identical bodies");
    assert_eq!(ba, bc);
    let v: Value = serde_json::from_slice(&ba).unwrap();
    assert_eq!(v["code"], "invalid_credentials");
}

#[tokio::test]
async fn p2_unknown_email_costs_a_password_hash() {
    // Timing: an unknown email is verified against a dummy argon2 hash, so it takes about as
    // long as a wrong password (medians within a generous factor on a shared 2-core box; without
    // the dummy hash an unknown email answers ~20x faster).
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..7 {
        let t = std::time::Instant::now();
        app.login(&email, "wrong password!").await;
        known.push(t.elapsed());
        let t = std::time::Instant::now();
        app.login("nobody@example.com", "wrong password!").await;
        unknown.push(t.elapsed());
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[3].as_secs_f64(), unknown[3].as_secs_f64());
    assert!(u > k * 0.25 && u < k * 4.0, "median wrong-password {k:.4}s vs unknown-email {u:.4}s");
}

#[tokio::test]
async fn s3_logout_with_bearer_refuses_the_access_token_at_once() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    assert_eq!(app.me(&t.access).await.status(), StatusCode::OK);
    let r = app.post_auth("/v1/auth/logout", &t.access, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.me(&t.access).await;
    assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_problem(r, StatusCode::UNAUTHORIZED, "session_revoked").await;
    // The refresh token is dead too, and logging out again is idempotent.
    assert_problem(app.refresh(&t.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn logout_with_refresh_token_is_idempotent() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let r = app.post_json("/v1/auth/logout", json!({"refresh_token": t.refresh})).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_problem(app.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    let r = app.post_json("/v1/auth/logout", json!({"refresh_token": t.refresh})).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.post_json("/v1/auth/logout", json!({"refresh_token": "rt_unknown"})).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // No credentials at all.
    let r = app.client.post(app.url("/v1/auth/logout")).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    // A non-string refresh token is a bad request.
    let r = app.post_json("/v1/auth/logout", json!({"refresh_token": 42})).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[tokio::test]
async fn s1_logout_all_and_logout_others() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let a = app.session_of(&email).await;
    let b = app.session_of(&email).await;
    let c = app.session_of(&email).await;
    let other = app.new_session().await;

    let r = app.post_auth("/v1/auth/logout-all", &a.access, Some(json!({"keep_current": true}))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["revoked_sessions"], 2);
    assert_eq!(app.me(&a.access).await.status(), StatusCode::OK);
    assert_problem(app.me(&b.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    assert_problem(app.me(&c.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    let reason = app.state.store.session(&b.session_id).await.unwrap().unwrap().revoked_reason;
    assert_eq!(reason.as_deref(), Some("logout_others"));

    // Without a body: everything, the caller's session too.
    let r = app.post_auth("/v1/auth/logout-all", &a.access, None).await;
    assert_eq!(r.json::<Value>().await.unwrap()["revoked_sessions"], 1);
    assert_problem(app.me(&a.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    let reason = app.state.store.session(&a.session_id).await.unwrap().unwrap().revoked_reason;
    assert_eq!(reason.as_deref(), Some("logout_all"));
    // Another user's session is untouched.
    assert_eq!(app.me(&other.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn s1_sessions_list_and_revoke_one() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let a = app.session_of(&email).await;
    let r = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("user-agent", "TestPhone/1.0")
        .json(&json!({"email": email, "password": PASSWORD, "device_name": "phone"}))
        .send()
        .await
        .unwrap();
    let b = Tokens::from(r.json::<Value>().await.unwrap());
    let stranger = app.new_session().await;

    let list: Value = app.get_auth("/v1/auth/sessions", &a.access).await.json().await.unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let phone = sessions.iter().find(|s| s["id"] == b.session_id.as_str()).unwrap();
    assert_eq!(phone["device_name"], "phone");
    assert_eq!(phone["user_agent"], "TestPhone/1.0");
    assert_eq!(phone["ip"], "127.0.0.1");
    assert_eq!(phone["current"], false);
    assert_eq!(phone["connected"], false);
    for k in ["created_at", "last_used_at", "expires_at"] {
        let s = phone[k].as_str().unwrap();
        assert!(s.ends_with('Z') && s.contains('T'), "{k} = {s}");
    }
    let mine = sessions.iter().find(|s| s["id"] == a.session_id.as_str()).unwrap();
    assert_eq!(mine["current"], true);

    // Someone else's session: 404, and it stays alive.
    let r = app.delete_auth(&format!("/v1/auth/sessions/{}", stranger.session_id), &a.access).await;
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(app.me(&stranger.access).await.status(), StatusCode::OK);

    let r = app.delete_auth(&format!("/v1/auth/sessions/{}", b.session_id), &a.access).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_problem(app.me(&b.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    let reason = app.state.store.session(&b.session_id).await.unwrap().unwrap().revoked_reason;
    assert_eq!(reason.as_deref(), Some("session_revoked"));
    // No longer live: 404, and the list shows live sessions only.
    let r = app.delete_auth(&format!("/v1/auth/sessions/{}", b.session_id), &a.access).await;
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    let list: Value = app.get_auth("/v1/auth/sessions", &a.access).await.json().await.unwrap();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn r9_password_change_revokes_every_other_session() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let a = app.session_of(&email).await;
    let b = app.session_of(&email).await;

    let wrong = json!({"current_password": "not the password", "new_password": "a brand new password"});
    let r = app.post_auth("/v1/auth/password", &a.access, Some(wrong)).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let short = json!({"current_password": PASSWORD, "new_password": "short"});
    let r = app.post_auth("/v1/auth/password", &a.access, Some(short)).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(app.me(&b.access).await.status(), StatusCode::OK, "failed attempts change nothing");

    let ok = json!({"current_password": PASSWORD, "new_password": "a brand new password"});
    let r = app.post_auth("/v1/auth/password", &a.access, Some(ok)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.me(&a.access).await.status(), StatusCode::OK);
    assert_problem(app.me(&b.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    let reason = app.state.store.session(&b.session_id).await.unwrap().unwrap().revoked_reason;
    assert_eq!(reason.as_deref(), Some("password_changed"));
    assert_problem(app.login(&email, PASSWORD).await, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(app.login(&email, "a brand new password").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn s4_every_login_starts_a_new_session() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let a = app.session_of(&email).await;
    let b = app.session_of(&email).await;
    assert_ne!(a.session_id, b.session_id);
    assert_ne!(a.refresh, b.refresh);
}

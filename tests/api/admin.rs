//! Admin endpoints: 403 for non-admins, listing, forced logout, logout-everyone, bootstrap.

use reqwest::StatusCode;
use serde_json::Value;
use sessiond::config::Secret;

use crate::helpers::*;

#[tokio::test]
async fn s2_non_admins_get_403_and_anonymous_get_401() {
    let Some(app) = spawn_app().await else { return };
    let user = app.new_session().await;
    let paths_get = ["/v1/admin/users", &format!("/v1/admin/users/{}/sessions", user.user_id)];
    for p in paths_get {
        assert_problem(app.get_auth(p, &user.access).await, StatusCode::FORBIDDEN, "forbidden").await;
        let r = app.client.get(app.url(p)).send().await.unwrap();
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    let p = format!("/v1/admin/users/{}/logout-all", user.user_id);
    assert_problem(app.post_auth(&p, &user.access, None).await, StatusCode::FORBIDDEN, "forbidden").await;
    let p = format!("/v1/admin/sessions/{}", user.session_id);
    assert_problem(app.delete_auth(&p, &user.access).await, StatusCode::FORBIDDEN, "forbidden").await;
    let p = "/v1/admin/logout-everyone";
    assert_problem(app.post_auth(p, &user.access, None).await, StatusCode::FORBIDDEN, "forbidden").await;
    // Nothing happened.
    assert_eq!(app.me(&user.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn list_users_pages_through_everyone() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let mut emails = vec![];
    for _ in 0..4 {
        let e = app.new_user().await;
        app.session_of(&e).await;
        emails.push(e);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("/v1/admin/users?limit=2&after={a}"),
            None => "/v1/admin/users?limit=2".to_string(),
        };
        let page: Value = app.get_auth(&q, &admin.access).await.json().await.unwrap();
        let users = page["users"].as_array().unwrap();
        assert!(users.len() <= 2);
        seen.extend(users.iter().cloned());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "admin + 4 users, each once");
    let admin_row = seen.iter().find(|u| u["user_id"] == admin.user_id.as_str()).unwrap();
    assert_eq!(admin_row["roles"], serde_json::json!(["admin"]));
    for e in &emails {
        let row = seen.iter().find(|u| u["email"] == e.as_str()).unwrap();
        assert_eq!(row["active_sessions"], 1);
        assert_eq!(row["roles"], serde_json::json!([]));
        assert!(row["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let r = app.get_auth("/v1/admin/users?limit=0", &admin.access).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = app.get_auth("/v1/admin/users?limit=abc", &admin.access).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[tokio::test]
async fn admin_sees_and_ends_a_users_sessions() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let email = app.new_user().await;
    let a = app.session_of(&email).await;
    let b = app.session_of(&email).await;

    let list: Value =
        app.get_auth(&format!("/v1/admin/users/{}/sessions", a.user_id), &admin.access).await.json().await.unwrap();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    let r = app.get_auth("/v1/admin/users/nope/sessions", &admin.access).await;
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;

    let r = app.delete_auth(&format!("/v1/admin/sessions/{}", a.session_id), &admin.access).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_problem(app.me(&a.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    let reason = app.state.store.session(&a.session_id).await.unwrap().unwrap().revoked_reason;
    assert_eq!(reason.as_deref(), Some("admin_revoked"));
    let r = app.delete_auth(&format!("/v1/admin/sessions/{}", a.session_id), &admin.access).await;
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;

    let r = app.post_auth(&format!("/v1/admin/users/{}/logout-all", a.user_id), &admin.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["revoked_sessions"], 1);
    assert!(body["notified_connections"].is_number());
    assert_problem(app.me(&b.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    let reason = app.state.store.session(&b.session_id).await.unwrap().unwrap().revoked_reason;
    assert_eq!(reason.as_deref(), Some("admin_logout"));
    let r = app.post_auth("/v1/admin/users/nope/logout-all", &admin.access, None).await;
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    // The admin is untouched.
    assert_eq!(app.me(&admin.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn logout_everyone_ends_every_session_including_the_callers() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let users = [app.new_session().await, app.new_session().await, app.new_session().await];
    let r = app.post_auth("/v1/admin/logout-everyone", &admin.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["revoked_sessions"], 4);
    for t in users.iter().chain([&admin]) {
        assert_problem(app.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
        assert_problem(app.refresh(&t.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    }
    // Signing in again works.
    let email = users_email(&app, &users[0].user_id).await;
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
}

async fn users_email(app: &TestApp, user_id: &str) -> String {
    app.state.store.user_by_id(user_id).await.unwrap().unwrap().email
}

#[tokio::test]
async fn bootstrap_admin_on_first_start_only() {
    let Some(app) = spawn_app_with(|c| {
        c.admin_email = Some("Root@Example.com".into());
        c.admin_password = Some(Secret("bootstrap password".into()));
    })
    .await
    else {
        return;
    };
    let r = app.login("root@example.com", "bootstrap password").await;
    assert_eq!(r.status(), StatusCode::OK);
    let t = Tokens::from(r.json::<Value>().await.unwrap());
    let me: Value = app.me(&t.access).await.json().await.unwrap();
    assert_eq!(me["roles"], serde_json::json!(["admin"]));

    // A restart with other bootstrap settings does not add another admin: the database is not empty.
    let mut app = app;
    app.config.admin_email = Some("other@example.com".into());
    let app = app.restart().await;
    assert_eq!(app.state.store.count_users().await.unwrap(), 1);
}

//! Cookie mode for browsers: the refresh token in a `__Host-` cookie, CSRF-checked use, and the
//! pages served by the server.

use reqwest::header::{HeaderMap, HeaderValue, COOKIE, ORIGIN, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const ALLOWED: &str = "http://localhost:8080";

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    let set = headers.get(SET_COOKIE)?.to_str().ok()?;
    let value = set.split(';').next()?.strip_prefix("__Host-sessiond_refresh=")?;
    Some(value.to_string())
}

async fn cookie_login(app: &TestApp, email: &str) -> (Value, String) {
    let r =
        app.post_json("/v1/auth/login", json!({"email": email, "password": PASSWORD, "refresh_cookie": true})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie = cookie_of(r.headers()).unwrap();
    (r.json().await.unwrap(), cookie)
}

/// A browser-like cookie request.
async fn with_cookie(app: &TestApp, path: &str, cookie: &str, origin: Option<&str>, csrf: bool) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(path))
        .header(COOKIE, HeaderValue::from_str(&format!("__Host-sessiond_refresh={cookie}")).unwrap());
    if let Some(o) = origin {
        req = req.header(ORIGIN, o);
    }
    if csrf {
        req = req.header("x-sessiond-csrf", "1");
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn s5_login_in_cookie_mode_keeps_the_refresh_token_out_of_the_body() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let (body, cookie) = cookie_login(&app, &email).await;
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(cookie.starts_with("rt_"));
    assert_eq!(app.me(body["access_token"].as_str().unwrap()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn cookie_refresh_rotates_the_cookie() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let (_, c0) = cookie_login(&app, &email).await;
    let r = with_cookie(&app, "/v1/auth/refresh", &c0, Some(ALLOWED), true).await;
    assert_eq!(r.status(), StatusCode::OK);
    let c1 = cookie_of(r.headers()).expect("rotated cookie");
    assert_ne!(c0, c1);
    let body: Value = r.json().await.unwrap();
    assert!(body.get("refresh_token").is_none());
    assert_eq!(app.me(body["access_token"].as_str().unwrap()).await.status(), StatusCode::OK);
    // The rotated-out cookie converges inside grace, like a body token.
    let r = with_cookie(&app, "/v1/auth/refresh", &c0, Some(ALLOWED), true).await;
    assert_eq!(cookie_of(r.headers()), Some(c1));
}

#[tokio::test]
async fn s6_cookie_requests_without_csrf_proof_get_403_and_change_nothing() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let (body, cookie) = cookie_login(&app, &email).await;
    let access = body["access_token"].as_str().unwrap();
    for (origin, csrf) in [
        (None, true),
        (Some("http://evil.example"), true),
        (Some(ALLOWED), false),
        (Some("http://localhost:8080.evil.example"), true),
    ] {
        for path in ["/v1/auth/refresh", "/v1/auth/logout"] {
            let r = with_cookie(&app, path, &cookie, origin, csrf).await;
            assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
        }
    }
    // A cross-site HTML form post: urlencoded body, foreign Origin, the cookie.
    let r = app
        .client
        .post(app.url("/v1/auth/logout"))
        .header(COOKIE, format!("__Host-sessiond_refresh={cookie}"))
        .header(ORIGIN, "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    // Nothing changed: the session lives and the cookie still refreshes.
    assert_eq!(app.me(access).await.status(), StatusCode::OK);
    let r = with_cookie(&app, "/v1/auth/refresh", &cookie, Some(ALLOWED), true).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn cookie_logout_ends_the_session_and_clears_the_cookie() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let (body, cookie) = cookie_login(&app, &email).await;
    let r = with_cookie(&app, "/v1/auth/logout", &cookie, Some(ALLOWED), true).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers()[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    assert_problem(app.me(body["access_token"].as_str().unwrap()).await, StatusCode::UNAUTHORIZED, "session_revoked")
        .await;
    let r = with_cookie(&app, "/v1/auth/refresh", &cookie, Some(ALLOWED), true).await;
    assert!(r.headers()[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"), "a dead cookie is deleted");
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
}

#[tokio::test]
async fn admin_can_search_users_by_email() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let r = app.register("Carol.Ops@Example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.register("dave@example.com", PASSWORD).await;
    app.register("100%_sure@example.com", PASSWORD).await;
    let emails = |v: Value| -> Vec<String> {
        v["users"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap().to_string()).collect()
    };
    let v: Value = app.get_auth("/v1/admin/users?q=CAROL", &admin.access).await.json().await.unwrap();
    assert_eq!(emails(v), vec!["carol.ops@example.com"]);
    let v: Value = app.get_auth("/v1/admin/users?q=%25_", &admin.access).await.json().await.unwrap();
    assert_eq!(emails(v), vec!["100%_sure@example.com"], "wildcards are literal");
    let v: Value = app.get_auth("/v1/admin/users?q=example.com&limit=500", &admin.access).await.json().await.unwrap();
    assert_eq!(emails(v).len(), 4);
}

#[tokio::test]
async fn pages_are_served_with_a_strict_csp() {
    let Some(app) = spawn_app().await else { return };
    for (path, ct) in [("/", "text/html"), ("/admin", "text/html"), ("/static/sessiond.js", "javascript")] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().contains(ct), "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    }
    let r = app.client.get(app.url("/static/../Cargo.toml")).send().await.unwrap();
    assert_ne!(r.status(), StatusCode::OK);
    let r = app.client.get(app.url("/static/nope.js")).send().await.unwrap();
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn s6_cross_site_posts_without_the_cookie_get_403_too() {
    // With SameSite=Strict a real browser sends no cookie on a cross-site form post.
    let Some(app) = spawn_app().await else { return };
    for path in ["/v1/auth/refresh", "/v1/auth/logout"] {
        let r = app
            .client
            .post(app.url(path))
            .header(ORIGIN, "http://evil.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("refresh_token=rt_x")
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    }
    // A signed-out page's cookie-mode refresh (CSRF header, no cookie) sent no token at all:
    // 400, not the 401 of a dead cookie, so the page does not announce "your session ended".
    let r = app
        .client
        .post(app.url("/v1/auth/refresh"))
        .header(ORIGIN, ALLOWED)
        .header("x-sessiond-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    // The loopback alias of a localhost issuer is allowed by default (past the Origin check).
    let r = app
        .client
        .post(app.url("/v1/auth/refresh"))
        .header(ORIGIN, "http://127.0.0.1:8080")
        .header("x-sessiond-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    // A cookie that was sent and does not work is 401, and the response deletes it.
    let r = app
        .client
        .post(app.url("/v1/auth/refresh"))
        .header(ORIGIN, ALLOWED)
        .header("x-sessiond-csrf", "1")
        .header("cookie", "__Host-sessiond_refresh=rt_dead")
        .send()
        .await
        .unwrap();
    let cleared = r.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
}

//! Bad input gets problem+json with a stable code, never a panic or axum's plain-text defaults.

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn malformed_bodies_are_invalid_request() {
    let Some(app) = spawn_app().await else { return };
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("{not json", Some("application/json")),
        ("[\"a@b.c\", \"password1\"]", Some("application/json")),
        ("{\"email\": 5, \"password\": \"password1\"}", Some("application/json")),
        ("{\"email\": \"a@b.c\"}", Some("application/json")),
        ("{\"email\": \"a@b.c\", \"password\": \"password1\"}", Some("text/plain")),
        ("{\"email\": \"a@b.c\", \"password\": \"password1\"}", None),
        ("\"just a string\"", Some("application/json")),
        ("{\"email\": \"a@b.c\", \"password\": null}", Some("application/json")),
    ];
    let mut bodies = std::collections::HashSet::new();
    for (body, ct) in cases {
        let mut req = app.client.post(app.url("/v1/auth/login")).body(body.to_string());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        let v = assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(!v.to_string().contains("password1"), "input is never echoed");
        bodies.insert(v.to_string());
    }
    // Details are fixed sentences, not serde messages with positions.
    assert!(bodies.len() <= 5, "{bodies:?}");
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let Some(app) = spawn_app().await else { return };
    let big = format!("{{\"email\":\"a@b.c\",\"password\":\"{}\"}}", "x".repeat(70 * 1024));
    let r = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // 60 KiB is under the limit: an ordinary failed login.
    let ok = format!("{{\"email\":\"a@b.c\",\"password\":\"{}\"}}", "x".repeat(60 * 1024));
    let r = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("content-type", "application/json")
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let Some(app) = spawn_app().await else { return };
    let r = app.client.get(app.url("/v1/nope")).send().await.unwrap();
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = app.client.put(app.url("/v1/auth/login")).send().await.unwrap();
    assert_problem(r, StatusCode::METHOD_NOT_ALLOWED, "invalid_request").await;
}

#[tokio::test]
async fn equal_errors_have_identical_bodies() {
    let Some(app) = spawn_app().await else { return };
    let a = app.me("abc.def.ghi").await.bytes().await.unwrap();
    let b = app.me("xyz.uvw.rst").await.bytes().await.unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let Some(app) = spawn_app().await else { return };
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    let t = app.new_session().await;
    app.refresh(&t.refresh).await;
    app.login("nobody@example.com", "wrong password").await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        "sessiond_http_requests_total{method=\"POST\",route=\"/v1/auth/login\",status=\"200\"} 1",
        "sessiond_http_requests_total{method=\"POST\",route=\"/v1/auth/login\",status=\"401\"} 1",
        "sessiond_logins_total{outcome=\"success\"} 1",
        "sessiond_logins_total{outcome=\"invalid_credentials\"} 1",
        "sessiond_refreshes_total{outcome=\"rotated\"} 1",
        "sessiond_sessions_revoked_total{reason=\"logout\"} 1",
        "sessiond_active_sessions 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains(&t.refresh) && !text.contains(&t.access));
}

//! `/metrics` (SECURITY.md RT2, RT10): label values from fixed sets only, no database work per
//! scrape, and not served to the public.

use reqwest::{Method, StatusCode};

use crate::helpers::*;

async fn scrape(app: &TestApp) -> String {
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap()
}

/// RT2: every distinct method string used to become a permanent label of the request counter
/// (600 requests with 16 KB methods grew `/metrics` to 9.6 MB, never freed).
#[tokio::test]
async fn rt2_junk_methods_do_not_grow_the_metrics() {
    let Some(app) = spawn_app().await else { return };
    // One junk request first, so the `OTHER` series it adds is part of the baseline.
    let junk = |i: usize| Method::from_bytes(format!("JUNK{i:04}{}", "X".repeat(1024)).as_bytes()).unwrap();
    app.client.request(junk(0), app.url("/healthz")).send().await.unwrap();
    app.client.request(junk(0), app.url("/no/such/path")).send().await.unwrap();
    let before = scrape(&app).await;
    for i in 1..=1000 {
        let path = if i % 2 == 0 { "/healthz" } else { "/no/such/path" };
        let r = app.client.request(junk(i), app.url(path)).send().await.unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let after = scrape(&app).await;
    assert!(!after.contains("JUNK"), "a request's method became a label");
    // The scrapes themselves (GET /metrics 200) add at most one series.
    assert!(after.len() < before.len() + 512, "/metrics grew from {} to {} bytes", before.len(), after.len());
    assert!(after.contains("method=\"OTHER\""), "junk methods are counted as OTHER:\n{after}");
}

/// RT10: a scrape reads no database: the live-session gauge is recounted by the periodic sweep
/// (and at start), so a session started since does not show until the next sweep.
#[tokio::test]
async fn rt10_a_scrape_does_no_database_work() {
    let Some(app) = spawn_app().await else { return };
    app.new_session().await;
    assert!(scrape(&app).await.contains("sessiond_active_sessions 0\n"), "the scrape counted sessions itself");
    app.state.sessions.sweep().await.unwrap();
    assert!(scrape(&app).await.contains("sessiond_active_sessions 1\n"), "the sweep recounts");
}

/// RT10: `/metrics` is not public: loopback clients only, unless `--metrics-token` is set
/// (then a Bearer token from anywhere) or it is scraped on `--metrics-listen`.
#[tokio::test]
async fn rt10_metrics_are_served_to_loopback_or_with_the_token_only() {
    let Some(app) = spawn_app_with(|c| c.trusted_proxies = "127.0.0.1".parse().unwrap()).await else { return };
    let from = |ip: &str| app.client.get(app.url("/metrics")).header("x-forwarded-for", ip.to_string());
    assert_eq!(from("127.0.0.1").send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(from("::1").send().await.unwrap().status(), StatusCode::OK);
    assert_problem(from("203.0.113.9").send().await.unwrap(), StatusCode::FORBIDDEN, "forbidden").await;

    let token = "metrics scrape token 0123456789";
    let Some(app) = spawn_app_with(|c| {
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
        c.metrics_token = Some(sessiond::config::Secret(token.into()));
    })
    .await
    else {
        return;
    };
    let from = |ip: &str| app.client.get(app.url("/metrics")).header("x-forwarded-for", ip.to_string());
    let r = from("127.0.0.1").send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer", "a token is needed even from loopback");
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let r = from("203.0.113.9").bearer_auth("metrics scrape token 012345678x").send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let r = from("203.0.113.9").bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("sessiond_http_requests_total"));

    // A second listener that serves only /metrics, openly.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let Some(app) = spawn_app_with(|c| {
        c.metrics_token = Some(sessiond::config::Secret(token.into()));
        c.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    })
    .await
    else {
        return;
    };
    // `serve` binds the metrics listener before it starts answering on the main one.
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    let r = app.client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("sessiond_active_sessions"));
    let r = app.client.get(format!("http://127.0.0.1:{port}/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "the metrics listener serves nothing else");
}

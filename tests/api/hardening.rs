//! Hardening (issue 7): login throttling, per-IP caps, trusted proxies, account state, admin
//! roles and the audit log, named after their SECURITY.md rows (P3, W3, W7, R9, S2).

use std::net::IpAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::ws::{connect, open};

/// A client whose connections come from `ip` (any 127.0.0.0/8 address works on loopback).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder().no_proxy().local_address(ip.parse::<IpAddr>().unwrap()).build().unwrap()
}

async fn login_from(app: &TestApp, client: &reqwest::Client, email: &str, password: &str) -> reqwest::Response {
    client.post(app.url("/v1/auth/login")).json(&json!({ "email": email, "password": password })).send().await.unwrap()
}

/// `Retry-After` of a 429, checked to be 1..=60 seconds.
fn retry_after(r: &reqwest::Response) -> u64 {
    let s: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&s), "Retry-After {s}");
    s
}

#[tokio::test]
async fn p3_guessing_one_account_is_throttled_without_locking_the_user_out() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let attacker = client_from("127.0.0.2");
    let free = app.config.login_free_failures;
    // The free failures answer 401; the next failure starts the backoff.
    for _ in 0..=free {
        assert_eq!(login_from(&app, &attacker, &email, "wrong password!").await.status(), StatusCode::UNAUTHORIZED);
    }
    // Now 429 + Retry-After before any password work, for wrong and right passwords alike.
    let r = login_from(&app, &attacker, &email, "wrong password!").await;
    assert_eq!(retry_after(&r), 1);
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let r = login_from(&app, &attacker, &email, PASSWORD).await;
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // The real user, from another address, logs in at once.
    let user = client_from("127.0.0.3");
    assert_eq!(login_from(&app, &user, &email, PASSWORD).await.status(), StatusCode::OK);

    // Each further failure doubles the block (1 s, 2 s, 4 s …), at most 60 s.
    let mut expected = 1;
    for _ in 0..8 {
        app.clock.advance(Duration::from_secs(expected));
        assert_eq!(login_from(&app, &attacker, &email, "wrong password!").await.status(), StatusCode::UNAUTHORIZED);
        expected = (expected * 2).min(60);
        let r = login_from(&app, &attacker, &email, "wrong password!").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry_after(&r), expected);
    }
    assert_eq!(expected, 60, "capped at 60 s");
    // After the block, the right password works from the attacker's address too.
    app.clock.advance(Duration::from_secs(60));
    assert_eq!(login_from(&app, &attacker, &email, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn p3_one_address_trying_many_accounts_is_throttled() {
    let Some(app) = spawn_app().await else { return };
    let sprayer = client_from("127.0.0.4");
    let per_ip = app.config.login_free_failures * 4;
    for i in 0..per_ip {
        let r = login_from(&app, &sprayer, &format!("victim-{i}@example.com"), "Summer2026!").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = login_from(&app, &sprayer, "one-more@example.com", "Summer2026!").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the failure past the allowance starts the backoff");
    let r = login_from(&app, &sprayer, "and-another@example.com", "Summer2026!").await;
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Other addresses are not affected.
    let email = app.new_user().await;
    assert_eq!(login_from(&app, &client_from("127.0.0.5"), &email, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn p2_throttling_treats_unknown_and_known_accounts_alike() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let mut seqs = Vec::new();
    for (ip, account) in [("127.0.0.6", email.as_str()), ("127.0.0.7", "nobody-here@example.com")] {
        let c = client_from(ip);
        let mut seq = Vec::new();
        for _ in 0..app.config.login_free_failures + 3 {
            let r = login_from(&app, &c, account, "wrong password!").await;
            seq.push((r.status(), r.headers().get("retry-after").cloned(), r.bytes().await.unwrap()));
        }
        seqs.push(seq);
    }
    assert_eq!(seqs[0], seqs[1], "same statuses, Retry-After and bodies for a known and an unknown email");
}

#[tokio::test]
async fn p4_registrations_per_address_are_capped() {
    let Some(app) = spawn_app_with(|c| c.register_per_ip_per_hour = 3).await else { return };
    let c = client_from("127.0.0.8");
    for i in 0..3 {
        let r = c
            .post(app.url("/v1/auth/register"))
            .json(&json!({ "email": format!("r{i}-{}@example.com", uuid::Uuid::new_v4()), "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = c
        .post(app.url("/v1/auth/register"))
        .json(&json!({ "email": "one-too-many@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    retry_after(&r);
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // The refused attempt created nothing.
    assert!(app.state.store.user_by_email("one-too-many@example.com").await.unwrap().is_none());
    // Another address still registers.
    assert_eq!(app.register("other-address@example.com", PASSWORD).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn w7_forwarded_for_is_believed_only_from_trusted_proxies() {
    for trusted in [false, true] {
        let Some(app) = spawn_app_with(|c| {
            if trusted {
                c.trusted_proxies = "127.0.0.1/32".parse().unwrap();
            }
        })
        .await
        else {
            return;
        };
        let email = app.new_user().await;
        let r = app
            .client
            .post(app.url("/v1/auth/login"))
            .header("x-forwarded-for", "198.51.100.9, 203.0.113.7")
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        let t = Tokens::from(r.json::<Value>().await.unwrap());
        let v: Value = app.get_auth("/v1/auth/sessions", &t.access).await.json().await.unwrap();
        let ip = v["sessions"][0]["ip"].as_str().unwrap().to_string();
        let expected = if trusted { "203.0.113.7" } else { "127.0.0.1" };
        assert_eq!(ip, expected, "trusted proxies: {trusted}");
    }
}

#[tokio::test]
async fn w3_unauthenticated_sockets_are_capped_per_address() {
    let Some(app) = spawn_app_with(|c| c.ws_max_unauthenticated_per_ip = 2).await else { return };
    let t = app.new_session().await;
    let mut a = connect(&app, None).await.unwrap();
    let _b = connect(&app, None).await.unwrap();
    assert_eq!(connect(&app, None).await.err(), Some(429), "a third unauthenticated socket is refused");
    // Authenticating frees the slot.
    assert_eq!(a.auth(&t.access).await["type"], "ready");
    let _c = connect(&app, None).await.unwrap();
    assert_eq!(connect(&app, None).await.err(), Some(429));
    let m = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("sessiond_ws_refused_total{outcome=\"unauthenticated_per_ip\"}"), "{m}");
}

#[tokio::test]
async fn w7_the_instance_socket_cap_answers_503() {
    let Some(app) = spawn_app_with(|c| c.ws_max_sockets = 2).await else { return };
    let t = app.new_session().await;
    let _a = open(&app, &t.access).await;
    let _b = connect(&app, None).await.unwrap();
    assert_eq!(connect(&app, None).await.err(), Some(503));
    // The same refusal over plain HTTP shows the body and the Retry-After.
    let r = app
        .client
        .get(app.url("/v1/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
}

#[tokio::test]
async fn r9_disabling_an_account_ends_every_session_and_blocks_login() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let email = app.new_user().await;
    let s1 = app.session_of(&email).await;
    let s2 = app.session_of(&email).await;
    let mut ws = open(&app, &s1.access).await;

    let r = app.post_auth(&format!("/v1/admin/users/{}/disable", s1.user_id), &admin.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["revoked_sessions"], 2);
    ws.expect_logout("account_disabled", &s1.session_id).await;
    assert_problem(app.me(&s2.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    assert_eq!(app.refresh(&s2.refresh).await.status(), StatusCode::UNAUTHORIZED);

    // Login fails exactly like a wrong password.
    let disabled = app.login(&email, PASSWORD).await;
    let wrong = app.login(&email, "wrong password!").await;
    assert_eq!(disabled.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(disabled.bytes().await.unwrap(), wrong.bytes().await.unwrap());

    let r = app.post_auth(&format!("/v1/admin/users/{}/enable", s1.user_id), &admin.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    // Ended sessions stay ended.
    assert_eq!(app.refresh(&s2.refresh).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn s2_account_admin_endpoints_need_a_current_admin() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let user = app.new_session().await;
    for (method, path) in [
        ("POST", format!("/v1/admin/users/{}/disable", admin.user_id)),
        ("POST", format!("/v1/admin/users/{}/enable", admin.user_id)),
        ("POST", format!("/v1/admin/users/{}/admin", user.user_id)),
        ("DELETE", format!("/v1/admin/users/{}/admin", admin.user_id)),
        ("GET", "/v1/admin/audit".to_string()),
    ] {
        let req = app.client.request(method.parse().unwrap(), app.url(&path)).bearer_auth(&user.access);
        assert_problem(req.send().await.unwrap(), StatusCode::FORBIDDEN, "forbidden").await;
    }
    // Unknown users are 404; an admin cannot lock themself out.
    let r = app.post_auth("/v1/admin/users/no-such-user/disable", &admin.access, None).await;
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = app.post_auth(&format!("/v1/admin/users/{}/disable", admin.user_id), &admin.access, None).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = app.delete_auth(&format!("/v1/admin/users/{}/admin", admin.user_id), &admin.access).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[tokio::test]
async fn s2_a_revoked_admin_role_stops_working_at_once() {
    let Some(app) = spawn_app().await else { return };
    let root = app.new_admin().await;
    let email = app.new_user().await;
    let before = app.session_of(&email).await;
    let r = app.post_auth(&format!("/v1/admin/users/{}/admin", before.user_id), &root.access, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // A token issued before the grant has no admin role: still refused.
    assert_eq!(app.get_auth("/v1/admin/users", &before.access).await.status(), StatusCode::FORBIDDEN);
    let promoted = app.session_of(&email).await;
    assert_eq!(promoted.raw["access_token"].as_str().map(|_| ()), Some(()));
    assert_eq!(app.get_auth("/v1/admin/users", &promoted.access).await.status(), StatusCode::OK);

    // Revoke the role: the still-valid token that says "admin" is refused on the next call.
    // Since RT14 the demotion ends the user's sessions, so it is refused as revoked (401), not
    // merely as lacking the role (403), and everywhere, not only on admin endpoints.
    let r = app.delete_auth(&format!("/v1/admin/users/{}/admin", promoted.user_id), &root.access).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.get_auth("/v1/admin/users", &promoted.access).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "session_revoked").await;
    // A token that still claims the role while the database says otherwise (the role checked
    // on every admin call): a fresh login's token has no role, so sign one with the claim.
    let now = app.clock.now_ms();
    let relogged = app.session_of(&email).await;
    let (claiming, _) =
        app.state.keys.issue(&relogged.user_id, &relogged.session_id, vec!["admin".into()], now, now + 60_000).unwrap();
    assert_problem(app.get_auth("/v1/admin/users", &claiming).await, StatusCode::FORBIDDEN, "forbidden").await;
    // A disabled admin is no admin either.
    let other = app.new_admin().await;
    let r = app.post_auth(&format!("/v1/admin/users/{}/disable", other.user_id), &root.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.get_auth("/v1/admin/users", &other.access).await.status(), StatusCode::UNAUTHORIZED);
}

async fn audit(app: &TestApp, admin: &str, query: &str) -> Value {
    let r = app.get_auth(&format!("/v1/admin/audit{query}"), admin).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn s2_security_events_are_audited_with_actor_target_and_origin() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let email = app.new_user().await;
    let c = client_from("127.0.0.9");
    let r = c
        .post(app.url("/v1/auth/login"))
        .header("user-agent", "audit-test/1.0")
        .json(&json!({ "email": email, "password": "wrong password!" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let t = app.session_of(&email).await;
    // Refresh reuse outside grace revokes the session.
    let next: Value = app.refresh(&t.refresh).await.json().await.unwrap();
    assert!(next["refresh_token"].is_string());
    app.clock.advance(Duration::from_secs(11));
    assert_eq!(app.refresh(&t.refresh).await.status(), StatusCode::UNAUTHORIZED);
    let r = app.post_auth(&format!("/v1/admin/users/{}/disable", t.user_id), &admin.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);

    let v = audit(&app, &admin.access, &format!("?user_id={}", t.user_id)).await;
    let events: Vec<&Value> = v["events"].as_array().unwrap().iter().collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user_registered", "login_failed", "login_succeeded", "refresh_token_reused", "user_disabled"]);
    let failed = events[1];
    assert_eq!(failed["ip"], "127.0.0.9");
    assert_eq!(failed["user_agent"], "audit-test/1.0");
    assert_eq!(failed["target_user_id"], t.user_id.as_str());
    assert!(failed["actor_user_id"].is_null());
    assert_eq!(events[2]["actor_user_id"], t.user_id.as_str());
    assert_eq!(events[2]["target_session_id"], t.session_id.as_str());
    assert_eq!(events[3]["target_session_id"], t.session_id.as_str());
    assert_eq!(events[4]["actor_user_id"], admin.user_id.as_str());
    assert_eq!(events[4]["detail"]["sessions_revoked"], 0, "reuse had already ended the only session");
    assert!(events[0]["at"].as_str().unwrap().ends_with('Z'));
    // No secrets in the trail.
    let text = v.to_string();
    assert!(!text.contains(PASSWORD) && !text.contains("wrong password!") && !text.contains(&t.refresh));

    // Revocations name their reason and actor; logout-everyone is one event.
    let r = app.post_auth("/v1/admin/logout-everyone", &admin.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let reader = app.new_admin().await; // logout-everyone ended the first admin's session too
    let v = audit(&app, &reader.access, &format!("?user_id={}", admin.user_id)).await;
    let last = v["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "sessions_revoked");
    assert_eq!(last["detail"]["reason"], "admin_logout");
    assert_eq!(last["actor_user_id"], admin.user_id.as_str());
}

#[tokio::test]
async fn s2_the_audit_log_pages_and_is_append_only() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    for _ in 0..3 {
        app.new_session().await;
    }
    // Pages of 2 in order, with `next` until the end.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let v = audit(&app, &admin.access, &format!("?limit=2&after={after}")).await;
        let page = v["events"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|e| e["id"].as_str().unwrap().parse::<i64>().unwrap()));
        match v["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert!(seen.len() >= 8, "{seen:?}");
    let first = audit(&app, &admin.access, "?limit=1").await;
    assert_eq!(first["events"][0]["event"], "signing_key_created", "the first start's key is audited");
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let r = app.get_auth("/v1/admin/audit?limit=0", &admin.access).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = app.get_auth("/v1/admin/audit?after=x", &admin.access).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;

    // The database refuses to change or delete audit rows.
    let mut db = app.raw_db().await;
    for sql in ["UPDATE audit_log SET event = 'nothing'", "DELETE FROM audit_log"] {
        let r = db.execute(sql).await;
        assert!(r.is_err(), "{sql} must fail");
    }
    let v = audit(&app, &admin.access, "?limit=500").await;
    assert_eq!(v["events"].as_array().unwrap().len(), seen.len());
}

#[tokio::test]
async fn w11_a_message_flood_is_closed_1008() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let mut ws = open(&app, &t.access).await;
    let limit = sessiond::socket::MAX_FRAMES_PER_PERIOD as usize;
    // `auth` was frame 1; send far more pings than allowed without reading.
    for _ in 0..limit * 2 {
        if ws.stream.send(Message::Text(json!({"type": "ping"}).to_string().into())).await.is_err() {
            break;
        }
    }
    let mut pongs = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.stream.next()).await.expect("bounded") {
            Some(Ok(Message::Text(_))) => pongs += 1,
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    assert_eq!(code, Some(1008));
    assert_eq!(pongs, limit - 1, "every frame up to the limit was served, none after");
}

#[tokio::test]
async fn s4_a_login_ends_the_session_of_a_presented_refresh_cookie() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let old = app.session_of(&email).await;
    let r = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("cookie", format!("__Host-sessiond_refresh={}", old.refresh))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let new = Tokens::from(r.json::<Value>().await.unwrap());
    assert_ne!(new.session_id, old.session_id, "never the presented session");
    assert_eq!(app.refresh(&old.refresh).await.status(), StatusCode::UNAUTHORIZED);
    assert_problem(app.me(&old.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    assert_eq!(app.me(&new.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn p1_hashes_are_argon2id_owasp_and_weaker_ones_are_rehashed_on_login() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let stored = app.state.store.user_by_email(&email).await.unwrap().unwrap().password_hash;
    assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
    assert!(!sessiond::password::needs_rehash(&stored));

    // A user whose hash predates today's parameters (m = 8 MiB, t = 1).
    let weak = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8192, 1, 1, None).unwrap(),
    )
    .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut rand::rngs::OsRng))
    .unwrap()
    .to_string();
    let id = uuid::Uuid::now_v7().to_string();
    app.state.store.create_user(&id, "legacy@example.com", &weak, false, app.clock.now_ms()).await.unwrap();
    assert!(sessiond::password::needs_rehash(&weak));
    app.session_of("legacy@example.com").await;
    let now = app.state.store.user_by_id(&id).await.unwrap().unwrap().password_hash;
    assert!(now.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "rehashed: {now}");
    app.session_of("legacy@example.com").await;
}

#[tokio::test]
async fn w5_permessage_deflate_is_never_negotiated() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let Some(app) = spawn_app().await else { return };
    let mut req = format!("ws://{}/v1/ws", app.base.trim_start_matches("http://")).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-extensions", "permessage-deflate; client_max_window_bits".parse().unwrap());
    let (_ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert!(res.headers().get("sec-websocket-extensions").is_none(), "{:?}", res.headers());
}

#[tokio::test]
async fn w2_a_token_in_the_url_is_ignored() {
    use futures::StreamExt;
    let Some(app) = spawn_app_with(|c| c.ws_auth_timeout = Duration::from_millis(300)).await else { return };
    let t = app.new_session().await;
    let url = format!("ws://{}/v1/ws?access_token={}", app.base.trim_start_matches("http://"), t.access);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // Not authenticated by the URL: nothing but the auth-timeout close arrives.
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("bounded").unwrap().unwrap();
    match msg {
        tokio_tungstenite::tungstenite::Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4408),
        other => panic!("expected close 4408, got {other:?}"),
    }
}

#[tokio::test]
async fn r10_a_refresh_token_of_a_deleted_session_is_refused() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let a = app.new_session().await;
    let b = app.new_session().await;
    let r = app.delete_auth(&format!("/v1/admin/sessions/{}", a.session_id), &admin.access).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_problem(app.refresh(&a.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    // A token refreshes only its own session.
    let v: Value = app.refresh(&b.refresh).await.json().await.unwrap();
    assert_eq!(v["session_id"], b.session_id.as_str());
}

#[test]
fn r8_refresh_tokens_carry_256_random_bits() {
    use base64::Engine;
    use sessiond::tokens::refresh::RefreshToken;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100_000 {
        let t = RefreshToken::generate();
        let body = t.as_str().strip_prefix("rt_").unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).unwrap();
        assert_eq!(bytes.len(), 32);
        assert!(seen.insert(bytes));
    }
}

#[tokio::test]
async fn f6_clock_skew_between_instances_is_bounded_by_the_leeway() {
    // Instance B runs ahead of A. Tokens from A verify on B as long as their `exp` (A's clock
    // + TTL) has not passed on B's clock + leeway; a token whose `iat` lies more than the 30 s
    // leeway in B's future is refused (B runs behind).
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    for (skew, ok) in [(-20i64, true), (-45, false), (120, true), (299 + 30, true), (300 + 31, false)] {
        let mut config = app.config.clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        let clock = sessiond::clock::Clock::system();
        if skew > 0 {
            clock.advance(Duration::from_secs(skew as u64));
        }
        let b = start_on(config, app.dir.clone(), clock.clone(), app.db.clone()).await;
        b.wait_ready().await;
        let status = if skew < 0 {
            // B behind A: equivalently, A's token was issued |skew| s in B's future.
            let ahead = sessiond::clock::Clock::system();
            ahead.advance(Duration::from_secs((-skew) as u64));
            let (token, _) = b
                .state
                .keys
                .issue(&t.user_id, &t.session_id, vec![], ahead.now_ms(), ahead.now_ms() + 300_000)
                .unwrap();
            b.me(&token).await.status()
        } else {
            b.me(&t.access).await.status()
        };
        assert_eq!(status == StatusCode::OK, ok, "skew {skew} s: {status}");
    }
}

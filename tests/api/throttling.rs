//! Throttling findings of the issue-11 red-team pass: password-change guessing (RT3), targeted
//! lockout of the real user (RT7), per-address limits keyed by network (RT8) and the argon2
//! queue shared per address key (RT12).
//!
//! Client addresses come from `X-Forwarded-For` behind a trusted proxy (the test client on
//! 127.0.0.1), so any IPv4 or IPv6 address can be played; time moves with the app clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// A server that believes `X-Forwarded-For` from the test client.
async fn behind_proxy(tweak: impl FnOnce(&mut sessiond::config::Config)) -> Option<TestApp> {
    spawn_app_with(|c| {
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
        tweak(c);
    })
    .await
}

/// A POST as if from `ip`.
fn post_from(app: &TestApp, ip: &str, path: &str) -> reqwest::RequestBuilder {
    app.client.post(app.url(path)).header("x-forwarded-for", ip)
}

async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str) -> reqwest::Response {
    post_from(app, ip, "/v1/auth/login").json(&json!({ "email": email, "password": password })).send().await.unwrap()
}

/// A cookie-mode login from `ip`, sending `cookie` (a refresh cookie) if given.
async fn cookie_login_from(app: &TestApp, ip: &str, email: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut req = post_from(app, ip, "/v1/auth/login")
        .json(&json!({ "email": email, "password": PASSWORD, "refresh_cookie": true }));
    if let Some(c) = cookie {
        req = req.header(COOKIE, format!("__Host-sessiond_refresh={c}"));
    }
    req.send().await.unwrap()
}

fn cookie_of(r: &reqwest::Response) -> String {
    let set = r.headers()[SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().strip_prefix("__Host-sessiond_refresh=").unwrap().to_string()
}

fn retry_after(r: &reqwest::Response) -> Option<u64> {
    r.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap())
}

async fn change_password_from(app: &TestApp, ip: &str, access: &str, current: &str, new: &str) -> reqwest::Response {
    post_from(app, ip, "/v1/auth/password")
        .bearer_auth(access)
        .json(&json!({ "current_password": current, "new_password": new }))
        .send()
        .await
        .unwrap()
}

async fn metrics(app: &TestApp) -> String {
    app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn rt3_password_change_guesses_are_throttled_and_audited() {
    let Some(app) = behind_proxy(|_| {}).await else { return };
    let admin = app.new_admin().await;
    let email = app.new_user().await;
    let stolen = app.session_of(&email).await; // the attacker holds this access token
    let attacker = "203.0.113.5";
    let taken_over = "attacker's own password";

    // Guessing the current password: 401s, then 429 within the login limits.
    let free = app.config.login_free_failures as usize;
    let mut refused_at = None;
    for attempt in 1..=60 {
        let r =
            change_password_from(&app, attacker, &stolen.access, &format!("guess number {attempt}"), taken_over).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(retry_after(&r), Some(1), "the caller's own first block");
            assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
            refused_at = Some(attempt);
            break;
        }
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    let refused_at = refused_at.expect("59 wrong guesses and never a 429");
    assert!((free + 1..=free + 2).contains(&refused_at), "first 429 at attempt {refused_at}");

    // The right password while blocked is refused too, before any password work.
    let r = change_password_from(&app, attacker, &stolen.access, PASSWORD, taken_over).await;
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Not taken over: the user's password still works (from their own address), the
    // attacker's does not.
    assert_eq!(login_from(&app, "198.51.100.1", &email, PASSWORD).await.status(), StatusCode::OK);
    assert_eq!(login_from(&app, "198.51.100.1", &email, taken_over).await.status(), StatusCode::UNAUTHORIZED);

    // Every wrong guess is in the audit log with actor, target, session and origin.
    let r = app.get_auth(&format!("/v1/admin/audit?user_id={}&limit=500", stolen.user_id), &admin.access).await;
    let v: Value = r.json().await.unwrap();
    let failed: Vec<&Value> =
        v["events"].as_array().unwrap().iter().filter(|e| e["event"] == "password_change_failed").collect();
    assert_eq!(failed.len(), refused_at - 1, "one row per wrong guess, none for the 429s");
    for e in &failed {
        assert_eq!(e["actor_user_id"], stolen.user_id.as_str());
        assert_eq!(e["target_user_id"], stolen.user_id.as_str());
        assert_eq!(e["target_session_id"], stolen.session_id.as_str());
        assert_eq!(e["ip"], attacker);
    }
    assert!(!v.to_string().contains("guess number"), "no password in the trail");
    let m = metrics(&app).await;
    let line = format!("sessiond_password_changes_total{{outcome=\"invalid_credentials\"}} {}", refused_at - 1);
    assert!(m.contains(&line), "{m}");
    assert!(m.contains("sessiond_password_changes_total{outcome=\"rate_limited\"} 2"), "{m}");
}

#[tokio::test]
async fn rt3_failures_at_login_and_at_password_change_add_up() {
    let Some(app) = behind_proxy(|_| {}).await else { return };
    let email = app.new_user().await;
    let stolen = app.session_of(&email).await;
    let attacker = "203.0.113.6";
    // All free failures spent at the login form…
    for _ in 0..app.config.login_free_failures {
        assert_eq!(login_from(&app, attacker, &email, "wrong password!").await.status(), StatusCode::UNAUTHORIZED);
    }
    // …so the password change gets one more failure (which starts the backoff), then 429.
    let r = change_password_from(&app, attacker, &stolen.access, "wrong password!", "whatever new pw").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = change_password_from(&app, attacker, &stolen.access, PASSWORD, "whatever new pw").await;
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // And the other way round: the login form is blocked for that address as well.
    let r = login_from(&app, attacker, &email, PASSWORD).await;
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test]
async fn rt7_an_attacker_cannot_lock_the_real_user_out() {
    let Some(app) = behind_proxy(|_| {}).await else { return };
    let email = app.new_user().await;
    let home = "198.51.100.7";
    // The real user logged in from home before; a browser user holds a live refresh cookie.
    assert_eq!(login_from(&app, home, &email, PASSWORD).await.status(), StatusCode::OK);
    let r = cookie_login_from(&app, "198.51.100.20", &email, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut cookie = cookie_of(&r);
    // Another account's live cookie proves nothing for this one.
    let other = app.new_user().await;
    let r = cookie_login_from(&app, "198.51.100.30", &other, None).await;
    let foreign_cookie = cookie_of(&r);

    // Three addresses spend the account's free failures, then keep it blocked.
    let attackers = ["203.0.113.1", "203.0.113.2", "203.0.113.3"];
    let account_free = app.config.login_free_failures as usize * 2;
    for i in 0..=account_free {
        let r = login_from(&app, attackers[i % 3], &email, "wrong password!").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    let unproven = "192.0.2.1";
    for second in 0..60u32 {
        // An address that never logged in to this account: refused, with the cap as
        // Retry-After, never the remaining time of the account's block.
        keep_blocked(&app, &attackers, &email).await;
        let r = login_from(&app, unproven, &email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "second {second}: the account stays blocked");
        assert_eq!(retry_after(&r), Some(60), "second {second}");
        if second % 10 == 0 {
            // The real user, from an address that logged in before, gets in.
            let r = login_from(&app, home, &email, PASSWORD).await;
            assert_eq!(r.status(), StatusCode::OK, "second {second}: the real user is locked out");
            // So does the browser with a live cookie of the account, from a new address.
            let fresh = format!("192.0.2.{}", 100 + second);
            keep_blocked(&app, &attackers, &email).await;
            let r = login_from(&app, &fresh, &email, PASSWORD).await;
            assert_eq!(retry_after(&r), Some(60), "without the cookie, {fresh} is unproven");
            keep_blocked(&app, &attackers, &email).await;
            let r = cookie_login_from(&app, &fresh, &email, Some(&foreign_cookie)).await;
            assert_eq!(retry_after(&r), Some(60), "another account's cookie proves nothing");
            keep_blocked(&app, &attackers, &email).await;
            let r = cookie_login_from(&app, &fresh, &email, Some(&cookie)).await;
            assert_eq!(r.status(), StatusCode::OK, "second {second}: the cookie user is locked out");
            cookie = cookie_of(&r);
        }
        app.clock.advance(Duration::from_secs(1));
    }
}

/// The attackers' side of RT7: whenever the account's block is about to end, the next wrong
/// guess from one of `attackers` renews it. Returns once the block has at least a second left,
/// so the check that follows cannot race its end (real time passes too: the app clock is the
/// system clock plus the tests' offset). A real attacker just guesses continuously; the test
/// reads the server's gate to know when a guess is due instead.
async fn keep_blocked(app: &TestApp, attackers: &[&str], email: &str) {
    use sessiond::limits::LoginGate;
    let blocked_at = |at| app.state.limits.login_gate(Some(email), None, at) == LoginGate::AccountBlocked;
    for _ in 0..100 {
        if blocked_at(app.clock.now_ms() + 1000) {
            return;
        }
        if blocked_at(app.clock.now_ms()) {
            app.clock.advance(Duration::from_secs(1)); // about to end: let it end
        }
        for a in attackers {
            let r = login_from(app, a, email, "wrong password!").await;
            assert!(matches!(r.status().as_u16(), 401 | 429), "{}", r.status());
        }
    }
    panic!("three addresses could not keep the account blocked");
}

async fn register_from(app: &TestApp, ip: &str) -> StatusCode {
    let email = format!("r-{}@example.com", uuid::Uuid::new_v4().simple());
    let body = json!({ "email": email, "password": PASSWORD });
    post_from(app, ip, "/v1/auth/register").json(&body).send().await.unwrap().status()
}

#[tokio::test]
async fn rt8_registrations_are_capped_per_64() {
    let Some(app) = behind_proxy(|c| c.register_per_ip_per_hour = 2).await else { return };
    assert_eq!(register_from(&app, "2001:db8:a:b::1").await, StatusCode::CREATED);
    assert_eq!(register_from(&app, "2001:db8:a:b::2").await, StatusCode::CREATED);
    assert_eq!(
        register_from(&app, "2001:db8:a:b:ffff:ffff:ffff:fffe").await,
        StatusCode::TOO_MANY_REQUESTS,
        "same /64"
    );
    assert_eq!(register_from(&app, "2001:db8:a:c::1").await, StatusCode::CREATED, "another /64");
    // IPv4 stays per address; its IPv4-mapped IPv6 spelling is the same address.
    assert_eq!(register_from(&app, "192.0.2.1").await, StatusCode::CREATED);
    assert_eq!(register_from(&app, "::ffff:192.0.2.1").await, StatusCode::CREATED);
    assert_eq!(register_from(&app, "192.0.2.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(register_from(&app, "192.0.2.2").await, StatusCode::CREATED);
}

/// A socket opened as if from `ip`; `Err` holds the status of a refused upgrade.
async fn socket_from(app: &TestApp, ip: &str) -> Result<Socket, u16> {
    let mut req = format!("ws://{}/v1/ws", app.base.trim_start_matches("http://")).into_client_request().unwrap();
    req.headers_mut().insert("x-forwarded-for", ip.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Authenticates a socket and waits for `ready` (its unauthenticated slot is free by then).
async fn authenticate(ws: &mut Socket, access: &str) {
    use futures::SinkExt;
    let auth = json!({"type": "auth", "access_token": access}).to_string();
    ws.send(Message::Text(auth.into())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("bounded");
        if let Message::Text(t) = msg.unwrap().unwrap() {
            assert_eq!(serde_json::from_str::<Value>(&t).unwrap()["type"], "ready", "{t}");
            return;
        }
    }
}

#[tokio::test]
async fn rt8_unauthenticated_sockets_are_capped_per_64() {
    let Some(app) = behind_proxy(|c| c.ws_max_unauthenticated_per_ip = 2).await else { return };
    let t = app.new_session().await;
    let _a = socket_from(&app, "2001:db8:a:b::1").await.unwrap();
    let mut b = socket_from(&app, "2001:db8:a:b::2").await.unwrap();
    assert_eq!(socket_from(&app, "2001:db8:a:b::3").await.err(), Some(429), "a neighbour in the same /64");
    let _c = socket_from(&app, "2001:db8:a:c::1").await.expect("another /64 has its own allowance");
    // Authenticating one frees a slot of the /64 it was counted under.
    authenticate(&mut b, &t.access).await;
    let _d = socket_from(&app, "2001:db8:a:b::3").await.expect("the slot came back");
    assert_eq!(socket_from(&app, "2001:db8:a:b::4").await.err(), Some(429));
}

#[tokio::test]
async fn rt8_login_address_backoff_is_shared_per_64() {
    // Address key: 4 free failures (4 × 1).
    let Some(app) = behind_proxy(|c| c.login_free_failures = 1).await else { return };
    for i in 1..=5 {
        let r =
            login_from(&app, &format!("2001:db8:d:1::{i}"), &format!("victim-{i}@example.com"), "Summer2026!").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = login_from(&app, "2001:db8:d:1:8000::6", "victim-6@example.com", "Summer2026!").await;
    assert_eq!(retry_after(&r), Some(1));
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let r = login_from(&app, "2001:db8:d:2::1", "victim-6@example.com", "Summer2026!").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "another /64 is not blocked");
}

#[tokio::test]
async fn rt12_a_login_flood_from_one_64_cannot_refuse_everyone_else() {
    // One hashing permit (17 places in the queue) and failures that never start a backoff, so
    // the flood reaches the queue (the backoff is a separate control).
    let Some(app) = behind_proxy(|c| {
        c.password_hash_concurrency = 1;
        c.login_free_failures = 100_000;
    })
    .await
    else {
        return;
    };
    let email = app.new_user().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (first_429, mut shed) = tokio::sync::mpsc::channel::<Option<u64>>(1);
    let flood: Vec<_> = (0..24)
        .map(|i| {
            let (client, url, email, stop, first_429) =
                (app.client.clone(), app.url("/v1/auth/login"), email.clone(), stop.clone(), first_429.clone());
            tokio::spawn(async move {
                let (mut hashed, mut refused) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .post(&url)
                        .header("x-forwarded-for", format!("2001:db8:f:1::{i:x}"))
                        .json(&json!({ "email": email, "password": "flooding wrong pw" }))
                        .send()
                        .await
                        .unwrap();
                    match r.status().as_u16() {
                        401 => hashed += 1,
                        429 => {
                            refused += 1;
                            let _ = first_429.try_send(retry_after(&r));
                            tokio::task::yield_now().await;
                        }
                        s => panic!("flood got {s}"),
                    }
                }
                (hashed, refused)
            })
        })
        .collect();
    drop(first_429);
    // Once the flood is being shed, another address logs in, three times in a row.
    let first = tokio::time::timeout(Duration::from_secs(30), shed.recv()).await.expect("the flood was never shed");
    assert_eq!(first.flatten(), Some(1), "Retry-After: 1");
    for attempt in 0..3 {
        let r = login_from(&app, "2001:db8:f:2::1", &email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK, "attempt {attempt}: refused during the flood");
    }
    stop.store(true, Ordering::Relaxed);
    let (mut hashed, mut refused) = (0, 0);
    for t in flood {
        let (h, r) = t.await.unwrap();
        hashed += h;
        refused += r;
    }
    assert!(hashed > 0 && refused > 0, "{hashed} hashed, {refused} refused");
    assert_eq!(app.state.sessions.passwords.in_flight(), 0);
}

//! The WebSocket hub over real sockets with tokio-tungstenite (docs/API.md §5, SECURITY.md W*).
//! "Must not arrive" is shown by a ping answered with a pong: the server writes a queued logout
//! before it reads the next message, so a pong first means no logout was queued.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::*;

/// Upper bound for any single event in these tests.
const WAIT: Duration = Duration::from_secs(10);

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// Opens a socket, with an `Origin` header if given. Err carries the HTTP status of a refusal.
pub async fn connect(app: &TestApp, origin: Option<&str>) -> Result<Ws, u16> {
    let url = format!("ws://{}/v1/ws", app.base.trim_start_matches("http://"));
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    match tokio_tungstenite::connect_async_with_config(req, Some(config), false).await {
        Ok((stream, _)) => Ok(Ws { stream }),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// A socket authenticated with `access`, after its `ready`.
pub async fn open(app: &TestApp, access: &str) -> Ws {
    let mut ws = connect(app, None).await.unwrap();
    let ready = ws.auth(access).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    ws
}

impl Ws {
    pub async fn send_json(&mut self, v: Value) {
        self.stream.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn auth(&mut self, access: &str) -> Value {
        self.send_json(json!({"type": "auth", "access_token": access})).await;
        self.next_json().await
    }

    /// The next text message as JSON (pings are skipped); panics on close or timeout.
    pub async fn next_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next()).await.expect("timed out").expect("stream ended");
            match msg.expect("socket error") {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Reads until the close frame; returns its code (None if the connection just ended).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next()).await.expect("timed out waiting for close");
            match msg {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(Message::Text(t))) => panic!("expected close, got {t}"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Expects the logout event with `reason` for `session_id`, then close 4001.
    pub async fn expect_logout(&mut self, reason: &str, session_id: &str) {
        let ev = self.next_json().await;
        assert_eq!(ev["type"], "logout", "{ev}");
        assert_eq!(ev["reason"], reason, "{ev}");
        assert_eq!(ev["session_id"], session_id, "{ev}");
        assert!(ev["at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(self.close_code().await, Some(4001));
    }

    /// Shows that no logout is pending: a ping gets the pong first.
    pub async fn expect_alive(&mut self) {
        self.send_json(json!({"type": "ping"})).await;
        assert_eq!(self.next_json().await, json!({"type": "pong"}));
    }
}

/// Waits until the hub holds `n` authenticated sockets.
pub async fn registry_reaches(app: &TestApp, n: usize) {
    let mut rx = app.state.hub.watch_count();
    tokio::time::timeout(WAIT, rx.wait_for(|c| *c == n)).await.expect("registry count").unwrap();
}

#[tokio::test]
async fn auth_gets_ready_then_ping_pong() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let mut ws = connect(&app, Some("http://localhost:8080")).await.unwrap();
    let ready = ws.auth(&t.access).await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["user_id"], t.user_id.as_str());
    assert_eq!(ready["session_id"], t.session_id.as_str());
    assert!(ready["expires_at"].as_str().unwrap().ends_with('Z'));
    ws.expect_alive().await;
    assert_eq!(app.state.hub.len(), 1);
}

#[tokio::test]
async fn w9_logout_reaches_exactly_the_sockets_of_the_session() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let s1 = app.session_of(&email).await;
    let s2 = app.session_of(&email).await;
    let bystander = app.new_session().await;
    let (mut tab1, mut tab2) = (open(&app, &s1.access).await, open(&app, &s1.access).await);
    let mut other_device = open(&app, &s2.access).await;
    let mut stranger = open(&app, &bystander.access).await;

    assert_eq!(app.post_auth("/v1/auth/logout", &s1.access, None).await.status(), StatusCode::NO_CONTENT);
    tab1.expect_logout("logout", &s1.session_id).await;
    tab2.expect_logout("logout", &s1.session_id).await;
    other_device.expect_alive().await;
    stranger.expect_alive().await;
    registry_reaches(&app, 2).await;
}

#[tokio::test]
async fn r9_every_revocation_reason_is_pushed() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let mut admin_ws = open(&app, &admin.access).await;

    // logout_others spares the current session; logout_all does not.
    let email = app.new_user().await;
    let (a, b) = (app.session_of(&email).await, app.session_of(&email).await);
    let (mut wa, mut wb) = (open(&app, &a.access).await, open(&app, &b.access).await);
    app.post_auth("/v1/auth/logout-all", &a.access, Some(json!({"keep_current": true}))).await;
    wb.expect_logout("logout_others", &b.session_id).await;
    wa.expect_alive().await;
    app.post_auth("/v1/auth/logout-all", &a.access, None).await;
    wa.expect_logout("logout_all", &a.session_id).await;

    // session_revoked: one device, by its owner.
    let (a, b) = (app.session_of(&email).await, app.session_of(&email).await);
    let (mut wa, mut wb) = (open(&app, &a.access).await, open(&app, &b.access).await);
    app.delete_auth(&format!("/v1/auth/sessions/{}", b.session_id), &a.access).await;
    wb.expect_logout("session_revoked", &b.session_id).await;
    wa.expect_alive().await;

    // password_changed: every other session.
    let c = app.session_of(&email).await;
    let mut wc = open(&app, &c.access).await;
    let body = json!({"current_password": PASSWORD, "new_password": "another long password"});
    assert_eq!(app.post_auth("/v1/auth/password", &a.access, Some(body)).await.status(), StatusCode::NO_CONTENT);
    wc.expect_logout("password_changed", &c.session_id).await;
    wa.expect_alive().await;

    // admin_revoked.
    app.delete_auth(&format!("/v1/admin/sessions/{}", a.session_id), &admin.access).await;
    wa.expect_logout("admin_revoked", &a.session_id).await;

    // admin_logout for one user, with the number of sockets told.
    let d = app.session_of_with(&email, "another long password").await;
    let (mut wd1, mut wd2) = (open(&app, &d.access).await, open(&app, &d.access).await);
    let r = app.post_auth(&format!("/v1/admin/users/{}/logout-all", d.user_id), &admin.access, None).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["revoked_sessions"], 1);
    assert_eq!(body["notified_connections"], 2);
    wd1.expect_logout("admin_logout", &d.session_id).await;
    wd2.expect_logout("admin_logout", &d.session_id).await;
    admin_ws.expect_alive().await;

    // refresh_token_reused.
    let e = app.new_session().await;
    let mut we = open(&app, &e.access).await;
    app.refresh(&e.refresh).await;
    app.clock.advance(Duration::from_secs(11));
    assert_eq!(app.refresh(&e.refresh).await.status(), StatusCode::UNAUTHORIZED);
    we.expect_logout("refresh_token_reused", &e.session_id).await;

    // admin logout-everyone ends the admin's own socket too.
    let f = app.new_session().await;
    let mut wf = open(&app, &f.access).await;
    let unix = || app.clock.now_ms() as f64 / 1000.0;
    let called = unix();
    let r = app.post_auth("/v1/admin/logout-everyone", &admin.access, None).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["notified_connections"], 2);
    wf.expect_logout("admin_logout", &f.session_id).await;
    admin_ws.expect_logout("admin_logout", &admin.session_id).await;
    registry_reaches(&app, 0).await;

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("sessiond_ws_logout_events_total{reason=\"admin_logout\"} 4"), "{metrics}");
    assert!(metrics.contains("sessiond_ws_push_latency_seconds_count 10"), "{metrics}");
    // When the last logout frame was written (the bench's server-side fan-out time): during the
    // last call's fan-out.
    let written: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sessiond_ws_last_logout_written_timestamp_seconds "))
        .and_then(|v| v.parse().ok())
        .expect("the last-logout timestamp");
    assert!(written >= called && written <= unix(), "{written} not within [{called}, now]");
}

#[tokio::test]
async fn expiry_sweep_pushes_session_expired() {
    let Some(app) = spawn_app_with(|c| c.refresh_idle_ttl = Duration::from_secs(3600)).await else { return };
    let t = app.new_session().await;
    let mut ws = open(&app, &t.access).await;
    // The socket's own token would expire first; re-auth keeps it open while the clock moves.
    app.clock.advance(Duration::from_secs(3601));
    assert_eq!(app.state.sessions.sweep().await.unwrap(), 1);
    ws.expect_logout("session_expired", &t.session_id).await;
}

#[tokio::test]
async fn w9_reconnecting_after_revocation_gets_the_logout_event() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    let mut ws = connect(&app, None).await.unwrap();
    ws.send_json(json!({"type": "auth", "access_token": t.access})).await;
    ws.expect_logout("logout", &t.session_id).await;
    registry_reaches(&app, 0).await;
}

#[tokio::test]
async fn w3_no_auth_in_time_closes_4408() {
    let Some(app) = spawn_app_with(|c| c.ws_auth_timeout = Duration::from_millis(300)).await else { return };
    let mut ws = connect(&app, None).await.unwrap();
    assert_eq!(ws.close_code().await, Some(4408));
}

#[tokio::test]
async fn w1_origins_must_match_exactly() {
    let Some(app) = spawn_app().await else { return };
    for bad in [
        "http://evil.example",
        "http://localhost:8080.evil.example",
        "http://localhost:808",
        "http://evil-localhost:8080",
        "https://localhost:8080",
        "null",
    ] {
        assert_eq!(connect(&app, Some(bad)).await.err(), Some(403), "{bad}");
    }
    assert!(connect(&app, Some("http://localhost:8080")).await.is_ok());
    assert!(connect(&app, None).await.is_ok(), "non-browser clients send no Origin");

    let Some(app) = spawn_app_with(|c| {
        c.allowed_origins =
            Some(sessiond::config::Origins(vec!["https://app.example".into(), "https://admin.example".into()]))
    })
    .await
    else {
        return;
    };
    assert!(connect(&app, Some("https://admin.example")).await.is_ok());
    assert_eq!(connect(&app, Some("http://localhost:8080")).await.err(), Some(403));
}

#[tokio::test]
async fn w2_bad_first_messages_close_4401() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let cases = [
        json!({"type": "auth", "access_token": "not.a.token"}),
        json!({"type": "auth", "access_token": format!("{}x", t.access)}),
        json!({"type": "ping"}),
        json!({"type": "auth"}),
        json!({"hello": "world"}),
    ];
    for first in cases {
        let mut ws = connect(&app, None).await.unwrap();
        ws.send_json(first).await;
        assert_eq!(ws.close_code().await, Some(4401));
    }
    let mut ws = connect(&app, None).await.unwrap();
    ws.stream.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(ws.close_code().await, Some(4401));
    registry_reaches(&app, 0).await;
}

#[tokio::test]
async fn w10_token_expiry_closes_4401_and_reauth_extends() {
    let Some(app) = spawn_app_with(|c| c.access_ttl = Duration::from_secs(2)).await else { return };
    let t = app.new_session().await;
    let mut ws = open(&app, &t.access).await;
    let started = std::time::Instant::now();
    assert_eq!(ws.close_code().await, Some(4401));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "closed after {took:?}");
}

#[tokio::test]
async fn reauth_with_a_newer_token_of_the_same_session() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let t = app.session_of(&email).await;
    let mut ws = open(&app, &t.access).await;
    let r: Value = app.refresh(&t.refresh).await.json().await.unwrap();
    let newer = r["access_token"].as_str().unwrap();
    let ready = ws.auth(newer).await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["session_id"], t.session_id.as_str());
    ws.expect_alive().await;
    // A token of another session of the same user is refused.
    let other = app.session_of(&email).await;
    ws.send_json(json!({"type": "auth", "access_token": other.access})).await;
    assert_eq!(ws.close_code().await, Some(4401));
    // And of another user.
    let mut ws = open(&app, &t.access).await;
    let stranger = app.new_session().await;
    ws.send_json(json!({"type": "auth", "access_token": stranger.access})).await;
    assert_eq!(ws.close_code().await, Some(4401));
}

#[tokio::test]
async fn w4_w11_protocol_violations_after_auth() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;

    let mut ws = open(&app, &t.access).await;
    ws.send_json(json!({"type": "auth", "access_token": 5})).await;
    assert_eq!(ws.next_json().await, json!({"type": "error", "code": "invalid_request"}));
    ws.expect_alive().await;
    ws.send_json(json!({"type": "subscribe"})).await;
    assert_eq!(ws.close_code().await, Some(1008));

    let mut ws = open(&app, &t.access).await;
    ws.stream.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(ws.close_code().await, Some(1008));

    let mut ws = open(&app, &t.access).await;
    ws.send_json(json!([1, 2, 3])).await;
    assert_eq!(ws.close_code().await, Some(1008));

    let mut ws = open(&app, &t.access).await;
    ws.stream.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(ws.close_code().await, Some(1003));

    let mut ws = open(&app, &t.access).await;
    let big = json!({"type": "ping", "pad": "x".repeat(17 * 1024)});
    ws.send_json(big).await;
    assert_eq!(ws.close_code().await, Some(1009));

    // Far past tungstenite's own limit: the connection is refused too, never buffered.
    let mut ws = open(&app, &t.access).await;
    let huge = json!({"type": "ping", "pad": "x".repeat(1024 * 1024)});
    let _ = ws.stream.send(Message::Text(huge.to_string().into())).await;
    assert_ne!(ws.close_code().await, Some(4001));
    registry_reaches(&app, 0).await;
}

/// The cap holds, and the socket that makes room is closed with 4429: at the cap a new socket
/// is admitted and the oldest socket of the session holding the most is evicted (RT11: the
/// contract's "the one past it is closed with 4429" let a token thief lock the owner out).
#[tokio::test]
async fn w7_per_user_socket_cap_closes_4429() {
    let Some(app) = spawn_app_with(|c| c.ws_max_sockets_per_user = 2).await else { return };
    let email = app.new_user().await;
    let (a, b) = (app.session_of(&email).await, app.session_of(&email).await);
    let mut w1 = open(&app, &a.access).await;
    let mut w2 = open(&app, &b.access).await;
    // Counting the newcomer, session `a` holds two sockets and `b` one: `a`'s oldest goes.
    let mut w3 = open(&app, &a.access).await;
    assert_eq!(w1.close_code().await, Some(4429));
    assert_eq!(app.state.hub.user_connections(&a.user_id), 2, "the cap holds");
    w2.expect_alive().await;
    w3.expect_alive().await;
    // Another user is not affected, and a freed slot is used without evicting anyone.
    let _other = open(&app, &app.new_session().await.access).await;
    w3.stream.close(None).await.unwrap();
    registry_reaches(&app, 2).await;
    let mut w4 = open(&app, &a.access).await;
    w2.expect_alive().await;
    w4.expect_alive().await;
    registry_reaches(&app, 3).await;
}

#[tokio::test]
async fn rt11_a_token_thief_cannot_squat_every_socket_slot_of_a_user() {
    let Some(app) = spawn_app_with(|c| c.ws_max_sockets_per_user = 4).await else { return };
    let email = app.new_user().await;
    let (victim, thief) = (app.session_of(&email).await, app.session_of(&email).await);
    let mut stolen = Vec::new();
    for _ in 0..4 {
        stolen.push(open(&app, &thief.access).await);
    }
    registry_reaches(&app, 4).await;

    // The owner's tab still gets `ready`; the thief's oldest socket made room.
    let mut tab = open(&app, &victim.access).await;
    assert_eq!(stolen[0].close_code().await, Some(4429));
    for ws in &mut stolen[1..] {
        ws.expect_alive().await;
    }
    assert_eq!(app.state.hub.user_connections(&victim.user_id), 4, "the cap holds");
    // Flooding on evicts the thief's own sockets, never the owner's single one.
    let mut more = Vec::new();
    for old in &mut stolen[1..3] {
        more.push(open(&app, &thief.access).await);
        assert_eq!(old.close_code().await, Some(4429));
        tab.expect_alive().await;
    }
    assert_eq!(app.state.hub.user_connections(&victim.user_id), 4);

    // The thief ends the owner's session: the owner's socket learns it at once.
    let r = app.delete_auth(&format!("/v1/auth/sessions/{}", victim.session_id), &thief.access).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    tab.expect_logout("session_revoked", &victim.session_id).await;
}

#[tokio::test]
async fn f7_shutdown_closes_every_socket_with_1012() {
    let Some(mut app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        sockets.push(open(&app, &t.access).await);
    }
    let mut pending = connect(&app, None).await.unwrap(); // not yet authenticated
    app.stop().await;
    for ws in &mut sockets {
        assert_eq!(ws.close_code().await, Some(1012));
    }
    assert_eq!(pending.close_code().await, Some(1012));
    assert!(app.state.hub.is_empty());
}

#[tokio::test]
async fn presence_follows_open_sockets() {
    let Some(app) = spawn_app().await else { return };
    let email = app.new_user().await;
    let (a, b) = (app.session_of(&email).await, app.session_of(&email).await);
    let connected = |v: &Value, id: &str| {
        v["sessions"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap()["connected"].as_bool().unwrap()
    };
    let list: Value = app.get_auth("/v1/auth/sessions", &a.access).await.json().await.unwrap();
    assert!(!connected(&list, &a.session_id) && !connected(&list, &b.session_id));

    let mut ws = open(&app, &b.access).await;
    let list: Value = app.get_auth("/v1/auth/sessions", &a.access).await.json().await.unwrap();
    assert!(connected(&list, &b.session_id));
    assert!(!connected(&list, &a.session_id));
    let admin = app.new_admin().await;
    let list: Value =
        app.get_auth(&format!("/v1/admin/users/{}/sessions", b.user_id), &admin.access).await.json().await.unwrap();
    assert!(connected(&list, &b.session_id));

    ws.stream.close(None).await.unwrap();
    registry_reaches(&app, 0).await;
    let list: Value = app.get_auth("/v1/auth/sessions", &a.access).await.json().await.unwrap();
    assert!(!connected(&list, &b.session_id));
}

#[tokio::test]
async fn w6_a_silent_peer_is_closed_after_missed_pongs() {
    let Some(app) = spawn_app_with(|c| c.ws_ping_interval = Duration::from_millis(100)).await else { return };
    let t = app.new_session().await;
    let ws = open(&app, &t.access).await;
    // Stop reading (so tungstenite never answers the pings) until the server gives up.
    let mut rx = app.state.hub.watch_count();
    tokio::time::timeout(WAIT, rx.wait_for(|c| *c == 0)).await.expect("silent socket closed").unwrap();
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w9_revocation_racing_auth_still_closes_the_socket() {
    // SECURITY.md W9(b): check, register, re-check. Whatever the interleaving, the socket ends
    // with the logout event and 4001.
    let Some(app) = spawn_app().await else { return };
    for _ in 0..20 {
        let t = app.new_session().await;
        let mut ws = connect(&app, None).await.unwrap();
        let auth = ws.send_json(json!({"type": "auth", "access_token": t.access}));
        let logout = app.post_auth("/v1/auth/logout", &t.access, None);
        let (_, r) = tokio::join!(auth, logout);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let first = ws.next_json().await;
        if first["type"] == "ready" {
            ws.expect_logout("logout", &t.session_id).await;
        } else {
            assert_eq!(first["type"], "logout", "{first}");
            assert_eq!(ws.close_code().await, Some(4001));
        }
    }
    registry_reaches(&app, 0).await;
}

//! The binary as an operator runs it: `migrate`, `user add`, `keys rotate`, and `serve` with
//! trace logging, checking that no secret reaches the logs or the database file.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_sessiond");

fn sessiond(db: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("RUST_LOG", "warn");
    c
}

fn add_user(db: &Path, email: &str, password: &str, admin: bool) -> std::process::Output {
    let mut cmd = sessiond(db);
    cmd.args(["user", "add", "--email", email]);
    if admin {
        cmd.arg("--admin");
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn migrate_user_add_and_keys_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ops.db");
    let out = sessiond(&db).arg("migrate").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(db.exists());

    let out = add_user(&db, "Ops@Example.com", "operator password", true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let user_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!user_id.is_empty());
    let out = add_user(&db, "ops@example.com", "operator password", false);
    assert!(!out.status.success(), "duplicate email refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = add_user(&db, "short@example.com", "short", false);
    assert!(!out.status.success(), "short password refused");

    let dir = std::sync::Arc::new(dir);
    let mut config = test_config(&dir);
    config.database_url = format!("sqlite://{}", db.display());
    let app = start(config, dir.clone(), sessiond::clock::Clock::system()).await;
    let r = app.login("ops@example.com", "operator password").await;
    let t = Tokens::from(r.json::<Value>().await.unwrap());
    assert_eq!(t.user_id, user_id);
    let me: Value = app.me(&t.access).await.json().await.unwrap();
    assert_eq!(me["roles"], json!(["admin"]));
    // `user add` registers through the accounts service, like HTTP: the same audit row.
    let audit: Value = app
        .client
        .get(app.url(&format!("/v1/admin/audit?user_id={user_id}")))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let registered = audit["events"].as_array().unwrap().iter().find(|e| e["event"] == "user_registered");
    let registered = registered.unwrap_or_else(|| panic!("no user_registered row: {audit}"));
    assert_eq!(registered["target_user_id"], json!(user_id));
    assert_eq!(registered["detail"], json!({ "admin": true, "via": "cli" }));

    let out = sessiond(&db).args(["keys", "rotate", "--now"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    app.state.keys.reload(&app.state.store, app.clock.now_ms()).await.unwrap();
    assert_eq!(crate::keys::jwks_kids(&app).await.len(), 2);
    assert_eq!(app.me(&t.access).await.status(), StatusCode::OK);
}

/// The first hour of a newcomer: `user add` without a password says so, its help lists its own
/// options only, and the server's flags work on either side of `serve`.
#[tokio::test]
async fn user_add_explains_a_missing_password_and_help_stays_short() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("help.db");
    let out = sessiond(&db).args(["user", "add", "--email", "a@example.com"]).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no password on stdin"), "{err}");

    let out = sessiond(&db).args(["user", "add", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--email") && help.contains("The user's email address"), "{help}");
    assert!(!help.contains("--listen") && !help.contains("--refresh-reuse-grace"), "server flags leak into:\n{help}");
    let out = sessiond(&db).args(["keys", "rotate", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Sign with the new key at once"));
    let out = sessiond(&db).args(["serve", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--refresh-reuse-grace"));
}

/// A `sessiond serve` child on a free port; its stderr is collected.
struct Server {
    child: Child,
    base: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

fn serve(db: &Path, extra: &[(&str, &str)]) -> Server {
    let mut cmd = sessiond(db);
    cmd.env("SESSIOND_LISTEN", "127.0.0.1:0").env("SESSIOND_ALLOWED_ORIGINS", "http://localhost:8080").env(
        "RUST_LOG",
        "trace,tungstenite=trace,tokio_tungstenite=trace,hyper=trace,axum::rejection=trace,tower_http=trace",
    );
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("listening") {
                if let Some(addr) = line.split("addr=").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
                    }
                }
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("server reports its address");
    Server { child, base: format!("http://{addr}"), log }
}

impl Server {
    /// SIGTERM, then wait (bounded) for a clean exit.
    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "server exited with {status}");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// The refresh token in a response's `__Host-sessiond_refresh` cookie.
fn refresh_cookie_of(r: &reqwest::Response) -> String {
    let set = r.headers()["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().strip_prefix("__Host-sessiond_refresh=").unwrap().to_string()
}

/// `RUST_LOG=trace` for every target: whatever an operator asks for, no token, cookie or
/// password reaches the log (RT9: tungstenite's trace lines printed the socket `auth` frame).
#[tokio::test]
async fn r8_secrets_stay_out_of_logs_and_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("secrets.db");
    let admin_password = "admin bootstrap secret";
    let mut server =
        serve(&db, &[("SESSIOND_ADMIN_EMAIL", "root@example.com"), ("SESSIOND_ADMIN_PASSWORD", admin_password)]);
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = server.base.clone();
    let post = |path: &str, body: Value| c.post(format!("{base}{path}")).json(&body).send();

    let password = "user password never logged";
    let r = post("/v1/auth/register", json!({"email": "u@example.com", "password": password})).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = post("/v1/auth/login", json!({"email": "u@example.com", "password": "wrong password never logged"}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let t0: Value = post("/v1/auth/login", json!({"email": "u@example.com", "password": password}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let t0 = Tokens::from(t0);
    let t1 = Tokens::from(
        post("/v1/auth/refresh", json!({"refresh_token": t0.refresh})).await.unwrap().json::<Value>().await.unwrap(),
    );
    // A grace retry: the successor is stored sealed, so it must not appear in the file either.
    let t1b = Tokens::from(
        post("/v1/auth/refresh", json!({"refresh_token": t0.refresh})).await.unwrap().json::<Value>().await.unwrap(),
    );
    assert_eq!(t1.refresh, t1b.refresh);
    let admin: Value = post("/v1/auth/login", json!({"email": "root@example.com", "password": admin_password}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = Tokens::from(admin);
    let r = c.get(format!("{base}/v1/me")).bearer_auth(&t1.access).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(format!("{base}/v1/me")).bearer_auth(format!("{}x", t1.access)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A socket `auth` message carries a live access token in a WebSocket frame (RT9).
    let mut ws =
        tokio_tungstenite::connect_async(format!("{}/v1/ws", base.replace("http://", "ws://"))).await.unwrap().0;
    ws.send(WsMessage::Text(json!({"type": "auth", "access_token": t1.access}).to_string().into())).await.unwrap();
    let ready = loop {
        match ws.next().await.expect("socket open").unwrap() {
            WsMessage::Text(t) => break serde_json::from_str::<Value>(&t).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(ready["type"], "ready", "{ready}");
    ws.close(None).await.unwrap();
    // Cookie mode: the refresh token travels in `Set-Cookie` and `Cookie` headers (RT9).
    let r = post("/v1/auth/login", json!({"email": "u@example.com", "password": password, "refresh_cookie": true}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookie0 = refresh_cookie_of(&r);
    let cookie_access0 = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let r = c
        .post(format!("{base}/v1/auth/refresh"))
        .header("cookie", format!("__Host-sessiond_refresh={cookie0}"))
        .header("origin", "http://localhost:8080")
        .header("x-sessiond-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookie1 = refresh_cookie_of(&r);
    assert_ne!(cookie1, cookie0);
    let cookie_access1 = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();

    // A token in a query string (never accepted, but clients send them) stays out of the request log.
    let r = c.get(format!("{base}/v1/ws?access_token={cookie_access1}")).send().await.unwrap();
    assert!(r.status().is_client_error());

    let r = c.post(format!("{base}/v1/auth/logout")).bearer_auth(&t1.access).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.get(format!("{base}/v1/me")).bearer_auth(&t1.access).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = post("/v1/auth/refresh", json!({"refresh_token": t0.refresh})).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    server.stop();

    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("login"), "debug logs were captured");
    let mut file = std::fs::read(&db).unwrap();
    for ext in ["-wal", "-shm"] {
        if let Ok(b) = std::fs::read(format!("{}{ext}", db.display())) {
            file.extend(b);
        }
    }
    let file = String::from_utf8_lossy(&file);
    assert!(file.contains("$argon2id$v=19$m=19456,t=2,p=1$"), "argon2id at the OWASP parameters");
    let secrets = [
        password,
        "wrong password never logged",
        admin_password,
        &t0.refresh,
        &t1.refresh,
        &t0.access,
        &t1.access,
        &admin.access,
        &admin.refresh,
        &cookie0,
        &cookie1,
        &cookie_access0,
        &cookie_access1,
    ];
    assert!(log.contains("TRACE"), "trace logs were captured");
    // Names the line that leaked (its target and text), with the secret itself masked.
    let leak = |s: &str| {
        log.lines().find(|l| l.contains(s)).map(|l| l.replace(s, "<SECRET>").chars().take(300).collect::<String>())
    };
    for (i, s) in secrets.into_iter().enumerate() {
        assert_eq!(leak(s), None, "secret #{i} reached the logs");
        assert!(!file.contains(s), "secret #{i} reached the database file");
        // Refresh tokens without their prefix, too.
        if let Some(body) = s.strip_prefix("rt_") {
            assert_eq!(leak(body), None, "secret #{i} reached the logs");
            assert!(!file.contains(body), "secret #{i} reached the database file");
        }
    }
}

/// A database that cannot be opened is named in the error, with SQLite's reason (issue 12).
#[tokio::test]
async fn i12_an_sqlite_database_that_cannot_be_opened_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("no-such-dir").join("sessiond.db");
    let out = sessiond(&db).arg("migrate").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot open the SQLite database at {}: ", db.display())), "{err}");
    assert!(err.contains("unable to open database file"), "{err}");
}

/// PostgreSQL down: the error names host:port and the reason at once (not "pool timed out"
/// after the pool's acquire timeout), and never the password of the URL (issue 12).
#[tokio::test]
async fn i12_an_unreachable_postgres_is_named_with_the_reason_and_without_the_password() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = sessiond(&dir.path().join("unused.db"))
        .env("DATABASE_URL", format!("postgres://sessiond:pw-never-printed@127.0.0.1:{port}/sessiond"))
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port} (database sessiond): ")), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert!(!err.contains("pw-never-printed"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
}

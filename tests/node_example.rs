//! `examples/node-resource-server/` (docs/resource-servers.md): the Node resource server, run
//! with `node server.mjs` as its header says, against the `sessiond` binary built for this run,
//! with a service credential made by `sessiond service add`. It must answer like sessiond
//! (problem+json bodies byte for byte), refuse a revoked session's token within a second, start
//! over from a snapshot when sessiond no longer knows its cursor, and fail closed once the feed
//! has been gone longer than its bound.
//!
//! Needs `node` (18 or later) and the example's packages (`npm ci` in its directory; run here
//! when `node_modules` is missing). Without node, or when `npm ci` fails, the test says so in
//! `cargo test`'s output and passes, unless `SESSIOND_REQUIRE_NODE_EXAMPLE=1` (set by `.ci/run`),
//! where it fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "support/answer.rs"]
mod answer;
#[allow(dead_code)]
#[path = "support/skip.rs"]
mod skip;
use answer::Answer;

const BIN: &str = env!("CARGO_BIN_EXE_sessiond");
const PASSWORD: &str = "correct horse battery staple";
/// A revocation must be refused by the example this soon after the revoking response.
const REFUSED_WITHIN: Duration = Duration::from_secs(1);
/// The example's staleness bound (`STALE_MS` in server.mjs; docs/API.md §12's default).
const STALE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(5);

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node-resource-server")
}

/// Node's major version, if `node` runs.
fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok().filter(|o| o.status.success())?;
    let version = String::from_utf8_lossy(&out.stdout);
    version.trim().strip_prefix('v')?.split('.').next()?.parse().ok()
}

/// Node and the example's packages, installed with `npm ci` if missing; `Err(why)` otherwise.
fn prepare() -> Result<(), String> {
    match node_major() {
        None => return Err("node is not installed".into()),
        Some(v) if v < 18 => return Err(format!("node {v} is too old (18 or later)")),
        Some(_) => {}
    }
    let installed = |dir: &Path| ["jose", "eventsource"].iter().all(|p| dir.join("node_modules").join(p).exists());
    if installed(&example_dir()) {
        return Ok(());
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(example_dir())
        .output()
        .map_err(|e| format!("npm does not run: {e}"))?;
    if !out.status.success() || !installed(&example_dir()) {
        return Err(format!("npm ci failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The sessiond binary on `port` (its issuer `http://127.0.0.1:PORT`) over the SQLite file in `dir`.
fn sessiond(dir: &Path, port: u16, log: &str) -> Running {
    let child = Command::new(BIN)
        .env("SESSIOND_LISTEN", format!("127.0.0.1:{port}"))
        .env("SESSIOND_ISSUER", format!("http://127.0.0.1:{port}"))
        .env("DATABASE_URL", database_url(dir))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .spawn()
        .expect("the sessiond binary starts");
    Running(child)
}

fn database_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("sessiond.db").display())
}

struct Client(reqwest::Client);

impl Client {
    /// `GET url` with an optional Bearer token; `None` when nothing answers.
    async fn get(&self, url: &str, token: Option<&str>) -> Option<Answer> {
        let mut req = self.0.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Answer::try_read(req.send().await.ok()?).await
    }

    /// Waits (bounded) until `url` answers 200; `log` is shown if it never does.
    async fn wait_ok(&self, url: &str, token: Option<&str>, within: Duration, log: &Path) {
        let deadline = Instant::now() + within;
        loop {
            if self.get(url, token).await.is_some_and(|a| a.status == StatusCode::OK) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{url} never answered 200; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `url` with `token` until it stops answering 200, failing after `within` from `since`.
    async fn refused(&self, url: &str, token: &str, since: Instant, within: Duration) -> Answer {
        loop {
            if let Some(a) = self.get(url, Some(token)).await.filter(|a| a.status != StatusCode::OK) {
                return a;
            }
            assert!(
                since.elapsed() < within,
                "{url} still accepts the token {:?} after its revocation",
                since.elapsed()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A new session of `email`: (access token, session id, user id).
    async fn login(&self, sessiond: &str, email: &str) -> (String, String, String) {
        let r = self.0.post(format!("{sessiond}/v1/auth/login")).json(&json!({ "email": email, "password": PASSWORD }));
        let t: Value = r.send().await.unwrap().json().await.unwrap();
        let s = |k: &str| t[k].as_str().unwrap_or_else(|| panic!("{k} in {t}")).to_string();
        (s("access_token"), s("session_id"), s("user_id"))
    }

    async fn logout(&self, sessiond: &str, access: &str) {
        let r = self.0.post(format!("{sessiond}/v1/auth/logout")).bearer_auth(access).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn the_node_example_refuses_a_revoked_token_at_once() {
    if let Err(why) = prepare() {
        if std::env::var("SESSIOND_REQUIRE_NODE_EXAMPLE").as_deref() == Ok("1") {
            panic!("SESSIOND_REQUIRE_NODE_EXAMPLE=1 but the Node example cannot run: {why}");
        }
        skip::report(&format!(
            "the Node resource-server example did NOT run ({why}): install node 18+, then npm ci in examples/node-resource-server"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let client = Client(reqwest::Client::builder().no_proxy().build().unwrap());

    // The credential, as an operator makes it (the database is created and migrated on the way).
    let out = Command::new(BIN)
        .args(["service", "add", "notes-node", "--scope", "revocations:read"])
        .env("DATABASE_URL", database_url(dir.path()))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "service add: {}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("sk_"), "{key}");

    let port = free_port();
    let sessiond_url = format!("http://127.0.0.1:{port}");
    let mut server = sessiond(dir.path(), port, "sessiond.log");
    client
        .wait_ok(&format!("{sessiond_url}/readyz"), None, Duration::from_secs(30), &dir.path().join("sessiond.log"))
        .await;
    let email = "node@example.com";
    let r = client
        .0
        .post(format!("{sessiond_url}/v1/auth/register"))
        .json(&json!({ "email": email, "password": PASSWORD }));
    assert_eq!(r.send().await.unwrap().status(), StatusCode::CREATED);

    let node_port = free_port();
    let node_url = format!("http://127.0.0.1:{node_port}");
    let node_log = dir.path().join("node.log");
    let node = Command::new("node")
        .arg("server.mjs")
        .current_dir(example_dir())
        .env("ISSUER", &sessiond_url)
        .env("SERVICE_KEY", &key)
        .env("PORT", node_port.to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&node_log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("node.err")).unwrap())
        .spawn()
        .expect("node starts");
    let _node = Running(node);
    let notes = format!("{node_url}/notes");
    client.wait_ok(&format!("{node_url}/readyz"), None, Duration::from_secs(20), &dir.path().join("node.err")).await;

    // A live token; no token; garbage: sessiond's own answers (GET /v1/me, docs/API.md §4).
    let (access, session_id, user_id) = client.login(&sessiond_url, email).await;
    let a = client.get(&notes, Some(&access)).await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body, json!({ "user_id": user_id, "session_id": session_id, "notes": [] }));
    for token in [None, Some("not-a-jwt")] {
        let own = client.get(&format!("{sessiond_url}/v1/me"), token).await.unwrap();
        assert_eq!((own.status, own.code().as_str()), (StatusCode::UNAUTHORIZED, "invalid_token"));
        assert_eq!(client.get(&notes, token).await.unwrap(), own, "with {token:?}");
    }

    // Logout: refused within a second, with sessiond's answer.
    client.logout(&sessiond_url, &access).await;
    let refusal = client.refused(&notes, &access, Instant::now(), REFUSED_WITHIN).await;
    let own = client.get(&format!("{sessiond_url}/v1/me"), Some(&access)).await.unwrap();
    assert_eq!((own.status, own.code().as_str()), (StatusCode::UNAUTHORIZED, "session_revoked"));
    assert_eq!(refusal, own);

    // sessiond comes back from an older backup (its newest revocation lost): the example's
    // cursor is 400 there, and it starts over from a snapshot, keeping what it knew.
    drop(server);
    {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&database_url(dir.path())).await.unwrap();
        sqlx::query("DELETE FROM revocations WHERE id = (SELECT MAX(id) FROM revocations)")
            .execute(&mut db)
            .await
            .unwrap();
    }
    server = sessiond(dir.path(), port, "sessiond-restored.log");
    client
        .wait_ok(
            &format!("{sessiond_url}/readyz"),
            None,
            Duration::from_secs(30),
            &dir.path().join("sessiond-restored.log"),
        )
        .await;
    // Awaited (sessiond counts its answers) before anything is revoked: a newer entry would
    // make the cursor valid again.
    let refused_cursor = r#"route="/v1/revocations/stream",status="400""#;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = client.get(&format!("{sessiond_url}/metrics"), None).await.unwrap().body;
        if metrics.lines().any(|l| l.starts_with("sessiond_http_requests_total{") && l.contains(refused_cursor)) {
            break;
        }
        assert!(Instant::now() < deadline, "the example never resumed with its cursor:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (next, _, _) = client.login(&sessiond_url, email).await;
    client.wait_ok(&notes, Some(&next), Duration::from_secs(5), &dir.path().join("node.err")).await;
    client.logout(&sessiond_url, &next).await;
    // It starts over 2 s after the 400: a longer bound here.
    let refusal = client.refused(&notes, &next, Instant::now(), Duration::from_secs(5)).await;
    assert_eq!(refusal.code(), "session_revoked");
    assert_eq!(client.get(&notes, Some(&access)).await.unwrap().code(), "session_revoked", "kept");
    // Following live again: within a second.
    let (last, _, _) = client.login(&sessiond_url, email).await;
    client.wait_ok(&notes, Some(&last), Duration::from_secs(5), &dir.path().join("node.err")).await;
    client.logout(&sessiond_url, &last).await;
    let refusal = client.refused(&notes, &last, Instant::now(), REFUSED_WITHIN).await;
    assert_eq!(refusal.code(), "session_revoked");

    // sessiond gone: fail closed once the feed has been silent past the bound, not before.
    let (live, _, _) = client.login(&sessiond_url, email).await;
    client.wait_ok(&notes, Some(&live), Duration::from_secs(5), &dir.path().join("node.err")).await;
    drop(server);
    let gone_at = Instant::now();
    let unavailable = client.refused(&notes, &live, gone_at, STALE + Duration::from_secs(1)).await;
    assert!(gone_at.elapsed() + Duration::from_secs(3) >= STALE, "failed closed too early: {:?}", gone_at.elapsed());
    assert_eq!((unavailable.status, unavailable.code().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
    assert_eq!(unavailable.retry_after.as_deref(), Some("1"));
    let ready = client.get(&format!("{node_url}/readyz"), None).await.unwrap();
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
}

//! Database outages (issue 21; docs/API.md §14): 503 `unavailable`, never 500, for an outage
//! error, and the instance serves again without a restart; a server started before its
//! database keeps trying (`/healthz` 200, `/readyz` 503) and never exits for a database that
//! comes back. The real `sessiond` binary for the start, real faults for the errors.

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;

/// `sessiond serve` with a clean environment on a free port and `database_url`; its stderr is
/// collected.
struct Started {
    child: Child,
    base: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_binary(database_url: &str) -> Started {
    start_binary_with(database_url, &[]).await
}

async fn start_binary_with(database_url: &str, extra: &[&str]) -> Started {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url", database_url])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    Started { child, base: format!("http://127.0.0.1:{port}"), log }
}

impl Started {
    async fn status(&self, path: &str) -> Option<StatusCode> {
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
        client.get(format!("{}{path}", self.base)).send().await.ok().map(|r| r.status())
    }

    /// Waits (bounded) until `path` answers `want`; panics with the log otherwise.
    async fn until(&self, path: &str, want: StatusCode, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.status(path).await == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "{path} never answered {want}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// While the database cannot be had: alive, not ready, every other request 503, still
    /// running, and each failed attempt logged with `names` (where it is) and the reason.
    async fn waits_for_the_database(&mut self, names: &str, reason: &str) {
        self.until("/healthz", StatusCode::OK, Duration::from_secs(20)).await;
        assert_eq!(self.status("/readyz").await, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(self.status("/v1/me").await, Some(StatusCode::SERVICE_UNAVAILABLE));
        // Two attempts at least (the first, and a retry after its backoff).
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches("the database is not reachable yet").count() < 2 {
            assert!(Instant::now() < deadline, "no retries logged:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = self.log();
        let line = log.lines().find(|l| l.contains("the database is not reachable yet")).unwrap();
        assert!(line.contains(names) && line.to_lowercase().contains(reason), "{line}");
        assert!(self.child.try_wait().unwrap().is_none(), "the server exited:\n{log}");
    }
}

/// A server started before its database is reachable waits for it, then serves; it never
/// exits for it. SQLite: the database's directory does not exist yet. PostgreSQL: nothing
/// listens at its address yet, then a proxy to the real server appears there. (Before:
/// `cannot connect to PostgreSQL at …: Connection refused`, exit 1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_before_its_database_waits_for_it() {
    let Some((config, dir, _db)) = fresh_database().await else { return };
    match crate::BACKEND {
        Backend::Sqlite => {
            let missing = dir.path().join("not-yet");
            let url = format!("sqlite://{}", missing.join("sessiond.db").display());
            let mut server = start_binary(&url).await;
            server.waits_for_the_database(&missing.display().to_string(), "unable to open").await;
            std::fs::create_dir(&missing).unwrap();
            server.until("/readyz", StatusCode::OK, Duration::from_secs(20)).await;
        }
        Backend::Postgres => {
            let real: std::net::SocketAddr = {
                let url = &config.database_url;
                let rest = &url[url.find('@').unwrap() + 1..];
                rest[..rest.find('/').unwrap()].replace("localhost", "127.0.0.1").parse().unwrap()
            };
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let url = config.database_url.replace(&real.to_string(), &format!("127.0.0.1:{port}"));
            let mut server = start_binary(&url).await;
            server.waits_for_the_database(&format!("127.0.0.1:{port}"), "refused").await;
            let _proxy = crate::fault_proxy::FaultProxy::start_on(port, real).await;
            server.until("/readyz", StatusCode::OK, Duration::from_secs(20)).await;
        }
    }
}

/// SQLite with a full disk (`SQLITE_FULL`: here the file capped with `PRAGMA max_page_count`):
/// every write is 503 `unavailable` with `Retry-After`, never 500, reads go on, and once there
/// is room again the instance writes without a restart.
#[tokio::test]
async fn a_full_disk_is_503_and_the_instance_recovers_without_a_restart() {
    let Some(app) = spawn_app().await else { return };
    let Some(pages) = app.state.store.sqlite_limit_pages(None).await else { return }; // PostgreSQL
    let pages = pages.unwrap();
    let t = app.new_session().await;
    app.state.store.sqlite_limit_pages(Some(pages)).await.unwrap().unwrap();
    let mut full = None;
    for i in 0..400 {
        let r = app.register(&format!("fill-{i}-{}@example.com", uuid::Uuid::new_v4().simple()), PASSWORD).await;
        match r.status() {
            StatusCode::CREATED => continue,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(r.headers().contains_key("retry-after"));
                full = Some(assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await);
                break;
            }
            other => panic!("{other} at a full disk: {}", r.text().await.unwrap()),
        }
    }
    assert!(full.is_some(), "the capped database never filled");
    // Reads still answer; any other write is answered, with a 503 at worst (a small one may
    // still fit in the file's free pages).
    assert_eq!(app.me(&t.access).await.status(), StatusCode::OK);
    let mut refresh = t.refresh.clone();
    for _ in 0..20 {
        let r = app.refresh(&refresh).await;
        match r.status() {
            StatusCode::OK => {
                refresh = r.json::<serde_json::Value>().await.unwrap()["refresh_token"].as_str().unwrap().into()
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
            }
            other => panic!("{other} for a refresh at a full disk"),
        }
    }
    // Room again: the same instance writes.
    app.state.store.sqlite_limit_pages(None).await.unwrap().unwrap();
    let r = app.register(&format!("after-{}@example.com", uuid::Uuid::new_v4().simple()), PASSWORD).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
}

/// PostgreSQL terminating every connection of the instance (`57P01`, then broken connections
/// and reconnects) while requests run: each is answered 2xx, 401 or 503, never 500, and the
/// instance serves again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_database_connections_are_503_never_500() {
    if crate::BACKEND != Backend::Postgres {
        return;
    }
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let requests = async {
        let mut seen = std::collections::BTreeMap::<u16, usize>::new();
        let mut refresh = t.refresh.clone();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let r = app.refresh(&refresh).await;
            let status = r.status();
            if status == StatusCode::OK {
                refresh = r.json::<serde_json::Value>().await.unwrap()["refresh_token"].as_str().unwrap().into();
            }
            *seen.entry(status.as_u16()).or_default() += 1;
            *seen.entry(app.me(&t.access).await.status().as_u16()).or_default() += 1;
            let r = app.client.get(app.url("/v1/admin/users")).bearer_auth(&t.access).send().await.unwrap();
            *seen.entry(r.status().as_u16()).or_default() += 1;
        }
        seen
    };
    let killer = async {
        let mut raw = app.raw_db().await;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            raw.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (seen, ()) = tokio::join!(requests, killer);
    eprintln!("statuses while the connections were terminated: {seen:?}");
    assert!(!seen.contains_key(&500), "a 500 during the outage: {seen:?}");
    assert!(seen.keys().all(|s| [200, 401, 403, 503].contains(s)), "{seen:?}");
    app.wait_ready().await;
    assert_eq!(app.me(&app.new_session().await.access).await.status(), StatusCode::OK);
}

/// SIGTERM (docs/API.md §14): `/readyz` answers 503 at once, a long poll in flight answers at
/// once with what it has, open sockets get 1012, a new upgrade gets 503 with `Retry-After`, and
/// the process exits 0 within `--shutdown-delay` + `--shutdown-drain`. (Before: `/readyz`
/// stayed 200 while it drained, so a balancer kept sending.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_readyz_says_so_at_once() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Some((config, _dir, _db)) = fresh_database().await else { return };
    let url = config.database_url.clone();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["service", "add", "follower", "--scope", "revocations:read", "--database-url", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut server = start_binary_with(&url, &["--shutdown-delay", "2s"]).await;
    server.until("/readyz", StatusCode::OK, Duration::from_secs(20)).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let at = |p: &str| format!("{}{p}", server.base);
    let creds = serde_json::json!({ "email": "drain@example.com", "password": PASSWORD });
    assert_eq!(client.post(at("/v1/auth/register")).json(&creds).send().await.unwrap().status(), StatusCode::CREATED);
    let tokens: serde_json::Value =
        client.post(at("/v1/auth/login")).json(&creds).send().await.unwrap().json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let ws_url = format!("ws://{}/v1/ws", server.base.trim_start_matches("http://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.clone()).await.unwrap();
    ws.send(Message::Text(serde_json::json!({ "type": "auth", "access_token": access }).to_string().into()))
        .await
        .unwrap();
    let ready = ws.next().await.unwrap().unwrap();
    assert!(ready.to_text().unwrap().contains("ready"), "{ready:?}");
    let head: serde_json::Value =
        client.get(at("/v1/revocations")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let long_poll = {
        let (client, url, key) = (
            client.clone(),
            at(&format!("/v1/revocations?after={}&wait=30", head["next"].as_str().unwrap())),
            key.clone(),
        );
        tokio::spawn(async move { client.get(url).bearer_auth(key).send().await.unwrap().status() })
    };
    // Parked or not yet when the signal comes, it must answer at once: the drain ends every wait.
    let pid = server.child.id().unwrap();
    let signalled = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    // /readyz: 503 at once (while it keeps accepting for --shutdown-delay).
    let mut readyz = None;
    while signalled.elapsed() < Duration::from_secs(1) {
        if let Ok(r) = client.get(at("/readyz")).send().await {
            if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                readyz = Some(signalled.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(readyz.is_some(), "/readyz did not turn 503 within 1 s of SIGTERM");
    // The long poll answers at once, with what it has (nothing).
    let status =
        tokio::time::timeout(Duration::from_secs(2), long_poll).await.expect("the long poll answered").unwrap();
    assert_eq!(status, StatusCode::OK);
    // The socket is closed with 1012.
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the socket was closed") {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert_eq!(close, Some(1012));
    // A new upgrade, during the delay: 503 with Retry-After.
    match tokio_tungstenite::connect_async(ws_url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 503);
            assert!(res.headers().contains_key("retry-after"));
        }
        other => panic!("an upgrade during the drain: {:?}", other.map(|(_, r)| r.status())),
    }
    // Exit 0 within the delay and the drain.
    let status =
        tokio::time::timeout(Duration::from_secs(2 + 10 + 3), server.child.wait()).await.expect("exited").unwrap();
    assert!(status.success(), "exit {status}");
    eprintln!("sigterm: /readyz 503 after {readyz:?}, exited after {:?}", signalled.elapsed());
}

/// `GET /v1/admin/health` (docs/API.md §14): the listener's state, the database's latency,
/// sockets, feed followers, Shared Signals streams with their pending and dead SETs, and the
/// instances alive; admins only.
#[tokio::test]
async fn the_admin_health_page_shows_the_instance_and_its_cluster() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let user = app.new_session().await;
    let r = app.get_auth("/v1/admin/health", &user.access).await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let other = match crate::BACKEND {
        Backend::Postgres => Some(another_instance(&app).await),
        Backend::Sqlite => None,
    };
    let _socket = crate::ws::open(&app, &user.access).await;
    let name = format!("rx-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let sk = crate::service::credential(&app, &name, &[sessiond::service_credentials::Scope::Ssf]).await;
    let body = serde_json::json!({ "delivery": { "method": "urn:ietf:rfc:8936" } });
    let r = app.client.post(app.url("/ssf/stream")).bearer_auth(&sk).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app.get_auth("/v1/admin/health", &admin.access).await;
    assert_eq!(r.status(), StatusCode::OK);
    let h: serde_json::Value = r.json().await.unwrap();
    assert_eq!(h["instance"], app.state.store.instance_id());
    assert_eq!(h["ready"], true, "{h}");
    assert_eq!(h["draining"], false);
    assert!(h["database_latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{h}");
    assert_eq!(h["sockets_authenticated"], 1, "{h}");
    assert_eq!(h["ssf_streams"][0]["owner"], name.as_str(), "{h}");
    assert_eq!(h["ssf_streams"][0]["pending"], 0);
    match crate::BACKEND {
        Backend::Postgres => {
            assert_eq!(h["backend"], "postgres");
            assert_eq!(h["listener"]["up"], true, "{h}");
            assert!(h["listener"]["last_proof_at"].is_string(), "{h}");
            let other = other.unwrap();
            // Both instances' heartbeats (each writes its own every second).
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let h: serde_json::Value = app.get_auth("/v1/admin/health", &admin.access).await.json().await.unwrap();
                let ids: Vec<&str> =
                    h["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
                if ids.contains(&app.state.store.instance_id()) && ids.contains(&other.state.store.instance_id()) {
                    break;
                }
                assert!(Instant::now() < deadline, "the instances: {h}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Backend::Sqlite => {
            assert_eq!(h["backend"], "sqlite");
            assert!(h["listener"].is_null());
            assert_eq!(h["instances"].as_array().unwrap().len(), 1);
        }
    }
}

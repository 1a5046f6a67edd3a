//! Nothing acknowledged is lost (issue 21; docs/API.md §14): the real `sessiond` binary killed
//! with SIGKILL in the middle of a burst of refreshes and logouts; after a restart, every
//! rotation and every logout that was answered is there, each logout with its audit row (written
//! in the revoking transaction). SQLite here (WAL, `synchronous=NORMAL`: a killed process loses
//! nothing committed), PostgreSQL in the `postgres` binary.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::helpers::*;

fn spawn(url: &str, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(client.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == StatusCode::OK) {
        assert!(Instant::now() < deadline, "the server never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the burst was answered: per refresh chain its last acknowledged refresh token, and the
/// sessions whose logout was acknowledged (204).
#[derive(Default)]
struct Acked {
    chains: Vec<String>,
    logouts: Vec<(String, String)>,
    rotations: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_burst_loses_no_acknowledged_rotation_logout_or_audit_row() {
    let Some((config, _dir, _db)) = fresh_database().await else { return };
    let url = config.database_url.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().user_agent("crash-test").build().unwrap();
    let mut server = spawn(&url, port);
    ready(&client, &base).await;
    let login = |email: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let creds = json!({ "email": email, "password": PASSWORD });
            assert_eq!(
                client.post(format!("{base}/v1/auth/register")).json(&creds).send().await.unwrap().status(),
                201
            );
            client
                .post(format!("{base}/v1/auth/login"))
                .json(&creds)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let mut sessions = Vec::new();
    for i in 0..12 {
        sessions.push(login(format!("crash-{i}@example.com")).await);
    }
    let acked = Arc::new(Mutex::new(Acked { chains: vec![String::new(); 8], ..Default::default() }));
    // 8 refresh chains; 4 sessions logged out one by one during the burst.
    let mut burst = Vec::new();
    for (i, s) in sessions.iter().take(8).enumerate() {
        let (client, base, acked, mut token) =
            (client.clone(), base.clone(), acked.clone(), s["refresh_token"].as_str().unwrap().to_string());
        acked.lock().unwrap().chains[i] = token.clone();
        burst.push(tokio::spawn(async move {
            loop {
                let r = client
                    .post(format!("{base}/v1/auth/refresh"))
                    .json(&json!({ "refresh_token": token }))
                    .send()
                    .await;
                let Ok(r) = r else { return };
                if r.status() != StatusCode::OK {
                    return;
                }
                let Ok(v) = r.json::<Value>().await else { return };
                token = v["refresh_token"].as_str().unwrap().to_string();
                let mut a = acked.lock().unwrap();
                a.chains[i] = token.clone();
                a.rotations += 1;
            }
        }));
    }
    for s in sessions.iter().skip(8) {
        let (client, base, acked) = (client.clone(), base.clone(), acked.clone());
        let (access, sid) =
            (s["access_token"].as_str().unwrap().to_string(), s["session_id"].as_str().unwrap().to_string());
        burst.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = client.post(format!("{base}/v1/auth/logout")).bearer_auth(&access).send().await;
            if matches!(r, Ok(r) if r.status() == StatusCode::NO_CONTENT) {
                acked.lock().unwrap().logouts.push((sid, access));
            }
        }));
    }
    // Kill once the burst is well under way, with requests in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().rotations < 100 || acked.lock().unwrap().logouts.len() < 4 {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    for b in burst {
        let _ = b.await;
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());

    let _server = spawn(&url, port);
    ready(&client, &base).await;
    // Every chain's last acknowledged token still refreshes (or, when a rotation after it had
    // committed unanswered, converges through the grace window: the same client).
    for (i, token) in acked.chains.iter().enumerate() {
        let r = client
            .post(format!("{base}/v1/auth/refresh"))
            .json(&json!({ "refresh_token": token }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "chain {i}: {}", r.text().await.unwrap());
    }
    // Every acknowledged logout holds, with its audit row.
    let raw = RawDb::connect(&url).await.unwrap();
    let audited: Vec<(Option<String>,)> = match raw {
        RawDb::Sqlite(mut c) => {
            sqlx::query_as("SELECT target_session_id FROM audit_log WHERE event = 'sessions_revoked'")
                .fetch_all(&mut c)
                .await
                .unwrap()
        }
        RawDb::Postgres(mut c) => {
            sqlx::query_as("SELECT target_session_id FROM audit_log WHERE event = 'sessions_revoked'")
                .fetch_all(&mut c)
                .await
                .unwrap()
        }
    };
    for (sid, access) in &acked.logouts {
        let r = client.get(format!("{base}/v1/me")).bearer_auth(access).send().await.unwrap();
        assert_problem(r, StatusCode::UNAUTHORIZED, "session_revoked").await;
        assert!(audited.iter().any(|(s,)| s.as_deref() == Some(sid)), "the audit row of logout {sid} was lost");
    }
    eprintln!(
        "crash: {} rotations and {} logouts acknowledged before SIGKILL, all there after",
        acked.rotations,
        acked.logouts.len()
    );
}

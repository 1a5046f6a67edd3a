//! `soak` (issue 21): N sockets under continuous churn and a steady request mix for a while,
//! to show that nothing grows without bound. Each socket, in a loop: connects, authenticates,
//! and every 1–4 s does one of re-authenticating (a new token after a refresh), reconnecting
//! (a tab reloaded), a ping, or logging its session out over HTTP (it gets its `logout` and
//! 4001, and comes back with a new session). Beside them, clients call `/v1/me` and refresh
//! tokens at a steady rate. At the start, the middle and the end, and once every socket is
//! closed, it prints the server's RSS, open files, CPU, and what `/metrics` says of the hub
//! registry, open sockets, denylist and email cache: all must stay bounded, and the registry and
//! sockets back to zero at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use crate::scenarios::Db;
use crate::{Args, Store};

/// What the run counted.
#[derive(Default)]
struct Counts {
    connects: AtomicU64,
    reauths: AtomicU64,
    logouts: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
}

/// A figure of `/metrics` (the first sample of that name), if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        let key = key.split('{').next()?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

async fn snapshot(label: &str, server: &Server, started: Instant, counts: &Counts) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let text = match client.get(format!("{}/metrics", server.base())).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let m = |name: &str| metric(&text, name).map_or("-".to_string(), |v| format!("{v:.0}"));
    let pid = server.child.id();
    format!(
        "| {label} | {:.0} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
        started.elapsed().as_secs_f64(),
        server.rss_kib() / 1024,
        open_files(pid),
        cpu_us(pid) as f64 / 1e6,
        m("sessiond_ws_authenticated"),
        m("sessiond_ws_open"),
        m("sessiond_denylist_entries"),
        m("sessiond_email_cache_entries"),
        counts.connects.load(Ordering::Relaxed),
        counts.logouts.load(Ordering::Relaxed),
        counts.requests.load(Ordering::Relaxed),
    )
}

/// One socket's life until `stop`.
async fn socket(
    ws_url: String,
    base: String,
    minter: Arc<Minter>,
    first: Minted,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut session = first;
    'connect: while !stop.load(Ordering::Relaxed) {
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(ws_url.as_str()).await else {
            counts.failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        counts.connects.fetch_add(1, Ordering::Relaxed);
        let auth = json!({ "type": "auth", "access_token": session.access }).to_string();
        if ws.send(Message::Text(auth.into())).await.is_err() {
            continue;
        }
        loop {
            let wait = Duration::from_millis(rand::thread_rng().gen_range(1000..4000));
            let action = rand::thread_rng().gen_range(0..100);
            let deadline = tokio::time::Instant::now() + wait;
            // Read what comes (ready, pong) until it is time to act.
            loop {
                if stop.load(Ordering::Relaxed) {
                    let _ = ws.close(None).await;
                    return;
                }
                let next = tokio::time::timeout_at(deadline, ws.next()).await;
                match next {
                    Err(_) => break,
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(&t).unwrap_or_default();
                        if v["type"] == "logout" {
                            counts.failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => continue 'connect,
                    Ok(Some(Ok(_))) => {}
                }
            }
            match action {
                // Re-authenticate with a new token, as after a refresh.
                0..=39 => {
                    let r = client
                        .post(format!("{base}/v1/auth/refresh"))
                        .json(&json!({ "refresh_token": session.refresh }))
                        .send()
                        .await;
                    counts.requests.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(r) if r.status() == 200 => {
                            let v: Value = r.json().await.unwrap_or_default();
                            session.access = v["access_token"].as_str().unwrap_or_default().to_string();
                            session.refresh = v["refresh_token"].as_str().unwrap_or_default().to_string();
                            let auth = json!({ "type": "auth", "access_token": session.access }).to_string();
                            if ws.send(Message::Text(auth.into())).await.is_err() {
                                continue 'connect;
                            }
                            counts.reauths.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            counts.failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // A reload: close, connect again.
                40..=69 => {
                    let _ = ws.close(None).await;
                    continue 'connect;
                }
                70..=89 => {
                    if ws.send(Message::Text(json!({ "type": "ping" }).to_string().into())).await.is_err() {
                        continue 'connect;
                    }
                }
                // Log out: the socket gets its logout and 4001; a new session comes back.
                _ => {
                    let r = client.post(format!("{base}/v1/auth/logout")).bearer_auth(&session.access).send().await;
                    counts.requests.fetch_add(1, Ordering::Relaxed);
                    if !matches!(r, Ok(ref r) if r.status() == 204) {
                        counts.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut got = false;
                    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                        match msg {
                            Message::Text(t) if t.contains("\"logout\"") => got = true,
                            Message::Close(_) => break,
                            _ => {}
                        }
                    }
                    if !got {
                        counts.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    counts.logouts.fetch_add(1, Ordering::Relaxed);
                    session = minter.mint_users(1).await.pop().expect("a new session");
                    continue 'connect;
                }
            }
        }
    }
}

/// The steady request mix beside the sockets: `/v1/me` and a refresh chain, ~20 requests/s
/// per client.
async fn requests(base: String, mut session: Minted, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    while !stop.load(Ordering::Relaxed) {
        let ok = matches!(client.get(format!("{base}/v1/me")).bearer_auth(&session.access).send().await, Ok(r) if r.status() == 200);
        let r = client
            .post(format!("{base}/v1/auth/refresh"))
            .json(&json!({ "refresh_token": session.refresh }))
            .send()
            .await;
        let refreshed = match r {
            Ok(r) if r.status() == 200 => {
                let v: Value = r.json().await.unwrap_or_default();
                session.access = v["access_token"].as_str().unwrap_or_default().to_string();
                session.refresh = v["refresh_token"].as_str().unwrap_or_default().to_string();
                true
            }
            _ => false,
        };
        counts.requests.fetch_add(2, Ordering::Relaxed);
        if !ok || !refreshed {
            counts.failures.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: &Args) -> Vec<String> {
    let n = args.sizes()[0];
    let secs = args.seconds();
    let postgres = args.stores.first() == Some(&Store::Postgres);
    let dir = TempDir::new();
    let db = Db::new(args, &dir, postgres).await;
    let server = Server::start(&db.url, free_port(), &[]).await;
    let minter = Arc::new(Minter::new(&db.url, &server.base()).await);
    eprintln!("soak: minting {n} sessions");
    let sessions = minter.mint_users(n + 8).await;
    let (stop, counts) = (Arc::new(AtomicBool::new(false)), Arc::new(Counts::default()));
    let mut out = vec![
        format!("Soak: {n} sockets under churn and 8 request clients for {secs} s ({}).", if postgres { "PostgreSQL" } else { "SQLite" }),
        String::new(),
        "| when | at (s) | server RSS (MiB) | open files | server CPU (s) | hub registry | sockets open | denylist | email cache | connects | logouts | requests |".into(),
        "|---|---|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut sessions = sessions.into_iter();
    for _ in 0..8 {
        tasks.push(tokio::spawn(requests(server.base(), sessions.next().unwrap(), stop.clone(), counts.clone())));
    }
    for s in sessions {
        tasks.push(tokio::spawn(socket(server.ws(), server.base(), minter.clone(), s, stop.clone(), counts.clone())));
    }
    // Every socket up before the first figures.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text =
            client.get(format!("{}/metrics", server.base())).send().await.unwrap().text().await.unwrap_or_default();
        if metric(&text, "sessiond_ws_authenticated").unwrap_or(0.0) as usize >= n * 9 / 10 || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.push(snapshot("start", &server, started, &counts).await);
    eprintln!("{}", out.last().unwrap());
    tokio::time::sleep(Duration::from_secs(secs / 2)).await;
    out.push(snapshot("middle", &server, started, &counts).await);
    eprintln!("{}", out.last().unwrap());
    tokio::time::sleep(Duration::from_secs(secs - secs / 2)).await;
    out.push(snapshot("end", &server, started, &counts).await);
    eprintln!("{}", out.last().unwrap());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // Closed sockets leave the registry as their tasks end.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text =
            client.get(format!("{}/metrics", server.base())).send().await.unwrap().text().await.unwrap_or_default();
        let left = metric(&text, "sessiond_ws_authenticated").unwrap_or(f64::NAN)
            + metric(&text, "sessiond_ws_open").unwrap_or(f64::NAN);
        if left == 0.0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out.push(snapshot("closed", &server, started, &counts).await);
    out.push(String::new());
    out.push(format!(
        "re-authentications {}, failures (a request or socket step not answered as expected) {}",
        counts.reauths.load(Ordering::Relaxed),
        counts.failures.load(Ordering::Relaxed)
    ));
    eprintln!("{}", out[out.len() - 2]);
    drop(server);
    db.drop_db().await;
    out
}

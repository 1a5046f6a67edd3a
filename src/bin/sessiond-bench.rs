//! Load tool: starts sessiond instances itself, drives them over loopback with bounded counts
//! and time, stops by itself, and prints a table.
//!
//! ```text
//! cargo run --release --bin sessiond-bench -- cluster [--revokes 500] [--rate 100] [--idle 1000]
//! cargo run --release --bin sessiond-bench -- revoke  [--revokes 500] [--rate 100] [--idle 1000]
//! ```
//!
//! `revoke`: one instance on a temp SQLite file; `cluster`: two instances on one PostgreSQL
//! database (`--database-url`, default `postgres://postgres@127.0.0.1:5432/test`; a throwaway
//! database is created and dropped). For each of `--revokes` sessions a socket is held on the
//! *second* instance (the same one for `revoke`), plus `--idle` idle authenticated sockets; then
//! sessions are logged out through the first instance on an open-loop schedule of `--rate` per
//! second (no coordinated omission: send times are fixed in advance). Measured per revocation:
//! from the logout response (and from the request start) to the `logout` frame on the socket.
//! Monotonic clock, HDR histograms. Instances run in this process on the same 2 cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use sessiond::clock::{ms, Clock};
use sessiond::config::Config;
use sessiond::state::AppState;
use sessiond::store::{NewRefresh, NewSession};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    scenario: String,
    revokes: usize,
    rate: f64,
    idle: usize,
    database_url: String,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        scenario: it.next().unwrap_or_else(|| "cluster".into()),
        revokes: 500,
        rate: 100.0,
        idle: 1000,
        database_url: "postgres://postgres@127.0.0.1:5432/test".into(),
    };
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        match flag.as_str() {
            "--revokes" => a.revokes = v.parse().expect("--revokes N"),
            "--rate" => a.rate = v.parse().expect("--rate R"),
            "--idle" => a.idle = v.parse().expect("--idle N"),
            "--database-url" => a.database_url = v,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// A running instance.
struct Instance {
    base: String,
    ws: String,
    state: AppState,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(mut config: Config) -> Instance {
    config.listen = "127.0.0.1:0".parse().unwrap();
    let listener = sessiond::app::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = sessiond::app::build_state(config, Clock::system()).await.expect("instance starts");
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    tokio::spawn(async move {
        let _ = sessiond::app::serve(listener, st, async {
            let _ = rx.await;
        })
        .await;
    });
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "instance not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Instance { ws: format!("ws://{addr}/v1/ws"), base, state, stop }
}

/// A session created straight in the store (the bench measures revocation, not argon2).
async fn mint_session(state: &AppState, user_id: &str) -> (String, String) {
    let token = sessiond::tokens::refresh::RefreshToken::generate();
    let now = state.clock.now_ms();
    let cfg = &state.config;
    let s = state
        .store
        .create_session(NewSession {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: user_id.to_string(),
            device_name: Some("bench".into()),
            user_agent: None,
            ip: None,
            now,
            idle_ttl: ms(cfg.refresh_idle_ttl),
            max_age: ms(cfg.session_max_age),
            access_ttl: ms(cfg.access_ttl),
            refresh: NewRefresh { id: uuid::Uuid::now_v7().to_string(), hash: token.digest() },
        })
        .await
        .unwrap();
    let (access, _) = state.keys.issue(user_id, &s.id, vec![], now, s.access_expires_at).unwrap();
    (s.id, access)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_socket(url: &str, access: &str) -> Ws {
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false).await.unwrap();
    ws.send(Message::Text(serde_json::json!({"type":"auth","access_token":access}).to_string().into())).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"ready\"") => ws,
        other => panic!("no ready: {other:?}"),
    }
}

fn row(name: &str, h: &Histogram<u64>) {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        h.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max() as f64 / 1000.0
    );
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let dir = tempfile_dir();
    let mut base = Config::defaults();
    base.ws_max_sockets_per_user = usize::MAX;
    base.issuer = "http://localhost:8080".into();
    let mut pg_db = None;
    let (a, b) = match args.scenario.as_str() {
        "revoke" => {
            base.database_url = format!("sqlite://{}/bench.db", dir.display());
            let a = start(base.clone()).await;
            (a, None)
        }
        "cluster" => {
            let name = format!("sessiond_bench_{}", uuid::Uuid::new_v4().simple());
            let mut admin =
                PgConnection::connect(&args.database_url).await.expect("PostgreSQL for the cluster scenario");
            admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
            let url = format!("{}/{name}", args.database_url.rsplit_once('/').unwrap().0);
            pg_db = Some((admin, name));
            base.database_url = url;
            let a = start(base.clone()).await;
            let b = start(base.clone()).await;
            (a, Some(b))
        }
        other => panic!("unknown scenario {other} (cluster, revoke)"),
    };
    let target = b.as_ref().unwrap_or(&a);
    let user = uuid::Uuid::now_v7().to_string();
    a.state.store.create_user(&user, "bench@example.com", "x", false, a.state.clock.now_ms()).await.unwrap();

    eprintln!("opening {} idle + {} measured sockets on {}", args.idle, args.revokes, target.ws);
    let mut idle = Vec::new();
    for _ in 0..args.idle {
        let (_, access) = mint_session(&a.state, &user).await;
        idle.push(open_socket(&target.ws, &access).await);
    }
    let mut measured = Vec::new();
    for _ in 0..args.revokes {
        let (sid, access) = mint_session(&a.state, &user).await;
        measured.push((sid, access.clone(), open_socket(&target.ws, &access).await));
    }

    // Readers record when each logout frame arrives.
    let arrivals: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; args.revokes]));
    let mut readers = Vec::new();
    let mut tokens = Vec::new();
    for (i, (_, access, mut ws)) in measured.into_iter().enumerate() {
        tokens.push(access);
        let arrivals = arrivals.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    if t.contains("\"logout\"") {
                        arrivals.lock().await[i] = Some(Instant::now());
                        break;
                    }
                }
            }
        }));
    }

    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(64).build().unwrap();
    let start_at = Instant::now() + Duration::from_millis(200);
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut sends = Vec::new();
    for (i, access) in tokens.into_iter().enumerate() {
        let at = start_at + period * i as u32;
        let (client, url) = (client.clone(), format!("{}/v1/auth/logout", a.base));
        sends.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let sent = Instant::now();
            let r = client.post(url).bearer_auth(access).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 204);
            (sent, Instant::now())
        }));
    }
    let mut times = Vec::new();
    for s in sends {
        times.push(s.await.unwrap());
    }
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
    }
    let arrivals = arrivals.lock().await.clone();
    let mut from_response = Histogram::<u64>::new(3).unwrap();
    let mut from_request = Histogram::<u64>::new(3).unwrap();
    let (mut missing, mut before_response) = (0, 0);
    for ((sent, responded), arrived) in times.iter().zip(arrivals) {
        let Some(arrived) = arrived else {
            missing += 1;
            continue;
        };
        from_request.record(arrived.saturating_duration_since(*sent).as_micros() as u64).unwrap();
        if arrived < *responded {
            before_response += 1;
        }
        from_response.record(arrived.saturating_duration_since(*responded).as_micros() as u64).unwrap();
    }
    println!(
        "\nscenario `{}`: {} revocations at {}/s, {} idle sockets held, sockets on {}\n",
        args.scenario,
        args.revokes,
        args.rate,
        args.idle,
        if b.is_some() { "another instance (PostgreSQL NOTIFY)" } else { "the same instance" }
    );
    println!("| latency (ms) | n | p50 | p90 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|---|");
    row("logout response → logout frame", &from_response);
    row("logout request → logout frame", &from_request);
    println!(
        "\nevents missing: {missing}; events that arrived before the HTTP response: {before_response} (counted as 0)"
    );

    let _ = a.stop.send(());
    if let Some(b) = b {
        let _ = b.stop.send(());
    }
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some((mut admin, name)) = pg_db {
        let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sessiond-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

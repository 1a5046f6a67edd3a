//! The socket-holding worker process: opens one authenticated socket per token, then records
//! when `logout` frames arrive (and, in `reconnect` mode, when sockets closed by a restart are
//! authenticated again). Talks to the coordinator over stdin/stdout lines.
//!
//! Two framings of the same protocol ([`Framing`]): plain WebSocket text frames (sessiond and
//! most peers), or Socket.IO's, as an Engine.IO v4 client over the WebSocket transport (open
//! packet `0{…}`, `40` to join namespace "/", events as `42["name",…]`, pings `2` answered `3`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{mono_ns, Framing};

type Events = Arc<Mutex<Vec<(usize, u64)>>>;

/// Full-jitter exponential backoff (AWS Architecture Blog), base 100 ms, cap 5 s.
fn backoff(attempt: u32) -> Duration {
    let cap = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
    Duration::from_millis(rand::thread_rng().gen_range(0..=cap))
}

/// Connects and authenticates; Ok once `ready` arrives.
async fn connect(url: &str, token: &str, framing: Framing) -> Result<super::Ws, String> {
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(config), false).await.map_err(|e| e.to_string())?;
    if framing == Framing::EngineIo {
        return engine_io_handshake(ws, token).await;
    }
    let auth = serde_json::json!({"type": "auth", "access_token": token}).to_string();
    ws.send(Message::Text(auth.into())).await.map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"ready\"") => return Ok(ws),
            Some(Ok(Message::Text(t))) => return Err(t.to_string()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        }
    }
}

/// Socket.IO over Engine.IO v4: open packet → join "/" → `auth` event → `ready` event.
async fn engine_io_handshake(mut ws: super::Ws, token: &str) -> Result<super::Ws, String> {
    loop {
        let t = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        };
        let reply = match t.as_str() {
            "2" => "3".to_string(),
            s if s.starts_with('0') => "40".to_string(),
            s if s.starts_with("40") => format!("42{}", serde_json::json!(["auth", {"access_token": token}])),
            s if s.starts_with("42[\"ready\"") => return Ok(ws),
            other => return Err(other.to_string()),
        };
        ws.send(Message::Text(reply.into())).await.map_err(|e| e.to_string())?;
    }
}

/// What every socket task shares.
#[derive(Clone)]
struct Shared {
    url: String,
    reconnect: bool,
    framing: Framing,
    logouts: Events,
    rereadies: Events,
    gate: Arc<Semaphore>,
}

/// A `logout` frame: the hub's message, or Socket.IO's `logout` event.
fn is_logout(text: &str, framing: Framing) -> bool {
    match framing {
        Framing::Plain => text.contains("\"logout\""),
        Framing::EngineIo => text.starts_with("42[\"logout\""),
    }
}

async fn hold(i: usize, token: String, first: mpsc::Sender<bool>, sh: Shared) {
    let mut attempt = 0u32;
    let mut first = Some(first);
    loop {
        let permit = sh.gate.acquire().await.unwrap();
        let res = connect(&sh.url, &token, sh.framing).await;
        drop(permit);
        let mut ws = match res {
            Ok(ws) => ws,
            Err(_) if sh.reconnect && attempt < 60 => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            Err(_) => {
                if let Some(f) = first.take() {
                    let _ = f.send(false).await;
                }
                return;
            }
        };
        match first.take() {
            Some(f) => {
                let _ = f.send(true).await;
            }
            None => sh.rereadies.lock().unwrap().push((i, mono_ns())),
        }
        attempt = 0;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if is_logout(&t, sh.framing) => {
                    sh.logouts.lock().unwrap().push((i, mono_ns()));
                    return;
                }
                Some(Ok(Message::Text(t))) if sh.framing == Framing::EngineIo && t.as_str() == "2" => {
                    if ws.send(Message::Text("3".into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => continue,
                _ => break, // closed (1012 on restart) or failed
            }
        }
        if !sh.reconnect {
            return;
        }
        attempt += 1;
        tokio::time::sleep(backoff(attempt)).await;
    }
}

pub async fn run(url: String, file: String, mode: String, framing: Framing) {
    let tokens: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(String::from).collect();
    let reconnect = mode == "reconnect";
    let (tx, mut rx) = mpsc::channel(1024);
    let logouts: Events = Arc::default();
    let rereadies: Events = Arc::default();
    let gate = Arc::new(Semaphore::new(256));
    let shared = Shared { url, reconnect, framing, logouts: logouts.clone(), rereadies: rereadies.clone(), gate };
    for (i, token) in tokens.iter().enumerate() {
        tokio::spawn(hold(i, token.clone(), tx.clone(), shared.clone()));
    }
    drop(tx);
    let (mut ok, mut failed) = (0, 0);
    while ok + failed < tokens.len() {
        match rx.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    println!("ready {ok} {failed}");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let events = match line.trim() {
            "logouts" => logouts.lock().unwrap().clone(),
            "rereadies" => rereadies.lock().unwrap().clone(),
            _ => break,
        };
        let body: Vec<String> = events.iter().map(|(i, t)| format!("{i}:{t}")).collect();
        println!("events {}", body.join(" "));
    }
}

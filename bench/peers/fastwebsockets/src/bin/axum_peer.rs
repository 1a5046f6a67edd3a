//! Peer for the bench tool: the same protocol as sessiond's hub, minimal, on axum's WebSocket
//! (tungstenite underneath, as in sessiond) "tuned" as sessiond tunes it: the same read, write
//! and maximum write buffer sizes (src/http/ws.rs), and one small mailbox per socket.
//!
//! Connect to ws://127.0.0.1:$PORT/, send {"type":"auth","access_token":…} → {"type":"ready"};
//! GET /broadcast sends {"type":"logout",…} to every authenticated socket and closes it (4001);
//! GET /logout?user=U does the same to user U's sockets only (a token `u17-3` is user `u17`'s,
//! any other token its own user's); GET /readyz → 200. No token verification and no database:
//! it is what sessiond's socket layer would cost with nothing behind it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use futures_util::SinkExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// sessiond's per-socket buffers (src/http/ws.rs): a 2 KiB read buffer instead of tungstenite's
/// 128 KiB, small frames held for one flush (the logout and its close go out in one write), and
/// a cap on buffered outbound bytes.
const READ_BUFFER: usize = 2 * 1024;
const WRITE_BUFFER: usize = 1024;
const MAX_WRITE_BUFFER: usize = 64 * 1024;
const MAX_MESSAGE: usize = 64 * 1024;

/// The authenticated sockets: user → socket id → its mailbox (one slot: a logout).
#[derive(Default)]
struct Hub {
    next: AtomicU64,
    users: Mutex<HashMap<String, HashMap<u64, mpsc::Sender<Utf8Bytes>>>>,
}

impl Hub {
    /// Posts a logout to the sockets of `user`, or of everyone; returns how many took it.
    fn logout(&self, user: Option<&str>, reason: &str) -> usize {
        let msg = serde_json::json!({"type": "logout", "reason": reason, "session_id": "-", "at": "-"});
        let msg = Utf8Bytes::from(msg.to_string());
        let sockets: Vec<_> = {
            let mut users = self.users.lock().unwrap();
            match user {
                Some(u) => users.remove(u).into_iter().flatten().collect(),
                None => users.drain().flat_map(|(_, s)| s).collect(),
            }
        };
        sockets.into_iter().filter(|(_, tx)| tx.try_send(msg.clone()).is_ok()).count()
    }

    fn remove(&self, user: &str, id: u64) {
        let mut users = self.users.lock().unwrap();
        if let Some(sockets) = users.get_mut(user) {
            sockets.remove(&id);
            if sockets.is_empty() {
                users.remove(user);
            }
        }
    }
}

/// The user a token stands for: `u17-3` → `u17`; any other token is a user of its own.
fn user_of(token: &str) -> &str {
    match token.split_once('-') {
        Some((user, _)) if token.starts_with('u') => user,
        _ => token,
    }
}

async fn close(ws: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = ws.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))).await;
}

async fn socket(mut ws: WebSocket, hub: Arc<Hub>) {
    let first = match tokio::time::timeout(Duration::from_secs(10), ws.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(_))) => return close(&mut ws, 1008, "").await,
        Ok(_) => return,
        Err(_) => return close(&mut ws, 4408, "").await,
    };
    let auth = serde_json::from_str::<serde_json::Value>(&first).ok().filter(|m| m["type"] == "auth");
    let Some(token) = auth.as_ref().and_then(|m| m["access_token"].as_str()) else {
        return close(&mut ws, 4401, "").await;
    };
    let user = user_of(token).to_string();
    let (tx, mut rx) = mpsc::channel(1);
    let id = hub.next.fetch_add(1, Ordering::Relaxed);
    hub.users.lock().unwrap().entry(user.clone()).or_default().insert(id, tx);
    if ws.send(Message::Text(Utf8Bytes::from_static(r#"{"type":"ready"}"#))).await.is_ok() {
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    // As sessiond does: `feed` only buffers (the frame is smaller than the write
                    // buffer), so the event and the close frame leave in one write.
                    if ws.feed(Message::Text(msg)).await.is_ok() {
                        close(&mut ws, 4001, "logged out").await;
                        // Wait (bounded) for the client's close reply, as a close handshake does.
                        let _ = tokio::time::timeout(Duration::from_secs(5), async {
                            while let Some(Ok(m)) = ws.recv().await {
                                if matches!(m, Message::Close(_)) {
                                    break;
                                }
                            }
                        })
                        .await;
                    }
                    break;
                }
                m = ws.recv() => match m {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    hub.remove(&user, id);
}

#[derive(serde::Deserialize)]
struct UserQuery {
    user: String,
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(9005);
    let hub = Arc::new(Hub::default());
    let app = Router::new()
        .route(
            "/",
            get(|State(hub): State<Arc<Hub>>, ws: WebSocketUpgrade| async move {
                ws.read_buffer_size(READ_BUFFER)
                    .write_buffer_size(WRITE_BUFFER)
                    .max_write_buffer_size(MAX_WRITE_BUFFER)
                    .max_message_size(MAX_MESSAGE)
                    .max_frame_size(MAX_MESSAGE)
                    .on_upgrade(move |ws| socket(ws, hub))
            }),
        )
        .route(
            "/broadcast",
            get(|State(hub): State<Arc<Hub>>| async move {
                format!("{{\"notified\":{}}}", hub.logout(None, "admin_logout"))
            }),
        )
        .route(
            "/logout",
            get(|State(hub): State<Arc<Hub>>, Query(q): Query<UserQuery>| async move {
                format!("{{\"notified\":{}}}", hub.logout(Some(&q.user), "logout"))
            }),
        )
        .route("/readyz", get(|| async { "ok" }))
        .with_state(hub);
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind 127.0.0.1:$PORT");
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("serve");
}

//! Peer for the bench tool: the same protocol as sessiond's hub, minimal, on `fastwebsockets`
//! (Deno's WebSocket library) over hyper 1 and tokio.
//!
//! Connect to ws://127.0.0.1:$PORT/, send {"type":"auth","access_token":…} → {"type":"ready"};
//! GET /broadcast sends {"type":"logout",…} to every authenticated socket and closes it (4001);
//! GET /logout?user=U does the same to user U's sockets only (a token `u17-3` is user `u17`'s,
//! any other token its own user's); GET /readyz → 200. No token verification and no database:
//! it is the floor for "a socket and a broadcast". One task per socket; each authenticated
//! socket registers a one-slot channel in the hub under its user, and a logout pushes the
//! message into the channels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastwebsockets::{upgrade, FragmentCollector, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One broadcast's `logout` message, shared by all its sockets.
type Logout = Arc<[u8]>;

/// The authenticated sockets: user → socket id → the channel its task waits on.
#[derive(Default)]
struct Hub {
    next: AtomicU64,
    users: Mutex<HashMap<String, HashMap<u64, oneshot::Sender<Logout>>>>,
}

impl Hub {
    /// Sends `msg` to the sockets of `user`, or of everyone; returns how many got it.
    fn logout(&self, user: Option<&str>, reason: &str) -> usize {
        let msg = serde_json::json!({"type": "logout", "reason": reason, "session_id": "-", "at": "-"});
        let msg: Logout = serde_json::to_vec(&msg).unwrap().into();
        let sockets: Vec<_> = {
            let mut users = self.users.lock().unwrap();
            match user {
                Some(u) => users.remove(u).into_iter().flatten().collect(),
                None => users.drain().flat_map(|(_, s)| s).collect(),
            }
        };
        sockets.into_iter().filter_map(|(_, tx)| tx.send(msg.clone()).ok()).count()
    }
}

/// The user a token stands for: `u17-3` → `u17`; any other token is a user of its own.
fn user_of(token: &str) -> &str {
    match token.split_once('-') {
        Some((user, _)) if token.starts_with('u') => user,
        _ => token,
    }
}

async fn socket(fut: upgrade::UpgradeFut, hub: Arc<Hub>) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_max_message_size(16 * 1024);
    let mut ws = FragmentCollector::new(ws);
    let first = match tokio::time::timeout(Duration::from_secs(10), ws.read_frame()).await {
        Ok(frame) => frame?,
        Err(_) => return ws.write_frame(Frame::close(4408, b"")).await,
    };
    if first.opcode != OpCode::Text {
        return ws.write_frame(Frame::close(1008, b"")).await;
    }
    let auth = serde_json::from_slice::<serde_json::Value>(&first.payload).ok().filter(|m| m["type"] == "auth");
    let Some(token) = auth.as_ref().and_then(|m| m["access_token"].as_str()) else {
        return ws.write_frame(Frame::close(4401, b"")).await;
    };
    let user = user_of(token).to_string();
    let (tx, mut rx) = oneshot::channel();
    let id = hub.next.fetch_add(1, Ordering::Relaxed);
    hub.users.lock().unwrap().entry(user.clone()).or_default().insert(id, tx);
    let res = async {
        ws.write_frame(Frame::text(Payload::Borrowed(br#"{"type":"ready"}"#))).await?;
        loop {
            tokio::select! {
                msg = &mut rx => {
                    let Ok(msg) = msg else { return Ok(()) };
                    ws.write_frame(Frame::text(Payload::Borrowed(&msg))).await?;
                    ws.write_frame(Frame::close(4001, b"logged out")).await?;
                    // Wait (bounded) for the client's close reply, as a close handshake does.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while ws.read_frame().await.is_ok_and(|f| f.opcode != OpCode::Close) {}
                    })
                    .await;
                    return Ok(());
                }
                frame = ws.read_frame() => match frame {
                    Ok(f) if f.opcode == OpCode::Close => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                },
            }
        }
    }
    .await;
    let mut users = hub.users.lock().unwrap();
    if let Some(sockets) = users.get_mut(&user) {
        sockets.remove(&id);
        if sockets.is_empty() {
            users.remove(&user);
        }
    }
    res
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn serve(mut req: Request<Incoming>, hub: Arc<Hub>) -> Result<Response<Body>, WebSocketError> {
    if upgrade::is_upgrade_request(&req) {
        let (response, fut) = upgrade::upgrade(&mut req)?;
        tokio::spawn(async move {
            let _ = socket(fut, hub).await;
        });
        return Ok(response.map(|_| Full::new(Bytes::new())));
    }
    Ok(match req.uri().path() {
        "/broadcast" => {
            let n = hub.logout(None, "admin_logout");
            respond(StatusCode::OK, format!("{{\"notified\":{n}}}"))
        }
        "/logout" => match req.uri().query().and_then(|q| q.strip_prefix("user=")) {
            Some(user) => {
                let n = hub.logout(Some(user), "logout");
                respond(StatusCode::OK, format!("{{\"notified\":{n}}}"))
            }
            None => respond(StatusCode::BAD_REQUEST, "?user= missing"),
        },
        "/readyz" => respond(StatusCode::OK, "ok"),
        _ => respond(StatusCode::NOT_FOUND, ""),
    })
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(9004);
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind 127.0.0.1:$PORT");
    let hub = Arc::new(Hub::default());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of files, most likely: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| serve(req, hub.clone()));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await;
        });
    }
}

//! One socket's task: authenticate with the first message, then serve pings, re-auth and hub
//! events until the session ends, the token expires, the peer leaves or the server shuts down.
//!
//! One `select!` loop, no split: the socket only ever writes small control messages, and every
//! write races the kill signal, so a slow reader cannot hold the task (or anyone else) hostage.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::SinkExt;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::protocol::{close, parse, ClientMessage, ParseError, ServerMessage};
use super::{HubEvent, RegisterError, Registration};
use crate::clock::{rfc3339, Millis};
use crate::error::AppError;
use crate::http::extract::{check_live, verify_token};
use crate::limits::UnauthenticatedGuard;
use crate::state::AppState;

/// Largest inbound message the protocol accepts (docs/API.md §5.7).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// A write that takes longer than this means a dead or hostile reader.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing socket waits for the client's close frame.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);
/// Pongs a socket may miss before it is closed.
const MAX_MISSED_PONGS: u8 = 2;
/// Frames a client may send per ping period (25 s by default) before it is closed with 1008
/// (SECURITY.md W11: a message flood). The protocol needs a handful: `auth`, a re-`auth` after
/// each refresh, an occasional `ping`.
pub const MAX_FRAMES_PER_PERIOD: u16 = 64;

/// Who the socket is authenticated as.
struct Authed {
    user_id: String,
    session_id: String,
    registration: Registration,
}

/// What the loop does next.
enum Step {
    Continue,
    Close(u16, &'static str),
    /// Send the logout event, then close 4001.
    Logout {
        reason: String,
        session_id: String,
        at: Millis,
        published: Option<std::time::Instant>,
    },
    /// End without a goodbye (peer gone, or killed).
    Drop,
}

/// Counts the socket as open while alive.
struct OpenGuard<'a>(&'a AppState);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.hub.metrics().ws_open.dec();
    }
}

/// Serves one upgraded socket until it ends.
/// `unauthenticated` holds the socket's place under the per-IP cap of unauthenticated sockets
/// until it authenticates.
pub async fn run(ws: WebSocket, state: AppState, unauthenticated: UnauthenticatedGuard) {
    use tracing::Instrument;
    let conn_id = state.hub.next_conn_id();
    serve(ws, &state, conn_id, Some(unauthenticated)).instrument(tracing::debug_span!("ws", conn_id)).await
}

async fn serve(mut ws: WebSocket, state: &AppState, conn_id: u64, mut unauthenticated: Option<UnauthenticatedGuard>) {
    let state = state.clone();
    state.hub.metrics().ws_open.inc();
    let _open = OpenGuard(&state);
    let shutdown = state.hub.shutdown_token();
    let mut kill = CancellationToken::new();
    let mut authed: Option<Authed> = None;
    // Before auth: the auth deadline; after: the access token's expiry.
    let deadline = sleep_until(Instant::now() + state.config.ws_auth_timeout);
    tokio::pin!(deadline);
    let period = state.config.ws_ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + period, period);
    let mut missed: u8 = 0;
    let mut received: u16 = 0;

    loop {
        let step = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Step::Close(close::RESTART, "server restarting"),
            _ = kill.cancelled() => Step::Drop,
            Some(event) = next_event(&mut authed) => match event {
                HubEvent::Logout { reason, session_id, at, published } => Step::Logout {
                    reason: reason.to_string(), session_id: session_id.to_string(), at, published: Some(published),
                },
                HubEvent::Evicted => Step::Close(close::TOO_MANY, "too many sockets for this user"),
            },
            _ = &mut deadline => match authed {
                None => Step::Close(close::AUTH_TIMEOUT, "no auth in time"),
                Some(_) => Step::Close(close::UNAUTHENTICATED, "access token expired"),
            },
            _ = ping.tick() => {
                received = 0;
                if missed >= MAX_MISSED_PONGS {
                    Step::Close(close::GOING_AWAY, "no pong")
                } else {
                    missed += 1;
                    if send(&mut ws, Message::Ping(Default::default()), &kill).await { Step::Continue } else { Step::Drop }
                }
            }
            msg = ws.recv() => match msg {
                None => Step::Drop,
                Some(Err(e)) => receive_error(e),
                Some(Ok(_)) if received >= MAX_FRAMES_PER_PERIOD => Step::Close(close::POLICY, "too many messages"),
                Some(Ok(msg)) => {
                    missed = 0;
                    received += 1;
                    match msg {
                        Message::Text(text) => {
                            if text.len() > MAX_MESSAGE_BYTES {
                                Step::Close(close::TOO_BIG, "message too large")
                            } else {
                                // Boxed: authentication may read the database (fail-closed mode), and that
                                // future is large; inline it would sit in every idle socket's state.
                                Box::pin(on_text(&mut ws, &state, conn_id, text.as_str(), &mut authed, &mut unauthenticated, &mut kill, deadline.as_mut())).await
                            }
                        }
                        Message::Binary(_) => Step::Close(close::UNSUPPORTED, "binary frames are not supported"),
                        Message::Pong(_) | Message::Ping(_) => Step::Continue,
                        Message::Close(_) => Step::Drop,
                    }
                }
            },
        };
        match step {
            Step::Continue => continue,
            Step::Drop => break,
            Step::Close(code, why) => {
                tracing::debug!(code, why, "closing socket");
                close_with(&mut ws, code, why, &kill).await;
                break;
            }
            Step::Logout { reason, session_id, at, published } => {
                let msg = ServerMessage::Logout { reason: &reason, session_id: &session_id, at: rfc3339(at) }.to_json();
                // The event and the close frame leave in one write: `feed` only buffers (the
                // write buffer holds small frames until a flush), the close's `send` flushes.
                let close = Message::Close(Some(CloseFrame { code: close::LOGGED_OUT, reason: "logged out".into() }));
                let fed = tokio::time::timeout(WRITE_TIMEOUT, ws.feed(Message::Text(msg.into()))).await;
                if matches!(fed, Ok(Ok(()))) && send(&mut ws, close, &kill).await {
                    let m = state.hub.metrics();
                    if let Some(p) = published {
                        m.ws_push_latency.observe(p.elapsed().as_secs_f64());
                    }
                    m.ws_logout(&reason);
                }
                tracing::debug!(%reason, "socket logged out");
                break;
            }
        }
    }
    // Dropping `authed` removes the registration.
}

async fn next_event(authed: &mut Option<Authed>) -> Option<HubEvent> {
    match authed {
        Some(a) => Some(a.registration.mailbox.recv().await),
        None => std::future::pending().await,
    }
}

fn receive_error(e: axum::Error) -> Step {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast::<WsError>() {
        Ok(e) => match *e {
            WsError::Capacity(_) => Step::Close(close::TOO_BIG, "message too large"),
            WsError::Utf8(_) => Step::Close(close::INVALID_DATA, "invalid utf-8"),
            WsError::Protocol(_) => Step::Close(close::POLICY, "protocol error"),
            _ => Step::Drop,
        },
        Err(_) => Step::Drop,
    }
}

/// Handles one text message. `unauthenticated` (the per-IP slot) is released the moment the
/// socket registers, before `ready` is sent.
#[allow(clippy::too_many_arguments)]
async fn on_text(
    ws: &mut WebSocket,
    state: &AppState,
    conn_id: u64,
    text: &str,
    authed: &mut Option<Authed>,
    unauthenticated: &mut Option<UnauthenticatedGuard>,
    kill: &mut CancellationToken,
    deadline: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Step {
    let msg = match (parse(text), authed.is_some()) {
        (Ok(m), _) => m,
        // Before authentication anything but a valid `auth` is refused as unauthenticated.
        (Err(_), false) => return Step::Close(close::UNAUTHENTICATED, "first message must be auth"),
        (Err(ParseError::BadFields), true) => {
            let reply = ServerMessage::Error { code: "invalid_request" }.to_json();
            return if send(ws, Message::Text(reply.into()), kill).await { Step::Continue } else { Step::Drop };
        }
        (Err(ParseError::Violation), true) => return Step::Close(close::POLICY, "unknown message"),
    };
    let token = match msg {
        ClientMessage::Ping if authed.is_some() => {
            let reply = ServerMessage::Pong.to_json();
            return if send(ws, Message::Text(reply.into()), kill).await { Step::Continue } else { Step::Drop };
        }
        ClientMessage::Ping => return Step::Close(close::UNAUTHENTICATED, "first message must be auth"),
        ClientMessage::Auth { access_token } => access_token,
    };

    // Verify once; the revocation check is separate so a revoked session's socket learns why.
    let Ok(user) = verify_token(state, &token, false) else {
        return Step::Close(close::UNAUTHENTICATED, "invalid or expired token");
    };
    match check_live(state, &user).await {
        Ok(()) => {}
        Err(AppError::SessionRevoked) => return logout_from_denylist(state, &user.session_id),
        Err(_) => return Step::Close(close::UNAUTHENTICATED, "invalid or expired token"),
    }
    let exp = user.exp;
    match authed {
        Some(a) if a.user_id != user.user_id || a.session_id != user.session_id => {
            return Step::Close(close::UNAUTHENTICATED, "token of another session");
        }
        Some(_) => {}
        None => {
            let max = state.config.ws_max_sockets_per_user;
            let registration = match state.hub.register(conn_id, &user.user_id, &user.session_id, max) {
                Ok(r) => r,
                Err(RegisterError::TooMany) => return Step::Close(close::TOO_MANY, "too many sockets for this user"),
            };
            *kill = registration.kill.clone();
            *authed = Some(Authed { user_id: user.user_id.clone(), session_id: user.session_id.clone(), registration });
            unauthenticated.take();
            // A revocation published between `authenticate` and `register` did not see this
            // socket; the denylist did record it.
            if state.denylist.contains(&user.session_id) {
                return logout_from_denylist(state, &user.session_id);
            }
        }
    }
    // Close at `exp` (our clock) unless a newer token arrives first.
    let left_ms = (exp * 1000 - state.clock.now_ms()).max(0) as u64;
    deadline.reset(Instant::now() + Duration::from_millis(left_ms));
    let ready =
        ServerMessage::Ready { user_id: &user.user_id, session_id: &user.session_id, expires_at: rfc3339(exp * 1000) }
            .to_json();
    if send(ws, Message::Text(ready.into()), kill).await {
        Step::Continue
    } else {
        Step::Drop
    }
}

fn logout_from_denylist(state: &AppState, session_id: &str) -> Step {
    match state.denylist.get(session_id) {
        Some(ended) => Step::Logout {
            reason: ended.reason.to_string(),
            session_id: session_id.to_string(),
            at: ended.at,
            published: None,
        },
        None => Step::Close(close::UNAUTHENTICATED, "invalid or expired token"),
    }
}

/// Writes one message unless the socket is killed or the write stalls; false if it failed.
async fn send(ws: &mut WebSocket, msg: Message, kill: &CancellationToken) -> bool {
    tokio::select! {
        _ = kill.cancelled() => false,
        r = tokio::time::timeout(WRITE_TIMEOUT, ws.send(msg)) => matches!(r, Ok(Ok(()))),
    }
}

/// Sends a close frame, then reads (and discards) what the client still sends until its own
/// close frame, for at most [`CLOSE_DRAIN`]: closing the TCP connection with unread input makes
/// the kernel send a reset, and the client would lose our close frame (and its code).
async fn close_with(ws: &mut WebSocket, code: u16, why: &'static str, kill: &CancellationToken) {
    if !send(ws, Message::Close(Some(CloseFrame { code, reason: why.into() })), kill).await {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while let Some(Ok(msg)) = ws.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

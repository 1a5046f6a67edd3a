//! One socket's task: authenticate with the first message, then serve pings, re-auth and hub
//! events until the session ends, the token expires, the peer leaves or the server shuts down.
//! It talks to the sessions service (verification, the denylist, the hub's registry), never to
//! the HTTP layer.
//!
//! One `select!` loop, no split: the socket only ever writes small control messages, and every
//! write races the kill signal, so a slow reader cannot hold the task (or anyone else) hostage.

use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::SinkExt;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::clock::rfc3339;
use crate::error::AppError;
use crate::hub::protocol::{close, logout_frame, parse, ClientMessage, ParseError, ServerMessage};
use crate::hub::{HubEvent, RegisterError, Registration};
use crate::limits::UnauthenticatedGuard;
use crate::sessions::Sessions;

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

/// Where the socket stands: waiting for its first `auth` (holding its place under the per-IP
/// cap of unauthenticated sockets), or authenticated (holding its registration in the hub).
enum Auth {
    Pending { _slot: UnauthenticatedGuard },
    Authenticated { user_id: String, session_id: String, registration: Registration },
}

/// What the loop does next.
enum Step {
    Continue,
    Close(u16, &'static str),
    /// Send the logout event (a ready frame), then close 4001.
    Logout {
        frame: Utf8Bytes,
        reason: Arc<str>,
        published: Option<std::time::Instant>,
    },
    /// End without a goodbye (peer gone, or killed).
    Drop,
}

/// One socket: the connection, the service it authenticates against, and where it stands.
pub struct Socket {
    ws: WebSocket,
    sessions: Sessions,
    conn_id: u64,
    auth: Auth,
    /// Cancelled when the hub kills the socket (a full mailbox, an eviction); a fresh token
    /// until the socket registers.
    kill: CancellationToken,
    /// Keeps shutdown waiting until the socket has ended.
    _tracked: TaskTrackerToken,
}

/// Counts the socket as open while alive.
struct OpenGuard(Sessions);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.hub.metrics().ws_open.dec();
    }
}

impl Socket {
    /// The task that serves one upgraded socket until it ends. `slot` holds the socket's place
    /// under the per-IP cap of unauthenticated sockets until it authenticates; `tracked` keeps
    /// shutdown waiting for it. Boxed, and built by a plain function: a future moved through
    /// several `async` layers (the upgrade's callback, a wrapper `async fn`) is stored again in
    /// each, so the WebSocket and the loop's state were held two or three times per idle socket.
    pub fn run(
        ws: WebSocket,
        sessions: Sessions,
        slot: UnauthenticatedGuard,
        tracked: TaskTrackerToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        use tracing::Instrument;
        let conn_id = sessions.hub.next_conn_id();
        let auth = Auth::Pending { _slot: slot };
        let socket = Socket { ws, sessions, conn_id, auth, kill: CancellationToken::new(), _tracked: tracked };
        Box::pin(socket.serve().instrument(tracing::debug_span!("ws", conn_id)))
    }

    async fn serve(mut self) {
        self.sessions.hub.metrics().ws_open.inc();
        let _open = OpenGuard(self.sessions.clone());
        let shutdown = self.sessions.hub.shutdown_token();
        // Before auth: the auth deadline; after: the access token's expiry.
        let deadline = sleep_until(Instant::now() + self.sessions.config.ws_auth_timeout);
        tokio::pin!(deadline);
        let period = self.sessions.config.ws_ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + period, period);
        let mut missed: u8 = 0;
        let mut received: u16 = 0;

        let end = loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Step::Close(close::RESTART, "server restarting"),
                _ = self.kill.cancelled() => Step::Drop,
                Some(event) = next_event(&mut self.auth) => match event {
                    HubEvent::Logout { frame, reason, published } => Step::Logout { frame, reason, published: Some(published) },
                    HubEvent::Evicted => Step::Close(close::TOO_MANY, "too many sockets for this user"),
                },
                _ = &mut deadline => match self.auth {
                    Auth::Pending { .. } => Step::Close(close::AUTH_TIMEOUT, "no auth in time"),
                    Auth::Authenticated { .. } => Step::Close(close::UNAUTHENTICATED, "access token expired"),
                },
                _ = ping.tick() => {
                    received = 0;
                    if missed >= MAX_MISSED_PONGS {
                        Step::Close(close::GOING_AWAY, "no pong")
                    } else {
                        missed += 1;
                        if self.send(Message::Ping(Default::default())).await { Step::Continue } else { Step::Drop }
                    }
                }
                msg = self.ws.recv() => match msg {
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
                                    // Boxed: authentication may read the database (fail-closed
                                    // mode), and that future is large; inline it would sit in
                                    // every idle socket's state.
                                    Box::pin(self.on_text(text.as_str(), deadline.as_mut())).await
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
                end => break end,
            }
        };
        // Boxed: the ends' futures (a write under a timeout, the close drain) would otherwise add
        // to the state every idle socket keeps for its whole life.
        Box::pin(self.finish(end)).await;
        // Dropping `self.auth` removes the registration.
    }

    /// How a socket ends: a close handshake, the logout event and close 4001, or nothing.
    async fn finish(&mut self, end: Step) {
        match end {
            Step::Continue | Step::Drop => {}
            Step::Close(code, why) => {
                tracing::debug!(code, why, "closing socket");
                self.close_with(code, why).await;
            }
            Step::Logout { frame, reason, published } => {
                // The event and the close frame leave in one write: `feed` only buffers (the
                // write buffer holds small frames until a flush), the close's `send` flushes.
                let close = Message::Close(Some(CloseFrame { code: close::LOGGED_OUT, reason: "logged out".into() }));
                let fed = tokio::time::timeout(WRITE_TIMEOUT, self.ws.feed(Message::Text(frame))).await;
                if matches!(fed, Ok(Ok(()))) && self.send(close).await {
                    let m = self.sessions.hub.metrics();
                    if let Some(p) = published {
                        m.ws_push_latency.observe(p.elapsed().as_secs_f64());
                    }
                    m.ws_logout(&reason);
                    m.ws_last_logout_written.set(self.sessions.clock.now_ms() as f64 / 1000.0);
                }
                tracing::debug!(%reason, "socket logged out");
            }
        }
    }

    /// Handles one text message. The per-IP slot is released the moment the socket registers,
    /// before `ready` is sent.
    async fn on_text(&mut self, text: &str, deadline: std::pin::Pin<&mut tokio::time::Sleep>) -> Step {
        let authenticated = matches!(self.auth, Auth::Authenticated { .. });
        let msg = match (parse(text), authenticated) {
            (Ok(m), _) => m,
            // Before authentication anything but a valid `auth` is refused as unauthenticated.
            (Err(_), false) => return Step::Close(close::UNAUTHENTICATED, "first message must be auth"),
            (Err(ParseError::BadFields), true) => {
                let reply = ServerMessage::Error { code: "invalid_request" }.to_json();
                return if self.send(Message::Text(reply.into())).await { Step::Continue } else { Step::Drop };
            }
            (Err(ParseError::Violation), true) => return Step::Close(close::POLICY, "unknown message"),
        };
        let token = match msg {
            ClientMessage::Ping if authenticated => {
                let reply = ServerMessage::Pong.to_json();
                return if self.send(Message::Text(reply.into())).await { Step::Continue } else { Step::Drop };
            }
            ClientMessage::Ping => return Step::Close(close::UNAUTHENTICATED, "first message must be auth"),
            ClientMessage::Auth { access_token } => access_token,
        };

        // Verify once; the revocation check is separate so a revoked session's socket learns why.
        let sessions = &self.sessions;
        let Ok(user) = sessions.verify(&token, false) else {
            return Step::Close(close::UNAUTHENTICATED, "invalid or expired token");
        };
        match sessions.check_live(&user).await {
            Ok(()) => {}
            Err(AppError::SessionRevoked) => return logout_from_denylist(sessions, &user.session_id),
            Err(_) => return Step::Close(close::UNAUTHENTICATED, "invalid or expired token"),
        }
        let exp = user.exp;
        match &self.auth {
            Auth::Authenticated { user_id, session_id, .. }
                if *user_id != user.user_id || *session_id != user.session_id =>
            {
                return Step::Close(close::UNAUTHENTICATED, "token of another session");
            }
            Auth::Authenticated { .. } => {}
            Auth::Pending { .. } => {
                let max = sessions.config.ws_max_sockets_per_user;
                let registration = match sessions.hub.register(self.conn_id, &user.user_id, &user.session_id, max) {
                    Ok(r) => r,
                    Err(RegisterError::TooMany) => {
                        return Step::Close(close::TOO_MANY, "too many sockets for this user")
                    }
                };
                self.kill = registration.kill.clone();
                // Replacing `Pending` drops its slot under the per-IP cap.
                self.auth = Auth::Authenticated {
                    user_id: user.user_id.clone(),
                    session_id: user.session_id.clone(),
                    registration,
                };
                // A revocation published between `authenticate` and `register` did not see this
                // socket; the denylist did record it.
                if self.sessions.denylist.contains(&user.session_id) {
                    return logout_from_denylist(&self.sessions, &user.session_id);
                }
            }
        }
        // Close at `exp` (our clock) unless a newer token arrives first.
        let left_ms = (exp * 1000 - self.sessions.clock.now_ms()).max(0) as u64;
        deadline.reset(Instant::now() + Duration::from_millis(left_ms));
        let ready = ServerMessage::Ready {
            user_id: &user.user_id,
            session_id: &user.session_id,
            expires_at: rfc3339(exp * 1000),
        }
        .to_json();
        if self.send(Message::Text(ready.into())).await {
            Step::Continue
        } else {
            Step::Drop
        }
    }

    /// Writes one message unless the socket is killed or the write stalls; false if it failed.
    async fn send(&mut self, msg: Message) -> bool {
        tokio::select! {
            _ = self.kill.cancelled() => false,
            r = tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(msg)) => matches!(r, Ok(Ok(()))),
        }
    }

    /// Sends a close frame, then reads (and discards) what the client still sends until its own
    /// close frame, for at most [`CLOSE_DRAIN`]: closing the TCP connection with unread input
    /// makes the kernel send a reset, and the client would lose our close frame (and its code).
    async fn close_with(&mut self, code: u16, why: &'static str) {
        if !self.send(Message::Close(Some(CloseFrame { code, reason: why.into() }))).await {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_DRAIN, async {
            while let Some(Ok(msg)) = self.ws.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

async fn next_event(auth: &mut Auth) -> Option<HubEvent> {
    match auth {
        Auth::Authenticated { registration, .. } => Some(registration.mailbox.recv().await),
        Auth::Pending { .. } => std::future::pending().await,
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

fn logout_from_denylist(sessions: &Sessions, session_id: &str) -> Step {
    match sessions.denylist.get(session_id) {
        Some(ended) => Step::Logout {
            frame: logout_frame(&ended.reason, session_id, ended.at),
            reason: ended.reason.clone(),
            published: None,
        },
        None => Step::Close(close::UNAUTHENTICATED, "invalid or expired token"),
    }
}

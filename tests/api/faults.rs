//! Faults and races (SECURITY.md R6, F9, W8, P4), on both backends: a database fault in the
//! middle of a refresh rotation, an admin revocation racing a refresh, a WebSocket reader that
//! stops reading, and a flood of logins with long passwords.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiond::state::AppState;
use sessiond::store::failpoint;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::helpers::*;

// ---- R6 ----

#[tokio::test]
async fn r6_a_fault_between_marking_and_inserting_rolls_the_rotation_back_with_503() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let store = &app.state.store;
    assert_eq!(store.refresh_token_counts(&t.session_id).await.unwrap(), (1, 0));

    // The fault hits after the UPDATE that marks the presented token rotated, before the INSERT
    // of its successor, every time while armed.
    store.arm_failpoint(failpoint::ROTATE_AFTER_MARK);
    for _ in 0..2 {
        let r = app.refresh(&t.refresh).await;
        // 503, not 401: the client keeps its tokens and retries instead of signing out.
        assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
        // Rolled back whole: the presented token is still the live one, and no successor row.
        assert_eq!(store.refresh_token_counts(&t.session_id).await.unwrap(), (1, 0));
    }
    store.disarm_failpoint(failpoint::ROTATE_AFTER_MARK);

    // The session is untouched: not revoked, not denylisted, its access token still works.
    assert!(store.session(&t.session_id).await.unwrap().unwrap().revoked_at.is_none());
    assert!(!app.state.sessions.denylist.contains(&t.session_id));
    assert_eq!(app.me(&t.access).await.status(), StatusCode::OK);

    // The retry with the same token is an ordinary rotation. (Had the UPDATE survived, the token
    // would be "rotated" with no live successor: a reuse, 401 and a revoked session.)
    let r = app.refresh(&t.refresh).await;
    assert_eq!(r.status(), StatusCode::OK);
    let next = Tokens::from(r.json::<Value>().await.unwrap());
    assert_eq!(next.session_id, t.session_id);
    assert_ne!(next.refresh, t.refresh);
    assert_eq!(store.refresh_token_counts(&t.session_id).await.unwrap(), (1, 1));
    assert_eq!(app.refresh(&next.refresh).await.status(), StatusCode::OK);
    assert_eq!(store.refresh_token_counts(&t.session_id).await.unwrap(), (1, 2));
}

// ---- F9 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f9_admin_revoke_racing_a_refresh_100_times_leaves_no_usable_token() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    // One user, a new session per round (100 registrations would hit the per-IP cap).
    let email = app.new_user().await;
    let store = &app.state.store;
    let started = Instant::now();
    let (mut refresh_first, mut revoke_first) = (0, 0);
    for round in 0..100 {
        let s = app.session_of(&email).await;
        let path = format!("/v1/admin/sessions/{}", s.session_id);
        // A few random yields on either side shift which request reaches the server first.
        let (a, b) = {
            let mut rng = rand::thread_rng();
            (rng.gen_range(0..4), rng.gen_range(0..4))
        };
        let revoke = async {
            for _ in 0..a {
                tokio::task::yield_now().await;
            }
            app.delete_auth(&path, &admin.access).await
        };
        let refresh = async {
            for _ in 0..b {
                tokio::task::yield_now().await;
            }
            app.refresh(&s.refresh).await
        };
        let (revoked, refreshed) = tokio::join!(revoke, refresh);
        assert_eq!(revoked.status(), StatusCode::NO_CONTENT, "round {round}");
        let successor = match refreshed.status() {
            StatusCode::OK => {
                refresh_first += 1;
                Some(Tokens::from(refreshed.json::<Value>().await.unwrap()))
            }
            StatusCode::UNAUTHORIZED => {
                revoke_first += 1;
                assert_problem(refreshed, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
                None
            }
            other => panic!("round {round}: refresh answered {other} (never 5xx)"),
        };

        // The invariant once both committed: the session is revoked (by the admin) and denylisted,
        // so none of its refresh tokens is usable. Revocations end the session row and leave the
        // token rows alone (they are refused through their session), so the one unrotated row
        // is still there: the original if the revocation came first, else the successor.
        let row = store.session(&s.session_id).await.unwrap().unwrap();
        assert!(row.revoked_at.is_some(), "round {round}: session not revoked");
        assert_eq!(row.revoked_reason.as_deref(), Some("admin_revoked"));
        assert!(app.state.sessions.denylist.contains(&s.session_id), "round {round}: not denylisted");
        let expected = if successor.is_some() { (1, 1) } else { (1, 0) };
        assert_eq!(store.refresh_token_counts(&s.session_id).await.unwrap(), expected, "round {round}");

        // And in behaviour: every token of the session is refused.
        assert_eq!(app.refresh(&s.refresh).await.status(), StatusCode::UNAUTHORIZED, "round {round}");
        if let Some(n) = successor {
            // The refresh won: its new refresh token is dead, and the denylist covers its new
            // access token (the revocation saw the extended access expiry).
            assert_eq!(app.refresh(&n.refresh).await.status(), StatusCode::UNAUTHORIZED, "round {round}");
            assert_problem(app.me(&n.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
        }
    }
    println!(
        "f9 ({:?}): 100 rounds in {:?}; refresh first {refresh_first}, revocation first {revoke_first}",
        crate::BACKEND,
        started.elapsed()
    );
}

// ---- W8 ----

/// An instance like [`spawn_app`]'s but listening on a socket with the smallest kernel send
/// buffer, which every accepted connection inherits (fixed, so Linux does not autotune it up
/// to megabytes): a socket whose reader stops reading backs up after a few KiB, which this
/// server's small messages (at most [`MAX_FRAMES_PER_PERIOD`] client frames per ping period)
/// could never fill otherwise. Everything else is the real server.
///
/// [`MAX_FRAMES_PER_PERIOD`]: sessiond::socket::MAX_FRAMES_PER_PERIOD
struct SmallSendBuffers {
    addr: SocketAddr,
    state: AppState,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
    _db: Option<crate::pg::TestDatabase>,
}

impl SmallSendBuffers {
    async fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&dir);
        let db = match crate::BACKEND {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let db = crate::pg::TestDatabase::create().await?;
                config.database_url = db.url.clone();
                Some(db)
            }
        };
        let state = sessiond::app::build_state(config, sessiond::clock::Clock::system()).await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        // The kernel doubles it and applies its minimum (about 4.5 KiB).
        socket.set_send_buffer_size(1).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(async move {
            sessiond::app::serve(listener, st, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let app = SmallSendBuffers { addr, state, client, stop: Some(tx), _dir: dir, _db: db };
        if crate::BACKEND == Backend::Postgres {
            // As `spawn_app` does: bounded polling of /readyz until the listener has synced.
            let deadline = Instant::now() + Duration::from_secs(15);
            while app.client.get(app.url("/readyz")).send().await.unwrap().status() != StatusCode::OK {
                assert!(Instant::now() < deadline, "instance never became ready");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Some(app)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A fresh user (an admin if `admin`) with one session: (access token, session id).
    async fn new_session(&self, admin: bool) -> (String, String) {
        let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
        self.state
            .accounts
            .register(&email, PASSWORD.into(), admin, &Default::default(), sessiond::accounts::Via::Api)
            .await
            .unwrap();
        let body = json!({ "email": email, "password": PASSWORD });
        let r = self.client.post(self.url("/v1/auth/login")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let t: Value = r.json().await.unwrap();
        (t["access_token"].as_str().unwrap().into(), t["session_id"].as_str().unwrap().into())
    }

    /// A socket over a client TCP socket with the smallest receive buffer, after `ready`.
    async fn open(&self, access: &str) -> WebSocketStream<TcpStream> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1).unwrap();
        let tcp = socket.connect(self.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/v1/ws", self.addr), tcp).await.unwrap();
        ws.send(Message::Text(auth_message(access).into())).await.unwrap();
        let ready = next_text(&mut ws, WAIT).await;
        assert_eq!(ready["type"], "ready", "{ready}");
        ws
    }

    async fn revoke(&self, admin_access: &str, session_id: &str) -> StatusCode {
        let url = self.url(&format!("/v1/admin/sessions/{session_id}"));
        self.client.delete(url).bearer_auth(admin_access).send().await.unwrap().status()
    }
}

impl Drop for SmallSendBuffers {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Upper bound for any single awaited event.
const WAIT: Duration = Duration::from_secs(10);

fn auth_message(access: &str) -> String {
    json!({ "type": "auth", "access_token": access }).to_string()
}

/// The next text message as JSON (control frames skipped), within `within`.
async fn next_text(ws: &mut WebSocketStream<TcpStream>, within: Duration) -> Value {
    loop {
        match tokio::time::timeout(within, ws.next()).await.expect("timed out").expect("stream ended").unwrap() {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// `WRITE_TIMEOUT` of `src/hub/connection.rs`: a socket write that takes longer ends the socket.
const SERVER_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w8_a_reader_that_stops_reading_is_closed_without_delaying_others() {
    use sessiond::socket::MAX_FRAMES_PER_PERIOD;
    let Some(app) = SmallSendBuffers::start().await else { return };
    let admin = app.new_session(true).await.0;
    let (a_access, a_session) = app.new_session(false).await;
    let (b_access, b_session) = app.new_session(false).await;
    let mut b = app.open(&b_access).await;
    let a = app.open(&a_access).await;

    // A stops reading and sends re-`auth` messages, each answered with a ~150-byte `ready`: as
    // many as one ping period allows (its first `auth` was frame 1), written raw on A's TCP
    // stream (masked text frames; an all-zero mask is valid). Their answers are about twice what
    // the server's send buffer and A's receive window hold together, so one of the server's
    // writes to A blocks, and the server stops reading A.
    let frames = usize::from(MAX_FRAMES_PER_PERIOD) - 1;
    let flood = masked_text_frame(auth_message(&a_access).as_bytes()).repeat(frames);
    let tcp = a.get_ref();
    let mut written = 0;
    while written < flood.len() {
        tokio::time::timeout(WAIT, tcp.writable()).await.expect("A's input backed up").unwrap();
        match tcp.try_write(&flood[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("{e}"),
        }
    }
    // "Stuck in a write" has no event to await: wait (bounded) until the kernel shows the server
    // holding unread input from A that it has stopped reading. The check below (A's close time)
    // proves afterwards that A was stuck before B's revocation.
    wait_until_server_stops_reading(app.addr, tcp.local_addr().unwrap()).await;

    // Events for A and for B, A's first. Neither the revocations nor B's logout wait for A.
    let t0 = Instant::now();
    assert_eq!(app.revoke(&admin, &a_session).await, StatusCode::NO_CONTENT);
    let revoke_a = t0.elapsed();
    let b_revoked_at = Instant::now();
    assert_eq!(app.revoke(&admin, &b_session).await, StatusCode::NO_CONTENT);
    let ev = next_text(&mut b, Duration::from_secs(1)).await;
    let b_logout = b_revoked_at.elapsed();
    assert_eq!(ev["type"], "logout", "{ev}");
    assert_eq!(ev["session_id"], b_session.as_str());
    // A's task cannot take its logout: the socket is still registered, stuck in the write.
    assert!(app.state.hub.is_connected(&a_session), "A ended at once: its pipe never filled");

    // The stuck write times out and the server drops A and its registry entry.
    let mut count = app.state.hub.watch_count();
    let bound = SERVER_WRITE_TIMEOUT + Duration::from_secs(10);
    tokio::time::timeout(bound, count.wait_for(|n| *n == 0)).await.expect("A was never closed").unwrap();
    let a_closed = b_revoked_at.elapsed();
    assert!(!app.state.hub.is_connected(&a_session));
    // Closed by the write timeout, so its stuck write began before B's revocation: B's logout
    // went out while A was stuck.
    assert!(a_closed < SERVER_WRITE_TIMEOUT, "A closed {a_closed:?} after B's revocation: was it stuck before?");
    println!(
        "w8 ({:?}): revoke(A) answered in {revoke_a:?}, B's logout {b_logout:?} after its revocation, \
         stuck A dropped {a_closed:?} after it",
        crate::BACKEND
    );
    drop(a);
}

/// Waits (at most 5 s, polling `/proc/net/tcp` every 20 ms) until the server's end of the
/// connection from `client` has unread input that stays unread for 200 ms.
async fn wait_until_server_stops_reading(server: SocketAddr, client: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut last, mut stable) = (0, 0);
    loop {
        let unread = unread_input(server.port(), client.port());
        stable = if unread > 0 && unread == last { stable + 1 } else { 0 };
        last = unread;
        if stable >= 10 {
            return;
        }
        assert!(Instant::now() < deadline, "the server kept reading A (unread input: {unread} bytes)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `rx_queue` of the IPv4 TCP socket `local_port` → `remote_port` in `/proc/net/tcp`.
fn unread_input(local_port: u16, remote_port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if port(f[1]) == local_port && port(f[2]) == remote_port {
            return u64::from_str_radix(f[4].split(':').nth(1).unwrap(), 16).unwrap();
        }
    }
    panic!("no socket {local_port} → {remote_port} in /proc/net/tcp");
}

/// A client text frame (masked with an all-zero key) carrying `payload` (< 64 KiB).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

// ---- P4 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p4_200_logins_with_long_passwords_keep_healthz_fast() {
    // The logins come from 200 addresses (X-Forwarded-For behind a trusted proxy): from one
    // address all but a few would be shed by its share of the hash queue (RT12), and the point
    // here is the whole queue under load.
    let Some(app) = spawn_app_with(|c| c.trusted_proxies = "127.0.0.1".parse().unwrap()).await else { return };
    // The longest password accepted: 1024 characters.
    let long: String = (0..1024).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let email = format!("long-{}@example.com", uuid::Uuid::new_v4().simple());
    assert_eq!(app.register(&email, &long).await.status(), StatusCode::CREATED);
    // 1 MiB passwords: refused by the body limit before any hashing.
    let huge = json!({ "email": email, "password": "x".repeat(1 << 20) }).to_string();

    // /healthz latency, sequentially on its own connection, before and during the flood.
    async fn healthz(client: &reqwest::Client, url: &str) -> Duration {
        let t = Instant::now();
        let r = client.get(url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.bytes().await.unwrap();
        t.elapsed()
    }
    let health_client = reqwest::Client::builder().no_proxy().build().unwrap();
    let health_url = app.url("/healthz");
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(healthz(&health_client, &health_url).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut busy = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                busy.push(healthz(&health_client, &health_url).await);
            }
            busy
        }
    });

    let started = Instant::now();
    let (app, email, long) = (&app, &email, &long);
    let logins = (0..200).map(|i| async move {
        let r = app
            .client
            .post(app.url("/v1/auth/login"))
            .header("x-forwarded-for", format!("10.0.{}.{}", i / 250, i % 250 + 1))
            .json(&json!({ "email": email, "password": long }))
            .send()
            .await
            .unwrap();
        let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        (r.status(), retry_after)
    });
    let oversized = (0..10).map(|_| async {
        let t = Instant::now();
        let r = app
            .client
            .post(app.url("/v1/auth/login"))
            .header("content-type", "application/json")
            .body(huge.clone())
            .send()
            .await
            .unwrap();
        (r.status(), t.elapsed())
    });
    let (logins, oversized) = tokio::join!(futures::future::join_all(logins), futures::future::join_all(oversized));
    let flood = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let busy = sampler.await.unwrap();

    let count = |s: StatusCode| logins.iter().filter(|(st, _)| *st == s).count();
    let (ok, refused, shed) =
        (count(StatusCode::OK), count(StatusCode::UNAUTHORIZED), count(StatusCode::TOO_MANY_REQUESTS));
    for (status, retry_after) in &logins {
        assert!(
            matches!(status.as_u16(), 200 | 401 | 429),
            "a login answered {status} (only 200, 401 or 429 are allowed, never 5xx)"
        );
        if *status == StatusCode::TOO_MANY_REQUESTS {
            assert!(matches!(retry_after, Some(1..=60)), "429 without a valid Retry-After: {retry_after:?}");
        }
    }
    assert!(ok > 0, "no login got through the hashing queue");
    let slowest_413 = oversized.iter().map(|(_, t)| *t).max().unwrap();
    for (status, _) in &oversized {
        assert_eq!(*status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    let (idle50, idle99) = (percentile(&idle, 50), percentile(&idle, 99));
    let (p50, p99, max) = (percentile(&busy, 50), percentile(&busy, 99), percentile(&busy, 100));
    println!(
        "p4 ({:?}): 200 logins in {flood:?}: {ok}× 200, {refused}× 401, {shed}× 429; 10× 1 MiB → 413, slowest {slowest_413:?}; \
         /healthz idle p50 {idle50:?} p99 {idle99:?}; during the flood ({} samples) p50 {p50:?} p99 {p99:?} max {max:?}",
        crate::BACKEND,
        busy.len()
    );
    assert!(busy.len() >= 20, "too few /healthz samples during the flood: {}", busy.len());
    assert!(p99 < HEALTHZ_P99_BOUND, "/healthz p99 {p99:?} during the login flood (bound {HEALTHZ_P99_BOUND:?})");
    assert!(slowest_413 < OVERSIZED_BOUND, "a 1 MiB body took {slowest_413:?} to be refused");
}

/// Measured in the debug build on 2 shared cores, both backends: /healthz p99 21–42 ms during
/// the flood (about 1 ms idle; max ≤ 205 ms), so about 6× the worst p99 seen.
const HEALTHZ_P99_BOUND: Duration = Duration::from_millis(250);
/// The slowest 413 for a 1 MiB body took 190–490 ms during the flood.
const OVERSIZED_BOUND: Duration = Duration::from_secs(2);

/// The `p`th percentile (nearest rank) of `samples`.
fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    let rank = (p * s.len()).div_ceil(100).max(1);
    s[rank - 1]
}

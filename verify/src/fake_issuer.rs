//! A stand-in for sessiond in the crate's own tests, on 127.0.0.1:0: the JWKS (docs/API.md §7) and
//! the revocation stream (docs/API.md §9), written from the contract, with knobs to break them.
//!
//! The stream follows §9: authenticated with `Authorization: Bearer sk_…` (401 `invalid_token`
//! for a wrong key, 403 `forbidden` for one without the scope); without `Last-Event-ID` (or
//! `?after=`; the header wins) the snapshot of every revocation whose `until` is in the future,
//! then `synced` (`id:` and `{"next"}` carry the cursor), then live entries; with a cursor, the
//! entries after it, then `synced`, then live ones; an unknown cursor is 400
//! `invalid_request`; a comment line as keep-alive. Cursors are "1", "2", … (the log index).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::testkit::TestKey;

/// The service credential the fake accepts; [`NO_SCOPE_KEY`] is valid but lacks the scope.
pub const SERVICE_KEY: &str = "sk_test_revocations";
pub const NO_SCOPE_KEY: &str = "sk_test_no_scope";

/// One committed revocation.
#[derive(Clone)]
struct Entry {
    session_id: String,
    until_secs: i64,
}

#[derive(Default)]
struct Jwks {
    /// `None`: answer 500.
    body: Option<String>,
    cache_control: Option<String>,
}

pub struct Shared {
    jwks: Mutex<Jwks>,
    pub jwks_fetches: AtomicUsize,
    entries: Mutex<Vec<Entry>>,
    /// Bumped on every new entry and on every knob change: open streams look again.
    tick: watch::Sender<u64>,
    /// Bumped to drop every open stream (a disconnect).
    kill: watch::Sender<u64>,
    /// `Last-Event-ID` (or `after`) of every stream request, in order.
    requests: Mutex<Vec<Option<String>>>,
    requests_seen: watch::Sender<usize>,
    keepalive: Mutex<Option<Duration>>,
    accepted_key: Mutex<String>,
    /// Answer stream requests with this status instead.
    forced_status: Mutex<Option<StatusCode>>,
}

/// The running fake; stops when dropped.
pub struct FakeIssuer {
    pub url: String,
    pub shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeIssuer {
    /// Serves `keys` in the JWKS (no `Cache-Control`), an empty revocation log, and a
    /// keep-alive every second.
    pub async fn start(keys: &[&TestKey]) -> Self {
        let shared = Arc::new(Shared {
            jwks: Mutex::default(),
            jwks_fetches: AtomicUsize::new(0),
            entries: Mutex::default(),
            tick: watch::Sender::new(0),
            kill: watch::Sender::new(0),
            requests: Mutex::default(),
            requests_seen: watch::Sender::new(0),
            keepalive: Mutex::new(Some(Duration::from_secs(1))),
            accepted_key: Mutex::new(SERVICE_KEY.into()),
            forced_status: Mutex::default(),
        });
        let app = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/v1/revocations/stream", get(stream))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let fake = FakeIssuer { url, shared, task };
        fake.set_jwks(keys, None);
        fake
    }

    pub fn set_jwks(&self, keys: &[&TestKey], cache_control: Option<&str>) {
        let body = json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string();
        *self.shared.jwks.lock().unwrap() = Jwks { body: Some(body), cache_control: cache_control.map(str::to_owned) };
    }

    /// The JWKS answers 500 from now on.
    pub fn break_jwks(&self) {
        self.shared.jwks.lock().unwrap().body = None;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Commits a revocation of `session_id`, live until `until_secs`; returns its cursor.
    pub fn revoke(&self, session_id: &str, until_secs: i64) -> String {
        let cursor = {
            let mut entries = self.shared.entries.lock().unwrap();
            entries.push(Entry { session_id: session_id.into(), until_secs });
            entries.len().to_string()
        };
        self.shared.tick.send_modify(|n| *n += 1);
        cursor
    }

    /// Forgets every entry after the first `n`, as a database restored from an older backup:
    /// later cursors become unknown.
    pub fn restore_backup(&self, n: usize) {
        self.shared.entries.lock().unwrap().truncate(n);
    }

    /// Drops every open stream.
    pub fn disconnect(&self) {
        self.shared.kill.send_modify(|n| *n += 1);
    }

    /// `None`: streams stay silent, not even keep-alives.
    pub fn set_keepalive(&self, every: Option<Duration>) {
        *self.shared.keepalive.lock().unwrap() = every;
        self.shared.tick.send_modify(|n| *n += 1);
    }

    pub fn set_accepted_key(&self, key: &str) {
        *self.shared.accepted_key.lock().unwrap() = key.into();
    }

    pub fn force_status(&self, status: Option<StatusCode>) {
        *self.shared.forced_status.lock().unwrap() = status;
    }

    /// `Last-Event-ID` of every stream request so far.
    pub fn stream_requests(&self) -> Vec<Option<String>> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits (at most 5 s) until `n` stream requests have arrived.
    pub async fn wait_for_stream_requests(&self, n: usize) -> Vec<Option<String>> {
        let mut seen = self.shared.requests_seen.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(5), seen.wait_for(|&c| c >= n)).await;
        assert!(waited.is_ok(), "expected {n} stream requests, got {:?}", self.stream_requests());
        self.stream_requests()
    }
}

/// sessiond's problem+json body.
fn problem(status: StatusCode, code: &str, detail: &str) -> Response {
    let body = json!({"type": format!("urn:sessiond:problem:{code}"), "title": status.canonical_reason(),
                      "status": status.as_u16(), "detail": detail, "code": code});
    (status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let jwks = shared.jwks.lock().unwrap();
    let Some(body) = jwks.body.clone() else {
        return problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "An internal error occurred.");
    };
    let mut res = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(cc) = &jwks.cache_control {
        res.headers_mut().insert(header::CACHE_CONTROL, cc.parse().unwrap());
    }
    res
}

fn rfc3339(secs: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)).to_string()
}

/// One `revocation` event (§9).
fn revocation_event(cursor: usize, e: &Entry) -> String {
    let data = json!({"cursor": cursor.to_string(), "session_id": e.session_id, "user_id": "u1",
                      "reason": "logout", "at": rfc3339(e.until_secs - 330), "until": rfc3339(e.until_secs)});
    format!("event: revocation\nid: {cursor}\ndata: {data}\n\n")
}

async fn stream(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let header_cursor = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let cursor = header_cursor.or_else(|| query.get("after").cloned());
    shared.requests.lock().unwrap().push(cursor.clone());
    shared.requests_seen.send_modify(|n| *n += 1);

    let expected = format!("Bearer {}", shared.accepted_key.lock().unwrap());
    match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(a) if a == expected => {}
        Some(a) if a == format!("Bearer {NO_SCOPE_KEY}") => {
            return problem(StatusCode::FORBIDDEN, "forbidden", "You are not allowed to do this.")
        }
        _ => {
            let mut res = problem(StatusCode::UNAUTHORIZED, "invalid_token", "The access token is not valid.");
            res.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"".parse().unwrap());
            return res;
        }
    }
    if let Some(status) = *shared.forced_status.lock().unwrap() {
        return problem(status, "unavailable", "A dependency is unavailable; retry shortly.");
    }
    let after = match &cursor {
        None => None,
        Some(c) => match c.parse::<usize>() {
            Ok(n) if n <= shared.entries.lock().unwrap().len() => Some(n),
            _ => return problem(StatusCode::BAD_REQUEST, "invalid_request", "The cursor is not valid."),
        },
    };

    let (tx, rx) = mpsc::channel::<String>(16);
    let mut tick = shared.tick.subscribe();
    let mut kill = shared.kill.subscribe();
    tokio::spawn(async move {
        let now = crate::testkit::now_secs();
        let mut sent = {
            let entries = shared.entries.lock().unwrap().clone();
            let start = after.unwrap_or(0);
            let mut first = String::new();
            for (i, e) in entries.iter().enumerate().skip(start) {
                // A snapshot holds only what is still in force; a resume gets every entry.
                if after.is_some() || e.until_secs > now {
                    first.push_str(&revocation_event(i + 1, e));
                }
            }
            let next = entries.len();
            first.push_str(&format!("event: synced\nid: {next}\ndata: {}\n\n", json!({"next": next.to_string()})));
            if tx.send(first).await.is_err() {
                return;
            }
            next
        };
        loop {
            let keepalive = *shared.keepalive.lock().unwrap();
            let pause = keepalive.unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = kill.changed() => return,
                _ = tick.changed() => {
                    let entries = shared.entries.lock().unwrap().clone();
                    let mut text = String::new();
                    for (i, e) in entries.iter().enumerate().skip(sent) {
                        text.push_str(&revocation_event(i + 1, e));
                    }
                    sent = sent.max(entries.len());
                    if !text.is_empty() && tx.send(text).await.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(pause) => {
                    if keepalive.is_some() && tx.send(": keep-alive\n\n".into()).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|text| (Ok::<_, Infallible>(Bytes::from(text)), rx))
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(body))
        .into_response()
}

//! A scripted RFC 8935 push receiver for the SSF tests: a real HTTP server on 127.0.0.1 that
//! records every `POST /events` and answers from a script.
//!
//! Tests wait on what arrives (a channel), never on sleeps: [`Receiver::next`] returns the next
//! POST or `None` after a timeout, [`Receiver::expect_none`] asserts a quiet window. Answers are
//! queued with [`Receiver::answer_next`] and used one per POST, in order; with none queued the
//! receiver answers 202 with an empty body (RFC 8935 §2.2).
//!
//! For the crash test the receiver can be down first: [`Receiver::reserve_port`] picks a port and
//! [`Receiver::url_for`] names the endpoint the stream is created with, and
//! [`Receiver::start_on`] brings the receiver up on that port later.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The path the receiver accepts SETs on.
pub const EVENTS_PATH: &str = "/events";

/// One POST as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the request's body had been read.
    pub at: Instant,
    pub content_type: Option<String>,
    /// The `Authorization` header as sent (compare it byte for byte; never print it).
    pub authorization: Option<String>,
    pub accept: Option<String>,
    /// Every header of the request.
    pub headers: HeaderMap,
    /// The body as sent: one compact SET when the transmitter is right.
    pub body: String,
    /// The status the receiver answered this POST with.
    pub answered: u16,
}

impl Received {
    /// The SET's claims, decoded without verifying anything (see `ssf_c0` for that).
    pub fn try_claims(&self) -> Result<Value, String> {
        decode_part(&self.body, 1)
    }

    /// The SET's claims; panics when the body is not a compact JWS with a JSON payload.
    pub fn claims(&self) -> Value {
        self.try_claims().unwrap_or_else(|e| panic!("the pushed body is not a SET: {e}"))
    }

    /// The SET's JOSE header (`typ`, `alg`, `kid`), decoded without verifying.
    pub fn header(&self) -> Value {
        decode_part(&self.body, 0).unwrap_or_else(|e| panic!("the pushed body is not a SET: {e}"))
    }

    /// The only key of `events`; panics unless there is exactly one.
    pub fn event_type(&self) -> String {
        let claims = self.claims();
        let events = claims["events"].as_object().unwrap_or_else(|| panic!("no events object in {claims}"));
        match events.keys().collect::<Vec<_>>().as_slice() {
            [only] => only.to_string(),
            keys => panic!("expected exactly one event, got {keys:?}"),
        }
    }

    /// The payload of the only event.
    pub fn event(&self) -> Value {
        self.claims()["events"][self.event_type()].clone()
    }

    pub fn jti(&self) -> String {
        self.claims()["jti"].as_str().unwrap_or_else(|| panic!("no string jti in the SET")).to_string()
    }

    /// Any request header, as a string.
    pub fn http_header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Part `index` of a compact JWS, base64url-decoded and parsed as JSON.
fn decode_part(compact: &str, index: usize) -> Result<Value, String> {
    let parts: Vec<&str> = compact.trim().split('.').collect();
    if parts.len() != 3 {
        return Err(format!("{} dot-separated parts, expected 3", parts.len()));
    }
    let bytes = URL_SAFE_NO_PAD.decode(parts[index]).map_err(|e| format!("part {index} is not base64url: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("part {index} is not JSON: {e}"))
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// Wait this long before answering (after the POST is recorded): a slow receiver, for the
    /// transmitter's timeouts.
    pub delay: Option<Duration>,
}

impl Scripted {
    /// `status` with `body`; a body that parses as JSON is sent as `application/json`.
    pub fn new(status: u16, body: &str) -> Scripted {
        Scripted { status, body: body.to_string(), headers: Vec::new(), delay: None }
    }

    /// Adds a response header (e.g. `Retry-After`).
    pub fn header(mut self, name: &str, value: &str) -> Scripted {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Scripted {
        self.delay = Some(delay);
        self
    }

    fn respond(self) -> Response {
        let status =
            StatusCode::from_u16(self.status).unwrap_or_else(|_| panic!("bad scripted status {}", self.status));
        let mut response = (status, self.body.clone()).into_response();
        let headers = response.headers_mut();
        headers.remove(axum::http::header::CONTENT_TYPE);
        if serde_json::from_str::<Value>(&self.body).is_ok() {
            headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in &self.headers {
            let name = HeaderName::try_from(name.as_str()).expect("a valid scripted header name");
            headers.insert(name, HeaderValue::try_from(value.as_str()).expect("a valid scripted header value"));
        }
        response
    }
}

struct Shared {
    script: Mutex<VecDeque<Scripted>>,
    all: Mutex<Vec<Received>>,
    arrivals: mpsc::UnboundedSender<Received>,
}

/// The running receiver. Dropping it stops the server (without waiting); [`Receiver::stop`]
/// waits until the port is closed.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    /// A receiver on a free port of 127.0.0.1.
    pub async fn start() -> Receiver {
        Receiver::start_on(0).await
    }

    /// A receiver on 127.0.0.1:`port` (0 = any free port); panics if the port is taken.
    pub async fn start_on(port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("the SSF test receiver cannot bind 127.0.0.1:{port}: {e}"));
        let addr = listener.local_addr().expect("a bound address");
        let (tx, rx) = mpsc::unbounded_channel();
        let shared =
            Arc::new(Shared { script: Mutex::new(VecDeque::new()), all: Mutex::new(Vec::new()), arrivals: tx });
        let app = Router::new().route(EVENTS_PATH, post(receive)).with_state(shared.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver { addr, shared, arrivals: tokio::sync::Mutex::new(rx), shutdown: Some(shutdown), task: Some(task) }
    }

    /// A port that was free a moment ago, for a receiver started later with [`Receiver::start_on`].
    pub fn reserve_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
    }

    /// The push endpoint of a receiver on `port`: `http://127.0.0.1:PORT/events`.
    pub fn url_for(port: u16) -> String {
        format!("http://127.0.0.1:{port}{EVENTS_PATH}")
    }

    /// This receiver's push endpoint.
    pub fn url(&self) -> String {
        Receiver::url_for(self.addr.port())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Queues the answer to the next unanswered POST (after any already queued).
    pub fn answer_next(&self, status: u16, body: &str) {
        self.answer_next_with(Scripted::new(status, body));
    }

    pub fn answer_next_with(&self, answer: Scripted) {
        self.shared.script.lock().unwrap().push_back(answer);
    }

    /// How many scripted answers are still unused.
    pub fn answers_left(&self) -> usize {
        self.shared.script.lock().unwrap().len()
    }

    /// The next POST not yet returned by `next`, waiting up to `timeout` for it.
    pub async fn next(&self, timeout: Duration) -> Option<Received> {
        let mut arrivals = self.arrivals.lock().await;
        tokio::time::timeout(timeout, arrivals.recv()).await.ok().flatten()
    }

    /// The next `n` POSTs, all within `timeout` from now; panics with what did arrive otherwise.
    pub async fn next_n(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.next(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
                Some(r) => got.push(r),
                None => panic!(
                    "expected {n} POSTs within {timeout:?}, got {}: {:?}",
                    got.len(),
                    got.iter().map(describe).collect::<Vec<_>>()
                ),
            }
        }
        got
    }

    /// Asserts that no POST arrives during `window` (from now; earlier ones not yet taken with
    /// `next` count too).
    pub async fn expect_none(&self, window: Duration) {
        if let Some(r) = self.next(window).await {
            panic!("expected no POST for {window:?}, got {}", describe(&r));
        }
    }

    /// How many POSTs have arrived in all (taken with `next` or not).
    pub fn count(&self) -> usize {
        self.shared.all.lock().unwrap().len()
    }

    /// Every POST so far, in arrival order.
    pub fn all(&self) -> Vec<Received> {
        self.shared.all.lock().unwrap().clone()
    }

    /// Stops the server and waits until it has closed its port and connections (a request held
    /// by a scripted delay is answered first).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A POST for an assertion message: its event type and jti when it is a SET (no headers: the
/// Authorization header is a secret).
fn describe(r: &Received) -> String {
    match r.try_claims() {
        Ok(c) => format!(
            "SET jti={} events={:?} (answered {})",
            c["jti"],
            c["events"].as_object().map(|e| e.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
            r.answered
        ),
        Err(e) => format!("a body that is not a SET ({e}), {} bytes (answered {})", r.body.len(), r.answered),
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = shared.script.lock().unwrap().pop_front().unwrap_or_else(|| Scripted::new(202, ""));
    let header =
        |name: axum::http::HeaderName| headers.get(&name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let received = Received {
        at: Instant::now(),
        content_type: header(axum::http::header::CONTENT_TYPE),
        authorization: header(axum::http::header::AUTHORIZATION),
        accept: header(axum::http::header::ACCEPT),
        headers: headers.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        answered: answer.status,
    };
    shared.all.lock().unwrap().push(received.clone());
    let _ = shared.arrivals.send(received);
    if let Some(delay) = answer.delay {
        tokio::time::sleep(delay).await;
    }
    answer.respond()
}

/// The receiver against a client on real sockets: recording, the script, the waits, and a
/// start on a chosen port after the endpoint was already known.
mod self_test {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "Bearer rx-7f3a";

    /// A compact JWS-shaped string (the signature is not checked here).
    fn compact(header: &Value, claims: &Value) -> String {
        format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    fn set(jti: &str) -> String {
        compact(
            &json!({"typ": "secevent+jwt", "alg": "RS256", "kid": "k1"}),
            &json!({"jti": jti, "sub_id": {"format": "opaque", "id": "st_1"},
                    "events": {"https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": "S"}}}),
        )
    }

    async fn push(client: &reqwest::Client, url: &str, body: &str, auth: Option<&str>) -> (u16, String) {
        let mut req = client
            .post(url)
            .header("content-type", "application/secevent+jwt")
            .header("accept", "application/json")
            .body(body.to_string());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.expect("the receiver answers");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    #[tokio::test]
    async fn records_pushes_and_answers_from_the_script() {
        let rx = Receiver::start().await;
        assert!(rx.url().starts_with("http://127.0.0.1:") && rx.url().ends_with("/events"));
        let client = reqwest::Client::new();
        rx.answer_next(500, "");
        rx.answer_next_with(Scripted::new(400, r#"{"err":"invalid_request","description":"x"}"#).header("x-a", "1"));
        assert_eq!(rx.answers_left(), 2);

        let before = Instant::now();
        assert_eq!(push(&client, &rx.url(), &set("a1"), Some(SECRET)).await, (500, String::new()));
        let resp = client.post(rx.url()).body(set("a2")).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(resp.json::<Value>().await.unwrap()["err"], "invalid_request");
        // The script is used up: the default answer.
        assert_eq!(push(&client, &rx.url(), &set("a3"), None).await, (202, String::new()));

        let first = rx.next(Duration::from_secs(5)).await.expect("the first POST");
        assert!(first.at >= before);
        assert_eq!(first.answered, 500);
        assert_eq!(first.content_type.as_deref(), Some("application/secevent+jwt"));
        assert_eq!(first.accept.as_deref(), Some("application/json"));
        assert_eq!(first.authorization.as_deref(), Some(SECRET));
        assert_eq!(first.http_header("authorization").as_deref(), Some(SECRET));
        assert_eq!(first.body, set("a1"));
        assert_eq!(first.jti(), "a1");
        assert_eq!(first.header()["typ"], "secevent+jwt");
        assert_eq!(first.event_type(), "https://schemas.openid.net/secevent/ssf/event-type/verification");
        assert_eq!(first.event(), json!({"state": "S"}));
        let rest = rx.next_n(2, Duration::from_secs(5)).await;
        assert_eq!(rest[0].answered, 400);
        assert_eq!(rest[0].authorization, None);
        assert_eq!((rest[1].jti().as_str(), rest[1].answered), ("a3", 202));
        assert!(rest[0].at <= rest[1].at);
        assert_eq!(rx.count(), 3);
        assert_eq!(rx.all().iter().map(Received::jti).collect::<Vec<_>>(), ["a1", "a2", "a3"]);
        rx.expect_none(Duration::from_millis(200)).await;
        // Other paths and methods are not the endpoint, and are not recorded.
        assert_eq!(client.post(rx.url().replace("/events", "/other")).send().await.unwrap().status(), 404);
        assert_eq!(client.get(rx.url()).send().await.unwrap().status(), 405);
        assert_eq!(rx.count(), 3);
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_set_is_recorded_as_is() {
        let rx = Receiver::start().await;
        let (status, _) = push(&reqwest::Client::new(), &rx.url(), "not a jwt", None).await;
        assert_eq!(status, 202);
        let got = rx.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.body, "not a jwt");
        assert!(got.try_claims().unwrap_err().contains("1 dot-separated parts"));
    }

    #[tokio::test]
    async fn expect_none_fails_when_a_post_arrives() {
        let rx = Arc::new(Receiver::start().await);
        let url = rx.url();
        let waiter = {
            let rx = rx.clone();
            tokio::spawn(async move { rx.expect_none(Duration::from_secs(10)).await })
        };
        push(&reqwest::Client::new(), &url, &set("b1"), None).await;
        let err = waiter.await.expect_err("expect_none panics");
        assert!(err.is_panic());
    }

    #[tokio::test]
    async fn next_times_out_when_nothing_comes() {
        let rx = Receiver::start().await;
        let started = Instant::now();
        assert!(rx.next(Duration::from_millis(100)).await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn starts_later_on_a_reserved_port() {
        let port = Receiver::reserve_port();
        let url = Receiver::url_for(port);
        let client = reqwest::Client::new();
        // Down: the transmitter's POST fails to connect.
        assert!(client.post(&url).body(set("c1")).send().await.is_err());
        let rx = Receiver::start_on(port).await;
        assert_eq!(rx.url(), url);
        push(&client, &url, &set("c2"), None).await;
        assert_eq!(rx.next(Duration::from_secs(5)).await.unwrap().jti(), "c2");
        // Stopped: the port is closed again, even for the client's pooled connection.
        rx.stop().await;
        assert!(client.post(&url).body(set("c3")).send().await.is_err());
    }

    #[tokio::test]
    async fn a_scripted_delay_holds_the_answer() {
        let rx = Receiver::start().await;
        rx.answer_next_with(Scripted::new(202, "").delay(Duration::from_millis(300)));
        let (status, _) = push(&reqwest::Client::new(), &rx.url(), &set("d1"), None).await;
        let answered_at = Instant::now();
        assert_eq!(status, 202);
        // Recorded on arrival, at least the delay before the answer came.
        let got = rx.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.jti(), "d1");
        assert!(answered_at.duration_since(got.at) >= Duration::from_millis(300));
    }
}

/// A push endpoint that accepts connections, reads what is sent and never answers (a
/// "tarpit"): every push to it lasts until the transmitter's own timeout. Connections are held
/// until the tarpit is dropped.
pub struct Tarpit {
    addr: SocketAddr,
    /// Requests that have started arriving (connections that sent bytes).
    requests: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Tarpit {
    pub async fn start() -> Tarpit {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("a free port");
        let addr = listener.local_addr().expect("a bound address");
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                let seen = seen.clone();
                held.push(tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 4096];
                    let mut counted = false;
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if !counted {
                            counted = true;
                            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    // Never answers; the connection stays open until the peer gives up.
                    std::future::pending::<()>().await;
                }));
            }
        });
        Tarpit { addr, requests, task }
    }

    /// The push endpoint: `http://127.0.0.1:PORT/events`.
    pub fn url(&self) -> String {
        Receiver::url_for(self.addr.port())
    }

    /// How many pushes have started arriving.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Tarpit {
    fn drop(&mut self) {
        self.task.abort();
    }
}

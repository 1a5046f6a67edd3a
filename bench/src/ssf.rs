//! `ssf` (issue 14): sessiond as a Shared Signals transmitter pushing SETs (RFC 8935) to a
//! receiver, here an axum server in this process on 127.0.0.1 answering 202 and recording when
//! each SET arrived and which session it names (`sub_id.session.id`, read from the payload
//! without verifying it: the conformance tests check the SETs, this measures their delivery).
//!
//! Per store (`--stores`), one server (`--ssf-allow-insecure-push`: loopback receivers):
//!
//! 0. control: `--revokes` logouts at `--rate`/s with no stream yet (no outbox rows are
//!    written), for the server CPU per logout without Shared Signals;
//! 1. `--streams` push streams are created, each by its own service credential (scope `ssf`)
//!    with its own receiver path, and verified (one verification SET each, untimed);
//! 2. latency: `--revokes` open-loop logouts at `--rate`/s, each of a fresh session of its own
//!    user; for each SET, the receiver's arrival minus the logout's response (docs/SSF.md
//!    §3.1: the first attempt ≤ 1 s after the revoking response, p99);
//! 3. throughput: one `POST /v1/admin/logout-everyone` over `--burst` live sessions (each of
//!    its own user: SETs about one user are pushed one at a time, §3.1 ordering) → SETs/s from
//!    the response to the last SET at the receiver. The dispatcher expands the whole outbox
//!    (signs and stores every SET) before it claims any push, so the first SET's arrival
//!    marks the end of signing: "signed and stored/s" is measured from the call to it, and
//!    "pushed/s" from it to the last. Right after the burst's response, one more session
//!    (made after the burst's commit) logs out: how long its SET waits behind the burst.
//!
//! Server CPU (user + system, /proc) is taken around phases 0, 2 and 3. Also, once: RS256
//! signing alone in this process (the same `SetKey` the server signs with).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::common::*;
use crate::scenarios::{open_loop_logouts, Db};
use crate::{Args, Store};

const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

/// One SET as the receiver got it.
#[derive(Clone, Debug)]
struct Arrival {
    /// The receiver path's index, i.e. the stream.
    stream: usize,
    /// `sub_id.session.id` (none on a verification SET).
    session: Option<String>,
    /// CLOCK_MONOTONIC ns when the request reached the handler.
    at: u64,
}

/// The push receiver's record: SETs in arrival order, each (stream, jti) once.
#[derive(Clone)]
struct Receiver(Arc<Log>);

struct Log {
    arrivals: Mutex<Vec<Arrival>>,
    seen: Mutex<HashSet<(usize, String)>>,
    /// Resent SETs (same stream and jti), which at-least-once delivery allows.
    duplicates: Mutex<usize>,
    count: watch::Sender<usize>,
}

impl Receiver {
    /// Serves `POST /rx/{stream}` on 127.0.0.1; returns the receiver and its base URL.
    async fn start() -> (Receiver, String) {
        let rx = Receiver(Arc::new(Log {
            arrivals: Mutex::default(),
            seen: Mutex::default(),
            duplicates: Mutex::new(0),
            count: watch::channel(0).0,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route("/rx/{stream}", axum::routing::post(receive)).with_state(rx.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (rx, base)
    }

    fn count(&self) -> usize {
        *self.0.count.borrow()
    }

    /// Waits until `n` distinct SETs have arrived, or `timeout`; whether they did.
    async fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        let mut changes = self.0.count.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if *changes.borrow_and_update() >= n {
                return true;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return false },
                _ = tokio::time::sleep_until(deadline) => return self.count() >= n,
            }
        }
    }

    fn since(&self, from: usize) -> Vec<Arrival> {
        self.0.arrivals.lock().unwrap()[from..].to_vec()
    }

    fn duplicates(&self) -> usize {
        *self.0.duplicates.lock().unwrap()
    }
}

/// RFC 8935 §2.2: 202 for a SET accepted. Records the arrival first.
async fn receive(State(rx): State<Receiver>, Path(stream): Path<usize>, body: Bytes) -> StatusCode {
    let at = mono_ns();
    let Some((jti, session)) = decode(&body) else { return StatusCode::BAD_REQUEST };
    if !rx.0.seen.lock().unwrap().insert((stream, jti)) {
        *rx.0.duplicates.lock().unwrap() += 1;
        return StatusCode::ACCEPTED;
    }
    let n = {
        let mut arrivals = rx.0.arrivals.lock().unwrap();
        arrivals.push(Arrival { stream, session, at });
        arrivals.len()
    };
    rx.0.count.send_replace(n);
    StatusCode::ACCEPTED
}

/// The `jti` and `sub_id.session.id` of a compact SET (payload only, unverified).
fn decode(body: &[u8]) -> Option<(String, Option<String>)> {
    let payload = std::str::from_utf8(body).ok()?.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let jti = claims["jti"].as_str()?.to_string();
    Some((jti, claims["sub_id"]["session"]["id"].as_str().map(String::from)))
}

pub async fn run(args: &Args) -> Vec<String> {
    let sign_us = sign_only(2000).await;
    let mut latency = vec![
        "| store | streams | SETs delivered | response → SET: p50 (ms) | p90 | p99 | max | request → SET: p99 | ≤ 1 s after the response | server CPU per logout, no stream (µs) | server CPU per SET (µs) |".into(),
        "|---|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    let mut burst = vec![
        "| store | streams | sessions ended | SETs delivered | response (ms) | first SET (ms after the call) | last SET | SETs/s, response → last SET | signed and stored/s, call → first SET | pushed/s, first → last SET | server CPU per SET (µs) | one more logout just after the response: its SET after (ms) |".into(),
        "|---|---|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    for &store in &args.stores {
        let (l, b) = one(args, store).await;
        latency.push(l);
        burst.push(b);
    }
    let mut out = vec![format!(
        "RS256 signing alone (2048-bit, aws-lc-rs, one thread of this process): {sign_us:.0} µs per SET = {:.0} SETs/s per core",
        1e6 / sign_us
    )];
    out.push(String::new());
    out.push(format!(
        "Latency: {} logouts at {}/s, each of a fresh session of its own user; every SET of every stream counted.",
        args.revokes(),
        args.rate()
    ));
    out.push(String::new());
    out.extend(latency);
    out.push(String::new());
    out.push(format!("Burst: one logout-everyone over {} live sessions, each of its own user.", args.burst));
    out.push(String::new());
    out.extend(burst);
    out
}

/// µs per RS256 signature of a session-revoked SET's claims, on one thread.
async fn sign_only(n: usize) -> f64 {
    tokio::task::spawn_blocking(move || {
        let key = sessiond::ssf::keys::SetKey::generate().unwrap();
        let claims = json!({
            "iss": ISSUER, "aud": "bench-ssf-0", "iat": 1767225601, "jti": uuid::Uuid::new_v4().simple().to_string(),
            "txn": format!("tx_{}", uuid::Uuid::new_v4().simple()),
            "sub_id": {"format": "complex", "user": {"format": "iss_sub", "iss": ISSUER, "sub": uuid::Uuid::now_v7().to_string()},
                       "session": {"format": "opaque", "id": uuid::Uuid::now_v7().to_string()}},
            "events": {SESSION_REVOKED: {"event_timestamp": 1767225600, "initiating_entity": "user",
                       "reason_admin": {"en": "logout"}, "reason_user": {"en": "You signed out."}}}
        });
        for _ in 0..50 {
            key.sign(&claims).unwrap();
        }
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(key.sign(std::hint::black_box(&claims)).unwrap());
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    })
    .await
    .unwrap()
}

/// `n` per second over `ns` nanoseconds.
fn per_s(n: usize, ns: u64) -> f64 {
    n as f64 / (ns.max(1) as f64 / 1e9)
}

/// Both measurements on one store: (latency row, burst row).
async fn one(args: &Args, store: Store) -> (String, String) {
    let postgres = store == Store::Postgres;
    let name = if postgres { "PostgreSQL" } else { "SQLite" };
    let dir = TempDir::new();
    let db = Db::new(args, &dir, postgres).await;
    let server = Server::start(&db.url, free_port(), &[("SESSIOND_SSF_ALLOW_INSECURE_PUSH", "true")]).await;
    let pid = server.child.id();
    let minter = Minter::new(&db.url, &server.base()).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let (rx, rx_base) = Receiver::start().await;

    // 0. Control: the same logouts with no stream (no outbox rows).
    let control = minter.mint_users(args.revokes()).await;
    let cpu0 = cpu_us(pid);
    open_loop_logouts(&server.base(), &control, args.rate()).await;
    let cpu_control = (cpu_us(pid) - cpu0) as f64 / control.len() as f64;
    eprintln!("{name}: control done, {cpu_control:.0} µs per logout");

    // 1. Streams, each verified once (which also warms the key and the push path).
    let now = sessiond::clock::Clock::system().now_ms();
    for i in 0..args.streams {
        let service: sessiond::service_credentials::ServiceName = format!("bench-ssf-{i}").parse().unwrap();
        let secret = sessiond::service_credentials::create(
            &minter.store,
            now,
            &service,
            &[sessiond::service_credentials::Scope::Ssf],
            &Default::default(),
        )
        .await
        .unwrap()
        .expect("a new credential");
        let body = json!({
            "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": format!("{rx_base}/rx/{i}")},
            "events_requested": [SESSION_REVOKED],
        });
        let r = client
            .post(format!("{}/ssf/stream", server.base()))
            .bearer_auth(secret.as_str())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "creating stream {i}");
        let created: Value = r.json().await.unwrap();
        let id = created["stream_id"].as_str().expect("stream_id").to_string();
        let r = client
            .post(format!("{}/ssf/verify", server.base()))
            .bearer_auth(secret.as_str())
            .json(&json!({ "stream_id": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204, "verifying stream {i}");
    }
    assert!(rx.wait_count(args.streams, Duration::from_secs(30)).await, "verification SETs did not arrive");

    // 2. Latency.
    let measured = minter.mint_users(args.revokes()).await;
    let index: HashMap<&str, usize> = measured.iter().enumerate().map(|(i, m)| (m.session_id.as_str(), i)).collect();
    let base = rx.count();
    let expected = measured.len() * args.streams;
    let cpu0 = cpu_us(pid);
    let times = open_loop_logouts(&server.base(), &measured, args.rate()).await;
    let all = rx.wait_count(base + expected, Duration::from_secs(30)).await;
    let cpu = cpu_us(pid) - cpu0;
    let arrivals = rx.since(base);
    let (mut from_resp, mut from_req, mut within) = (hist(), hist(), 0);
    for a in &arrivals {
        let Some(&i) = a.session.as_deref().and_then(|s| index.get(s)) else { continue };
        let (sent, resp) = times[i];
        let after = a.at.saturating_sub(resp);
        within += usize::from(after <= 1_000_000_000);
        from_resp.record(after / 1000).unwrap();
        from_req.record(a.at.saturating_sub(sent) / 1000).unwrap();
    }
    let q = |h: &hdrhistogram::Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let latency = format!(
        "| {name} | {} | {} of {expected}{} | {:.2} | {:.2} | **{:.2}** | {:.2} | {:.2} | {within} | {cpu_control:.0} | {:.0} |",
        args.streams,
        from_resp.len(),
        if all { "" } else { " (timed out)" },
        q(&from_resp, 0.5),
        q(&from_resp, 0.9),
        q(&from_resp, 0.99),
        from_resp.max() as f64 / 1000.0,
        q(&from_req, 0.99),
        cpu as f64 / arrivals.len().max(1) as f64,
    );
    eprintln!("{latency}");

    // 3. Burst.
    let burst = minter.mint_users(args.burst).await;
    let base = rx.count();
    let cpu0 = cpu_us(pid);
    let t0 = mono_ns();
    let r = minter.logout_everyone(&client, &server.base()).send().await.unwrap();
    let t_resp = mono_ns();
    assert_eq!(r.status().as_u16(), 200, "logout-everyone");
    let ended = r.json::<Value>().await.unwrap()["revoked_sessions"].as_u64().unwrap_or(0) as usize;
    assert!(ended > burst.len(), "every burst session (and the admin's) ended");
    // One more logout while the burst is being delivered (a session made after the burst's
    // commit): its SETs queue behind the burst's.
    let late = minter.mint_users(1).await.remove(0);
    let r = client.post(format!("{}/v1/auth/logout", server.base())).bearer_auth(&late.access).send().await.unwrap();
    let late_resp = mono_ns();
    assert_eq!(r.status().as_u16(), 204, "the late logout");
    let expected = ended * args.streams;
    let all = rx.wait_count(base + expected + args.streams, Duration::from_secs(300)).await;
    let cpu = cpu_us(pid) - cpu0;
    let (late_sets, arrivals): (Vec<Arrival>, Vec<Arrival>) =
        rx.since(base).into_iter().partition(|a| a.session.as_deref() == Some(late.session_id.as_str()));
    let late_ms = late_sets.iter().map(|a| a.at.saturating_sub(late_resp) as f64 / 1e6).fold(f64::NAN, f64::max);
    let first = arrivals.iter().map(|a| a.at).min().unwrap_or(t0);
    let last = arrivals.iter().map(|a| a.at).max().unwrap_or(t0);
    let ms = |t: u64| t.saturating_sub(t0) as f64 / 1e6;
    let per_stream: Vec<usize> = (0..args.streams).map(|s| arrivals.iter().filter(|a| a.stream == s).count()).collect();
    eprintln!("{name}: burst SETs per stream {per_stream:?}, duplicates so far {}", rx.duplicates());
    let burst_row = format!(
        "| {name} | {} | {ended} | {} of {expected}{} | {:.0} | {:.0} | {:.0} | **{:.0}** | {:.0} | {:.0} | {:.0} | {late_ms:.0} ({} of {}) |",
        args.streams,
        arrivals.len(),
        if all { "" } else { " (timed out)" },
        ms(t_resp),
        ms(first),
        ms(last),
        per_s(arrivals.len(), last.saturating_sub(t_resp)),
        per_s(expected, first.saturating_sub(t0)),
        per_s(arrivals.len().saturating_sub(1), last.saturating_sub(first)),
        cpu as f64 / arrivals.len().max(1) as f64,
        late_sets.len(),
        args.streams,
    );
    eprintln!("{burst_row}");
    drop(server);
    db.drop_db().await;
    (latency, burst_row)
}

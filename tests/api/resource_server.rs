//! The app's own APIs against the real sessiond (docs/API.md §12): a `sessiond_verify::Verifier`
//! follows this server's revocation feed (§9) and guards a small axum API on a real socket, both
//! with the [`Authenticated`] extractor and with [`Verifier::layer`], and the `notes` example
//! runs as the binary an operator would start.
//!
//! The resource server reaches sessiond only through a TCP [`Proxy`], so a test can cut the
//! feed (a network partition) and point it at a restarted server; sessiond's `--issuer` is the
//! proxy's address, as it would be the public address in front of sessiond.
//!
//! "Refused within 1 s" is measured from the revoking response to the first refusal at the
//! resource server, polled with short sleeps as a bounded retry.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiond::service_credentials::Scope;
use sessiond_verify::{Authenticated, Claims, Rejection, Verifier, VerifierBuilder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::answer::Answer;
use crate::helpers::*;
use crate::service::{credential, feed_reader};

/// A revocation must be refused by the resource server this soon after the revoking response.
const REFUSED_WITHIN: Duration = Duration::from_secs(1);
/// Bound on waiting for a follower to (re)connect and sync: its reconnect backoff is at most
/// 10 s (sessiond_verify's `BACKOFF_CAP`).
const SYNC_WITHIN: Duration = Duration::from_secs(20);
/// Between polls of a bounded retry.
const POLL: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------------------------
// The pieces: a proxy in front of sessiond, a resource server, and what they are asked.

/// Where the proxy forwards new connections (`None`: it closes them at once), and a generation
/// bumped to cut every open connection.
#[derive(Clone, Copy)]
struct Link {
    upstream: Option<SocketAddr>,
    generation: u64,
}

/// A TCP proxy on 127.0.0.1 in front of a sessiond instance.
struct Proxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let link = watch::Sender::new(Link { upstream: None, generation: 0 });
        let links = link.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                let now = *links.borrow();
                let Some(upstream) = now.upstream else { continue }; // closed at once: "down"
                let mut changes = links.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = changes.wait_for(|l| l.generation != now.generation) => {}
                    }
                });
            }
        });
        Proxy { addr, link, task }
    }

    /// `http://127.0.0.1:PORT`: sessiond's issuer, and where the resource server finds it.
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Forwards to `app` from now on (cutting what was open).
    fn connect(&self, app: &TestApp) {
        let upstream: SocketAddr = app.base.strip_prefix("http://").unwrap().parse().unwrap();
        self.link.send_modify(|l| {
            l.upstream = Some(upstream);
            l.generation += 1;
        });
    }

    /// Cuts every open connection and closes new ones at once, until [`Proxy::connect`].
    fn cut(&self) {
        self.link.send_modify(|l| {
            l.upstream = None;
            l.generation += 1;
        });
    }
}

/// sessiond on this binary's backend with `--issuer` the proxy's address, behind the proxy.
async fn sessiond_behind(proxy: &Proxy) -> Option<TestApp> {
    let issuer = proxy.url();
    let app = spawn_app_with(|c| c.issuer = issuer).await?;
    proxy.connect(&app);
    Some(app)
}

/// A verifier for the tokens of the sessiond behind `proxy`, following its feed through it.
fn verifier(proxy: &Proxy, service_key: &str) -> VerifierBuilder {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    Verifier::builder(proxy.url()).service_key(service_key).http_client(http)
}

/// A small API guarded by `verifier` on 127.0.0.1: `GET /notes` through the extractor,
/// `GET /layered/notes` behind the layer, `GET /readyz`.
struct ResourceServer {
    base: String,
    client: reqwest::Client,
    verifier: Verifier,
    task: JoinHandle<()>,
}

impl Drop for ResourceServer {
    fn drop(&mut self) {
        self.task.abort();
        self.verifier.shutdown();
    }
}

fn notes_of(claims: Claims) -> Json<Value> {
    Json(json!({ "user_id": claims.sub, "session_id": claims.sid, "notes": [] }))
}

impl ResourceServer {
    /// Starts `verifier` and serves the API; returns once the verifier is ready.
    async fn start(verifier: Verifier) -> ResourceServer {
        let rs = ResourceServer::serve(verifier).await;
        rs.wait_ready().await;
        rs
    }

    /// Starts `verifier` and serves the API at once.
    async fn serve(verifier: Verifier) -> ResourceServer {
        verifier.start();
        let layered = Router::new()
            .route("/layered/notes", get(|Extension(claims): Extension<Claims>| async move { notes_of(claims) }))
            .layer(verifier.layer());
        let app = Router::new()
            .route("/notes", get(|Authenticated(claims): Authenticated| async move { notes_of(claims) }))
            .route(
                "/readyz",
                get(|axum::extract::State(v): axum::extract::State<Verifier>| async move {
                    if v.is_ready() {
                        StatusCode::OK.into_response()
                    } else {
                        Rejection::Unavailable.into_response()
                    }
                }),
            )
            .with_state(verifier.clone())
            .merge(layered);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ResourceServer { base, client: reqwest::Client::builder().no_proxy().build().unwrap(), verifier, task }
    }

    /// Waits (bounded) until the verifier is ready: JWKS fetched and the feed synced.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + SYNC_WITHIN;
        while !self.verifier.is_ready() {
            assert!(Instant::now() < deadline, "the verifier never got ready: {:?}", self.verifier.status());
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (bounded) until the feed has synced on a connection opened after `since`
    /// (readiness alone does not say so when failing open).
    async fn wait_resynced(&self, since: Instant) {
        let deadline = Instant::now() + SYNC_WITHIN;
        loop {
            let s = self.verifier.status();
            if s.feed_connected && s.since_last_byte.is_some_and(|d| d < since.elapsed()) && self.verifier.is_ready() {
                return;
            }
            assert!(Instant::now() < deadline, "the feed never came back: {s:?}");
            tokio::time::sleep(POLL).await;
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Answer::read(req.send().await.unwrap()).await
    }

    /// Both protected routes accept `t` and name its user and session.
    async fn assert_accepts(&self, t: &Tokens) {
        for path in ["/notes", "/layered/notes"] {
            let r = self.get(path, Some(&t.access)).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
            let body: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body, json!({ "user_id": t.user_id, "session_id": t.session_id, "notes": [] }), "{path}");
        }
    }

    /// Polls both protected routes with `t` until each refuses it, failing if either still
    /// accepts it [`REFUSED_WITHIN`] after `since`; returns the refusals.
    async fn refused_within(&self, t: &Tokens, since: Instant) -> Vec<Answer> {
        let mut refusals = Vec::new();
        for path in ["/notes", "/layered/notes"] {
            loop {
                let r = self.get(path, Some(&t.access)).await;
                if r.status != StatusCode::OK {
                    refusals.push(r);
                    break;
                }
                assert!(
                    since.elapsed() < REFUSED_WITHIN,
                    "{path} still accepts the token {:?} after the revoking response",
                    since.elapsed()
                );
                tokio::time::sleep(POLL).await;
            }
        }
        refusals
    }
}

/// What sessiond itself answers on its model protected resource (`GET /v1/me`, §4) for `token`.
async fn sessiond_answer(app: &TestApp, token: Option<&str>) -> Answer {
    let mut req = app.client.get(app.url("/v1/me"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Answer::read(req.send().await.unwrap()).await
}

/// `refusals` are sessiond's own answer for `t` (status, problem body byte for byte,
/// `WWW-Authenticate`), which is 401 `session_revoked`.
async fn assert_revoked_like_sessiond(app: &TestApp, t: &Tokens, refusals: &[Answer]) {
    let own = sessiond_answer(app, Some(&t.access)).await;
    assert_eq!((own.status, own.code().as_str()), (StatusCode::UNAUTHORIZED, "session_revoked"));
    assert_eq!(own.content_type.as_deref(), Some("application/problem+json"));
    for r in refusals {
        assert_eq!(r, &own, "the resource server answers exactly as sessiond");
    }
}

async fn post_form(app: &TestApp, path: &str, body: String) -> reqwest::Response {
    let req = app.client.post(app.url(path)).header("content-type", "application/x-www-form-urlencoded");
    req.body(body).send().await.unwrap()
}

/// Waits (bounded) until `verifier` has received `n` revocation events in all.
async fn wait_received(verifier: &Verifier, n: u64) {
    let deadline = Instant::now() + SYNC_WITHIN;
    while verifier.status().revocations_received < n {
        assert!(Instant::now() < deadline, "expected {n} revocations: {:?}", verifier.status());
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The verifier crate in a resource server.

#[tokio::test]
async fn a_revoked_session_is_refused_by_the_resource_server_within_a_second_whichever_way_it_ended() {
    let proxy = Proxy::start().await;
    let Some(app) = sessiond_behind(&proxy).await else { return };
    let key = feed_reader(&app).await;
    let rs = ResourceServer::start(verifier(&proxy, &key).build().unwrap()).await;

    // No token, and a garbage one: sessiond's 401 invalid_token answers.
    for token in [None, Some("not-a-jwt")] {
        let own = sessiond_answer(&app, token).await;
        assert_eq!((own.status, own.code().as_str()), (StatusCode::UNAUTHORIZED, "invalid_token"));
        for path in ["/notes", "/layered/notes"] {
            assert_eq!(rs.get(path, token).await, own, "{path} with {token:?}");
        }
    }

    // POST /v1/auth/logout.
    let t = app.new_session().await;
    rs.assert_accepts(&t).await;
    let r = app.post_auth("/v1/auth/logout", &t.access, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let refusals = rs.refused_within(&t, Instant::now()).await;
    assert_revoked_like_sessiond(&app, &t, &refusals).await;

    // RFC 7009 with the access token, and with the refresh token (docs/API.md §10).
    for use_refresh in [false, true] {
        let t = app.new_session().await;
        rs.assert_accepts(&t).await;
        let token = if use_refresh { &t.refresh } else { &t.access };
        let r = post_form(&app, "/oauth2/revoke", format!("token={token}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let refusals = rs.refused_within(&t, Instant::now()).await;
        assert_revoked_like_sessiond(&app, &t, &refusals).await;
    }

    // An admin's logout-everyone: every session, the admin's own included.
    let (a, b, admin) = (app.new_session().await, app.new_session().await, app.new_admin().await);
    for t in [&a, &b, &admin] {
        rs.assert_accepts(t).await;
    }
    let r = app.post_auth("/v1/admin/logout-everyone", &admin.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let since = Instant::now();
    for t in [&a, &b, &admin] {
        let refusals = rs.refused_within(t, since).await;
        assert_revoked_like_sessiond(&app, t, &refusals).await;
    }

    // A session that has not ended still passes.
    rs.assert_accepts(&app.new_session().await).await;
    let status = rs.verifier.status();
    assert_eq!((status.feed_connects, status.snapshot_restarts), (1, 0), "one stream all along: {status:?}");
}

/// The feed's wire format as the crate reads it: the snapshot holds what was revoked before the
/// verifier started, and the cursor it resumes from is the `synced` id sessiond sent.
#[tokio::test]
async fn a_verifier_started_late_takes_the_snapshot_and_resumes_from_the_synced_cursor() {
    let proxy = Proxy::start().await;
    let Some(app) = sessiond_behind(&proxy).await else { return };
    let key = feed_reader(&app).await;
    let (old, live) = (app.new_session().await, app.new_session().await);
    assert_eq!(app.post_auth("/v1/auth/logout", &old.access, None).await.status(), StatusCode::NO_CONTENT);

    let rs = ResourceServer::start(verifier(&proxy, &key).build().unwrap()).await;
    let refusals = rs.refused_within(&old, Instant::now()).await;
    assert_revoked_like_sessiond(&app, &old, &refusals).await;
    rs.assert_accepts(&live).await;

    // The cursor is the snapshot's `next`, i.e. the feed's head.
    let page: Value = app.get_auth("/v1/revocations", &key).await.json().await.unwrap();
    assert_eq!(rs.verifier.cursor().as_deref(), page["next"].as_str());
    assert_eq!(rs.verifier.status().revocations_received, 1);
}

/// A follower cut off from sessiond (here by the network, and sessiond restarted meanwhile)
/// resumes with `Last-Event-ID` = its last cursor and receives exactly what was revoked while
/// it was away: nothing missed, no snapshot again.
#[tokio::test]
async fn a_follower_cut_off_resumes_from_its_last_cursor_and_misses_nothing() {
    let proxy = Proxy::start().await;
    let Some(app) = sessiond_behind(&proxy).await else { return };
    let key = feed_reader(&app).await;
    let before: Vec<Tokens> = vec![app.new_session().await, app.new_session().await];
    for t in &before {
        assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    }
    let rs = ResourceServer::start(verifier(&proxy, &key).build().unwrap()).await;
    assert_eq!(rs.verifier.status().revocations_received, 2, "the snapshot");
    let during: Vec<Tokens> = vec![app.new_session().await, app.new_session().await, app.new_session().await];
    let survivor = app.new_session().await;
    for t in during.iter().chain([&survivor]) {
        rs.assert_accepts(t).await;
    }

    proxy.cut();
    // Revoked while the follower is away, before and after a restart of sessiond.
    for t in &during[..2] {
        assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    }
    let app = app.restart().await;
    let r = post_form(&app, "/oauth2/revoke", format!("token={}", during[2].refresh)).await;
    assert_eq!(r.status(), StatusCode::OK);
    proxy.connect(&app);

    wait_received(&rs.verifier, 5).await;
    rs.wait_ready().await;
    for t in &during {
        let refusals = rs.refused_within(t, Instant::now()).await;
        assert_revoked_like_sessiond(&app, t, &refusals).await;
    }
    rs.assert_accepts(&survivor).await;
    let status = rs.verifier.status();
    assert_eq!(status.revocations_received, 5, "exactly the three missed, no snapshot again: {status:?}");
    assert_eq!(status.snapshot_restarts, 0, "{status:?}");
    assert!(status.feed_connects >= 2, "{status:?}");
}

/// A cursor sessiond no longer knows (its database restored from an older backup) is 400; the
/// follower starts over from a snapshot, keeps what it knew, and follows live again.
#[tokio::test]
async fn a_cursor_unknown_to_sessiond_starts_the_follower_over_from_a_snapshot() {
    let proxy = Proxy::start().await;
    let Some(app) = sessiond_behind(&proxy).await else { return };
    let key = feed_reader(&app).await;
    let (kept, lost) = (app.new_session().await, app.new_session().await);
    let rs = ResourceServer::start(verifier(&proxy, &key).build().unwrap()).await;
    for t in [&kept, &lost] {
        assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    }
    wait_received(&rs.verifier, 2).await;

    proxy.cut();
    // The "restored backup" no longer has the newest entry: the follower's cursor is beyond
    // the head.
    app.raw_db().await.execute("DELETE FROM revocations WHERE id = (SELECT MAX(id) FROM revocations)").await.unwrap();
    proxy.connect(&app);
    // Refused (400), then a snapshot: the one entry left, after the 2 received live.
    wait_received(&rs.verifier, 3).await;
    let status = rs.verifier.status();
    assert_eq!((status.snapshot_restarts, status.revocations_received), (1, 3), "{status:?}");
    assert!(status.ready, "{status:?}");
    // The forgotten one is still refused.
    for t in [&kept, &lost] {
        let refusals = rs.refused_within(t, Instant::now()).await;
        assert_revoked_like_sessiond(&app, t, &refusals).await;
    }
    let next = app.new_session().await;
    rs.assert_accepts(&next).await;
    assert_eq!(app.post_auth("/v1/auth/logout", &next.access, None).await.status(), StatusCode::NO_CONTENT);
    let refusals = rs.refused_within(&next, Instant::now()).await;
    assert_revoked_like_sessiond(&app, &next, &refusals).await;
}

/// A database restored from a `sessiond backup` copy while a verifier follows the feed (issue
/// 21, docs/API.md §14). After the restore, revocations committed before the verifier comes
/// back take log ids its cursor (of the live database) already covers; without the epoch it
/// would resume after its cursor and skip them. With it, the old cursor is refused (400), the
/// verifier starts over from a snapshot and refuses every one of them.
#[tokio::test]
async fn a_restored_backup_makes_the_follower_start_over_and_skip_nothing() {
    if crate::BACKEND != Backend::Sqlite {
        return; // `sessiond backup` copies SQLite; PostgreSQL's restores run `sessiond epoch renew`.
    }
    let proxy = Proxy::start().await;
    let Some(app) = sessiond_behind(&proxy).await else { return };
    let key = feed_reader(&app).await;
    let rs = ResourceServer::start(verifier(&proxy, &key).build().unwrap()).await;
    let (before, after_backup) = (app.new_session().await, app.new_session().await);
    let (new1, new2) = (app.new_session().await, app.new_session().await);
    assert_eq!(app.post_auth("/v1/auth/logout", &before.access, None).await.status(), StatusCode::NO_CONTENT);
    wait_received(&rs.verifier, 1).await;
    // The backup, online, while the server and its follower run.
    let copy = app.dir.path().join("backup.db");
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("backup")
        .arg(&copy)
        .args(["--database-url", &app.config.database_url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(app.post_auth("/v1/auth/logout", &after_backup.access, None).await.status(), StatusCode::NO_CONTENT);
    wait_received(&rs.verifier, 2).await;
    let cursor_before = rs.verifier.cursor();

    // Restore: stop, copy the backup back, start. Two revocations commit before the verifier
    // can reach the restored server: log ids 2 and 3 (the copy's head was 1).
    proxy.cut();
    let mut app = app;
    app.stop().await;
    let db = app.db_path();
    std::fs::copy(&copy, &db).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let mut config = app.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let app = start_on(config, app.dir.clone(), sessiond::clock::Clock::system(), None).await;
    for t in [&new1, &new2] {
        assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    }
    proxy.connect(&app);
    let deadline = Instant::now() + SYNC_WITHIN;
    while rs.verifier.status().snapshot_restarts < 1 || rs.verifier.cursor() == cursor_before {
        assert!(Instant::now() < deadline, "the follower never started over: {:?}", rs.verifier.status());
        tokio::time::sleep(POLL).await;
    }
    wait_received(&rs.verifier, 2 + 3).await;
    for t in [&new1, &new2, &before] {
        let refusals = rs.refused_within(t, Instant::now()).await;
        assert_revoked_like_sessiond(&app, t, &refusals).await;
    }
    // What the restore lost from sessiond, the follower still knew and keeps refusing.
    let refusals = rs.refused_within(&after_backup, Instant::now()).await;
    assert!(!refusals.is_empty(), "the revocation the restore lost is still refused by the follower");
}

/// sessiond's keep-alive comments (every 2 s) keep a silent feed live; cut off longer than the
/// staleness bound, a fail-closed verifier answers 503 `unavailable` and is not ready, a
/// fail-open one keeps serving; both recover when the feed is back.
#[tokio::test]
async fn keep_alives_keep_a_quiet_feed_live_and_a_cut_feed_fails_closed_past_the_bound() {
    const BOUND: Duration = Duration::from_secs(4);
    let proxy = Proxy::start().await;
    let Some(app) = sessiond_behind(&proxy).await else { return };
    let key = feed_reader(&app).await;
    let closed = ResourceServer::start(verifier(&proxy, &key).staleness(BOUND).build().unwrap()).await;
    let open = ResourceServer::start(verifier(&proxy, &key).staleness(BOUND).fail_open(true).build().unwrap()).await;
    let t = app.new_session().await;

    // Longer than the bound with nothing revoked: only keep-alives arrive, and they suffice.
    let quiet_until = Instant::now() + BOUND + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        closed.assert_accepts(&t).await;
        assert_eq!(closed.get("/readyz", None).await.status, StatusCode::OK);
        let since = closed.verifier.status().since_last_byte.unwrap();
        assert!(since < BOUND, "keep-alives count as bytes: {since:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    proxy.cut();
    let cut_at = Instant::now();
    let unavailable = loop {
        let r = closed.get("/notes", Some(&t.access)).await;
        if r.status != StatusCode::OK {
            break r;
        }
        assert!(
            cut_at.elapsed() < BOUND + Duration::from_secs(1),
            "still serving {:?} after the cut",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The bound counts from the last byte, at most one keep-alive interval before the cut.
    assert!(cut_at.elapsed() + Duration::from_secs(3) >= BOUND, "failed closed too early: {:?}", cut_at.elapsed());
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unavailable.code(), "unavailable");
    assert_eq!(unavailable.retry_after.as_deref(), Some("1"));
    assert_eq!(unavailable.content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(closed.get("/layered/notes", Some(&t.access)).await, unavailable);
    assert_eq!(closed.get("/readyz", None).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!closed.verifier.is_ready());
    // Failing open: still serving, still ready, and blind to what is revoked meanwhile.
    let missed = app.new_session().await;
    assert_eq!(app.post_auth("/v1/auth/logout", &missed.access, None).await.status(), StatusCode::NO_CONTENT);
    open.assert_accepts(&t).await;
    open.assert_accepts(&missed).await;
    assert!(open.verifier.is_ready());

    // Back: both resume from their cursors (the missed revocation arrives), then follow live.
    proxy.connect(&app);
    let back_at = Instant::now();
    for rs in [&closed, &open] {
        rs.wait_resynced(back_at).await;
        let refusals = rs.refused_within(&missed, Instant::now()).await;
        assert_revoked_like_sessiond(&app, &missed, &refusals).await;
    }
    closed.assert_accepts(&t).await;
    assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    let since = Instant::now();
    for rs in [&closed, &open] {
        let refusals = rs.refused_within(&t, since).await;
        assert_revoked_like_sessiond(&app, &t, &refusals).await;
    }
}

/// Nothing is served until the feed has synced: with a credential that lacks
/// `revocations:read` (403) it never does, though the keys load. A credential removed while it
/// is followed ends the stream, its reconnects get 401, and past the bound requests get 503.
#[tokio::test]
async fn without_a_working_credential_the_verifier_fails_closed() {
    const BOUND: Duration = Duration::from_secs(4);
    let proxy = Proxy::start().await;
    let Some(app) = sessiond_behind(&proxy).await else { return };
    let t = app.new_session().await;

    let introspect_only = credential(&app, "introspector", &[Scope::Introspect]).await;
    let rs = ResourceServer::serve(verifier(&proxy, &introspect_only).build().unwrap()).await;
    let deadline = Instant::now() + SYNC_WITHIN;
    while rs.verifier.status().jwks_keys == 0 {
        assert!(Instant::now() < deadline, "the keys never loaded: {:?}", rs.verifier.status());
        tokio::time::sleep(POLL).await;
    }
    for path in ["/notes", "/layered/notes"] {
        let r = rs.get(path, Some(&t.access)).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{path}");
    }
    assert_eq!(rs.get("/readyz", None).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let status = rs.verifier.status();
    assert!(!status.ready && !status.synced && status.feed_connects == 0, "{status:?}");

    let key = credential(&app, "notes-api", &[Scope::RevocationsRead]).await;
    let rs = ResourceServer::start(verifier(&proxy, &key).staleness(BOUND).build().unwrap()).await;
    rs.assert_accepts(&t).await;
    let name = "notes-api".parse().unwrap();
    let who = Default::default();
    let removed = sessiond::service_credentials::remove(&app.state.store, app.clock.now_ms(), &name, &who).await;
    assert!(removed.unwrap());
    let removed_at = Instant::now();
    let within = sessiond::http::feed::CREDENTIAL_RECHECK + BOUND + Duration::from_secs(1);
    let refusal = loop {
        let r = rs.get("/notes", Some(&t.access)).await;
        if r.status != StatusCode::OK {
            break r;
        }
        assert!(removed_at.elapsed() < within, "still serving {:?} after the removal", removed_at.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((refusal.status, refusal.code().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
    assert!(!rs.verifier.is_ready());
}

/// On PostgreSQL, revocations made on another instance reach a verifier that follows this one
/// (on SQLite, the one instance).
#[tokio::test]
async fn revocations_on_another_instance_reach_a_verifier_following_this_one() {
    let proxy = Proxy::start().await;
    let Some(followed) = sessiond_behind(&proxy).await else { return };
    let other;
    let revoking = match crate::BACKEND {
        Backend::Postgres => {
            other = another_instance(&followed).await;
            &other
        }
        Backend::Sqlite => &followed,
    };
    let key = feed_reader(&followed).await;
    let rs = ResourceServer::start(verifier(&proxy, &key).build().unwrap()).await;
    let (a, b, c) = (revoking.new_session().await, revoking.new_session().await, followed.new_session().await);
    for t in [&a, &b, &c] {
        rs.assert_accepts(t).await;
    }
    assert_eq!(revoking.post_auth("/v1/auth/logout", &a.access, None).await.status(), StatusCode::NO_CONTENT);
    let refusals = rs.refused_within(&a, Instant::now()).await;
    assert_revoked_like_sessiond(revoking, &a, &refusals).await;
    // The other instance's logout-all of b's user, and an RFC 7009 revocation of c's session.
    assert_eq!(revoking.post_auth("/v1/auth/logout-all", &b.access, None).await.status(), StatusCode::OK);
    let r = post_form(revoking, "/oauth2/revoke", format!("token={}", c.refresh)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let since = Instant::now();
    for t in [&b, &c] {
        let refusals = rs.refused_within(t, since).await;
        assert_revoked_like_sessiond(&followed, t, &refusals).await;
    }
}

// ---------------------------------------------------------------------------------------------
// `examples/notes.rs` as an operator runs it (docs/API.md §12).

/// The `notes` example binary in this test binary's target directory and profile. A plain
/// `cargo test` builds it with everything else; when it is missing or older than the crate's
/// sources (e.g. `cargo test --test api` alone), it is built now with `cargo build -p
/// sessiond-verify --example notes`.
fn notes_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
    let bin = profile_dir.join("examples").join(format!("notes{}", std::env::consts::EXE_SUFFIX));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let sources = ["verify/src", "verify/examples", "verify/Cargo.toml", "Cargo.lock"].map(|p| root.join(p));
    if built.is_some_and(|b| sources.iter().all(|p| newest_change(p) <= b)) {
        return bin;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--locked", "-p", "sessiond-verify", "--example", "notes"])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(profile_dir.parent().unwrap());
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("cargo runs");
    assert!(out.status.success(), "building the notes example failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(bin.exists(), "{} after the build", bin.display());
    bin
}

/// The latest modification time of `path` or of any file under it.
fn newest_change(path: &std::path::Path) -> std::time::SystemTime {
    let meta = std::fs::metadata(path).unwrap();
    let own = meta.modified().unwrap();
    if !meta.is_dir() {
        return own;
    }
    std::fs::read_dir(path).unwrap().map(|e| newest_change(&e.unwrap().path())).fold(own, std::cmp::max)
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The notes example: `--issuer`, `--service-key`, `--listen` exactly as §12 writes them, the
/// audience left to its default. It refuses a revoked token within a second, with sessiond's
/// problem; it answers 503 once sessiond has been gone longer than the default bound (10 s,
/// §12), and not before.
#[tokio::test]
async fn the_notes_example_refuses_a_revoked_token_and_fails_closed_when_sessiond_is_gone() {
    let proxy = Proxy::start().await;
    let Some(app) = sessiond_behind(&proxy).await else { return };
    let key = feed_reader(&app).await;
    let bin = tokio::task::spawn_blocking(notes_example).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let log = app.dir.path().join("notes.log");
    let child = Command::new(bin)
        .args(["--issuer", &proxy.url(), "--service-key", &key, "--listen", &listen])
        .env("RUST_LOG", "info")
        .env_remove("NOTES_SERVICE_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("the notes example starts");
    let mut notes = Running(child);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    // `None`: not listening (yet).
    let get = |path: &str, token: Option<&str>| {
        let mut req = client.get(format!("http://{listen}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            match req.send().await {
                Ok(r) => Some(Answer::read(r).await),
                Err(_) => None,
            }
        }
    };

    let deadline = Instant::now() + SYNC_WITHIN;
    loop {
        if get("/readyz", None).await.is_some_and(|r| r.status == StatusCode::OK) {
            break;
        }
        let exited = notes.0.try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "the notes example never got ready ({exited:?}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let t = app.new_session().await;
    let r = get("/notes", Some(&t.access)).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body, json!({ "user_id": t.user_id, "session_id": t.session_id, "notes": [] }));
    assert_eq!(get("/notes", None).await.unwrap(), sessiond_answer(&app, None).await);

    assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    let since = Instant::now();
    let refusal = loop {
        let r = get("/notes", Some(&t.access)).await.unwrap();
        if r.status != StatusCode::OK {
            break r;
        }
        assert!(since.elapsed() < REFUSED_WITHIN, "still accepted {:?} after the logout", since.elapsed());
        tokio::time::sleep(POLL).await;
    };
    assert_revoked_like_sessiond(&app, &t, &[refusal]).await;

    // sessiond gone: still serving within the bound, 503 past it.
    const BOUND: Duration = sessiond_verify::DEFAULT_STALENESS;
    let live = app.new_session().await;
    assert_eq!(get("/notes", Some(&live.access)).await.unwrap().status, StatusCode::OK);
    proxy.cut();
    let cut_at = Instant::now();
    let unavailable = loop {
        let r = get("/notes", Some(&live.access)).await.unwrap();
        if r.status != StatusCode::OK {
            break r;
        }
        assert!(
            cut_at.elapsed() < BOUND + Duration::from_secs(1),
            "still serving {:?} after the cut",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(cut_at.elapsed() + Duration::from_secs(3) >= BOUND, "failed closed too early: {:?}", cut_at.elapsed());
    assert_eq!((unavailable.status, unavailable.code().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
    assert_eq!(unavailable.retry_after.as_deref(), Some("1"));
    assert_eq!(get("/readyz", None).await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(notes.0.try_wait().unwrap().is_none(), "the example keeps running while sessiond is gone");
}

//! Building the application: state (database, keys, denylist), router and layers, serving with
//! an injected shutdown signal (the server loop itself: [`listen`]), starting before the
//! database is reachable ([`run`]), and the background tasks (key reload, expiry sweep).

pub mod listen;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::accounts::{Accounts, Via};
use crate::clock::Clock;
use crate::cluster::Link;
use crate::config::Config;
use crate::denylist::Denylist;
use crate::error::{problem, AppError};
use crate::http;
use crate::hub::Hub;
use crate::metrics::{method_label, HttpLabels, Metrics};
use crate::password::Passwords;
use crate::sessions::Sessions;
use crate::state::AppState;
use crate::store::Store;
use crate::tokens::jwt::{self, Keys};

/// Largest request body (docs/API.md: 413 `payload_too_large` above it).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Accept backlog: tokio's default of 1024 is too small for reconnect storms.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Opens and migrates the database, loads the keys, bootstraps the admin, rebuilds the
/// denylist and checks that signing works. Returns a state that is ready to serve.
pub async fn build_state(config: Config, clock: Clock) -> anyhow::Result<AppState> {
    let store = Store::connect_with(&config.database_url, &store_options(&config)).await?;
    store.migrate().await?;
    let keys = Keys::new(&config.issuer, &config.audience, config.access_ttl);
    jwt::ensure_initial_key(&store, &clock).await?;
    keys.reload(&store, clock.now_ms()).await?;
    let metrics = Arc::new(Metrics::new());
    let link = store.postgres().is_some().then(|| Arc::new(Link::new(clock.now_ms())));
    let config = Arc::new(config);
    let limits = crate::limits::Limits::new(&config);
    let passwords = Passwords::new(config.password_hash_concurrency);
    let hub = Hub::new(metrics.clone());
    let feed = crate::feed::FeedSignal::default();
    let sessions = Sessions::new(crate::sessions::Parts {
        instance_id: store.instance_id().into(),
        store: store.clone(),
        keys: keys.clone(),
        denylist: Denylist::default(),
        hub: hub.clone(),
        passwords: passwords.clone(),
        limits: limits.clone(),
        metrics: metrics.clone(),
        clock: clock.clone(),
        config: config.clone(),
        link: link.clone(),
        feed: feed.clone(),
    });
    let ssf = crate::ssf::Ssf::new(
        store.clone(),
        clock.clone(),
        crate::ssf::Settings::from_config(&config),
        feed.clone(),
        metrics.clone(),
    );
    let state = AppState {
        ssf,
        accounts: Accounts::new(store.clone(), passwords, limits.clone(), clock.clone()),
        sessions,
        feed_tail: crate::feed::tail::FeedTail::new(store.clone()),
        store,
        keys,
        hub,
        limits,
        metrics,
        clock,
        link,
        allowed_origins: Arc::new(crate::state::AllowedOrigins::new(config.allowed_origins())),
        config,
        ready: Arc::new(AtomicBool::new(false)),
        draining: Default::default(),
        feed,
    };
    self_test(&state)?;
    bootstrap_admin(&state).await?;
    let n = state.sessions.rebuild_denylist().await?;
    state.sessions.count_live_sessions().await;
    tracing::info!(denylisted = n, kids = ?state.keys.kids(), "state ready");
    state.ready.store(true, Ordering::Release);
    Ok(state)
}

/// How the store is to talk to the database, from the configuration.
pub fn store_options(config: &Config) -> crate::store::StoreOptions {
    crate::store::StoreOptions {
        db_timeout: config.db_timeout,
        sqlite_synchronous_full: config.sqlite_synchronous == "full",
    }
}

/// Signs and verifies once: a crypto backend misconfiguration of `jsonwebtoken` compiles but
/// panics at the first use, so find out before serving traffic.
fn self_test(state: &AppState) -> anyhow::Result<()> {
    let now = state.clock.now_ms();
    let (token, _) = state.keys.issue("self-test", "self-test", vec![], now, now + 60_000)?;
    state
        .keys
        .verify(&token, state.clock.now_secs())
        .map_err(|e| anyhow::anyhow!("signing self-test failed: {e:?}"))?;
    Ok(())
}

/// The first start on an empty database with `SESSIOND_ADMIN_EMAIL`/`_PASSWORD` creates that admin.
async fn bootstrap_admin(state: &AppState) -> anyhow::Result<()> {
    let (Some(email), Some(password)) = (&state.config.admin_email, &state.config.admin_password) else {
        return Ok(());
    };
    if state.store.count_users().await? > 0 {
        tracing::warn!(
            "SESSIOND_ADMIN_EMAIL/SESSIOND_ADMIN_PASSWORD ignored: they only create the first admin of an empty \
             database, and this one has users (add an admin with `sessiond user add --email E --admin`)"
        );
        return Ok(());
    }
    let who = crate::audit::Who::system();
    match state.accounts.register(email, password.0.clone(), true, &who, Via::Bootstrap).await {
        Ok(id) => tracing::info!(user_id = %id, "bootstrap admin created"),
        Err(AppError::EmailTaken) => {}
        Err(e) => anyhow::bail!("creating the bootstrap admin failed: {e}"),
    }
    Ok(())
}

/// The whole HTTP API with its layers. The routes and the OpenAPI document served at
/// `/openapi.json` come from the same handler list ([`http::openapi::api_router`]).
pub fn router(state: AppState) -> Router {
    let (api, doc) = http::openapi::api_router(&state).split_for_parts();
    Router::new()
        .merge(api)
        .merge(http::ssf::router().layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        )))
        .merge(http::ssf::public_router())
        .merge(http::pages::router(&state))
        .layer(axum::Extension(http::openapi::SpecJson::new(&doc)))
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.config.clone(), deadline))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(CatchPanicLayer::custom(|_| {
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal Server Error",
                "An internal error occurred.",
            )
        }))
        // Failures are logged where they happen (AppError); a 503 from /readyz while starting
        // is not an error worth an ERROR line.
        .layer(
            TraceLayer::new_for_http()
                // The path, not the whole URI: clients put tokens in query strings (a common
                // WebSocket habit), and a debug log must not keep them (SECURITY.md RT9).
                .make_span_with(|req: &Request| {
                    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), version = ?req.version())
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

/// Every request is answered within `--request-timeout` (docs/API.md §14), else 503
/// `unavailable` with `Retry-After`, never a hung connection; a body that stalls is part of the
/// request. Long polls get their wait on top (`/v1/revocations?wait=`, `/ssf/poll/…`); streams
/// and sockets answer at once and keep their own bounds. Work that must not be cut off (a
/// revocation, a rotation) runs in its own task and completes or rolls back whole.
async fn deadline(State(config): State<Arc<Config>>, req: Request, next: Next) -> Response {
    let limit = config.request_timeout + long_wait(&config, req.uri());
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!(limit = ?limit, "request deadline passed: 503");
            AppError::Unavailable(anyhow::anyhow!("request deadline")).into_response()
        }
    }
}

/// The wait a long poll asks for, on top of the request deadline.
fn long_wait(config: &Config, uri: &axum::http::Uri) -> Duration {
    match uri.path() {
        "/v1/revocations" => {
            let wait = uri.query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "wait").and_then(|(_, v)| v.parse::<u64>().ok())
            });
            Duration::from_secs(wait.unwrap_or(0).min(http::feed::MAX_WAIT_SECS))
        }
        p if p.starts_with("/ssf/poll/") => config.ssf_poll_wait,
        _ => Duration::ZERO,
    }
}

/// Counts requests by route and status, and turns any error response that is not yet
/// problem+json (a layer's or axum's own) into one, so every error has a stable `code`.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let mut res = next.run(req).await;
    let status = res.status();
    let is_problem =
        res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    let oauth_form = res.extensions().get::<http::oauth::OAuthBody>().is_some();
    if status.as_u16() >= 400 && !is_problem && !oauth_form {
        let (code, detail) = match status {
            StatusCode::NOT_FOUND => ("not_found", "No such resource."),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "The request body is larger than 64 KiB."),
            s if s.is_server_error() => ("internal", "An internal error occurred."),
            _ => ("invalid_request", "The request is not valid."),
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let mut fresh = problem(status, code, title, detail);
        for (k, v) in res.headers() {
            if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                fresh.headers_mut().insert(k.clone(), v.clone());
            }
        }
        res = fresh;
    }
    state.metrics.http_requests.get_or_create(&HttpLabels { method, route, status: status.as_u16() }).inc();
    res
}

/// Binds with a large accept backlog.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until `shutdown` resolves, running the background tasks meanwhile. `state` is ready
/// (see [`build_state`]); [`run`] is the server's whole life, database outages at start included.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let quit = cancel_on(shutdown);
    let routes = listen::Routes::new(router(state.clone()));
    serve_state(listener, routes, state, quit).await
}

/// A token cancelled when `signal` resolves.
fn cancel_on(signal: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let quit = CancellationToken::new();
    let cancel = quit.clone();
    tokio::spawn(async move {
        signal.await;
        cancel.cancel();
    });
    quit
}

/// The server's whole life (`sessiond serve`, docs/API.md §14): it listens at once, answering
/// `/healthz` 200 and everything else 503 `unavailable` (`/readyz` included) while it reaches
/// the database, migrates it and syncs; each failed attempt is logged with the database's
/// address and the reason, and retried with backoff for as long as it takes (never an exit for
/// a database that comes back). Errors that no retry can fix (a bad URL, a migration the
/// database refuses for good) end it.
pub async fn run(
    config: Config,
    clock: Clock,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let quit = cancel_on(shutdown);
    let addr = listener.local_addr()?;
    tracing::info!(addr = %addr, "accepting connections; starting (every request but /healthz answers 503 until ready)");
    let routes = listen::Routes::new(starting_router());
    let accept = CancellationToken::new();
    let starting = tokio::spawn(listen::serve(listener, routes.clone(), accept.clone().cancelled_owned()));
    let mut backoff = START_BACKOFF;
    let state = loop {
        let attempt = tokio::select! {
            _ = quit.cancelled() => {
                accept.cancel();
                let _ = starting.await;
                return Ok(());
            }
            attempt = build_state(config.clone(), clock.clone()) => attempt,
        };
        match attempt {
            Ok(state) => break state,
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "starting: the database is not reachable yet");
                tokio::select! {
                    _ = quit.cancelled() => {
                        accept.cancel();
                        let _ = starting.await;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(START_BACKOFF_MAX);
            }
            Err(e) => {
                accept.cancel();
                let _ = starting.await;
                return Err(e);
            }
        }
    };
    // The starting server keeps the listener; from now on it serves with the full router.
    routes.replace(router(state.clone()));
    // "listening" means ready: scripts and tests wait for this line.
    tracing::info!(addr = %addr, "listening");
    run_state(routes, state, quit, starting, accept).await
}

/// First pause between start attempts; doubles up to [`START_BACKOFF_MAX`].
const START_BACKOFF: Duration = Duration::from_millis(500);
const START_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Whether a start failure is the database being unreachable (or failing for a while), which
/// a later attempt may not meet.
fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(s) = cause.downcast_ref::<crate::store::StoreError>() {
            return s.is_outage();
        }
        cause.downcast_ref::<sqlx::Error>().is_some_and(crate::error::is_outage)
    })
}

/// What answers while the instance starts: `/healthz` 200, anything else 503 with
/// `Retry-After`, each answer closing its connection (the next one meets the full router).
fn starting_router() -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(http::health::healthz_ok))
        .fallback(|| async { AppError::Unavailable(anyhow::anyhow!("starting")) })
        .layer(SetResponseHeaderLayer::overriding(header::CONNECTION, HeaderValue::from_static("close")))
}

/// Serves `state` on `listener` until `quit`.
async fn serve_state(
    listener: TcpListener,
    routes: listen::Routes,
    state: AppState,
    quit: CancellationToken,
) -> std::io::Result<()> {
    let accept = CancellationToken::new();
    let server = tokio::spawn(listen::serve(listener, routes.clone(), accept.clone().cancelled_owned()));
    run_state(routes, state, quit, server, accept).await.map_err(std::io::Error::other)
}

/// The background tasks of a ready `state` while `server` serves `routes`; after `quit`, the
/// drain (docs/API.md §14): `/readyz` answers 503 at once (a load balancer stops sending), new
/// upgrades 503, the feed's waits answer, sockets close with 1012; after `--shutdown-delay` (the
/// time a balancer needs to notice) `accept` is cancelled and the server stops accepting and
/// finishes what is in flight; the sockets get `--shutdown-drain` to close; then the tasks stop
/// and the database closes.
async fn run_state(
    routes: listen::Routes,
    state: AppState,
    quit: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    accept: CancellationToken,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let mut tasks = spawn_background(&state, stop.clone());
    if let Some(addr) = state.config.metrics_listen {
        tasks.push(serve_metrics(bind(addr).await?, state.clone(), stop.clone()));
    }
    quit.cancelled().await;
    state.draining.store(true, Ordering::Release);
    tracing::info!(delay = ?state.config.shutdown_delay, "draining: /readyz answers 503");
    // Upgraded sockets are not HTTP connections: the graceful end of the connections does not
    // end them (tokio-rs/axum#3003). Close them with 1012 now, in parallel with the drain.
    state.hub.begin_shutdown();
    state.feed.close();
    tokio::time::sleep(state.config.shutdown_delay).await;
    accept.cancel();
    state.hub.shutdown(state.config.shutdown_drain).await;
    let _ = server.await;
    drop(routes);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    state.store.close().await;
    Ok(())
}

/// `--metrics-listen`: a second listener that serves only `GET /metrics`, without
/// authentication (the operator exposes it to the Prometheus network only).
fn serve_metrics(listener: TcpListener, state: AppState, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(s): State<Sessions>| async move { http::health::render_metrics(&s) }),
        )
        .fallback(|| async { AppError::NotFound })
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    })
}

/// Key reload (so `keys rotate` reaches running servers) and the expiry sweep.
fn spawn_background(state: &AppState, stop: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let reload = {
        let (state, stop) = (state.clone(), stop.clone());
        every(state.config.keys_reload_interval, stop, move || {
            let state = state.clone();
            async move {
                if let Err(e) = state.keys.reload(&state.store, state.clock.now_ms()).await {
                    tracing::warn!(error = %e, "keyset reload failed");
                }
            }
        })
    };
    let sweep = {
        let state = state.clone();
        every(state.config.sweep_interval, stop.clone(), move || {
            let state = state.clone();
            async move {
                match state.sessions.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "expired sessions ended"),
                    Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
                }
            }
        })
    };
    let listener = tokio::spawn(crate::backplane::run_listener(state.sessions.clone(), stop.clone()));
    let presence = tokio::spawn(crate::backplane::run_presence(state.sessions.clone(), stop.clone()));
    let ssf = tokio::spawn(state.ssf.clone().run(stop));
    vec![reload, sweep, listener, presence, ssf]
}

fn every<F, Fut>(period: Duration, stop: CancellationToken, mut f: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => f().await,
            }
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}

impl IntoResponse for crate::store::StoreError {
    fn into_response(self) -> Response {
        AppError::from(self).into_response()
    }
}

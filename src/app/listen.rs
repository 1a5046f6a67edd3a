//! The HTTP server loop (docs/API.md §14): hyper's HTTP/1 connections with a header-read
//! deadline (a client that trickles its headers is dropped after [`HEADER_READ_TIMEOUT`]:
//! slowloris), WebSocket upgrades, the peer address for the handlers (`ConnectInfo`), and a
//! graceful end: once `shutdown` resolves no connection is accepted, idle keep-alive
//! connections close, and requests in flight finish (upgraded sockets are the hub's to close).
//!
//! The router serving each new connection can be swapped ([`Routes`]): while the instance is
//! starting (the database not reached yet) it is the starting router, then the full one.
//! Connections accepted while starting close after each answer (`Connection: close`), so a
//! client's next request reaches the full router.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long a client may take to send a request's headers (docs/API.md §14: 10 s).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the graceful end waits for requests in flight before dropping them.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// The router each new connection is served by.
#[derive(Clone)]
pub struct Routes(Arc<RwLock<Router>>);

impl Routes {
    pub fn new(router: Router) -> Routes {
        Routes(Arc::new(RwLock::new(router)))
    }

    /// Connections accepted from now on are served by `router`.
    pub fn replace(&self, router: Router) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = router;
    }

    fn current(&self) -> Router {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Serves `listener` with `routes` until `shutdown` resolves, then drains.
pub async fn serve(listener: TcpListener, routes: Routes, shutdown: impl Future<Output = ()> + Send) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    // Each connection's task watches `ending`; `tracker` waits for them all at the end.
    let (end, ending) = tokio::sync::watch::channel(false);
    let tracker = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or the like: not the listener's end. Pause, as
                    // axum::serve does, instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tracing::trace!(peer = %peer, "connection accepted");
        let router = routes.current();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move { Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {})) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let mut ending = ending.clone();
        tracker.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                r = connection.as_mut() => r,
                _ = async { drop(ending.wait_for(|e| *e).await) } => {
                    // Finish the request in flight (if any), then close: no keep-alive.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = end.send(true);
    tracker.close();
    if tokio::time::timeout(DRAIN_LIMIT, tracker.wait()).await.is_err() {
        tracing::warn!("requests still in flight after the drain limit; dropping them");
    }
}

/// The peer address of a connection, as the handlers see it.
pub type Peer = ConnectInfo<SocketAddr>;

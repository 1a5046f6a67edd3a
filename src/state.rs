//! The application state: the services and handles the routers are built from. Handlers never
//! take it whole: each takes what it needs (`State<Sessions>`, `State<Store>`, …) through
//! `FromRef`, so what a handler can touch is in its signature.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::FromRef;

use crate::accounts::Accounts;
use crate::clock::Clock;
use crate::cluster::Link;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::tokens::jwt::Keys;

/// Set at the shutdown signal (a type of its own, so handlers can take it through `FromRef`
/// beside `ready`).
#[derive(Clone, Default)]
pub struct Draining(pub Arc<AtomicBool>);

impl Draining {
    pub fn store(&self, v: bool, order: std::sync::atomic::Ordering) {
        self.0.store(v, order)
    }

    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[derive(Clone, FromRef)]
pub struct AppState {
    pub sessions: Sessions,
    pub accounts: Accounts,
    pub store: Store,
    pub keys: Keys,
    pub hub: Hub,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub config: Arc<Config>,
    /// The link to the other instances (listener health); `None` on SQLite.
    pub link: Option<Arc<Link>>,
    /// `--allowed-origins` resolved once (sockets, cookie refresh, CSRF checks).
    pub allowed_origins: Arc<AllowedOrigins>,
    /// True once the denylist is rebuilt and the keyset loaded: `/readyz` may answer 200.
    pub ready: Arc<AtomicBool>,
    /// True from the shutdown signal on: `/readyz` answers 503 (docs/API.md §14).
    pub draining: Draining,
    /// Wakes the revocation feed's long polls on this instance (docs/API.md §9).
    pub feed: crate::feed::FeedSignal,
    /// The newest revocation log entries, read once per commit for every follower at the head.
    pub feed_tail: crate::feed::tail::FeedTail,
    /// The Shared Signals transmitter (docs/SSF.md).
    pub ssf: crate::ssf::Ssf,
}

/// The exact browser origins allowed, and a rate-limited warning when one is refused: a
/// `--listen` or `--issuer` that no longer matches the page's origin otherwise shows only as a
/// demo stuck on "Connecting…".
pub struct AllowedOrigins {
    list: Vec<String>,
    last_warning: std::sync::Mutex<Option<std::time::Instant>>,
}

/// At most one refused-origin warning per this period.
const ORIGIN_WARNING_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

impl AllowedOrigins {
    pub fn new(list: Vec<String>) -> Self {
        AllowedOrigins { list, last_warning: std::sync::Mutex::new(None) }
    }

    /// Whether `origin` is exactly one of the allowed origins; a refusal is logged (at most once
    /// per 10 s) with the allowed list.
    pub fn allows(&self, origin: &axum::http::HeaderValue) -> bool {
        if origin.to_str().is_ok_and(|o| self.list.iter().any(|a| a == o)) {
            return true;
        }
        let now = std::time::Instant::now();
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= ORIGIN_WARNING_PERIOD) {
            *last = Some(now);
            let refused: String = String::from_utf8_lossy(origin.as_bytes()).chars().take(200).collect();
            tracing::warn!(
                origin = %refused,
                allowed = ?self.list,
                "browser origin refused (403): set --issuer or --allowed-origins to the origin the pages are served from"
            );
        }
        false
    }
}

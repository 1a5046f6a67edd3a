//! Shared application state: cheap-clone handles only.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::FromRef;

use crate::backplane::Backplane;
use crate::clock::Clock;
use crate::config::Config;
use crate::denylist::Denylist;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::password::Passwords;
use crate::store::Store;
use crate::tokens::jwt::Keys;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub store: Store,
    pub keys: Keys,
    pub denylist: Denylist,
    pub hub: Hub,
    pub passwords: Passwords,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub config: Arc<Config>,
    /// This process's id among the instances sharing a database.
    pub instance_id: Arc<str>,
    /// The PostgreSQL backplane (listener health, acknowledgements); `None` on SQLite.
    pub backplane: Option<Arc<Backplane>>,
    /// `--allowed-origins` resolved once (sockets, cookie refresh, CSRF checks).
    pub allowed_origins: Arc<[String]>,
    /// True once the denylist is rebuilt and the keyset loaded: `/readyz` may answer 200.
    pub ready: Arc<AtomicBool>,
}

impl AppState {
    /// Whether a browser `Origin` header is exactly one of the allowed origins.
    pub fn origin_allowed(&self, origin: &axum::http::HeaderValue) -> bool {
        origin.to_str().is_ok_and(|o| self.allowed_origins.iter().any(|a| a == o))
    }
}

//! sessiond: short-lived stateless EdDSA access tokens, stateful rotating refresh tokens, and
//! revocation that takes effect at once.
//!
//! # Layout
//! - [`config`]: clap configuration (flags and `SESSIOND_*` environment).
//! - [`app`]: state building, router and layers, `serve` with an injected shutdown, background tasks.
//! - [`http`]: the endpoints, one router per area, and the extractors.
//! - [`sessions`]: login, refresh, logout and every revocation path ([`sessions::publish`]).
//! - [`tokens`]: access-token JWTs and keyset ([`tokens::jwt`]), opaque refresh tokens ([`tokens::refresh`]).
//! - [`store`]: the database behind one API (a typed backend each for SQLite and PostgreSQL).
//! - [`backplane`]: PostgreSQL LISTEN/NOTIFY fan-out between instances, resync, presence.
//! - [`hub`]: the WebSocket registry and logout push ([`hub::connection`] is one socket's task).
//! - [`denylist`]: revoked session ids held in memory until their tokens expire.
//! - [`password`]: argon2id hashing behind a semaphore with a bounded queue.
//! - [`limits`]: login backoff, registration and socket caps, `--trusted-proxies`.
//! - [`audit`]: the append-only audit trail of security events.
//! - [`service_credentials`]: the `sk_…` credentials of the app's other services; [`feed`]: the
//!   revocation feed's per-instance wake-up source.
//! - [`metrics`], [`telemetry`], [`clock`], [`error`], [`state`], [`cli`].
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod backplane;
pub mod cli;
pub mod clock;
pub mod config;
pub mod denylist;
pub mod error;
pub mod feed;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod password;
pub mod service_credentials;
pub mod sessions;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tokens;

//! sessiond: short-lived stateless EdDSA access tokens, stateful rotating refresh tokens, and
//! revocation that takes effect at once.
//!
//! # Layout
//! Rooms, from the top down; each depends only on rooms below it (`tests/architecture.rs`
//! checks that no import goes up).
//! - [`cli`]: the subcommands; [`app`]: building the services, router and layers, `serve`
//!   with an injected shutdown, background tasks.
//! - [`http`]: the endpoints, one router per area, and the extractors; handlers take the
//!   services they need from [`state::AppState`] through `FromRef`.
//! - [`socket`]: one WebSocket's task (authenticate, then wait for its logout).
//! - [`backplane`]: PostgreSQL LISTEN/NOTIFY between instances: resync, presence, acknowledgements.
//! - [`sessions`]: the sessions service: login, refresh, authentication and every revocation
//!   path ([`sessions::Sessions::publish`]); [`accounts`]: registration.
//! - [`feed`]: the revocation feed's per-instance wake-up source.
//! - [`hub`]: the registry of authenticated sockets and the logout push.
//! - [`limits`], [`password`], [`denylist`], [`tokens`], [`audit`], [`store`] (one facade over
//!   a typed backend each for SQLite and PostgreSQL), [`cluster`] (listener health and
//!   acknowledgements), [`service_credentials`] (the `sk_…` credentials of the app's
//!   other services), [`config`], [`reason`], [`metrics`], [`telemetry`], [`clock`], [`error`].
#![forbid(unsafe_code)]

pub mod accounts;
pub mod app;
pub mod audit;
pub mod backplane;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod denylist;
pub mod error;
pub mod feed;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod password;
pub mod reason;
pub mod service_credentials;
pub mod sessions;
pub mod socket;
pub mod ssf;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tokens;

//! The integration suite on PostgreSQL: every backend-independent module of `tests/api`, each
//! test on its own database, plus the multi-instance tests in `cluster`.

/// The database of this test binary.
pub const BACKEND: helpers::Backend = helpers::Backend::Postgres;

#[allow(dead_code)]
#[path = "../support/answer.rs"]
mod answer;
#[allow(dead_code)]
#[path = "../support/fault_proxy.rs"]
mod fault_proxy;
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../api/pg.rs"]
mod pg;
#[allow(dead_code)]
#[path = "../support/skip.rs"]
mod skip;

#[path = "../api/admin.rs"]
mod admin;
#[path = "../api/auth.rs"]
mod auth;
#[path = "../api/cookies.rs"]
mod cookies;
#[path = "../api/crash.rs"]
mod crash;
#[path = "../api/credentials.rs"]
mod credentials;
#[path = "../api/errors.rs"]
mod errors;
#[path = "../api/faults.rs"]
mod faults;
#[path = "../api/feed.rs"]
mod feed;
#[path = "../api/feed_stream.rs"]
mod feed_stream;
#[path = "../api/hardening.rs"]
mod hardening;
#[path = "../api/jwt.rs"]
mod jwt;
#[path = "../api/keys.rs"]
mod keys;
#[path = "../api/metrics.rs"]
mod metrics;
#[path = "../api/oauth.rs"]
mod oauth;
#[path = "../api/outages.rs"]
mod outages;
#[path = "../api/refresh.rs"]
mod refresh;
#[path = "../api/resource_server.rs"]
mod resource_server;
#[path = "../api/service.rs"]
mod service;
#[path = "../api/ssf.rs"]
mod ssf;
#[path = "../api/ssf_auth.rs"]
mod ssf_auth;
#[allow(dead_code)]
#[path = "../support/ssf_c0.rs"]
mod ssf_c0;
#[path = "../api/ssf_crash.rs"]
mod ssf_crash;
#[path = "../api/ssf_hardening.rs"]
mod ssf_hardening;
#[allow(dead_code)]
#[path = "../support/ssf_receiver.rs"]
mod ssf_receiver;
#[path = "../api/throttling.rs"]
mod throttling;
#[path = "../api/upgrade.rs"]
mod upgrade;
#[path = "../api/ws.rs"]
mod ws;

mod cluster;
mod feed_cluster;
mod network;
mod rolling;

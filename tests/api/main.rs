//! Integration tests: the real server over real sockets and a real SQLite file. The same
//! modules (all but `cli`) also run on PostgreSQL in the `postgres` test binary.

/// The database of this test binary.
pub const BACKEND: helpers::Backend = helpers::Backend::Sqlite;

#[allow(dead_code)]
#[path = "../support/answer.rs"]
mod answer;
#[allow(dead_code)]
#[path = "../support/fault_proxy.rs"]
mod fault_proxy;
#[allow(dead_code)]
mod helpers;
#[allow(dead_code)]
mod pg;
#[allow(dead_code)]
#[path = "../support/skip.rs"]
mod skip;
#[allow(dead_code)]
#[path = "../support/ssf_c0.rs"]
mod ssf_c0;
#[allow(dead_code)]
#[path = "../support/ssf_receiver.rs"]
mod ssf_receiver;

mod admin;
mod auth;
mod cli;
mod cookies;
mod crash;
mod credentials;
mod deadlines;
mod errors;
mod faults;
mod feed;
mod feed_stream;
mod hardening;
mod jwt;
mod keys;
mod metrics;
mod oauth;
mod outages;
mod refresh;
mod resource_server;
mod service;
mod ssf;
mod ssf_auth;
mod ssf_crash;
mod ssf_hardening;
mod throttling;
mod upgrade;
mod ws;

//! The load-shaped checks of `tests/load` (SECURITY.md G-2, G-6) on PostgreSQL, a binary of its
//! own for the same reason.

/// The database of this test binary.
pub const BACKEND: helpers::Backend = helpers::Backend::Postgres;

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../api/pg.rs"]
mod pg;
#[allow(dead_code)]
#[path = "../support/skip.rs"]
mod skip;
#[allow(dead_code)]
#[path = "../support/ssf_receiver.rs"]
mod ssf_receiver;

#[path = "../load/ssf.rs"]
mod ssf;

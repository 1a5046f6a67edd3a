//! Load-shaped checks of the red team's findings (SECURITY.md G-2, G-6), on SQLite: each compares
//! refresh throughput with and without what the attack stored, in alternating rounds. A binary
//! of its own, so nothing else runs while it measures (cargo runs test binaries one at a time),
//! and its tests hold one lock. The same checks run on PostgreSQL in `load_pg`.

/// The database of this test binary.
pub const BACKEND: helpers::Backend = helpers::Backend::Sqlite;

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

mod ssf;

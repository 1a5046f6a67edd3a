//! Test-only fault injection at exact points of the store's transactions (SECURITY.md R6, RT4).
//!
//! Compiled only with the `test-util` feature (the integration tests enable it through their
//! dev-dependency on this package) or in unit tests: a release build has no failpoints, no
//! arming API and no check on any path. Each point is marked in the code with
//! `fail_at!` (defined in `store/mod.rs`), which expands to nothing without the feature.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// In a refresh rotation, after the presented token is marked rotated and before its successor
/// is inserted.
pub const ROTATE_AFTER_MARK: &str = "rotate_after_mark";
/// In a revocation, after the ended sessions are appended to the revocation log (and, on
/// PostgreSQL, before the `NOTIFY`): the whole revocation must roll back, log entries included.
pub const REVOKE_AFTER_LOG: &str = "revoke_after_log";
/// [`PgStore::revocations_in`](super::PgStore::revocations_in): the backplane's read of notified
/// ranges of the revocation log (a pool timeout or a refused `SELECT` in production).
pub const REVOCATIONS_READ: &str = "revocations_read";
/// [`Store::revocations_after`](super::Store::revocations_after): a feed follower's read of the
/// log (counted: one commit must cost one read however many followers wait, SECURITY.md G-5).
pub const FEED_READ: &str = "feed_read";

/// The armed failpoints of a store, shared by its clones, each armed until disarmed or for a
/// number of hits, and how often each point was reached. While nothing is armed a check costs
/// one relaxed atomic load and a count.
#[derive(Clone, Default)]
pub(crate) struct Failpoints(Arc<Inner>);

#[derive(Default)]
struct Inner {
    any_armed: AtomicBool,
    /// name → hits left (`None`: until disarmed).
    armed: Mutex<Vec<(&'static str, Option<u32>)>>,
    /// name → times reached, armed or not (tests count the database reads a path makes).
    passes: Mutex<Vec<(&'static str, u64)>>,
}

/// How a failpoint is armed.
pub(crate) enum Arm {
    Off,
    UntilDisarmed,
    Times(u32),
}

impl Failpoints {
    /// Counts a pass at `name`; whether it is armed (and, if armed for a number of hits, uses
    /// one): the code at that point then fails with `StoreError::Injected`.
    pub(crate) fn hit(&self, name: &'static str) -> bool {
        {
            let mut passes = self.0.passes.lock().unwrap_or_else(|p| p.into_inner());
            match passes.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => *count += 1,
                None => passes.push((name, 1)),
            }
        }
        if !self.0.any_armed.load(Ordering::Relaxed) {
            return false;
        }
        let mut armed = self.0.armed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = armed.iter().position(|(n, _)| *n == name) else { return false };
        if let Some(left) = &mut armed[i].1 {
            *left -= 1;
            if *left == 0 {
                armed.swap_remove(i);
                self.0.any_armed.store(!armed.is_empty(), Ordering::Relaxed);
            }
        }
        true
    }

    pub(crate) fn set(&self, name: &'static str, arm: Arm) {
        let mut armed = self.0.armed.lock().unwrap_or_else(|p| p.into_inner());
        armed.retain(|(n, _)| *n != name);
        match arm {
            Arm::Off | Arm::Times(0) => {}
            Arm::UntilDisarmed => armed.push((name, None)),
            Arm::Times(n) => armed.push((name, Some(n))),
        }
        self.0.any_armed.store(!armed.is_empty(), Ordering::Relaxed);
    }

    pub(crate) fn is_armed(&self, name: &'static str) -> bool {
        self.0.armed.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|(n, _)| *n == name)
    }

    pub(crate) fn passes(&self, name: &'static str) -> u64 {
        let passes = self.0.passes.lock().unwrap_or_else(|p| p.into_inner());
        passes.iter().find(|(n, _)| *n == name).map_or(0, |(_, c)| *c)
    }
}

//! The in-memory denylist of revoked session ids: how a revoked session's still-unexpired
//! access token is refused at once with no database read on the hot path, and how a socket
//! that authenticates after its session ended learns why.
//!
//! Invariant: an entry lives until every access token of its session has expired (the
//! session's latest `exp` plus the verification leeway:
//! [`revocation_until`](crate::store::revocation_until), the rule the revocation feed reports as
//! `until`), then is pruned, so memory stays bounded by the sessions revoked within one
//! access-token lifetime. It is rebuilt from the
//! database at startup before `/readyz` turns 200.

use std::sync::Arc;

use dashmap::DashMap;

use crate::clock::Millis;

/// Why and when a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub reason: Arc<str>,
    pub at: Millis,
}

#[derive(Clone, Default)]
pub struct Denylist {
    /// session id → (keep until, why it ended).
    entries: Arc<DashMap<String, (Millis, Ended)>>,
}

impl Denylist {
    /// Denies `session_id` until its tokens (latest `exp` = `access_expires_at`) are dead.
    pub fn insert(&self, session_id: &str, access_expires_at: Millis, reason: &str, at: Millis) {
        let until = crate::store::revocation_until(access_expires_at);
        self.entries
            .entry(session_id.to_string())
            .and_modify(|(u, _)| *u = (*u).max(until))
            .or_insert((until, Ended { reason: reason.into(), at }));
    }

    pub fn contains(&self, session_id: &str) -> bool {
        self.entries.contains_key(session_id)
    }

    /// Why the session ended, if it is denied.
    pub fn get(&self, session_id: &str) -> Option<Ended> {
        self.entries.get(session_id).map(|e| e.1.clone())
    }

    /// Drops entries whose every token has expired; returns how many were dropped.
    pub fn prune(&self, now: Millis) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, (until, _)| *until > now);
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

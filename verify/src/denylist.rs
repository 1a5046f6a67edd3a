//! The local denylist: session id → `until`, filled by the revocation feed, read on every
//! request, so a revoked session's still-unexpired token is refused with no call to sessiond.
//!
//! The `until` rule (docs/API.md §9): `until` is the instant after which no access token of the
//! session can still be valid (its last token's `exp` plus the leeway). A token is accepted
//! while `exp + leeway >= now` in whole seconds, so an entry must deny while `now <= until`
//! in the same whole seconds (`until` rounded up), and is useless after: it is then ignored on
//! lookup and dropped by `Denylist::prune`. Both sides compare against the same local clock,
//! so clock skew between sessiond and this process cannot open a gap.
//!
//! Memory is bounded by `max` entries. When it is full even after pruning, the entry with the
//! nearest `until` is dropped and its `until` is remembered as an *overflow watermark*: until
//! that instant the list may be missing a live revocation, so `Denylist::overflowed` is true
//! and the verifier fails closed exactly as when the feed is down. It never silently forgets.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Default bound on entries (~150 bytes each): far more sessions than are revoked within one
/// access-token lifetime (5 min + leeway) in any deployment sessiond targets.
pub const DEFAULT_MAX_REVOCATIONS: usize = 1_000_000;

/// What [`Denylist::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// A new entry, or a later `until` for a known one.
    Stored,
    /// `until` has already passed: nothing to deny.
    Expired,
}

pub(crate) struct Denylist {
    inner: RwLock<Inner>,
}

struct Inner {
    /// session id → `until` in whole seconds, rounded up.
    by_session: HashMap<Arc<str>, i64>,
    /// The same entries ordered by `until`: pruning and eviction take from the front.
    by_until: BTreeSet<(i64, Arc<str>)>,
    max: usize,
    /// The latest `until` of an entry dropped because the list was full (`i64::MIN`: none).
    overflow_until: i64,
}

/// `until` in whole seconds, rounded up (a fractional `until` still covers its last second).
fn ceil_secs(ms: i64) -> i64 {
    ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0)
}

impl Denylist {
    pub(crate) fn new(max: usize) -> Self {
        let inner =
            Inner { by_session: HashMap::new(), by_until: BTreeSet::new(), max: max.max(1), overflow_until: i64::MIN };
        Denylist { inner: RwLock::new(inner) }
    }

    /// Denies `session_id` until `until_ms` (ms since the epoch); a known session keeps the
    /// later of its two `until`s.
    pub(crate) fn insert(&self, session_id: &str, until_ms: i64, now_secs: i64) -> Inserted {
        let until = ceil_secs(until_ms);
        if until < now_secs {
            return Inserted::Expired;
        }
        let mut inner = self.write();
        if let Some(&old) = inner.by_session.get(session_id) {
            if until > old {
                let key: Arc<str> = session_id.into();
                inner.by_until.remove(&(old, key.clone()));
                inner.by_until.insert((until, key.clone()));
                inner.by_session.insert(key, until);
            }
            return Inserted::Stored;
        }
        if inner.by_session.len() >= inner.max {
            inner.prune(now_secs);
        }
        if inner.by_session.len() >= inner.max {
            // Full of live entries: drop the one that stops mattering first (maybe this one).
            let first = inner.by_until.first().cloned();
            match first {
                Some((first_until, first_id)) if first_until < until => {
                    inner.by_until.remove(&(first_until, first_id.clone()));
                    inner.by_session.remove(&first_id);
                    inner.overflow_until = inner.overflow_until.max(first_until);
                }
                _ => {
                    inner.overflow_until = inner.overflow_until.max(until);
                    return Inserted::Stored;
                }
            }
        }
        let key: Arc<str> = session_id.into();
        inner.by_until.insert((until, key.clone()));
        inner.by_session.insert(key, until);
        Inserted::Stored
    }

    /// Whether `session_id` is revoked and its tokens may still be valid at `now_secs`.
    pub(crate) fn is_revoked(&self, session_id: &str, now_secs: i64) -> bool {
        self.read().by_session.get(session_id).is_some_and(|&until| now_secs <= until)
    }

    /// Whether an overflow may have dropped a revocation that still matters at `now_secs`.
    pub(crate) fn overflowed(&self, now_secs: i64) -> bool {
        now_secs <= self.read().overflow_until
    }

    /// Drops the entries whose `until` has passed; returns how many.
    pub(crate) fn prune(&self, now_secs: i64) -> usize {
        self.write().prune(now_secs)
    }

    pub(crate) fn len(&self) -> usize {
        self.read().by_session.len()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn prune(&mut self, now_secs: i64) -> usize {
        let mut dropped = 0;
        while let Some((until, id)) = self.by_until.first().cloned() {
            if until >= now_secs {
                break;
            }
            self.by_until.remove(&(until, id.clone()));
            self.by_session.remove(&id);
            dropped += 1;
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn an_entry_denies_through_its_until_second_then_is_ignored_and_pruned() {
        let list = Denylist::new(10);
        assert_eq!(list.insert("s1", (NOW + 60) * 1000, NOW), Inserted::Stored);
        assert!(list.is_revoked("s1", NOW));
        assert!(list.is_revoked("s1", NOW + 60), "a token with exp + leeway = until is still accepted then");
        assert!(!list.is_revoked("s1", NOW + 61));
        assert!(!list.is_revoked("s2", NOW));
        assert_eq!(list.prune(NOW + 60), 0);
        assert_eq!(list.prune(NOW + 61), 1);
        assert_eq!(list.len(), 0);
    }

    #[test]
    fn a_fractional_until_covers_its_last_second() {
        let list = Denylist::new(10);
        list.insert("s1", (NOW + 60) * 1000 + 1, NOW);
        assert!(list.is_revoked("s1", NOW + 61));
        assert!(!list.is_revoked("s1", NOW + 62));
    }

    #[test]
    fn a_past_until_is_not_stored_and_a_later_until_extends() {
        let list = Denylist::new(10);
        assert_eq!(list.insert("old", (NOW - 1) * 1000, NOW), Inserted::Expired);
        assert_eq!(list.len(), 0);
        list.insert("s1", (NOW + 10) * 1000, NOW);
        list.insert("s1", (NOW + 100) * 1000, NOW);
        list.insert("s1", (NOW + 50) * 1000, NOW);
        assert!(list.is_revoked("s1", NOW + 100));
        assert_eq!(list.prune(NOW + 50), 0);
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn a_full_list_prunes_first_then_fails_closed_until_the_dropped_entry_is_useless() {
        let list = Denylist::new(2);
        list.insert("a", (NOW + 5) * 1000, NOW);
        list.insert("b", (NOW + 100) * 1000, NOW);
        // Pruning makes room: "a" is useless at NOW + 6.
        list.insert("c", (NOW + 100) * 1000, NOW + 6);
        assert!(!list.overflowed(NOW + 6));
        assert_eq!(list.len(), 2);
        // Full of live entries: the nearest `until` is dropped and remembered.
        list.insert("d", (NOW + 200) * 1000, NOW + 6);
        assert_eq!(list.len(), 2);
        assert!(list.is_revoked("d", NOW + 6));
        assert!(list.overflowed(NOW + 100));
        assert!(!list.overflowed(NOW + 101));
        // A new entry that would itself be dropped first is remembered the same way.
        list.insert("e", (NOW + 50) * 1000, NOW + 6);
        assert!(!list.is_revoked("e", NOW + 6));
        assert!(list.is_revoked("c", NOW + 6) && list.is_revoked("d", NOW + 6));
        assert!(list.overflowed(NOW + 100));
    }
}

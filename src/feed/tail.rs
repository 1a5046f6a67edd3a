//! The newest revocation log entries, read once per commit for every follower at the head
//! (SECURITY.md G-5).
//!
//! Without it every follower woken by a commit read the log itself: with a few thousand long
//! polls parked, one revocation cost a few thousand reads (hundreds of ms of server CPU) and
//! delayed every other follower. [`FeedTail::after`] answers a follower at (or near) the head
//! from memory, and when the entries it holds are older than the commit the follower was woken
//! by, one caller reads what is new (the others wait for that read, then take its result).
//!
//! It only ever holds what the log says, in cursor order: a contiguous run of entries, the
//! newest [`KEEP`]. A read after the newest entry held returns every entry committed after it
//! (cursors follow commit order, `Store::revocations_after`), so a follower served from here
//! sees exactly what it would have read itself. A follower behind the run, or ahead of it (a
//! cursor from a snapshot this instance has not caught up with yet), reads the log directly.

use std::collections::VecDeque;

use tokio::sync::Mutex;

use crate::store::{LogEntry, Store, StoreResult};

/// Entries held (the newest), enough for every follower at the head after a large revocation.
pub const KEEP: usize = 4096;
/// Entries one read of what is new takes (the feed's largest page).
const READ: i64 = 1000;
/// The run is read again at least this often by a follower at its newest entry, signal or not
/// (the commits of other instances reach the signal through the PostgreSQL listener; while it
/// is down, a follower that asks still sees them within this long).
const FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Cheap to clone; clones share the entries.
#[derive(Clone)]
pub struct FeedTail(std::sync::Arc<Inner>);

struct Inner {
    store: Store,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Whether `start`/`entries` describe the log yet (the first use reads the head).
    known: bool,
    /// The cursor just before the first entry held: the run covers (`start`, newest].
    start: i64,
    entries: VecDeque<LogEntry>,
    /// The commit signal's value read before the last read of the log began: every commit
    /// signalled up to it is in the run (when `complete`).
    fresh_for: u64,
    /// The last read found everything there was (fewer than a page).
    complete: bool,
    /// When the last read of what is new began.
    read_at: Option<tokio::time::Instant>,
}

impl State {
    /// The newest cursor the run covers.
    fn newest(&self) -> i64 {
        self.entries.back().map_or(self.start, |e| e.cursor)
    }

    /// The entries after `cursor` held, at most `limit`; `None` when `cursor` is outside the run.
    fn after(&self, cursor: i64, limit: usize) -> Option<Vec<LogEntry>> {
        if !self.known || cursor < self.start || cursor > self.newest() {
            return None;
        }
        let from = self.entries.partition_point(|e| e.cursor <= cursor);
        Some(self.entries.iter().skip(from).take(limit).cloned().collect())
    }

    fn append(&mut self, read: Vec<LogEntry>) {
        for e in read {
            if e.cursor > self.newest() {
                self.entries.push_back(e);
            }
        }
        while self.entries.len() > KEEP {
            if let Some(e) = self.entries.pop_front() {
                self.start = e.cursor;
            }
        }
    }
}

impl FeedTail {
    pub fn new(store: Store) -> FeedTail {
        FeedTail(std::sync::Arc::new(Inner { store, state: Mutex::default() }))
    }

    /// A follower's handler read the log's `head`: if it is older than what is held (the
    /// database was restored from an older backup), what is held is forgotten.
    pub async fn saw_head(&self, head: i64) {
        let mut state = self.0.state.lock().await;
        if state.known && head < state.newest() {
            tracing::warn!(head, held = state.newest(), "the revocation log moved back (a restored database?)");
            *state = State::default();
        }
    }

    /// The entries after `cursor`, oldest first, at most `limit`, as the log holds them for a
    /// follower that has seen the commit signal at `seen` (the value of its
    /// [`FeedSignal::subscribe`](super::FeedSignal::subscribe) receiver when it asks, or later):
    /// every entry committed before that signal is included. Empty when there is none.
    pub async fn after(&self, cursor: i64, limit: i64, seen: u64) -> StoreResult<Vec<LogEntry>> {
        let limit_n = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
        let mut state = self.0.state.lock().await;
        if !state.known {
            state.start = self.0.store.revocation_head().await?;
            state.known = true;
        }
        match state.after(cursor, limit_n) {
            // Entries exist after the cursor: they are committed, whatever came since.
            Some(found) if !found.is_empty() => return Ok(found),
            // At the newest entry held: is the run up to date for this follower?
            Some(_) if cursor == state.newest() => {
                let recent = state.read_at.is_some_and(|t| t.elapsed() < FRESH);
                if !(state.complete && state.fresh_for >= seen && recent) {
                    let newest = state.newest();
                    state.read_at = Some(tokio::time::Instant::now());
                    // The log never moves back, unless the database was restored from an older
                    // backup: then what is held may be gone. Start over from the log.
                    let head = self.0.store.revocation_head().await?;
                    if head < newest {
                        *state = State::default();
                        drop(state);
                        return self.0.store.revocations_after(cursor, limit).await;
                    }
                    let read = self.0.store.revocations_after(newest, READ).await?;
                    state.complete = (read.len() as i64) < READ;
                    state.fresh_for = state.fresh_for.max(seen);
                    state.append(read);
                }
                if let Some(found) = state.after(cursor, limit_n) {
                    return Ok(found);
                }
            }
            _ => {}
        }
        drop(state);
        // Behind the run (or ahead of it): this follower's own read.
        self.0.store.revocations_after(cursor, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cursor: i64) -> LogEntry {
        LogEntry {
            cursor,
            session_id: format!("s{cursor}"),
            user_id: "u".into(),
            reason: "logout".into(),
            at: 0,
            until: 1,
        }
    }

    #[test]
    fn the_run_answers_inside_it_and_forgets_the_oldest() {
        let mut s = State { known: true, start: 10, ..State::default() };
        assert_eq!(s.after(10, 5).unwrap().len(), 0);
        assert!(s.after(9, 5).is_none(), "behind the run");
        assert!(s.after(11, 5).is_none(), "ahead of it");
        s.append((11..=20).map(entry).collect());
        let got: Vec<i64> = s.after(12, 3).unwrap().iter().map(|e| e.cursor).collect();
        assert_eq!(got, [13, 14, 15]);
        s.append((11..=21).map(entry).collect());
        assert_eq!(s.newest(), 21, "no entry twice");
        s.append((22..=(21 + KEEP as i64)).map(entry).collect());
        assert_eq!(s.entries.len(), KEEP);
        assert_eq!(s.start, 21);
        assert!(s.after(20, 5).is_none(), "forgotten: read directly");
        assert_eq!(s.after(21, 1).unwrap()[0].cursor, 22);
    }
}

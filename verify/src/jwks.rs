//! The JWKS cache: sessiond's public keys, fetched from `{issuer}/.well-known/jwks.json`, kept
//! for as long as its `Cache-Control: max-age` allows (docs/API.md §7), refetched early when a token
//! names an unknown `kid` (a key rotated in), at most once every
//! [`UNKNOWN_KID_REFETCH_INTERVAL`], and kept when a fetch fails.
//!
//! Why each rule: sessiond publishes a new key at least one max-age before it signs with it, so
//! the periodic refresh alone normally suffices; the unknown-kid refetch covers a `keys rotate
//! --now`; the rate limit means a flood of tokens with random kids costs sessiond at most one
//! request per 30 s; and serving the last good keyset means a sessiond outage does not turn
//! every valid token into a 401.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, AGE, CACHE_CONTROL, CONTENT_LENGTH};

use crate::clock::{Changes, Clock};
use crate::keys::{KeyError, KeySet};

/// Where sessiond publishes its keys, under the issuer.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Lifetime of a fetched keyset without `Cache-Control: max-age` (docs/API.md §7's upper bound).
pub const JWKS_DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Longest lifetime honoured, whatever `max-age` says (docs/API.md §7: ≤ 5 min).
pub const JWKS_MAX_TTL: Duration = Duration::from_secs(300);
/// Shortest lifetime honoured (`max-age=0`, `no-cache`, `no-store`): sessiond is not asked more
/// often than this by the periodic refresh.
pub const JWKS_MIN_TTL: Duration = Duration::from_secs(30);
/// The unknown-kid refetch happens at most this often (docs/API.md §12).
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch, the next periodic attempt comes this much later.
pub const JWKS_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// The same while no fetch has ever succeeded: until then no token can be verified, so a
/// sessiond that starts a moment after this process is picked up quickly.
pub const JWKS_RETRY_BEFORE_FIRST: Duration = Duration::from_secs(1);
/// One fetch, connection to last byte.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read (sessiond's is ~0.5 KiB).
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// Why a fetch did not replace the keyset (for logs).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("answered {0}")]
    Status(u16),
    #[error("larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("no Ed25519 key in the JWKS")]
    Empty,
}

/// When to fetch next, in [`Clock::now`] time.
#[derive(Default)]
struct Schedule {
    /// The periodic refresh is due at this instant.
    due_at: Duration,
    /// The last fetch attempt, successful or not (the unknown-kid rate limit counts from it).
    last_fetch_at: Option<Duration>,
}

pub(crate) struct JwksCache {
    url: String,
    http: reqwest::Client,
    clock: Clock,
    /// The last good keyset; replaced whole.
    current: RwLock<Arc<KeySet>>,
    /// Bumped on every replacement, so a caller can tell whether keys changed since it looked.
    version: AtomicU64,
    /// Whether any fetch has succeeded.
    loaded: AtomicBool,
    schedule: Mutex<Schedule>,
    /// One fetch at a time: concurrent unknown-kid refetches wait for it and share its result.
    /// (A tokio mutex: it is held across the request.)
    fetching: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    failures: AtomicU64,
    changes: Changes,
}

impl JwksCache {
    pub(crate) fn new(issuer_base: &str, http: reqwest::Client, clock: Clock, changes: Changes) -> Self {
        JwksCache {
            url: format!("{issuer_base}{JWKS_PATH}"),
            http,
            clock,
            current: RwLock::default(),
            version: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            schedule: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            changes,
        }
    }

    /// The current keyset and its version.
    pub(crate) fn keyset(&self) -> (Arc<KeySet>, u64) {
        let set = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        (set, self.version.load(Ordering::Acquire))
    }

    /// Whether a fetch has ever succeeded.
    pub(crate) fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// (fetch attempts, failed attempts) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.fetches.load(Ordering::Relaxed), self.failures.load(Ordering::Relaxed))
    }

    /// Time left until the periodic refresh is due (zero when due or never fetched).
    pub(crate) fn due_in(&self) -> Duration {
        let due_at = self.schedule.lock().unwrap_or_else(|p| p.into_inner()).due_at;
        due_at.saturating_sub(self.clock.now())
    }

    /// The periodic refresh, if due.
    pub(crate) async fn refresh_if_due(&self) {
        let _one = self.fetching.lock().await;
        if self.due_in().is_zero() {
            self.fetch().await;
        }
    }

    /// After a token named a kid missing from keyset `seen_version`: refetches, unless another
    /// fetch happened within [`UNKNOWN_KID_REFETCH_INTERVAL`]. True when the keyset changed
    /// since `seen_version` (by this fetch or a concurrent one), so verifying again may help.
    pub(crate) async fn refetch_for_unknown_kid(&self, seen_version: u64) -> bool {
        let changed = || self.version.load(Ordering::Acquire) != seen_version;
        if changed() {
            return true;
        }
        let _one = self.fetching.lock().await;
        if changed() {
            return true;
        }
        let last = self.schedule.lock().unwrap_or_else(|p| p.into_inner()).last_fetch_at;
        if last.is_some_and(|at| self.clock.now().saturating_sub(at) < UNKNOWN_KID_REFETCH_INTERVAL) {
            return false;
        }
        tracing::debug!(url = %self.url, "token with an unknown kid: refetching the JWKS");
        self.fetch().await;
        changed()
    }

    /// One fetch; the caller holds `fetching`. Success replaces the keyset and schedules the
    /// next refresh per `Cache-Control`; failure keeps the last good keyset.
    async fn fetch(&self) {
        let started = self.clock.now();
        self.fetches.fetch_add(1, Ordering::Relaxed);
        self.schedule.lock().unwrap_or_else(|p| p.into_inner()).last_fetch_at = Some(started);
        let (due_in, result) = match self.get().await {
            Ok((set, ttl)) => {
                let kids = set.len();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                self.version.fetch_add(1, Ordering::AcqRel);
                self.loaded.store(true, Ordering::Release);
                (ttl, Ok(kids))
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let retry = if self.loaded() { JWKS_RETRY_AFTER_FAILURE } else { JWKS_RETRY_BEFORE_FIRST };
                (retry, Err(e))
            }
        };
        self.schedule.lock().unwrap_or_else(|p| p.into_inner()).due_at = started + due_in;
        self.changes.bump();
        match result {
            Ok(kids) => tracing::debug!(url = %self.url, kids, refresh_in = ?due_in, "JWKS fetched"),
            Err(e) => tracing::warn!(
                url = %self.url, error = %e, loaded = self.loaded(),
                "JWKS fetch failed; keeping the last good keyset"
            ),
        }
    }

    /// GET the document; the keyset and how long it may be kept.
    async fn get(&self) -> Result<(KeySet, Duration), JwksError> {
        let mut res =
            self.http.get(&self.url).header(ACCEPT, "application/json").timeout(JWKS_FETCH_TIMEOUT).send().await?;
        if !res.status().is_success() {
            return Err(JwksError::Status(res.status().as_u16()));
        }
        let ttl = ttl_of(res.headers());
        let declared = res.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_JWKS_BYTES) {
            return Err(JwksError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let set = KeySet::from_jwks(&body)?;
        if set.is_empty() {
            return Err(JwksError::Empty);
        }
        Ok((set, ttl))
    }
}

/// How long a response may be kept (RFC 9111 §5.2.2, §4.2.3): `max-age` less `Age`, within
/// [`JWKS_MIN_TTL`]..=[`JWKS_MAX_TTL`]; `no-store`/`no-cache` mean the minimum; no `max-age`
/// means [`JWKS_DEFAULT_TTL`].
fn ttl_of(headers: &HeaderMap) -> Duration {
    let header = |name| headers.get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok());
    let mut max_age = None;
    for directive in header(CACHE_CONTROL).unwrap_or("").split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return JWKS_MIN_TTL;
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            max_age = v.trim_matches('"').parse::<u64>().ok();
        }
    }
    let Some(max_age) = max_age else { return JWKS_DEFAULT_TTL };
    let age = header(AGE).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
    Duration::from_secs(max_age.saturating_sub(age)).clamp(JWKS_MIN_TTL, JWKS_MAX_TTL)
}

#[cfg(test)]
#[path = "jwks_tests.rs"]
mod tests;

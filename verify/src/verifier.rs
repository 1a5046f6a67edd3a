//! [`Verifier`]: the handle a resource server holds. It owns the JWKS cache, the feed follower
//! and the denylist, runs them in the background, and answers one question per request:
//! may this token pass, and if not, which problem does the client get?
//!
//! The order of checks: the feed's health first (fail closed: 503 `unavailable`), then the
//! offline verification with the cached keys (refetching once on an unknown `kid`), then the
//! denylist (401 `session_revoked`). Nothing here calls sessiond on the request path except the
//! rate-limited unknown-kid refetch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::bearer::bearer_token;
use crate::cache::VerifiedCache;
use crate::clock::{Changes, Clock};
use crate::denylist::{Denylist, DEFAULT_MAX_REVOCATIONS};
use crate::feed::{Feed, Timing};
use crate::jwks::JwksCache;
use crate::problem::Rejection;
use crate::token::{Claims, Policy};

/// Default bound on feed downtime before requests fail closed (docs/API.md §12).
pub const DEFAULT_STALENESS: Duration = Duration::from_secs(10);
/// The audience sessiond puts in its tokens unless configured otherwise (docs/API.md §1).
pub const DEFAULT_AUDIENCE: &str = "sessiond";
/// How often expired denylist entries are dropped (lookups ignore them already).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(30);
/// TCP connect timeout of the default HTTP client.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why [`VerifierBuilder::build`] refused its settings.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The issuer is not an absolute `http(s)://` URL without query or fragment.
    #[error("the issuer must be an http(s) URL such as https://auth.example.com: {0}")]
    InvalidIssuer(String),
    /// No service credential: the revocation feed cannot be followed without one.
    #[error("a service credential (sk_…, scope revocations:read) is required")]
    MissingServiceKey,
    /// The service credential does not look like one (`sk_` and visible ASCII).
    #[error("the service credential must start with sk_ and be printable ASCII")]
    InvalidServiceKey,
    /// The staleness bound is zero.
    #[error("the staleness bound must be positive")]
    InvalidStaleness,
    /// The default HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Settings of a [`Verifier`]; see [`Verifier::builder`].
#[must_use]
pub struct VerifierBuilder {
    issuer: String,
    audience: String,
    service_key: Option<String>,
    staleness: Duration,
    fail_open: bool,
    http: Option<reqwest::Client>,
    max_revocations: usize,
    clock: Clock,
    timing: Timing,
}

impl std::fmt::Debug for VerifierBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierBuilder")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("service_key", &self.service_key.as_ref().map(|_| "sk_…"))
            .field("staleness", &self.staleness)
            .field("fail_open", &self.fail_open)
            .field("max_revocations", &self.max_revocations)
            .finish_non_exhaustive()
    }
}

impl VerifierBuilder {
    /// The `aud` tokens must carry (default `sessiond`, sessiond's default `--audience`).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// The service credential (`sk_…`) with scope `revocations:read`, from
    /// `sessiond service add NAME --scope revocations:read`. Required.
    pub fn service_key(mut self, key: impl Into<String>) -> Self {
        self.service_key = Some(key.into());
        self
    }

    /// How long the feed may be down (no byte on a synced stream) before requests fail closed
    /// and readiness turns false. Default 10 s; sessiond sends a keep-alive at least every 5 s.
    pub fn staleness(mut self, bound: Duration) -> Self {
        self.staleness = bound;
        self
    }

    /// `true`: while the feed is down, keep serving with the denylist as it is (a revocation
    /// made meanwhile is missed until the feed resumes) and stay ready. Default `false`.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// The HTTP client for the JWKS and the feed (to choose TLS roots, proxies…). It must not
    /// have a total request timeout: the feed is one long request.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Bound on denylist entries (default [`DEFAULT_MAX_REVOCATIONS`]). Past it the verifier
    /// fails closed until the dropped entries' `until` has passed (see the crate docs).
    pub fn max_revocations(mut self, max: usize) -> Self {
        self.max_revocations = max;
        self
    }

    #[cfg(test)]
    pub(crate) fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    #[cfg(test)]
    pub(crate) fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Checks the settings. Nothing runs until [`Verifier::start`].
    pub fn build(self) -> Result<Verifier, BuildError> {
        let url = reqwest::Url::parse(&self.issuer).map_err(|e| BuildError::InvalidIssuer(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            return Err(BuildError::InvalidIssuer("not an http(s) URL".into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(BuildError::InvalidIssuer("a query or fragment".into()));
        }
        let key = self.service_key.ok_or(BuildError::MissingServiceKey)?;
        if !key.starts_with("sk_") || key.len() > 1024 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BuildError::InvalidServiceKey);
        }
        if self.staleness.is_zero() {
            return Err(BuildError::InvalidStaleness);
        }
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .connect_timeout(HTTP_CONNECT_TIMEOUT)
                .user_agent(concat!("sessiond-verify/", env!("CARGO_PKG_VERSION")))
                .build()?,
        };
        // Paths go under the issuer as sessiond spells it; `iss` is compared exactly.
        let base = self.issuer.trim_end_matches('/');
        let silence = self.timing.silence.min(self.staleness);
        let changes = Changes::default();
        let inner = Inner {
            policy: Policy::new(self.issuer.clone(), self.audience),
            cache: VerifiedCache::new(),
            jwks: JwksCache::new(base, http.clone(), self.clock.clone(), changes.clone()),
            feed: Feed::new(base, &key, http, self.clock.clone(), self.timing, changes.clone()),
            changes,
            denylist: Denylist::new(self.max_revocations),
            clock: self.clock,
            staleness: self.staleness,
            silence,
            fail_open: self.fail_open,
            started: AtomicBool::new(false),
            shutdown: tokio::sync::watch::Sender::new(false),
        };
        let inner = Arc::new(inner);
        Ok(Verifier { inner: inner.clone(), _last_handle: Arc::new(LastHandle(inner)) })
    }
}

struct Inner {
    policy: Policy,
    cache: VerifiedCache,
    jwks: JwksCache,
    feed: Feed,
    denylist: Denylist,
    /// Bumped by the JWKS cache and the feed on every change (tests wait on it).
    #[cfg_attr(not(test), allow(dead_code))]
    changes: Changes,
    clock: Clock,
    staleness: Duration,
    /// The feed's silence timeout: at most the staleness bound.
    silence: Duration,
    fail_open: bool,
    started: AtomicBool,
    /// `true` stops the background tasks.
    shutdown: tokio::sync::watch::Sender<bool>,
}

/// Dropped with the last [`Verifier`] clone: stops the background tasks (which hold `Inner`
/// themselves, so `Inner` alone would never be dropped while they run).
struct LastHandle(Arc<Inner>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
    }
}

/// Verifies sessiond's access tokens offline and refuses revoked sessions at once.
///
/// Cheap to clone (clones share everything); put it in your axum state. Build it with
/// [`Verifier::builder`], then call [`Verifier::start`] inside a tokio runtime.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
    _last_handle: Arc<LastHandle>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("issuer", &self.inner.policy.issuer()).finish_non_exhaustive()
    }
}

/// A snapshot of a [`Verifier`]'s state, for metrics and health pages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// What [`Verifier::is_ready`] says.
    pub ready: bool,
    /// The first `synced` has arrived (the denylist was complete once).
    pub synced: bool,
    /// A feed stream is open now.
    pub feed_connected: bool,
    /// Time since the last byte of a synced feed stream (`None`: never synced).
    pub since_last_byte: Option<Duration>,
    /// The feed cursor to resume from.
    pub cursor: Option<String>,
    /// Revoked sessions held in the denylist now.
    pub revoked_sessions: usize,
    /// Revocation events received since start.
    pub revocations_received: u64,
    /// Feed connections opened since start.
    pub feed_connects: u64,
    /// Times the feed started over from a snapshot after its cursor was refused.
    pub snapshot_restarts: u64,
    /// Keys in the JWKS cache.
    pub jwks_keys: usize,
    /// JWKS fetch attempts, and how many failed.
    pub jwks_fetches: u64,
    pub jwks_fetch_failures: u64,
}

impl Verifier {
    /// Settings for tokens of `issuer` (sessiond's `--issuer`, e.g. `https://auth.example.com`,
    /// compared exactly with `iss`; the JWKS and the feed are fetched under it).
    pub fn builder(issuer: impl Into<String>) -> VerifierBuilder {
        VerifierBuilder {
            issuer: issuer.into(),
            audience: DEFAULT_AUDIENCE.into(),
            service_key: None,
            staleness: DEFAULT_STALENESS,
            fail_open: false,
            http: None,
            max_revocations: DEFAULT_MAX_REVOCATIONS,
            clock: Clock::default(),
            timing: Timing::default(),
        }
    }

    /// Spawns the background tasks (JWKS refresh, feed follower, denylist pruning) on the
    /// current tokio runtime and returns at once; later calls do nothing. The tasks stop when
    /// the last clone is dropped, or on [`Verifier::shutdown`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(&self) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        spawn_until_shutdown(&self.inner, async move {
            loop {
                tokio::time::sleep(inner.jwks.due_in()).await;
                inner.jwks.refresh_if_due().await;
            }
        });
        let inner = self.inner.clone();
        spawn_until_shutdown(&self.inner, async move { inner.feed.run(&inner.denylist, inner.silence).await });
        let inner = self.inner.clone();
        spawn_until_shutdown(&self.inner, async move {
            loop {
                tokio::time::sleep(PRUNE_INTERVAL).await;
                let dropped = inner.denylist.prune(inner.clock.unix_secs());
                tracing::trace!(dropped, "denylist pruned");
            }
        });
    }

    /// Stops the background tasks (of every clone). Requests then fail closed once the
    /// staleness bound has passed.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Verifies `token` (the bare token, without `Bearer `): fail-closed check, offline
    /// verification, denylist. `Err` is the problem to answer with.
    pub async fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        let inner = &*self.inner;
        if let Some(why) = inner.unavailable(inner.clock.unix_secs()) {
            tracing::debug!(cause = why, "request refused: failing closed");
            return Err(Rejection::Unavailable);
        }
        let (keys, version) = inner.jwks.keyset();
        let mut result = inner.cache.verify(token, &keys, &inner.policy, inner.clock.unix_secs());
        if matches!(&result, Err(e) if e.is_unknown_kid()) && inner.jwks.refetch_for_unknown_kid(version).await {
            let (keys, _) = inner.jwks.keyset();
            result = inner.cache.verify(token, &keys, &inner.policy, inner.clock.unix_secs());
        }
        let claims = result.map_err(|e| {
            if e.is_unknown_kid() && !inner.jwks.loaded() {
                tracing::debug!("request refused: no JWKS fetched yet");
                return Rejection::Unavailable;
            }
            tracing::debug!(reason = %e, "access token refused");
            Rejection::from(e)
        })?;
        if inner.denylist.is_revoked(&claims.sid, inner.clock.unix_secs()) {
            tracing::debug!(session_id = %claims.sid, "access token of a revoked session");
            return Err(Rejection::SessionRevoked);
        }
        Ok(claims)
    }

    /// [`Verifier::verify`] for the raw `Authorization` header value (`None`: no header).
    pub async fn verify_authorization(&self, authorization: Option<&[u8]>) -> Result<Claims, Rejection> {
        let token = bearer_token(authorization)?;
        self.verify(token).await
    }

    /// Ready to serve: the JWKS was fetched, the feed has synced once, and (failing closed)
    /// the feed is not down past the staleness bound nor the denylist overflowed.
    pub fn is_ready(&self) -> bool {
        let inner = &*self.inner;
        inner.jwks.loaded() && inner.unavailable(inner.clock.unix_secs()).is_none()
    }

    /// The state, for metrics and health pages.
    pub fn status(&self) -> Status {
        let inner = &*self.inner;
        let feed = inner.feed.counts();
        let (fetches, failures) = inner.jwks.counts();
        Status {
            ready: self.is_ready(),
            synced: inner.feed.synced_once(),
            feed_connected: inner.feed.connected(),
            since_last_byte: inner.feed.since_live(),
            cursor: inner.feed.cursor(),
            revoked_sessions: inner.denylist.len(),
            revocations_received: feed.received,
            feed_connects: feed.connects,
            snapshot_restarts: feed.snapshot_restarts,
            jwks_keys: inner.jwks.keyset().0.len(),
            jwks_fetches: fetches,
            jwks_fetch_failures: failures,
        }
    }

    /// The feed cursor to resume from (`None` before the first event).
    pub fn cursor(&self) -> Option<String> {
        self.inner.feed.cursor()
    }

    /// The policy tokens are checked against.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    #[cfg(test)]
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    #[cfg(test)]
    pub(crate) fn feed_synced_now(&self) -> bool {
        self.inner.feed.conn_synced()
    }
}

impl Inner {
    /// Why requests must be refused with 503 now, if they must.
    fn unavailable(&self, now_secs: i64) -> Option<&'static str> {
        if !self.feed.synced_once() {
            return Some("the revocation feed has not synced yet");
        }
        if self.fail_open {
            return None;
        }
        if !self.feed.is_live(self.staleness) {
            return Some("the revocation feed is down");
        }
        if self.denylist.overflowed(now_secs) {
            return Some("the denylist overflowed");
        }
        None
    }
}

/// Spawns `task`, cancelled when `inner.shutdown` turns true.
fn spawn_until_shutdown(inner: &Inner, task: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut stop = inner.shutdown.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => {}
            () = task => {}
        }
    });
}

#[cfg(test)]
#[path = "verifier_tests.rs"]
mod tests;

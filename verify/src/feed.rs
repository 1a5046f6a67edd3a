//! The revocation-feed follower (docs/API.md §9): one long-lived `GET {issuer}/v1/revocations/stream`
//! that fills the local denylist, resumed from its last cursor after any disconnect.
//!
//! - First connect (and after a 400 on resume: the cursor is unknown, e.g. sessiond's database
//!   was restored): no `Last-Event-ID`, so sessiond sends a snapshot of every revocation still
//!   in force, then `synced`, then live entries.
//! - Every reconnect: `Last-Event-ID: <last cursor seen>` after an exponential backoff with full
//!   jitter (250 ms doubling to 10 s), so sessiond sends exactly what was missed.
//! - 401/403: the service credential is wrong or lacks `revocations:read`; logged as an error
//!   and retried slowly, since an operator has to act.
//! - Health: bytes received on a connection that has delivered `synced` prove the denylist is
//!   current. `Feed::is_live` is false once none have come for the staleness bound; since
//!   the last byte of a connection always precedes its disconnect, this counts from the earlier
//!   of the two, and a connected but silent stream (no keep-alive for that long) counts as down.

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::StreamExt;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::clock::{Changes, Clock};
use crate::denylist::{Denylist, Inserted};
use crate::sse::guarded;

/// Where sessiond serves the feed, under the issuer.
pub const STREAM_PATH: &str = "/v1/revocations/stream";
/// First reconnect delay bound; doubles per failed attempt.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Largest reconnect delay bound.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Delay after a 401/403: retrying faster would not fix a credential.
pub const AUTH_RETRY: Duration = Duration::from_secs(30);
/// A stream silent this long is cut and reconnected: three missed keep-alives (sessiond sends
/// one at least every 5 s). Never more than the staleness bound.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for the response headers of a connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest session id and cursor accepted from the feed.
pub const MAX_ID_LEN: usize = 256;
/// Largest error body read (to log a 400's `code`).
const MAX_ERROR_BODY: usize = 4096;

/// The follower's delays, shortened by tests.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_cap: Duration,
    pub(crate) auth_retry: Duration,
    pub(crate) silence: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            backoff_base: BACKOFF_BASE,
            backoff_cap: BACKOFF_CAP,
            auth_retry: AUTH_RETRY,
            silence: SILENCE_TIMEOUT,
        }
    }
}

/// What the follower knows; one lock, never held across an `.await`.
#[derive(Default)]
struct State {
    /// The last cursor seen: resume from here.
    cursor: Option<String>,
    /// A `synced` has arrived on some connection: the denylist was complete once.
    synced_once: bool,
    /// The current connection has delivered `synced`.
    conn_synced: bool,
    connected: bool,
    /// [`Clock::now`] of the last byte received on a synced connection.
    live_at: Option<Duration>,
}

/// How one connection ended.
enum Outcome {
    /// The stream was open and then ended or failed.
    Ended { synced: bool, why: String },
    /// 400 on resume: the cursor is unknown to sessiond.
    CursorRejected(String),
    /// 401 or 403: the credential.
    Refused(StatusCode),
    /// No stream at all (connect error, timeout, unexpected status or content type).
    Failed(String),
}

/// `data:` of a `revocation` event (docs/API.md §9). Only the fields the denylist needs are required.
#[derive(Deserialize)]
struct Revocation {
    cursor: Option<String>,
    session_id: String,
    until: String,
    #[serde(default)]
    reason: Option<String>,
}

/// `data:` of the `synced` event.
#[derive(Deserialize)]
struct Synced {
    next: Option<String>,
}

pub(crate) struct Feed {
    url: String,
    /// `Bearer sk_…`; never logged.
    authorization: String,
    http: reqwest::Client,
    clock: Clock,
    timing: Timing,
    state: Mutex<State>,
    /// Bumped on every change of state (see [`Changes`]).
    changes: Changes,
    connects: AtomicU64,
    received: AtomicU64,
    snapshot_restarts: AtomicU64,
}

/// Observable counters of the follower.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FeedCounts {
    pub(crate) connects: u64,
    pub(crate) received: u64,
    pub(crate) snapshot_restarts: u64,
}

impl Feed {
    pub(crate) fn new(
        issuer_base: &str,
        service_key: &str,
        http: reqwest::Client,
        clock: Clock,
        timing: Timing,
        changes: Changes,
    ) -> Self {
        Feed {
            url: format!("{issuer_base}{STREAM_PATH}"),
            authorization: format!("Bearer {service_key}"),
            http,
            clock,
            timing,
            state: Mutex::default(),
            changes,
            connects: AtomicU64::new(0),
            received: AtomicU64::new(0),
            snapshot_restarts: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.bump();
    }

    /// Whether the current connection has delivered `synced` (for tests).
    #[cfg(test)]
    pub(crate) fn conn_synced(&self) -> bool {
        self.state().conn_synced
    }

    pub(crate) fn cursor(&self) -> Option<String> {
        self.state().cursor.clone()
    }

    pub(crate) fn synced_once(&self) -> bool {
        self.state().synced_once
    }

    pub(crate) fn connected(&self) -> bool {
        self.state().connected
    }

    /// Time since the last byte of a synced connection (`None`: never synced).
    pub(crate) fn since_live(&self) -> Option<Duration> {
        let live_at = self.state().live_at?;
        Some(self.clock.now().saturating_sub(live_at))
    }

    /// Whether the denylist is known to be current within `staleness`.
    pub(crate) fn is_live(&self, staleness: Duration) -> bool {
        self.since_live().is_some_and(|d| d <= staleness)
    }

    pub(crate) fn counts(&self) -> FeedCounts {
        FeedCounts {
            connects: self.connects.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            snapshot_restarts: self.snapshot_restarts.load(Ordering::Relaxed),
        }
    }

    /// Follows the feed forever (the caller cancels it), applying entries to `denylist`.
    pub(crate) async fn run(&self, denylist: &Denylist, silence: Duration) {
        let mut attempt: u32 = 0;
        loop {
            let outcome = self.follow(denylist, silence).await;
            let was_synced = {
                let mut s = self.state();
                s.connected = false;
                std::mem::take(&mut s.conn_synced)
            };
            self.changed();
            let delay = match outcome {
                Outcome::Ended { synced, why } => {
                    if synced {
                        attempt = 0;
                    }
                    if was_synced {
                        tracing::warn!(url = %self.url, cause = %why, "revocation feed disconnected; resuming");
                    } else {
                        tracing::warn!(url = %self.url, cause = %why, "revocation feed ended before it synced");
                    }
                    self.backoff(attempt)
                }
                Outcome::CursorRejected(code) => {
                    tracing::warn!(url = %self.url, code = %code, "revocation feed refused the cursor; starting over from a snapshot");
                    self.state().cursor = None;
                    self.snapshot_restarts.fetch_add(1, Ordering::Relaxed);
                    self.changed();
                    Duration::ZERO
                }
                Outcome::Refused(status) => {
                    tracing::error!(
                        url = %self.url, status = status.as_u16(), retry_in = ?self.timing.auth_retry,
                        "revocation feed refused the service credential: it must be a live credential with the scope \
                         revocations:read (`sessiond service add NAME --scope revocations:read`)"
                    );
                    self.timing.auth_retry
                }
                Outcome::Failed(why) => {
                    tracing::warn!(url = %self.url, cause = %why, attempt, "revocation feed unreachable; retrying");
                    self.backoff(attempt)
                }
            };
            attempt = attempt.saturating_add(1).min(30);
            tokio::time::sleep(delay).await;
        }
    }

    /// Full jitter: uniform in `[0, min(cap, base · 2^attempt)]`.
    fn backoff(&self, attempt: u32) -> Duration {
        let bound = self.timing.backoff_base.saturating_mul(1 << attempt.min(20)).min(self.timing.backoff_cap);
        bound.mul_f64(random_fraction())
    }

    /// One connection, from the request to the end of its stream.
    async fn follow(&self, denylist: &Denylist, silence: Duration) -> Outcome {
        let cursor = self.cursor();
        let mut req = self
            .http
            .get(&self.url)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(c) = &cursor {
            req = req.header("last-event-id", c);
        }
        let res = match tokio::time::timeout(CONNECT_TIMEOUT, req.send()).await {
            Err(_) => return Outcome::Failed(format!("no response within {CONNECT_TIMEOUT:?}")),
            Ok(Err(e)) => return Outcome::Failed(e.to_string()),
            Ok(Ok(res)) => res,
        };
        match res.status() {
            StatusCode::OK => {}
            StatusCode::BAD_REQUEST if cursor.is_some() => return Outcome::CursorRejected(problem_code(res).await),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => return Outcome::Refused(s),
            s => return Outcome::Failed(format!("answered {s} ({})", problem_code(res).await)),
        }
        let content_type = res.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.to_ascii_lowercase().starts_with("text/event-stream") {
            return Outcome::Failed(format!("content type {content_type:?}"));
        }
        {
            let mut s = self.state();
            s.connected = true;
            s.conn_synced = false;
        }
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.changed();
        tracing::debug!(url = %self.url, resume = cursor.is_some(), "revocation feed connected");

        let body = guarded(res.bytes_stream(), silence, || self.on_bytes());
        let mut events = pin!(body.eventsource());
        let why = loop {
            match events.next().await {
                None => break "closed by the server".to_string(),
                Some(Err(e)) => break e.to_string(),
                Some(Ok(event)) => {
                    if let Err(e) = self.apply(&event, denylist) {
                        break format!("protocol error: {e}");
                    }
                }
            }
        };
        Outcome::Ended { synced: self.state().conn_synced, why }
    }

    /// A chunk arrived: on a synced connection, proof of liveness.
    fn on_bytes(&self) {
        let now = self.clock.now();
        let live = {
            let mut s = self.state();
            if s.conn_synced {
                s.live_at = Some(now);
            }
            s.conn_synced
        };
        if live {
            self.changed();
        }
    }

    /// Applies one event. An entry that cannot be applied is an error: skipping it could let
    /// a revoked session through, so the connection is dropped and the entry asked for again.
    fn apply(&self, event: &Event, denylist: &Denylist) -> Result<(), &'static str> {
        match event.event.as_str() {
            "revocation" => {
                let r: Revocation = serde_json::from_str(&event.data).map_err(|_| "revocation data is not valid")?;
                let cursor = r.cursor.filter(|c| !c.is_empty()).unwrap_or_else(|| event.id.clone());
                if cursor.is_empty() || cursor.len() > MAX_ID_LEN {
                    return Err("revocation without a usable cursor");
                }
                if r.session_id.is_empty() || r.session_id.len() > MAX_ID_LEN {
                    return Err("revocation without a usable session id");
                }
                let until_ms = parse_rfc3339_ms(&r.until).ok_or("revocation until is not RFC 3339")?;
                let stored = denylist.insert(&r.session_id, until_ms, self.clock.unix_secs());
                self.received.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    session_id = %r.session_id, reason = r.reason.as_deref().unwrap_or(""),
                    expired = stored == Inserted::Expired, "revocation received"
                );
                self.state().cursor = Some(cursor);
            }
            "synced" => {
                let next = serde_json::from_str::<Synced>(&event.data).ok().and_then(|s| s.next);
                let cursor = next.filter(|c| !c.is_empty()).unwrap_or_else(|| event.id.clone());
                if cursor.len() > MAX_ID_LEN {
                    return Err("synced with an unusable cursor");
                }
                let now = self.clock.now();
                let first = {
                    let mut s = self.state();
                    if !cursor.is_empty() {
                        s.cursor = Some(cursor);
                    }
                    s.conn_synced = true;
                    s.live_at = Some(now);
                    !std::mem::replace(&mut s.synced_once, true)
                };
                if first {
                    tracing::info!(url = %self.url, revoked = denylist.len(), "revocation feed synced");
                } else {
                    tracing::debug!(url = %self.url, "revocation feed synced again");
                }
            }
            other => tracing::debug!(event = other, "revocation feed: unknown event ignored"),
        }
        self.changed();
        Ok(())
    }
}

/// The `code` of a problem+json error body, for the log ("?" when there is none).
async fn problem_code(mut res: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ERROR_BODY {
            break;
        }
    }
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("code")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// RFC 3339 UTC (`2026-11-27T03:12:34Z`, fractions allowed; `+00:00` read as `Z`) to
/// milliseconds since the epoch.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let utc = match s.strip_suffix("+00:00") {
        Some(t) => format!("{t}Z"),
        None => s.to_string(),
    };
    let t = humantime::parse_rfc3339(&utc).ok()?;
    i64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()
}

/// A number in `[0, 1)`, different on every call; good enough for jitter, with no dependency.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_are_read_to_the_millisecond() {
        assert_eq!(parse_rfc3339_ms("2026-11-27T03:12:34Z"), Some(1_795_749_154_000));
        assert_eq!(parse_rfc3339_ms("2026-11-27T03:12:34.250Z"), Some(1_795_749_154_250));
        assert_eq!(parse_rfc3339_ms("2026-11-27T03:12:34+00:00"), Some(1_795_749_154_000));
        for bad in ["", "2026-11-27", "2026-11-27T03:12:34+01:00", "tomorrow", "1795763554"] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_bound_up_to_the_cap() {
        let feed = Feed::new(
            "http://x",
            "sk_x",
            reqwest::Client::new(),
            Clock::default(),
            Timing::default(),
            Changes::default(),
        );
        for attempt in 0..40 {
            let bound = BACKOFF_BASE.saturating_mul(1 << attempt.min(20)).min(BACKOFF_CAP);
            let delays: Vec<Duration> = (0..50).map(|_| feed.backoff(attempt)).collect();
            assert!(delays.iter().all(|d| *d <= bound), "attempt {attempt}");
            assert!(delays.iter().any(|d| *d != delays[0]), "jittered");
        }
    }
}

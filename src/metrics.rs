//! Prometheus metrics, one registry per server (no global recorder, so tests can run many
//! servers in one process). Labels are routes, statuses, outcomes and reasons: never a token,
//! an email or an id.
//!
//! **Every label value comes from a fixed, small set** (SECURITY.md RT2): each distinct label
//! set is a time series held forever, so a value taken from the request (a method string, a
//! raw path, a reason read back from the database) would let anyone grow the registry without
//! bound. Methods are the standard ones or `OTHER`, routes are the router's matched templates
//! or `unmatched`, statuses are what the server itself answers, outcomes and reasons are
//! `&'static str` from this crate ([`reason_label`] maps anything else to `other`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// [`method_label`]: a standard method or `OTHER`.
    pub method: &'static str,
    /// The matched route template (`/v1/admin/users/{id}/sessions`) or `unmatched`: never the
    /// raw path.
    pub route: String,
    pub status: u16,
}

/// The label of an HTTP method: one of the nine standard methods, else `OTHER` (a client can
/// send any token as a method; hyper accepts up to the header limit).
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// The label of a revocation reason: the reason itself when it is one of docs/API.md §5.5
/// ([`crate::reason::Reason`]), else `other` (reasons of other instances' revocations are read
/// back from the database).
pub fn reason_label(reason: &str) -> &'static str {
    crate::reason::Reason::parse(reason).map_or("other", crate::reason::Reason::as_str)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// A constant of the calling code.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// [`reason_label`].
    pub reason: &'static str,
}

/// One Shared Signals stream (ids are bounded: one stream per service credential).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

/// The Shared Signals families (docs/SSF.md §3), per stream.
pub struct SsfMetrics {
    /// SETs stored and not yet delivered (all instances), refreshed by the dispatcher.
    pub pending: Family<StreamLabels, Gauge>,
    /// Dead letters kept (all instances), refreshed by the dispatcher.
    pub dead: Family<StreamLabels, Gauge>,
    /// SETs delivered by this instance (push 2xx).
    pub delivered: Family<StreamLabels, Counter>,
    /// Failed push attempts that will be retried, by this instance.
    pub retries: Family<StreamLabels, Counter>,
    /// SETs this instance made dead letters.
    pub dead_letters: Family<StreamLabels, Counter>,
    /// Unix time of this instance's last successful push.
    pub last_success: Family<StreamLabels, Gauge>,
}

impl SsfMetrics {
    /// Forgets a deleted stream's series.
    pub fn forget(&self, stream: &str) {
        let l = StreamLabels { stream: stream.to_string() };
        self.pending.remove(&l);
        self.dead.remove(&l);
        self.delivered.remove(&l);
        self.retries.remove(&l);
        self.dead_letters.remove(&l);
        self.last_success.remove(&l);
    }
}

pub struct Metrics {
    registry: Registry,
    pub ssf: SsfMetrics,
    pub http_requests: Family<HttpLabels, Counter>,
    pub logins: Family<OutcomeLabels, Counter>,
    pub refreshes: Family<OutcomeLabels, Counter>,
    /// `POST /v1/auth/password` attempts: `success`, `invalid_credentials`, `rate_limited`,
    /// `invalid_request` (a right current password with an unacceptable new one).
    pub password_changes: Family<OutcomeLabels, Counter>,
    pub revocations: Family<ReasonLabels, Counter>,
    pub active_sessions: Gauge,
    pub denylist_entries: Gauge,
    /// User emails held in the store's bounded cache.
    pub email_cache_entries: Gauge,
    /// WebSocket connections open on this instance (authenticated or not).
    pub ws_open: Gauge,
    /// Authenticated sockets registered in the hub.
    pub ws_authenticated: Gauge,
    /// `logout` frames written, by reason.
    pub ws_logouts: Family<ReasonLabels, Counter>,
    /// Seconds from the revocation's commit (publish) to the `logout` frame written.
    pub ws_push_latency: Histogram,
    /// Unix time (s) the last `logout` frame was written: with the time of a revoking request,
    /// how long the whole fan-out took as the server saw it (the bench reads it).
    pub ws_last_logout_written: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Sockets closed because their outbound queue was full.
    pub ws_queue_full_closes: Counter,
    /// Sockets closed with 4429 to make room for a newer socket of their user (per-user cap).
    pub ws_evicted: Counter,
    /// Upgrades refused by a cap, by which cap.
    pub ws_refused: Family<OutcomeLabels, Counter>,
    /// PostgreSQL: 1 while the revocation listener is connected, synced and proven alive.
    pub listener_up: Gauge,
    /// PostgreSQL: Unix time (s) the listener last proved it delivers (its own probe, or any
    /// notification).
    pub listener_last_proof: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sessiond");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let logins = Family::<OutcomeLabels, Counter>::default();
        let refreshes = Family::<OutcomeLabels, Counter>::default();
        let password_changes = Family::<OutcomeLabels, Counter>::default();
        let revocations = Family::<ReasonLabels, Counter>::default();
        let active_sessions = Gauge::default();
        let denylist_entries = Gauge::default();
        let email_cache_entries = Gauge::default();
        registry.register("email_cache_entries", "User emails held in the bounded cache", email_cache_entries.clone());
        let ws_open = Gauge::default();
        let ws_authenticated = Gauge::default();
        let ws_logouts = Family::<ReasonLabels, Counter>::default();
        // 50 µs … ~1.6 s
        let ws_push_latency =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 16));
        let ws_last_logout_written = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "ws_last_logout_written_timestamp_seconds",
            "Unix time the last logout frame was written",
            ws_last_logout_written.clone(),
        );
        let ws_queue_full_closes = Counter::default();
        let ws_evicted = Counter::default();
        let ws_refused = Family::<OutcomeLabels, Counter>::default();
        let listener_up = Gauge::default();
        let listener_last_proof = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "listener_up",
            "PostgreSQL: 1 while the revocation listener is connected, synced and proven alive",
            listener_up.clone(),
        );
        registry.register(
            "listener_last_proof_timestamp_seconds",
            "PostgreSQL: Unix time the revocation listener last proved it delivers",
            listener_last_proof.clone(),
        );
        registry.register("ws_refused", "WebSocket upgrades refused by a cap, by cap", ws_refused.clone());
        registry.register("http_requests", "HTTP requests by route and status", http_requests.clone());
        registry.register("logins", "Login attempts by outcome", logins.clone());
        registry.register("refreshes", "Refresh requests by outcome", refreshes.clone());
        registry.register("password_changes", "Password change attempts by outcome", password_changes.clone());
        registry.register("sessions_revoked", "Sessions ended, by reason", revocations.clone());
        registry.register(
            "active_sessions",
            "Live sessions (all instances), recounted by each expiry sweep (--sweep-interval)",
            active_sessions.clone(),
        );
        registry.register(
            "denylist_entries",
            "Revoked sessions held in this instance's denylist",
            denylist_entries.clone(),
        );
        registry.register("ws_open", "WebSocket connections open on this instance", ws_open.clone());
        registry.register(
            "ws_authenticated",
            "Authenticated WebSocket connections on this instance",
            ws_authenticated.clone(),
        );
        registry.register("ws_logout_events", "Logout events written to sockets, by reason", ws_logouts.clone());
        registry.register(
            "ws_push_latency_seconds",
            "Revocation committed to logout frame written",
            ws_push_latency.clone(),
        );
        registry.register(
            "ws_queue_full_closes",
            "Sockets closed because their outbound queue was full",
            ws_queue_full_closes.clone(),
        );
        registry.register(
            "ws_evicted",
            "Sockets closed with 4429 to make room for a newer socket of their user",
            ws_evicted.clone(),
        );
        let ssf = SsfMetrics {
            pending: Family::default(),
            dead: Family::default(),
            delivered: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            last_success: Family::default(),
        };
        registry.register(
            "ssf_pending",
            "Shared Signals SETs stored, not yet delivered, per stream",
            ssf.pending.clone(),
        );
        registry.register("ssf_dead", "Shared Signals dead letters kept, per stream", ssf.dead.clone());
        registry.register("ssf_delivered", "SETs pushed with a 2xx answer by this instance", ssf.delivered.clone());
        registry.register(
            "ssf_retries",
            "Failed SET pushes that will be retried, by this instance",
            ssf.retries.clone(),
        );
        registry.register("ssf_dead_letters", "SETs made dead letters by this instance", ssf.dead_letters.clone());
        registry.register(
            "ssf_last_success_timestamp_seconds",
            "Unix time of this instance's last successful push, per stream",
            ssf.last_success.clone(),
        );
        Metrics {
            registry,
            ssf,
            http_requests,
            logins,
            refreshes,
            password_changes,
            revocations,
            active_sessions,
            denylist_entries,
            email_cache_entries,
            ws_open,
            ws_authenticated,
            ws_logouts,
            ws_push_latency,
            ws_last_logout_written,
            ws_queue_full_closes,
            ws_evicted,
            ws_refused,
            listener_up,
            listener_last_proof,
        }
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn refresh(&self, outcome: &'static str) {
        self.refreshes.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn password_change(&self, outcome: &'static str) {
        self.password_changes.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn ws_refused(&self, cap: &'static str) {
        self.ws_refused.get_or_create(&OutcomeLabels { outcome: cap }).inc();
    }

    pub fn revoked(&self, reason: &str, n: usize) {
        self.revocations.get_or_create(&ReasonLabels { reason: reason_label(reason) }).inc_by(n as u64);
    }

    /// One `logout` frame written to a socket.
    pub fn ws_logout(&self, reason: &str) {
        self.ws_logouts.get_or_create(&ReasonLabels { reason: reason_label(reason) }).inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

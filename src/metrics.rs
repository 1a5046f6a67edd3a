//! Prometheus metrics, one registry per server (no global recorder, so tests can run many
//! servers in one process). Labels are routes, statuses, outcomes and reasons: never a token,
//! an email or an id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub logins: Family<OutcomeLabels, Counter>,
    pub refreshes: Family<OutcomeLabels, Counter>,
    pub revocations: Family<ReasonLabels, Counter>,
    pub active_sessions: Gauge,
    pub denylist_entries: Gauge,
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
        let revocations = Family::<ReasonLabels, Counter>::default();
        let active_sessions = Gauge::default();
        let denylist_entries = Gauge::default();
        registry.register("http_requests", "HTTP requests by route and status", http_requests.clone());
        registry.register("logins", "Login attempts by outcome", logins.clone());
        registry.register("refreshes", "Refresh requests by outcome", refreshes.clone());
        registry.register("sessions_revoked", "Sessions ended, by reason", revocations.clone());
        registry.register("active_sessions", "Live sessions (all instances), read at scrape", active_sessions.clone());
        registry.register(
            "denylist_entries",
            "Revoked sessions held in this instance's denylist",
            denylist_entries.clone(),
        );
        Metrics { registry, http_requests, logins, refreshes, revocations, active_sessions, denylist_entries }
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn refresh(&self, outcome: &'static str) {
        self.refreshes.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn revoked(&self, reason: &str, n: usize) {
        self.revocations.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc_by(n as u64);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

//! sessiond as an OpenID Shared Signals transmitter (docs/SSF.md; docs/API.md §11).
//!
//! - [`events`]: what a SET says (pure);
//! - [`keys`]: the RS256 keys that sign SETs (aws-lc-rs, constant time);
//! - [`push`]: the HTTP side of RFC 8935 push (SSRF checks, no redirects, classification);
//! - this module: [`Ssf`], the service the `/ssf/*` handlers and the `sessiond ssf` commands
//!   share (stream management, verification, poll), and its background task ([`Ssf::run`]):
//!   the dispatcher that expands the outbox into stored, signed SETs and the push workers.
//!
//! The outbox rows are written by the revoking transactions themselves (`store`), so nothing
//! is announced on rollback and nothing is lost after a commit; this room only reads them.

pub mod events;
pub mod keys;
pub mod push;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Who};
use crate::clock::{Clock, Millis};
use crate::error::AppError;
use crate::feed::FeedSignal;
use crate::metrics::{Metrics, StreamLabels};
use crate::store::ssf::{
    Created, Expanded, NewDelivery, PushJob, PushResult, RuleChange, SsfKeyRow, StatusChange, StreamRow,
    MAX_SUBJECT_RULES, STATUS_BY_OPERATOR, STATUS_BY_RECEIVER,
};
use crate::store::{Store, StoreError};

use self::keys::SetKey;
use self::push::{Outcome, Pusher};

pub const PUSH: &str = "urn:ietf:rfc:8935";
pub const POLL: &str = "urn:ietf:rfc:8936";
/// `min_verification_interval`, seconds (docs/SSF.md §1.2).
pub const MIN_VERIFICATION_INTERVAL_S: i64 = 10;
/// The most SETs one poll answer holds when `maxEvents` is absent (docs/SSF.md A9).
pub const POLL_MAX: i64 = 1000;
/// Outbox rows one dispatcher round leases, builds, signs (outside any transaction, ~0.5 ms a
/// SET) and stores (one short transaction).
const EXPAND_BATCH: i64 = 64;
/// How long leased outbox rows are this instance's to expand: far longer than a batch takes
/// (~50 ms), short enough that after a crash another instance (or the restarted one; on SQLite
/// at once) takes them within seconds. An instance that outlives its lease only wastes work: a
/// row is stored expanded once (`ssf_store_expanded` checks it is still unexpanded).
const EXPAND_LEASE_MS: Millis = 5_000;
/// SETs in flight at once on one instance, all streams together.
const PUSH_GLOBAL: usize = 64;
/// How long a claimed SET is leased to this instance's push attempt: longer than one attempt
/// can take (10 s), short enough that another instance resends soon after a crash. A SET is
/// leased only while its push is in flight (one that must wait for a per-stream slot is given
/// back at once), and on SQLite (one instance) the leases left by a killed process are dropped
/// at start.
const PUSH_LEASE_MS: Millis = 15_000;
/// Consecutive failed attempts (timeouts, refused connections, 5xx, …) after which a stream's
/// circuit opens (G-3, G-6): no attempt for a while, then one at a time until one succeeds.
const BREAKER_THRESHOLD: u32 = 3;
/// How long an open circuit stays open: doubling from the first to the longest.
const BREAKER_FIRST: Duration = Duration::from_secs(1);
const BREAKER_LONGEST: Duration = Duration::from_secs(60);
/// `subjects:add` and `subjects:remove` per credential (G-2): a burst, then a steady rate.
const SUBJECT_CALLS_BURST: u32 = 60;
const SUBJECT_CALLS_PER_SECOND: u32 = 10;
/// The dispatcher's recheck when nothing woke it (docs/SSF.md §3.3: ≤ 1 s).
const RECHECK: Duration = Duration::from_secs(1);
/// How often the dispatcher refreshes the pending and dead-letter gauges.
const GAUGES_EVERY: Duration = Duration::from_secs(2);
/// How often a waiting long poll looks at the database (SETs made on another instance).
const POLL_RECHECK: Duration = Duration::from_millis(200);
/// Largest `description`, `state`, `reason` and `authorization_header` accepted.
const MAX_TEXT: usize = 1024;

/// The transmitter's settings (from the server's configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    /// `--ssf-allow-insecure-push`: http and loopback push endpoints (tests only).
    pub allow_insecure_push: bool,
    /// `--ssf-poll-wait`: how long a long poll waits for a SET.
    pub poll_wait: Duration,
    /// `--ssf-push-concurrency`: SETs in flight per stream.
    pub push_concurrency: usize,
}

impl Settings {
    pub fn from_config(config: &crate::config::Config) -> Settings {
        Settings {
            issuer: config.issuer.clone(),
            allow_insecure_push: config.ssf_allow_insecure_push,
            poll_wait: config.ssf_poll_wait,
            push_concurrency: config.ssf_push_concurrency as usize,
        }
    }
}

/// The Shared Signals service. Cheap to clone.
#[derive(Clone)]
pub struct Ssf(Arc<Parts>);

pub struct Parts {
    store: Store,
    clock: Clock,
    settings: Settings,
    pusher: Pusher,
    /// Parsed signing keys by kid (parsing a private key costs more than a signature).
    keys: Mutex<HashMap<String, Arc<SetKey>>>,
    /// Wakes the dispatcher (a verification, a finished push, a status change).
    wake: Notify,
    /// Bumped after every expansion: wakes this instance's long polls.
    expanded: watch::Sender<u64>,
    /// Streams with a long poll waiting on this instance (one per stream waits).
    pollers: DashMap<String, ()>,
    /// Per push stream: its slots and its circuit breaker.
    pushing: DashMap<String, Arc<StreamPush>>,
    global: Arc<Semaphore>,
    /// `subjects:add`/`subjects:remove` calls per credential id.
    subject_calls: governor::DefaultKeyedRateLimiter<String>,
    /// Streams this instance holds metric series of (forgotten once the stream is gone, on
    /// every instance: `refresh_gauges`).
    labelled: Mutex<std::collections::HashSet<String>>,
    /// Revocations committed or applied on this instance: the outbox may have new rows.
    feed: FeedSignal,
    metrics: Arc<Metrics>,
}

impl std::ops::Deref for Ssf {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

fn internal(e: impl Into<anyhow::Error>) -> AppError {
    AppError::Internal(e.into())
}

fn db(e: StoreError) -> AppError {
    AppError::Unavailable(e.into())
}

impl Ssf {
    pub fn new(store: Store, clock: Clock, settings: Settings, feed: FeedSignal, metrics: Arc<Metrics>) -> Ssf {
        let pusher = Pusher::new(settings.allow_insecure_push);
        Ssf(Arc::new(Parts {
            store,
            clock,
            settings,
            pusher,
            keys: Mutex::default(),
            wake: Notify::new(),
            expanded: watch::channel(0).0,
            pollers: DashMap::new(),
            pushing: DashMap::new(),
            global: Arc::new(Semaphore::new(PUSH_GLOBAL)),
            subject_calls: governor::RateLimiter::keyed(
                governor::Quota::per_second(std::num::NonZeroU32::new(SUBJECT_CALLS_PER_SECOND).expect("non-zero"))
                    .allow_burst(std::num::NonZeroU32::new(SUBJECT_CALLS_BURST).expect("non-zero")),
            ),
            labelled: Mutex::default(),
            feed,
            metrics,
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Wakes the dispatcher now (something was queued on this instance).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    // ---- keys ----

    fn parsed(&self, row: &SsfKeyRow) -> Result<Arc<SetKey>, AppError> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get(&row.kid) {
            return Ok(k.clone());
        }
        let k = Arc::new(SetKey::from_pkcs8(&row.kid, &row.private_der).map_err(internal)?);
        keys.insert(row.kid.clone(), k.clone());
        Ok(k)
    }

    /// The key that signs now, made on first use (racing instances: the first insert wins).
    pub async fn signing_key(&self) -> Result<Arc<SetKey>, AppError> {
        for _ in 0..2 {
            let rows = self.store.ssf_keys().await.map_err(db)?;
            if let Some(row) = rows.iter().rev().find(|r| r.retired_at.is_none()) {
                return self.parsed(row);
            }
            let key = tokio::task::spawn_blocking(SetKey::generate).await.map_err(internal)?.map_err(internal)?;
            let row = SsfKeyRow {
                kid: key.kid().to_string(),
                private_der: key.pkcs8_der(),
                created_at: self.clock.now_ms(),
                retired_at: None,
            };
            self.store.ssf_insert_key(&row, true).await.map_err(db)?;
        }
        Err(internal(anyhow::anyhow!("no SET signing key after creating one")))
    }

    /// `GET /ssf/jwks.json`: the signing key, and retired keys whose SETs are still stored
    /// undelivered (docs/SSF.md §1.1).
    pub async fn jwks(&self) -> Result<Value, AppError> {
        let mut rows = self.store.ssf_keys().await.map_err(db)?;
        if rows.iter().all(|r| r.retired_at.is_some()) {
            self.signing_key().await?;
            rows = self.store.ssf_keys().await.map_err(db)?;
        }
        let in_use = self.store.ssf_kids_in_use().await.map_err(db)?;
        let mut keys = Vec::new();
        for row in rows.iter().rev() {
            if row.retired_at.is_none() || in_use.contains(&row.kid) {
                keys.push(self.parsed(row)?.public_jwk());
            }
        }
        Ok(json!({ "keys": keys }))
    }

    /// `sessiond keys rotate --ssf`: a new signing key; the old ones are retired (published
    /// while their SETs are undelivered).
    pub async fn rotate(store: &Store, clock: &Clock) -> anyhow::Result<String> {
        let key = tokio::task::spawn_blocking(SetKey::generate).await??;
        let row = SsfKeyRow {
            kid: key.kid().to_string(),
            private_der: key.pkcs8_der(),
            created_at: clock.now_ms(),
            retired_at: None,
        };
        store.ssf_insert_key(&row, false).await?;
        Ok(row.kid)
    }

    // ---- streams ----

    /// The stream configuration as the API shows it to its owner (docs/SSF.md §1.2).
    pub fn config_json(&self, s: &StreamRow) -> Value {
        let mut c = Map::new();
        c.insert("stream_id".into(), json!(s.id));
        c.insert("iss".into(), json!(self.settings.issuer));
        c.insert("aud".into(), json!(s.aud));
        let mut delivery: Value = serde_json::from_str(&s.delivery).unwrap_or(json!({}));
        if s.method == "poll" {
            delivery = json!({ "method": POLL, "endpoint_url": self.poll_url(&s.id) });
        }
        c.insert("delivery".into(), delivery);
        c.insert("events_supported".into(), json!(events::SUPPORTED));
        if let Some(req) = s.events_requested.as_deref().and_then(|r| serde_json::from_str::<Value>(r).ok()) {
            c.insert("events_requested".into(), req);
        }
        let delivered: Value = serde_json::from_str(&s.events_delivered).unwrap_or(json!([]));
        c.insert("events_delivered".into(), delivered);
        c.insert("min_verification_interval".into(), json!(MIN_VERIFICATION_INTERVAL_S));
        if let Some(d) = &s.description {
            c.insert("description".into(), json!(d));
        }
        Value::Object(c)
    }

    fn poll_url(&self, id: &str) -> String {
        format!("{}/ssf/poll/{id}", self.settings.issuer.trim_end_matches('/'))
    }

    /// The Receiver-supplied part of a create, update or replace body, checked.
    fn receiver_fields(&self, body: &Map<String, Value>, base: &mut StreamRow, replace: bool) -> Result<(), AppError> {
        if replace || body.contains_key("delivery") {
            let delivery = body.get("delivery").cloned().unwrap_or(Value::Null);
            let (method, url, auth, echo) = match &delivery {
                Value::Null => ("poll", None, None, json!({ "method": POLL })),
                Value::Object(d) => match d.get("method").and_then(Value::as_str) {
                    None | Some(POLL) => ("poll", None, None, json!({ "method": POLL })),
                    Some(PUSH) => {
                        let url = d
                            .get("endpoint_url")
                            .and_then(Value::as_str)
                            .ok_or(AppError::InvalidRequest("A push stream needs delivery.endpoint_url."))?;
                        push::check_endpoint(url, self.settings.allow_insecure_push).map_err(|e| {
                            tracing::debug!(error = %e, "push endpoint refused");
                            AppError::InvalidRequest(
                                "delivery.endpoint_url must be an absolute https URL of a public host.",
                            )
                        })?;
                        let auth = match d.get("authorization_header") {
                            None | Some(Value::Null) => None,
                            Some(Value::String(a)) if a.len() <= MAX_TEXT && !a.contains(['\r', '\n']) => {
                                Some(a.clone())
                            }
                            Some(_) => {
                                return Err(AppError::InvalidRequest(
                                    "delivery.authorization_header must be a single-line string.",
                                ))
                            }
                        };
                        let mut echo = json!({ "method": PUSH, "endpoint_url": url });
                        if let Some(a) = &auth {
                            echo["authorization_header"] = json!(a);
                        }
                        ("push", Some(url.to_string()), auth, echo)
                    }
                    Some(_) => return Err(AppError::InvalidRequest("delivery.method is not supported.")),
                },
                _ => return Err(AppError::InvalidRequest("delivery must be an object.")),
            };
            base.method = method.into();
            base.endpoint_url = url;
            base.authorization_header = auth;
            base.delivery = echo.to_string();
        }
        if replace || body.contains_key("events_requested") {
            match body.get("events_requested") {
                None | Some(Value::Null) => base.events_requested = None,
                Some(Value::Array(list)) if list.len() <= 64 => {
                    let list: Option<Vec<String>> = list.iter().map(|v| v.as_str().map(String::from)).collect();
                    let list = list.ok_or(AppError::InvalidRequest("events_requested must be a list of URIs."))?;
                    base.events_requested = Some(json!(list).to_string());
                }
                Some(_) => return Err(AppError::InvalidRequest("events_requested must be a list of URIs.")),
            }
            let requested: Option<Vec<String>> =
                base.events_requested.as_deref().and_then(|r| serde_json::from_str(r).ok());
            base.events_delivered = json!(events::delivered(requested.as_deref())).to_string();
        }
        if replace || body.contains_key("description") {
            base.description = match body.get("description") {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) if d.len() <= MAX_TEXT => Some(d.clone()),
                Some(_) => return Err(AppError::InvalidRequest("description must be a string of at most 1024 bytes.")),
            };
        }
        Ok(())
    }

    /// `POST /ssf/stream` (and `sessiond ssf stream add`): a stream owned by the credential
    /// `owner` (its immutable id and its name); 409 when it has a stream.
    pub async fn create(
        &self,
        owner: Owner<'_>,
        aud: &str,
        body: &Value,
        event_subject: bool,
        who: &Who,
    ) -> Result<Value, AppError> {
        let body = body.as_object().ok_or(AppError::InvalidRequest("The body must be a JSON object."))?;
        let now = self.clock.now_ms();
        let mut row = StreamRow {
            id: format!("st_{}", uuid::Uuid::new_v4().simple()),
            owner_id: owner.id.to_string(),
            owner: owner.name.to_string(),
            aud: aud.to_string(),
            delivery: String::new(),
            method: "poll".into(),
            endpoint_url: None,
            authorization_header: None,
            events_requested: None,
            events_delivered: "[]".into(),
            description: None,
            event_subject,
            status: "enabled".into(),
            status_reason: None,
            status_by: None,
            health: "ok".into(),
            last_success_at: None,
            last_error: None,
            last_verify_at: None,
            created_at: now,
            updated_at: now,
        };
        self.receiver_fields(body, &mut row, true)?;
        // Sign with a key that exists before the first event needs it.
        self.signing_key().await?;
        match self.store.ssf_create_stream(&row).await.map_err(db)? {
            Created::Created => {}
            Created::Exists => return Err(AppError::StreamExists),
            // Removed since the request was authenticated.
            Created::NoOwner => return Err(AppError::InvalidToken { presented: true }),
        }
        let detail = json!({ "stream_id": row.id, "owner": owner.name, "method": row.method });
        audit::record(&self.store, now, who, audit::Event::new("ssf_stream_created").detail(detail)).await;
        Ok(self.config_json(&row))
    }

    /// The stream `id` if the credential `owner` (its immutable id) owns it; 404 otherwise
    /// (another credential's stream is invisible, docs/SSF.md §1.2; and a credential added under
    /// a removed one's name is another credential, G-1).
    pub async fn owned(&self, owner: &str, id: &str) -> Result<StreamRow, AppError> {
        match self.store.ssf_stream(id).await.map_err(db)? {
            Some(s) if s.owner_id == owner => Ok(s),
            _ => Err(AppError::NotFound),
        }
    }

    /// `GET /ssf/stream`: one stream, or the caller's streams as an array.
    pub async fn read(&self, owner: &str, id: Option<&str>) -> Result<Value, AppError> {
        match id {
            Some(id) => Ok(self.config_json(&self.owned(owner, id).await?)),
            None => {
                let all = self.store.ssf_streams().await.map_err(db)?;
                Ok(Value::Array(all.iter().filter(|s| s.owner_id == owner).map(|s| self.config_json(s)).collect()))
            }
        }
    }

    /// `PATCH` (`replace` false) and `PUT` (`replace` true) `/ssf/stream`.
    pub async fn update(&self, owner: &str, body: &Value, replace: bool, who: &Who) -> Result<Value, AppError> {
        let body = body.as_object().ok_or(AppError::InvalidRequest("The body must be a JSON object."))?;
        let id =
            body.get("stream_id").and_then(Value::as_str).ok_or(AppError::InvalidRequest("stream_id is required."))?;
        let mut row = self.owned(owner, id).await?;
        // Transmitter-supplied fields may be sent back, but never changed.
        let current = self.config_json(&row);
        for field in ["iss", "aud", "events_supported", "events_delivered", "min_verification_interval"] {
            if let Some(v) = body.get(field) {
                if Some(v) != current.get(field) {
                    return Err(AppError::InvalidRequest("A Transmitter-supplied field cannot be changed."));
                }
            }
        }
        self.receiver_fields(body, &mut row, replace)?;
        let now = self.clock.now_ms();
        if !self.store.ssf_update_stream(&row, now).await.map_err(db)? {
            return Err(AppError::NotFound);
        }
        let detail = json!({ "stream_id": row.id, "owner": row.owner, "replace": replace });
        audit::record(&self.store, now, who, audit::Event::new("ssf_stream_updated").detail(detail)).await;
        Ok(self.config_json(&row))
    }

    /// `DELETE /ssf/stream`: the stream and every SET it holds.
    pub async fn delete(&self, owner: &str, id: &str, who: &Who) -> Result<(), AppError> {
        self.owned(owner, id).await?;
        self.remove(id, who).await
    }

    /// Deletes stream `id` (the operator's `ssf stream remove` skips the owner check).
    pub async fn remove(&self, id: &str, who: &Who) -> Result<(), AppError> {
        if !self.store.ssf_delete_stream(id).await.map_err(db)? {
            return Err(AppError::NotFound);
        }
        self.metrics.ssf.forget(id);
        let now = self.clock.now_ms();
        audit::record(
            &self.store,
            now,
            who,
            audit::Event::new("ssf_stream_deleted").detail(json!({ "stream_id": id })),
        )
        .await;
        Ok(())
    }

    pub fn status_json(s: &StreamRow) -> Value {
        let mut v = json!({ "stream_id": s.id, "status": s.status });
        if let Some(r) = &s.status_reason {
            v["reason"] = json!(r);
        }
        v
    }

    /// Sets a stream's status. `operator`: a change by sessiond itself (the CLI), announced
    /// with a stream-updated event before it takes effect (docs/SSF.md §4); a receiver's own
    /// change is not announced back to it, and cannot lift an operator's disable (403, G-1).
    pub async fn set_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
        operator: bool,
        who: &Who,
    ) -> Result<Value, AppError> {
        if !matches!(status, "enabled" | "paused" | "disabled") {
            return Err(AppError::InvalidRequest("status must be enabled, paused or disabled."));
        }
        if reason.is_some_and(|r| r.len() > MAX_TEXT) {
            return Err(AppError::InvalidRequest("reason must be at most 1024 bytes."));
        }
        let announce = operator.then(|| {
            let mut p = json!({ "status": status });
            if let Some(r) = reason {
                p["reason"] = json!(r);
            }
            p.to_string()
        });
        let now = self.clock.now_ms();
        let by = if operator { STATUS_BY_OPERATOR } else { STATUS_BY_RECEIVER };
        match self.store.ssf_set_status(id, status, reason, by, announce.as_deref(), now).await.map_err(db)? {
            StatusChange::Changed => {}
            StatusChange::NotFound => return Err(AppError::NotFound),
            StatusChange::OperatorDisabled => return Err(AppError::StreamDisabledByOperator),
        }
        let detail = json!({ "stream_id": id, "status": status, "reason": reason, "by": if operator { "operator" } else { "receiver" } });
        audit::record(&self.store, now, who, audit::Event::new("ssf_stream_status").detail(detail)).await;
        self.poke();
        let mut v = json!({ "stream_id": id, "status": status });
        if let Some(r) = reason {
            v["reason"] = json!(r);
        }
        Ok(v)
    }

    /// `subjects:add` (`add` true: deletes a matching exclusion) and `subjects:remove`.
    pub async fn subject(&self, owner: &str, body: &Value, add: bool) -> Result<(), AppError> {
        let id =
            body.get("stream_id").and_then(Value::as_str).ok_or(AppError::InvalidRequest("stream_id is required."))?;
        let subject = body.get("subject").ok_or(AppError::InvalidRequest("subject is required."))?;
        let normalized = events::normalize_subject(subject)
            .ok_or(AppError::InvalidRequest("subject must be an object with a format."))?;
        if normalized.to_string().len() > 4 * MAX_TEXT {
            return Err(AppError::InvalidRequest("subject is too large."));
        }
        // Before any database work: a flood costs the server nothing but this check (G-2).
        if let Err(not_until) = self.subject_calls.check_key(&owner.to_string()) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            return Err(AppError::RateLimited { retry_after_secs: wait.as_secs_f64().ceil().clamp(1.0, 60.0) as u64 });
        }
        self.owned(owner, id).await?;
        let (user_key, session_key) = events::rule_keys(&normalized);
        // An unknown subject is answered the same (docs/SSF.md §1.4: no probing).
        match self
            .store
            .ssf_exclude_subject(id, &normalized.to_string(), (&user_key, &session_key), !add)
            .await
            .map_err(db)?
        {
            RuleChange::Done => Ok(()),
            RuleChange::Full => {
                tracing::info!(stream_id = %id, max = MAX_SUBJECT_RULES, "SSF: subject rule refused, the stream holds the most");
                Err(AppError::InvalidRequest(
                    "This stream holds the most subject rules it may (2000); add some back first.",
                ))
            }
        }
    }

    /// Gives the subject rules stored before their lookup keys existed (migration 0007) their
    /// keys; until then such a rule matches nothing. Run once at start, before any expansion.
    pub async fn backfill_rule_keys(&self) -> Result<usize, AppError> {
        let mut done = 0;
        loop {
            let rules = self.store.ssf_unkeyed_rules(500).await.map_err(db)?;
            if rules.is_empty() {
                return Ok(done);
            }
            for (stream, subject) in rules {
                let rule: Value = serde_json::from_str(&subject).unwrap_or(Value::Null);
                let (user_key, session_key) = events::rule_keys(&rule);
                self.store.ssf_set_rule_keys(&stream, &subject, (&user_key, &session_key)).await.map_err(db)?;
                done += 1;
            }
        }
    }

    /// `POST /ssf/verify`: queues a verification SET; 429 within `min_verification_interval`.
    pub async fn verify(&self, owner: &str, body: &Value) -> Result<(), AppError> {
        let id =
            body.get("stream_id").and_then(Value::as_str).ok_or(AppError::InvalidRequest("stream_id is required."))?;
        let state = match body.get("state") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= MAX_TEXT => Some(s.clone()),
            Some(_) => return Err(AppError::InvalidRequest("state must be a string of at most 1024 bytes.")),
        };
        self.owned(owner, id).await?;
        let payload = match state {
            Some(s) => json!({ "state": s }),
            None => json!({}),
        };
        let now = self.clock.now_ms();
        let interval = MIN_VERIFICATION_INTERVAL_S * 1000;
        if !self.store.ssf_verify(id, &payload.to_string(), now, interval).await.map_err(db)? {
            return Err(AppError::RateLimited { retry_after_secs: MIN_VERIFICATION_INTERVAL_S as u64 });
        }
        self.poke();
        Ok(())
    }

    /// `POST /ssf/poll/{id}` (RFC 8936): applies acks and errors, then answers with the
    /// pending SETs, waiting up to `--ssf-poll-wait` for one unless `returnImmediately`.
    pub async fn poll(&self, owner: &str, id: &str, body: &Value) -> Result<Value, AppError> {
        let body = body.as_object().ok_or(AppError::InvalidRequest("The body must be a JSON object."))?;
        let stream = self.owned(owner, id).await?;
        if stream.method != "poll" {
            return Err(AppError::InvalidRequest("This stream is delivered by push."));
        }
        let max = match body.get("maxEvents") {
            None | Some(Value::Null) => POLL_MAX,
            Some(v) => v
                .as_i64()
                .filter(|n| *n >= 0)
                .ok_or(AppError::InvalidRequest("maxEvents must be a non-negative integer."))?
                .min(POLL_MAX),
        };
        let immediately = match body.get("returnImmediately") {
            None | Some(Value::Null) => false,
            Some(v) => v.as_bool().ok_or(AppError::InvalidRequest("returnImmediately must be a boolean."))?,
        };
        let acks: Vec<String> = match body.get("ack") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if a.len() <= POLL_MAX as usize => a
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<_>>()
                .ok_or(AppError::InvalidRequest("ack must be a list of jti strings."))?,
            Some(_) => return Err(AppError::InvalidRequest("ack must be a list of jti strings.")),
        };
        let errs: Vec<(String, String)> = match body.get("setErrs") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) if m.len() <= POLL_MAX as usize => {
                m.iter().map(|(jti, e)| (jti.clone(), e.to_string().chars().take(256).collect())).collect()
            }
            Some(_) => return Err(AppError::InvalidRequest("setErrs must be an object keyed by jti.")),
        };
        for (jti, err) in &errs {
            tracing::info!(stream_id = %id, jti = %jti, error = %err, "receiver reported a SET error");
        }
        let active = stream.status == "enabled";
        let deadline = tokio::time::Instant::now() + self.settings.poll_wait;
        let mut expanded = self.expanded.subscribe();
        let mut waiting: Option<PollerGuard> = None;
        let (mut acks, mut errs) = (acks, errs);
        let mut first = true;
        loop {
            let now = self.clock.now_ms();
            // The first round applies acks and errors; a waiting round reads before it writes.
            let ready = first || self.store.ssf_poll_ready(id, active, now).await.map_err(db)?;
            let (sets, more) = if ready {
                self.store.ssf_poll(id, &acks, &errs, max, active, now).await.map_err(db)?
            } else {
                (Vec::new(), false)
            };
            first = false;
            acks.clear();
            errs.clear();
            let done = !sets.is_empty() || immediately || max == 0 || !active;
            if done || tokio::time::Instant::now() >= deadline {
                let sets: Map<String, Value> = sets.into_iter().map(|(j, s)| (j, Value::String(s))).collect();
                let mut answer = json!({ "sets": sets });
                if more {
                    answer["moreAvailable"] = json!(true);
                }
                return Ok(answer);
            }
            if waiting.is_none() {
                match PollerGuard::take(self, id) {
                    Some(g) => waiting = Some(g),
                    // Another long poll of this stream waits here: answer this one at once.
                    None => return Ok(json!({ "sets": {} })),
                }
            }
            tokio::select! {
                _ = expanded.changed() => {}
                _ = tokio::time::sleep(POLL_RECHECK) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.feed.closed() => return Ok(json!({ "sets": {} })),
            }
        }
    }

    // ---- the background task ----

    /// The dispatcher and push workers, until `stop`: expands the outbox whenever this
    /// instance committed or applied a revocation (the feed signal), was poked, or every
    /// second (rows written by other instances or by the CLI), then pushes what is due.
    pub async fn run(self, stop: CancellationToken) {
        if self.store.postgres().is_none() {
            match self.store.ssf_clear_leases().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(leases = n, "SSF: pushes interrupted by the last stop will be resent"),
                Err(e) => tracing::warn!(error = %e, "SSF: clearing stale leases failed"),
            }
        }
        loop {
            match self.backfill_rule_keys().await {
                Ok(0) => break,
                Ok(n) => {
                    tracing::info!(rules = n, "SSF: subject rules of an older version given their lookup keys");
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "SSF: keying the stored subject rules failed; retrying"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
        let mut last_prune: Option<tokio::time::Instant> = None;
        let mut last_gauges: Option<tokio::time::Instant> = None;
        loop {
            if let Err(e) = self.expand_all().await {
                tracing::warn!(error = %e, "SSF dispatcher: expanding the outbox failed; retrying");
            }
            if let Err(e) = self.push_due().await {
                tracing::warn!(error = %e, "SSF push: claiming SETs failed; retrying");
            }
            if last_gauges.is_none_or(|t| t.elapsed() >= GAUGES_EVERY) {
                last_gauges = Some(tokio::time::Instant::now());
                self.refresh_gauges().await;
            }
            if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_prune = Some(tokio::time::Instant::now());
                match self.store.ssf_prune(self.clock.now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(dropped = n, "SSF: held SETs dropped past the paused-stream bound"),
                    Err(e) => tracing::warn!(error = %e, "SSF retention sweep failed"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = self.feed.outbox_written() => {}
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    /// The pending and dead-letter gauges of every stream, from the database (every instance's
    /// SETs); the series of streams that are gone (deleted on any instance, or with their
    /// credential) are forgotten.
    async fn refresh_gauges(&self) {
        let (Ok(streams), Ok(counts)) = (self.store.ssf_streams().await, self.store.ssf_counts().await) else {
            return;
        };
        let m = &self.metrics.ssf;
        let live: std::collections::HashSet<String> = streams.iter().map(|s| s.id.clone()).collect();
        for s in &streams {
            let c = counts.iter().find(|c| c.stream_id == s.id);
            let labels = StreamLabels { stream: s.id.clone() };
            m.pending.get_or_create(&labels).set(c.map_or(0, |c| c.pending));
            m.dead.get_or_create(&labels).set(c.map_or(0, |c| c.dead));
        }
        let mut labelled = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        labelled.retain(|id| {
            let keep = live.contains(id);
            if !keep {
                m.forget(id);
            }
            keep
        });
        labelled.extend(live);
        drop(labelled);
        self.pushing.retain(|id, _| streams.iter().any(|s| &s.id == id));
    }

    /// Expands outbox rows until none is left (G-2): each round leases a batch in one short
    /// transaction, builds its SETs (the subject rules: one indexed lookup per signal) and
    /// signs them outside any transaction, then stores them in another short one.
    pub async fn expand_all(&self) -> Result<usize, AppError> {
        let mut total = 0;
        loop {
            let now = self.clock.now_ms();
            if !self.store.ssf_has_unexpanded(now).await.map_err(db)? {
                return Ok(total);
            }
            let signals = self.store.ssf_claim_signals(EXPAND_BATCH, now, now + EXPAND_LEASE_MS).await.map_err(db)?;
            if signals.is_empty() {
                return Ok(total);
            }
            let key = self.signing_key().await?;
            let streams = self.store.ssf_streams().await.map_err(db)?;
            let rules = self.store.ssf_has_rules().await.map_err(db)?;
            let mut unsigned: Vec<(i64, Vec<(NewDelivery, Value)>)> = Vec::with_capacity(signals.len());
            let iat = now.div_euclid(1000);
            for signal in &signals {
                let excluded = match (&signal.user_id, rules) {
                    (Some(user), true) => {
                        let (user_key, session_key) =
                            events::signal_keys(&self.settings.issuer, user, signal.session_id.as_deref());
                        self.store.ssf_excluding_streams(&user_key, session_key.as_deref()).await.map_err(db)?
                    }
                    _ => Vec::new(),
                };
                let mut sets = Vec::new();
                for stream in &streams {
                    let jti = uuid::Uuid::new_v4().simple().to_string();
                    let excluded = excluded.contains(&stream.id);
                    let Some(claims) = events::claims(&self.settings.issuer, signal, stream, excluded, &jti, iat)
                    else {
                        continue;
                    };
                    let d = NewDelivery {
                        stream_id: stream.id.clone(),
                        jti,
                        kind: signal.kind.clone(),
                        subject_key: events::subject_key(signal),
                        kid: key.kid().to_string(),
                        set_jws: String::new(),
                    };
                    sets.push((d, claims));
                }
                unsigned.push((signal.id, sets));
            }
            // RS256 signing is CPU work: off the runtime's threads, and outside any transaction.
            let batch: Vec<Expanded> =
                tokio::task::spawn_blocking(move || sign_batch(&key, unsigned)).await.map_err(internal)?;
            let stored = self.store.ssf_store_expanded(&batch, self.clock.now_ms()).await.map_err(db)?;
            total += stored;
            self.expanded.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The push state of stream `id` on this instance (made on first use).
    fn push_state(&self, id: &str) -> Arc<StreamPush> {
        self.pushing
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(StreamPush::new(self.settings.push_concurrency.max(1))))
            .clone()
    }

    /// Claims the SETs due and starts their push attempts: per push stream, at most as many as
    /// the stream has free slots (and its circuit breaker allows), so a stream whose receiver
    /// stalls holds only its own slots and never fills another stream's claim (G-3); at most
    /// [`PUSH_GLOBAL`] in flight on this instance.
    async fn push_due(&self) -> Result<(), AppError> {
        let streams = self.store.ssf_streams().await.map_err(db)?;
        for stream in streams.iter().filter(|s| s.method == "push") {
            let global_free = self.global.available_permits();
            if global_free == 0 {
                return Ok(());
            }
            let state = self.push_state(&stream.id);
            let free = state.free(tokio::time::Instant::now()).min(global_free);
            if free == 0 {
                continue;
            }
            let now = self.clock.now_ms();
            let heads =
                self.store.ssf_due_heads(&stream.id, now, free as i64, stream.status == "enabled").await.map_err(db)?;
            let (due, stale): (Vec<PushJob>, Vec<PushJob>) = heads.into_iter().partition(PushJob::is_pending);
            for job in &stale {
                self.store.ssf_repair_head(job).await.map_err(db)?;
            }
            for job in self.store.ssf_lease(due, now, now + PUSH_LEASE_MS).await.map_err(db)? {
                let slots =
                    self.global.clone().try_acquire_owned().ok().zip(state.slots.clone().try_acquire_owned().ok());
                let Some((global, slot)) = slots else {
                    // No slot now: give the SET back rather than hold its lease while waiting.
                    self.store.ssf_release_lease(&job).await.map_err(db)?;
                    continue;
                };
                let this = self.clone();
                let (url, auth) = (stream.endpoint_url.clone(), stream.authorization_header.clone());
                let state = state.clone();
                tokio::spawn(async move {
                    this.attempt(&job, url.as_deref(), auth.as_deref(), &state).await;
                    drop((global, slot));
                    this.poke();
                });
            }
        }
        Ok(())
    }

    /// One push attempt of `job` to `url`, and its outcome recorded.
    async fn attempt(&self, job: &PushJob, url: Option<&str>, auth: Option<&str>, state: &StreamPush) {
        let (Some(url), Some(set_jws)) = (url, job.set_jws.as_deref()) else { return };
        let outcome = self.pusher.push(url, auth, set_jws).await;
        // The backoff counts from the attempt's end: a receiver that holds every attempt for
        // the whole timeout is not tried again at once (G-3).
        let now = self.clock.now_ms();
        let failures = (job.attempts.unwrap_or(0).max(0) as u32) + 1;
        let verification = job.kind.as_deref() == Some("verification");
        let result = match outcome {
            Outcome::Delivered => PushResult::Delivered,
            Outcome::DeadLetter { error } => PushResult::Dead { error },
            Outcome::Retry { error, err: Some(code), .. } if verification && code == "invalid_state" => {
                PushResult::Dead { error }
            }
            Outcome::Retry { retry_after, failing, error, .. } => {
                let delay = push::backoff(failures).map(|d| retry_after.map_or(d, |r| r.max(d)));
                match delay {
                    Some(d) if now - job.created_at.unwrap_or(now) < push::MAX_AGE.as_millis() as Millis => {
                        PushResult::Retry { next_attempt_at: now + d.as_millis() as Millis, error, failing }
                    }
                    _ => PushResult::Dead { error },
                }
            }
        };
        // The receiver answering at all (a 2xx, or a refusal for good) closes the circuit.
        let opened = state.record(!matches!(result, PushResult::Retry { .. }), tokio::time::Instant::now());
        if let Some(open_for) = opened {
            tracing::info!(
                stream_id = %job.stream_id,
                open_for_ms = open_for.as_millis() as u64,
                "SSF push: the stream's attempts keep failing; pausing its pushes"
            );
        }
        let labels = StreamLabels { stream: job.stream_id.clone() };
        self.labelled.lock().unwrap_or_else(|p| p.into_inner()).insert(job.stream_id.clone());
        let m = &self.metrics.ssf;
        let jti = job.jti.as_deref().unwrap_or_default();
        match &result {
            PushResult::Delivered => {
                m.delivered.get_or_create(&labels).inc();
                m.last_success.get_or_create(&labels).set(now.div_euclid(1000));
                tracing::debug!(stream_id = %job.stream_id, jti = %jti, "SET delivered");
            }
            PushResult::Retry { error, .. } => {
                m.retries.get_or_create(&labels).inc();
                tracing::info!(stream_id = %job.stream_id, jti = %jti, error = %error, "SET push failed; will retry");
            }
            PushResult::Dead { error } => {
                m.dead_letters.get_or_create(&labels).inc();
                tracing::warn!(stream_id = %job.stream_id, jti = %jti, error = %error, "SET is a dead letter");
            }
        }
        if let Err(e) = self.store.ssf_push_result(job, &result, now).await {
            // The lease runs out and the SET is sent again: at-least-once (receivers dedupe on jti).
            tracing::warn!(error = %e, jti = %jti, "SSF: recording a push result failed");
        }
    }
}

/// Signs the SETs built for a batch of outbox rows (`spawn_blocking`); a SET that fails to sign
/// is logged and left out (its row is still marked expanded, as before).
fn sign_batch(key: &SetKey, unsigned: Vec<(i64, Vec<(NewDelivery, Value)>)>) -> Vec<Expanded> {
    unsigned
        .into_iter()
        .map(|(signal_id, sets)| Expanded {
            signal_id,
            deliveries: sets
                .into_iter()
                .filter_map(|(mut d, claims)| match key.sign(&claims) {
                    Ok(jws) => {
                        d.set_jws = jws;
                        Some(d)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SSF: signing a SET failed");
                        None
                    }
                })
                .collect(),
        })
        .collect()
}

/// The credential that owns a stream: its immutable id (what ownership checks compare) and
/// its name (for listings).
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub id: &'a str,
    pub name: &'a str,
}

/// One push stream's state on this instance: its slots (`--ssf-push-concurrency`) and its
/// circuit breaker.
struct StreamPush {
    concurrency: usize,
    slots: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
}

#[derive(Debug, Default)]
struct Breaker {
    /// Consecutive attempts that came to a retry.
    failures: u32,
    /// While open, no attempt starts.
    open_until: Option<tokio::time::Instant>,
}

impl StreamPush {
    fn new(concurrency: usize) -> StreamPush {
        StreamPush { concurrency, slots: Arc::new(Semaphore::new(concurrency)), breaker: Mutex::default() }
    }

    /// How many more attempts may start now: none while the circuit is open, one at a time
    /// while it is half-open (failing, but its pause is over), else the free slots.
    fn free(&self, now: tokio::time::Instant) -> usize {
        let in_flight = self.concurrency - self.slots.available_permits();
        let breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        let allowed = match breaker.open_until {
            Some(until) if now < until => 0,
            _ if breaker.failures >= BREAKER_THRESHOLD => 1,
            _ => self.concurrency,
        };
        allowed.saturating_sub(in_flight)
    }

    /// Records an attempt's end (`answered`: the receiver settled it, delivered or refused for
    /// good); returns how long the circuit was opened for, when this attempt opened it.
    fn record(&self, answered: bool, now: tokio::time::Instant) -> Option<Duration> {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        if answered {
            *b = Breaker::default();
            return None;
        }
        b.failures = b.failures.saturating_add(1);
        if b.failures < BREAKER_THRESHOLD || b.open_until.is_some_and(|u| now < u) {
            return None;
        }
        let doublings = (b.failures - BREAKER_THRESHOLD).min(16);
        let open_for = BREAKER_FIRST.saturating_mul(1 << doublings).min(BREAKER_LONGEST);
        b.open_until = Some(now + open_for);
        Some(open_for)
    }
}

/// This instance's one waiting long poll of a stream; released on drop.
struct PollerGuard {
    ssf: Ssf,
    id: String,
}

impl PollerGuard {
    fn take(ssf: &Ssf, id: &str) -> Option<PollerGuard> {
        match ssf.pollers.entry(id.to_string()) {
            dashmap::Entry::Occupied(_) => None,
            dashmap::Entry::Vacant(v) => {
                v.insert(());
                Some(PollerGuard { ssf: ssf.clone(), id: id.to_string() })
            }
        }
    }
}

impl Drop for PollerGuard {
    fn drop(&mut self) {
        self.ssf.pollers.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// G-3, G-6: a stream whose attempts keep failing gets no attempt while its circuit is
    /// open, then one at a time; an answered attempt closes it.
    #[test]
    fn the_circuit_opens_after_repeated_failures_and_closes_on_an_answer() {
        let s = StreamPush::new(8);
        let t0 = tokio::time::Instant::now();
        assert_eq!(s.free(t0), 8);
        assert_eq!(s.record(false, t0), None);
        assert_eq!(s.record(false, t0), None);
        assert_eq!(s.free(t0), 8, "two failures: still open for business");
        assert_eq!(s.record(false, t0), Some(BREAKER_FIRST), "the third opens it");
        assert_eq!(s.record(false, t0), None, "an attempt in flight failing meanwhile changes nothing");
        assert_eq!(s.free(t0 + Duration::from_millis(500)), 0, "open");
        assert_eq!(s.free(t0 + BREAKER_FIRST), 1, "half-open: one attempt");
        let slot = s.slots.clone().try_acquire_owned().unwrap();
        assert_eq!(s.free(t0 + BREAKER_FIRST), 0, "that one is in flight");
        drop(slot);
        let t1 = t0 + BREAKER_FIRST;
        let reopened = s.record(false, t1).unwrap();
        assert!(reopened > BREAKER_FIRST && reopened <= BREAKER_LONGEST, "{reopened:?}");
        assert_eq!(s.free(t1 + reopened - Duration::from_millis(1)), 0);
        for _ in 0..40 {
            s.record(false, t1 + Duration::from_secs(3600));
        }
        let b = s.breaker.lock().unwrap();
        let open_for = b.open_until.unwrap() - (t1 + Duration::from_secs(3600));
        assert!(open_for <= BREAKER_LONGEST, "capped: {open_for:?}");
        drop(b);
        assert_eq!(s.record(true, t1), None);
        assert_eq!(s.free(t1), 8, "an answer closes it");
    }
}

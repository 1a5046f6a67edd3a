//! The audit trail: every security event goes to the append-only `audit_log` table and to the
//! structured log (target `audit`), with actor, target, IP, user agent and time. Admins read it at
//! `GET /v1/admin/audit`. Never holds a password or token; failed logins for unknown emails do
//! not record the email (it may be a password typed into the wrong field).
//!
//! Writing the row never fails the request: a database error is logged (and the log line is the
//! fallback record). Throttled (429) login attempts are counted in metrics, not written, so an
//! attacker cannot grow the table at the speed of cheap refusals.

use serde_json::Value;

use crate::clock::Millis;
use crate::store::{NewAuditEvent, Store};

/// Who did it and from where. `actor` is a user id; `None` for the system (sweeps, the CLI).
#[derive(Debug, Clone, Default)]
pub struct Who {
    pub actor: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Who {
    pub fn system() -> Self {
        Who::default()
    }
}

/// What happened to whom.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub kind: &'static str,
    pub target_user: Option<&'a str>,
    pub target_session: Option<&'a str>,
    pub detail: Value,
}

impl<'a> Event<'a> {
    pub fn new(kind: &'static str) -> Self {
        Event { kind, target_user: None, target_session: None, detail: Value::Null }
    }
    pub fn user(mut self, id: &'a str) -> Self {
        self.target_user = Some(id);
        self
    }
    pub fn session(mut self, id: &'a str) -> Self {
        self.target_session = Some(id);
        self
    }
    pub fn detail(mut self, d: Value) -> Self {
        self.detail = d;
        self
    }
}

/// The structured log line of an event (target `audit`).
pub fn log(who: &Who, ev: &Event<'_>) {
    tracing::info!(
        target: "audit",
        event = ev.kind,
        actor = who.actor.as_deref(),
        target_user = ev.target_user,
        target_session = ev.target_session,
        ip = who.ip.as_deref(),
        detail = %ev.detail,
        "audit"
    );
}

/// The row of an event, owned: for a write inside another transaction (a revocation's, whose
/// row commits with it; `Store::revoke`). Log it with [`log`] once it committed.
pub fn row(now: Millis, who: &Who, ev: &Event<'_>) -> crate::store::AuditRecord {
    crate::store::AuditRecord {
        at: now,
        event: ev.kind,
        actor_user_id: who.actor.clone(),
        target_user_id: ev.target_user.map(str::to_string),
        target_session_id: ev.target_session.map(str::to_string),
        ip: who.ip.clone(),
        user_agent: who.user_agent.clone(),
        detail: (!ev.detail.is_null()).then(|| ev.detail.to_string()),
    }
}

/// Records one event (log line, then row).
pub async fn record(store: &Store, now: Millis, who: &Who, ev: Event<'_>) {
    log(who, &ev);
    let row = NewAuditEvent {
        at: now,
        event: ev.kind,
        actor_user_id: who.actor.as_deref(),
        target_user_id: ev.target_user,
        target_session_id: ev.target_session,
        ip: who.ip.as_deref(),
        user_agent: who.user_agent.as_deref(),
        detail: (!ev.detail.is_null()).then(|| ev.detail.to_string()),
    };
    if let Err(e) = store.append_audit(&row).await {
        tracing::error!(error = %e, event = ev.kind, "audit row not written");
    }
}

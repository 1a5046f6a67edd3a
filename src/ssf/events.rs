//! What a Security Event Token says (docs/SSF.md §2): the event URIs, the mapping from each
//! sessiond cause to `initiating_entity` and the reason texts, the subjects, subject matching
//! (§1.4) and the claims of one SET for one stream. Pure: no I/O, no signing.

use serde_json::{json, Map, Value};

use crate::store::ssf::{SignalRow, StreamRow};

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";
const SSF: &str = "https://schemas.openid.net/secevent/ssf/event-type/";

pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
pub const ACCOUNT_DISABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
pub const ACCOUNT_ENABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-enabled";
pub const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
pub const STREAM_UPDATED: &str = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated";

/// `events_supported` (docs/SSF.md §1.2). Verification and stream-updated are always sent
/// when they apply, whatever a stream requested (SSF §8.1.4, §8.1.5).
pub const SUPPORTED: [&str; 4] = [SESSION_REVOKED, CREDENTIAL_CHANGE, ACCOUNT_DISABLED, ACCOUNT_ENABLED];

/// The full event-type URI of an outbox `kind`.
pub fn event_uri(kind: &str) -> Option<String> {
    let base = match kind {
        "session-revoked" | "credential-change" => CAEP,
        "account-disabled" | "account-enabled" => RISC,
        "verification" | "stream-updated" => SSF,
        _ => return None,
    };
    Some(format!("{base}{kind}"))
}

/// `events_delivered` = supported ∩ requested, in the order requested, without repeats (an
/// absent `events_requested` delivers nothing: docs/SSF.md A3).
pub fn delivered(requested: Option<&[String]>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in requested.unwrap_or_default() {
        if SUPPORTED.contains(&e.as_str()) && !out.contains(e) {
            out.push(e.clone());
        }
    }
    out
}

/// Who started a cause and what the user is told (docs/SSF.md §2's table).
pub fn cause(reason: &str) -> (&'static str, Option<&'static str>) {
    match reason {
        "logout" => ("user", Some("You signed out.")),
        "logout_all" | "logout_others" => ("user", Some("You signed out of your other sessions.")),
        "session_revoked" => ("user", Some("This session was ended from another device.")),
        "password_changed" => ("user", Some("Your password was changed.")),
        "admin_logout" | "admin_revoked" => ("admin", Some("An administrator ended your session.")),
        "refresh_token_reused" => ("policy", Some("Your session was ended to protect your account.")),
        "account_disabled" => ("admin", Some("Your account was disabled.")),
        "account_enabled" => ("admin", None),
        _ => ("system", None),
    }
}

/// A user as a simple `iss_sub` subject (RFC 9493 §3.2.3).
pub fn user_subject(issuer: &str, user_id: &str) -> Value {
    json!({ "format": "iss_sub", "iss": issuer, "sub": user_id })
}

/// A session as a complex subject: the user and the session id (= the access token's `sid`).
pub fn session_subject(issuer: &str, user_id: &str, session_id: &str) -> Value {
    json!({
        "format": "complex",
        "user": user_subject(issuer, user_id),
        "session": { "format": "opaque", "id": session_id },
    })
}

/// A subject in the form rules are stored and compared in: a simple `iss_sub` becomes
/// `{format: complex, user: …}` (docs/SSF.md A7); others are kept. `None` for a malformed
/// subject (not an object with a string `format`), which the API answers 400.
pub fn normalize_subject(subject: &Value) -> Option<Value> {
    let obj = subject.as_object()?;
    let format = obj.get("format")?.as_str()?;
    if format == "iss_sub" {
        return Some(json!({ "format": "complex", "user": subject }));
    }
    Some(subject.clone())
}

/// Whether two normalised subjects match (SSF §8.1.3.1): for complex subjects, every member is
/// absent on one side or identical; simple subjects match when identical.
pub fn subjects_match(a: &Value, b: &Value) -> bool {
    let (Some(ao), Some(bo)) = (a.as_object(), b.as_object()) else { return a == b };
    let complex = |o: &Map<String, Value>| o.get("format").and_then(Value::as_str) == Some("complex");
    if complex(ao) && complex(bo) {
        return ao.iter().all(|(k, v)| k == "format" || bo.get(k).is_none_or(|w| w == v))
            && bo.iter().all(|(k, w)| k == "format" || ao.get(k).is_none_or(|v| v == w));
    }
    a == b
}

/// A JSON value as text with every object's members sorted: equal values, equal texts.
fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut members: Vec<(&String, &Value)> = m.iter().collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(members.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            v => v.clone(),
        }
    }
    sorted(v).to_string()
}

/// A rule's key for a member it does not have: it matches any value there.
pub const ANY: &str = "*";
/// A rule's user key when it can match no subject sessiond sends (a simple subject: every
/// subject sessiond sends is complex once normalised).
pub const NONE: &str = "-";

/// The lookup keys `(user_key, session_key)` of a normalised rule, for the one indexed lookup
/// that matches a signal against every stream's rules (SECURITY.md G-2). Every subject
/// sessiond sends is complex with a `user` member and, for a session, a `session` member, so a
/// complex rule matches it exactly when each of those two members is absent from the rule
/// ([`ANY`]) or identical ([`subjects_match`]'s rule; members the subject lacks never decide).
/// A simple rule matches none of them ([`NONE`]).
pub fn rule_keys(rule: &Value) -> (String, String) {
    let Some(o) = rule.as_object().filter(|o| o.get("format").and_then(Value::as_str) == Some("complex")) else {
        return (NONE.to_string(), ANY.to_string());
    };
    let key = |member: &str| o.get(member).map_or_else(|| ANY.to_string(), canonical);
    (key("user"), key("session"))
}

/// The keys a signal about `user` (and `session`) is looked up with: those of the `user` and
/// `session` members of its subject, as [`rule_keys`] makes them.
pub fn signal_keys(issuer: &str, user: &str, session: Option<&str>) -> (String, Option<String>) {
    let subject = match session {
        Some(sid) => session_subject(issuer, user, sid),
        None => json!({ "format": "complex", "user": user_subject(issuer, user) }),
    };
    let key = |member: &str| subject.get(member).map(canonical);
    (key("user").unwrap_or_default(), key("session"))
}

/// The SET claims of `signal` for `stream`, or `None` when the stream does not get it (an
/// event it did not ask for, a subject the stream `excluded` (its rules matched, see
/// [`rule_keys`]), another stream's verification, a disabled stream). `jti` and `iat`
/// (seconds) come from the caller.
pub fn claims(
    issuer: &str,
    signal: &SignalRow,
    stream: &StreamRow,
    excluded: bool,
    jti: &str,
    iat: i64,
) -> Option<Value> {
    let uri = event_uri(&signal.kind)?;
    let about_stream = matches!(signal.kind.as_str(), "verification" | "stream-updated");
    if about_stream {
        if signal.stream_id.as_deref() != Some(stream.id.as_str()) {
            return None;
        }
        // A disabled stream holds nothing, verification included; only its own
        // stream-updated events go out (docs/SSF.md §4).
        if signal.kind == "verification" && stream.status == "disabled" {
            return None;
        }
    } else {
        if signal.stream_id.is_some() || stream.status == "disabled" {
            return None;
        }
        let wanted: Vec<String> = serde_json::from_str(&stream.events_delivered).unwrap_or_default();
        if !wanted.contains(&uri) {
            return None;
        }
    }
    let payload: Value = signal.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or(json!({}));
    let (sub_id, event) = match signal.kind.as_str() {
        "verification" => {
            let mut ev = Map::new();
            if let Some(state) = payload.get("state").filter(|s| s.is_string()) {
                ev.insert("state".into(), state.clone());
            }
            (json!({ "format": "opaque", "id": stream.id }), Value::Object(ev))
        }
        "stream-updated" => {
            let mut ev = Map::new();
            ev.insert("status".into(), payload.get("status").cloned().unwrap_or(json!(stream.status)));
            if let Some(reason) = payload.get("reason").filter(|r| r.is_string()) {
                ev.insert("reason".into(), reason.clone());
            }
            (json!({ "format": "opaque", "id": stream.id }), Value::Object(ev))
        }
        kind => {
            let user = signal.user_id.as_deref()?;
            let sub_id = match (kind, signal.session_id.as_deref()) {
                ("session-revoked", Some(sid)) => session_subject(issuer, user, sid),
                ("session-revoked", None) => return None,
                _ => user_subject(issuer, user),
            };
            if excluded {
                return None;
            }
            let mut ev = Map::new();
            if kind == "credential-change" {
                ev.insert("credential_type".into(), json!("password"));
                ev.insert("change_type".into(), json!("update"));
            }
            let (entity, user_text) = cause(&signal.reason);
            ev.insert("event_timestamp".into(), json!(signal.occurred_at.div_euclid(1000)));
            ev.insert("initiating_entity".into(), json!(entity));
            ev.insert("reason_admin".into(), json!({ "en": signal.reason }));
            if let Some(text) = user_text {
                ev.insert("reason_user".into(), json!({ "en": text }));
            }
            if stream.event_subject {
                ev.insert("subject".into(), sub_id.clone());
            }
            (sub_id, Value::Object(ev))
        }
    };
    let mut set = Map::new();
    set.insert("iss".into(), json!(issuer));
    set.insert("aud".into(), json!(stream.aud));
    set.insert("iat".into(), json!(iat));
    set.insert("jti".into(), json!(jti));
    if let (Some(txn), false) = (&signal.txn, about_stream) {
        set.insert("txn".into(), json!(txn));
    }
    set.insert("sub_id".into(), sub_id);
    set.insert("events".into(), json!({ uri: event }));
    Some(Value::Object(set))
}

/// The key that orders a stream's SETs (docs/SSF.md §3.1: SETs about one user are never in
/// flight together nor reordered; stream-updated goes ahead of what a paused stream holds).
pub fn subject_key(signal: &SignalRow) -> String {
    match (signal.kind.as_str(), &signal.user_id) {
        ("stream-updated", _) => "stream-updated".to_string(),
        ("verification", _) => "stream".to_string(),
        (_, Some(user)) => format!("user:{user}"),
        _ => "none".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(events: &[&str]) -> StreamRow {
        StreamRow {
            id: "st_1".into(),
            owner_id: "svc_1".into(),
            owner: "billing".into(),
            aud: "billing".into(),
            delivery: "{}".into(),
            method: "push".into(),
            endpoint_url: None,
            authorization_header: None,
            events_requested: None,
            events_delivered: serde_json::to_string(events).unwrap(),
            description: None,
            event_subject: false,
            status: "enabled".into(),
            status_reason: None,
            status_by: None,
            health: "ok".into(),
            last_success_at: None,
            last_error: None,
            last_verify_at: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn signal(kind: &str, reason: &str, session: Option<&str>) -> SignalRow {
        SignalRow {
            id: 1,
            kind: kind.into(),
            user_id: Some("u_1".into()),
            session_id: session.map(Into::into),
            reason: reason.into(),
            txn: Some("tx_1".into()),
            occurred_at: 1_767_225_600_123,
            stream_id: None,
            payload: None,
        }
    }

    #[test]
    fn session_revoked_set() {
        let s = stream(&[SESSION_REVOKED]);
        let c =
            claims("https://i", &signal("session-revoked", "logout_others", Some("s_1")), &s, false, "j", 5).unwrap();
        assert_eq!(c["sub_id"], session_subject("https://i", "u_1", "s_1"));
        let ev = &c["events"][SESSION_REVOKED];
        assert_eq!(ev["initiating_entity"], "user");
        assert_eq!(ev["reason_admin"]["en"], "logout_others");
        assert_eq!(ev["event_timestamp"], 1_767_225_600);
        assert_eq!(c["txn"], "tx_1");
        assert!(c.get("sub").is_none() && c.get("exp").is_none());
        assert_eq!(c["events"].as_object().unwrap().len(), 1);
    }

    #[test]
    fn not_requested_or_excluded_is_not_sent() {
        let s = stream(&[CREDENTIAL_CHANGE]);
        assert!(claims("i", &signal("session-revoked", "logout", Some("s")), &s, false, "j", 0).is_none());
        let s = stream(&[SESSION_REVOKED]);
        assert!(claims("i", &signal("session-revoked", "logout", Some("s")), &s, true, "j", 0).is_none());
        assert!(claims("i", &signal("session-revoked", "logout", Some("s")), &s, false, "j", 0).is_some());
    }

    /// Whether the store's lookup (`user_key IN (u, *) AND (no session OR session_key IN (s, *))`)
    /// finds `rule` for the signal keys.
    fn lookup_matches(rule: &Value, signal: &(String, Option<String>)) -> bool {
        let (user_key, session_key) = rule_keys(rule);
        (user_key == signal.0 || user_key == ANY)
            && signal.1.as_ref().is_none_or(|s| session_key == *s || session_key == ANY)
    }

    /// G-2: the keyed lookup decides exactly as `subjects_match` over every rule shape a receiver
    /// can send, for session and user subjects (members in any order).
    #[test]
    fn g2_keyed_lookup_agrees_with_subject_matching() {
        let iss = "https://i";
        let user = |u: &str| user_subject(iss, u);
        let session = |s: &str| json!({ "id": s, "format": "opaque" });
        let rules = vec![
            normalize_subject(&user("u")).unwrap(),
            normalize_subject(&user("v")).unwrap(),
            normalize_subject(&json!({ "sub": "u", "format": "iss_sub", "iss": iss })).unwrap(),
            normalize_subject(&json!({ "format": "iss_sub", "iss": "https://other", "sub": "u" })).unwrap(),
            json!({ "format": "complex", "user": user("u"), "session": session("s") }),
            json!({ "format": "complex", "user": user("u"), "session": session("t") }),
            json!({ "format": "complex", "session": session("s") }),
            json!({ "format": "complex", "tenant": { "format": "opaque", "id": "x" } }),
            json!({ "format": "complex" }),
            json!({ "format": "complex", "user": { "format": "email", "email": "u@example.com" } }),
            json!({ "format": "opaque", "id": "u" }),
            json!({ "format": "email", "email": "u@example.com" }),
            normalize_subject(&json!({ "format": "iss_sub", "iss": iss, "sub": 5 })).unwrap(),
        ];
        let subjects = [
            (session_subject(iss, "u", "s"), signal_keys(iss, "u", Some("s"))),
            (session_subject(iss, "u", "t"), signal_keys(iss, "u", Some("t"))),
            (session_subject(iss, "v", "s"), signal_keys(iss, "v", Some("s"))),
            (normalize_subject(&user("u")).unwrap(), signal_keys(iss, "u", None)),
            (normalize_subject(&user("5")).unwrap(), signal_keys(iss, "5", None)),
        ];
        let mut hits = 0;
        for rule in &rules {
            for (subject, keys) in &subjects {
                let expected = subjects_match(rule, subject);
                assert_eq!(lookup_matches(rule, keys), expected, "rule {rule} vs subject {subject}");
                hits += usize::from(expected);
            }
        }
        assert!(hits > 10, "the cases cover matches as well as misses ({hits})");
    }

    #[test]
    fn credential_change_and_risc() {
        let s = stream(&[CREDENTIAL_CHANGE, ACCOUNT_DISABLED]);
        let c = claims("i", &signal("credential-change", "password_changed", None), &s, false, "j", 0).unwrap();
        assert_eq!(c["sub_id"], user_subject("i", "u_1"));
        assert_eq!(c["events"][CREDENTIAL_CHANGE]["credential_type"], "password");
        let c = claims("i", &signal("account-disabled", "account_disabled", None), &s, false, "j", 0).unwrap();
        assert_eq!(c["events"][ACCOUNT_DISABLED]["initiating_entity"], "admin");
        assert!(c["events"][ACCOUNT_DISABLED].get("reason").is_none());
    }

    #[test]
    fn matching_rules() {
        let u = normalize_subject(&user_subject("i", "u")).unwrap();
        let us = session_subject("i", "u", "s");
        assert!(subjects_match(&u, &us));
        assert!(!subjects_match(&normalize_subject(&user_subject("i", "v")).unwrap(), &us));
        assert!(normalize_subject(&json!({ "sub": "x" })).is_none());
        assert!(normalize_subject(&json!("x")).is_none());
    }

    #[test]
    fn delivered_is_the_intersection() {
        let req = vec![SESSION_REVOKED.to_string(), "urn:example:unknown".into(), SESSION_REVOKED.into()];
        assert_eq!(delivered(Some(&req)), vec![SESSION_REVOKED.to_string()]);
        assert!(delivered(None).is_empty());
    }
}

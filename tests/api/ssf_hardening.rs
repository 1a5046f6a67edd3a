//! The holes an independent attack found in the Shared Signals transmitter (SECURITY.md G-1,
//! G-2, G-3, G-6), each reproduction turned into a test of the real server over real sockets,
//! with real push receivers. Run on SQLite here and on PostgreSQL in the `postgres` binary.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::service::service_cli;
use crate::ssf::{call, next_set, post, push_stream, receiver_credential, ssf_app, ssf_cli, Checker};
use crate::ssf_receiver::Receiver;

const S: &str = "https://schemas.openid.net/secevent/ssf/event-type/";

/// Audit events named `event`, with their detail, read behind the server's back.
async fn audit_details(app: &TestApp, event: &str) -> Vec<Value> {
    let sql = format!("SELECT detail FROM audit_log WHERE event = '{event}' ORDER BY id");
    let rows: Vec<(Option<String>,)> = match app.raw_db().await {
        RawDb::Sqlite(mut c) => sqlx::query_as(&sql).fetch_all(&mut c).await.unwrap(),
        RawDb::Postgres(mut c) => sqlx::query_as(&sql).fetch_all(&mut c).await.unwrap(),
    };
    rows.into_iter().map(|(d,)| serde_json::from_str(&d.unwrap_or_default()).unwrap_or(Value::Null)).collect()
}

/// How many rows of `table` refer to stream `id` (column `stream_id`).
async fn rows_of_stream(app: &TestApp, table: &str, id: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE stream_id = '{id}'");
    match app.raw_db().await {
        RawDb::Sqlite(mut c) => sqlx::query_scalar(&sql).fetch_one(&mut c).await.unwrap(),
        RawDb::Postgres(mut c) => sqlx::query_scalar(&sql).fetch_one(&mut c).await.unwrap(),
    }
}

// ---- G-1: a removed credential's stream, and the operator's disable ----

/// G-1. After `sessiond service remove NAME`, the credential's stream is gone in the removal's
/// own transaction, with every SET it held and its subject rules (audited): the next logout
/// reaches its receiver no more. (Before the fix the SET was still POSTed to the old endpoint,
/// with the old `Authorization` header.)
#[tokio::test]
async fn g1_a_removed_credentials_stream_gets_nothing_more() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, Some("Bearer rx-secret")).await;
    let id = stream["stream_id"].as_str().unwrap().to_string();
    let iss = app.state.config.issuer.clone();
    let excluded = json!({ "format": "iss_sub", "iss": iss, "sub": "u_someone" });
    let r = post(&app, "/ssf/subjects:remove", &sk, json!({ "stream_id": id, "subject": excluded })).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The stream works: a logout is pushed.
    let mut c0 = Checker::new(&app).await;
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    next_set(&rx, &mut c0, &name).await;
    // A SET still waiting when the credential goes: the receiver answers 503 once, so it stays pending.
    rx.answer_next(503, "");
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    assert_eq!(rx.next(Duration::from_secs(5)).await.expect("the push attempt").answered, 503);

    let out = service_cli(&app.config.database_url, &["remove", &name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    for table in ["ssf_deliveries", "ssf_subject_rules", "ssf_heads"] {
        assert_eq!(rows_of_stream(&app, table, &id).await, 0, "{table} still holds rows of the removed stream");
    }
    assert!(app.state.store.ssf_stream(&id).await.unwrap().is_none(), "the stream went with its credential");
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    // The retry of the held SET would come after ~1 s, the new logout within 1 s.
    rx.expect_none(Duration::from_secs(3)).await;
    let deleted = audit_details(&app, "ssf_stream_deleted").await;
    assert!(
        deleted.iter().any(|d| d["stream_id"] == json!(id) && d["by"] == "service_removed"),
        "the stream's deletion is audited with its cause: {deleted:?}"
    );
    // The gauges of the stream's labels go too (every instance forgets them at its next refresh).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if !metrics.contains(&id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the removed stream's metric labels stay");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// G-1. A credential added again under a removed one's name starts with no stream: it cannot
/// see the old stream, and its own create succeeds (before: 409 `stream_exists`, and the old
/// stream, with the old receiver's endpoint, was its own).
#[tokio::test]
async fn g1_a_recreated_name_starts_with_no_stream() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let old = push_stream(&app, &sk, &rx, None).await;
    let old_id = old["stream_id"].as_str().unwrap();
    let out = service_cli(&app.config.database_url, &["remove", &name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = service_cli(&app.config.database_url, &["add", &name, "--scope", "ssf"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sk2 = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let r = call(&app, reqwest::Method::GET, "/ssf/stream", &sk2, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]), "the new credential owns no stream");
    let r = call(&app, reqwest::Method::GET, &format!("/ssf/stream?stream_id={old_id}"), &sk2, None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let rx2 = Receiver::start().await;
    let new = push_stream(&app, &sk2, &rx2, None).await;
    assert_ne!(new["stream_id"], old["stream_id"]);
    // Only the new receiver hears the next logout.
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    let got = rx2.next(Duration::from_secs(5)).await.expect("the new stream's SET");
    assert_eq!(got.claims()["sub_id"]["session"]["id"], json!(t.session_id));
    rx.expect_none(Duration::from_millis(500)).await;
}

/// G-1. An operator's `ssf stream disable` is sticky: the stream's owner cannot lift it with
/// `POST /ssf/status` (403, and the status stays), and sees `disabled` with the operator's
/// reason. (Before: the receiver re-enabled it and kept receiving every user's SETs.)
#[tokio::test]
async fn g1_an_operator_disable_survives_the_receivers_status_call() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, None).await;
    let id = stream["stream_id"].as_str().unwrap();
    let mut c0 = Checker::new(&app).await;
    let out = ssf_cli(&app, &["stream", "disable", id, "--reason", "cut off by the operator"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, claims) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(claims["events"][format!("{S}stream-updated")]["status"], "disabled");

    for status in ["enabled", "paused", "disabled"] {
        let r = post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": status })).await;
        assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let r = call(&app, reqwest::Method::GET, &format!("/ssf/status?stream_id={id}"), &sk, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "stream_id": id, "status": "disabled", "reason": "cut off by the operator" })
    );
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    rx.expect_none(Duration::from_secs(2)).await;

    // The operator may lift it; then the receiver manages its status again.
    let out = ssf_cli(&app, &["stream", "enable", id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, claims) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(claims["events"][format!("{S}stream-updated")]["status"], "enabled");
    let r = post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "paused" })).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "enabled" })).await;
    assert_eq!(r.status(), StatusCode::OK);
    // A receiver's own disable is not sticky for itself.
    let r = post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "disabled" })).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "enabled" })).await;
    assert_eq!(r.status(), StatusCode::OK);
}

// ---- G-2: subject rules ----

/// A subject rule of stream `id` for user `n`, stored through the store as `subjects:remove`
/// stores it (bypassing the HTTP rate limit, to fill a stream quickly).
pub async fn store_rule(app: &TestApp, id: &str, n: usize) -> sessiond::store::ssf::RuleChange {
    let subject = json!({ "format": "iss_sub", "iss": app.state.config.issuer, "sub": format!("u_rule_{n}") });
    let normalized = sessiond::ssf::events::normalize_subject(&subject).unwrap();
    let (u, s) = sessiond::ssf::events::rule_keys(&normalized);
    app.state.store.ssf_exclude_subject(id, &normalized.to_string(), (&u, &s), true).await.unwrap()
}

/// G-2. `subjects:remove` is rate-limited per credential (429 with `Retry-After`, another
/// credential unaffected) and a stream holds at most `MAX_SUBJECT_RULES` rules (400 past it):
/// 60,000 rules in 40 s are refused long before they could slow anything. (Before: every call
/// was stored, never a 429.)
#[tokio::test]
async fn g2_subject_rules_are_rate_limited_and_bounded() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (_, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, None).await;
    let id = stream["stream_id"].as_str().unwrap().to_string();
    let iss = app.state.config.issuer.clone();
    let remove = |n: usize| {
        let body = json!({ "stream_id": id, "subject": { "format": "iss_sub", "iss": iss, "sub": format!("u_{n}") } });
        post(&app, "/ssf/subjects:remove", &sk, body)
    };
    // As fast as one client goes: at most the burst and the steady rate pass.
    let started = std::time::Instant::now();
    let (mut stored, mut limited) = (0, 0);
    let mut retry_after = None;
    for n in 0..200 {
        let r = remove(n).await;
        match r.status() {
            StatusCode::NO_CONTENT => stored += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let allowed = 60 + (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(stored <= allowed, "{stored} rules stored in {:?}, more than the limit allows", started.elapsed());
    assert!(limited > 0 && stored >= 60, "stored {stored}, limited {limited}");
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    // Another credential has its own budget.
    let (_, sk2) = receiver_credential(&app).await;
    let rx2 = Receiver::start().await;
    let other = push_stream(&app, &sk2, &rx2, None).await;
    let body = json!({ "stream_id": other["stream_id"], "subject": { "format": "iss_sub", "iss": iss, "sub": "u_x" } });
    assert_eq!(post(&app, "/ssf/subjects:remove", &sk2, body).await.status(), StatusCode::NO_CONTENT);

    // The bound: fill the stream to it (through the store), and the next is refused.
    let max = sessiond::store::ssf::MAX_SUBJECT_RULES as usize;
    for n in stored..max {
        assert_eq!(store_rule(&app, &id, n).await, sessiond::store::ssf::RuleChange::Done);
    }
    assert_eq!(rows_of_stream(&app, "ssf_subject_rules", &id).await, max as i64);
    assert_eq!(store_rule(&app, &id, max).await, sessiond::store::ssf::RuleChange::Full);
    // Once the rate allows a call again, HTTP answers 400 at the bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = remove(1_000_000).await;
        if r.status() != StatusCode::TOO_MANY_REQUESTS {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "still rate limited");
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(rows_of_stream(&app, "ssf_subject_rules", &id).await, max as i64);
    // Adding a subject back (deleting a rule) is never refused by the bound, and makes room.
    let body = json!({ "stream_id": id, "subject": { "format": "iss_sub", "iss": iss, "sub": "u_rule_100" } });
    let r = loop {
        let r = post(&app, "/ssf/subjects:add", &sk, body.clone()).await;
        if r.status() != StatusCode::TOO_MANY_REQUESTS {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(rows_of_stream(&app, "ssf_subject_rules", &id).await, max as i64 - 1);
}

/// G-2. With a stream full of rules, matching still excludes exactly the listed users (one
/// indexed lookup per signal): a listed user's logout is not delivered, an unlisted one's is.
#[tokio::test]
async fn g2_a_full_rule_set_still_matches_exactly() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, None).await;
    let id = stream["stream_id"].as_str().unwrap();
    for n in 0..(sessiond::store::ssf::MAX_SUBJECT_RULES as usize - 1) {
        store_rule(&app, id, n).await;
    }
    let listed = app.new_session().await;
    let subject = json!({ "format": "iss_sub", "iss": app.state.config.issuer, "sub": listed.user_id });
    let r = post(&app, "/ssf/subjects:remove", &sk, json!({ "stream_id": id, "subject": subject })).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let unlisted = app.new_session().await;
    app.post_auth("/v1/auth/logout", &listed.access, None).await;
    app.post_auth("/v1/auth/logout", &unlisted.access, None).await;
    let mut c0 = Checker::new(&app).await;
    let (_, claims) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(claims["sub_id"]["user"]["sub"], json!(unlisted.user_id));
    rx.expect_none(Duration::from_secs(1)).await;
}

// ---- G-3: one stalled receiver beside a healthy one ----

/// G-3. A receiver that reads each SET and never answers (a tarpit) beside a healthy one: the
/// healthy one's SETs stay on time (every one ≤ 1 s after its logout), because claims are per
/// stream and the stalled stream holds only its own slots. (Before: 17 of 41 were more than 5 s
/// late, the last after 100 s.)
#[tokio::test]
async fn g3_a_tarpit_beside_a_healthy_receiver_leaves_it_on_time() {
    let Some(app) = ssf_app().await else { return };
    let tarpit = crate::ssf_receiver::Tarpit::start().await;
    let (_, sk_slow) = receiver_credential(&app).await;
    let body = json!({
        "delivery": { "method": "urn:ietf:rfc:8935", "endpoint_url": tarpit.url() },
        "events_requested": [format!("https://schemas.openid.net/secevent/caep/event-type/session-revoked")],
    });
    assert_eq!(post(&app, "/ssf/stream", &sk_slow, body).await.status(), StatusCode::CREATED);
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    push_stream(&app, &sk, &rx, None).await;
    let mut sessions = Vec::new();
    for _ in 0..41 {
        sessions.push(app.new_session().await);
    }
    let mut c0 = Checker::new(&app).await;
    let mut late = Vec::new();
    for t in &sessions {
        let sent = std::time::Instant::now();
        assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
        let (got, claims) = next_set(&rx, &mut c0, &name).await;
        assert_eq!(claims["sub_id"]["session"]["id"], json!(t.session_id));
        let latency = got.at.duration_since(sent);
        if latency > Duration::from_secs(1) {
            late.push(latency);
        }
    }
    assert!(tarpit.requests() > 0, "the tarpit was pushed to");
    assert!(late.is_empty(), "{} of 41 SETs more than 1 s late: {late:?}", late.len());
}

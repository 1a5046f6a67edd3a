//! Shared Signals transmitter (docs/SSF.md): the black-box checks of §6, each against the real
//! server over real sockets, with a scripted push receiver (`support/ssf_receiver.rs`) and
//! every SET checked by rule C0 with an RSA verifier independent of the signer
//! (`support/ssf_c0.rs`: jsonwebtoken's RustCrypto backend; the server signs with aws-lc-rs).
//! Run on SQLite here and on PostgreSQL in the `postgres` binary.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiond::service_credentials::Scope;

use crate::helpers::*;
use crate::service::credential;
use crate::ssf_c0::check_c0_at;
use crate::ssf_receiver::{Received, Receiver};

const C: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const R: &str = "https://schemas.openid.net/secevent/risc/event-type/";
const S: &str = "https://schemas.openid.net/secevent/ssf/event-type/";
const WAIT: Duration = Duration::from_secs(5);

fn all_events() -> Value {
    json!([
        format!("{C}session-revoked"),
        format!("{C}credential-change"),
        format!("{R}account-disabled"),
        format!("{R}account-enabled"),
    ])
}

/// A server whose push may go to loopback http (the harness flag of §6), with short long polls.
pub async fn ssf_app() -> Option<TestApp> {
    spawn_app_with(|c| {
        c.ssf_allow_insecure_push = true;
        c.ssf_poll_wait = Duration::from_secs(2);
    })
    .await
}

/// A receiver credential (scope `ssf`): `(name, secret)`.
pub async fn receiver_credential(app: &TestApp) -> (String, String) {
    let name = format!("rx-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let sk = credential(app, &name, &[Scope::Ssf]).await;
    (name, sk)
}

pub async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    sk: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(sk);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

pub async fn post(app: &TestApp, path: &str, sk: &str, body: Value) -> reqwest::Response {
    call(app, reqwest::Method::POST, path, sk, Some(body)).await
}

/// Creates a push stream to `rx` for every supported event; returns its configuration.
pub async fn push_stream(app: &TestApp, sk: &str, rx: &Receiver, auth: Option<&str>) -> Value {
    let mut delivery = json!({ "method": "urn:ietf:rfc:8935", "endpoint_url": rx.url() });
    if let Some(a) = auth {
        delivery["authorization_header"] = json!(a);
    }
    let r = post(app, "/ssf/stream", sk, json!({ "delivery": delivery, "events_requested": all_events() })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

/// Checks C0 on every SET of a run.
pub struct Checker {
    clock: sessiond::clock::Clock,
    jwks: Value,
    access_jwks: Value,
    issuer: String,
    seen: HashSet<String>,
}

impl Checker {
    pub async fn new(app: &TestApp) -> Checker {
        let jwks = app.client.get(app.url("/ssf/jwks.json")).send().await.unwrap().json().await.unwrap();
        let access_jwks = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
        Checker {
            clock: app.clock.clone(),
            jwks,
            access_jwks,
            issuer: app.state.config.issuer.clone(),
            seen: HashSet::new(),
        }
    }

    /// The claims of `set` after C0 passed for stream audience `aud`.
    pub fn check(&mut self, set: &str, aud: &str) -> Value {
        let now = self.clock.now_secs();
        check_c0_at(set, &self.jwks, &self.access_jwks, &self.issuer, aud, &mut self.seen, now)
            .unwrap_or_else(|e| panic!("C0 failed: {e}"))
    }
}

/// The next pushed SET, checked; panics after `WAIT`.
pub async fn next_set(rx: &Receiver, c0: &mut Checker, aud: &str) -> (Received, Value) {
    let got = rx.next(WAIT).await.expect("a SET within 5 s");
    let claims = c0.check(&got.body, aud);
    (got, claims)
}

pub fn event_of(claims: &Value) -> (String, Value) {
    let (k, v) = claims["events"].as_object().unwrap().iter().next().unwrap();
    (k.clone(), v.clone())
}

// ---- 1, 2: metadata and keys ----

#[tokio::test]
async fn c1_metadata() {
    let Some(app) = ssf_app().await else { return };
    let r = app.client.get(app.url("/.well-known/ssf-configuration")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    let m: Value = serde_json::from_str(&text).unwrap();
    let iss = &app.state.config.issuer;
    let base = iss.trim_end_matches('/');
    assert_eq!(m["issuer"], json!(iss));
    assert_eq!(m["spec_version"], "1_0");
    assert_eq!(m["delivery_methods_supported"], json!(["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"]));
    assert_eq!(m["jwks_uri"], json!(format!("{base}/ssf/jwks.json")));
    for (k, p) in [
        ("configuration_endpoint", "/ssf/stream"),
        ("status_endpoint", "/ssf/status"),
        ("add_subject_endpoint", "/ssf/subjects:add"),
        ("remove_subject_endpoint", "/ssf/subjects:remove"),
        ("verification_endpoint", "/ssf/verify"),
    ] {
        assert_eq!(m[k], json!(format!("{base}{p}")), "{k}");
    }
    assert!(m["authorization_schemes"].as_array().unwrap().contains(&json!({ "spec_urn": "urn:ietf:rfc:6749" })));
    assert_eq!(m["default_subjects"], "ALL");
    for (k, v) in m.as_object().unwrap() {
        assert!(v.as_array().is_none_or(|a| !a.is_empty()), "{k} is an empty array");
    }
}

#[tokio::test]
async fn c2_keys_are_rsa_and_not_the_access_keys() {
    let Some(app) = ssf_app().await else { return };
    let jwks: Value = app.client.get(app.url("/ssf/jwks.json")).send().await.unwrap().json().await.unwrap();
    let access: Value = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let access_kids: Vec<&Value> = access["keys"].as_array().unwrap().iter().map(|k| &k["kid"]).collect();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(!keys.is_empty());
    for k in keys {
        assert_eq!(k["kty"], "RSA");
        assert_eq!(k["alg"], "RS256");
        assert_eq!(k["use"], "sig");
        assert!(!access_kids.contains(&&k["kid"]));
        use base64::Engine as _;
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(k["n"].as_str().unwrap()).unwrap();
        let bits = n.len() * 8 - n[0].leading_zeros() as usize;
        assert!(bits >= 2048, "{bits}-bit modulus");
    }
}

// ---- 3 .. 9: management ----

#[tokio::test]
async fn c3_auth_on_create() {
    let Some(app) = ssf_app().await else { return };
    let body = json!({});
    let r = app.client.post(app.url("/ssf/stream")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let (_, sk) = receiver_credential(&app).await;
    let r = app.client.post(app.url(&format!("/ssf/stream?access_token={sk}"))).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let user = app.new_session().await;
    let r = post(&app, "/ssf/stream", &user.access, body.clone()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let other = credential(&app, "no-ssf", &[Scope::RevocationsRead]).await;
    let r = post(&app, "/ssf/stream", &other, body.clone()).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A read-only token from /oauth2/token may read, not create.
    let (name, sk) = receiver_credential(&app).await;
    let read_only = crate::ssf_auth::token_for(&app, &name, &sk, Some("ssf.read")).await;
    let r = post(&app, "/ssf/stream", &read_only, body).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains(r#"error="insufficient_scope""#));
    let r = call(&app, reqwest::Method::GET, "/ssf/stream", &read_only, None).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn c4_c5_c6_c7_create_read_and_bad_creates() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let delivery =
        json!({ "method": "urn:ietf:rfc:8935", "endpoint_url": rx.url(), "authorization_header": "Bearer rx-7f3a" });
    let requested = json!([format!("{C}session-revoked"), "urn:example:unknown"]);
    let r = post(
        &app,
        "/ssf/stream",
        &sk,
        json!({ "delivery": delivery, "events_requested": requested, "description": "billing" }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let id = created["stream_id"].as_str().unwrap().to_string();
    assert!(
        id.len() == 35
            && id.starts_with("st_")
            && id[3..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(created["iss"], json!(app.state.config.issuer));
    assert_eq!(created["aud"], json!(name));
    assert_eq!(created["delivery"], delivery);
    assert_eq!(created["events_requested"], requested);
    assert_eq!(created["events_delivered"], json!([format!("{C}session-revoked")]));
    assert_eq!(created["events_supported"].as_array().unwrap().len(), 4);

    // 5: one stream per credential; bad bodies.
    let r = post(&app, "/ssf/stream", &sk, json!({})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let (_, sk2) = receiver_credential(&app).await;
    let r = app
        .client
        .post(app.url("/ssf/stream"))
        .bearer_auth(&sk2)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = post(&app, "/ssf/stream", &sk2, json!({ "delivery": { "method": "urn:example:x" } })).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = post(
        &app,
        "/ssf/stream",
        &sk2,
        json!({ "delivery": { "method": "urn:ietf:rfc:8935", "endpoint_url": "ftp://x" } }),
    )
    .await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;

    // 6: poll without delivery, its endpoint unique.
    let r = post(&app, "/ssf/stream", &sk2, json!({ "events_requested": all_events() })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let poll: Value = r.json().await.unwrap();
    assert_eq!(poll["delivery"]["method"], "urn:ietf:rfc:8936");
    let poll_url = poll["delivery"]["endpoint_url"].as_str().unwrap();
    assert!(poll_url.ends_with(&format!("/ssf/poll/{}", poll["stream_id"].as_str().unwrap())));

    // 7: reads.
    let r = call(&app, reqwest::Method::GET, &format!("/ssf/stream?stream_id={id}"), &sk, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), created);
    let r = call(&app, reqwest::Method::GET, "/ssf/stream", &sk, None).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!([created]));
    let (_, none) = receiver_credential(&app).await;
    let r = call(&app, reqwest::Method::GET, "/ssf/stream", &none, None).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
    let r = call(&app, reqwest::Method::GET, &format!("/ssf/stream?stream_id={id}"), &sk2, None).await;
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(r_status(&app, &sk2, &id).await, StatusCode::NOT_FOUND);
}

async fn r_status(app: &TestApp, sk: &str, id: &str) -> StatusCode {
    call(app, reqwest::Method::GET, &format!("/ssf/status?stream_id={id}"), sk, None).await.status()
}

#[tokio::test]
async fn c8_c9_update_replace_status() {
    let Some(app) = ssf_app().await else { return };
    let (_, sk) = receiver_credential(&app).await;
    let r = post(&app, "/ssf/stream", &sk, json!({ "events_requested": all_events(), "description": "a" })).await;
    let created: Value = r.json().await.unwrap();
    let id = created["stream_id"].as_str().unwrap();
    let r =
        call(&app, reqwest::Method::PATCH, "/ssf/stream", &sk, Some(json!({ "stream_id": id, "description": "x" })))
            .await;
    assert_eq!(r.status(), StatusCode::OK);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["description"], "x");
    assert_eq!(patched["events_requested"], created["events_requested"]);
    let r =
        call(&app, reqwest::Method::PATCH, "/ssf/stream", &sk, Some(json!({ "stream_id": id, "iss": "https://evil" })))
            .await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = call(
        &app,
        reqwest::Method::PUT,
        "/ssf/stream",
        &sk,
        Some(json!({ "stream_id": id, "events_requested": all_events() })),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let replaced: Value = r.json().await.unwrap();
    assert!(replaced.get("description").is_none());
    let unknown = "st_00000000000000000000000000000000";
    let r = call(
        &app,
        reqwest::Method::PATCH,
        "/ssf/stream",
        &sk,
        Some(json!({ "stream_id": unknown, "description": "x" })),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // 9
    let r = call(&app, reqwest::Method::GET, &format!("/ssf/status?stream_id={id}"), &sk, None).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "stream_id": id, "status": "enabled" }));
    let r = post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "paused", "reason": "r" })).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "stream_id": id, "status": "paused", "reason": "r" }));
    let r = call(&app, reqwest::Method::GET, &format!("/ssf/status?stream_id={id}"), &sk, None).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "stream_id": id, "status": "paused", "reason": "r" }));
    let r = post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "bogus" })).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
}

// ---- 10, 11: verification ----

#[tokio::test]
async fn c10_c11_verification_over_push() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, Some("Bearer rx-7f3a")).await;
    let id = stream["stream_id"].as_str().unwrap();
    let mut c0 = Checker::new(&app).await;
    let r = post(&app, "/ssf/verify", &sk, json!({ "stream_id": id, "state": "S-1" })).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (got, claims) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(got.content_type.as_deref(), Some("application/secevent+jwt"));
    assert_eq!(got.authorization.as_deref(), Some("Bearer rx-7f3a"));
    assert_eq!(claims["sub_id"], json!({ "format": "opaque", "id": id }));
    assert_eq!(event_of(&claims), (format!("{S}verification"), json!({ "state": "S-1" })));

    // 11: within the interval → 429; after it → 204 (the test clock moves instead of waiting).
    let r = post(&app, "/ssf/verify", &sk, json!({ "stream_id": id })).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    app.clock.advance(Duration::from_secs(11));
    let r = post(&app, "/ssf/verify", &sk, json!({ "stream_id": id })).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, claims) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(event_of(&claims).1, json!({}));

    // A stream without an authorization header pushes none.
    let rx2 = Receiver::start().await;
    let (name2, sk2) = receiver_credential(&app).await;
    let s2 = push_stream(&app, &sk2, &rx2, None).await;
    let r = post(&app, "/ssf/verify", &sk2, json!({ "stream_id": s2["stream_id"] })).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (got, _) = next_set(&rx2, &mut c0, &name2).await;
    assert_eq!(got.authorization, None);
}

// ---- 12 .. 15: events ----

#[tokio::test]
async fn c12_logout_is_one_session_revoked() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    push_stream(&app, &sk, &rx, None).await;
    let mut c0 = Checker::new(&app).await;
    let t = app.new_session().await;
    let r = app.post_auth("/v1/auth/logout", &t.access, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let now = app.clock.now_secs();
    let (_, claims) = next_set(&rx, &mut c0, &name).await;
    let iss = &app.state.config.issuer;
    assert_eq!(
        claims["sub_id"],
        json!({ "format": "complex", "user": { "format": "iss_sub", "iss": iss, "sub": t.user_id },
                "session": { "format": "opaque", "id": t.session_id } })
    );
    let (ty, ev) = event_of(&claims);
    assert_eq!(ty, format!("{C}session-revoked"));
    assert_eq!(ev["initiating_entity"], "user");
    assert_eq!(ev["reason_admin"]["en"], "logout");
    assert!((ev["event_timestamp"].as_i64().unwrap() - now).abs() <= 2);
    assert!(claims["txn"].is_string());
    rx.expect_none(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn c13_logout_others_shares_one_txn() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    push_stream(&app, &sk, &rx, None).await;
    let mut c0 = Checker::new(&app).await;
    let email = app.new_user().await;
    let keep = app.session_of(&email).await;
    let _a = app.session_of(&email).await;
    let _b = app.session_of(&email).await;
    let r = app.post_auth("/v1/auth/logout-all", &keep.access, Some(json!({ "keep_current": true }))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, one) = next_set(&rx, &mut c0, &name).await;
    let (_, two) = next_set(&rx, &mut c0, &name).await;
    rx.expect_none(Duration::from_millis(1500)).await;
    for c in [&one, &two] {
        assert_ne!(c["sub_id"]["session"]["id"], json!(keep.session_id));
        assert_eq!(event_of(c).1["reason_admin"]["en"], "logout_others");
    }
    assert_eq!(one["txn"], two["txn"]);
    assert_ne!(one["jti"], two["jti"]);
}

#[tokio::test]
async fn c14_password_change_credential_change_first() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    push_stream(&app, &sk, &rx, None).await;
    let mut c0 = Checker::new(&app).await;
    let email = app.new_user().await;
    let me = app.session_of(&email).await;
    let other = app.session_of(&email).await;
    let body = json!({ "current_password": PASSWORD, "new_password": "another long password" });
    let r = app.post_auth("/v1/auth/password", &me.access, Some(body)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, first) = next_set(&rx, &mut c0, &name).await;
    let (_, second) = next_set(&rx, &mut c0, &name).await;
    let iss = &app.state.config.issuer;
    assert_eq!(
        event_of(&first),
        (
            format!("{C}credential-change"),
            json!({ "credential_type": "password", "change_type": "update", "event_timestamp": first["events"][format!("{C}credential-change")]["event_timestamp"],
                    "initiating_entity": "user", "reason_admin": { "en": "password_changed" }, "reason_user": { "en": "Your password was changed." } })
        )
    );
    assert_eq!(first["sub_id"], json!({ "format": "iss_sub", "iss": iss, "sub": me.user_id }));
    assert_eq!(event_of(&second).0, format!("{C}session-revoked"));
    assert_eq!(second["sub_id"]["session"]["id"], json!(other.session_id));
    assert_eq!(first["txn"], second["txn"]);
}

#[tokio::test]
async fn c15_disable_enable_and_reuse() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    push_stream(&app, &sk, &rx, None).await;
    let mut c0 = Checker::new(&app).await;
    let admin = app.new_admin().await;
    let email = app.new_user().await;
    let a = app.session_of(&email).await;
    let _b = app.session_of(&email).await;
    let r = app.post_auth(&format!("/v1/admin/users/{}/disable", a.user_id), &admin.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let got: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(next_set(&rx, &mut c0, &name).await.1);
        }
        v
    };
    assert_eq!(event_of(&got[0]).0, format!("{R}account-disabled"));
    assert!(event_of(&got[0]).1.get("reason").is_none());
    for c in &got[1..] {
        assert_eq!(event_of(c).0, format!("{C}session-revoked"));
    }
    for c in &got {
        assert_eq!(event_of(c).1["initiating_entity"], "admin");
        assert_eq!(c["txn"], got[0]["txn"]);
    }
    let r = app.post_auth(&format!("/v1/admin/users/{}/enable", a.user_id), &admin.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, enabled) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(event_of(&enabled).0, format!("{R}account-enabled"));
    assert_eq!(event_of(&enabled).1["initiating_entity"], "admin");

    // Refresh-token reuse: policy.
    let t = app.new_session().await;
    let r = app.refresh(&t.refresh).await;
    assert_eq!(r.status(), StatusCode::OK);
    app.clock.advance(Duration::from_secs(60));
    let r = app.refresh(&t.refresh).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (_, reused) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(event_of(&reused).1["initiating_entity"], "policy");
    assert_eq!(event_of(&reused).1["reason_admin"]["en"], "refresh_token_reused");
}

// ---- 16, 17: retries and dead letters ----

#[tokio::test]
async fn c16_retry_until_accepted_byte_identical() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, None).await;
    let mut c0 = Checker::new(&app).await;
    rx.answer_next(500, "");
    rx.answer_next(500, "");
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    let id = stream["stream_id"].as_str().unwrap();
    let (first, _) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(first.answered, 500);
    // The backoff (1 s, then 5 s) runs on the server's clock from the end of each attempt: once
    // the attempt is recorded, move the clock instead of waiting.
    wait_attempts(&app, id, 1).await;
    app.clock.advance(Duration::from_secs(2));
    let second = rx.next(WAIT).await.expect("a retry");
    assert_eq!(second.answered, 500);
    wait_attempts(&app, id, 2).await;
    app.clock.advance(Duration::from_secs(7));
    let third = rx.next(WAIT).await.expect("a second retry");
    assert_eq!(third.answered, 202);
    assert_eq!(first.body, second.body);
    assert_eq!(second.body, third.body);
    app.clock.advance(Duration::from_secs(120));
    rx.expect_none(Duration::from_secs(2)).await;
    assert_eq!(rx.count(), 3);
    // Observable per stream: two retries, one delivery.
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("sessiond_ssf_retries_total{{stream=\"{id}\"}} 2")), "{metrics}");
    assert!(metrics.contains(&format!("sessiond_ssf_delivered_total{{stream=\"{id}\"}} 1")), "{metrics}");
}

/// Waits (bounded) until the one pending SET of stream `id` has `n` recorded attempts.
pub async fn wait_attempts(app: &TestApp, id: &str, n: i32) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let pending = app.state.store.ssf_undelivered(id, 10).await.unwrap();
        if pending.iter().any(|d| d.state == "pending" && d.attempts >= n) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "attempt {n} was never recorded: {pending:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn c17_permanent_error_is_a_dead_letter() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, None).await;
    let mut c0 = Checker::new(&app).await;
    rx.answer_next(400, r#"{"err":"invalid_request","description":"x"}"#);
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    let (dead, _) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(dead.answered, 400);
    app.clock.advance(Duration::from_secs(120));
    let t2 = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t2.access, None).await;
    let (next, claims) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(next.answered, 202);
    assert_eq!(claims["sub_id"]["session"]["id"], json!(t2.session_id));
    rx.expect_none(Duration::from_secs(2)).await;
    let undelivered = app.state.store.ssf_undelivered(stream["stream_id"].as_str().unwrap(), 10).await.unwrap();
    assert_eq!(undelivered.len(), 1);
    assert_eq!(undelivered[0].state, "dead");
}

// ---- 19, 20: paused and disabled ----

#[tokio::test]
async fn c19_paused_holds_then_delivers_in_order() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, None).await;
    let id = stream["stream_id"].as_str().unwrap();
    let mut c0 = Checker::new(&app).await;
    let r = post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "paused" })).await;
    assert_eq!(r.status(), StatusCode::OK);
    let email = app.new_user().await;
    let a = app.session_of(&email).await;
    let b = app.session_of(&email).await;
    app.post_auth("/v1/auth/logout", &a.access, None).await;
    app.post_auth("/v1/auth/logout", &b.access, None).await;
    rx.expect_none(Duration::from_secs(3)).await;
    let r = post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "enabled" })).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, one) = next_set(&rx, &mut c0, &name).await;
    let (_, two) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(one["sub_id"]["session"]["id"], json!(a.session_id));
    assert_eq!(two["sub_id"]["session"]["id"], json!(b.session_id));
}

#[tokio::test]
async fn c20_disabled_drops() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, None).await;
    let id = stream["stream_id"].as_str().unwrap();
    let mut c0 = Checker::new(&app).await;
    post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "disabled" })).await;
    let a = app.new_session().await;
    app.post_auth("/v1/auth/logout", &a.access, None).await;
    rx.expect_none(Duration::from_secs(3)).await;
    post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "enabled" })).await;
    let b = app.new_session().await;
    app.post_auth("/v1/auth/logout", &b.access, None).await;
    let (_, claims) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(claims["sub_id"]["session"]["id"], json!(b.session_id));
    rx.expect_none(Duration::from_secs(1)).await;
}

// ---- 21, 22: poll ----

async fn poll_stream(app: &TestApp) -> (String, String, String) {
    let (name, sk) = receiver_credential(app).await;
    let r = post(app, "/ssf/stream", &sk, json!({ "events_requested": all_events() })).await;
    let s: Value = r.json().await.unwrap();
    (name, sk, s["stream_id"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn c21_poll_ack_redeliver_and_errors() {
    let Some(app) = ssf_app().await else { return };
    let (name, sk, id) = poll_stream(&app).await;
    let mut c0 = Checker::new(&app).await;
    let path = format!("/ssf/poll/{id}");
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    // Long poll until the SET is there.
    let r = post(&app, &path, &sk, json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert!(body.get("moreAvailable").is_none());
    let sets = body["sets"].as_object().unwrap();
    assert_eq!(sets.len(), 1);
    let (j, set) = sets.iter().next().unwrap();
    let claims = c0.check(set.as_str().unwrap(), &name);
    assert_eq!(&claims["jti"], &json!(j));
    // Not acknowledged: back after 30 s.
    let r: Value = post(&app, &path, &sk, json!({ "returnImmediately": true })).await.json().await.unwrap();
    assert_eq!(r, json!({ "sets": {} }));
    app.clock.advance(Duration::from_secs(31));
    let r: Value = post(&app, &path, &sk, json!({ "returnImmediately": true })).await.json().await.unwrap();
    assert!(r["sets"].get(j).is_some());
    // Acknowledged: never again.
    let r: Value = post(&app, &path, &sk, json!({ "ack": [j], "maxEvents": 0 })).await.json().await.unwrap();
    assert_eq!(r, json!({ "sets": {} }));
    app.clock.advance(Duration::from_secs(31));
    let r: Value = post(&app, &path, &sk, json!({ "returnImmediately": true })).await.json().await.unwrap();
    assert_eq!(r, json!({ "sets": {} }));
    // setErrs: never again either.
    let t2 = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t2.access, None).await;
    let r: Value = post(&app, &path, &sk, json!({})).await.json().await.unwrap();
    let k = r["sets"].as_object().unwrap().keys().next().unwrap().clone();
    let errs =
        json!({ "setErrs": { &k: { "err": "invalid_audience", "description": "x" } }, "returnImmediately": true });
    let r: Value = post(&app, &path, &sk, errs).await.json().await.unwrap();
    assert_eq!(r, json!({ "sets": {} }));
    app.clock.advance(Duration::from_secs(31));
    let r: Value = post(&app, &path, &sk, json!({ "returnImmediately": true })).await.json().await.unwrap();
    assert_eq!(r, json!({ "sets": {} }));
    // A push stream cannot be polled; another credential's is invisible.
    let (_, other, _) = poll_stream(&app).await;
    let r = post(&app, &path, &other, json!({})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn c22_long_poll_wakes_on_a_logout_and_times_out_empty() {
    let Some(app) = ssf_app().await else { return };
    let (_, sk, id) = poll_stream(&app).await;
    let path = format!("/ssf/poll/{id}");
    let started = std::time::Instant::now();
    let r: Value = post(&app, &path, &sk, json!({})).await.json().await.unwrap();
    assert_eq!(r, json!({ "sets": {} }));
    assert!(started.elapsed() >= Duration::from_millis(1900), "{:?}", started.elapsed());

    // The logout happens on another instance where there can be one (PostgreSQL): the SET is
    // made there, and this instance's long poll finds it.
    let other = match crate::BACKEND {
        Backend::Postgres => Some(another_instance(&app).await),
        Backend::Sqlite => None,
    };
    let logout_app = other.as_ref().unwrap_or(&app);
    let t = logout_app.new_session().await;
    let waiter = {
        let (client, url, sk) = (app.client.clone(), app.url(&path), sk.clone());
        tokio::spawn(async move {
            let r = client.post(url).bearer_auth(sk).json(&json!({})).send().await.unwrap();
            (std::time::Instant::now(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // let the poll start waiting
    let logout_done = {
        logout_app.post_auth("/v1/auth/logout", &t.access, None).await;
        std::time::Instant::now()
    };
    let (answered, body) = waiter.await.unwrap();
    assert_eq!(body["sets"].as_object().unwrap().len(), 1);
    assert!(answered.duration_since(logout_done) <= Duration::from_secs(1));
}

// ---- 23: operator status change and delete ----

#[tokio::test]
async fn c23_operator_pause_enable_announce_and_delete() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, None).await;
    let id = stream["stream_id"].as_str().unwrap();
    let mut c0 = Checker::new(&app).await;
    let out = ssf_cli(&app, &["stream", "pause", id, "--reason", "m"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, claims) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(claims["sub_id"], json!({ "format": "opaque", "id": id }));
    assert_eq!(event_of(&claims), (format!("{S}stream-updated"), json!({ "status": "paused", "reason": "m" })));
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    rx.expect_none(Duration::from_secs(2)).await;
    let out = ssf_cli(&app, &["stream", "enable", id]);
    assert!(out.status.success());
    // The announcement and the held SET (in flight together: they are about different subjects).
    let mut two = [next_set(&rx, &mut c0, &name).await.1, next_set(&rx, &mut c0, &name).await.1];
    two.sort_by_key(|c| event_of(c).0 != format!("{S}stream-updated"));
    assert_eq!(event_of(&two[0]), (format!("{S}stream-updated"), json!({ "status": "enabled" })));
    assert_eq!(two[1]["sub_id"]["session"]["id"], json!(t.session_id));

    let r = call(&app, reqwest::Method::DELETE, &format!("/ssf/stream?stream_id={id}"), &sk, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = call(&app, reqwest::Method::GET, &format!("/ssf/stream?stream_id={id}"), &sk, None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = post(&app, &format!("/ssf/poll/{id}"), &sk, json!({})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// `sessiond ssf ARGS… --database-url URL` against the test's database.
pub fn ssf_cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .arg("ssf")
        .args(args)
        .args(["--database-url", &app.state.config.database_url])
        .output()
        .unwrap()
}

// ---- 24: subjects ----

#[tokio::test]
async fn c24_subjects_remove_and_add() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, None).await;
    let id = stream["stream_id"].as_str().unwrap();
    let mut c0 = Checker::new(&app).await;
    let iss = app.state.config.issuer.clone();
    let email = app.new_user().await;
    let u1 = app.session_of(&email).await;
    let subject = json!({ "format": "iss_sub", "iss": iss, "sub": u1.user_id });
    let r = post(&app, "/ssf/subjects:remove", &sk, json!({ "stream_id": id, "subject": subject })).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let other = app.new_session().await;
    app.post_auth("/v1/auth/logout", &u1.access, None).await;
    app.post_auth("/v1/auth/logout", &other.access, None).await;
    let (_, claims) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(claims["sub_id"]["user"]["sub"], json!(other.user_id));
    rx.expect_none(Duration::from_millis(1500)).await;
    let r = post(&app, "/ssf/subjects:add", &sk, json!({ "stream_id": id, "subject": subject })).await;
    assert_eq!(r.status(), StatusCode::OK);
    let u1b = app.session_of(&email).await;
    app.post_auth("/v1/auth/logout", &u1b.access, None).await;
    let (_, claims) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(claims["sub_id"]["user"]["sub"], json!(u1.user_id));
    let r = post(&app, "/ssf/subjects:add", &sk, json!({ "stream_id": id, "subject": { "sub": "x" } })).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let unknown = json!({ "format": "iss_sub", "iss": iss, "sub": "u_nobody" });
    let r = post(&app, "/ssf/subjects:add", &sk, json!({ "stream_id": id, "subject": unknown })).await;
    assert_eq!(r.status(), StatusCode::OK);
}

// ---- keys rotate --ssf; exactly once across instances ----

/// `sessiond keys rotate --ssf` signs from then on with a new key; the old key stays published
/// while a SET it signed is undelivered (docs/SSF.md §1.1), and goes once it is delivered.
#[tokio::test]
async fn key_rotation_keeps_the_old_key_while_its_sets_wait() {
    let Some(app) = ssf_app().await else { return };
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    let stream = push_stream(&app, &sk, &rx, None).await;
    let id = stream["stream_id"].as_str().unwrap();
    let kids = |jwks: Value| -> Vec<String> {
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
    };
    let jwks =
        || async { app.client.get(app.url("/ssf/jwks.json")).send().await.unwrap().json::<Value>().await.unwrap() };
    let old = kids(jwks().await);
    assert_eq!(old.len(), 1);
    // A SET signed by the old key waits in a paused stream.
    post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "paused" })).await;
    let t = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t.access, None).await;
    let pending = || async { app.state.store.ssf_undelivered(id, 10).await.unwrap() };
    let deadline = std::time::Instant::now() + WAIT;
    while pending().await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the SET was never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["keys", "rotate", "--ssf", "--database-url", &app.state.config.database_url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let both = kids(jwks().await);
    assert_eq!(both.len(), 2);
    assert!(both.contains(&old[0]));
    // New SETs are signed by the new key; the held one still verifies with the old key. The
    // checker reads the JWKS before the enable: once the held SET is delivered the old key is
    // unpublished, which may happen before a read made after the enable.
    let mut c0 = Checker::new(&app).await;
    post(&app, "/ssf/status", &sk, json!({ "stream_id": id, "status": "enabled" })).await;
    let (held, _) = next_set(&rx, &mut c0, &name).await;
    assert_eq!(held.header()["kid"], json!(old[0]));
    let t2 = app.new_session().await;
    app.post_auth("/v1/auth/logout", &t2.access, None).await;
    let (fresh, _) = next_set(&rx, &mut c0, &name).await;
    assert_ne!(fresh.header()["kid"], json!(old[0]));
    // Delivered: the old key is no longer published.
    let deadline = std::time::Instant::now() + WAIT;
    while kids(jwks().await).contains(&old[0]) {
        assert!(std::time::Instant::now() < deadline, "the retired key stayed published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Several instances dispatch and push at once (PostgreSQL, `SKIP LOCKED`): every SET is made
/// once and delivered once.
#[tokio::test]
async fn two_instances_make_and_push_each_set_once() {
    if crate::BACKEND != Backend::Postgres {
        return;
    }
    let Some(app) = ssf_app().await else { return };
    let b = another_instance(&app).await;
    let rx = Receiver::start().await;
    let (name, sk) = receiver_credential(&app).await;
    push_stream(&app, &sk, &rx, None).await;
    let mut c0 = Checker::new(&app).await;
    let mut sessions = Vec::new();
    for i in 0..20 {
        let on = if i % 2 == 0 { &app } else { &b };
        sessions.push((on, on.new_session().await));
    }
    let logouts = sessions.iter().map(|(on, t)| on.post_auth("/v1/auth/logout", &t.access, None));
    futures::future::join_all(logouts).await;
    let got = rx.next_n(20, Duration::from_secs(10)).await;
    let mut ids: Vec<String> =
        got.iter().map(|r| c0.check(&r.body, &name)["sub_id"]["session"]["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    let mut want: Vec<String> = sessions.iter().map(|(_, t)| t.session_id.clone()).collect();
    want.sort();
    assert_eq!(ids, want);
    rx.expect_none(Duration::from_secs(2)).await;
}

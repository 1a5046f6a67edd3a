//! docs/API.md §10: RFC 7009 revocation and RFC 8414 metadata, as a third-party OAuth client
//! uses them: form bodies, the OAuth error form, 200 whatever the token.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn revoke(app: &TestApp, body: &str) -> reqwest::Response {
    app.client
        .post(app.url("/oauth2/revoke"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn form(token: &str) -> String {
    form_urlencoded::Serializer::new(String::new()).append_pair("token", token).finish()
}

/// The token with one signature character changed (inside the signature, so every bit of it
/// counts).
fn forge(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

async fn session_revoked_reason(app: &TestApp, session_id: &str) -> Option<String> {
    app.state.store.session(session_id).await.unwrap().unwrap().revoked_reason
}

#[tokio::test]
async fn rfc8414_metadata_names_the_endpoints() {
    let Some(app) = spawn_app().await else { return };
    let r = app.client.get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let m: Value = r.json().await.unwrap();
    let iss = app.state.config.issuer.trim_end_matches('/').to_string();
    assert_eq!(m["issuer"], json!(app.state.config.issuer));
    assert_eq!(m["jwks_uri"], json!(format!("{iss}/.well-known/jwks.json")));
    assert_eq!(m["introspection_endpoint"], json!(format!("{iss}/oauth2/introspect")));
    assert_eq!(m["revocation_endpoint"], json!(format!("{iss}/oauth2/revoke")));
    assert_eq!(m["introspection_endpoint_auth_methods_supported"], json!(["bearer"]));
    assert_eq!(m["revocation_endpoint_auth_methods_supported"], json!(["none"]));
    assert_eq!(m["response_types_supported"], json!([]));
}

#[tokio::test]
async fn rfc7009_a_refresh_token_ends_its_session_like_logout() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let mut socket = crate::ws::open(&app, &t.access).await;
    let r = revoke(&app, &format!("{}&token_type_hint=refresh_token", form(&t.refresh))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap().is_empty(), "an empty body");
    socket.expect_logout("logout", &t.session_id).await;
    assert_problem(app.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    assert_eq!(session_revoked_reason(&app, &t.session_id).await.as_deref(), Some("logout"));
    // Again, and with the wrong hint: still 200, nothing else happens.
    assert_eq!(
        revoke(&app, &format!("{}&token_type_hint=access_token", form(&t.refresh))).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn rfc7009_a_rotated_out_refresh_token_still_ends_its_session() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let next = Tokens::from(app.refresh(&t.refresh).await.json::<Value>().await.unwrap());
    assert_eq!(revoke(&app, &form(&t.refresh)).await.status(), StatusCode::OK);
    assert_eq!(session_revoked_reason(&app, &t.session_id).await.as_deref(), Some("logout"), "not reuse");
    assert_problem(app.refresh(&next.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
}

#[tokio::test]
async fn rfc7009_an_access_token_ends_its_session_even_expired() {
    let Some(app) = spawn_app().await else { return };
    let live = app.new_session().await;
    assert_eq!(revoke(&app, &form(&live.access)).await.status(), StatusCode::OK);
    assert_problem(app.me(&live.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;

    let t = app.new_session().await;
    app.clock.advance(app.state.config.access_ttl + Duration::from_secs(60));
    assert_problem(app.me(&t.access).await, StatusCode::UNAUTHORIZED, "token_expired").await;
    assert_eq!(revoke(&app, &form(&t.access)).await.status(), StatusCode::OK);
    assert_eq!(session_revoked_reason(&app, &t.session_id).await.as_deref(), Some("logout"));
    assert_problem(app.refresh(&t.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
}

#[tokio::test]
async fn rfc7009_forged_or_unknown_tokens_change_nothing() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let forged = forge(&t.access);
    for token in [forged.as_str(), "rt_not-a-token", "anything", "eyJhbGciOiJub25lIn0.e30."] {
        let r = revoke(&app, &form(token)).await;
        assert_eq!(r.status(), StatusCode::OK, "{token}");
        assert!(r.bytes().await.unwrap().is_empty());
    }
    assert_eq!(app.me(&t.access).await.status(), StatusCode::OK, "the session lives");
    assert_eq!(session_revoked_reason(&app, &t.session_id).await, None);
}

#[tokio::test]
async fn rfc7009_a_request_without_a_token_is_invalid_request_in_the_oauth_form() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let json_body = app.post_json("/oauth2/revoke", json!({ "token": t.refresh })).await;
    for (what, r) in [
        ("no body", revoke(&app, "").await),
        ("empty token", revoke(&app, "token=").await),
        ("only a hint", revoke(&app, "token_type_hint=refresh_token").await),
        ("token twice", revoke(&app, &format!("{}&token=x", form(&t.refresh))).await),
        ("a JSON body", json_body),
    ] {
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(r.headers()["content-type"], "application/json", "{what}");
        assert_eq!(r.json::<Value>().await.unwrap(), json!({ "error": "invalid_request" }), "{what}");
    }
    assert_eq!(app.me(&t.access).await.status(), StatusCode::OK, "nothing was revoked");
}

async fn introspect(app: &TestApp, credential: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url("/oauth2/introspect"))
        .bearer_auth(credential)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn introspected(app: &TestApp, credential: &str, body: &str) -> Value {
    let r = introspect(app, credential, body).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

fn claims_of(access: &str) -> Value {
    use base64::Engine;
    let payload = access.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn rfc7662_live_tokens_are_active_with_their_claims() {
    use sessiond::service_credentials::Scope;
    let Some(app) = spawn_app().await else { return };
    let cred = crate::service::credential(&app, "api", &[Scope::Introspect]).await;
    let t = app.new_session().await;
    let a = introspected(&app, &cred, &form(&t.access)).await;
    let c = claims_of(&t.access);
    assert_eq!(a["active"], true);
    assert_eq!(a["token_type"], "access_token");
    for k in ["sub", "sid", "iss", "aud", "exp", "iat", "jti", "roles"] {
        assert_eq!(a[k], c[k], "{k}: {a}");
    }
    let r = introspected(&app, &cred, &format!("{}&token_type_hint=refresh_token", form(&t.refresh))).await;
    assert_eq!(r["active"], true, "{r}");
    assert_eq!(r["token_type"], "refresh_token");
    assert_eq!((&r["sub"], &r["sid"]), (&json!(t.user_id), &json!(t.session_id)));
    let expires_in = t.raw["refresh_expires_in"].as_i64().unwrap();
    let exp = r["exp"].as_i64().unwrap();
    let now = app.clock.now_ms() / 1000;
    assert!((exp - (now + expires_in)).abs() <= 2, "exp {exp} vs now + {expires_in}");
    assert_eq!(r.as_object().unwrap().len(), 5, "only the refresh token's fields: {r}");
}

#[tokio::test]
async fn rfc7662_introspection_changes_nothing_and_never_detects_reuse() {
    use sessiond::service_credentials::Scope;
    let Some(app) = spawn_app().await else { return };
    let cred = crate::service::credential(&app, "api", &[Scope::Introspect]).await;
    let t = app.new_session().await;
    let next = Tokens::from(app.refresh(&t.refresh).await.json::<Value>().await.unwrap());
    let counts = app.state.store.refresh_token_counts(&t.session_id).await.unwrap();
    for _ in 0..3 {
        let old = introspected(&app, &cred, &form(&t.refresh)).await;
        assert_eq!(old, json!({ "active": false }), "a rotated-out token is inactive, nothing more");
        assert_eq!(introspected(&app, &cred, &form(&next.refresh)).await["active"], true);
    }
    assert_eq!(app.state.store.refresh_token_counts(&t.session_id).await.unwrap(), counts, "nothing rotated");
    assert_eq!(app.me(&next.access).await.status(), StatusCode::OK, "no reuse detection");
    assert!(app.refresh(&next.refresh).await.status().is_success(), "the live token still rotates");
}

#[tokio::test]
async fn rfc7662_dead_tokens_are_inactive_and_nothing_more() {
    use sessiond::service_credentials::Scope;
    let Some(app) = spawn_app().await else { return };
    let cred = crate::service::credential(&app, "api", &[Scope::Introspect]).await;
    let revoked = app.new_session().await;
    assert_eq!(app.post_auth("/v1/auth/logout", &revoked.access, None).await.status(), StatusCode::NO_CONTENT);
    let expired = app.new_session().await;
    let forged = forge(&expired.access);
    let inactive = json!({ "active": false });
    for token in [revoked.access.as_str(), revoked.refresh.as_str(), forged.as_str(), "garbage", "rt_x", &cred] {
        assert_eq!(introspected(&app, &cred, &form(token)).await, inactive, "{token}");
    }
    app.clock.advance(app.state.config.access_ttl + Duration::from_secs(60));
    assert_eq!(introspected(&app, &cred, &form(&expired.access)).await, inactive, "expired");
    assert_eq!(introspected(&app, &cred, &form(&expired.refresh)).await["active"], true, "its session lives");
}

#[tokio::test]
async fn rfc7662_needs_a_service_credential_with_the_scope() {
    use sessiond::service_credentials::Scope;
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    let feed_only = crate::service::credential(&app, "feed", &[Scope::RevocationsRead]).await;
    let body = form(&t.access);
    assert_problem(introspect(&app, &t.access, &body).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_problem(introspect(&app, "sk_unknown", &body).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_problem(introspect(&app, &feed_only, &body).await, StatusCode::FORBIDDEN, "forbidden").await;
    let cred = crate::service::credential(&app, "api", &[Scope::Introspect]).await;
    let r = introspect(&app, &cred, "token_type_hint=access_token").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "error": "invalid_request" }));
}

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
    let mut forged = t.access.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
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

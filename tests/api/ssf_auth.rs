//! Authentication of the Shared Signals management API (docs/SSF.md §1.3, §6 check 3): the
//! client-credentials token endpoint (`POST /oauth2/token`, RFC 6749 §4.4) as an OAuth client
//! uses it, the `--ssf-aud` of `sessiond service add`, and the rules of the `SsfCaller`
//! extractor (RFC 6750, IOP §2.7.3).
//!
//! No `/ssf/*` endpoint exists yet, so the extractor is mounted on a probe router served on its
//! own socket with the real server's state (same database, keys and clock): `GET /read` answers
//! the caller, `POST /manage` also requires `ssf.manage`.

use std::process::Output;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiond::error::AppError;
use sessiond::http::SsfCaller;
use sessiond::service_credentials::{self, Scope, ServiceName, SsfAudience};

use crate::helpers::*;
use crate::service::credential;
use crate::service::service_cli;

const TOKEN: &str = "/oauth2/token";
const FORM: &str = "application/x-www-form-urlencoded";

/// A credential with scope `ssf` and an explicit `--ssf-aud`; returns its secret.
async fn ssf_credential(app: &TestApp, name: &str, aud: Option<&str>) -> String {
    let name: ServiceName = name.parse().unwrap();
    let aud: Option<SsfAudience> = aud.map(|a| a.parse().unwrap());
    let secret = service_credentials::create_with_ssf_aud(
        &app.state.store,
        app.clock.now_ms(),
        &name,
        &[Scope::Ssf],
        aud.as_ref(),
        &Default::default(),
    )
    .await;
    secret.unwrap().expect("a new name").as_str().to_string()
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// `Authorization: Basic` for `client_secret_basic` (RFC 6749 §2.3.1: each part form-urlencoded).
fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret))))
}

/// `POST /oauth2/token` with `body` and, if given, an `Authorization` header.
async fn token_request(app: &TestApp, authorization: Option<&str>, body: &str) -> reqwest::Response {
    let mut req = app.client.post(app.url(TOKEN)).header("content-type", FORM).body(body.to_string());
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap()
}

/// A token by `client_secret_basic` with `scope` (none: the default); asserts the answer.
pub async fn token_for(app: &TestApp, name: &str, secret: &str, scope: Option<&str>) -> String {
    let mut pairs = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        pairs.push(("scope", s));
    }
    let r = token_request(app, Some(&basic(name, secret)), &form(&pairs)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

/// Asserts an RFC 6749 §5.2 error: `status`, `{"error": error}` exactly, JSON, not cached.
async fn assert_oauth_error(r: reqwest::Response, status: StatusCode, error: &str) {
    assert_eq!(r.status(), status, "for {error}");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"sessiond\"");
    }
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "error": error }));
}

/// The probe: the extractor on a real socket, with `app`'s state. Returns its base URL.
async fn probe(app: &TestApp) -> String {
    let router = Router::new()
        .route(
            "/read",
            get(
                |c: SsfCaller| async move { Json(json!({ "name": c.name, "aud": c.aud, "can_manage": c.can_manage })) },
            ),
        )
        .route("/manage", post(|c: SsfCaller| async move { c.require_manage().map(|()| StatusCode::NO_CONTENT) }))
        .with_state(app.state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// `GET {probe}/read` with `Authorization: Bearer token` (none when `None`).
async fn read(app: &TestApp, probe: &str, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(format!("{probe}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn manage(app: &TestApp, probe: &str, token: &str) -> reqwest::Response {
    app.client.post(format!("{probe}/manage")).bearer_auth(token).send().await.unwrap()
}

/// Asserts a 403 `forbidden` with the RFC 6750 `insufficient_scope` challenge.
async fn assert_insufficient_scope(r: reqwest::Response) {
    assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"insufficient_scope\"");
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn client_credentials_by_basic_or_post_give_a_900_second_bearer_token() {
    let Some(app) = spawn_app().await else { return };
    let secret = ssf_credential(&app, "billing", Some("https://rx.example.com/billing")).await;
    let probe = probe(&app).await;

    let r = token_request(&app, Some(&basic("billing", &secret)), "grant_type=client_credentials").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["pragma"], "no-cache");
    let body: Value = r.json().await.unwrap();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 4, "{body}");
    assert_eq!((&body["token_type"], &body["expires_in"]), (&json!("Bearer"), &json!(900)));
    assert_eq!(body["scope"], "ssf.read ssf.manage", "absent scope: every scope");
    let full = body["access_token"].as_str().unwrap();
    let expected = json!({ "name": "billing", "aud": "https://rx.example.com/billing", "can_manage": true });
    assert_eq!(read(&app, &probe, "/read", Some(full)).await.json::<Value>().await.unwrap(), expected);
    assert_eq!(manage(&app, &probe, full).await.status(), StatusCode::NO_CONTENT);

    // client_secret_post, read only: reads, may not write.
    let post = form(&[
        ("grant_type", "client_credentials"),
        ("scope", "ssf.read"),
        ("client_id", "billing"),
        ("client_secret", secret.as_str()),
    ]);
    let r = token_request(&app, None, &post).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!((&body["scope"], &body["expires_in"]), (&json!("ssf.read"), &json!(900)));
    let read_only = body["access_token"].as_str().unwrap();
    let r = read(&app, &probe, "/read", Some(read_only)).await.json::<Value>().await.unwrap();
    assert_eq!(r["can_manage"], false);
    assert_insufficient_scope(manage(&app, &probe, read_only).await).await;

    // `ssf.manage` alone also reads (IOP §2.7.2); duplicates and extra spaces are harmless.
    let manage_only = token_for(&app, "billing", &secret, Some(" ssf.manage  ssf.manage")).await;
    assert_eq!(read(&app, &probe, "/read", Some(&manage_only)).await.status(), StatusCode::OK);
    assert_eq!(manage(&app, &probe, &manage_only).await.status(), StatusCode::NO_CONTENT);
    // A redundant client_id beside Basic that names the same client is fine.
    let body = form(&[("grant_type", "client_credentials"), ("client_id", "billing")]);
    assert_eq!(token_request(&app, Some(&basic("billing", &secret)), &body).await.status(), StatusCode::OK);

    // The credential's use is recorded, as for an `sk_`.
    let list = service_credentials::list(&app.state.store).await.unwrap();
    assert!(list.iter().find(|c| c.name == "billing").unwrap().last_used_at.is_some());
}

#[tokio::test]
async fn token_endpoint_errors_are_rfc6749_json() {
    let Some(app) = spawn_app().await else { return };
    let secret = ssf_credential(&app, "billing", None).await;
    let other = ssf_credential(&app, "other", None).await;
    let no_ssf = credential(&app, "notes", &[Scope::Introspect, Scope::RevocationsRead]).await;
    let grant = "grant_type=client_credentials";
    let wrong = format!("sk_{}", "A".repeat(43));

    // invalid_client: 401 with a Basic challenge, whichever method was tried.
    let unauthorized = StatusCode::UNAUTHORIZED;
    for auth in [basic("billing", &wrong), basic("billing", &other), basic("nobody", &secret), basic("billing", "x")] {
        assert_oauth_error(token_request(&app, Some(&auth), grant).await, unauthorized, "invalid_client").await;
    }
    for (id, s) in [("billing", wrong.as_str()), ("billing", other.as_str()), ("billing", "")] {
        let body = form(&[("grant_type", "client_credentials"), ("client_id", id), ("client_secret", s)]);
        assert_oauth_error(token_request(&app, None, &body).await, unauthorized, "invalid_client").await;
    }
    assert_oauth_error(token_request(&app, None, grant).await, unauthorized, "invalid_client").await;
    let no_secret = form(&[("grant_type", "client_credentials"), ("client_id", "billing")]);
    assert_oauth_error(token_request(&app, None, &no_secret).await, unauthorized, "invalid_client").await;
    for auth in [format!("Bearer {secret}"), "Basic %%%".to_string(), "Basic".to_string()] {
        assert_oauth_error(token_request(&app, Some(&auth), grant).await, unauthorized, "invalid_client").await;
    }

    // Both methods at once; a client_id that contradicts Basic.
    let bad = StatusCode::BAD_REQUEST;
    let both =
        form(&[("grant_type", "client_credentials"), ("client_id", "billing"), ("client_secret", secret.as_str())]);
    let r = token_request(&app, Some(&basic("billing", &secret)), &both).await;
    assert_oauth_error(r, bad, "invalid_request").await;
    let contradicts = form(&[("grant_type", "client_credentials"), ("client_id", "other")]);
    let r = token_request(&app, Some(&basic("billing", &secret)), &contradicts).await;
    assert_oauth_error(r, bad, "invalid_request").await;

    let auth = basic("billing", &secret);
    let cases = [
        ("grant_type=password&username=a&password=b", "unsupported_grant_type"),
        ("grant_type=authorization_code&code=x", "unsupported_grant_type"),
        ("", "invalid_request"),
        ("grant_type=", "invalid_request"),
        ("grant_type=client_credentials&grant_type=client_credentials", "invalid_request"),
        ("grant_type=client_credentials&scope=ssf.manage+openid", "invalid_scope"),
        ("grant_type=client_credentials&scope=ssf", "invalid_scope"),
    ];
    for (body, error) in cases {
        assert_oauth_error(token_request(&app, Some(&auth), body).await, bad, error).await;
    }
    // Not a form.
    let r = app
        .client
        .post(app.url(TOKEN))
        .header("authorization", &auth)
        .json(&json!({"grant_type": "client_credentials"}));
    assert_oauth_error(r.send().await.unwrap(), bad, "invalid_request").await;

    // A valid credential without scope `ssf`: authenticated, but not allowed this grant.
    let r = token_request(&app, Some(&basic("notes", &no_ssf)), grant).await;
    assert_oauth_error(r, bad, "unauthorized_client").await;
}

#[tokio::test]
async fn rfc8414_metadata_lists_the_token_endpoint() {
    let Some(app) = spawn_app().await else { return };
    let m: Value =
        app.client.get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    let iss = app.state.config.issuer.trim_end_matches('/').to_string();
    assert_eq!(m["token_endpoint"], json!(format!("{iss}/oauth2/token")));
    assert_eq!(m["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(m["token_endpoint_auth_methods_supported"], json!(["client_secret_basic", "client_secret_post"]));
    assert_eq!(m["scopes_supported"], json!(["ssf.read", "ssf.manage"]));
}

/// docs/SSF.md §6 check 3 and the RFC 6750 rules, on the extractor.
#[tokio::test]
async fn the_ssf_caller_follows_the_resource_server_rules() {
    let Some(app) = spawn_app().await else { return };
    let probe = probe(&app).await;
    let secret = ssf_credential(&app, "billing", None).await;
    let no_ssf = credential(&app, "notes", &[Scope::RevocationsRead]).await;
    let token = token_for(&app, "billing", &secret, None).await;
    let user = app.new_session().await;

    // An sk_ with scope ssf: both scopes; the audience defaults to the name.
    let expected = json!({ "name": "billing", "aud": "billing", "can_manage": true });
    assert_eq!(read(&app, &probe, "/read", Some(&secret)).await.json::<Value>().await.unwrap(), expected);
    assert_eq!(manage(&app, &probe, &secret).await.status(), StatusCode::NO_CONTENT);

    // No Authorization: 401 with the bare challenge.
    let r = read(&app, &probe, "/read", None).await;
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // Header only: a valid token or sk_ in the query is refused, even beside a valid header.
    for t in [&token, &secret] {
        let path = format!("/read?access_token={t}");
        assert_problem(read(&app, &probe, &path, None).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
        assert_problem(read(&app, &probe, &path, Some(t)).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }

    // Not a receiver's credential: a user's access or refresh token, junk, another scheme.
    let unknown = format!("sk_{}", "A".repeat(43));
    for t in [user.access.as_str(), user.refresh.as_str(), unknown.as_str(), "eyJ.e30.sig", "not-a-token"] {
        let r = read(&app, &probe, "/read", Some(t)).await;
        assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    let r = app.client.get(format!("{probe}/read")).header("authorization", basic("billing", &secret)).send().await;
    assert_problem(r.unwrap(), StatusCode::UNAUTHORIZED, "invalid_token").await;
    // A forged token (a signature character changed).
    let mut forged: Vec<char> = token.chars().collect();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    assert_problem(read(&app, &probe, "/read", Some(&forged)).await, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // A valid sk_ without scope ssf: authenticated, not allowed.
    assert_insufficient_scope(read(&app, &probe, "/read", Some(&no_ssf)).await).await;
}

/// The token is never a user access token nor an `sk_`, and the reverse; the user token and
/// the `sk_` behave as before.
#[tokio::test]
async fn an_ssf_token_is_refused_where_users_and_services_authenticate() {
    let Some(app) = spawn_app().await else { return };
    let secret = ssf_credential(&app, "billing", None).await;
    let both = credential(&app, "both", &[Scope::Ssf, Scope::RevocationsRead, Scope::Introspect]).await;
    let token = token_for(&app, "billing", &secret, None).await;
    let token_of_both = token_for(&app, "both", &both, None).await;
    let user = app.new_session().await;

    assert_problem(app.me(&token).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_problem(app.get_auth("/v1/auth/sessions", &token).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    // The feed takes an sk_ only, even from a credential that has its scope.
    for t in [&token, &token_of_both] {
        assert_problem(app.get_auth("/v1/revocations", t).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    // Introspection does not know it; RFC 7009 revocation does nothing with it.
    let r = app
        .client
        .post(app.url("/oauth2/introspect"))
        .bearer_auth(&both)
        .header("content-type", FORM)
        .body(form(&[("token", token.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "active": false }));
    let r = app
        .client
        .post(app.url("/oauth2/revoke"))
        .header("content-type", FORM)
        .body(form(&[("token", token.as_str())]));
    assert_eq!(r.send().await.unwrap().status(), StatusCode::OK);

    // Before and after: the user token and the sk_ work where they did.
    assert_eq!(app.me(&user.access).await.status(), StatusCode::OK);
    assert_eq!(app.get_auth("/v1/revocations", &both).await.status(), StatusCode::OK);
    let probe = probe(&app).await;
    assert_eq!(read(&app, &probe, "/read", Some(&token)).await.status(), StatusCode::OK, "still live");
}

#[tokio::test]
async fn a_token_dies_with_its_credential_at_once_on_every_instance() {
    let Some(a) = spawn_app().await else { return };
    let b = another_instance(&a).await;
    let (probe_a, probe_b) = (probe(&a).await, probe(&b).await);
    let secret = ssf_credential(&a, "billing", None).await;
    let token = token_for(&a, "billing", &secret, None).await;
    for (app, probe) in [(&a, &probe_a), (&b, &probe_b)] {
        assert_eq!(read(app, probe, "/read", Some(&token)).await.status(), StatusCode::OK);
    }

    let name: ServiceName = "billing".parse().unwrap();
    assert!(service_credentials::remove(&b.state.store, b.clock.now_ms(), &name, &Default::default()).await.unwrap());
    for (app, probe) in [(&a, &probe_a), (&b, &probe_b)] {
        assert_problem(read(app, probe, "/read", Some(&token)).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }

    // The same name again (a new secret): the old tokens stay dead, new ones work everywhere.
    let again = ssf_credential(&a, "billing", None).await;
    assert_problem(read(&b, &probe_b, "/read", Some(&token)).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let fresh = token_for(&b, "billing", &again, None).await;
    assert_eq!(read(&a, &probe_a, "/read", Some(&fresh)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_token_expires_after_900_seconds() {
    let Some(app) = spawn_app().await else { return };
    let probe = probe(&app).await;
    let secret = ssf_credential(&app, "billing", None).await;
    let token = token_for(&app, "billing", &secret, None).await;
    // The verification leeway (30 s) applies, as for access tokens.
    app.clock.advance(Duration::from_secs(900 + 29));
    assert_eq!(read(&app, &probe, "/read", Some(&token)).await.status(), StatusCode::OK);
    app.clock.advance(Duration::from_secs(2));
    assert_problem(read(&app, &probe, "/read", Some(&token)).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    // The credential itself still works, and gets a new token.
    let fresh = token_for(&app, "billing", &secret, None).await;
    assert_eq!(read(&app, &probe, "/read", Some(&fresh)).await.status(), StatusCode::OK);
}

/// The extractor's refusals are problem+json (docs/API.md §2), never the OAuth error form of
/// the token endpoint.
#[tokio::test]
async fn errors_of_the_extractor_are_problem_json_not_oauth_bodies() {
    let Some(app) = spawn_app().await else { return };
    let probe = probe(&app).await;
    let r = read(&app, &probe, "/read", Some("x")).await;
    let body = assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert!(body.get("error").is_none(), "{body}");
    let err = AppError::InsufficientScope;
    assert_eq!((err.status(), err.code()), (StatusCode::FORBIDDEN, "forbidden"));
}

#[tokio::test]
async fn service_add_stores_the_ssf_audience_and_list_shows_it() {
    let Some((config, dir, db)) = fresh_database().await else { return };
    let url = config.database_url.clone();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let out = service_cli(&url, &["add", "billing", "--scope", "ssf", "--ssf-aud", "https://rx.example.com/a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("SSF audience https://rx.example.com/a"), "{}", stderr(&out));
    let secret = String::from_utf8(out.stdout).unwrap().trim_end().to_string();
    let out = service_cli(&url, &["add", "okta", "--scope", "ssf"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = service_cli(&url, &["add", "notes", "--scope", "introspect"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Refusals: an audience without scope ssf, and malformed ones; nothing is stored.
    let out = service_cli(&url, &["add", "x", "--scope", "introspect", "--ssf-aud", "rx"]);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(stderr(&out).contains("--ssf-aud needs --scope ssf"), "{}", stderr(&out));
    for bad in ["", "has space", &"a".repeat(257), "caf\u{e9}"] {
        let out = service_cli(&url, &["add", "y", "--scope", "ssf", "--ssf-aud", bad]);
        assert!(!out.status.success() && out.stdout.is_empty(), "{bad:?}");
        assert!(stderr(&out).contains("1 to 256 printable ASCII"), "{bad:?}: {}", stderr(&out));
    }

    let out = service_cli(&url, &["list"]);
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(list.lines().next().unwrap().ends_with("SSF AUD"), "{list}");
    let line = |name: &str| list.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{list}")).to_string();
    assert!(line("billing").ends_with(" https://rx.example.com/a"), "{list}");
    assert!(line("okta").ends_with(" okta"), "the name by default: {list}");
    assert!(line("notes").ends_with(" -"), "{list}");
    assert_eq!(list.lines().count(), 4, "{list}");

    // The server sees the same audience.
    let app = start_on(config, dir, sessiond::clock::Clock::system(), db).await;
    let probe = probe(&app).await;
    let token = token_for(&app, "billing", &secret, Some("ssf.read")).await;
    let caller = read(&app, &probe, "/read", Some(&token)).await.json::<Value>().await.unwrap();
    assert_eq!(caller, json!({ "name": "billing", "aud": "https://rx.example.com/a", "can_manage": false }));
}

//! Service credentials (docs/API.md §8): `sessiond service add|list|remove` as an operator runs
//! them, what is stored (a digest only), and the 401/403 rules of a service endpoint (the
//! revocation feed, `GET /v1/revocations`), including that user tokens and service secrets are
//! never accepted in each other's place and that a removal works at the next request on every
//! instance.

use std::process::{Command, Output};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sessiond::service_credentials::{self, Scope, ServiceName};
use sha2::{Digest, Sha256};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_sessiond");
const FEED: &str = "/v1/revocations";

/// `sessiond service ARGS… --database-url URL`.
pub fn service_cli(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .arg("service")
        .args(args)
        .args(["--database-url", url])
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Creates a credential through the library (as the CLI does); returns its secret.
pub async fn credential(app: &TestApp, name: &str, scopes: &[Scope]) -> String {
    let name: ServiceName = name.parse().unwrap();
    let now = app.clock.now_ms();
    let secret = service_credentials::create(&app.state.store, now, &name, scopes, &Default::default()).await;
    secret.unwrap().expect("a new name").as_str().to_string()
}

/// A credential with `revocations:read`.
pub async fn feed_reader(app: &TestApp) -> String {
    credential(app, &format!("feed-{}", uuid::Uuid::new_v4().simple()), &[Scope::RevocationsRead]).await
}

/// `(name, digest, scopes)` of every stored credential, read behind the server's back.
async fn stored(app: &TestApp) -> Vec<(String, Vec<u8>, String)> {
    let sql = "SELECT name, secret_digest, scopes FROM service_credentials ORDER BY name";
    match app.raw_db().await {
        RawDb::Sqlite(mut c) => sqlx::query_as(sql).fetch_all(&mut c).await.unwrap(),
        RawDb::Postgres(mut c) => sqlx::query_as(sql).fetch_all(&mut c).await.unwrap(),
    }
}

/// Audit events (kind, detail) about service credentials.
async fn service_audit(app: &TestApp) -> Vec<(String, Option<String>)> {
    let sql = "SELECT event, detail FROM audit_log WHERE event LIKE 'service_%' ORDER BY id";
    match app.raw_db().await {
        RawDb::Sqlite(mut c) => sqlx::query_as(sql).fetch_all(&mut c).await.unwrap(),
        RawDb::Postgres(mut c) => sqlx::query_as(sql).fetch_all(&mut c).await.unwrap(),
    }
}

#[tokio::test]
async fn the_cli_adds_lists_and_removes_credentials_and_stores_only_digests() {
    let Some((config, dir, db)) = fresh_database().await else { return };
    let url = config.database_url.clone();

    let out = service_cli(&url, &["add", "notes-api", "--scope", "revocations:read", "--scope", "introspect"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let secret = stdout.strip_suffix('\n').expect("one line");
    assert!(!secret.contains('\n'), "the secret alone on stdout: {stdout:?}");
    assert!(secret.starts_with("sk_") && secret.len() == 46, "{secret}");
    assert!(!text(&out.stderr).contains(&secret[3..]), "the secret is printed once, on stdout");

    // Only the digest is stored; nothing in the table holds the secret.
    let app = start_on(config, dir, sessiond::clock::Clock::system(), db).await;
    let rows = stored(&app).await;
    assert_eq!(rows.len(), 1);
    let (name, digest, scopes) = &rows[0];
    assert_eq!(name, "notes-api");
    assert_eq!(digest.as_slice(), Sha256::digest(secret.as_bytes()).as_slice());
    assert_eq!(scopes, "revocations:read introspect");
    assert!(!digest.windows(secret.len()).any(|w| w == secret.as_bytes()));

    // It works at once, and `list` shows it used, never the secret or the digest.
    assert_eq!(app.get_auth(FEED, secret).await.status(), StatusCode::OK);
    let out = service_cli(&url, &["list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = text(&out.stdout);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!list.contains(&secret[3..]) && !list.contains(&hex[..16]), "{list}");
    let line = list.lines().find(|l| l.starts_with("notes-api")).unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("revocations:read,introspect"), "{line}");
    assert!(!line.contains("never"), "the use is recorded: {line}");
    assert!(list.lines().next().unwrap().contains("LAST USED"), "{list}");

    // Clear refusals, non-zero exits, nothing stored.
    let out = service_cli(&url, &["add", "notes-api", "--scope", "ssf"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let out = service_cli(&url, &["add", "bad/name", "--scope", "ssf"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("1 to 64 characters"), "{}", text(&out.stderr));
    let out = service_cli(&url, &["add", "other", "--scope", "admin"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("revocations:read, introspect, ssf"), "{}", text(&out.stderr));
    let out = service_cli(&url, &["add", "other"]);
    assert!(!out.status.success(), "a scope is required");
    assert_eq!(stored(&app).await.len(), 1);

    // Removal: the next request is refused.
    let out = service_cli(&url, &["remove", "notes-api"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_problem(app.get_auth(FEED, secret).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let out = service_cli(&url, &["remove", "notes-api"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no service credential named notes-api"));
    assert!(stored(&app).await.is_empty());
    assert!(service_cli(&url, &["list"]).stdout.is_empty());

    let audit = service_audit(&app).await;
    let kinds: Vec<&str> = audit.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["service_created", "service_removed"]);
    let created: Value = serde_json::from_str(audit[0].1.as_deref().unwrap()).unwrap();
    assert_eq!(created["name"], "notes-api");
    assert_eq!(created["scopes"], serde_json::json!(["revocations:read", "introspect"]));
}

#[tokio::test]
async fn a_service_endpoint_answers_401_without_a_valid_credential_and_403_without_the_scope() {
    let Some(app) = spawn_app().await else { return };
    let reader = feed_reader(&app).await;
    let introspector = credential(&app, "introspector", &[Scope::Introspect, Scope::Ssf]).await;
    let user = app.new_session().await;

    let r = app.client.get(app.url(FEED)).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;

    let unknown = format!("sk_{}", "A".repeat(43));
    let refused = [
        format!("Bearer {unknown}"),
        format!("Bearer {}", user.access),
        format!("Bearer {}", user.refresh),
        format!("Bearer {}x", reader),
        format!("Basic {reader}"),
        "Bearer not-a-credential".to_string(),
    ];
    for auth in refused {
        let r = app.client.get(app.url(FEED)).header("authorization", &auth).send().await.unwrap();
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }

    assert_problem(app.get_auth(FEED, &introspector).await, StatusCode::FORBIDDEN, "forbidden").await;
    // Authentication, then the scope, then the parameters.
    let bad_limit = format!("{FEED}?after=0&limit=0");
    assert_problem(app.get_auth(&bad_limit, &introspector).await, StatusCode::FORBIDDEN, "forbidden").await;
    assert_problem(app.get_auth(&bad_limit, &user.access).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_problem(app.get_auth(&bad_limit, &reader).await, StatusCode::BAD_REQUEST, "invalid_request").await;

    let r = app.get_auth(FEED, &reader).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");

    // The reverse: a service secret is not a user's access token.
    assert_problem(app.me(&reader).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_problem(app.post_auth("/v1/auth/logout", &reader, None).await, StatusCode::UNAUTHORIZED, "invalid_token")
        .await;
    assert_problem(app.get_auth("/v1/admin/users", &reader).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn a_removed_credential_is_refused_at_the_next_request_on_every_instance() {
    let Some(a) = spawn_app().await else { return };
    let b = another_instance(&a).await;
    let secret = credential(&a, "worker", &[Scope::RevocationsRead]).await;
    assert_eq!(a.get_auth(FEED, &secret).await.status(), StatusCode::OK);
    assert_eq!(b.get_auth(FEED, &secret).await.status(), StatusCode::OK);
    let name: ServiceName = "worker".parse().unwrap();
    assert!(service_credentials::remove(&b.state.store, b.clock.now_ms(), &name, &Default::default()).await.unwrap());
    for app in [&a, &b] {
        assert_problem(app.get_auth(FEED, &secret).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    // A new credential of the same name has a new secret; the old one stays dead.
    let again = credential(&a, "worker", &[Scope::RevocationsRead]).await;
    assert_ne!(again, secret);
    assert_eq!(b.get_auth(FEED, &again).await.status(), StatusCode::OK);
    assert_problem(b.get_auth(FEED, &secret).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn last_used_moves_at_most_once_a_minute() {
    let Some(app) = spawn_app().await else { return };
    let secret = credential(&app, "poller", &[Scope::RevocationsRead]).await;
    let last_used = || async {
        let list = service_credentials::list(&app.state.store).await.unwrap();
        list.into_iter().find(|c| c.name == "poller").unwrap().last_used_at
    };
    assert_eq!(last_used().await, None);
    let t0 = app.clock.now_ms();
    assert_eq!(app.get_auth(FEED, &secret).await.status(), StatusCode::OK);
    let first = last_used().await.expect("recorded");
    assert!(first >= t0);
    app.clock.advance(Duration::from_secs(59));
    assert_eq!(app.get_auth(FEED, &secret).await.status(), StatusCode::OK);
    assert_eq!(last_used().await, Some(first), "not again within the minute");
    app.clock.advance(Duration::from_secs(2));
    assert_eq!(app.get_auth(FEED, &secret).await.status(), StatusCode::OK);
    assert!(last_used().await.unwrap() >= first + 60_000);
}

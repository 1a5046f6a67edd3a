//! Credential state against logins in flight (issue 11 red team, SECURITY.md RT1, RT5, RT14),
//! and the audit log against TRUNCATE (RT13).
//!
//! The races run many rounds, each on a fresh user, with the racing logins spread over a few
//! milliseconds of random jitter so that they land before, inside and after the other request's
//! commit. The jitter only varies the interleaving; nothing waits on it: every outcome is checked
//! in the database and over HTTP afterwards.

use std::time::Duration;

use futures::future::join_all;
use rand::Rng;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::ws::open;

const NEW_PASSWORD: &str = "a brand new passphrase";

/// A server for the races: the racing logins that lose count as failed logins from one address,
/// so throttling is lifted out of the way.
async fn race_app() -> Option<TestApp> {
    spawn_app_with(|c| c.login_free_failures = 1_000_000).await
}

/// A fresh user holding `hash`, created through the store (no password hashing per round).
async fn user_with_hash(app: &TestApp, hash: &str, admin: bool) -> (String, String) {
    let id = uuid::Uuid::now_v7().to_string();
    let email = format!("race-{}@example.com", uuid::Uuid::new_v4().simple());
    app.state.store.create_user(&id, &email, hash, admin, app.clock.now_ms()).await.unwrap();
    (id, email)
}

/// A login after a random pause of up to `jitter_ms`.
async fn login_after(app: &TestApp, email: &str, password: &str, jitter_ms: u64) -> Response {
    let pause = rand::thread_rng().gen_range(0..=jitter_ms);
    tokio::time::sleep(Duration::from_millis(pause)).await;
    app.login(email, password).await
}

/// The logins that succeeded; every other one failed exactly like a wrong password.
async fn winners(responses: Vec<Response>) -> Vec<Tokens> {
    let mut won = Vec::new();
    for r in responses {
        match r.status() {
            StatusCode::OK => won.push(Tokens::from(r.json::<Value>().await.unwrap())),
            _ => {
                assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
            }
        }
    }
    won
}

/// Ids of the user's live sessions, in the database.
async fn live_sessions(app: &TestApp, user_id: &str) -> Vec<String> {
    let rows = app.state.store.live_sessions(user_id, app.clock.now_ms()).await.unwrap();
    rows.into_iter().map(|s| s.id).collect()
}

/// A session that a race ended: its refresh token and its access token are refused.
async fn assert_dead(app: &TestApp, t: &Tokens) {
    assert_problem(app.refresh(&t.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    assert_problem(app.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
}

/// Runs one SQL statement on the test's database, outside sessiond (a second client of it).
async fn raw_sql(app: &TestApp, sql: &str) -> Result<(), sqlx::Error> {
    app.raw_db().await.execute(sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt1_logins_racing_a_password_change_leave_no_live_session() {
    let Some(app) = race_app().await else { return };
    let hash = app.state.sessions.passwords.hash(PASSWORD.into(), None).await.unwrap();
    for round in 0..50 {
        let (user_id, email) = user_with_hash(&app, &hash, false).await;
        let owner = app.session_of(&email).await;
        let body = json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD });
        let change = app.post_auth("/v1/auth/password", &owner.access, Some(body));
        let logins = join_all((0..3).map(|_| login_after(&app, &email, PASSWORD, 40)));
        let (changed, logins) = tokio::join!(change, logins);
        assert_eq!(changed.status(), StatusCode::NO_CONTENT, "round {round}");
        let won = winners(logins).await;
        // Only the changer's own session survives; whatever a racing login got is dead.
        assert_eq!(live_sessions(&app, &user_id).await, vec![owner.session_id.clone()], "round {round}");
        for t in &won {
            assert_dead(&app, t).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt1_logins_racing_an_account_disable_leave_no_live_session() {
    let Some(app) = race_app().await else { return };
    let admin = app.new_admin().await;
    let hash = app.state.sessions.passwords.hash(PASSWORD.into(), None).await.unwrap();
    for round in 0..50 {
        let (user_id, email) = user_with_hash(&app, &hash, false).await;
        let path = format!("/v1/admin/users/{user_id}/disable");
        let disable = app.post_auth(&path, &admin.access, None);
        let logins = join_all((0..3).map(|_| login_after(&app, &email, PASSWORD, 4)));
        let (disabled, logins) = tokio::join!(disable, logins);
        assert_eq!(disabled.status(), StatusCode::OK, "round {round}");
        let won = winners(logins).await;
        assert_eq!(live_sessions(&app, &user_id).await, Vec::<String>::new(), "round {round}");
        for t in &won {
            assert_dead(&app, t).await;
        }
    }
}

#[tokio::test]
async fn rt1_a_refresh_of_a_disabled_account_is_refused_and_ends_the_session() {
    let Some(app) = spawn_app().await else { return };
    let t = app.new_session().await;
    // A disabled account with a live session: what the flag alone (without the revocation of
    // its transaction) would leave behind.
    raw_sql(&app, &format!("UPDATE users SET disabled_at = {} WHERE id = '{}'", sql_time(1), t.user_id)).await.unwrap();
    assert_problem(app.refresh(&t.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    let s = app.state.store.session(&t.session_id).await.unwrap().unwrap();
    assert_eq!(s.revoked_reason.as_deref(), Some("account_disabled"));
    assert_problem(app.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt5_an_old_password_login_racing_a_change_never_restores_the_old_password() {
    let Some(app) = race_app().await else { return };
    // Parameters older and weaker than today's: every login with the password rehashes it.
    let legacy = sessiond::password::hash_with_params(PASSWORD, 8192, 1, 1);
    assert!(sessiond::password::needs_rehash(&legacy));
    for round in 0..30 {
        let (user_id, email) = user_with_hash(&app, &legacy, false).await;
        let owner = if round < 5 {
            // Two logins rehashing at once both succeed: a rehash is no credential change.
            let (a, b) = tokio::join!(app.login(&email, PASSWORD), app.login(&email, PASSWORD));
            assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK), "round {round}");
            Tokens::from(a.json::<Value>().await.unwrap())
        } else {
            app.session_of(&email).await
        };
        // Back to the legacy hash, so the racing logins below rehash too.
        raw_sql(&app, &format!("UPDATE users SET password_hash = '{legacy}' WHERE id = '{user_id}'")).await.unwrap();

        let body = json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD });
        let change = app.post_auth("/v1/auth/password", &owner.access, Some(body));
        let logins = join_all((0..3).map(|_| login_after(&app, &email, PASSWORD, 30)));
        let (changed, logins) = tokio::join!(change, logins);
        assert_eq!(changed.status(), StatusCode::NO_CONTENT, "round {round}");
        winners(logins).await;
        // The new password is the credential, whatever the racing logins rehashed.
        assert_eq!(app.login(&email, NEW_PASSWORD).await.status(), StatusCode::OK, "round {round}: new password");
        let old = app.login(&email, PASSWORD).await;
        assert_eq!(old.status(), StatusCode::UNAUTHORIZED, "round {round}: the old password came back");
    }
}

#[tokio::test]
async fn rt13_the_audit_log_refuses_truncate_and_delete() {
    let Some(app) = spawn_app().await else { return };
    app.new_session().await;
    let before = app.state.store.audit_events(None, 0, 1000).await.unwrap().len();
    assert!(before > 0);
    let refused: &[&str] = match crate::BACKEND {
        // Row-level triggers do not fire on TRUNCATE: a statement-level one refuses it.
        Backend::Postgres => &["TRUNCATE audit_log", "DELETE FROM audit_log", "UPDATE audit_log SET event = 'x'"],
        // SQLite has no TRUNCATE (`DELETE` without WHERE is its truncate optimisation, which
        // the trigger disables).
        Backend::Sqlite => &["DELETE FROM audit_log", "UPDATE audit_log SET event = 'x'"],
    };
    for sql in refused {
        assert!(raw_sql(&app, sql).await.is_err(), "{sql} must fail");
    }
    assert_eq!(app.state.store.audit_events(None, 0, 1000).await.unwrap().len(), before);
}

#[tokio::test]
async fn rt14_demoting_an_admin_ends_their_sessions_at_once() {
    let Some(app) = spawn_app().await else { return };
    let root = app.new_admin().await;
    let demoted = app.new_admin().await;
    let me: Value = app.me(&demoted.access).await.json().await.unwrap();
    assert_eq!(me["roles"], json!(["admin"]));
    let demoted_email = me["email"].as_str().unwrap().to_string();
    let mut ws = open(&app, &demoted.access).await;
    let bystander = app.new_session().await;

    let r = app.delete_auth(&format!("/v1/admin/users/{}/admin", demoted.user_id), &root.access).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The token that says "admin" is dead everywhere, not only on admin endpoints.
    assert_problem(app.me(&demoted.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    ws.expect_logout("admin_revoked", &demoted.session_id).await;
    assert_problem(app.refresh(&demoted.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    let s = app.state.store.session(&demoted.session_id).await.unwrap().unwrap();
    assert_eq!(s.revoked_reason.as_deref(), Some("admin_revoked"));
    assert!(app.state.sessions.denylist.contains(&demoted.session_id));
    assert_eq!(app.me(&root.access).await.status(), StatusCode::OK);
    assert_eq!(app.me(&bystander.access).await.status(), StatusCode::OK);

    // Logging in again gives a token without the role, and it stays live: demoting a user who
    // is no admin (again) and granting the role end nothing.
    let again = app.session_of(&demoted_email).await;
    let me: Value = app.me(&again.access).await.json().await.unwrap();
    assert_eq!(me["roles"], json!([]));
    let r = app.delete_auth(&format!("/v1/admin/users/{}/admin", demoted.user_id), &root.access).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.post_auth(&format!("/v1/admin/users/{}/admin", demoted.user_id), &root.access, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.me(&again.access).await.status(), StatusCode::OK);

    // Audited with the count.
    let v: Value = app
        .get_auth(&format!("/v1/admin/audit?limit=500&user_id={}", demoted.user_id), &root.access)
        .await
        .json()
        .await
        .unwrap();
    let ev = v["events"].as_array().unwrap().iter().find(|e| e["event"] == "admin_revoked").unwrap().clone();
    assert_eq!(ev["detail"]["sessions_revoked"], 1);
    assert_eq!(ev["actor_user_id"], root.user_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt14_logins_racing_a_demotion_never_leave_a_live_admin_token() {
    let Some(app) = race_app().await else { return };
    let root = app.new_admin().await;
    let hash = app.state.sessions.passwords.hash(PASSWORD.into(), None).await.unwrap();
    for round in 0..30 {
        let (user_id, email) = user_with_hash(&app, &hash, true).await;
        let path = format!("/v1/admin/users/{user_id}/admin");
        let demote = app.delete_auth(&path, &root.access);
        let logins = join_all((0..3).map(|_| login_after(&app, &email, PASSWORD, 4)));
        let (demoted, logins) = tokio::join!(demote, logins);
        assert_eq!(demoted.status(), StatusCode::NO_CONTENT, "round {round}");
        // A login that read the user as an admin either ended with the demotion or was issued
        // after it, from the user row as the demotion left it.
        for t in winners(logins).await {
            let r = app.me(&t.access).await;
            if r.status() == StatusCode::OK {
                let me: Value = r.json().await.unwrap();
                assert_eq!(me["roles"], json!([]), "round {round}: a live session claims admin");
            } else {
                assert_problem(r, StatusCode::UNAUTHORIZED, "session_revoked").await;
            }
        }
    }
}

//! Several instances on one PostgreSQL database (docs/API.md §6): tokens work everywhere, a
//! revocation on one instance closes sockets and refuses tokens on every other, the listener
//! survives `pg_terminate_backend`, restarts rebuild the denylist, presence is cluster-wide.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

use crate::helpers::*;
use crate::ws::{connect, open};

/// Upper bound for convergence by design (presence: 5 s per the contract).
const CONVERGE: Duration = Duration::from_secs(10);

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `app` sees `n` other live instances (their first heartbeat).
async fn sees_instances(app: &TestApp, n: usize) {
    wait_until("instance heartbeats", || async {
        let alive_after = app.clock.now_ms() - 15_000;
        app.state
            .store
            .postgres()
            .unwrap()
            .other_instances(&app.state.sessions.instance_id, alive_after)
            .await
            .unwrap()
            .len()
            == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j11_w9_a_logout_on_one_instance_reaches_every_instance() {
    let Some(a) = spawn_app().await else { return };
    let b = another_instance(&a).await;
    let c = another_instance(&a).await;
    let t = a.new_session().await;
    assert_eq!(b.me(&t.access).await.status(), StatusCode::OK, "tokens from A work on B");
    assert_eq!(c.me(&t.access).await.status(), StatusCode::OK);
    let (mut on_a, mut on_b, mut on_c) =
        (open(&a, &t.access).await, open(&b, &t.access).await, open(&c, &t.access).await);
    let bystander = b.new_session().await;
    let mut other_b = open(&b, &bystander.access).await;

    assert_eq!(a.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    on_a.expect_logout("logout", &t.session_id).await;
    on_b.expect_logout("logout", &t.session_id).await;
    on_c.expect_logout("logout", &t.session_id).await;
    other_b.expect_alive().await;
    // B applied the revocation before it pushed the event: its middleware refuses the token now.
    assert_problem(b.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    assert_problem(c.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    assert_eq!(b.me(&bystander.access).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_admin_logout_counts_sockets_on_every_instance() {
    let Some(a) = spawn_app().await else { return };
    let b = another_instance(&a).await;
    let c = another_instance(&a).await;
    sees_instances(&a, 2).await;
    let admin = a.new_admin().await;
    let email = a.new_user().await;
    let t = a.session_of(&email).await;
    let (mut b1, mut b2, mut c1) = (open(&b, &t.access).await, open(&b, &t.access).await, open(&c, &t.access).await);

    let r = a.post_auth(&format!("/v1/admin/users/{}/logout-all", t.user_id), &admin.access, None).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["revoked_sessions"], 1);
    assert_eq!(body["notified_connections"], 3, "two sockets on B and one on C");
    for ws in [&mut b1, &mut b2, &mut c1] {
        ws.expect_logout("admin_logout", &t.session_id).await;
    }

    let u = b.new_session().await;
    let mut ub = open(&b, &u.access).await;
    let mut admin_a = open(&a, &admin.access).await;
    let mut admin_c = open(&c, &admin.access).await;
    let r = a.post_auth("/v1/admin/logout-everyone", &admin.access, None).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["notified_connections"], 3);
    ub.expect_logout("admin_logout", &u.session_id).await;
    admin_a.expect_logout("admin_logout", &admin.session_id).await;
    admin_c.expect_logout("admin_logout", &admin.session_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_a_killed_listener_resyncs_and_still_delivers() {
    let Some(a) = spawn_app().await else { return };
    let b = another_instance(&a).await;
    let t = a.new_session().await;
    let mut on_b = open(&b, &t.access).await;

    // Kill B's LISTEN connection, and revoke on A while it is (or may be) down.
    let mut admin = PgConnection::connect(&a.config.database_url).await.unwrap();
    let name = sessiond::backplane::listener_name(&b.state.sessions.instance_id);
    let killed: Vec<bool> =
        sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&name)
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(killed, vec![true], "B's listener connection was found and terminated");
    assert_eq!(a.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);

    // Whether the notification was lost or not, B learns it (resync on reconnect) and pushes it.
    on_b.expect_logout("logout", &t.session_id).await;
    assert_problem(b.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    b.wait_ready().await;
    let reconnected: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(reconnected, 1, "B listens again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_a_restarted_instance_refuses_revoked_tokens_before_it_is_ready() {
    let Some(a) = spawn_app().await else { return };
    let mut b = another_instance(&a).await;
    let t = a.new_session().await;
    b.stop().await;
    assert_eq!(a.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);

    // Before B serves anything, its rebuilt denylist already holds the revocation.
    let state = sessiond::app::build_state(b.config.clone(), sessiond::clock::Clock::system()).await.unwrap();
    assert!(state.sessions.denylist.contains(&t.session_id));
    state.store.close().await;
    let b = another_instance(&a).await;
    assert_problem(b.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    let mut ws = connect(&b, None).await.unwrap();
    ws.send_json(serde_json::json!({"type": "auth", "access_token": t.access})).await;
    ws.expect_logout("logout", &t.session_id).await;
}

/// The backend pid of `app`'s listener connection.
async fn listener_pid(admin: &mut PgConnection, app: &TestApp) -> Option<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
        .bind(sessiond::backplane::listener_name(&app.state.sessions.instance_id))
        .fetch_optional(admin)
        .await
        .unwrap()
}

/// B's read of a notified range fails `failures` times; a logout on A must still reach B's
/// socket within 5 s, and B must come back up (listening, ready) by itself.
async fn a_failed_read_heals(a: &TestApp, b: &TestApp, failures: u32) {
    use sessiond::store::failpoint::REVOCATIONS_READ;
    let t = a.new_session().await;
    let mut on_b = open(b, &t.access).await;
    b.state.store.arm_failpoint_times(REVOCATIONS_READ, failures);
    assert_eq!(a.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    tokio::time::timeout(Duration::from_secs(5), on_b.expect_logout("logout", &t.session_id))
        .await
        .expect("the revocation whose read failed reached B's socket within 5 s");
    assert!(!b.state.store.failpoint_armed(REVOCATIONS_READ), "B's read did fail {failures} time(s)");
    assert_problem(b.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    // Past the 5 s readiness grace: a listener still marked down would be 503 by now.
    b.clock.advance(Duration::from_millis(sessiond::cluster::READY_GRACE_MS as u64 + 1_000));
    let bp = b.state.link.clone().unwrap();
    wait_until("B listens and is ready again", || async {
        bp.is_up() && b.client.get(b.url("/readyz")).send().await.unwrap().status() == StatusCode::OK
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt4_a_failed_revocation_read_retries_or_resyncs_and_readiness_returns() {
    let Some(a) = spawn_app().await else { return };
    let b = another_instance(&a).await;
    let mut admin = PgConnection::connect(&a.config.database_url).await.unwrap();
    let before = listener_pid(&mut admin, &b).await.expect("B listens");

    // Once: the retry reads the range; the listener keeps its connection.
    a_failed_read_heals(&a, &b, 1).await;
    assert_eq!(listener_pid(&mut admin, &b).await, Some(before), "a retry, not a reconnect");

    // Every attempt: the listener reconnects and the resync applies the unread range.
    a_failed_read_heals(&a, &b, sessiond::backplane::NOTIFIED_READ_ATTEMPTS as u32).await;
    let after = listener_pid(&mut admin, &b).await.expect("B listens again");
    assert_ne!(after, before, "B's listener reconnected to resync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide() {
    let Some(a) = spawn_app().await else { return };
    let b = another_instance(&a).await;
    let email = a.new_user().await;
    let (s1, s2) = (a.session_of(&email).await, a.session_of(&email).await);
    let connected_on_a = |id: String| {
        let (a, token) = (&a, s1.access.clone());
        async move {
            let v: Value = a.get_auth("/v1/auth/sessions", &token).await.json().await.unwrap();
            v["sessions"].as_array().unwrap().iter().any(|s| s["id"] == id.as_str() && s["connected"] == true)
        }
    };
    let mut on_b = open(&b, &s2.access).await;
    wait_until("presence of B's socket on A", || connected_on_a(s2.session_id.clone())).await;
    assert!(!connected_on_a(s1.session_id.clone()).await);

    on_b.stream.close(None).await.unwrap();
    wait_until("presence gone", || async { !connected_on_a(s2.session_id.clone()).await }).await;

    // A crashed instance (no heartbeat for 15 s) no longer counts.
    let stale = a.clock.now_ms() - 20_000;
    a.state
        .store
        .postgres()
        .unwrap()
        .sync_presence("crashed-instance", std::slice::from_ref(&s2.session_id), &[], stale)
        .await
        .unwrap();
    assert!(!connected_on_a(s2.session_id.clone()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_parallel_refreshes_across_instances_converge() {
    let Some(a) = spawn_app().await else { return };
    let b = another_instance(&a).await;
    for _ in 0..5 {
        let t = a.new_session().await;
        let calls = (0..8).map(|i| if i % 2 == 0 { a.refresh(&t.refresh) } else { b.refresh(&t.refresh) });
        let responses = futures::future::join_all(calls).await;
        let mut successors = Vec::new();
        for r in responses {
            assert_eq!(r.status(), StatusCode::OK);
            successors.push(r.json::<Value>().await.unwrap()["refresh_token"].as_str().unwrap().to_string());
        }
        successors.dedup();
        assert_eq!(successors.len(), 1, "one successor across instances");
        assert_eq!(a.state.store.refresh_token_counts(&t.session_id).await.unwrap(), (1, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_sweep_pushes_once_across_instances() {
    let Some(a) = spawn_app_with(|c| c.refresh_idle_ttl = Duration::from_secs(60)).await else { return };
    let b = another_instance(&a).await;
    let t = a.new_session().await;
    let mut on_b = open(&b, &t.access).await;
    a.clock.advance(Duration::from_secs(61));
    b.clock.advance(Duration::from_secs(61));
    let (na, nb) = tokio::join!(a.state.sessions.sweep(), b.state.sessions.sweep());
    assert_eq!(na.unwrap() + nb.unwrap(), 1, "exactly one instance ends the session");
    on_b.expect_logout("session_expired", &t.session_id).await;
}

/// Restores connections to the test database even if the test fails half-way.
struct AllowConnections(String);

impl Drop for AllowConnections {
    fn drop(&mut self) {
        let url = self.0.clone();
        let name = url.rsplit('/').next().unwrap_or_default().to_string();
        // A blocking one-off on its own runtime: Drop cannot await.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
                let admin = url.rsplit_once('/').map(|(base, _)| format!("{base}/postgres")).unwrap();
                if let Ok(mut c) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).execute(&mut c).await;
                }
            })
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_a_listener_down_for_long_fails_closed_and_reports_not_ready() {
    let Some(a) = spawn_app().await else { return };
    let b = another_instance(&a).await;
    b.wait_ready().await;
    let t = a.new_session().await;
    assert_eq!(b.me(&t.access).await.status(), StatusCode::OK, "B's pool connection is warm");

    // Keep B's listener from coming back: no new connections to the database (existing pooled
    // connections keep working), then end the listener's connection.
    let url = a.config.database_url.clone();
    let name = url.rsplit('/').next().unwrap().to_string();
    let admin_url = url.rsplit_once('/').map(|(base, _)| format!("{base}/postgres")).unwrap();
    let mut admin = PgConnection::connect(&admin_url).await.unwrap();
    let _restore = AllowConnections(url.clone());
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).execute(&mut admin).await.unwrap();
    let listener = sessiond::backplane::listener_name(&b.state.sessions.instance_id);
    let killed: Vec<bool> =
        sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&listener)
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(killed, vec![true]);

    // The documented bound: not ready once the listener has been down for 5 s.
    wait_until("B reports not ready", || async {
        b.client.get(b.url("/readyz")).send().await.unwrap().status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;

    // A revocation B cannot hear about: B still refuses the token (it checks the database).
    assert_eq!(a.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    assert!(!b.state.sessions.denylist.contains(&t.session_id), "no notification reached B");
    assert_problem(b.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    let live = a.new_session().await;
    assert_eq!(b.me(&live.access).await.status(), StatusCode::OK, "live sessions still work on B");

    // Connections allowed again: the listener comes back and B is ready.
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).execute(&mut admin).await.unwrap();
    b.wait_ready().await;
}

/// Revocations that reach an instance together (here: twenty, committed in one transaction
/// elsewhere, each with its own log row and notification) are applied with one read of the log
/// for the whole queue, not one per notification (issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i12_queued_revocation_notes_are_applied_with_one_read() {
    use sessiond::store::failpoint::REVOCATIONS_READ;
    use sessiond::store::{NewRefresh, NewSession};
    const NOTES: usize = 20;
    let Some(a) = spawn_app().await else { return };
    let b = another_instance(&a).await;
    let user_id = a.session_of(&a.new_user().await).await.user_id;
    // Sessions straight from the store (no password hashing), with their access tokens.
    let mut sessions = Vec::new();
    for _ in 0..NOTES {
        let now = a.clock.now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let refresh = NewRefresh { id: uuid::Uuid::now_v7().to_string(), hash: rand::random() };
        let new = NewSession {
            id: id.clone(),
            user_id: user_id.clone(),
            device_name: None,
            user_agent: None,
            ip: None,
            now,
            idle_ttl: 3_600_000,
            max_age: 3_600_000,
            access_ttl: 600_000,
            refresh,
            credential_version: 0,
        };
        let (_, s) = a.state.store.create_session(new).await.unwrap().expect("session created");
        let (access, _) = a.state.keys.issue(&user_id, &id, vec![], now, s.access_expires_at).unwrap();
        assert_eq!(b.me(&access).await.status(), StatusCode::OK);
        sessions.push((id, access));
    }

    let mut db = PgConnection::connect(&a.config.database_url).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    for (id, _) in &sessions {
        let log_id: i64 = sqlx::query_scalar(
            "WITH r AS (UPDATE sessions SET revoked_at = now(), revoked_reason = 'logout' WHERE id = $1 \
                        RETURNING id, user_id, revoked_at, access_expires_at) \
             INSERT INTO revocations (session_id, user_id, reason, at, access_expires_at) \
             SELECT id, user_id, 'logout', revoked_at, access_expires_at FROM r RETURNING id",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        let note = serde_json::json!({ "from": log_id, "to": log_id, "origin": "elsewhere", "req": null });
        sqlx::query("SELECT pg_notify('sessiond_revocations', $1)")
            .bind(note.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let reads_before = b.state.store.failpoint_passes(REVOCATIONS_READ);
    tx.commit().await.unwrap();

    for (_, access) in &sessions {
        wait_until("B refuses a revoked session's token", || async {
            b.me(access).await.status() == StatusCode::UNAUTHORIZED
        })
        .await;
        assert_problem(b.me(access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    }
    let reads = b.state.store.failpoint_passes(REVOCATIONS_READ) - reads_before;
    // One read for the queue; a second at most if the notes arrived split across two socket reads.
    assert!(reads <= 2, "{reads} reads of the log for {NOTES} queued notifications");
}

//! Upgrades (issue 12): a database written by the sessiond of migrations 0001–0003 (times as
//! integer milliseconds, flags as 0/1 on both backends), then today's server started on it,
//! which runs the remaining migrations (on PostgreSQL, 0004 converts to `timestamptz` and
//! `boolean` in place). Everything the old rows said must still hold, over HTTP.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;
use sessiond::clock::{rfc3339, Clock};
use sessiond::tokens::refresh::RefreshToken;

use crate::helpers::*;

/// The migrations of the sessiond before issue 12, as a migrator of their own (a copy of files
/// 0001–0003: their checksums are the ones today's server expects).
async fn old_migrator(dir: &Path) -> sqlx::migrate::Migrator {
    let backend = match crate::BACKEND {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(backend);
    let old = dir.join("old-migrations");
    std::fs::create_dir_all(&old).unwrap();
    for version in ["0001", "0002", "0003"] {
        let file = std::fs::read_dir(&source)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(version))
            .unwrap();
        std::fs::copy(&file, old.join(file.file_name().unwrap())).unwrap();
    }
    let migrator = sqlx::migrate::Migrator::new(old.as_path()).await.unwrap();
    assert_eq!(migrator.iter().map(|m| m.version).collect::<Vec<_>>(), [1, 2, 3]);
    migrator
}

#[tokio::test]
async fn i12_a_database_of_the_old_format_upgrades_in_place_and_keeps_working() {
    let Some((config, dir, db)) = fresh_database().await else { return };
    let mut raw = RawDb::connect(&config.database_url).await.unwrap();
    raw.migrate(&old_migrator(dir.path()).await).await.unwrap();

    // Rows as the old sessiond wrote them: integer ms (with a millisecond part, which must
    // survive) and 0/1 flags, through plain SQL.
    let now = Clock::system().now_ms();
    let minute = 60_000;
    let (user_created, live_created, revoked_at, audit_at) =
        (now - 90 * minute + 101, now - 30 * minute + 123, now - minute + 456, now - 20 * minute + 789);
    let (admin, disabled) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string());
    let (live, revoked) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string());
    // An older sessiond's parameters: the first login rehashes it (a write through the new types).
    let legacy_hash = sessiond::password::hash_with_params(PASSWORD, 8192, 1, 1);
    let refresh = RefreshToken::generate();
    let key = sessiond::tokens::jwt::generate_key(now - 100 * minute, now - 100 * minute);
    let day = 24 * 60 * minute;
    let sql = format!(
        "INSERT INTO users (id, email, password_hash, is_admin, created_at, disabled_at) VALUES \
           ('{admin}', 'old-admin@example.com', '{legacy_hash}', 1, {user_created}, NULL), \
           ('{disabled}', 'old-disabled@example.com', '{legacy_hash}', 0, {user_created}, {user_created});
         INSERT INTO sessions (id, user_id, device_name, user_agent, ip, created_at, last_used_at, \
           idle_expires_at, absolute_expires_at, access_expires_at, revoked_at, revoked_reason) VALUES \
           ('{live}', '{admin}', 'old laptop', 'UA/1', '192.0.2.1', {live_created}, {live_created}, \
            {idle}, {absolute}, {live_created} + 900000, NULL, NULL), \
           ('{revoked}', '{admin}', 'old phone', 'UA/2', '192.0.2.2', {live_created}, {live_created}, \
            {idle}, {absolute}, {access_alive}, {revoked_at}, 'logout');
         INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) VALUES \
           ('{token_id}', '{live}', {hash}, {live_created});
         INSERT INTO audit_log (at, event, target_user_id, detail) VALUES \
           ({audit_at}, 'user_registered', '{admin}', '{{\"via\":\"old\"}}');
         INSERT INTO signing_keys (kid, private_der, public_x, created_at, activates_at) VALUES \
           ('{kid}', {der}, '{x}', {key_at}, {key_at});",
        idle = now + day,
        absolute = now + 30 * day,
        access_alive = now + 10 * minute,
        token_id = uuid::Uuid::now_v7(),
        hash = sql_blob(&refresh.digest()),
        kid = key.kid,
        der = sql_blob(&key.private_der),
        x = key.public_x,
        key_at = key.created_at,
    );
    raw.execute(&sql).await.unwrap();
    drop(raw);

    let app = start_on(config, dir, Clock::system(), db).await;
    if crate::BACKEND == Backend::Postgres {
        let mut raw = app.raw_db().await;
        let RawDb::Postgres(c) = &mut raw else { unreachable!() };
        let types: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND column_name IN ('is_admin', 'created_at', 'at') \
             ORDER BY 1, 2",
        )
        .fetch_all(c)
        .await
        .unwrap();
        for (table, column, ty) in &types {
            let want = if column == "is_admin" { "boolean" } else { "timestamp with time zone" };
            assert_eq!(ty, want, "{table}.{column}");
        }
        // 0005 adds service_credentials.created_at; 0006 ssf_keys, ssf_streams and
        // ssf_deliveries.created_at.
        assert_eq!(types.len(), 11, "{types:?}");
    } else {
        // SQLite gets its revocation log in 0005, holding the revocations whose tokens may live.
        let (log, _) = app.state.store.revocations_snapshot(now).await.unwrap();
        let log: Vec<_> = log.iter().map(|e| (e.session_id.as_str(), e.reason.as_str(), e.at)).collect();
        assert_eq!(log, [(revoked.as_str(), "logout", revoked_at)]);
    }

    // The stored key is the key: no new one was made, and it signs.
    assert_eq!(app.state.keys.kids(), std::slice::from_ref(&key.kid));
    // The admin logs in with the old hash (rehashed on the way) and is still an admin.
    let t = app.session_of("old-admin@example.com").await;
    assert_eq!(t.user_id, admin);
    let me: Value = app.me(&t.access).await.json().await.unwrap();
    assert_eq!(me["roles"], serde_json::json!(["admin"]), "{me}");
    let rehashed = app.state.store.user_by_id(&admin).await.unwrap().unwrap().password_hash;
    assert_ne!(rehashed, legacy_hash, "the login rehashed the password");
    assert_eq!(app.login("old-admin@example.com", PASSWORD).await.status(), StatusCode::OK);
    // The disabled user stays disabled.
    let r = app.login("old-disabled@example.com", PASSWORD).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;

    // The live session's refresh token refreshes; a token of the live session signed with the
    // stored key works, one of the revoked session (its tokens still unexpired) is refused.
    let r = app.refresh(refresh.as_str()).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let mint = |session: &str| app.state.keys.issue(&admin, session, vec![], now, now + 5 * minute).unwrap().0;
    assert_eq!(app.me(&mint(&live)).await.status(), StatusCode::OK);
    assert_problem(app.me(&mint(&revoked)).await, StatusCode::UNAUTHORIZED, "session_revoked").await;

    // Times survived to the millisecond in the store, and as the API shows them.
    let s = app.state.store.session(&revoked).await.unwrap().unwrap();
    assert_eq!((s.created_at, s.revoked_at, s.access_expires_at), (live_created, Some(revoked_at), now + 10 * minute));
    assert_eq!(s.revoked_reason.as_deref(), Some("logout"));
    let user = app.state.store.user_by_id(&disabled).await.unwrap().unwrap();
    assert_eq!((user.created_at, user.disabled_at, user.is_admin), (user_created, Some(user_created), false));
    let listed: Value =
        app.get_auth(&format!("/v1/admin/users/{admin}/sessions"), &t.access).await.json().await.unwrap();
    let old = listed["sessions"].as_array().unwrap().iter().find(|s| s["id"] == live.as_str()).expect("listed");
    assert_eq!(old["created_at"], rfc3339(live_created), "{old}");
    assert_eq!(old["device_name"], "old laptop");
    let users: Value = app.get_auth("/v1/admin/users?q=old-admin", &t.access).await.json().await.unwrap();
    assert_eq!(users["users"][0]["created_at"], rfc3339(user_created), "{users}");
    assert_eq!(users["users"][0]["roles"], serde_json::json!(["admin"]));
    let audit: Value = app.get_auth(&format!("/v1/admin/audit?user_id={admin}"), &t.access).await.json().await.unwrap();
    let first = &audit["events"][0];
    assert_eq!((&first["event"], &first["at"]), (&Value::from("user_registered"), &Value::from(rfc3339(audit_at))));
    let row = &app.state.store.audit_events(Some(&admin), 0, 1).await.unwrap()[0];
    assert_eq!(row.at, audit_at);
}

//! Upgrades: a database written by an older sessiond, then today's server started on it, which
//! runs the remaining migrations. Everything the old rows said must still hold, over HTTP.
//! - Issue 12: migrations 0001–0003 (times as integer milliseconds, flags as 0/1 on both
//!   backends; on PostgreSQL, 0004 converts to `timestamptz` and `boolean` in place).
//! - Issue 20: migrations 0001–0006 with Shared Signals streams (0007: streams owned by the
//!   credential's id, a removed credential's stream gone, heads, keyed subject rules).

use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;
use sessiond::clock::{rfc3339, Clock};
use sessiond::tokens::refresh::RefreshToken;

use crate::helpers::*;

/// The migrations of an older sessiond (`versions`, e.g. 0001–0003 before issue 12), as a
/// migrator of their own (copies of the files: their checksums are the ones today's server
/// expects).
async fn old_migrator(dir: &Path, versions: &[&str]) -> sqlx::migrate::Migrator {
    let backend = match crate::BACKEND {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(backend);
    let old = dir.join("old-migrations");
    std::fs::create_dir_all(&old).unwrap();
    for version in versions {
        let file = std::fs::read_dir(&source)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(version))
            .unwrap();
        std::fs::copy(&file, old.join(file.file_name().unwrap())).unwrap();
    }
    let migrator = sqlx::migrate::Migrator::new(old.as_path()).await.unwrap();
    let expected: Vec<i64> = versions.iter().map(|v| v.parse().unwrap()).collect();
    assert_eq!(migrator.iter().map(|m| m.version).collect::<Vec<_>>(), expected);
    migrator
}

#[tokio::test]
async fn i12_a_database_of_the_old_format_upgrades_in_place_and_keeps_working() {
    let Some((config, dir, db)) = fresh_database().await else { return };
    let mut raw = RawDb::connect(&config.database_url).await.unwrap();
    raw.migrate(&old_migrator(dir.path(), &["0001", "0002", "0003"]).await).await.unwrap();

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

/// Issue 20 (SECURITY.md G-1, G-2, G-6): a database of migration 0006 with a receiver's push
/// stream (a subject rule, a pending SET) and a stream whose credential had been removed (the
/// hole), then today's server. The removed credential's stream is gone, audited; the live one
/// is its credential's (by id), its pending SET is pushed (the migration made it its subject's
/// head), and its old rule gets its lookup keys at start and still excludes its user.
#[tokio::test]
async fn i20_streams_of_migration_0006_upgrade_to_owned_streams_heads_and_keyed_rules() {
    let Some((mut config, dir, db)) = fresh_database().await else { return };
    config.ssf_allow_insecure_push = true;
    let mut raw = RawDb::connect(&config.database_url).await.unwrap();
    let old: &[&str] = match crate::BACKEND {
        Backend::Sqlite => &["0001", "0002", "0003", "0005", "0006"],
        Backend::Postgres => &["0001", "0002", "0003", "0004", "0005", "0006"],
    };
    raw.migrate(&old_migrator(dir.path(), old).await).await.unwrap();

    let rx = crate::ssf_receiver::Receiver::start().await;
    let now = Clock::system().now_ms();
    let secret = sessiond::service_credentials::ServiceSecret::generate();
    let (excluded, listed) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string());
    let hash = sessiond::password::hash_with_params(PASSWORD, 8192, 1, 1);
    let iss = config.issuer.clone();
    let rule = serde_json::json!({ "format": "complex", "user": { "format": "iss_sub", "iss": iss, "sub": excluded } });
    let events = r#"["https://schemas.openid.net/secevent/caep/event-type/session-revoked"]"#;
    let delivery = format!(r#"{{"method":"urn:ietf:rfc:8935","endpoint_url":"{}"}}"#, rx.url());
    let t = sql_time(now);
    let sql = format!(
        "INSERT INTO users (id, email, password_hash, is_admin, created_at) VALUES \
           ('{excluded}', 'excluded@example.com', '{hash}', false, {t}), \
           ('{listed}', 'listed@example.com', '{hash}', false, {t});
         INSERT INTO service_credentials (name, secret_digest, scopes, created_at, ssf_aud) VALUES \
           ('billing', {digest}, 'ssf', {t}, 'billing');
         INSERT INTO ssf_streams (id, owner, aud, delivery, method, endpoint_url, events_requested, \
           events_delivered, event_subject, status, health, created_at, updated_at) VALUES \
           ('st_live', 'billing', 'billing', '{delivery}', 'push', '{url}', '{events}', '{events}', false, \
            'enabled', 'ok', {t}, {t}), \
           ('st_orphan', 'removed-receiver', 'removed-receiver', '{delivery}', 'push', '{url}', '{events}', \
            '{events}', false, 'enabled', 'ok', {t}, {t});
         INSERT INTO ssf_subject_rules (stream_id, subject) VALUES ('st_live', '{rule}'), ('st_orphan', '{rule}');
         INSERT INTO ssf_deliveries (stream_id, jti, signal_id, kind, subject_key, kid, set_jws, state, attempts, \
           next_attempt_at, created_at, updated_at) VALUES \
           ('st_live', 'jti-held', 1, 'session-revoked', 'user:u_old', 'kid-old', 'held.set.jws', 'pending', 0, {t}, {t}, {t}), \
           ('st_orphan', 'jti-orphan', 1, 'session-revoked', 'user:u_old', 'kid-old', 'orphan.set.jws', 'pending', 0, \
            {t}, {t}, {t});",
        digest = sql_blob(&secret.digest()),
        url = rx.url(),
    );
    raw.execute(&sql).await.unwrap();
    drop(raw);

    let app = start_on(config, dir, Clock::system(), db).await;
    // The removed credential's stream went with everything it held, and the audit says so.
    assert!(app.state.store.ssf_stream("st_orphan").await.unwrap().is_none());
    let audit: Vec<(String, Option<String>)> = {
        let sql = "SELECT event, detail FROM audit_log WHERE event = 'ssf_stream_deleted'";
        match app.raw_db().await {
            RawDb::Sqlite(mut c) => sqlx::query_as(sql).fetch_all(&mut c).await.unwrap(),
            RawDb::Postgres(mut c) => sqlx::query_as(sql).fetch_all(&mut c).await.unwrap(),
        }
    };
    assert_eq!(audit.len(), 1, "{audit:?}");
    let detail: Value = serde_json::from_str(audit[0].1.as_deref().unwrap()).unwrap();
    assert_eq!(detail["stream_id"], "st_orphan");
    assert_eq!(detail["by"], "migration_0007_credential_removed");
    // The live stream is its credential's: listed for its secret.
    let r = app.client.get(app.url("/ssf/stream")).bearer_auth(secret.as_str()).send().await.unwrap();
    let streams: Value = r.json().await.unwrap();
    assert_eq!(streams[0]["stream_id"], "st_live", "{streams}");
    // The held SET is pushed (its head was made by the migration), byte for byte.
    let got = rx.next(std::time::Duration::from_secs(5)).await.expect("the held SET");
    assert_eq!(got.body, "held.set.jws");
    // The old rule was keyed at start: the excluded user's logout is not delivered, the other's is.
    for (email, delivered) in [("excluded@example.com", false), ("listed@example.com", true)] {
        let t = app.session_of(email).await;
        app.post_auth("/v1/auth/logout", &t.access, None).await;
        if delivered {
            let got = rx.next(std::time::Duration::from_secs(5)).await.expect("the listed user's SET");
            assert_eq!(got.claims()["sub_id"]["user"]["sub"], Value::from(listed.clone()));
        }
    }
    rx.expect_none(std::time::Duration::from_secs(1)).await;
}

//! The revocation log and `GET /v1/revocations` (docs/API.md §9): every way a session ends
//! (docs/API.md §5.5) appends exactly one entry per ended session, with the `until` rule, in the
//! transaction that ends it (nothing on rollback); the expiry sweep prunes what is past `until`
//! without moving the head back; snapshot, `after`, `limit`, `next` and `wait` semantics; and
//! the cursor rules.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiond::clock::rfc3339;
use sessiond::store::{failpoint, revocation_until};

use crate::helpers::*;
use crate::service::feed_reader;

const FEED: &str = "/v1/revocations";

/// `query` with every `after=N` (N digits only) made a cursor of this database: `EPOCH.N`.
pub async fn with_epoch(app: &TestApp, query: &str) -> String {
    let epoch = app.state.store.feed_epoch().await.unwrap();
    let mut out = String::new();
    let mut rest = query;
    while let Some(at) = rest.find("after=") {
        let (before, after) = rest.split_at(at + "after=".len());
        out.push_str(before);
        let value: String = after.chars().take_while(|c| *c != '&').collect();
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("{epoch}.{value}"));
        } else {
            out.push_str(&value);
        }
        rest = &after[value.len()..];
    }
    out.push_str(rest);
    out
}

/// A 200 answer of the feed (`after=N` in `query` is the cursor of log id N, see [`with_epoch`]).
pub async fn feed(app: &TestApp, secret: &str, query: &str) -> Value {
    let query = with_epoch(app, query).await;
    let r = app.get_auth(&format!("{FEED}{query}"), secret).await;
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    let body: Value = r.json().await.unwrap();
    assert!(body["next"].is_string(), "{body}");
    body
}

fn entries(page: &Value) -> &Vec<Value> {
    page["revocations"].as_array().unwrap()
}

/// The log id of a cursor (`EPOCH.ID`).
fn cursor(v: &Value) -> i64 {
    let c = v.as_str().unwrap();
    let (epoch, id) = c.split_once('.').unwrap_or_else(|| panic!("a cursor without its epoch: {c}"));
    assert_eq!(epoch.len(), 16, "{c}");
    id.parse().unwrap()
}

/// `(id, session_id, reason)` of every row of the log, read behind the server's back.
pub async fn log_rows(app: &TestApp) -> Vec<(i64, String, String)> {
    let sql = "SELECT id, session_id, reason FROM revocations ORDER BY id";
    match app.raw_db().await {
        RawDb::Sqlite(mut c) => sqlx::query_as(sql).fetch_all(&mut c).await.unwrap(),
        RawDb::Postgres(mut c) => sqlx::query_as(sql).fetch_all(&mut c).await.unwrap(),
    }
}

/// What the feed must say `until` is for a session: the rule applied to the session's latest
/// access-token expiry, in whole seconds rounded up.
async fn expected_until(app: &TestApp, session_id: &str) -> String {
    let s = app.state.store.session(session_id).await.unwrap().unwrap();
    let until = revocation_until(s.access_expires_at);
    assert_eq!(until, s.access_expires_at + 31_000, "exp plus the 30 s leeway, plus the second `exp` rounds away");
    rfc3339((until + 999).div_euclid(1000) * 1000)
}

#[tokio::test]
async fn every_way_a_session_ends_is_logged_once_per_session_with_its_until() {
    let Some(app) = spawn_app().await else { return };
    let admin = app.new_admin().await;
    let mut expected: BTreeMap<String, &str> = BTreeMap::new();

    // The user's own endpoints.
    let email = app.new_user().await;
    let (a, b, c, d) = (
        app.session_of(&email).await,
        app.session_of(&email).await,
        app.session_of(&email).await,
        app.session_of(&email).await,
    );
    assert_eq!(app.post_auth("/v1/auth/logout", &a.access, None).await.status(), StatusCode::NO_CONTENT);
    expected.insert(a.session_id.clone(), "logout");
    assert_eq!(app.post_auth("/v1/auth/logout", &a.access, None).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.delete_auth(&format!("/v1/auth/sessions/{}", c.session_id), &b.access).await.status(),
        StatusCode::NO_CONTENT
    );
    expected.insert(c.session_id.clone(), "session_revoked");
    let r = app.post_auth("/v1/auth/logout-all", &b.access, Some(json!({"keep_current": true}))).await;
    assert_eq!(r.status(), StatusCode::OK);
    expected.insert(d.session_id.clone(), "logout_others");
    assert_eq!(app.post_auth("/v1/auth/logout-all", &b.access, None).await.status(), StatusCode::OK);
    expected.insert(b.session_id.clone(), "logout_all");
    let e = app.new_session().await;
    let r = app.post_json("/v1/auth/logout", json!({ "refresh_token": e.refresh })).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    expected.insert(e.session_id.clone(), "logout");

    // A password change ends the other sessions.
    let email = app.new_user().await;
    let (keep, other) = (app.session_of(&email).await, app.session_of(&email).await);
    let change = json!({"current_password": PASSWORD, "new_password": "a brand new password"});
    assert_eq!(app.post_auth("/v1/auth/password", &keep.access, Some(change)).await.status(), StatusCode::NO_CONTENT);
    expected.insert(other.session_id.clone(), "password_changed");

    // Refresh-token reuse: a token two rotations back.
    let t0 = app.new_session().await;
    let t1 = Tokens::from(app.refresh(&t0.refresh).await.json::<Value>().await.unwrap());
    assert_eq!(app.refresh(&t1.refresh).await.status(), StatusCode::OK);
    assert_problem(app.refresh(&t0.refresh).await, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
    expected.insert(t0.session_id.clone(), "refresh_token_reused");

    // The admin's endpoints.
    let email = app.new_user().await;
    let (f, g) = (app.session_of(&email).await, app.session_of(&email).await);
    let r = app.post_auth(&format!("/v1/admin/users/{}/logout-all", f.user_id), &admin.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    expected.insert(f.session_id.clone(), "admin_logout");
    expected.insert(g.session_id.clone(), "admin_logout");
    let h = app.new_session().await;
    let r = app.delete_auth(&format!("/v1/admin/sessions/{}", h.session_id), &admin.access).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    expected.insert(h.session_id.clone(), "admin_revoked");
    let demoted = app.new_admin().await;
    let r = app.delete_auth(&format!("/v1/admin/users/{}/admin", demoted.user_id), &admin.access).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    expected.insert(demoted.session_id.clone(), "admin_revoked");
    let disabled = app.new_session().await;
    let r = app.post_auth(&format!("/v1/admin/users/{}/disable", disabled.user_id), &admin.access, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    expected.insert(disabled.session_id.clone(), "account_disabled");
    // Last: every session still live (the admin's, `keep`).
    assert_eq!(app.post_auth("/v1/admin/logout-everyone", &admin.access, None).await.status(), StatusCode::OK);
    expected.insert(admin.session_id.clone(), "admin_logout");
    expected.insert(keep.session_id.clone(), "admin_logout");

    // Once per ended session, with its reason, and nothing else (the second logout of `a` and
    // the failed refresh added nothing).
    let rows = log_rows(&app).await;
    let logged: BTreeMap<String, &str> = rows.iter().map(|(_, s, r)| (s.clone(), r.as_str())).collect();
    assert_eq!(rows.len(), expected.len(), "one entry per ended session: {rows:?}");
    assert_eq!(logged, expected);
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    // The feed says the same, in log order, with `at` and the `until` rule.
    let reader = feed_reader(&app).await;
    let snapshot = feed(&app, &reader, "").await;
    let list = entries(&snapshot);
    assert_eq!(list.len(), expected.len());
    let cursors: Vec<i64> = list.iter().map(|e| cursor(&e["cursor"])).collect();
    assert_eq!(cursors, ids);
    assert_eq!(cursor(&snapshot["next"]), *ids.last().unwrap());
    for e in list {
        let sid = e["session_id"].as_str().unwrap();
        assert_eq!(e["reason"], expected[sid], "{e}");
        let s = app.state.store.session(sid).await.unwrap().unwrap();
        assert_eq!(e["user_id"], s.user_id.as_str());
        assert_eq!(e["at"], rfc3339(s.revoked_at.unwrap()));
        assert_eq!(e["until"], expected_until(&app, sid).await, "{e}");
        assert_eq!(e.as_object().unwrap().len(), 6, "{e}");
    }
    // The same as a follower paging from the start.
    assert_eq!(entries(&feed(&app, &reader, "?after=0&limit=1000").await), list);
}

#[tokio::test]
async fn expiry_is_logged_and_the_sweep_prunes_past_until_but_never_the_head() {
    let Some(app) = spawn_app_with(|c| c.refresh_idle_ttl = Duration::from_secs(60)).await else { return };
    let reader = feed_reader(&app).await;
    let (s1, s2) = (app.new_session().await, app.new_session().await);
    app.clock.advance(Duration::from_secs(61));
    // Found expired by a refresh, then by the sweep.
    assert_problem(app.refresh(&s1.refresh).await, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    assert_eq!(app.state.sessions.sweep().await.unwrap(), 1);
    let rows = log_rows(&app).await;
    let got: Vec<(&str, &str)> = rows.iter().map(|(_, s, r)| (s.as_str(), r.as_str())).collect();
    assert_eq!(got, [(s1.session_id.as_str(), "session_expired"), (s2.session_id.as_str(), "session_expired")]);
    let snapshot = feed(&app, &reader, "").await;
    assert_eq!(entries(&snapshot).len(), 2, "still in force: their tokens' exp + leeway is ahead");
    for e in entries(&snapshot) {
        assert_eq!(e["until"], expected_until(&app, e["session_id"].as_str().unwrap()).await);
    }

    // Past `until` they are useless: gone from the snapshot at once, from the table at the
    // next sweep; an entry still in force stays.
    app.clock.advance(Duration::from_secs(31));
    let s3 = app.new_session().await;
    assert_eq!(app.post_auth("/v1/auth/logout", &s3.access, None).await.status(), StatusCode::NO_CONTENT);
    let snapshot = feed(&app, &reader, "").await;
    let sessions: Vec<&str> = entries(&snapshot).iter().map(|e| e["session_id"].as_str().unwrap()).collect();
    assert_eq!(sessions, [s3.session_id.as_str()]);
    let head = cursor(&snapshot["next"]);
    app.state.sessions.sweep().await.unwrap();
    assert_eq!(log_rows(&app).await.len(), 1);

    // Once the newest entry is past `until` too, it stays: the head never moves back, so a
    // follower's cursor stays valid.
    app.clock.advance(Duration::from_secs(3600));
    app.state.sessions.sweep().await.unwrap();
    assert_eq!(log_rows(&app).await.iter().map(|r| r.0).collect::<Vec<_>>(), [head]);
    let snapshot = feed(&app, &reader, "").await;
    assert!(entries(&snapshot).is_empty());
    assert_eq!(cursor(&snapshot["next"]), head);
    let page = feed(&app, &reader, &format!("?after={head}")).await;
    assert!(entries(&page).is_empty());
    assert_eq!(cursor(&page["next"]), head);
    // A cursor older than what is kept is no error.
    let page = feed(&app, &reader, "?after=0").await;
    assert_eq!(entries(&page).len(), 1);
    let r = app.get_auth(&format!("{FEED}{}", with_epoch(&app, &format!("?after={}", head + 1)).await), &reader).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[tokio::test]
async fn a_revocation_that_rolls_back_appends_nothing() {
    let Some(app) = spawn_app().await else { return };
    let store = &app.state.store;
    let email = app.new_user().await;
    let (a, b) = (app.session_of(&email).await, app.session_of(&email).await);

    // The fault hits after the log rows are written, before the commit.
    store.arm_failpoint(failpoint::REVOKE_AFTER_LOG);
    let r = app.post_auth("/v1/auth/logout-all", &a.access, None).await;
    assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let change = json!({"current_password": PASSWORD, "new_password": "a brand new password"});
    let r = app.post_auth("/v1/auth/password", &a.access, Some(change)).await;
    assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(store.failpoint_passes(failpoint::REVOKE_AFTER_LOG) >= 2, "the fault was where it should be");
    store.disarm_failpoint(failpoint::REVOKE_AFTER_LOG);

    assert!(log_rows(&app).await.is_empty());
    assert_eq!(store.revocation_head().await.unwrap(), 0);
    for t in [&a, &b] {
        assert_eq!(app.me(&t.access).await.status(), StatusCode::OK, "nothing ended");
    }
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK, "the password did not change");

    assert_eq!(app.post_auth("/v1/auth/logout-all", &a.access, None).await.status(), StatusCode::OK);
    let logged: Vec<String> = log_rows(&app).await.into_iter().map(|r| r.1).collect();
    assert_eq!(logged.len(), 3, "a, b and the session of the login above: {logged:?}");
    assert!(logged.contains(&a.session_id) && logged.contains(&b.session_id));
}

#[tokio::test]
async fn pages_follow_the_cursor_with_limit_and_next() {
    let Some(app) = spawn_app().await else { return };
    let reader = feed_reader(&app).await;
    let empty = feed(&app, &reader, "").await;
    assert!(entries(&empty).is_empty());
    assert_eq!(cursor(&empty["next"]), 0);
    assert_eq!(feed(&app, &reader, "?after=0").await, empty);

    let mut ended = Vec::new();
    for _ in 0..5 {
        let t = app.new_session().await;
        assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
        ended.push(t.session_id);
    }
    let snapshot = feed(&app, &reader, "").await;
    let all: Vec<String> = entries(&snapshot).iter().map(|e| e["session_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(all, ended, "oldest first");

    // Paging two at a time from the start gives the snapshot, each page's `next` its last cursor.
    let mut after = with_epoch(&app, "after=0").await.trim_start_matches("after=").to_string();
    let mut paged = Vec::new();
    loop {
        let page = feed(&app, &reader, &format!("?after={after}&limit=2")).await;
        let list = entries(&page);
        assert!(list.len() <= 2);
        if list.is_empty() {
            assert_eq!(page["next"], after.as_str(), "nothing new: next is after");
            break;
        }
        assert_eq!(page["next"], list.last().unwrap()["cursor"]);
        paged.extend(list.iter().cloned());
        after = page["next"].as_str().unwrap().to_string();
    }
    assert_eq!(&paged, entries(&snapshot));
    assert_eq!(after, snapshot["next"].as_str().unwrap());

    // The default page is 500, the most 1000; empty values mean the defaults.
    assert_eq!(entries(&feed(&app, &reader, "?after=0&limit=1000&wait=0").await).len(), 5);
    assert_eq!(entries(&feed(&app, &reader, "?after=0&limit=&wait=").await).len(), 5);
    let second = entries(&snapshot)[1]["cursor"].as_str().unwrap().to_string();
    let page = feed(&app, &reader, &format!("?after={second}&limit=1")).await;
    assert_eq!(entries(&page)[0]["session_id"], ended[2].as_str());
    // `limit` and `wait` do not apply to a snapshot, but must still be valid.
    assert_eq!(entries(&feed(&app, &reader, "?limit=1&wait=30").await).len(), 5);

    let head = cursor(&snapshot["next"]);
    let bad = [
        "?after=0&limit=0".to_string(),
        "?after=0&limit=1001".into(),
        "?after=0&limit=ten".into(),
        "?after=0&limit=-1".into(),
        "?after=0&limit=1.5".into(),
        "?after=0&wait=31".into(),
        "?after=0&wait=-1".into(),
        "?after=0&wait=soon".into(),
        "?wait=31".into(),
        "?limit=0".into(),
        "?after=".into(),
        "?after=abc".into(),
        "?after=-1".into(),
        "?after=1e3".into(),
        "?after=99999999999999999999".into(),
        "?after=0&after=1".into(),
        format!("?after={}", head + 1),
    ];
    for query in bad {
        let query = with_epoch(&app, &query).await;
        let r = app.get_auth(&format!("{FEED}{query}"), &reader).await;
        assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_when_a_revocation_commits_on_any_instance() {
    let Some(a) = spawn_app().await else { return };
    // On PostgreSQL the follower waits on another instance than the one revoking.
    let other;
    let follower = match crate::BACKEND {
        Backend::Postgres => {
            other = another_instance(&a).await;
            &other
        }
        Backend::Sqlite => &a,
    };
    let reader = feed_reader(&a).await;
    let head = feed(follower, &reader, "").await["next"].as_str().unwrap().to_string();

    // Nothing new: an empty answer after `wait`, `next` unchanged.
    let started = Instant::now();
    let page = feed(follower, &reader, &format!("?after={head}&wait=1")).await;
    assert!(entries(&page).is_empty());
    assert_eq!(page["next"], head.as_str());
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());

    // A revocation while the follower waits answers it at once.
    let t = a.new_session().await;
    let poll = {
        let (client, url) = (follower.client.clone(), follower.url(&format!("{FEED}?after={head}&wait=30")));
        let reader = reader.clone();
        tokio::spawn(async move { client.get(url).bearer_auth(reader).send().await.unwrap() })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while follower.state.feed.waiting() == 0 {
        assert!(Instant::now() < deadline, "the long poll never started waiting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let revoked_at = Instant::now();
    assert_eq!(a.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    let r = poll.await.unwrap();
    let waited = revoked_at.elapsed();
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.unwrap();
    let list = entries(&page);
    assert_eq!(list.len(), 1, "{page}");
    assert_eq!(list[0]["session_id"], t.session_id.as_str());
    assert_eq!(page["next"], list[0]["cursor"]);
    assert!(waited < Duration::from_secs(5), "woken by the commit, not by the timeout: {waited:?}");
    assert_eq!(follower.state.feed.waiting(), 0, "the waiter is gone");
}

/// Followers that each keep their own cursor see every entry once, whatever the page size.
#[tokio::test]
async fn followers_with_any_page_size_collect_the_same_entries() {
    let Some(app) = spawn_app().await else { return };
    let reader = feed_reader(&app).await;
    let mut by_limit: HashMap<i64, Vec<String>> = HashMap::new();
    for round in 0..3 {
        for _ in 0..3 {
            let t = app.new_session().await;
            assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
        }
        for limit in [1, 2, 7] {
            let seen = by_limit.entry(limit).or_default();
            let zero = with_epoch(&app, "after=0").await.trim_start_matches("after=").to_string();
            let mut after = seen.last().cloned().unwrap_or(zero);
            loop {
                let page = feed(&app, &reader, &format!("?after={after}&limit={limit}")).await;
                if entries(&page).is_empty() {
                    break;
                }
                seen.extend(entries(&page).iter().map(|e| e["cursor"].as_str().unwrap().to_string()));
                after = page["next"].as_str().unwrap().to_string();
            }
            assert_eq!(seen.len(), 3 * (round + 1));
        }
    }
    let epoch = app.state.store.feed_epoch().await.unwrap();
    let db: Vec<String> = log_rows(&app).await.into_iter().map(|r| format!("{epoch}.{}", r.0)).collect();
    for seen in by_limit.values() {
        assert_eq!(seen, &db);
    }
}

/// G-5. Long polls, snapshots and event streams share the followers' caps: with a credential's
/// 16 places taken by parked long polls, its next long poll, snapshot and stream get 503 with
/// `Retry-After`, another credential's are admitted; one commit wakes all 16 with one read of
/// the log (the tail hands every waiter at the head the same entries); and the places come back
/// when they answer. (Before: 5,000 parked long polls of one credential were all admitted, and
/// each commit cost one read per waiter.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_long_polls_snapshots_and_streams_share_the_followers_caps() {
    let Some(app) = spawn_app().await else { return };
    let reader = feed_reader(&app).await;
    let head = feed(&app, &reader, "").await["next"].as_str().unwrap().to_string();
    let cap = sessiond::feed::MAX_STREAMS_PER_CREDENTIAL;
    let parked: Vec<_> = (0..cap)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url(&format!("{FEED}?after={head}&wait=30")));
            let reader = reader.clone();
            tokio::spawn(async move { client.get(url).bearer_auth(reader).send().await.unwrap() })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.state.feed.open_streams() < cap || app.state.feed.waiting() < cap {
        assert!(Instant::now() < deadline, "the long polls never all parked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for query in [format!("?after={head}&wait=30"), String::new()] {
        let r = app.get_auth(&format!("{FEED}{query}"), &reader).await;
        assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"), "{query}");
        assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    }
    let r = app.get_auth("/v1/revocations/stream", &reader).await;
    assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    // A plain poll (`wait` 0) holds nothing and is answered; so is another credential.
    assert!(entries(&feed(&app, &reader, &format!("?after={head}")).await).is_empty());
    let other = feed_reader(&app).await;
    assert_eq!(feed(&app, &other, "").await["next"], head.as_str());

    let reads = app.state.store.failpoint_passes(failpoint::FEED_READ);
    let t = app.new_session().await;
    assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    for poll in parked {
        let r = poll.await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.unwrap();
        assert_eq!(entries(&page).len(), 1, "{page}");
        assert_eq!(entries(&page)[0]["session_id"], t.session_id.as_str());
    }
    let read = app.state.store.failpoint_passes(failpoint::FEED_READ) - reads;
    assert!(read <= 2, "{cap} waiters woken by one commit read the log {read} times");
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.state.feed.open_streams() > 0 {
        assert!(Instant::now() < deadline, "the places were not freed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let page = feed(&app, &reader, &format!("?after={head}&wait=1")).await;
    assert_eq!(entries(&page).len(), 1, "admitted again");
}

/// A snapshot of several pages (it is sent page by page, G-5) is exactly the entries in force,
/// in order, then the head.
#[tokio::test]
async fn a_snapshot_of_many_pages_is_every_entry_in_force_in_order() {
    let Some(app) = spawn_app().await else { return };
    let reader = feed_reader(&app).await;
    let now = app.clock.now_ms();
    let until = sql_time(now + 3_600_000);
    let gone = sql_time(now - 3_600_000);
    let mut rows = Vec::new();
    for i in 0..2_500 {
        // Every tenth entry is past its `until`: not in the snapshot.
        let exp = if i % 10 == 3 { &gone } else { &until };
        rows.push(format!("('s-{i}', 'u-{i}', 'logout', {}, {exp})", sql_time(now)));
    }
    let sql = format!(
        "INSERT INTO revocations (session_id, user_id, reason, at, access_expires_at) VALUES {}",
        rows.join(", ")
    );
    app.raw_db().await.execute(&sql).await.unwrap();
    let page = feed(&app, &reader, "").await;
    let got: Vec<&str> = entries(&page).iter().map(|e| e["session_id"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..2_500).filter(|i| i % 10 != 3).map(|i| format!("s-{i}")).collect();
    assert_eq!(got, want);
    let cursors: Vec<i64> = entries(&page).iter().map(|e| cursor(&e["cursor"])).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "in cursor order");
    let head = log_rows(&app).await.last().unwrap().0;
    assert_eq!(cursor(&page["next"]), head);
}

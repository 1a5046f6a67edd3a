//! G-2 and G-6 as measurements: what a receiver (or its outage) stores must not slow every
//! user's refreshes. Each test alternates rounds without and with the stored load on one server
//! and compares the median refresh throughput (alternating cancels most of a shared machine's
//! drift). The numbers are printed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sessiond::service_credentials::{self, Scope, ServiceName};
use sessiond::store::{NewRefresh, NewSession};
use sessiond::tokens::refresh::RefreshToken;

use crate::helpers::*;
use crate::ssf_receiver::Receiver;

/// One load test at a time in this binary.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Concurrent refresh chains.
const CHAINS: usize = 8;
/// How long each round measures.
const ROUND: Duration = Duration::from_millis(1000);
/// Pairs of rounds (one without, one with the load; the order alternates, so a drift of the
/// machine's speed cancels), after one warm-up round.
const PAIRS: usize = 6;

async fn app() -> Option<TestApp> {
    spawn_app_with(|c| {
        c.ssf_allow_insecure_push = true;
    })
    .await
}

/// A session of a new user of its own, minted through the store (no password hashing):
/// `(access, refresh)`.
async fn mint(app: &TestApp) -> (String, String) {
    let store = &app.state.store;
    let now = app.clock.now_ms();
    let user = uuid::Uuid::now_v7().to_string();
    let email = format!("load-{}@example.com", uuid::Uuid::new_v4().simple());
    store.create_user(&user, &email, "$argon2id$unused", false, now).await.unwrap();
    let token = RefreshToken::generate();
    let hour = 3_600_000;
    let (_, s) = store
        .create_session(NewSession {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: user.clone(),
            device_name: None,
            user_agent: None,
            ip: None,
            now,
            idle_ttl: hour,
            max_age: hour,
            access_ttl: 900_000,
            refresh: NewRefresh { id: uuid::Uuid::now_v7().to_string(), hash: token.digest() },
            credential_version: 0,
        })
        .await
        .unwrap()
        .unwrap();
    let (access, _) = app.state.keys.issue(&user, &s.id, vec![], now, s.access_expires_at).unwrap();
    (access, token.as_str().to_string())
}

/// A credential with scope `ssf` and its push stream to `endpoint`: the stream id.
async fn stream_to(app: &TestApp, endpoint: &str) -> String {
    let name: ServiceName = format!("rx-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]).parse().unwrap();
    let sk =
        service_credentials::create(&app.state.store, app.clock.now_ms(), &name, &[Scope::Ssf], &Default::default())
            .await
            .unwrap()
            .unwrap();
    let body = json!({
        "delivery": { "method": "urn:ietf:rfc:8935", "endpoint_url": endpoint },
        "events_requested": ["https://schemas.openid.net/secevent/caep/event-type/session-revoked"],
    });
    let r = app.client.post(app.url("/ssf/stream")).bearer_auth(sk.as_str()).json(&body).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["stream_id"].as_str().unwrap().to_string()
}

/// Refreshes per second over [`ROUND`]: [`CHAINS`] chains, each refreshing its own session as
/// fast as it is answered (every answer must be 200).
async fn refresh_rate(app: &TestApp, chains: &mut [String]) -> f64 {
    let deadline = Instant::now() + ROUND;
    let started = Instant::now();
    let counts = futures::future::join_all(chains.iter_mut().map(|token| async move {
        let mut n = 0u64;
        while Instant::now() < deadline {
            let r = app.refresh(token).await;
            assert_eq!(r.status(), reqwest::StatusCode::OK, "a refresh under load failed");
            let v: Value = r.json().await.unwrap();
            *token = v["refresh_token"].as_str().unwrap().to_string();
            n += 1;
        }
        n
    }))
    .await;
    counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Whether round `i` (0 = the warm-up) runs with the load: pairs `(without, with)` and
/// `(with, without)` alternate.
fn loaded(i: usize) -> bool {
    i > 0 && ((i - 1) % 4 == 1 || (i - 1) % 4 == 2)
}

/// The median over the pairs of (rate with the load ÷ rate without), and the two medians.
fn paired(rates: &[(bool, f64)]) -> (f64, f64, f64) {
    let measured = &rates[1..];
    let ratios: Vec<f64> = measured
        .chunks(2)
        .map(|p| {
            let with = p.iter().find(|r| r.0).unwrap().1;
            let without = p.iter().find(|r| !r.0).unwrap().1;
            with / without
        })
        .collect();
    let of = |load: bool| median(measured.iter().filter(|r| r.0 == load).map(|r| r.1).collect());
    (median(ratios), of(false), of(true))
}

/// Refreshes for a moment without counting them, after a switch wrote many rows: the write's
/// own aftermath (SQLite's WAL checkpoint, PostgreSQL's hint bits and autovacuum) is not what a
/// round measures.
async fn settle(app: &TestApp, chains: &mut [String]) {
    let until = Instant::now() + Duration::from_millis(400);
    for token in chains.iter_mut() {
        while Instant::now() < until {
            let v: Value = app.refresh(token).await.json().await.unwrap();
            *token = v["refresh_token"].as_str().unwrap().to_string();
        }
    }
}

/// The refresh chains a test measures with.
async fn chains(app: &TestApp) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..CHAINS {
        out.push(mint(app).await.1);
    }
    out
}

async fn execute(app: &TestApp, sql: &str) {
    app.raw_db().await.execute(sql).await.unwrap();
}

/// G-2. With the bound's worth of subject rules stored on a stream, refresh throughput during a
/// steady stream of logouts (each a signal matched against the rules, signed and pushed) stays
/// within 10 % of none. (Before the fix every expansion loaded and parsed every rule of every
/// stream inside the one write transaction: 60,000 rules cut refreshes to 25/s.)
#[tokio::test]
async fn g2_a_full_rule_set_does_not_slow_refreshes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(app) = app().await else { return };
    let rx = Receiver::start().await;
    let stream = stream_to(&app, &rx.url()).await;
    let max = sessiond::store::ssf::MAX_SUBJECT_RULES as usize;
    let rows: Vec<String> = (0..max)
        .map(|n| {
            let subject = json!({ "format": "iss_sub", "iss": app.state.config.issuer, "sub": format!("u_rule_{n}") });
            let normalized = sessiond::ssf::events::normalize_subject(&subject).unwrap();
            let (u, s) = sessiond::ssf::events::rule_keys(&normalized);
            let q = |t: &str| t.replace('\'', "''");
            format!("('{stream}', '{}', '{}', '{}')", q(&normalized.to_string()), q(&u), q(&s))
        })
        .collect();
    let insert =
        format!("INSERT INTO ssf_subject_rules (stream_id, subject, user_key, session_key) VALUES {}", rows.join(", "));
    let delete = format!("DELETE FROM ssf_subject_rules WHERE stream_id = '{stream}'");
    let mut chains = chains(&app).await;
    let mut logouts = Vec::new();
    for _ in 0..(2 * PAIRS + 1) * 45 {
        logouts.push(mint(&app).await.0);
    }
    let logouts = std::sync::Mutex::new(logouts);
    let mut rates = Vec::new();
    let mut stored = false;
    for round in 0..=2 * PAIRS {
        let with_rules = loaded(round);
        if with_rules != stored {
            execute(&app, if with_rules { &insert } else { &delete }).await;
            stored = with_rules;
            settle(&app, &mut chains).await;
        }
        // Logouts at ~40/s beside the refreshes: each is expanded against the rules.
        let stop = Instant::now() + ROUND;
        let revoker = async {
            while Instant::now() < stop {
                let access = logouts.lock().unwrap().pop().expect("enough sessions to log out");
                let r = app.post_auth("/v1/auth/logout", &access, None).await;
                assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        };
        let (rate, ()) = tokio::join!(refresh_rate(&app, &mut chains), revoker);
        rates.push((with_rules, rate));
    }
    let (ratio, none, full) = paired(&rates);
    eprintln!(
        "g2: refreshes/s with no rules {none:.0}, with {max} rules {full:.0} (median paired ratio {ratio:.2}): {:?}",
        rates.iter().map(|r| (r.0, r.1.round())).collect::<Vec<_>>()
    );
    assert!(rx.count() > 100, "the logouts were pushed ({} SETs)", rx.count());
    assert!(ratio >= 0.9, "{max} stored rules cut refreshes from {none:.0}/s to {full:.0}/s (ratio {ratio:.2})");
}

/// The SQL that stores `n` pending SETs on stream `id`, each about a user of its own (so each
/// is its subject's head): what a logout-everyone over `n` sessions leaves behind a receiver
/// that is down.
fn backlog_sql(id: &str, n: usize, now: i64) -> String {
    let t = sql_time(now);
    let (series, num) = match crate::BACKEND {
        Backend::Sqlite => {
            (format!("WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n}) "), "g.i")
        }
        Backend::Postgres => (String::new(), "g.i"),
    };
    let from = match crate::BACKEND {
        Backend::Sqlite => "FROM g".to_string(),
        Backend::Postgres => format!("FROM generate_series(1, {n}) AS g(i)"),
    };
    let concat = |prefix: &str| match crate::BACKEND {
        Backend::Sqlite => format!("'{prefix}' || {num}"),
        Backend::Postgres => format!("'{prefix}' || {num}::text"),
    };
    format!(
        "{series}INSERT INTO ssf_deliveries (stream_id, jti, signal_id, kind, subject_key, kid, set_jws, state, attempts, \
           next_attempt_at, created_at, updated_at) \
         SELECT '{id}', {jti}, {num}, 'session-revoked', {subject}, 'kid-backlog', 'backlog.set.jws', 'pending', 0, {t}, {t}, {t} {from};
         INSERT INTO ssf_heads (stream_id, subject_key, delivery_id, signal_id, user_id, next_attempt_at) \
         SELECT stream_id, subject_key, id, signal_id, substr(subject_key, 6), next_attempt_at FROM ssf_deliveries \
         WHERE stream_id = '{id}' AND state = 'pending';",
        jti = concat(&format!("backlog-{id}-")),
        subject = concat("user:u_backlog_"),
    )
}

/// G-6. A backlog of 100,000 pending SETs behind a receiver that refuses connections leaves
/// refresh throughput within 20 % of an empty one, and `/ssf/jwks.json` does not scan it.
/// (Before the fix every push claim ranked every pending SET inside the write transaction, back
/// to back against the dead receiver: refreshes fell from ~1,200/s to 45–48/s, and the JWKS took
/// 11.6 ms instead of 1.)
#[tokio::test]
async fn g6_a_backlog_behind_a_dead_receiver_does_not_slow_refreshes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(app) = app().await else { return };
    // A port nothing listens on: every push is refused at once.
    let dead = Receiver::url_for(Receiver::reserve_port());
    let stream = stream_to(&app, &dead).await;
    let n = 100_000;
    let insert = backlog_sql(&stream, n, app.clock.now_ms());
    let delete = format!(
        "DELETE FROM ssf_heads WHERE stream_id = '{stream}'; DELETE FROM ssf_deliveries WHERE stream_id = '{stream}';"
    );
    let mut chains = chains(&app).await;
    let jwks = |app: &TestApp| {
        let url = app.url("/ssf/jwks.json");
        let client = app.client.clone();
        async move {
            let mut times = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                assert!(client.get(&url).send().await.unwrap().status().is_success());
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            median(times)
        }
    };
    let (mut rates, mut jwks_empty, mut jwks_backlog) = (Vec::new(), Vec::new(), Vec::new());
    let mut stored = false;
    // Fewer pairs: each switch writes or deletes 100,000 rows.
    for round in 0..=4 {
        let with_backlog = loaded(round);
        if with_backlog != stored {
            execute(&app, if with_backlog { &insert } else { &delete }).await;
            stored = with_backlog;
            settle(&app, &mut chains).await;
        }
        let rate = refresh_rate(&app, &mut chains).await;
        let j = jwks(&app).await;
        rates.push((with_backlog, rate));
        if with_backlog {
            jwks_backlog.push(j)
        } else {
            jwks_empty.push(j)
        }
    }
    let (ratio, empty, backlog) = paired(&rates);
    let (je, jb) = (median(jwks_empty), median(jwks_backlog));
    eprintln!(
        "g6: refreshes/s empty {empty:.0}, with {n} pending SETs {backlog:.0} (median paired ratio {ratio:.2}); \
         jwks median {je:.2} ms vs {jb:.2} ms: {:?}",
        rates.iter().map(|r| (r.0, r.1.round())).collect::<Vec<_>>()
    );
    assert!(ratio >= 0.8, "a {n}-SET backlog cut refreshes from {empty:.0}/s to {backlog:.0}/s (ratio {ratio:.2})");
    assert!(jb <= 3.0 * je + 2.0, "the JWKS took {jb:.2} ms with the backlog, {je:.2} ms without");
}

/// This process's resident memory, in bytes (`VmRSS` of /proc/self/status).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// G-5. Twelve followers taking a 100,000-entry snapshot at once (what every follower does after
/// a large logout-everyone) are sent it page by page: the server holds about a page per
/// snapshot, not the whole set, and each snapshot holds a follower's place while it is sent.
/// (Before: each was read and serialised whole: +317 MiB for twelve of 200,000 entries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_concurrent_large_snapshots_are_streamed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(app) = app().await else { return };
    let name: ServiceName = "feed-load".parse().unwrap();
    let reader = service_credentials::create(
        &app.state.store,
        app.clock.now_ms(),
        &name,
        &[Scope::RevocationsRead],
        &Default::default(),
    )
    .await
    .unwrap()
    .unwrap()
    .as_str()
    .to_string();
    let n = 100_000;
    let now = app.clock.now_ms();
    let (series, from, text) = match crate::BACKEND {
        Backend::Sqlite => (
            format!("WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n}) "),
            "FROM g".to_string(),
            "g.i",
        ),
        Backend::Postgres => (String::new(), format!("FROM generate_series(1, {n}) AS g(i)"), "g.i::text"),
    };
    let sql = format!(
        "{series}INSERT INTO revocations (session_id, user_id, reason, at, access_expires_at) \
         SELECT '0190f0c0-0000-7000-8000-' || {text}, '0190f0c0-0000-7000-9000-' || {text}, 'logout_all', {at}, {until} {from}",
        at = sql_time(now),
        until = sql_time(now + 3_600_000),
    );
    execute(&app, &sql).await;
    let before = rss();
    let peak = std::sync::atomic::AtomicU64::new(before);
    let done = std::sync::atomic::AtomicBool::new(false);
    let max_open = std::sync::atomic::AtomicUsize::new(0);
    let sampler = async {
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
            max_open.fetch_max(app.state.feed.open_streams(), std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let readers = async {
        let sizes = futures::future::join_all((0..12).map(|_| async {
            use futures::StreamExt;
            let r = app.get_auth("/v1/revocations", &reader).await;
            assert_eq!(r.status(), reqwest::StatusCode::OK);
            let mut body = r.bytes_stream();
            let (mut bytes, mut tail) = (0usize, Vec::new());
            while let Some(chunk) = body.next().await {
                let chunk = chunk.expect("the snapshot is sent whole");
                bytes += chunk.len();
                tail.extend_from_slice(&chunk);
                let keep = tail.len().saturating_sub(64);
                tail.drain(..keep);
            }
            (bytes, String::from_utf8_lossy(&tail).into_owned())
        }))
        .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        sizes
    };
    let (sizes, ()) = tokio::join!(readers, sampler);
    let head = app.state.store.revocation_head().await.unwrap();
    let epoch = app.state.store.feed_epoch().await.unwrap();
    for (bytes, tail) in &sizes {
        assert!(*bytes > n * 150, "{bytes} bytes for {n} entries");
        assert!(tail.ends_with(&format!("],\"next\":\"{epoch}.{head}\"}}")), "the snapshot ends with the head: {tail}");
    }
    let grew = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(before);
    eprintln!(
        "g5: 12 concurrent snapshots of {n} entries ({} MiB each): resident memory grew {} MiB at most; {} places held at once",
        sizes[0].0 >> 20,
        grew >> 20,
        max_open.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(grew < 64 << 20, "resident memory grew {} MiB", grew >> 20);
    assert!(max_open.load(std::sync::atomic::Ordering::Relaxed) >= 2, "a snapshot holds a place while it is sent");
}

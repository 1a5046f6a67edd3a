//! The scenarios of the benchmark issue that run the server as a separate process: `idle`,
//! `everyone`, `revoke`, `churn`, `refresh`, `verify`, `login`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

use crate::common::*;
use crate::Args;

/// Sockets per worker process (each process may hold ~20k files).
pub const PER_WORKER: usize = 9_500;

/// A database for one run: a temp SQLite file, or a fresh PostgreSQL database.
pub struct Db {
    pub url: String,
    pg: Option<(String, String)>,
}

impl Db {
    pub async fn new(args: &Args, dir: &TempDir, postgres: bool) -> Db {
        if !postgres {
            return Db { url: format!("sqlite://{}/bench.db", dir.0.display()), pg: None };
        }
        let name = format!("sessiond_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&args.database_url).await.expect("PostgreSQL (--database-url)");
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        let url = format!("{}/{name}", args.database_url.rsplit_once('/').unwrap().0);
        Db { url, pg: Some((args.database_url.clone(), name)) }
    }

    pub async fn drop_db(self) {
        if let Some((admin, name)) = self.pg {
            if let Ok(mut c) = PgConnection::connect(&admin).await {
                let _ = c.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
            }
        }
    }
}

/// `idle`: server RSS per idle authenticated socket at growing counts.
pub async fn idle(args: &Args) -> Vec<String> {
    let dir = TempDir::new();
    let db = Db::new(args, &dir, false).await;
    let server = Server::start(&db.url, free_port(), &[]).await;
    let minter = Minter::new(&db.url, &server.base()).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..50 {
        let _ = client.get(format!("{}/healthz", server.base())).send().await;
    }
    let base = server.rss_kib();
    let mut out = vec![
        format!("server RSS before sockets: {:.1} MiB", base as f64 / 1024.0),
        String::new(),
        "| sockets | server RSS (MiB) | RSS delta per socket since start (KiB) | marginal per socket since previous row (KiB) |".into(),
        "|---|---|---|---|".into(),
    ];
    let mut workers = Vec::new();
    let mut held = 0;
    let mut prev = base;
    for &n in &args.sizes() {
        let tokens: Vec<String> = minter.mint(n - held).await.into_iter().map(|m| m.access).collect();
        workers.extend(spawn_workers(&server.ws(), &tokens, PER_WORKER, &dir, false));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let added = n - held;
        let rss = server.rss_kib();
        let since_start = (rss as f64 - base as f64) / n as f64;
        let marginal = (rss as f64 - prev as f64) / added as f64;
        prev = rss;
        held = n;
        out.push(format!("| {n} | {:.1} | {since_start:.2} | {marginal:.2} |", rss as f64 / 1024.0));
        eprintln!("{}", out.last().unwrap());
    }
    drop(workers);
    drop(server);
    db.drop_db().await;
    out
}

/// `everyone`: an admin logs out every user; time from the call to each socket's frame.
pub async fn everyone(args: &Args) -> Vec<String> {
    let mut out = vec![
        "| sockets | response (ms) | first frame | p50 | p99 | last frame (ms after the call) | last frame written, server (ms) | server CPU per recipient (µs): to the response, total (user + system) |".into(),
        "|---|---|---|---|---|---|---|---|".into(),
    ];
    for &n in &args.sizes() {
        let dir = TempDir::new();
        let db = Db::new(args, &dir, false).await;
        let server = Server::start(&db.url, free_port(), &[]).await;
        let minter = Minter::new(&db.url, &server.base()).await;
        let tokens: Vec<String> = minter.mint_users(n).await.into_iter().map(|m| m.access).collect();
        let mut workers = spawn_workers(&server.ws(), &tokens, PER_WORKER, &dir, false);
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let perf = Perf::start(server.child.id(), &format!("everyone-{n}")).await;
        let cpu0 = cpu_us(server.child.id());
        let split0 = cpu_split_us(server.child.id());
        let t0_unix = unix_secs();
        let t0 = mono_ns();
        let r = minter.logout_everyone(&client, &server.base()).send().await.unwrap();
        let t_resp = mono_ns();
        let cpu_resp = cpu_us(server.child.id()) - cpu0;
        assert_eq!(r.status().as_u16(), 200);
        let mut arrivals: Vec<u64> =
            await_logouts(&mut workers, n, Duration::from_secs(60)).await.into_iter().map(|(_, t)| t).collect();
        let cpu = cpu_us(server.child.id()) - cpu0;
        let split = cpu_split_us(server.child.id());
        drop(perf);
        let (user, system) = (split.0 - split0.0, split.1 - split0.1);
        let written = server.last_logout_written().await.map_or(f64::NAN, |t| (t - t0_unix) * 1e3);
        arrivals.sort_unstable();
        let rel = |t: u64| t.saturating_sub(t0) as f64 / 1e6;
        let pct = |p: f64| rel(arrivals[((arrivals.len() as f64 * p) as usize).min(arrivals.len() - 1)]);
        out.push(format!(
            "| {n} ({} got it) | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {written:.1} | {:.1}, {:.1} ({:.1} + {:.1}) |",
            arrivals.len(),
            rel(t_resp),
            rel(arrivals[0]),
            pct(0.5),
            pct(0.99),
            rel(*arrivals.last().unwrap()),
            cpu_resp as f64 / n as f64,
            cpu as f64 / n as f64,
            user as f64 / n as f64,
            system as f64 / n as f64
        ));
        eprintln!("{}", out.last().unwrap());
        drop(workers);
        drop(server);
        db.drop_db().await;
    }
    out
}

/// One request of an open-loop schedule, in monotonic ns.
#[derive(Clone, Copy)]
pub struct Timed {
    /// When the schedule said to send it.
    pub scheduled: u64,
    pub sent: u64,
    /// When its response arrived.
    pub done: u64,
}

/// Sends `n` requests on an open-loop schedule of `rate`/s: send times fixed in advance (the
/// first 200 ms from now), so a slow response delays no later request (no coordinated
/// omission). `request(client, i)` builds the i-th; each must succeed.
pub async fn open_loop(
    n: usize,
    rate: f64,
    request: impl Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder,
) -> Vec<Timed> {
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(256).build().unwrap();
    let lead = Duration::from_millis(200);
    let (start, start_ns) = (tokio::time::Instant::now() + lead, mono_ns() + lead.as_nanos() as u64);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = Vec::new();
    for i in 0..n {
        let (req, due) = (request(&client, i), period * i as u32);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + due).await;
            let sent = mono_ns();
            let r = req.send().await.unwrap();
            assert!(r.status().is_success(), "open-loop request {i}: {}", r.status());
            Timed { scheduled: start_ns + due.as_nanos() as u64, sent, done: mono_ns() }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Logs out `sessions` (`POST /v1/auth/logout`, 204) through `base` on an open-loop schedule
/// of `rate`/s; returns for each session (request start, response) monotonic ns.
pub async fn open_loop_logouts(base: &str, sessions: &[Minted], rate: f64) -> Vec<(u64, u64)> {
    let url = format!("{base}/v1/auth/logout");
    let times = open_loop(sessions.len(), rate, |c, i| c.post(&url).bearer_auth(&sessions[i].access)).await;
    times.iter().map(|t| (t.sent, t.done)).collect()
}

/// Latency rows from (send, response) times and the worker's (index, arrival) events.
pub fn latency_rows(times: &[(u64, u64)], arrivals: &[(usize, u64)]) -> Vec<String> {
    let (mut from_resp, mut from_req) = (hist(), hist());
    for &(i, at) in arrivals {
        let (sent, resp) = times[i];
        from_req.record(at.saturating_sub(sent) / 1000).unwrap();
        from_resp.record(at.saturating_sub(resp) / 1000).unwrap();
    }
    vec![
        LATENCY_HEADER.into(),
        row("logout response → logout frame", &from_resp),
        row("logout request → logout frame", &from_req),
        format!("(events received: {} of {})", arrivals.len(), times.len()),
    ]
}

/// `revoke`: one session's logout while `idle` other sockets are held, open-loop `rate`/s.
pub async fn revoke(args: &Args, flood_logins: bool) -> Vec<String> {
    let dir = TempDir::new();
    let db = Db::new(args, &dir, false).await;
    let server = Server::start(&db.url, free_port(), &[]).await;
    let minter = Minter::new(&db.url, &server.base()).await;
    let idle_tokens: Vec<String> = minter.mint(args.idle).await.into_iter().map(|m| m.access).collect();
    let _idle = spawn_workers(&server.ws(), &idle_tokens, PER_WORKER, &dir, false);
    let measured = minter.mint(args.revokes()).await;
    let tokens: Vec<String> = measured.iter().map(|m| m.access.clone()).collect();
    let mut worker = Worker::spawn(&server.ws(), &tokens, &dir, false);
    assert_eq!(worker.wait_ready().1, 0);
    let flood = flood_logins.then(|| {
        tokio::spawn(login_flood(server.base(), Duration::from_secs_f64(args.revokes() as f64 / args.rate() + 1.0)))
    });
    let cpu0 = cpu_us(server.child.id());
    let times = open_loop_logouts(&server.base(), &measured, args.rate()).await;
    let mut arrivals = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while arrivals.len() < measured.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        arrivals = worker.report("logouts");
    }
    let cpu = cpu_us(server.child.id()) - cpu0;
    let mut out = latency_rows(&times, &arrivals);
    out.push(format!(
        "(server CPU per targeted logout, request + transaction + frame, idle sockets' pings included: {:.0} µs)",
        cpu as f64 / measured.len() as f64
    ));
    if let Some(f) = flood {
        let (logins, secs) = f.await.unwrap();
        out.push(format!("(while a login flood ran: {logins} logins in {secs:.1} s = {:.0}/s)", logins as f64 / secs));
    }
    drop(worker);
    drop(server);
    db.drop_db().await;
    out
}

/// Logs in as fast as 8 concurrent clients can for `dur`; returns (logins, seconds).
async fn login_flood(base: String, dur: Duration) -> (u64, f64) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let email = format!("flood-{}@example.com", uuid::Uuid::new_v4().simple());
    let body = serde_json::json!({"email": email, "password": "flood password 123"});
    client.post(format!("{base}/v1/auth/register")).json(&body).send().await.unwrap();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        // Each client from its own loopback address: one address may hold only 4 places in the
        // hash queue (`password::MAX_PER_ADDRESS`), and this measures the server, not that cap.
        let addr = std::net::IpAddr::from([127, 0, 1, 1 + i]);
        let client = reqwest::Client::builder().no_proxy().local_address(addr).build().unwrap();
        let (base, body, count) = (base.clone(), body.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < dur {
                let r = client.post(format!("{base}/v1/auth/login")).json(&body).send().await.unwrap();
                if r.status().as_u16() == 200 {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (count.load(std::sync::atomic::Ordering::Relaxed), start.elapsed().as_secs_f64())
}

/// `login`: argon2 logins per second.
pub async fn login(args: &Args) -> Vec<String> {
    let dir = TempDir::new();
    let db = Db::new(args, &dir, false).await;
    let server = Server::start(&db.url, free_port(), &[]).await;
    let (n, secs) = login_flood(server.base(), Duration::from_secs(args.seconds())).await;
    drop(server);
    vec![format!("| logins | {n} in {secs:.1} s | {:.0} logins/s (8 concurrent clients) |", n as f64 / secs)]
}

/// `churn`: every socket reconnects (full-jitter backoff) after a server restart.
pub async fn churn(args: &Args) -> Vec<String> {
    let mut out = vec![
        "| sockets | re-authenticated | all back after (s, from SIGTERM) | p50 | p99 |".into(),
        "|---|---|---|---|---|".into(),
    ];
    for &n in &args.sizes() {
        let dir = TempDir::new();
        let db = Db::new(args, &dir, false).await;
        let port = free_port();
        let mut server = Server::start(&db.url, port, &[]).await;
        let minter = Minter::new(&db.url, &server.base()).await;
        let tokens: Vec<String> = minter.mint(n).await.into_iter().map(|m| m.access).collect();
        let mut workers = spawn_workers(&server.ws(), &tokens, PER_WORKER, &dir, true);
        let t0 = mono_ns();
        server.stop();
        drop(server);
        let _server = Server::start(&db.url, port, &[]).await;
        let mut back: Vec<u64> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while back.len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            back = workers.iter_mut().flat_map(|w| w.report("rereadies")).map(|(_, t)| t).collect();
        }
        back.sort_unstable();
        let rel = |t: u64| t.saturating_sub(t0) as f64 / 1e9;
        let pct = |p: f64| {
            back.get(((back.len() as f64 * p) as usize).min(back.len().saturating_sub(1))).map_or(f64::NAN, |&t| rel(t))
        };
        out.push(format!(
            "| {n} | {} | {:.2} | {:.2} | {:.2} |",
            back.len(),
            back.last().map_or(f64::NAN, |&t| rel(t)),
            pct(0.5),
            pct(0.99)
        ));
        eprintln!("{}", out.last().unwrap());
        drop(workers);
        db.drop_db().await;
    }
    out
}

/// `refresh`: refreshes per second from a pool of pre-minted tokens, each used once.
pub async fn refresh(args: &Args) -> Vec<String> {
    let mut out = vec![
        "| store | refreshes | concurrency | req/s | p50 (ms) | p99 (ms) | non-200 | server CPU per refresh (µs) |"
            .into(),
        "|---|---|---|---|---|---|---|---|".into(),
    ];
    for postgres in [false, true] {
        let dir = TempDir::new();
        let db = Db::new(args, &dir, postgres).await;
        let server = Server::start(&db.url, free_port(), &[]).await;
        let minter = Minter::new(&db.url, &server.base()).await;
        let pool: Vec<String> = minter.mint(args.count).await.into_iter().map(|m| m.refresh).collect();
        let pool = Arc::new(std::sync::Mutex::new(pool));
        let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(256).build().unwrap();
        let lat = Arc::new(std::sync::Mutex::new(hist()));
        let bad = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let perf = Perf::start(server.child.id(), if postgres { "refresh-postgres" } else { "refresh-sqlite" }).await;
        let cpu0 = cpu_us(server.child.id());
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (pool, client, lat, bad, url) =
                (pool.clone(), client.clone(), lat.clone(), bad.clone(), format!("{}/v1/auth/refresh", server.base()));
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(token) = pool.lock().unwrap().pop() else { break };
                    let t = Instant::now();
                    let r = client.post(&url).json(&serde_json::json!({"refresh_token": token})).send().await;
                    let ok = r.map(|r| r.status().as_u16() == 200).unwrap_or(false);
                    lat.lock().unwrap().record(t.elapsed().as_micros() as u64).unwrap();
                    if !ok {
                        bad.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_us(server.child.id()) - cpu0;
        drop(perf);
        let h = lat.lock().unwrap().clone();
        out.push(format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} |",
            if postgres { "PostgreSQL" } else { "SQLite" },
            args.count,
            args.concurrency,
            args.count as f64 / secs,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            bad.load(std::sync::atomic::Ordering::Relaxed),
            cpu as f64 / args.count as f64
        ));
        eprintln!("{}", out.last().unwrap());
        drop(server);
        db.drop_db().await;
    }
    out
}

/// `verify`: `/v1/me` and `/healthz` requests per second, and the in-process cost of token
/// verification + denylist lookup.
pub async fn verify(args: &Args) -> Vec<String> {
    let dir = TempDir::new();
    let db = Db::new(args, &dir, false).await;
    let server = Server::start(&db.url, free_port(), &[]).await;
    let minter = Minter::new(&db.url, &server.base()).await;
    let token = minter.mint(1).await.remove(0).access;
    let mut out = vec![
        "| endpoint | requests | req/s | p50 (ms) | p99 (ms) | server CPU per request (µs) |".into(),
        "|---|---|---|---|---|---|".into(),
    ];
    for path in ["/healthz", "/v1/me"] {
        let cpu0 = cpu_us(server.child.id());
        let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(256).build().unwrap();
        let lat = Arc::new(std::sync::Mutex::new(hist()));
        let start = Instant::now();
        let dur = Duration::from_secs(args.seconds());
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (client, lat, url, token) =
                (client.clone(), lat.clone(), format!("{}{path}", server.base()), token.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < dur {
                    let t = Instant::now();
                    let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    lat.lock().unwrap().record(t.elapsed().as_micros() as u64).unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let h = lat.lock().unwrap().clone();
        let cpu = cpu_us(server.child.id()) - cpu0;
        out.push(format!(
            "| GET {path} | {total} | {:.0} | {:.2} | {:.2} | {:.1} |",
            total as f64 / secs,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            cpu as f64 / total.max(1) as f64
        ));
        eprintln!("{}", out.last().unwrap());
    }
    // In-process: the exact hot path of the auth middleware.
    let keys = sessiond::tokens::jwt::Keys::new(ISSUER, "sessiond", Duration::from_secs(1800));
    keys.reload(&minter.store, sessiond::clock::Clock::system().now_ms()).await.unwrap();
    let denylist = sessiond::denylist::Denylist::default();
    for i in 0..10_000 {
        denylist.insert(&format!("revoked-{i}"), i64::MAX / 2, "logout", 0);
    }
    let now = sessiond::clock::Clock::system().now_secs();
    out.push(String::new());
    // Uncached: the full pipeline (header policy, Ed25519, claims), as for a token seen the
    // first time; cached: the same token again (SHA-256 of the token, one map lookup).
    for (label, remember, n) in
        [("first use (full verification)", false, 5_000), ("repeat use (verified-token cache)", true, 50_000)]
    {
        let t = Instant::now();
        for _ in 0..n {
            let c = keys.verify_with(&token, now, remember).unwrap();
            assert!(!denylist.contains(&c.sid));
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        out.push(format!(
            "token verification + denylist lookup (10k entries), one core, in process, {label}: **{per:.1} µs** per request"
        ));
    }
    drop(server);
    db.drop_db().await;
    out
}

/// `refresh-store`: the rotation transaction alone, in process, sequential (no HTTP).
pub async fn refresh_store(args: &Args) -> Vec<String> {
    let mut out = vec!["| store | rotations | per rotation (µs) |".into(), "|---|---|---|".into()];
    for postgres in [false, true] {
        let dir = TempDir::new();
        let db = Db::new(args, &dir, postgres).await;
        let server = Server::start(&db.url, free_port(), &[]).await;
        let minter = Minter::new(&db.url, &server.base()).await;
        let pool = minter.mint(args.count.min(5000)).await;
        let clock = sessiond::clock::Clock::system();
        let t = Instant::now();
        for m in &pool {
            let presented = sessiond::tokens::refresh::RefreshToken::parse(&m.refresh).unwrap();
            let next = sessiond::tokens::refresh::RefreshToken::generate();
            let r = sessiond::store::Rotation {
                now: clock.now_ms(),
                presented_hash: presented.digest(),
                sealed_candidate: presented.seal(&next),
                candidate: sessiond::store::NewRefresh { id: uuid::Uuid::now_v7().to_string(), hash: next.digest() },
                grace: 10_000,
                idle_ttl: 86_400_000,
                access_ttl: 300_000,
                client: sessiond::sessions::client_binding(None, None),
            };
            assert!(matches!(
                minter.store.rotate_refresh(r).await.unwrap(),
                sessiond::store::RotateOutcome::Rotated { .. }
            ));
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / pool.len() as f64;
        out.push(format!("| {} | {} | {per:.0} |", if postgres { "PostgreSQL" } else { "SQLite" }, pool.len()));
        drop(server);
        db.drop_db().await;
    }
    out
}

//! Network faults between an instance and PostgreSQL (issue 21; docs/API.md §6, §14;
//! SECURITY.md G-4), through a real TCP proxy the test controls (`support/fault_proxy.rs`):
//! instance `a` talks to PostgreSQL directly, instance `b` through the proxy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sessiond::clock::Clock;

use crate::fault_proxy::FaultProxy;
use crate::helpers::*;

/// `url` with its host and port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let scheme_end = url.find("://").unwrap() + 3;
    let rest = &url[scheme_end..];
    let host_start = rest.find('@').map_or(0, |i| i + 1);
    let host_end = rest.find('/').unwrap_or(rest.len());
    format!("{}{}{addr}{}", &url[..scheme_end], &rest[..host_start], &rest[host_end..])
}

/// PostgreSQL's address in `url`.
fn pg_addr(url: &str) -> SocketAddr {
    let rest = &url[url.find("://").unwrap() + 3..];
    let host = &rest[rest.find('@').map_or(0, |i| i + 1)..rest.find('/').unwrap_or(rest.len())];
    let host = if host.contains(':') { host.to_string() } else { format!("{host}:5432") };
    host.replace("localhost", "127.0.0.1").parse().expect("a host:port")
}

/// Instance `a` (direct) and `b` (through a fault proxy) on one database; `b`'s `--db-timeout`
/// is `db_timeout`.
async fn two_instances(db_timeout: Duration) -> Option<(TestApp, TestApp, FaultProxy)> {
    let a = spawn_app().await?;
    let proxy = FaultProxy::start(pg_addr(&a.config.database_url)).await;
    let mut config = a.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = via(&a.config.database_url, proxy.addr());
    config.db_timeout = db_timeout;
    let b = start_on(config, a.dir.clone(), Clock::system(), a.db.clone()).await;
    Some((a, b, proxy))
}

/// G-4. A silent partition between `b` and PostgreSQL (packets dropped, nothing reset) while a
/// session is revoked on `a`: `b` stops trusting its denylist within 6 s (never a 200 for the
/// revoked session after that), no request to `b` takes longer than `--db-timeout` + 1 s,
/// `/readyz` turns 503; after the partition heals, `b` is ready again by itself, the revoked
/// session's open socket gets its logout from the resync, and the next request is 401. (Before:
/// 200 for the whole partition: `b`'s listener waited for ever and `Link::is_up` never changed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_a_silent_partition_fails_closed_and_heals() {
    let db_timeout = Duration::from_secs(2);
    let Some((a, b, proxy)) = two_instances(db_timeout).await else { return };
    let t = b.new_session().await;
    assert_eq!(b.me(&t.access).await.status(), StatusCode::OK);
    let mut socket = crate::ws::open(&b, &t.access).await;

    proxy.silence();
    let cut_at = Instant::now();
    assert_eq!(a.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    let (mut last_ok, mut longest, mut unready) = (None, Duration::ZERO, false);
    while cut_at.elapsed() < Duration::from_secs(15) {
        let asked = Instant::now();
        let r = b.me(&t.access).await;
        let took = asked.elapsed();
        longest = longest.max(took);
        match r.status() {
            StatusCode::OK => last_ok = Some(cut_at.elapsed()),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(r.headers().contains_key("retry-after"), "503 without Retry-After");
            }
            StatusCode::UNAUTHORIZED => {}
            other => panic!("{other} from the partitioned instance"),
        }
        if !unready {
            unready = b.client.get(b.url("/readyz")).send().await.unwrap().status() == StatusCode::SERVICE_UNAVAILABLE;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("g4: last 200 {last_ok:?} after the cut; longest request {longest:?}");
    assert!(last_ok.is_none_or(|t| t <= Duration::from_secs(6)), "200 for a revoked session {last_ok:?} after the cut");
    assert!(longest <= db_timeout + Duration::from_secs(1), "a request took {longest:?}");
    assert!(unready, "/readyz never turned 503 during the partition");

    proxy.heal();
    b.wait_ready().await;
    socket.expect_logout("logout", &t.session_id).await;
    assert_problem(b.me(&t.access).await, StatusCode::UNAUTHORIZED, "session_revoked").await;
    // And it works again: a new session through `b`.
    let t2 = b.new_session().await;
    assert_eq!(b.me(&t2.access).await.status(), StatusCode::OK);
}

/// 200 ms of round-trip latency between `b` and PostgreSQL (100 ms each way): everything still
/// works within its default deadlines (a login, a refresh and its grace retry, a revocation on
/// the other instance reaching `b`'s socket, and `b` stays ready: its liveness probe is heard).
/// Measured here: a refresh on fresh connections is ~18 round trips (each statement's first use
/// prepares it), ~3.6 s at this latency; at 400 ms round trips it takes ~7 s, past the default
/// `--db-timeout` of 5 s: such a link needs a larger one (docs/operations.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_to_the_database_stays_within_the_deadlines() {
    let Some((a, b, proxy)) = two_instances(Duration::from_secs(5)).await else { return };
    proxy.latency(Duration::from_millis(100));
    let started = Instant::now();
    let t = b.new_session().await;
    eprintln!("latency: new session {:?}", started.elapsed());
    let at = Instant::now();
    let r = b.refresh(&t.refresh).await;
    eprintln!("latency: refresh {:?} {}", at.elapsed(), r.status());
    let at = Instant::now();
    let r2 = b.refresh(&t.refresh).await;
    eprintln!("latency: refresh again (grace) {:?} {}", at.elapsed(), r2.status());
    assert_eq!(r2.status(), StatusCode::OK, "the grace retry");
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let mut socket = crate::ws::open(&b, &t.access).await;
    assert_eq!(a.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    socket.expect_logout("logout", &t.session_id).await;
    // Longer than the probe window: the listener stays proven alive all along.
    while started.elapsed() < Duration::from_secs(7) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(b.client.get(b.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(b.me(&b.new_session().await.access).await.status(), StatusCode::OK);
}

//! Slow clients cannot hold the server (issue 21; docs/API.md §14): headers must arrive within
//! 10 s, a request (its body included) finishes within `--request-timeout`, over raw TCP so
//! nothing in between hurries the client. HTTP only: SQLite here is enough.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

async fn dial(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap()
}

/// Reads until the server closes the connection or `limit` passes; what it sent, and when it
/// closed (`None`: still open at `limit`).
async fn read_until_closed(conn: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), Some(started.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), None),
        }
    }
}

/// Slowloris: 20 connections trickling one header line every 2 s are all dropped once their
/// headers have taken 10 s, and the server answers others meanwhile. (Before: all 20 still held
/// after 26 s; `axum::serve` set no header timer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_are_dropped_after_ten_seconds() {
    let Some(app) = spawn_app().await else { return };
    let started = Instant::now();
    let trickles: Vec<_> = (0..20)
        .map(|i| {
            let app_base = app.base.clone();
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(app_base.trim_start_matches("http://")).await.unwrap();
                conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
                let opened = Instant::now();
                let mut n = 0;
                loop {
                    let (_, closed) = read_until_closed(&mut conn, Duration::from_secs(2)).await;
                    if closed.is_some() {
                        return opened.elapsed();
                    }
                    if conn.write_all(format!("X-Trickle-{i}-{n}: 1\r\n").as_bytes()).await.is_err() {
                        return opened.elapsed();
                    }
                    n += 1;
                    assert!(opened.elapsed() < Duration::from_secs(26), "a trickling connection was held for 26 s");
                }
            })
        })
        .collect();
    // Meanwhile the server serves.
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    for t in trickles {
        let held = t.await.unwrap();
        assert!(held >= Duration::from_secs(9), "dropped too early ({held:?}): the deadline is 10 s");
        assert!(held <= Duration::from_secs(13), "held {held:?}");
    }
    eprintln!("slowloris: 20 trickling connections dropped within {:?}", started.elapsed());
}

/// A request whose body never finishes is answered 503 `unavailable` within the request
/// deadline, and the connection is closed. (Before: held for 40 s and more.)
#[tokio::test]
async fn a_stalled_body_is_answered_503_at_the_request_deadline() {
    let Some(app) = spawn_app_with(|c| c.request_timeout = Duration::from_secs(2)).await else { return };
    let mut conn = dial(&app).await;
    let head =
        "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(br#"{"email":"#).await.unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("application/problem+json") && answer.contains("\"unavailable\""), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after"), "{answer}");
    assert!(closed.is_some(), "the connection stayed open");
    assert!(took >= Duration::from_millis(1900) && took <= Duration::from_secs(4), "answered after {took:?}");
}

//! docs/API.md §9, `GET /v1/revocations/stream`: Server-Sent Events read by a raw SSE parser,
//! so comments (keep-alives) are seen too.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;
use crate::service::{credential, feed_reader};

const STREAM: &str = "/v1/revocations/stream";
const WAIT: Duration = Duration::from_secs(10);

/// One parsed SSE block: an event (with `event`, `id`, `data`) or a comment.
#[derive(Debug, Clone, PartialEq)]
enum Sse {
    Event { event: String, id: String, data: Value },
    Comment,
}

struct Stream {
    body: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buf: String,
}

impl Stream {
    async fn open(app: &TestApp, secret: &str, last_event_id: Option<&str>, query: &str) -> reqwest::Response {
        let mut req = app.client.get(app.url(&format!("{STREAM}{query}"))).bearer_auth(secret);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        req.send().await.unwrap()
    }

    async fn connect(app: &TestApp, secret: &str, last_event_id: Option<&str>, query: &str) -> Stream {
        let r = Stream::open(app, secret, last_event_id, query).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        Stream { body: r.bytes_stream().boxed(), buf: String::new() }
    }

    /// The next block, or `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data, mut comment) = (String::new(), String::new(), String::new(), false);
                for line in block.lines() {
                    if line.starts_with(':') {
                        comment = true;
                    } else if let Some((k, v)) = line.split_once(':') {
                        let v = v.strip_prefix(' ').unwrap_or(v);
                        match k {
                            "event" => event = v.into(),
                            "id" => id = v.into(),
                            "data" => data.push_str(v),
                            _ => {}
                        }
                    }
                }
                if event.is_empty() && comment {
                    return Some(Sse::Comment);
                }
                return Some(Sse::Event { event, id, data: serde_json::from_str(&data).unwrap() });
            }
            match tokio::time::timeout(WAIT, self.body.next()).await.expect("the stream went silent") {
                Some(Ok(chunk)) => self.buf.push_str(std::str::from_utf8(&chunk).unwrap()),
                _ => return None,
            }
        }
    }

    /// The next event, skipping comments.
    async fn event(&mut self) -> (String, String, Value) {
        loop {
            match self.next().await.expect("the stream ended") {
                Sse::Event { event, id, data } => return (event, id, data),
                Sse::Comment => continue,
            }
        }
    }

    /// Revocation events up to `synced`: their session ids, and the `synced` cursor.
    async fn until_synced(&mut self) -> (Vec<String>, String) {
        let mut sessions = Vec::new();
        loop {
            let (event, id, data) = self.event().await;
            match event.as_str() {
                "revocation" => {
                    assert_eq!(data["cursor"], id.as_str(), "the id is the cursor");
                    sessions.push(data["session_id"].as_str().unwrap().to_string());
                }
                "synced" => {
                    assert_eq!(data["next"], id.as_str());
                    return (sessions, id);
                }
                other => panic!("unexpected event {other}"),
            }
        }
    }
}

async fn logout(app: &TestApp) -> Tokens {
    let t = app.new_session().await;
    assert_eq!(app.post_auth("/v1/auth/logout", &t.access, None).await.status(), StatusCode::NO_CONTENT);
    t
}

#[tokio::test]
async fn a_stream_sends_the_snapshot_then_synced_then_live_entries() {
    let Some(app) = spawn_app().await else { return };
    let reader = feed_reader(&app).await;
    let (a, b) = (logout(&app).await, logout(&app).await);
    let mut s = Stream::connect(&app, &reader, None, "").await;
    let (snapshot, synced) = s.until_synced().await;
    assert_eq!(snapshot, [a.session_id.clone(), b.session_id.clone()]);

    let started = Instant::now();
    let c = logout(&app).await;
    let (event, id, data) = s.event().await;
    assert_eq!((event.as_str(), data["session_id"].as_str()), ("revocation", Some(c.session_id.as_str())));
    assert_eq!(data["reason"], "logout");
    let id_of = |c: &str| c.split_once('.').expect("EPOCH.ID").1.parse::<i64>().unwrap();
    assert!(id_of(&id) > id_of(&synced));
    assert!(started.elapsed() < Duration::from_secs(5), "live, not polled: {:?}", started.elapsed());
    for field in ["user_id", "at", "until"] {
        assert!(data[field].is_string(), "{field}: {data}");
    }
}

#[tokio::test]
async fn last_event_id_resumes_exactly_after_it_and_wins_over_after() {
    let Some(app) = spawn_app().await else { return };
    let reader = feed_reader(&app).await;
    let first = logout(&app).await;
    let mut s = Stream::connect(&app, &reader, None, "").await;
    let (_, synced) = s.until_synced().await;
    drop(s);
    let (second, third) = (logout(&app).await, logout(&app).await);
    // Resumed from `synced`: exactly what came after, then `synced` again at the new head.
    let mut s = Stream::connect(&app, &reader, Some(&synced), "?after=0").await;
    let (after, head) = s.until_synced().await;
    assert_eq!(after, [second.session_id.clone(), third.session_id.clone()], "the header wins over ?after=0");
    assert!(!after.contains(&first.session_id));
    // `?after` alone works too.
    let mut s = Stream::connect(&app, &reader, None, &format!("?after={synced}")).await;
    assert_eq!(s.until_synced().await, (after, head));
}

#[tokio::test]
async fn a_silent_stream_sends_keep_alive_comments() {
    let Some(app) = spawn_app().await else { return };
    let reader = feed_reader(&app).await;
    let mut s = Stream::connect(&app, &reader, None, "").await;
    s.until_synced().await;
    let started = Instant::now();
    assert_eq!(s.next().await, Some(Sse::Comment));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn bad_cursors_and_credentials_are_refused_before_the_stream_starts() {
    use sessiond::service_credentials::Scope;
    let Some(app) = spawn_app().await else { return };
    let reader = feed_reader(&app).await;
    logout(&app).await;
    let epoch = app.state.store.feed_epoch().await.unwrap();
    let (beyond, other_epoch) = (format!("{epoch}.99999999"), "0123456789abcdef.1".to_string());
    let (beyond_q, other_q) = (format!("?after={beyond}"), format!("?after={other_epoch}"));
    let cases = [
        (Some("x"), ""),
        (Some("99999999"), ""),
        (Some(beyond.as_str()), ""),
        (Some(other_epoch.as_str()), ""),
        (None, "?after=-1"),
        (None, "?after=99999999"),
        (None, beyond_q.as_str()),
        (None, other_q.as_str()),
    ];
    for (id, query) in cases {
        let r = Stream::open(&app, &reader, id, query).await;
        assert_problem(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let introspect_only = credential(&app, "api", &[Scope::Introspect]).await;
    assert_problem(Stream::open(&app, &introspect_only, None, "").await, StatusCode::FORBIDDEN, "forbidden").await;
    let user = app.new_session().await;
    assert_problem(Stream::open(&app, &user.access, None, "").await, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn streams_are_capped_per_credential_and_a_removed_credential_ends_its_streams() {
    let Some(app) = spawn_app().await else { return };
    let reader = feed_reader(&app).await;
    let cap = sessiond::feed::MAX_STREAMS_PER_CREDENTIAL;
    let mut open = Vec::new();
    for _ in 0..cap {
        let mut s = Stream::connect(&app, &reader, None, "").await;
        s.until_synced().await;
        open.push(s);
    }
    let r = Stream::open(&app, &reader, None, "").await;
    assert!(r.headers().contains_key("retry-after"));
    assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let other = feed_reader(&app).await;
    Stream::connect(&app, &other, None, "").await.until_synced().await;

    // Removing the credential ends every one of its streams.
    let name = name_of(&app, &reader).await;
    let removed = sessiond::service_credentials::remove(
        &app.state.store,
        app.clock.now_ms(),
        &name.parse().unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(removed);
    for mut s in open {
        while let Some(block) = s.next().await {
            assert_eq!(block, Sse::Comment, "nothing but keep-alives until it ends");
        }
    }
    assert_eq!(app.state.feed.open_streams(), 0, "every slot freed");
}

/// The name of the credential whose secret is `secret`.
async fn name_of(app: &TestApp, secret: &str) -> String {
    let s = sessiond::service_credentials::ServiceSecret::parse(secret).unwrap();
    app.state.store.service_credential_by_digest(&s.digest()).await.unwrap().unwrap().name
}

/// On PostgreSQL, a stream held by one instance receives the revocations committed on another.
#[tokio::test]
async fn a_stream_on_any_instance_receives_every_revocation() {
    let Some(a) = spawn_app().await else { return };
    let other;
    let holder = match crate::BACKEND {
        Backend::Postgres => {
            other = another_instance(&a).await;
            &other
        }
        Backend::Sqlite => &a,
    };
    let reader = feed_reader(&a).await;
    let mut s = Stream::connect(holder, &reader, None, "").await;
    s.until_synced().await;
    let mut expected = Vec::new();
    for _ in 0..5 {
        expected.push(logout(&a).await.session_id);
    }
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let (event, _, data) = s.event().await;
        assert_eq!(event, "revocation");
        got.push(data["session_id"].as_str().unwrap().to_string());
    }
    assert_eq!(got, expected, "every one, in commit order");
}

//! The extractor and the layer answer exactly as sessiond does: status, problem+json body,
//! `WWW-Authenticate`, `Retry-After`.

use axum::body::Body;
use axum::extract::Extension;
use axum::routing::get;
use axum::Router;
use tower::ServiceExt;

use super::*;
use crate::clock::Clock;
use crate::fake_issuer::{FakeIssuer, SERVICE_KEY};
use crate::testkit::{now_secs, TestKey};

/// What a request got: status, named headers, body text.
struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    retry_after: Option<String>,
    content_type: Option<String>,
    body: String,
}

async fn call(app: &Router, authorization: Option<&str>) -> Answer {
    let mut req = Request::builder().uri("/whoami");
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let h = |name| res.headers().get(name).map(|v: &HeaderValue| v.to_str().unwrap().to_string());
    let (status, www_authenticate, retry_after, content_type) =
        (res.status().as_u16(), h(header::WWW_AUTHENTICATE), h(header::RETRY_AFTER), h(header::CONTENT_TYPE));
    let body = axum::body::to_bytes(res.into_body(), 64 * 1024).await.unwrap();
    Answer { status, www_authenticate, retry_after, content_type, body: String::from_utf8(body.to_vec()).unwrap() }
}

fn assert_refused(a: &Answer, r: Rejection) {
    assert_eq!(a.status, r.status());
    assert_eq!(a.body, r.body());
    assert_eq!(a.content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(a.www_authenticate.as_deref(), r.www_authenticate());
    assert_eq!(a.retry_after.as_deref(), r.retry_after_secs().map(|s| s.to_string()).as_deref());
}

/// A started verifier against a fake issuer, synced, with `revoked` in its denylist.
async fn setup() -> (FakeIssuer, Verifier, TestKey, Clock) {
    let key = TestKey::new(1, "k1");
    let fake = FakeIssuer::start(&[&key]).await;
    fake.revoke("revoked", now_secs() + 300);
    let clock = Clock::default();
    let verifier = Verifier::builder(fake.url.clone()).service_key(SERVICE_KEY).clock(clock.clone()).build().unwrap();
    verifier.start();
    let mut changes = verifier.changes();
    let ready = tokio::time::timeout(std::time::Duration::from_secs(5), changes.wait_for(|_| verifier.is_ready()));
    ready.await.expect("ready").unwrap();
    (fake, verifier, key, clock)
}

async fn each_refusal(fake: &FakeIssuer, app: &Router, key: &TestKey, verifier: &Verifier, clock: &Clock) {
    let token = |sid: &str| {
        let mut c = key.claims_of(&fake.url, now_secs());
        c.sid = sid.into();
        key.token(&c)
    };
    let ok = call(app, Some(&format!("Bearer {}", token("s1")))).await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "u1 s1"));
    assert_refused(&call(app, None).await, Rejection::InvalidToken { presented: false });
    assert_refused(&call(app, Some("Basic dXNlcjpwYXNz")).await, Rejection::InvalidToken { presented: true });
    assert_refused(&call(app, Some("Bearer x.y.z")).await, Rejection::InvalidToken { presented: true });
    let mut old = key.claims_of(&fake.url, now_secs() - 400);
    old.sid = "s1".into();
    assert_refused(&call(app, Some(&format!("Bearer {}", key.token(&old)))).await, Rejection::TokenExpired);
    assert_refused(&call(app, Some(&format!("Bearer {}", token("revoked")))).await, Rejection::SessionRevoked);
    // The feed goes silent for longer than the bound: fail closed, whatever the token.
    fake.set_keepalive(None);
    verifier.shutdown();
    clock.advance(std::time::Duration::from_secs(11));
    assert_refused(&call(app, Some(&format!("Bearer {}", token("s1")))).await, Rejection::Unavailable);
    assert_refused(&call(app, Some("Bearer x.y.z")).await, Rejection::Unavailable);
    assert_refused(&call(app, None).await, Rejection::InvalidToken { presented: false });
}

#[tokio::test]
async fn the_extractor_answers_with_sessiond_problems() {
    let (fake, verifier, key, clock) = setup().await;
    async fn whoami(Authenticated(c): Authenticated) -> String {
        format!("{} {}", c.sub, c.sid)
    }
    let app = Router::new().route("/whoami", get(whoami)).with_state(verifier.clone());
    each_refusal(&fake, &app, &key, &verifier, &clock).await;
}

#[tokio::test]
async fn the_layer_protects_a_router_and_hands_the_claims_on() {
    let (fake, verifier, key, clock) = setup().await;
    async fn whoami(Extension(c): Extension<Claims>, Authenticated(again): Authenticated) -> String {
        assert_eq!(c, again);
        format!("{} {}", c.sub, c.sid)
    }
    let app = Router::new().route("/whoami", get(whoami)).layer(verifier.layer()).with_state(verifier.clone());
    each_refusal(&fake, &app, &key, &verifier, &clock).await;
}

#[test]
fn a_503_says_when_to_retry() {
    let res = Rejection::Unavailable.into_response();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    assert!(res.headers().get(header::WWW_AUTHENTICATE).is_none());
}

//! The whole verifier against the fake issuer: readiness, revocation at once, resuming the feed
//! from its cursor, starting over after a 400, the credential refused, and failing closed (or
//! open) past the staleness bound. Waits are on events (the feed's change notifications, the
//! fake's request log), never fixed sleeps; time past the bound moves by the test clock.

use std::future::Future;

use super::*;
use crate::fake_issuer::{FakeIssuer, NO_SCOPE_KEY, SERVICE_KEY};
use crate::testkit::{now_secs, TestKey};
use axum::http::StatusCode;

/// Fast reconnects for tests (the production delays are 250 ms to 10 s, and 30 s after 401).
fn fast() -> Timing {
    Timing {
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        auth_retry: Duration::from_millis(20),
        silence: Duration::from_secs(15),
    }
}

struct Setup {
    key: TestKey,
    fake: FakeIssuer,
    verifier: Verifier,
    clock: Clock,
}

impl Setup {
    async fn new(configure: impl FnOnce(VerifierBuilder) -> VerifierBuilder) -> Self {
        let key = TestKey::new(1, "k1");
        let fake = FakeIssuer::start(&[&key]).await;
        let clock = Clock::default();
        let builder = Verifier::builder(fake.url.clone()).service_key(SERVICE_KEY).clock(clock.clone()).timing(fast());
        let verifier = configure(builder).build().unwrap();
        Setup { key, fake, verifier, clock }
    }

    /// A genuine token of session `sid`.
    fn token(&self, sid: &str) -> String {
        let mut c = self.key.claims_of(&self.fake.url, now_secs());
        c.sid = sid.into();
        self.key.token(&c)
    }

    /// Waits (at most 5 s) until `cond` holds, re-checking on every change of the feed.
    async fn until(&self, what: &str, cond: impl Fn(&Verifier) -> bool) {
        let mut changes = self.verifier.changes();
        let wait = changes.wait_for(|_| cond(&self.verifier));
        let done = tokio::time::timeout(Duration::from_secs(5), wait).await;
        assert!(done.is_ok(), "timed out waiting until {what}: {:?}", self.verifier.status());
    }

    async fn synced(&self) {
        self.until("synced", |v| v.feed_synced_now()).await;
    }

    /// Synced and the JWKS fetched.
    async fn ready(&self) {
        self.until("ready", |v| v.feed_synced_now() && v.is_ready()).await;
    }
}

/// Waits (at most 5 s) for `fut`.
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), fut).await.expect("timed out")
}

#[tokio::test]
async fn not_ready_until_the_first_synced_then_a_revocation_refuses_the_session_at_once() {
    let s = Setup::new(|b| b).await;
    s.fake.revoke("old", now_secs() + 60);
    s.fake.revoke("gone", now_secs() - 1); // its `until` has passed: not in the snapshot
    let token = s.token("s1");
    assert!(!s.verifier.is_ready());
    assert_eq!(s.verifier.verify(&token).await, Err(Rejection::Unavailable), "not synced: fail closed");

    s.verifier.start();
    s.ready().await;
    assert_eq!(s.verifier.cursor().as_deref(), Some("2"));
    assert_eq!(s.verifier.status().revoked_sessions, 1);
    assert_eq!(s.verifier.verify(&s.token("old")).await, Err(Rejection::SessionRevoked));
    assert_eq!(s.verifier.verify(&token).await.unwrap().sid, "s1");

    // Revoked now: refused at once (no call to the issuer per request).
    let fetches = s.fake.jwks_fetches();
    let cursor = s.fake.revoke("s1", now_secs() + 330);
    s.until("the revocation arrived", |v| v.cursor() == Some(cursor.clone())).await;
    assert_eq!(s.verifier.verify(&token).await, Err(Rejection::SessionRevoked));
    assert_eq!(
        s.verifier.verify_authorization(Some(format!("Bearer {token}").as_bytes())).await,
        Err(Rejection::SessionRevoked)
    );
    assert_eq!(s.fake.jwks_fetches(), fetches);

    // Past its `until`, the entry no longer matters (the token has expired by then anyway).
    s.fake.set_keepalive(Some(Duration::from_millis(50))); // keeps the feed live on the test clock
    s.clock.advance(Duration::from_secs(331));
    s.until("live again", |v| v.is_ready()).await;
    assert_eq!(s.verifier.verify(&token).await, Err(Rejection::TokenExpired));
    assert_eq!(s.verifier.status().revocations_received, 2);
}

#[tokio::test]
async fn after_a_disconnect_the_feed_resumes_from_its_last_cursor() {
    let s = Setup::new(|b| b).await;
    s.fake.revoke("a", now_secs() + 300);
    s.verifier.start();
    s.ready().await;
    let c2 = s.fake.revoke("b", now_secs() + 300);
    s.until("b arrived", |v| v.cursor() == Some(c2.clone())).await;

    s.fake.disconnect();
    let requests = s.fake.wait_for_stream_requests(2).await;
    assert_eq!(requests, [None, Some("2".to_string())], "snapshot first, then Last-Event-ID");
    s.ready().await;
    // Missed while disconnected, delivered on resume.
    let c3 = s.fake.revoke("c", now_secs() + 300);
    s.until("c arrived", |v| v.cursor() == Some(c3.clone())).await;
    assert_eq!(s.verifier.verify(&s.token("c")).await, Err(Rejection::SessionRevoked));
    assert_eq!(s.verifier.status().feed_connects, 2);
    assert_eq!(s.verifier.status().snapshot_restarts, 0);
}

#[tokio::test]
async fn an_unknown_cursor_starts_over_from_a_snapshot() {
    let s = Setup::new(|b| b).await;
    for sid in ["a", "b", "c"] {
        s.fake.revoke(sid, now_secs() + 300);
    }
    s.verifier.start();
    s.ready().await;
    assert_eq!(s.verifier.cursor().as_deref(), Some("3"));

    // sessiond's database is restored from a backup that holds only the first entry: cursor 3
    // is beyond its newest entry, so the resume gets 400 and the follower starts over.
    s.fake.restore_backup(1);
    s.fake.disconnect();
    let requests = s.fake.wait_for_stream_requests(3).await;
    assert_eq!(requests, [None, Some("3".to_string()), None]);
    s.until("synced from the new snapshot", |v| v.cursor().as_deref() == Some("1") && v.status().feed_connected).await;
    assert_eq!(s.verifier.status().snapshot_restarts, 1);
    // What the follower already knew stays denied: a restore must not resurrect sessions.
    assert_eq!(s.verifier.verify(&s.token("c")).await, Err(Rejection::SessionRevoked));
    assert!(s.verifier.is_ready());
}

#[tokio::test]
async fn a_refused_credential_is_retried_until_it_works() {
    let s = Setup::new(|b| b.service_key(NO_SCOPE_KEY)).await;
    s.verifier.start();
    within(s.fake.wait_for_stream_requests(3)).await;
    assert!(!s.verifier.is_ready());
    assert_eq!(s.verifier.verify(&s.token("s1")).await, Err(Rejection::Unavailable));

    // The operator grants the scope (here: the fake accepts this key from now on).
    s.fake.set_accepted_key(NO_SCOPE_KEY);
    s.ready().await;
    assert!(s.verifier.is_ready());
    assert!(s.verifier.verify(&s.token("s1")).await.is_ok());
}

#[tokio::test]
async fn fail_closed_once_the_feed_is_silent_longer_than_the_bound() {
    let s = Setup::new(|b| b).await;
    s.fake.set_keepalive(None); // connected but silent: not even keep-alives
    s.verifier.start();
    s.ready().await;
    let token = s.token("s1");
    assert!(s.verifier.verify(&token).await.is_ok());

    s.clock.advance(Duration::from_secs(9));
    assert!(s.verifier.is_ready(), "9 s is within the bound");
    s.clock.advance(Duration::from_secs(2));
    assert!(!s.verifier.is_ready());
    assert_eq!(s.verifier.verify(&token).await, Err(Rejection::Unavailable));
    assert!(s.verifier.status().feed_connected, "still connected, yet down");

    // A byte on the synced stream (here a revocation) proves it live again.
    let cursor = s.fake.revoke("other", now_secs() + 300);
    s.until("the revocation arrived", |v| v.cursor() == Some(cursor.clone())).await;
    assert!(s.verifier.is_ready());
    assert!(s.verifier.verify(&token).await.is_ok());
}

#[tokio::test]
async fn staleness_counts_from_the_last_byte_when_it_precedes_the_disconnect() {
    let s = Setup::new(|b| b.staleness(Duration::from_secs(10))).await;
    s.fake.set_keepalive(None);
    s.verifier.start();
    s.ready().await;

    // Silent for 6 s, then the connection drops and cannot be re-established.
    s.clock.advance(Duration::from_secs(6));
    s.fake.force_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    s.fake.disconnect();
    s.until("disconnected", |v| !v.status().feed_connected).await;
    within(s.fake.wait_for_stream_requests(3)).await; // retrying with backoff meanwhile
    s.clock.advance(Duration::from_secs(3));
    assert!(s.verifier.is_ready(), "9 s since the last byte");
    s.clock.advance(Duration::from_millis(2100));
    assert!(!s.verifier.is_ready(), "11 s since the last byte, only 5 since the disconnect");
    assert_eq!(s.verifier.verify(&s.token("s1")).await, Err(Rejection::Unavailable));

    // sessiond is back: resumed from the cursor, served again.
    s.fake.force_status(None);
    s.ready().await;
    assert!(s.verifier.is_ready());
    assert!(s.verifier.verify(&s.token("s1")).await.is_ok());
    assert!(s.fake.stream_requests().iter().skip(1).all(|c| c.as_deref() == Some("0")));
}

#[tokio::test]
async fn fail_open_serves_with_the_denylist_as_it_is_and_stays_ready() {
    let s = Setup::new(|b| b.fail_open(true)).await;
    s.fake.revoke("revoked", now_secs() + 300);
    s.fake.set_keepalive(None);
    s.verifier.start();
    s.ready().await;
    s.fake.force_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    s.fake.disconnect();
    s.until("disconnected", |v| !v.status().feed_connected).await;
    s.clock.advance(Duration::from_secs(60));
    assert!(s.verifier.is_ready());
    assert!(s.verifier.verify(&s.token("s1")).await.is_ok());
    assert_eq!(s.verifier.verify(&s.token("revoked")).await, Err(Rejection::SessionRevoked));
}

#[tokio::test]
async fn a_rotated_in_key_verifies_after_one_rate_limited_refetch() {
    let s = Setup::new(|b| b).await;
    s.verifier.start();
    s.ready().await;
    let k2 = TestKey::new(2, "k2");
    let token = k2.token(&k2.claims_of(&s.fake.url, now_secs()));
    s.fake.set_jwks(&[&s.key, &k2], None);

    assert_eq!(s.verifier.verify(&token).await, Err(Rejection::InvalidToken { presented: true }), "within 30 s");
    assert_eq!(s.fake.jwks_fetches(), 1);
    s.fake.set_keepalive(Some(Duration::from_millis(50))); // keeps the feed live on the test clock
    s.clock.advance(Duration::from_secs(30));
    s.until("live again", |v| v.is_ready()).await;
    assert_eq!(s.verifier.verify(&token).await.unwrap().sub, "u1");
    assert_eq!(s.fake.jwks_fetches(), 2);
    // Random kids afterwards: refused, and no more fetches within 30 s.
    for i in 0..20 {
        let k = TestKey::new(3, &format!("random-{i}"));
        let t = k.token(&k.claims_of(&s.fake.url, now_secs()));
        assert_eq!(s.verifier.verify(&t).await, Err(Rejection::InvalidToken { presented: true }));
    }
    assert_eq!(s.fake.jwks_fetches(), 2);
    assert_eq!(s.verifier.status().jwks_keys, 2);
}

#[tokio::test]
async fn without_any_jwks_requests_get_503_not_401() {
    let s = Setup::new(|b| b).await;
    s.fake.break_jwks();
    s.verifier.start();
    s.synced().await;
    assert!(!s.verifier.is_ready());
    assert_eq!(s.verifier.verify(&s.token("s1")).await, Err(Rejection::Unavailable));
    assert_eq!(s.verifier.verify("not-a-token").await, Err(Rejection::InvalidToken { presented: true }));
}

#[tokio::test]
async fn tokens_for_another_issuer_or_audience_are_invalid() {
    let s = Setup::new(|b| b.audience("notes-api")).await;
    s.verifier.start();
    s.ready().await;
    assert_eq!(s.verifier.verify(&s.token("s1")).await, Err(Rejection::InvalidToken { presented: true }));
    let mut c = s.key.claims_of(&s.fake.url, now_secs());
    c.aud = "notes-api".into();
    assert!(s.verifier.verify(&s.key.token(&c)).await.is_ok());
    c.iss = format!("{}/", s.fake.url);
    assert_eq!(s.verifier.verify(&s.key.token(&c)).await, Err(Rejection::InvalidToken { presented: true }));
}

#[test]
fn the_builder_refuses_unusable_settings() {
    let ok = || Verifier::builder("https://auth.example.com").service_key("sk_abc");
    assert!(ok().build().is_ok());
    assert!(matches!(Verifier::builder("https://a.example").build(), Err(BuildError::MissingServiceKey)));
    for key in ["abc", "sk_ab c", "sk_\u{e9}", "Bearer sk_abc"] {
        assert!(matches!(ok().service_key(key).build(), Err(BuildError::InvalidServiceKey)), "{key}");
    }
    for issuer in ["auth.example.com", "ftp://auth.example.com", "https://a.example/?x=1", "https://a.example/#f", ""] {
        assert!(matches!(Verifier::builder(issuer).service_key("sk_a").build(), Err(BuildError::InvalidIssuer(_))));
    }
    assert!(matches!(ok().staleness(Duration::ZERO).build(), Err(BuildError::InvalidStaleness)));
    let debug = format!("{:?}", ok());
    assert!(!debug.contains("sk_abc"), "the credential is never printed: {debug}");
}

#[tokio::test]
async fn a_silent_stream_is_cut_and_resumed() {
    let s = Setup::new(|b| b.timing(Timing { silence: Duration::from_millis(200), ..fast() })).await;
    s.fake.revoke("a", now_secs() + 300);
    s.fake.set_keepalive(None);
    s.verifier.start();
    s.ready().await;
    // No byte for 200 ms (three missed keep-alives in production): reconnect from the cursor.
    let requests = within(s.fake.wait_for_stream_requests(2)).await;
    assert_eq!(requests, [None, Some("1".to_string())]);
}

//! The JWKS cache against the fake issuer: `Cache-Control`, the unknown-kid refetch and its rate
//! limit, and the last good keyset kept through failures. Time moves by the test clock.

use super::*;
use crate::fake_issuer::FakeIssuer;
use crate::testkit::TestKey;

async fn cache(fake: &FakeIssuer) -> (JwksCache, Clock) {
    let clock = Clock::default();
    (JwksCache::new(&fake.url, reqwest::Client::new(), clock.clone(), Changes::default()), clock)
}

/// `due_in`, rounded to whole seconds (the test clock also runs by itself).
fn due_secs(cache: &JwksCache) -> u64 {
    (cache.due_in().as_millis() as u64).div_ceil(1000)
}

#[tokio::test]
async fn cache_control_max_age_is_honoured_within_bounds() {
    let k1 = TestKey::new(1, "k1");
    let fake = FakeIssuer::start(&[&k1]).await;
    let (cache, clock) = cache(&fake).await;
    assert!(!cache.loaded());
    assert_eq!(cache.due_in(), Duration::ZERO, "due at once before the first fetch");
    fake.break_jwks();
    cache.refresh_if_due().await;
    assert_eq!(due_secs(&cache), JWKS_RETRY_BEFORE_FIRST.as_secs(), "retried quickly until one fetch succeeds");

    let cases = [
        (None, 300),
        (Some("max-age=60"), 60),
        (Some("public, max-age=120, must-revalidate"), 120),
        (Some("Max-Age=\"90\""), 90),
        (Some("max-age=86400"), 300),
        (Some("max-age=0"), 30),
        (Some("no-store"), 30),
        (Some("no-cache, max-age=200"), 30),
        (Some("private"), 300),
        (Some("max-age=soon"), 300),
    ];
    for (header, secs) in cases {
        fake.set_jwks(&[&k1], header);
        clock.advance(Duration::from_secs(301));
        let before = fake.jwks_fetches();
        cache.refresh_if_due().await;
        assert_eq!(fake.jwks_fetches(), before + 1, "{header:?}: one fetch");
        assert!(cache.loaded());
        assert_eq!(due_secs(&cache), secs, "{header:?}");
    }
    assert!(cache.loaded());

    // Not refetched before max-age has passed, refetched after.
    fake.set_jwks(&[&k1], Some("max-age=60"));
    clock.advance(Duration::from_secs(301));
    cache.refresh_if_due().await;
    let before = fake.jwks_fetches();
    clock.advance(Duration::from_secs(59));
    cache.refresh_if_due().await;
    assert_eq!(fake.jwks_fetches(), before, "still fresh after 59 s");
    clock.advance(Duration::from_secs(2));
    cache.refresh_if_due().await;
    assert_eq!(fake.jwks_fetches(), before + 1, "stale after 61 s");
}

#[test]
fn age_is_subtracted_from_max_age() {
    let mut h = HeaderMap::new();
    h.insert(CACHE_CONTROL, "max-age=100".parse().unwrap());
    h.insert(AGE, "40".parse().unwrap());
    assert_eq!(ttl_of(&h), Duration::from_secs(60));
    h.insert(AGE, "4000".parse().unwrap());
    assert_eq!(ttl_of(&h), JWKS_MIN_TTL);
}

#[tokio::test]
async fn a_rotated_in_key_is_picked_up_by_the_unknown_kid_refetch() {
    let (k1, k2) = (TestKey::new(1, "k1"), TestKey::new(2, "k2"));
    let fake = FakeIssuer::start(&[&k1]).await;
    let (cache, clock) = cache(&fake).await;
    cache.refresh_if_due().await;
    let (set, version) = cache.keyset();
    assert!(set.contains("k1") && !set.contains("k2"));

    // `keys rotate --now`: k2 signs before the periodic refresh.
    fake.set_jwks(&[&k1, &k2], None);
    assert!(!cache.refetch_for_unknown_kid(version).await, "within 30 s of the last fetch: no refetch");
    assert_eq!(fake.jwks_fetches(), 1);
    clock.advance(UNKNOWN_KID_REFETCH_INTERVAL);
    assert!(cache.refetch_for_unknown_kid(version).await);
    assert_eq!(fake.jwks_fetches(), 2);
    assert!(cache.keyset().0.contains("k2"));
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_at_most_one_fetch_per_30_seconds() {
    let k1 = TestKey::new(1, "k1");
    let fake = FakeIssuer::start(&[&k1]).await;
    let (cache, clock) = cache(&fake).await;
    cache.refresh_if_due().await;
    clock.advance(UNKNOWN_KID_REFETCH_INTERVAL);

    for round in 0..3 {
        let before = fake.jwks_fetches();
        // 100 concurrent requests, each with a kid nobody publishes, all having seen the same
        // keyset version; then 100 more that saw the newest one.
        let version = cache.keyset().1;
        let refetched = futures::future::join_all((0..100).map(|_| cache.refetch_for_unknown_kid(version))).await;
        assert!(refetched.iter().all(|&r| r), "round {round}: the one fetch changed the version for all");
        let version = cache.keyset().1;
        let refetched = futures::future::join_all((0..100).map(|_| cache.refetch_for_unknown_kid(version))).await;
        assert!(refetched.iter().all(|&r| !r), "round {round}: rate limited");
        assert_eq!(fake.jwks_fetches(), before + 1, "round {round}");
        clock.advance(Duration::from_secs(29));
        assert!(!cache.refetch_for_unknown_kid(version).await);
        clock.advance(Duration::from_secs(1));
    }
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_keyset() {
    let k1 = TestKey::new(1, "k1");
    let fake = FakeIssuer::start(&[&k1]).await;
    let (cache, clock) = cache(&fake).await;
    cache.refresh_if_due().await;
    let version = cache.keyset().1;

    fake.break_jwks();
    clock.advance(Duration::from_secs(301));
    cache.refresh_if_due().await;
    assert!(cache.keyset().0.contains("k1"));
    assert_eq!(cache.keyset().1, version);
    assert_eq!(due_secs(&cache), JWKS_RETRY_AFTER_FAILURE.as_secs(), "retried soon");
    assert_eq!(cache.counts(), (2, 1));

    // A document with no usable key is a failure too, not an empty keyset.
    fake.set_jwks(&[], None);
    clock.advance(JWKS_RETRY_AFTER_FAILURE);
    cache.refresh_if_due().await;
    assert!(cache.keyset().0.contains("k1"));
    assert_eq!(cache.counts(), (3, 2));

    // Back to normal.
    fake.set_jwks(&[&k1], Some("max-age=100"));
    clock.advance(JWKS_RETRY_AFTER_FAILURE);
    cache.refresh_if_due().await;
    assert_eq!(cache.keyset().1, version + 1);
    assert_eq!(due_secs(&cache), 100);
}

//! A bounded memo of tokens that passed [`verify`]: a token presented again (a client sends the
//! same access token with every request for minutes) skips the header parse and the Ed25519
//! check, like Envoy's `jwt_cache_config`.
//!
//! It can never accept what [`verify`] would refuse: the key is the SHA-256 of the whole token,
//! only tokens that verified are stored (nothing an attacker can forge gets in), a hit is
//! served only while its `kid` is still in the keyset, and [`check_times`] runs on every hit.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::keys::KeySet;
use crate::token::{check_times, verify, Claims, Policy, Verified, VerifyError, MAX_TOKEN_LEN};

/// Most tokens remembered (~0.5 KiB each, so ≤ ~8 MiB). Past it the least useful entries are
/// evicted ([`quick_cache`]'s CLOCK-Pro: a token seen once makes way before one seen often), so
/// a flood of distinct tokens never empties the memo of the clients that keep coming back.
pub const VERIFIED_CACHE_MAX: usize = 16_384;

/// Shared by clones. Use one cache per [`Policy`]: a hit re-checks the times, not the claims.
#[derive(Clone)]
pub struct VerifiedCache {
    entries: Arc<quick_cache::sync::Cache<[u8; 32], Arc<Verified>>>,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        Self::with_capacity(VERIFIED_CACHE_MAX)
    }
}

impl VerifiedCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache of at most `max` tokens (at least one).
    pub fn with_capacity(max: usize) -> Self {
        VerifiedCache { entries: Arc::new(quick_cache::sync::Cache::new(max.max(1))) }
    }

    /// [`verify`], served from the memo when the same token verified before.
    pub fn verify(&self, token: &str, keys: &KeySet, policy: &Policy, now_secs: i64) -> Result<Claims, VerifyError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(VerifyError::Invalid("too long"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.entries.get(&digest) {
            if keys.contains(&hit.kid) {
                check_times(&hit.claims, policy, now_secs)?;
                return Ok(hit.claims.clone());
            }
        }
        let verified = verify(token, keys, policy, now_secs)?;
        let claims = verified.claims.clone();
        self.entries.insert(digest, Arc::new(verified));
        Ok(claims)
    }

    /// Tokens remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{now_secs, TestKey, ISSUER};

    /// Ported from sessiond's `cached_verification_follows_the_keyset_and_the_clock`.
    #[test]
    fn cached_verification_follows_the_keyset_and_the_clock() {
        let key = TestKey::new(1, "k1");
        let keys = key.keyset();
        let policy = Policy::new(ISSUER, "sessiond");
        let cache = VerifiedCache::new();
        let now = now_secs();
        let token = key.token(&key.claims(now));
        assert_eq!(cache.verify(&token, &keys, &policy, now).unwrap().sid, "s1");
        assert_eq!(cache.verify(&token, &keys, &policy, now).unwrap().sid, "s1", "second time, from the cache");
        assert_eq!(cache.len(), 1);

        // Expiry is checked on cached tokens too.
        assert_eq!(cache.verify(&token, &keys, &policy, now + 300 + 31), Err(VerifyError::Expired));

        // The key leaves the keyset: the cached token is refused at once.
        assert_eq!(cache.verify(&token, &KeySet::new(), &policy, now), Err(VerifyError::Invalid("unknown kid")));

        // A tampered token is never served from the cache (the key is the whole token).
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(cache.verify(&forged, &keys, &policy, now).is_err());
        assert!(cache.verify(&token, &keys, &policy, now).is_ok());
    }

    #[test]
    fn the_cache_is_bounded() {
        let key = TestKey::new(1, "k1");
        let (keys, policy, now) = (key.keyset(), Policy::new(ISSUER, "sessiond"), now_secs());
        let cache = VerifiedCache::with_capacity(3);
        for i in 0..10 {
            let mut c = key.claims(now);
            c.jti = format!("j{i}");
            cache.verify(&key.token(&c), &keys, &policy, now).unwrap();
            assert!(cache.len() <= 3);
        }
        assert!(!cache.is_empty(), "a full cache evicts, it does not empty itself");
        // Refused tokens are never stored.
        let before = cache.len();
        assert!(cache.verify("x.y.z", &keys, &policy, now).is_err());
        assert_eq!(cache.len(), before);
    }
}

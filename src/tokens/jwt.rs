//! Access tokens: EdDSA (Ed25519) JWTs, the in-memory keyset, the JWKS, and key rotation.
//!
//! Verification is the rule of the `sessiond-verify` crate (`verify/`), the same code the app's
//! other services run offline: our own header policy first (only `alg`, `typ`, `kid`; `alg`
//! must be `EdDSA`, `typ` `at+jwt`, `kid` known), then the key and algorithm come from *our*
//! keyset entry, never from the token, then `jsonwebtoken` checks the signature, `iss`, `aud`,
//! `exp` (all required), then `iat` and `sid`. One implementation, so sessiond and every
//! resource server accept exactly the same tokens. No database, file or network lookup happens
//! here: the keyset is reloaded in the background.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sessiond_verify::{KeySet, Policy, VerifiedCache};
use sha2::{Digest, Sha256};

use crate::clock::{ms, Clock, Millis};
use crate::store::{KeyRow, Store, StoreResult};

pub use sessiond_verify::{Claims, VerifyError, LEEWAY_SECS, MAX_TOKEN_LEN};
/// `Cache-Control: max-age` of the JWKS (docs/API.md §7: ≤ 5 min).
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// A rotated-in key signs only after every JWKS cache (max-age) and every instance (reload
/// bound of 60 s, docs/API.md §1) has seen it.
pub const ACTIVATION_DELAY: Duration = Duration::from_secs(300 + 60);
/// One loaded keyset; replaced whole on reload.
struct Keyset {
    /// kid → verifying key. Every entry is Ed25519/EdDSA: the algorithm is pinned per key.
    verify: KeySet,
    /// The keys that verify SSF access tokens ([`super::ssf`]): those of `verify`, plus keys
    /// retired from it whose SSF tokens (longer-lived than access tokens) may still be live.
    ssf_verify: KeySet,
    /// The newest active key.
    signer: Option<(String, EncodingKey)>,
    /// The JWKS document, pre-rendered.
    jwks: Arc<str>,
}

/// The shared keyset handle. Clones share the keyset.
#[derive(Clone)]
pub struct Keys {
    set: Arc<RwLock<Arc<Keyset>>>,
    /// Tokens that passed the whole rule, by SHA-256: a token seen again skips the header parse
    /// and the Ed25519 check (~60 µs here); its kid must still be published and its times are
    /// checked again. Bounded, evicting (see [`VerifiedCache`]).
    verified: VerifiedCache,
    /// What a token must say (issuer, audience, leeway).
    policy: Arc<Policy>,
    issuer: Arc<str>,
    audience: Arc<str>,
    access_ttl: Duration,
}

/// A freshly generated Ed25519 key.
pub fn generate_key(now: Millis, activates_at: Millis) -> KeyRow {
    let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let x = URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes());
    // RFC 7638 thumbprint as kid: stable, and says nothing but the public key.
    let thumb_input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumb_input.as_bytes()));
    let der = sk.to_pkcs8_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
    KeyRow { kid, private_der: der, public_x: x, created_at: now, activates_at }
}

/// Creates the first signing key when the database has none (raced safely by many instances).
pub async fn ensure_initial_key(store: &Store, clock: &Clock) -> StoreResult<()> {
    if store.signing_keys().await?.is_empty() {
        let now = clock.now_ms();
        let key = generate_key(now, now);
        if store.insert_signing_key(&key, true).await? {
            let ev = crate::audit::Event::new("signing_key_created").detail(serde_json::json!({ "kid": key.kid }));
            crate::audit::record(store, now, &crate::audit::Who::system(), ev).await;
        }
    }
    Ok(())
}

/// `sessiond keys rotate [--now]`: publishes a new key; it signs after [`ACTIVATION_DELAY`], or
/// at once with `now`. Returns the new key's kid and activation time.
pub async fn rotate(store: &Store, clock: &Clock, now: bool) -> StoreResult<(String, Millis)> {
    let t = clock.now_ms();
    let activates = if now { t } else { t + ms(ACTIVATION_DELAY) };
    let key = generate_key(t, activates);
    store.insert_signing_key(&key, false).await?;
    Ok((key.kid, activates))
}

impl Keys {
    pub fn new(issuer: &str, audience: &str, access_ttl: Duration) -> Self {
        let empty = Keyset {
            verify: KeySet::new(),
            ssf_verify: KeySet::new(),
            signer: None,
            jwks: Arc::from(r#"{"keys":[]}"#),
        };
        Keys {
            set: Arc::new(RwLock::new(Arc::new(empty))),
            verified: VerifiedCache::new(),
            policy: Arc::new(Policy::new(issuer, audience)),
            issuer: issuer.into(),
            audience: audience.into(),
            access_ttl,
        }
    }

    fn current(&self) -> Arc<Keyset> {
        match self.set.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the keys from the database and swaps the in-memory keyset.
    ///
    /// A key is published (JWKS, verification) from its creation until every token it may have
    /// signed has expired: it stops signing when the next key activates, so it retires at that
    /// activation + access TTL + leeway. The signer is the newest key whose activation has come.
    /// SSF access tokens are signed with the same keys but live longer ([`super::ssf::SSF_TOKEN_TTL`]):
    /// a key verifies them until that activation + their lifetime + leeway, even when it has left
    /// the JWKS (nobody but sessiond verifies them).
    pub async fn reload(&self, store: &Store, now: Millis) -> StoreResult<()> {
        let rows = store.signing_keys().await?; // ordered by activates_at
        self.load(&rows, now);
        Ok(())
    }

    /// Swaps in the keyset made of `rows` (ordered by `activates_at`) as of `now`. What
    /// [`Keys::reload`] does after reading the rows; public for property tests and fuzzing.
    pub fn load(&self, rows: &[KeyRow], now: Millis) {
        let retire_after = ms(self.access_ttl) + LEEWAY_SECS * 1000;
        let ssf_retire_after = ms(super::ssf::SSF_TOKEN_TTL) + LEEWAY_SECS * 1000;
        let mut verify = KeySet::new();
        let mut ssf_verify = KeySet::new();
        let mut jwks = Vec::new();
        let mut signer = None;
        for (i, row) in rows.iter().enumerate() {
            let superseded_at =
                rows[i + 1..].iter().map(|r| r.activates_at).filter(|&a| a > row.activates_at && a <= now).min();
            if superseded_at.is_none_or(|s| now <= s + ssf_retire_after) {
                let _ = ssf_verify.insert_ed25519(&row.kid, &row.public_x);
            }
            if superseded_at.is_some_and(|s| now > s + retire_after) {
                continue;
            }
            if verify.insert_ed25519(&row.kid, &row.public_x).is_err() {
                continue;
            }
            jwks.push(serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": row.public_x,
                "kid": row.kid, "alg": "EdDSA", "use": "sig",
            }));
            if row.activates_at <= now {
                signer = Some((row.kid.clone(), EncodingKey::from_ed_der(&row.private_der)));
            }
        }
        let jwks: Arc<str> = serde_json::json!({ "keys": jwks }).to_string().into();
        let set = Arc::new(Keyset { verify, ssf_verify, signer, jwks });
        match self.set.write() {
            Ok(mut g) => *g = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// The JWKS document (public keys only).
    pub fn jwks(&self) -> Arc<str> {
        self.current().jwks.clone()
    }

    /// Kids currently accepted.
    pub fn kids(&self) -> Vec<String> {
        self.current().verify.kids().map(str::to_string).collect()
    }

    /// Signs an access token for a session. `exp_ms` is already capped at the session expiry.
    pub fn issue(
        &self,
        user_id: &str,
        session_id: &str,
        roles: Vec<String>,
        now: Millis,
        exp_ms: Millis,
    ) -> anyhow::Result<(String, i64)> {
        let set = self.current();
        let (kid, key) = set.signer.as_ref().ok_or_else(|| anyhow::anyhow!("no active signing key"))?;
        let iat = now.div_euclid(1000);
        let exp = exp_ms.div_euclid(1000).max(iat + 1);
        let claims = Claims {
            iss: self.issuer.to_string(),
            aud: self.audience.to_string(),
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat,
            exp,
            roles,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(kid.clone());
        Ok((jsonwebtoken::encode(&header, &claims, key)?, exp))
    }

    /// The issuer every token names (`--issuer`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs `claims` with the current key, header `{"alg":"EdDSA","typ":typ,"kid"}`: for the
    /// other kinds of token signed with these keys ([`super::ssf`]), each with its own `typ`.
    pub(crate) fn sign<T: serde::Serialize>(&self, typ: &str, claims: &T) -> anyhow::Result<String> {
        let set = self.current();
        let (kid, key) = set.signer.as_ref().ok_or_else(|| anyhow::anyhow!("no active signing key"))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.into());
        header.kid = Some(kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, key)?)
    }

    /// The key that verifies SSF access tokens signed under `kid` ([`super::ssf::verify`]).
    pub(crate) fn ssf_verifying_key(&self, kid: &str) -> Option<jsonwebtoken::DecodingKey> {
        self.current().ssf_verify.get(kid).cloned()
    }

    /// Verifies an access token against the in-memory keyset and remembers it (a request
    /// token is typically presented many times). Does not consult the denylist.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, VerifyError> {
        self.verify_with(token, now_secs, true)
    }

    /// As [`Keys::verify`], remembering the token only with `remember` (a socket presents its
    /// token once: caching it would only add ~0.5 KiB to every idle socket).
    pub fn verify_with(&self, token: &str, now_secs: i64, remember: bool) -> Result<Claims, VerifyError> {
        let set = self.current();
        if remember {
            self.verified.verify(token, &set.verify, &self.policy, now_secs)
        } else {
            sessiond_verify::verify(token, &set.verify, &self.policy, now_secs).map(|v| v.claims)
        }
    }

    /// A genuine access token of ours, expired or not: every check but `exp`
    /// ([`Policy::ignoring_expiry`]). Only for RFC 7009 revocation, where the token proves
    /// which session to end; never to accept a request.
    pub fn verify_ignoring_expiry(&self, token: &str, now_secs: i64) -> Result<Claims, VerifyError> {
        let set = self.current();
        sessiond_verify::verify(token, &set.verify, &self.policy.ignoring_expiry(), now_secs).map(|v| v.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verification cache never outlives a key, and never skips the time checks.
    #[test]
    fn cached_verification_follows_the_keyset_and_the_clock() {
        let keys = Keys::new("https://issuer.test", "aud", Duration::from_secs(300));
        let now_ms = 1_800_000_000_000;
        let row = generate_key(now_ms, now_ms);
        keys.load(std::slice::from_ref(&row), now_ms);
        let (token, exp) = keys.issue("u1", "s1", vec![], now_ms, now_ms + 300_000).unwrap();
        let now = now_ms / 1000;
        assert_eq!(keys.verify(&token, now).unwrap().sid, "s1");
        assert_eq!(keys.verify(&token, now).unwrap().sid, "s1", "second time, from the cache");
        assert_eq!(keys.verified.len(), 1);

        // Expiry is checked on cached tokens too.
        assert_eq!(keys.verify(&token, exp + LEEWAY_SECS + 1), Err(VerifyError::Expired));

        // The key leaves the keyset: the cached token is refused at once.
        keys.load(&[], now_ms);
        assert_eq!(keys.verify(&token, now), Err(VerifyError::Invalid("unknown kid")));

        // A tampered token is never served from the cache (the key is the whole token).
        keys.load(std::slice::from_ref(&row), now_ms);
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(keys.verify(&forged, now).is_err());
        assert!(keys.verify(&token, now).is_ok());
    }
}

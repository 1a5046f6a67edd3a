//! Access tokens: EdDSA (Ed25519) JWTs, the in-memory keyset, the JWKS, and key rotation.
//!
//! Verification follows RFC 8725 and the pipeline of SECURITY.md §0: our own header policy
//! first (only `alg`, `typ`, `kid`; `alg` must be `EdDSA`, `typ` `at+jwt`, `kid` known), then the
//! key and algorithm come from *our* keyset entry, never from the token, then `jsonwebtoken`
//! checks the signature, `iss`, `aud`, `exp` (all required), then we check `iat` and `sid`.
//! No database, file or network lookup happens here: the keyset is reloaded in the background.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{ms, Clock, Millis};
use crate::store::{KeyRow, Store, StoreResult};

/// Verification leeway for `exp`/`iat`, identical on every instance (≤ 30 s per the contract).
pub const LEEWAY_SECS: i64 = 30;
/// `Cache-Control: max-age` of the JWKS (docs/API.md §7: ≤ 5 min).
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// A rotated-in key signs only after every JWKS cache (max-age) and every instance (reload
/// bound of 60 s, docs/API.md §1) has seen it.
pub const ACTIVATION_DELAY: Duration = Duration::from_secs(300 + 60);
/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 4096;
/// The only header parameters we emit, and so the only ones we accept.
const ALLOWED_HEADER_PARAMS: [&str; 3] = ["alg", "typ", "kid"];

/// Access-token claims (docs/API.md §3.1). `aud` is a single string: multi-audience tokens are not
/// ours and fail to deserialize.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub sid: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    pub roles: Vec<String>,
}

/// Why a token was refused. Deliberately coarse: the reason is logged at debug, never returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    Invalid(&'static str),
    Expired,
}

/// One loaded keyset; replaced whole on reload.
struct Keyset {
    /// kid → verifying key. Every entry is Ed25519/EdDSA: the algorithm is pinned per key.
    verify: HashMap<String, DecodingKey>,
    /// The newest active key.
    signer: Option<(String, EncodingKey)>,
    /// The JWKS document, pre-rendered.
    jwks: Arc<str>,
}

/// Most verified tokens remembered (see [`Keys::verify`]); the cache is emptied when full.
const VERIFIED_CACHE_MAX: usize = 16_384;

/// A verified token's kid and claims.
type Verified = (String, Claims);

/// The shared keyset handle. Clones share the keyset.
#[derive(Clone)]
pub struct Keys {
    set: Arc<RwLock<Arc<Keyset>>>,
    /// SHA-256 of a whole token that passed the full pipeline → its kid and claims. A token
    /// seen again skips the header parse and the Ed25519 check (~60 µs here), like Envoy's
    /// `jwt_cache_config`; its kid must still be published and its times are checked again.
    /// Only tokens that verified are stored, so the cache holds nothing an attacker can forge.
    verified: Arc<dashmap::DashMap<[u8; 32], Arc<Verified>>>,
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
        let empty = Keyset { verify: HashMap::new(), signer: None, jwks: Arc::from(r#"{"keys":[]}"#) };
        Keys {
            set: Arc::new(RwLock::new(Arc::new(empty))),
            verified: Arc::default(),
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
    pub async fn reload(&self, store: &Store, now: Millis) -> StoreResult<()> {
        let rows = store.signing_keys().await?; // ordered by activates_at
        self.load(&rows, now);
        Ok(())
    }

    /// Swaps in the keyset made of `rows` (ordered by `activates_at`) as of `now`. What
    /// [`Keys::reload`] does after reading the rows; public for property tests and fuzzing.
    pub fn load(&self, rows: &[KeyRow], now: Millis) {
        let retire_after = ms(self.access_ttl) + LEEWAY_SECS * 1000;
        let mut verify = HashMap::new();
        let mut jwks = Vec::new();
        let mut signer = None;
        for (i, row) in rows.iter().enumerate() {
            let superseded_at =
                rows[i + 1..].iter().map(|r| r.activates_at).filter(|&a| a > row.activates_at && a <= now).min();
            if superseded_at.is_some_and(|s| now > s + retire_after) {
                continue;
            }
            let Ok(dk) = DecodingKey::from_ed_components(&row.public_x) else { continue };
            verify.insert(row.kid.clone(), dk);
            jwks.push(serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": row.public_x,
                "kid": row.kid, "alg": "EdDSA", "use": "sig",
            }));
            if row.activates_at <= now {
                signer = Some((row.kid.clone(), EncodingKey::from_ed_der(&row.private_der)));
            }
        }
        let jwks: Arc<str> = serde_json::json!({ "keys": jwks }).to_string().into();
        let set = Arc::new(Keyset { verify, signer, jwks });
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
        self.current().verify.keys().cloned().collect()
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

    /// Verifies an access token against the in-memory keyset and remembers it (a request
    /// token is typically presented many times). Does not consult the denylist.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, VerifyError> {
        self.verify_with(token, now_secs, true)
    }

    /// As [`Keys::verify`], remembering the token only with `remember` (a socket presents its
    /// token once: caching it would only add ~0.5 KiB to every idle socket).
    pub fn verify_with(&self, token: &str, now_secs: i64, remember: bool) -> Result<Claims, VerifyError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(VerifyError::Invalid("too long"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let hit = self.verified.get(&digest).map(|e| Arc::clone(e.value()));
        if let Some(hit) = hit {
            let (kid, claims) = &*hit;
            if self.current().verify.contains_key(kid) {
                return check_times(claims.clone(), now_secs);
            }
        }
        let (kid, claims) = self.verify_uncached(token, now_secs)?;
        if !remember {
            return Ok(claims);
        }
        if self.verified.len() >= VERIFIED_CACHE_MAX {
            self.verified.clear();
        }
        self.verified.insert(digest, Arc::new((kid, claims.clone())));
        Ok(claims)
    }

    /// The whole pipeline; returns the kid with the claims.
    fn verify_uncached(&self, token: &str, now_secs: i64) -> Result<(String, Claims), VerifyError> {
        let mut parts = token.split('.');
        let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(VerifyError::Invalid("not three segments"));
        };
        let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| VerifyError::Invalid("header encoding"))?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|_| VerifyError::Invalid("header json"))?;
        if header.keys().any(|k| !ALLOWED_HEADER_PARAMS.contains(&k.as_str())) {
            return Err(VerifyError::Invalid("header parameter not allowed"));
        }
        if header.get("alg").and_then(|v| v.as_str()) != Some("EdDSA") {
            return Err(VerifyError::Invalid("alg"));
        }
        let typ_ok = header
            .get("typ")
            .and_then(|v| v.as_str())
            .is_some_and(|t| t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt"));
        if !typ_ok {
            return Err(VerifyError::Invalid("typ"));
        }
        let Some(kid) = header.get("kid").and_then(|v| v.as_str()) else {
            return Err(VerifyError::Invalid("kid missing"));
        };
        let set = self.current();
        let Some(key) = set.verify.get(kid) else { return Err(VerifyError::Invalid("unknown kid")) };

        // The algorithm is pinned by our keyset entry (every key is Ed25519).
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&*self.issuer]);
        v.set_audience(&[&*self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = LEEWAY_SECS as u64;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => VerifyError::Expired,
            _ => VerifyError::Invalid("signature or claims"),
        })?;
        let c = data.claims;
        if c.sid.is_empty() || c.sub.is_empty() || c.jti.is_empty() {
            return Err(VerifyError::Invalid("empty sid/sub/jti"));
        }
        Ok((kid.to_string(), check_times(c, now_secs)?))
    }
}

/// Our own clock decides `exp` and `iat` (it is the one sessions and tests use), on every
/// verification, cached or not.
fn check_times(c: Claims, now_secs: i64) -> Result<Claims, VerifyError> {
    if c.exp.saturating_add(LEEWAY_SECS) < now_secs {
        return Err(VerifyError::Expired);
    }
    if c.iat > now_secs + LEEWAY_SECS {
        return Err(VerifyError::Invalid("iat in the future"));
    }
    Ok(c)
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

//! Test helpers: deterministic Ed25519 keys, and tokens signed with them, well-formed or not.
//!
//! Tokens are signed from raw header and payload text, so a test can send duplicate members,
//! `1e30` or anything else a JSON serializer would not produce.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};

use crate::keys::KeySet;
use crate::token::Claims;

/// The issuer of the core's tests.
pub const ISSUER: &str = "https://issuer.test";

/// base64url without padding (RFC 7515 §2).
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The system clock in seconds: `jsonwebtoken` checks `exp` and `nbf` against it.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An Ed25519 key from a one-byte seed, with its kid.
pub struct TestKey {
    pub kid: String,
    sk: SigningKey,
}

impl TestKey {
    pub fn new(seed: u8, kid: &str) -> Self {
        TestKey { kid: kid.to_string(), sk: SigningKey::from_bytes(&[seed; 32]) }
    }

    /// The public key as a JWK `x` (raw 32 bytes, base64url).
    pub fn x(&self) -> String {
        b64(self.sk.verifying_key().as_bytes())
    }

    /// The public JWK, as sessiond publishes it.
    pub fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": self.x(), "kid": self.kid, "alg": "EdDSA", "use": "sig"})
    }

    /// A keyset holding only this key.
    pub fn keyset(&self) -> KeySet {
        let mut set = KeySet::new();
        set.insert_ed25519(&self.kid, &self.x()).unwrap();
        set
    }

    /// What sessiond would issue for user `u1`, session `s1` at `now` (5 min lifetime).
    pub fn claims(&self, now: i64) -> Claims {
        self.claims_of(ISSUER, now)
    }

    /// As [`TestKey::claims`], for another issuer.
    pub fn claims_of(&self, issuer: &str, now: i64) -> Claims {
        Claims {
            iss: issuer.to_string(),
            aud: "sessiond".to_string(),
            sub: "u1".to_string(),
            sid: "s1".to_string(),
            jti: "j1".to_string(),
            iat: now,
            exp: now + 300,
            roles: vec![],
        }
    }

    /// The header every genuine token has.
    pub fn header(&self) -> String {
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid}).to_string()
    }

    /// A genuine token with `claims`.
    pub fn token(&self, claims: &Claims) -> String {
        self.sign(&self.header(), &serde_json::to_string(claims).unwrap())
    }

    /// `header.payload.signature` signed with this key, from raw JSON text.
    pub fn sign(&self, header_json: &str, payload_json: &str) -> String {
        let input = format!("{}.{}", b64(header_json), b64(payload_json));
        let sig = self.sk.sign(input.as_bytes());
        format!("{input}.{}", b64(sig.to_bytes()))
    }
}

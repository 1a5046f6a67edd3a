//! The verifying keys: `kid` → Ed25519 public key, built from a JWKS document (what a resource
//! server fetches) or from raw `x` components (what sessiond reads from its database).
//!
//! Every entry is Ed25519, so the algorithm is pinned by the keyset and never taken from a
//! token. Entries that are not Ed25519 signing keys are skipped, not trusted.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::DecodingKey;

/// Most keys taken from one JWKS document (sessiond publishes two or three at a time).
pub const MAX_JWKS_KEYS: usize = 64;
/// Longest `kid` accepted (sessiond's are 43-character RFC 7638 thumbprints).
pub const MAX_KID_LEN: usize = 256;

/// Why a key or a JWKS document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The document is not a JSON object with a `keys` array.
    #[error("not a JWKS document")]
    NotJwks,
    /// More than [`MAX_JWKS_KEYS`] entries.
    #[error("the JWKS has more than {MAX_JWKS_KEYS} keys")]
    TooManyKeys,
    /// `x` is not 32 bytes of unpadded base64url.
    #[error("not an Ed25519 public key")]
    BadKey,
    /// The `kid` is empty or longer than [`MAX_KID_LEN`].
    #[error("bad kid")]
    BadKid,
}

/// `kid` → verifying key. Cheap to share behind an `Arc`; replaced whole when keys change.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("kids", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

impl KeySet {
    /// An empty keyset: verifies nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the Ed25519 public key `x` (unpadded base64url, RFC 8037) under `kid`. A `kid`
    /// already present keeps its first key.
    pub fn insert_ed25519(&mut self, kid: &str, x: &str) -> Result<(), KeyError> {
        if kid.is_empty() || kid.len() > MAX_KID_LEN {
            return Err(KeyError::BadKid);
        }
        match URL_SAFE_NO_PAD.decode(x) {
            Ok(bytes) if bytes.len() == 32 => {}
            _ => return Err(KeyError::BadKey),
        }
        let key = DecodingKey::from_ed_components(x).map_err(|_| KeyError::BadKey)?;
        self.keys.entry(kid.to_string()).or_insert(key);
        Ok(())
    }

    /// The keyset of a JWKS document (`{"keys":[{"kty":"OKP","crv":"Ed25519","x",…,"kid"}]}`).
    ///
    /// Keys that are not Ed25519 signing keys (another `kty`/`crv`, an `alg` other than `EdDSA`,
    /// a `use` other than `sig`, no `kid`, a malformed `x`) are skipped; a document that is not
    /// a JWKS, or has more than [`MAX_JWKS_KEYS`] entries, is refused whole.
    pub fn from_jwks(document: &[u8]) -> Result<Self, KeyError> {
        let doc: serde_json::Value = serde_json::from_slice(document).map_err(|_| KeyError::NotJwks)?;
        let entries = doc.get("keys").and_then(|k| k.as_array()).ok_or(KeyError::NotJwks)?;
        if entries.len() > MAX_JWKS_KEYS {
            return Err(KeyError::TooManyKeys);
        }
        let mut set = KeySet::new();
        for jwk in entries {
            let field = |name: &str| jwk.get(name).and_then(|v| v.as_str());
            let is_ed25519 = field("kty") == Some("OKP") && field("crv") == Some("Ed25519");
            let alg_ok = jwk.get("alg").is_none() || field("alg") == Some("EdDSA");
            let use_ok = jwk.get("use").is_none() || field("use") == Some("sig");
            if let (true, true, true, Some(kid), Some(x)) = (is_ed25519, alg_ok, use_ok, field("kid"), field("x")) {
                // A bad entry is skipped like a foreign one; the others still verify.
                let _ = set.insert_ed25519(kid, x);
            }
        }
        Ok(set)
    }

    /// The key published under `kid`.
    pub fn get(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid)
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The published kids, in no particular order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    #[test]
    fn jwks_keeps_only_ed25519_signing_keys() {
        let doc = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": X, "kid": "good", "alg": "EdDSA", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": X, "kid": "bare"},
            {"kty": "OKP", "crv": "Ed25519", "x": X, "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": X, "kid": "hs", "alg": "HS256"},
            {"kty": "OKP", "crv": "X25519", "x": X, "kid": "x25519"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
            {"kty": "oct", "k": X, "kid": "oct"},
            {"kty": "OKP", "crv": "Ed25519", "x": X},
            {"kty": "OKP", "crv": "Ed25519", "x": "short", "kid": "short"},
            {"kty": "OKP", "crv": "Ed25519", "x": format!("{X}="), "kid": "padded"},
            {"kty": "OKP", "crv": "Ed25519", "x": X, "kid": ""},
            {"kty": "OKP", "crv": "Ed25519", "x": X, "kid": 7},
            "not an object",
        ]});
        let set = KeySet::from_jwks(doc.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = set.kids().collect();
        kids.sort();
        assert_eq!(kids, ["bare", "good"]);
    }

    #[test]
    fn documents_that_are_not_a_jwks_are_refused() {
        for doc in ["", "null", "[]", "{}", r#"{"keys":{}}"#, r#"{"keys":"x"}"#, "{\"keys\":[", "\u{feff}{}"] {
            assert_eq!(KeySet::from_jwks(doc.as_bytes()).unwrap_err(), KeyError::NotJwks, "{doc:?}");
        }
        let many: Vec<_> = (0..=MAX_JWKS_KEYS)
            .map(|i| json!({"kty": "OKP", "crv": "Ed25519", "x": X, "kid": i.to_string()}))
            .collect();
        let doc = json!({ "keys": many }).to_string();
        assert_eq!(KeySet::from_jwks(doc.as_bytes()).unwrap_err(), KeyError::TooManyKeys);
        assert_eq!(KeySet::from_jwks(br#"{"keys":[]}"#).unwrap().len(), 0);
    }

    #[test]
    fn raw_components_are_checked_and_the_first_key_of_a_kid_wins() {
        let mut set = KeySet::new();
        assert_eq!(set.insert_ed25519("k", "AAAA"), Err(KeyError::BadKey));
        assert_eq!(set.insert_ed25519("", X), Err(KeyError::BadKid));
        assert_eq!(set.insert_ed25519(&"k".repeat(MAX_KID_LEN + 1), X), Err(KeyError::BadKid));
        set.insert_ed25519("k", X).unwrap();
        set.insert_ed25519("k", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.contains("k") && !set.contains("K"));
    }
}

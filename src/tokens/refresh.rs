//! Opaque refresh tokens: generation, digest, and sealing of the successor (docs/API.md §3.2–3.3).
//!
//! A token is `rt_` + 43 base64url characters (32 random bytes, 256 bits). The database keeps
//! only `SHA-256(token)`. When a token is rotated, its successor is kept sealed with
//! XChaCha20-Poly1305 under `SHA-256("sessiond seal v1" ‖ token)`: a client that retries with the
//! previous token inside the grace window gets the same successor back, while the database
//! alone (which holds a different hash of the token) cannot open it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "rt_";
/// Length of a well-formed token: prefix + base64url of 32 bytes.
pub const TOKEN_LEN: usize = 3 + 43;

/// A refresh token in the clear. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken([redacted])")
    }
}

impl RefreshToken {
    /// A new token from the OS random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        RefreshToken(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Accepts only the exact shape we issue, so junk never reaches the database.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix(PREFIX)?;
        if s.len() != TOKEN_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
        (bytes.len() == 32).then(|| RefreshToken(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stored digest: lookups go by digest, so no secret is compared byte by byte.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    fn seal_key(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"sessiond seal v1\0");
        h.update(self.0.as_bytes());
        h.finalize().into()
    }

    /// Seals `successor` so that only a holder of `self` can open it.
    pub fn seal(&self, successor: &RefreshToken) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(&self.seal_key().into());
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encryption with a fresh random nonce cannot fail for inputs this small.
        let ct = cipher.encrypt(XNonce::from_slice(&nonce), successor.0.as_bytes()).unwrap_or_default();
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a successor sealed by [`seal`](Self::seal) with this token.
    pub fn open(&self, sealed: &[u8]) -> Option<RefreshToken> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(24);
        let cipher = XChaCha20Poly1305::new(&self.seal_key().into());
        let pt = cipher.decrypt(XNonce::from_slice(nonce), ct).ok()?;
        RefreshToken::parse(std::str::from_utf8(&pt).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_and_parse_strictly() {
        let t = RefreshToken::generate();
        assert_eq!(t.as_str().len(), TOKEN_LEN);
        assert_eq!(RefreshToken::parse(t.as_str()), Some(t.clone()));
        assert!(RefreshToken::parse("rt_short").is_none());
        assert!(RefreshToken::parse(&t.as_str().replace("rt_", "xx_")).is_none());
        assert_ne!(t, RefreshToken::generate());
    }

    #[test]
    fn successor_opens_only_with_the_previous_token() {
        let (prev, next, other) = (RefreshToken::generate(), RefreshToken::generate(), RefreshToken::generate());
        let sealed = prev.seal(&next);
        assert_eq!(prev.open(&sealed), Some(next.clone()));
        assert_eq!(other.open(&sealed), None);
        // The stored digest is not the seal key.
        assert_ne!(prev.digest(), prev.seal_key());
        assert!(!String::from_utf8_lossy(&sealed).contains(next.as_str()));
    }
}

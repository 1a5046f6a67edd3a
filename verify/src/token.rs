//! The verification rule for sessiond's access tokens (docs/API.md §3.1): one pure function,
//! [`verify`], of a token, a [`KeySet`], a [`Policy`] and the time.
//!
//! This is the single implementation of the rule, shared by sessiond and by every resource
//! server, so a token is accepted by a resource server exactly when sessiond itself would accept
//! it (revocation aside). It follows RFC 8725 and SECURITY.md §0: our own header policy first
//! (only `alg`, `typ`, `kid`; `alg` must be `EdDSA`, `typ` `at+jwt`, `kid` known), then the key
//! and algorithm come from *our* keyset entry, never from the token, then `jsonwebtoken` checks
//! the signature, `iss`, `aud`, `exp` (all required) and `nbf`, then we check `iat`, `exp` against
//! the caller's clock, and that `sub`, `sid` and `jti` are not empty.
//!
//! No I/O happens here: fetching the keys is the caller's business ([`crate::Verifier`] does it).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::KeySet;

/// Verification leeway for `exp`, `nbf` and `iat`, identical everywhere (docs/API.md §3.1: ≤ 30 s).
pub const LEEWAY_SECS: i64 = 30;
/// The largest leeway a [`Policy`] accepts (docs/API.md §3.1); larger values are clamped.
pub const MAX_LEEWAY_SECS: i64 = 30;
/// Tokens longer than this are refused before any parsing (sessiond's tokens are ~0.5 KiB).
pub const MAX_TOKEN_LEN: usize = 4096;
/// The only header parameters sessiond emits, and so the only ones accepted.
const ALLOWED_HEADER_PARAMS: [&str; 3] = ["alg", "typ", "kid"];
/// The reason of [`VerifyError::Invalid`] when the token's `kid` is not in the keyset: the one
/// refusal a JWKS refetch can cure (see [`VerifyError::is_unknown_kid`]).
pub const UNKNOWN_KID: &str = "unknown kid";

/// Access-token claims (docs/API.md §3.1). `aud` is a single string: multi-audience tokens are not
/// sessiond's and fail to deserialize.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The issuer: sessiond's `--issuer`.
    pub iss: String,
    /// The audience: sessiond's `--audience` (`sessiond` by default).
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The session id: what the revocation feed names.
    pub sid: String,
    /// The token's unique id.
    pub jti: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: i64,
    /// The user's roles when the token was issued (admins have `"admin"`).
    pub roles: Vec<String>,
}

/// A token that passed the whole rule: the key that signed it and its claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The `kid` of the signing key (a cached verification is valid only while it is published).
    pub kid: String,
    pub claims: Claims,
}

/// Why a token was refused. Deliberately coarse: the reason is for debug logs, never for the
/// caller (an attacker learns nothing from the answer but "invalid" or "expired").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a valid access token; the reason is a fixed phrase for logs.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// A genuine token whose `exp` (plus the leeway) has passed: the client should refresh.
    #[error("token expired")]
    Expired,
}

impl VerifyError {
    /// Whether the only thing wrong is that the `kid` is not (yet) in the keyset: the header
    /// passed the policy, so a JWKS refetch may help.
    pub fn is_unknown_kid(&self) -> bool {
        *self == VerifyError::Invalid(UNKNOWN_KID)
    }
}

/// What a token must say: the issuer and audience to expect, and the time leeway.
///
/// Built once; `jsonwebtoken`'s validation settings are prepared here, not per token.
#[derive(Debug, Clone)]
pub struct Policy {
    issuer: String,
    audience: String,
    leeway_secs: i64,
    validation: Validation,
    /// Expired tokens pass (see [`Policy::ignoring_expiry`]).
    ignore_exp: bool,
}

impl Policy {
    /// Tokens of `issuer` (compared exactly, as sessiond's `--issuer` spells it) for `audience`,
    /// with the standard [`LEEWAY_SECS`].
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let (issuer, audience) = (issuer.into(), audience.into());
        let validation = validation(&issuer, &audience, LEEWAY_SECS);
        Policy { issuer, audience, leeway_secs: LEEWAY_SECS, validation, ignore_exp: false }
    }

    /// The same policy, except that an expired token passes: every other check stands (header,
    /// key, signature, `iss`, `aud`, `iat`). For the one place where "a genuine token of ours,
    /// expired or not" is the question: RFC 7009 revocation (docs/API.md §10), where the token
    /// is the proof of the session to end. Never for accepting a request.
    pub fn ignoring_expiry(&self) -> Self {
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        Policy { validation, ignore_exp: true, ..self.clone() }
    }

    /// The same policy with another leeway, clamped to `0..=`[`MAX_LEEWAY_SECS`].
    pub fn with_leeway_secs(self, secs: i64) -> Self {
        let leeway_secs = secs.clamp(0, MAX_LEEWAY_SECS);
        let validation = validation(&self.issuer, &self.audience, leeway_secs);
        Policy { leeway_secs, validation, ..self }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn leeway_secs(&self) -> i64 {
        self.leeway_secs
    }
}

/// `jsonwebtoken`'s settings: exactly those of sessiond. The algorithm is pinned (every key of
/// a [`KeySet`] is Ed25519). `jsonwebtoken` checks `exp` and `nbf` against the system clock;
/// [`check_times`] checks `exp` and `iat` against the caller's.
fn validation(issuer: &str, audience: &str, leeway_secs: i64) -> Validation {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = leeway_secs.unsigned_abs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v
}

/// The structural checks every sessiond-signed JWT passes before any key is touched: at most
/// [`MAX_TOKEN_LEN`], three segments, a JSON header with only the allowed parameters, `alg`
/// `EdDSA` (pinned), a `typ` that `typ_ok` accepts, and a `kid`, which is returned. Shared by
/// access tokens ([`verify`]) and the server's other token kinds, so the rule lives here once.
pub fn checked_kid(token: &str, typ_ok: impl Fn(&str) -> bool) -> Result<String, VerifyError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::Invalid("too long"));
    }
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
    if !header.get("typ").and_then(|v| v.as_str()).is_some_and(typ_ok) {
        return Err(VerifyError::Invalid("typ"));
    }
    match header.get("kid").and_then(|v| v.as_str()) {
        Some(kid) => Ok(kid.to_string()),
        None => Err(VerifyError::Invalid("kid missing")),
    }
}

/// Verifies `token` against `keys` and `policy` at `now_secs` (seconds since the Unix epoch).
/// Does not consult any denylist: a verified token's session may still have been revoked.
pub fn verify(token: &str, keys: &KeySet, policy: &Policy, now_secs: i64) -> Result<Verified, VerifyError> {
    // RFC 9068 §4: "at+jwt" or "application/at+jwt"; media types compare case-insensitively.
    let kid = checked_kid(token, |t| t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt"))?;
    let kid = kid.as_str();
    let Some(key) = keys.get(kid) else { return Err(VerifyError::Invalid(UNKNOWN_KID)) };

    let data = jsonwebtoken::decode::<Claims>(token, key, &policy.validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => VerifyError::Expired,
        _ => VerifyError::Invalid("signature or claims"),
    })?;
    let claims = data.claims;
    if claims.sid.is_empty() || claims.sub.is_empty() || claims.jti.is_empty() {
        return Err(VerifyError::Invalid("empty sid/sub/jti"));
    }
    check_times(&claims, policy, now_secs)?;
    Ok(Verified { kid: kid.to_string(), claims })
}

/// The caller's clock decides `exp` and `iat`, on every verification, cached or not:
/// expired once `exp + leeway < now`; invalid when issued more than the leeway in the future.
pub fn check_times(claims: &Claims, policy: &Policy, now_secs: i64) -> Result<(), VerifyError> {
    check_exp_iat(claims.exp, claims.iat, policy.leeway_secs, policy.ignore_exp, now_secs)
}

/// [`check_times`] on bare `exp` and `iat` (for the server's other token kinds).
pub fn check_exp_iat(exp: i64, iat: i64, leeway_secs: i64, ignore_exp: bool, now_secs: i64) -> Result<(), VerifyError> {
    if !ignore_exp && exp.saturating_add(leeway_secs) < now_secs {
        return Err(VerifyError::Expired);
    }
    if iat > now_secs.saturating_add(leeway_secs) {
        return Err(VerifyError::Invalid("iat in the future"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;

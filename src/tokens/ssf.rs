//! Shared Signals access tokens: what `POST /oauth2/token` (client credentials, docs/SSF.md
//! §1.3) issues to a service credential with scope `ssf`, and what the SSF management API
//! accepts besides `Bearer sk_…` ([`crate::http::ssf_auth`]).
//!
//! # Format, and why
//!
//! A JWT signed with the server's access-token keys (Ed25519, the database's `signing_keys`):
//! header `{"alg":"EdDSA","typ":"sessiond-ssf+jwt","kid"}`, claims
//! `{iss, aud: ISSUER/ssf, sub: NAME, scope, cid, iat, exp: iat + 900, jti}`.
//!
//! - **Short-lived, no per-instance memory** (several instances share one database): every
//!   instance holds the same keys, so any of them verifies a token any other issued, with no
//!   table of issued tokens to write per token nor to sweep.
//! - **Never a user access token, and the reverse.** The user-token rule (`sessiond-verify`,
//!   [`crate::tokens::jwt`]) demands `typ` `at+jwt`, `aud` `--audience` and the claims `sid` and
//!   `roles`; this token has another `typ`, another `aud` and neither claim, so it fails three
//!   ways (tested below). [`verify`] demands `typ` `sessiond-ssf+jwt` and `aud` ISSUER/ssf, so a
//!   user token fails here. Resource servers verifying user tokens offline with the JWKS refuse
//!   it the same way. Nor is it an `sk_` credential: it does not have that shape.
//! - **Dead with its credential.** Each use looks the credential up by name (as `sk_` lookups do
//!   per request) and compares `cid`, a digest of the credential's secret digest: a removed
//!   credential fails at once, and one created again under the same name (a new secret) does
//!   not revive the old one's tokens.
//! - **Key rotation.** A key that has stopped signing stays usable here for [`SSF_TOKEN_TTL`]
//!   plus the leeway ([`crate::tokens::jwt::Keys::load`]), even after it has left the JWKS,
//!   so rotation never cuts a token short.
//! - **Never logged**: nothing here or in its callers formats a token; refusals log a fixed
//!   reason.
//!
//! (The alternative, an opaque token stored as a digest, would cost a write per token and a
//! sweep, for nothing the credential lookup does not already give.)

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::jwt::{Keys, VerifyError, LEEWAY_SECS};
use crate::clock::Millis;

/// Lifetime of an SSF access token (IOP §2.7.1: short-lived; `expires_in` of the answer).
pub const SSF_TOKEN_TTL: Duration = Duration::from_secs(900);
/// The JOSE `typ` of an SSF access token: never `at+jwt`, so no user-token check accepts it.
pub const SSF_TOKEN_TYP: &str = "sessiond-ssf+jwt";

/// The `aud` of SSF access tokens: the management API under the issuer (never `--audience`).
pub fn audience(issuer: &str) -> String {
    format!("{}/ssf", issuer.trim_end_matches('/'))
}

/// `cid`: what binds a token to one credential, derived from the digest of its secret (a
/// one-way function of a digest of 256 random bits: it tells nothing about the secret).
pub fn credential_id(secret_digest: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"sessiond ssf token cid\0");
    h.update(secret_digest);
    URL_SAFE_NO_PAD.encode(&h.finalize()[..16])
}

/// The scopes of an SSF access token (docs/SSF.md §1.3): `ssf.read` (GETs and poll) and
/// `ssf.manage` (writes; it also reads). A credential with scope `ssf` may have both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsfScopes {
    pub read: bool,
    pub manage: bool,
}

impl SsfScopes {
    /// Both: what a request without `scope` gets, and what an `sk_` with scope `ssf` holds.
    pub const ALL: SsfScopes = SsfScopes { read: true, manage: true };

    /// A space-separated list (RFC 6749 §3.3) of known scopes, at least one; `None` when empty
    /// or when any is unknown.
    pub fn parse(list: &str) -> Option<SsfScopes> {
        let mut s = SsfScopes { read: false, manage: false };
        for token in list.split_ascii_whitespace() {
            match token {
                "ssf.read" => s.read = true,
                "ssf.manage" => s.manage = true,
                _ => return None,
            }
        }
        (s.read || s.manage).then_some(s)
    }

    /// The canonical list, as the token and the answer carry it.
    pub fn as_str(self) -> &'static str {
        match (self.read, self.manage) {
            (true, true) => "ssf.read ssf.manage",
            (false, true) => "ssf.manage",
            _ => "ssf.read",
        }
    }
}

/// The claims of an SSF access token. `Debug` shows them (none is secret: the token is).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SsfClaims {
    pub iss: String,
    /// [`audience`] of the issuer.
    pub aud: String,
    /// The credential's name.
    pub sub: String,
    /// [`SsfScopes::as_str`].
    pub scope: String,
    /// [`credential_id`] of the credential's secret digest.
    pub cid: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

impl SsfClaims {
    /// The granted scopes (checked by [`verify`]).
    pub fn scopes(&self) -> SsfScopes {
        SsfScopes::parse(&self.scope).unwrap_or(SsfScopes { read: false, manage: false })
    }
}

/// Signs a token for the credential `name` (whose secret has `secret_digest`) with `scopes`,
/// valid from `now` for [`SSF_TOKEN_TTL`]. Returns the token and its lifetime in seconds.
pub fn issue(
    keys: &Keys,
    name: &str,
    secret_digest: &[u8],
    scopes: SsfScopes,
    now: Millis,
) -> anyhow::Result<(String, u64)> {
    let iat = now.div_euclid(1000);
    let ttl = SSF_TOKEN_TTL.as_secs();
    let claims = SsfClaims {
        iss: keys.issuer().to_string(),
        aud: audience(keys.issuer()),
        sub: name.to_string(),
        scope: scopes.as_str().to_string(),
        cid: credential_id(secret_digest),
        iat,
        exp: iat + ttl as i64,
        jti: uuid::Uuid::new_v4().simple().to_string(),
    };
    Ok((keys.sign(SSF_TOKEN_TYP, &claims)?, ttl))
}

/// Verifies an SSF access token at `now_secs`: our header policy (only `alg`, `typ`, `kid`;
/// `EdDSA`, [`SSF_TOKEN_TYP`], a known `kid`), the signature with *our* key for that `kid`,
/// `iss`, `aud` = [`audience`], `exp` (leeway [`LEEWAY_SECS`]), `iat` not in the future, and
/// non-empty `sub`, `cid`, `jti` and known scopes. Says nothing about the credential: the caller
/// looks it up and compares `cid`.
pub fn verify(keys: &Keys, token: &str, now_secs: i64) -> Result<SsfClaims, VerifyError> {
    let kid = sessiond_verify::token::checked_kid(token, |t| t == SSF_TOKEN_TYP)?;
    let kid = kid.as_str();
    let Some(key) = keys.ssf_verifying_key(kid) else { return Err(VerifyError::Invalid("unknown kid")) };
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[keys.issuer()]);
    validation.set_audience(&[audience(keys.issuer())]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    // Times are checked below against the application clock, not the system's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let claims = jsonwebtoken::decode::<SsfClaims>(token, &key, &validation)
        .map_err(|_| VerifyError::Invalid("signature or claims"))?
        .claims;
    if claims.sub.is_empty() || claims.cid.is_empty() || claims.jti.is_empty() {
        return Err(VerifyError::Invalid("empty sub/cid/jti"));
    }
    if SsfScopes::parse(&claims.scope).is_none() {
        return Err(VerifyError::Invalid("scope"));
    }
    sessiond_verify::token::check_exp_iat(claims.exp, claims.iat, LEEWAY_SECS, false, now_secs)?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::jwt::generate_key;
    use jsonwebtoken::{EncodingKey, Header};

    const NOW_MS: Millis = 1_800_000_000_000;
    const NOW: i64 = NOW_MS / 1000;

    fn keys() -> (Keys, crate::store::KeyRow) {
        let keys = Keys::new("https://issuer.test", "sessiond", Duration::from_secs(300));
        let row = generate_key(NOW_MS, NOW_MS);
        keys.load(std::slice::from_ref(&row), NOW_MS);
        (keys, row)
    }

    /// Signs `claims` with `row`'s key under `typ`, bypassing [`issue`].
    fn sign(row: &crate::store::KeyRow, typ: &str, claims: &impl Serialize) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.into());
        header.kid = Some(row.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&row.private_der)).unwrap()
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let (keys, _) = keys();
        let (token, ttl) = issue(&keys, "billing", b"digest", SsfScopes::ALL, NOW_MS).unwrap();
        assert_eq!(ttl, 900);
        let c = verify(&keys, &token, NOW).unwrap();
        assert_eq!(
            (c.iss.as_str(), c.aud.as_str(), c.sub.as_str()),
            ("https://issuer.test", "https://issuer.test/ssf", "billing")
        );
        assert_eq!((c.scope.as_str(), c.iat, c.exp), ("ssf.read ssf.manage", NOW, NOW + 900));
        assert_eq!(c.cid, credential_id(b"digest"));
        assert_ne!(c.cid, credential_id(b"another digest"));
        assert_eq!(c.scopes(), SsfScopes::ALL);
        assert!(verify(&keys, &token, NOW + 900 + LEEWAY_SECS).is_ok());
        assert_eq!(verify(&keys, &token, NOW + 900 + LEEWAY_SECS + 1), Err(VerifyError::Expired));
        assert_eq!(verify(&keys, &token, NOW - LEEWAY_SECS - 1), Err(VerifyError::Invalid("iat in the future")));
        let read = issue(&keys, "billing", b"digest", SsfScopes::parse("ssf.read").unwrap(), NOW_MS).unwrap().0;
        assert_eq!(verify(&keys, &read, NOW).unwrap().scopes(), SsfScopes { read: true, manage: false });
    }

    /// The user-token rule (the one `sessiond-verify` and every resource server run) refuses an
    /// SSF token on `typ`; re-signed as `at+jwt`, it still fails (`aud`, and no `sid`/`roles`);
    /// and the SSF rule refuses a user access token on `typ` and on `aud`.
    #[test]
    fn ssf_tokens_and_user_access_tokens_are_never_taken_for_each_other() {
        let (keys, row) = keys();
        let (ssf, _) = issue(&keys, "billing", b"digest", SsfScopes::ALL, NOW_MS).unwrap();
        assert_eq!(keys.verify(&ssf, NOW), Err(VerifyError::Invalid("typ")));
        assert!(keys.verify_ignoring_expiry(&ssf, NOW).is_err(), "nor for RFC 7009 revocation");

        let claims = verify(&keys, &ssf, NOW).unwrap();
        let as_at = sign(&row, "at+jwt", &claims);
        assert_eq!(keys.verify(&as_at, NOW), Err(VerifyError::Invalid("signature or claims")));
        // Even with the user claims present, the SSF `aud` is not `--audience`.
        let mut full = serde_json::to_value(&claims).unwrap();
        full["sid"] = "s".into();
        full["roles"] = serde_json::json!([]);
        assert_eq!(keys.verify(&sign(&row, "at+jwt", &full), NOW), Err(VerifyError::Invalid("signature or claims")));

        let (user, _) = keys.issue("u1", "s1", vec![], NOW_MS, NOW_MS + 300_000).unwrap();
        assert!(keys.verify(&user, NOW).is_ok());
        assert_eq!(verify(&keys, &user, NOW), Err(VerifyError::Invalid("typ")));
        // A user token's claims re-signed under the SSF typ: wrong `aud`, no `scope` or `cid`.
        let user_claims = serde_json::to_value(keys.verify(&user, NOW).unwrap()).unwrap();
        assert_eq!(
            verify(&keys, &sign(&row, SSF_TOKEN_TYP, &user_claims), NOW),
            Err(VerifyError::Invalid("signature or claims"))
        );
        // The SSF claims with the user `aud`: refused on `aud`.
        let mut wrong_aud = serde_json::to_value(&claims).unwrap();
        wrong_aud["aud"] = "sessiond".into();
        assert_eq!(
            verify(&keys, &sign(&row, SSF_TOKEN_TYP, &wrong_aud), NOW),
            Err(VerifyError::Invalid("signature or claims"))
        );
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let (keys, row) = keys();
        let (token, _) = issue(&keys, "billing", b"digest", SsfScopes::ALL, NOW_MS).unwrap();
        let claims = verify(&keys, &token, NOW).unwrap();

        // Another key (not ours), a changed payload, junk.
        let other = generate_key(NOW_MS, NOW_MS);
        let foreign = sign(&crate::store::KeyRow { kid: row.kid.clone(), ..other }, SSF_TOKEN_TYP, &claims);
        assert_eq!(verify(&keys, &foreign, NOW), Err(VerifyError::Invalid("signature or claims")));
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut more = claims.clone();
        more.scope = "ssf.manage".into();
        more.sub = "other".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&more).unwrap());
        parts[1] = &payload;
        assert!(verify(&keys, &parts.join("."), NOW).is_err());
        for junk in ["", "a.b", "a.b.c.d", "sk_x", &"x".repeat(super::super::jwt::MAX_TOKEN_LEN + 1)] {
            assert!(verify(&keys, junk, NOW).is_err(), "{junk:?}");
        }

        // Header policy: an extra parameter, and unknown scopes.
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(SSF_TOKEN_TYP.into());
        header.kid = Some(row.kid.clone());
        header.cty = Some("x".into());
        let extra = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&row.private_der)).unwrap();
        assert_eq!(verify(&keys, &extra, NOW), Err(VerifyError::Invalid("header parameter not allowed")));
        let mut odd = claims.clone();
        odd.scope = "ssf.manage openid".into();
        assert_eq!(verify(&keys, &sign(&row, SSF_TOKEN_TYP, &odd), NOW), Err(VerifyError::Invalid("scope")));
    }

    /// A key that stops signing keeps verifying SSF tokens for their whole lifetime, even after
    /// it has left the JWKS (which follows the shorter access-token lifetime).
    #[test]
    fn rotation_never_cuts_an_ssf_token_short() {
        let (keys, old) = keys();
        let (token, _) = issue(&keys, "billing", b"digest", SsfScopes::ALL, NOW_MS).unwrap();
        let new = generate_key(NOW_MS, NOW_MS + 1);
        let rows = [old.clone(), new];
        let t = NOW_MS + 1 + 600_000; // past access TTL + leeway after the switch
        keys.load(&rows, t);
        assert!(!keys.kids().contains(&old.kid), "retired from the JWKS");
        assert!(verify(&keys, &token, t / 1000).is_ok());
        let t = NOW_MS + 1 + 930_001;
        keys.load(&rows, t);
        assert_eq!(verify(&keys, &token, NOW), Err(VerifyError::Invalid("unknown kid")));
    }

    #[test]
    fn scopes_parse_strictly() {
        assert_eq!(SsfScopes::parse("ssf.read ssf.manage"), Some(SsfScopes::ALL));
        assert_eq!(SsfScopes::parse(" ssf.manage  ssf.manage "), Some(SsfScopes { read: false, manage: true }));
        for bad in ["", " ", "ssf", "ssf.manage openid", "SSF.READ", "ssf.read,ssf.manage"] {
            assert_eq!(SsfScopes::parse(bad), None, "{bad:?}");
        }
        for s in [SsfScopes::ALL, SsfScopes { read: true, manage: false }, SsfScopes { read: false, manage: true }] {
            assert_eq!(SsfScopes::parse(s.as_str()), Some(s));
        }
    }
}

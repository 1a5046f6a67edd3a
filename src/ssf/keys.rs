//! The keys that sign Security Event Tokens (docs/SSF.md §1.1, §2): RSA ≥ 2048 bits, RS256.
//!
//! RS256 is what the CAEP Interoperability Profile requires of every event (IOP §2.6), so these
//! keys are RSA while the access-token keys stay Ed25519; the two sets are published apart
//! (`/ssf/jwks.json` vs the access-token JWKS) so a SET key never verifies an access token.
//!
//! The private-key operation is AWS-LC's (through `aws-lc-rs`), whose RSA is constant-time.
//! The RustCrypto `rsa` crate is in the dependency tree (jsonwebtoken pulls it) but is open to
//! the Marvin timing attack (RUSTSEC-2023-0071) and must never hold one of these keys.
//!
//! Pure: no I/O, no clock. Storage and rotation are the caller's; a key travels as PKCS#8 DER.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// IOP §2.6: "a minimum of 2048-bit keys". AWS-LC refuses smaller keys too; this is checked
/// again here so the rule does not rest on a library default.
pub const MIN_RSA_BITS: usize = 2048;
/// The longest `kid` accepted from storage. Ours are `ssf-` + 43 characters.
const MAX_KID_LEN: usize = 128;

/// Why a key could not be made, loaded or used. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("RSA key generation failed")]
    Generate,
    /// The DER is not an acceptable RSA PKCS#8 private key (the reason is AWS-LC's fixed text).
    #[error("SET key rejected: {0}")]
    Rejected(&'static str),
    #[error("SET key too small: {bits} bits (at least {MIN_RSA_BITS} required)")]
    TooSmall { bits: usize },
    /// Empty, over-long, or not printable ASCII without spaces.
    #[error("invalid SET key id")]
    InvalidKid,
    #[error("SET key could not be encoded as PKCS#8")]
    Encode,
    /// A JWT claims set is a JSON object (RFC 7519 §7.2 step 10).
    #[error("SET claims must be a JSON object")]
    ClaimsNotObject,
    #[error("SET claims could not be serialised: {0}")]
    Claims(#[from] serde_json::Error),
    #[error("RSA signing failed")]
    Sign,
}

/// One SET signing key: its `kid` and the AWS-LC RSA key pair. `Send + Sync`: share it in an
/// `Arc`; signing takes `&self`.
pub struct SetKey {
    kid: String,
    pair: RsaKeyPair,
    /// What [`SetKey::pkcs8_der`] returns, encoded once at load so that call cannot fail;
    /// wiped on drop.
    pkcs8: Zeroizing<Vec<u8>>,
    /// The public JWK's `n` and `e`, base64url without padding.
    n: String,
    e: String,
    /// The base64url of the protected header, the same for every SET of this key.
    header_b64: String,
}

/// The JWS protected header, fields in this order (docs/SSF.md §2; `typ` is a MUST,
/// RFC 8417 §2.3). A struct, not a `json!` map, so the order does not depend on serde_json's
/// `preserve_order` feature.
#[derive(Serialize)]
struct Header<'a> {
    typ: &'static str,
    alg: &'static str,
    kid: &'a str,
}

impl SetKey {
    /// A new 2048-bit RSA key; its kid is `ssf-` + its RFC 7638 JWK thumbprint (base64url of
    /// SHA-256), so the same key always gets the same kid and the kid reveals nothing else.
    pub fn generate() -> Result<SetKey, KeyError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
        let (n, e) = public_components(&pair);
        let kid = format!("ssf-{}", thumbprint(&n, &e));
        SetKey::assemble(kid, pair, n, e)
    }

    /// A key from the PKCS#8 DER that [`SetKey::pkcs8_der`] returned, with the kid stored beside
    /// it. Refuses keys under [`MIN_RSA_BITS`] and anything that is not an RSA private key.
    pub fn from_pkcs8(kid: &str, der: &[u8]) -> Result<SetKey, KeyError> {
        if !valid_kid(kid) {
            return Err(KeyError::InvalidKid);
        }
        let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| KeyError::Rejected(e.description_()))?;
        let (n, e) = public_components(&pair);
        SetKey::assemble(kid.to_string(), pair, n, e)
    }

    fn assemble(kid: String, pair: RsaKeyPair, n: Vec<u8>, e: Vec<u8>) -> Result<SetKey, KeyError> {
        let bits = bit_len(&n);
        if bits < MIN_RSA_BITS {
            return Err(KeyError::TooSmall { bits });
        }
        let pkcs8 = Zeroizing::new(pair.as_der().map_err(|_| KeyError::Encode)?.as_ref().to_vec());
        let header = Header { typ: "secevent+jwt", alg: "RS256", kid: &kid };
        let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
        Ok(SetKey { pkcs8, n: URL_SAFE_NO_PAD.encode(n), e: URL_SAFE_NO_PAD.encode(e), header_b64, kid, pair })
    }

    /// The private key as unencrypted PKCS#8 v1 DER, for storage. Treat it as a secret.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.pkcs8.to_vec()
    }

    /// The `kid` of every SET header and of the public JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK for `/ssf/jwks.json`: `kty`, `kid`, `use`, `alg`, `n`, `e`.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": "RS256",
            "n": self.n,
            "e": self.e,
        })
    }

    /// `claims` as a compact JWS: header `{"typ":"secevent+jwt","alg":"RS256","kid":…}`,
    /// RSASSA-PKCS1-v1_5 with SHA-256. Deterministic: the same claims give the same SET.
    /// About half a millisecond of CPU (2048 bits, debug or release alike: the hot path is
    /// AWS-LC's assembly), so callers on an async runtime may want `spawn_blocking` for batches;
    /// [`SetKey::generate`] takes 50–800 ms and belongs there always.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, KeyError> {
        if !claims.is_object() {
            return Err(KeyError::ClaimsNotObject);
        }
        let payload = serde_json::to_vec(claims)?;
        let mut jws = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 400);
        jws.push_str(&self.header_b64);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut jws);
        let mut signature = vec![0; self.pair.public_modulus_len()];
        // The RNG is unused by AWS-LC for PKCS#1 v1.5 (deterministic padding); the API asks one.
        self.pair
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), jws.as_bytes(), &mut signature)
            .map_err(|_| KeyError::Sign)?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jws);
        Ok(jws)
    }
}

/// The kid only: never the key.
impl fmt::Debug for SetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// `n` and `e`, big-endian without leading zeros (as a JWK wants them, RFC 7518 §6.3.1).
fn public_components(pair: &RsaKeyPair) -> (Vec<u8>, Vec<u8>) {
    let c = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    (c.n, c.e)
}

/// RFC 7638 §3: SHA-256 over the required members in lexicographic order, no whitespace.
/// `n` and `e` are base64url, so they need no JSON escaping.
fn thumbprint(n: &[u8], e: &[u8]) -> String {
    let input = format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, URL_SAFE_NO_PAD.encode(e), URL_SAFE_NO_PAD.encode(n));
    URL_SAFE_NO_PAD.encode(Sha256::digest(input.as_bytes()))
}

/// The bit length of a big-endian unsigned integer.
fn bit_len(be: &[u8]) -> usize {
    let digits = match be.iter().position(|&b| b != 0) {
        Some(i) => &be[i..],
        None => return 0,
    };
    digits.len() * 8 - digits[0].leading_zeros() as usize
}

/// A kid from storage goes into every SET header and the JWKS: keep it to printable ASCII
/// without spaces and of a sane length, so a corrupt row fails at load, not at a receiver.
fn valid_kid(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= MAX_KID_LEN && kid.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::OnceLock;

    use base64::engine::general_purpose::STANDARD;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use serde_json::json;

    use super::*;

    /// RSA keygen costs tens of milliseconds (more in debug): one shared key for most tests.
    fn key() -> &'static SetKey {
        static KEY: OnceLock<SetKey> = OnceLock::new();
        KEY.get_or_init(|| SetKey::generate().expect("generate"))
    }

    fn claims() -> serde_json::Value {
        json!({
            "iss": "https://auth.example.com", "aud": "billing", "iat": 1767225601,
            "jti": "4d3559ec67504aaba65d40b0363faad8", "txn": "tx_3f9a1c",
            "sub_id": {"format": "iss_sub", "iss": "https://auth.example.com", "sub": "u_7Hq2"},
            "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {
                "event_timestamp": 1767225600, "initiating_entity": "user",
                "reason_admin": {"en": "logout"}, "reason_user": {"en": "You signed out."}}}
        })
    }

    /// Verifies with jsonwebtoken (RustCrypto's RSA, public-key side only): an implementation
    /// independent of the signer. Checks the signature and nothing else.
    fn verify(token: &str, jwk: &serde_json::Value) -> jsonwebtoken::errors::Result<serde_json::Value> {
        let n = jwk["n"].as_str().expect("n");
        let e = jwk["e"].as_str().expect("e");
        let key = DecodingKey::from_rsa_components(n, e)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_aud = false;
        Ok(jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)?.claims)
    }

    /// A 1024-bit RSA key as PKCS#8 DER (base64), made with `openssl genpkey` for this test only.
    /// It signs nothing: it exists to be refused.
    const RSA_1024_PKCS8: &str = concat!(
        "MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBAM0oCoqET2houtkEI2+Kut3CRjFMSrrUlHXaRi+7",
        "pRmO47OS4mUphAR2c/XEbByv5Q8QwHgbD+5FoJLF9bUwSgCT4/WCM/PuDmQV65OpbwlWkcRImy8z+W1zDQ6aAKJ9",
        "mz0e0lm3CUjGnY6ydt4G5Py2kcm2mloffUJxKFZJygNxAgMBAAECgYAGBqgQm4RNl83tM+7qhtOoUd2H8yq6xCW8",
        "NHYdTtCxqH3Nt4HI4OhMzUHotSVLzmrW/3H31SupnwfxZ7ko4ks6HaYojI4bya+lGBZVshSmK80+lZ966oPy13Id",
        "1hBaDp77MLQqlIhGWIFb1/M1Rffh5T6nZfp9Nch3twFMx3PesQJBAOtvnhwEhN6jxQXCZjAjyJDG7l+059k5dtE6",
        "mJWeX5/7sC/1sc1IzpapFm1GuBEqINhJJuTKGnKXb2S80PGiiGUCQQDfE14WLDJP/ZnpiZ9BZMDHd0S0oIWXzxOS",
        "Ip1bdx/CwTipQyawljQh5ct6pFlnA57xfmkE5TxQg78rq4QuLVAdAkEAs6Gm/fOIuSI1Cg7nzuUOez/80jMCDqAk",
        "gsD1eHqstTDgnccVUO6zCQqb3OZvPFFrW/p8XWXCRho62J6jwSlkbQJAFXDMGz92On/6ehrTJrrjWIibHu1KydOK",
        "YwJWs4LYl6RwqLwejNxy+EsY6pm/SgpsDXQD7geGa4quJilfE/0g9QJAIQLDVqIEcvrWMYWUqYL38hn1Wrl3N/hT",
        "NC9D3Wwrxp4bAlBNK6nwfsqccKBQxlHnPiwLt8PEqvoRAW/A7QcTMA==",
    );

    #[test]
    fn a_set_verifies_with_an_independent_rs256_implementation() {
        let key = key();
        let token = key.sign(&claims()).expect("sign");
        let got = verify(&token, &key.public_jwk()).expect("signature verifies");
        assert_eq!(got, claims());
    }

    #[test]
    fn a_changed_payload_or_another_key_fails_verification() {
        let key = key();
        let token = key.sign(&claims()).expect("sign");
        let parts: Vec<&str> = token.split('.').collect();
        let mut other = claims();
        other["aud"] = json!("someone-else");
        let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(other.to_string()), parts[2]);
        assert!(verify(&forged, &key.public_jwk()).is_err());
        let stranger = SetKey::generate().expect("generate");
        assert!(verify(&token, &stranger.public_jwk()).is_err());
    }

    #[test]
    fn the_header_is_exactly_typ_alg_kid() {
        let key = key();
        let token = key.sign(&claims()).expect("sign");
        let header = URL_SAFE_NO_PAD.decode(token.split('.').next().expect("header")).expect("base64url");
        let expected = format!(r#"{{"typ":"secevent+jwt","alg":"RS256","kid":"{}"}}"#, key.kid());
        assert_eq!(String::from_utf8(header).expect("utf-8"), expected);
        let parsed = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(parsed.alg, Algorithm::RS256);
        assert_eq!(parsed.typ.as_deref(), Some("secevent+jwt"));
        assert_eq!(parsed.kid.as_deref(), Some(key.kid()));
    }

    #[test]
    fn the_payload_is_the_claims_serialised() {
        let token = key().sign(&claims()).expect("sign");
        let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1).expect("payload")).expect("base64url");
        assert_eq!(payload, serde_json::to_vec(&claims()).expect("json"));
        assert_eq!(token.split('.').count(), 3);
        assert!(!token.contains('='), "base64url without padding");
    }

    #[test]
    fn the_public_jwk_has_exactly_the_published_members() {
        let key = key();
        let jwk = key.public_jwk();
        let members: Vec<&str> = jwk.as_object().expect("object").keys().map(String::as_str).collect();
        let mut sorted = members.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["alg", "e", "kid", "kty", "n", "use"]);
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["kid"], key.kid());
        assert_eq!(jwk["e"], "AQAB", "65537");
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().expect("n")).expect("base64url");
        assert_ne!(n[0], 0, "no leading zero octet (RFC 7518 §6.3.1.1)");
        assert!(bit_len(&n) >= MIN_RSA_BITS, "modulus of {} bits", bit_len(&n));
        assert_eq!(bit_len(&n), 2048);
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint_and_stable() {
        let key = key();
        let jwk = key.public_jwk();
        let input =
            format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, jwk["e"].as_str().unwrap(), jwk["n"].as_str().unwrap());
        let expected = format!("ssf-{}", URL_SAFE_NO_PAD.encode(Sha256::digest(input.as_bytes())));
        assert_eq!(key.kid(), expected);
        assert_eq!(key.kid().len(), 4 + 43);
        assert_ne!(SetKey::generate().expect("generate").kid(), key.kid());
    }

    #[test]
    fn thumbprint_matches_the_rfc7638_example() {
        // RFC 7638 §3.1: the RFC 7517 Appendix A.1 key and its thumbprint.
        let n = URL_SAFE_NO_PAD
            .decode(concat!(
                "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP",
                "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY",
                "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f",
                "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            ))
            .expect("base64url");
        assert_eq!(thumbprint(&n, &[1, 0, 1]), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn pkcs8_round_trip_keeps_the_key() {
        let key = key();
        let der = key.pkcs8_der();
        let reloaded = SetKey::from_pkcs8(key.kid(), &der).expect("reload");
        assert_eq!(reloaded.kid(), key.kid());
        assert_eq!(reloaded.public_jwk(), key.public_jwk());
        assert_eq!(reloaded.pkcs8_der(), der);
        // Signed by the reloaded key, verified with the first key's JWK.
        let token = reloaded.sign(&claims()).expect("sign");
        assert_eq!(verify(&token, &key.public_jwk()).expect("verifies"), claims());
        // PKCS#1 v1.5 is deterministic: the very same SET.
        assert_eq!(token, key.sign(&claims()).expect("sign"));
    }

    #[test]
    fn a_1024_bit_key_is_refused() {
        let der = STANDARD.decode(RSA_1024_PKCS8).expect("base64");
        let err = SetKey::from_pkcs8("ssf-weak", &der).expect_err("1024 bits must be refused");
        assert!(matches!(err, KeyError::Rejected(_) | KeyError::TooSmall { .. }), "{err:?}");
    }

    #[test]
    fn bit_len_counts_from_the_top_set_bit() {
        assert_eq!(bit_len(&[]), 0);
        assert_eq!(bit_len(&[0, 0]), 0);
        assert_eq!(bit_len(&[1]), 1);
        assert_eq!(bit_len(&[0, 0x80, 0]), 16);
        assert_eq!(bit_len(&[0x7f; 256]), 2047);
    }

    #[test]
    fn what_is_not_an_rsa_private_key_is_refused_without_panic() {
        let rng = SystemRandom::new();
        let ed = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519");
        let ec = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .expect("p-256");
        let good = key().pkcs8_der();
        let truncated = &good[..good.len() / 2];
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0xff;
        for der in [&[][..], b"not der", ed.as_ref(), ec.as_ref(), truncated] {
            assert!(matches!(SetKey::from_pkcs8("k", der), Err(KeyError::Rejected(_))));
        }
        // A flipped bit inside the private key: refused, or (if it lands in a part AWS-LC does
        // not check) a key that still loads; never a panic.
        let _ = SetKey::from_pkcs8("k", &flipped);
    }

    #[test]
    fn a_bad_kid_is_refused() {
        let der = key().pkcs8_der();
        for kid in ["", "has space", "tab\t", "é", &"k".repeat(MAX_KID_LEN + 1)] {
            assert!(matches!(SetKey::from_pkcs8(kid, &der), Err(KeyError::InvalidKid)), "{kid:?}");
        }
        assert!(SetKey::from_pkcs8(&"k".repeat(MAX_KID_LEN), &der).is_ok());
    }

    #[test]
    fn signing_takes_any_object_and_refuses_other_json() {
        let key = key();
        for odd in [
            json!({}),
            json!({"\u{0}": "\u{fffd}", "emoji": "🔑", "deep": [[[[{}]]]]}),
            json!({"big": "x".repeat(1 << 20)}),
        ] {
            let token = key.sign(&odd).expect("sign");
            assert_eq!(verify(&token, &key.public_jwk()).expect("verifies"), odd);
        }
        for not_object in [json!(null), json!([]), json!("s"), json!(1)] {
            assert!(matches!(key.sign(&not_object), Err(KeyError::ClaimsNotObject)));
        }
    }

    #[test]
    fn debug_shows_the_kid_and_no_key_material() {
        let key = key();
        let shown = format!("{key:?}");
        assert!(shown.contains(key.kid()));
        assert!(!shown.contains(key.public_jwk()["n"].as_str().unwrap()));
        assert!(shown.len() < 100, "{shown}");
        let err = SetKey::from_pkcs8("ssf-x", b"garbage").expect_err("garbage");
        assert!(!format!("{err} {err:?}").contains("garbage"));
    }

    #[test]
    fn set_key_is_send_and_sync() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<SetKey>();
        shared::<std::sync::Arc<SetKey>>();
    }
}

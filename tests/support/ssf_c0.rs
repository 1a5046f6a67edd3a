//! Rule C0 of docs/SSF.md §6: what every SET that sessiond pushes or returns from a poll must
//! satisfy, checked from the outside.
//!
//! The signature is verified with `jsonwebtoken` (RustCrypto's `rsa`), while the server signs with
//! its own code: an independent verifier, so a signing bug cannot be hidden by sharing it. The
//! JOSE header and the claims are parsed here by hand rather than by `jsonwebtoken`'s
//! `Validation`, so every rule is checked exactly as the contract words it, and no library
//! default (such as a required `exp`) adds or drops a rule.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

/// The `typ` of a SET (RFC 8417 §2.3; SSF §4.1.1).
pub const SET_TYP: &str = "secevent+jwt";
/// The only signing algorithm (CAEP Interoperability Profile §2.6).
pub const SET_ALG: &str = "RS256";
/// The smallest RSA modulus accepted, in bits (IOP §2.6).
pub const MIN_RSA_BITS: usize = 2048;
/// How far in the future `iat` may be: clock skew between the test and the server.
pub const IAT_SKEW_SECS: i64 = 5;

/// Checks one compact SET against C0 and returns its claims.
///
/// - `jwks`: the document at the SSF metadata's `jwks_uri`;
/// - `access_jwks`: the access-token JWKS (`/.well-known/jwks.json`), whose `kid`s a SET must
///   never use;
/// - `issuer`: `--issuer`, byte for byte; `aud`: the stream's `aud` (a string `aud` must equal
///   it; an array `aud` must be exactly `[aud]`);
/// - `seen_jtis`: the `jti`s seen so far in the run. A SET that passes adds its `jti`; a
///   failing one adds nothing. A retry of the same SET (same `jti`) is compared by its bytes,
///   not checked again.
///
/// The error names the first rule that fails. It quotes no key material and no signature.
pub fn check_c0(
    set: &str,
    jwks: &Value,
    access_jwks: &Value,
    issuer: &str,
    aud: &str,
    seen_jtis: &mut HashSet<String>,
) -> Result<Value, String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs() as i64;
    check_c0_at(set, jwks, access_jwks, issuer, aud, seen_jtis, now)
}

/// [`check_c0`] with "now" given: a test that moves the server's clock compares `iat` with
/// the server's time.
pub fn check_c0_at(
    set: &str,
    jwks: &Value,
    access_jwks: &Value,
    issuer: &str,
    aud: &str,
    seen_jtis: &mut HashSet<String>,
    now: i64,
) -> Result<Value, String> {
    let parts: Vec<&str> = set.split('.').collect();
    let [header_b64, payload_b64, signature_b64] = parts[..] else {
        return Err(format!("not a compact JWS: {} parts, expected 3", parts.len()));
    };

    // The JOSE header.
    let header = decode_object(header_b64).map_err(|e| format!("header: {e}"))?;
    match header.get("typ") {
        Some(Value::String(t)) if t == SET_TYP => {}
        other => return Err(format!("header typ is {}, expected \"{SET_TYP}\"", shown(other))),
    }
    match header.get("alg") {
        Some(Value::String(a)) if a == SET_ALG => {}
        other => return Err(format!("header alg is {}, expected \"{SET_ALG}\"", shown(other))),
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) if !k.is_empty() => k.as_str(),
        other => return Err(format!("header kid is {}, expected a non-empty string", shown(other))),
    };

    // The key: in the SSF JWKS once, never in the access-token JWKS, RSA of at least 2048 bits.
    let jwk = match keys_with_kid(jwks, kid)?.as_slice() {
        [] => return Err(format!("kid {kid:?} is not in the SSF JWKS")),
        [jwk] => *jwk,
        _ => return Err(format!("kid {kid:?} appears more than once in the SSF JWKS")),
    };
    if !keys_with_kid(access_jwks, kid).map_err(|e| format!("access-token JWKS: {e}"))?.is_empty() {
        return Err(format!("kid {kid:?} is also in the access-token JWKS"));
    }
    let decoding_key = rsa_key(jwk).map_err(|e| format!("SSF JWKS key {kid:?}: {e}"))?;

    // The signature, over the bytes as received.
    let signing_input = &set[..header_b64.len() + 1 + payload_b64.len()];
    match jsonwebtoken::crypto::verify(signature_b64, signing_input.as_bytes(), &decoding_key, Algorithm::RS256) {
        Ok(true) => {}
        Ok(false) => return Err(format!("the signature does not verify with key {kid:?}")),
        Err(e) => return Err(format!("the signature cannot be checked with key {kid:?}: {e}")),
    }

    // The claims.
    let claims = decode_object(payload_b64).map_err(|e| format!("payload: {e}"))?;
    match claims.get("iss") {
        Some(Value::String(i)) if i == issuer => {}
        other => return Err(format!("iss is {}, expected {issuer:?}", shown(other))),
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == aud,
        Some(Value::Array(list)) => matches!(list.as_slice(), [Value::String(a)] if a == aud),
        _ => false,
    };
    if !aud_ok {
        return Err(format!("aud is {}, expected {aud:?}", shown(claims.get("aud"))));
    }
    match claims.get("iat").and_then(Value::as_i64) {
        Some(iat) if iat <= now + IAT_SKEW_SECS => {}
        Some(iat) => return Err(format!("iat {iat} is more than {IAT_SKEW_SECS} s after now ({now})")),
        None => return Err(format!("iat is {}, expected an integer NumericDate", shown(claims.get("iat")))),
    }
    let jti = match claims.get("jti") {
        Some(Value::String(j)) if is_jti(j) => j.clone(),
        other => return Err(format!("jti is {}, expected 32 lowercase hex digits", shown(other))),
    };
    if seen_jtis.contains(&jti) {
        return Err(format!("jti {jti} was already seen in this run"));
    }
    if claims.contains_key("sub") {
        return Err("the SET has a sub claim (SSF §4.1.2 forbids it)".into());
    }
    if claims.contains_key("exp") {
        return Err("the SET has an exp claim (SSF §4.1.7 forbids it)".into());
    }
    match claims.get("events") {
        Some(Value::Object(events)) if events.len() == 1 => {
            let (event_type, payload) = events.iter().next().expect("one member");
            if !payload.is_object() {
                return Err(format!("event {event_type} is {payload}, expected an object"));
            }
        }
        Some(Value::Object(events)) => {
            return Err(format!("events has {} members, expected exactly one", events.len()));
        }
        other => return Err(format!("events is {}, expected an object", shown(other))),
    }
    match claims.get("sub_id").and_then(|s| s.get("format")) {
        Some(Value::String(f)) if !f.is_empty() => {}
        _ => return Err(format!("sub_id is {}, expected an object with a format", shown(claims.get("sub_id")))),
    }

    seen_jtis.insert(jti);
    Ok(Value::Object(claims))
}

/// A base64url (unpadded) JSON object.
fn decode_object(part: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|e| format!("not unpadded base64url ({e})"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("a JSON {}, expected an object", kind(&other))),
        Err(e) => Err(format!("not JSON ({e})")),
    }
}

/// The keys of a JWKS whose `kid` is `kid`; an error when the document is not a JWKS.
fn keys_with_kid<'a>(jwks: &'a Value, kid: &str) -> Result<Vec<&'a Value>, String> {
    let keys = jwks.get("keys").and_then(Value::as_array).ok_or("not a JWKS (no keys array)")?;
    Ok(keys.iter().filter(|k| k.get("kid").and_then(Value::as_str) == Some(kid)).collect())
}

/// An RS256 verification key from a JWK: `kty` RSA, `alg` RS256 and `use` sig when present,
/// a modulus of at least [`MIN_RSA_BITS`].
fn rsa_key(jwk: &Value) -> Result<DecodingKey, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    if field("kty") != Some("RSA") {
        return Err(format!("kty is {}, expected \"RSA\"", shown(jwk.get("kty"))));
    }
    if jwk.get("alg").is_some() && field("alg") != Some(SET_ALG) {
        return Err(format!("alg is {}, expected \"{SET_ALG}\"", shown(jwk.get("alg"))));
    }
    if jwk.get("use").is_some() && field("use") != Some("sig") {
        return Err(format!("use is {}, expected \"sig\"", shown(jwk.get("use"))));
    }
    let (Some(n), Some(e)) = (field("n"), field("e")) else {
        return Err("n or e is missing".into());
    };
    let modulus = URL_SAFE_NO_PAD.decode(n).map_err(|e| format!("n is not unpadded base64url ({e})"))?;
    let bits = bit_length(&modulus);
    if bits < MIN_RSA_BITS {
        return Err(format!("the modulus has {bits} bits, fewer than {MIN_RSA_BITS}"));
    }
    DecodingKey::from_rsa_components(n, e).map_err(|err| format!("not a usable RSA key ({err})"))
}

/// The bit length of a big-endian unsigned integer.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b != 0) {
        Some(i) => (bytes.len() - i - 1) * 8 + (8 - bytes[i].leading_zeros() as usize),
        None => 0,
    }
}

/// 32 lowercase hex digits: 128 random bits, as SSF.md §2 makes `jti`.
fn is_jti(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A claim's value for an error message (`absent` when missing).
fn shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "absent".to_string(), Value::to_string)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The checker against SETs signed here with a fixed throwaway key: one valid SET, then one
/// case per rule that must fail.
mod self_test {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    /// A 2048-bit RSA key made with `openssl genrsa 2048` for these tests only. It signs nothing
    /// outside them.
    const TEST_KEY_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEAy5R74jmfNy06u2GXWo2rfDHf79SSwfPl7Uhkapvt9hKsakJ0
AkHHpCIKJn1pSJT63cka03VlzdXbUEWAUsiyrWZt68x73RRHnTcFwvXWHY3LF9ZK
jl7B27lqL/V9hEd7mi43uPUQdBH3eA3hr2OZbBXykJlD21tfoETNozbTCwpAqYge
MIX5N68v6Tq8jlSU3oiXM9YmdS+3Trc100mvIXGQC9vFgybobCX5OQPLWDpqk4Wr
pi22v3Nnwe66+uva5qSUTbI71bH8DKEyZGD4quuSga3JOJufRTMD1ZYXYGx3+NS8
DB1EMUnsdSvByBIFWAlVAmgVZxtrRPJRw3uLrQIDAQABAoIBAAnxo514urtbZQzb
EaVgLySpW6q0zkMACAFE8cwNTXHMFrTisGpIeUPIpTNHw+6Xgat3U8KexOK+0/AX
UlMjhNVtypJj0hcJ6GJDBO/cHzchV8QUeQl8PRQ0+dKu4eXQsgu6vzO0cLcisNz3
MfNltjbuhC3Q9rIObrIpj4aDOorFlqDOZaSn+7JKEhQ1AZ3GMeSEy9IlzNE3iDC5
RYW6SN9Z3y77jy9wrk2EwXU92i5EsP6pdw08SgUQNOwGF5A64iS5tFM6bW80oq+g
zo38fFPovB51ox1WnfA7iGiEKv+j/mM/pc3YZWmOkEr0yCkzHZG9/+NcZrFe17JL
KQnk16cCgYEA51jq4M7dJ3Kwi/E0LIwmm4FLEunmyQu8iZWd/X6z45/oxxDY5aYB
iyyJvm/X5BqS4TltPw/73op7AgRI/HOH4phJXRtkok7FG3KP5Ly2PIyUdrRdW7ZX
s15vN00BSD7ciQX0HwvqF4jzoiUUi0ihY2vyVRalELUkl9YsbNEoIKsCgYEA4UYV
LGWRYuvkeVJ6quxE881wB/qHEof78xIVG8fnuvstVe1sZVk7PlZN0fG7XSXworAR
ORiZkq8e+KD6DZ71ojVxuS5gr7i91iUBEWZvJQ/ftbr3j5d6o6+73t6cSQI222Bh
nYjT0LVLVT2ZHbwn3TtjhXhXOgb/Oxc3ZlJd9QcCgYEAhOtrl9qC6iVVFjJxfZ7Q
l8wDbEyDUsOxgYM7EOh5RrEbtzQQynFEtcfTJF1yNxaliU3LXM48MjJyVkhL/vAK
BMDmdd5FRZPoX8rErfFW6xcCPemHMihj3yTE1Ysiz3V+lCOdjTD1QKxo/qI7WYNT
ZqIgy46FLEJHUg213JeXbJ0CgYApWfH9Ck/btq1jz84QnfoyPp23+TbeIfQPtFwH
k3RoED9MLJ7fI7gKQ1FZnmPkP1iipGsk7e0Sze6DeRktcuZn9iN/+JFq8CB4tKYz
iXgRd457D2zuAMJUVafIy1go1q03K8P/ZORsxTqk1P/MQ4OVypcEIwjv7+Td9e8H
a0sv9QKBgQCLYUnY9WFn3hK4NxSall4Jfd/dWn1/990uH/35VjU21NQ44wNhpC+4
9DmeRay22nvt21YuORoAtOa59AO7ZSEBDCnA7e1CJVfgYyNQ5lWFs2PL8RahNNb+
5EwI19rMfZNyWBze3NZJLPygJ6WjRlHJmYKE/CEHZUW6fCoRJgUz+A==
-----END RSA PRIVATE KEY-----";
    /// The public half of [`TEST_KEY_PEM`] (its JWK `n` and `e`).
    const TEST_KEY_N: &str = "y5R74jmfNy06u2GXWo2rfDHf79SSwfPl7Uhkapvt9hKsakJ0AkHHpCIKJn1pSJT63cka03VlzdXbUEWAUsiyrWZt68x73RRHnTcFwvXWHY3LF9ZKjl7B27lqL_V9hEd7mi43uPUQdBH3eA3hr2OZbBXykJlD21tfoETNozbTCwpAqYgeMIX5N68v6Tq8jlSU3oiXM9YmdS-3Trc100mvIXGQC9vFgybobCX5OQPLWDpqk4Wrpi22v3Nnwe66-uva5qSUTbI71bH8DKEyZGD4quuSga3JOJufRTMD1ZYXYGx3-NS8DB1EMUnsdSvByBIFWAlVAmgVZxtrRPJRw3uLrQ";
    const TEST_KEY_E: &str = "AQAB";

    pub const KID: &str = "ssf-test-1";
    pub const ISSUER: &str = "http://127.0.0.1:8080";
    pub const AUD: &str = "billing";
    const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

    /// The PKCS#1 DER inside the PEM (jsonwebtoken's `from_rsa_pem` needs its `use_pem`
    /// feature, which the workspace leaves off).
    fn encoding_key() -> EncodingKey {
        let b64: String = TEST_KEY_PEM.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(b64).expect("the test key is base64");
        EncodingKey::from_rsa_der(&der)
    }

    /// The SSF JWKS holding the test key under [`KID`].
    pub fn jwks() -> Value {
        json!({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID, "n": TEST_KEY_N, "e": TEST_KEY_E}]})
    }

    /// An access-token JWKS with an unrelated EdDSA key.
    pub fn access_jwks() -> Value {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "access-1",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]})
    }

    pub fn now() -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
    }

    /// A valid SET's header.
    pub fn header() -> Value {
        json!({"typ": SET_TYP, "alg": SET_ALG, "kid": KID})
    }

    /// A valid session-revoked SET's claims with this `jti`.
    pub fn claims(jti: &str) -> Value {
        json!({
            "iss": ISSUER, "aud": AUD, "iat": now(), "jti": jti, "txn": "tx_3f9a1c",
            "sub_id": {"format": "complex", "user": {"format": "iss_sub", "iss": ISSUER, "sub": "u_7Hq2"},
                       "session": {"format": "opaque", "id": "s_Kx91"}},
            "events": {SESSION_REVOKED: {"event_timestamp": now(), "initiating_entity": "user",
                                         "reason_admin": {"en": "logout"}}}
        })
    }

    /// Any header and claims, signed RS256 with the test key whatever the header says.
    pub fn sign(header: &Value, claims: &Value) -> String {
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &encoding_key(), Algorithm::RS256).unwrap();
        format!("{input}.{signature}")
    }

    pub fn jti(n: u8) -> String {
        format!("{n:02x}").repeat(16)
    }

    fn check(set: &str) -> Result<Value, String> {
        check_c0(set, &jwks(), &access_jwks(), ISSUER, AUD, &mut HashSet::new())
    }

    /// `object` with `field` set to `value`, or removed when `value` is `None`.
    fn edited(mut object: Value, field: &str, value: Option<Value>) -> Value {
        let map = object.as_object_mut().unwrap();
        match value {
            Some(v) => map.insert(field.into(), v),
            None => map.remove(field),
        };
        object
    }

    /// Signs `claims(jti(1))` with `field` changed, and expects C0 to fail with a message
    /// containing `expected`.
    fn fails_with_claim(field: &str, value: Option<Value>, expected: &str) {
        fails(&sign(&header(), &edited(claims(&jti(1)), field, value)), expected);
    }

    fn fails_with_header(field: &str, value: Option<Value>, expected: &str) {
        fails(&sign(&edited(header(), field, value), &claims(&jti(1))), expected);
    }

    fn fails(set: &str, expected: &str) {
        match check(set) {
            Ok(_) => panic!("C0 accepted a SET that should fail with {expected:?}"),
            Err(e) => assert!(e.contains(expected), "C0 failed with {e:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn a_valid_set_passes_and_its_claims_come_back() {
        let mut seen = HashSet::new();
        let set = sign(&header(), &claims(&jti(1)));
        let got = check_c0(&set, &jwks(), &access_jwks(), ISSUER, AUD, &mut seen).unwrap();
        assert_eq!(got["jti"], jti(1));
        assert_eq!(got["sub_id"], claims(&jti(1))["sub_id"]);
        assert_eq!(got["events"][SESSION_REVOKED]["reason_admin"]["en"], "logout");
        assert!(seen.contains(&jti(1)));
        // An array aud holding only the stream's aud is the same audience (RFC 7519 §4.1.3).
        let c = edited(claims(&jti(2)), "aud", Some(json!([AUD])));
        check_c0(&sign(&header(), &c), &jwks(), &access_jwks(), ISSUER, AUD, &mut seen).unwrap();
        // iat within the skew allowance.
        let c = edited(claims(&jti(3)), "iat", Some(json!(now() + IAT_SKEW_SECS - 1)));
        check_c0(&sign(&header(), &c), &jwks(), &access_jwks(), ISSUER, AUD, &mut seen).unwrap();
    }

    #[test]
    fn structure_and_header_rules() {
        fails("a.b", "not a compact JWS");
        fails("a.b.c.d.e", "not a compact JWS");
        fails("!!.e30.sig", "header: not unpadded base64url");
        fails(&format!("{}.e30.sig", URL_SAFE_NO_PAD.encode("[1]")), "header: a JSON array");
        fails_with_header("typ", None, "header typ is absent");
        fails_with_header("typ", Some(json!("JWT")), "header typ is \"JWT\"");
        fails_with_header("typ", Some(json!("application/secevent+jwt")), "header typ");
        fails_with_header("alg", Some(json!("ES256")), "header alg is \"ES256\"");
        fails_with_header("alg", Some(json!("none")), "header alg is \"none\"");
        fails_with_header("kid", None, "header kid is absent");
        fails_with_header("kid", Some(json!("")), "header kid is \"\"");
    }

    #[test]
    fn key_rules() {
        let set = sign(&header(), &claims(&jti(1)));
        let mut seen = HashSet::new();
        let run = |jwks: &Value, access: &Value, seen: &mut HashSet<String>| {
            check_c0(&set, jwks, access, ISSUER, AUD, seen).unwrap_err()
        };
        // kid not in the SSF JWKS.
        let mut other = jwks();
        other["keys"][0]["kid"] = json!("ssf-test-2");
        assert!(run(&other, &access_jwks(), &mut seen).contains("is not in the SSF JWKS"));
        assert!(run(&json!({}), &access_jwks(), &mut seen).contains("not a JWKS"));
        // kid twice in the SSF JWKS.
        let mut twice = jwks();
        let key = twice["keys"][0].clone();
        twice["keys"].as_array_mut().unwrap().push(key);
        assert!(run(&twice, &access_jwks(), &mut seen).contains("more than once"));
        // kid shared with the access-token JWKS.
        let mut shared = access_jwks();
        shared["keys"].as_array_mut().unwrap().push(jwks()["keys"][0].clone());
        assert!(run(&jwks(), &shared, &mut seen).contains("also in the access-token JWKS"));
        // Not an RSA key, a wrong alg or use, no modulus.
        for (field, value, expected) in [
            ("kty", json!("EC"), "kty is \"EC\""),
            ("alg", json!("PS256"), "alg is \"PS256\""),
            ("use", json!("enc"), "use is \"enc\""),
            ("n", Value::Null, "n or e is missing"),
        ] {
            let mut bad = jwks();
            bad["keys"][0][field] = value;
            let e = run(&bad, &access_jwks(), &mut seen);
            assert!(e.contains(expected), "{field}: {e}");
        }
        // A modulus under 2048 bits: the test key's top 1024 bits.
        let mut small = jwks();
        let n = URL_SAFE_NO_PAD.decode(TEST_KEY_N).unwrap();
        small["keys"][0]["n"] = json!(URL_SAFE_NO_PAD.encode(&n[..128]));
        assert!(run(&small, &access_jwks(), &mut seen).contains("1024 bits, fewer than 2048"));
        // A 2047-bit modulus is refused too (bit length, not byte length).
        let mut short = n.clone();
        short[0] = 0x7f;
        small["keys"][0]["n"] = json!(URL_SAFE_NO_PAD.encode(&short));
        assert!(run(&small, &access_jwks(), &mut seen).contains("2047 bits"));
        assert!(seen.is_empty(), "a failing SET records no jti");
    }

    #[test]
    fn signature_rules() {
        let set = sign(&header(), &claims(&jti(1)));
        let (input, signature) = set.rsplit_once('.').unwrap();
        // Claims changed after signing.
        let (header_b64, _) = input.split_once('.').unwrap();
        let mut forged_claims = claims(&jti(1));
        forged_claims["sub_id"]["user"]["sub"] = json!("u_other");
        let forged = format!("{header_b64}.{}.{signature}", URL_SAFE_NO_PAD.encode(forged_claims.to_string()));
        fails(&forged, "does not verify");
        // A signature that is not this key's: the test key's signature of other bytes.
        let other = sign(&header(), &claims(&jti(2)));
        let other_signature = other.rsplit_once('.').unwrap().1;
        fails(&format!("{input}.{other_signature}"), "does not verify");
        // No signature, or one that is not base64url.
        fails(&format!("{input}."), "signature");
        fails(&format!("{input}.***"), "signature cannot be checked");
        // The right signature under another key of the same JWKS kid: the verifier uses the key,
        // not the kid alone.
        let mut wrong_key = jwks();
        let mut n = URL_SAFE_NO_PAD.decode(TEST_KEY_N).unwrap();
        n[255] ^= 0x04;
        wrong_key["keys"][0]["n"] = json!(URL_SAFE_NO_PAD.encode(&n));
        let e = check_c0(&set, &wrong_key, &access_jwks(), ISSUER, AUD, &mut HashSet::new()).unwrap_err();
        assert!(e.contains("does not verify") || e.contains("cannot be checked"), "{e}");
    }

    #[test]
    fn claim_rules() {
        fails(&sign(&header(), &json!(["not", "an", "object"])), "payload: a JSON array");
        fails_with_claim("iss", Some(json!("https://evil")), "iss is \"https://evil\"");
        fails_with_claim("iss", Some(json!(format!("{ISSUER}/"))), "iss is");
        fails_with_claim("iss", None, "iss is absent");
        fails_with_claim("aud", Some(json!("other")), "aud is \"other\"");
        fails_with_claim("aud", Some(json!([AUD, "other"])), "aud is");
        fails_with_claim("aud", None, "aud is absent");
        fails_with_claim("iat", Some(json!(now() + 60)), "more than 5 s after now");
        fails_with_claim("iat", Some(json!("1767225601")), "iat is \"1767225601\"");
        fails_with_claim("iat", None, "iat is absent");
        fails_with_claim("jti", None, "jti is absent");
        fails_with_claim("jti", Some(json!("4D3559EC67504AABA65D40B0363FAAD8")), "jti is");
        fails_with_claim("jti", Some(json!("4d3559ec67504aaba65d40b0363faad")), "jti is");
        fails_with_claim("jti", Some(json!("4d3559ec-6750-4aab-a65d-40b0363faad8")), "jti is");
        fails_with_claim("jti", Some(json!(7)), "jti is 7");
        fails_with_claim("sub", Some(json!("u_7Hq2")), "sub claim");
        fails_with_claim("exp", Some(json!(now() + 600)), "exp claim");
        fails_with_claim("events", None, "events is absent");
        fails_with_claim("events", Some(json!({})), "0 members");
        let two =
            json!({SESSION_REVOKED: {}, "https://schemas.openid.net/secevent/risc/event-type/account-disabled": {}});
        fails_with_claim("events", Some(two), "2 members");
        fails_with_claim("events", Some(json!([SESSION_REVOKED])), "events is [");
        fails_with_claim("events", Some(json!({SESSION_REVOKED: true})), "expected an object");
        fails_with_claim("sub_id", None, "sub_id is absent");
        fails_with_claim("sub_id", Some(json!({"id": "s_Kx91"})), "sub_id is");
        fails_with_claim("sub_id", Some(json!("u_7Hq2")), "sub_id is");
    }

    #[test]
    fn a_jti_is_accepted_once_per_run() {
        let mut seen = HashSet::new();
        let first = sign(&header(), &claims(&jti(9)));
        check_c0(&first, &jwks(), &access_jwks(), ISSUER, AUD, &mut seen).unwrap();
        // Another SET (another iat or event) reusing the jti.
        let c = edited(claims(&jti(9)), "txn", Some(json!("tx_other")));
        let e = check_c0(&sign(&header(), &c), &jwks(), &access_jwks(), ISSUER, AUD, &mut seen).unwrap_err();
        assert!(e.contains("already seen"), "{e}");
        // The same bytes again too: a retry is compared by bytes by the caller, not re-checked.
        let e = check_c0(&first, &jwks(), &access_jwks(), ISSUER, AUD, &mut seen).unwrap_err();
        assert!(e.contains("already seen"), "{e}");
    }

    #[test]
    fn bit_length_counts_bits() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[1]), 1);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&URL_SAFE_NO_PAD.decode(TEST_KEY_N).unwrap()), 2048);
    }
}

//! Property tests of everything that parses attacker-controlled input before any
//! authentication: the access-token verification pipeline, the WebSocket message parser, the
//! `Authorization` header parser and the refresh-token format. Pure library calls, no server.
//!
//! Case counts are kept moderate so the binary runs in a few seconds in the debug profile;
//! `PROPTEST_CASES=10000 cargo test --test props` runs a longer search.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use sessiond::error::AppError;
use sessiond::http::extract::bearer;
use sessiond::hub::protocol::{parse, ClientMessage, ParseError};
use sessiond::store::KeyRow;
use sessiond::tokens::jwt::{generate_key, Claims, Keys, VerifyError, LEEWAY_SECS, MAX_TOKEN_LEN};
use sessiond::tokens::refresh::{RefreshToken, TOKEN_LEN};

const ISS: &str = "https://issuer.test";
const AUD: &str = "sessiond-props";
const TTL: Duration = Duration::from_secs(900);
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// ---------------------------------------------------------------------------------------------
// Fixtures and generators
// ---------------------------------------------------------------------------------------------

/// `jsonwebtoken` checks `exp`/`nbf` against the system clock as well as our own check against
/// the `now` we pass, so every test uses the real time.
fn real_now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

/// One keyset shared by the tests (and so one verification cache, shared across threads).
struct Fixture {
    keys: Keys,
    row: KeyRow,
    signer: SigningKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let now = real_now_ms();
        let keys = Keys::new(ISS, AUD, TTL);
        let row = generate_key(now, now);
        keys.load(std::slice::from_ref(&row), now);
        let signer = SigningKey::from_pkcs8_der(&row.private_der).expect("generated key is PKCS#8");
        Fixture { keys, row, signer }
    })
}

fn kid() -> String {
    fixture().row.kid.clone()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

fn arb_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=max).prop_map(|c| c.into_iter().collect())
}

fn arb_nonempty_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 1..=max).prop_map(|c| c.into_iter().collect())
}

/// Any JSON value, nested a few levels.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        arb_string(24).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((arb_string(8), inner), 0..5).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A JOSE header: mostly our own shape with fields swapped for hostile values, sometimes
/// anything at all. `v` is the weight of each valid choice against 1 for each hostile one.
fn arb_header(kid: String, v: u32) -> impl Strategy<Value = Value> {
    let alg = prop_oneof![
        v => Just(json!("EdDSA")),
        1 => Just(json!("eddsa")),
        1 => Just(json!("HS256")),
        1 => Just(json!("none")),
        1 => Just(json!("RS256")),
        1 => Just(json!("ES256")),
        1 => arb_json(),
    ];
    let typ = prop_oneof![
        v => Just(json!("at+jwt")),
        1 => Just(json!("AT+JWT")),
        1 => Just(json!("application/at+jwt")),
        1 => Just(json!("JWT")),
        1 => arb_json(),
    ];
    let kid = prop_oneof![
        v => Just(json!(kid)),
        1 => arb_string(50).prop_map(Value::String),
        1 => arb_json(),
    ];
    let extra_name = prop_oneof![
        Just("jku".to_string()),
        Just("jwk".to_string()),
        Just("x5u".to_string()),
        Just("x5c".to_string()),
        Just("crit".to_string()),
        Just("b64".to_string()),
        Just("cty".to_string()),
        arb_string(8),
    ];
    let structured = (
        prop::option::weighted(0.95, alg),
        prop::option::weighted(0.95, typ),
        prop::option::weighted(0.95, kid),
        prop::option::weighted(0.15, (extra_name, arb_json())),
    )
        .prop_map(|(alg, typ, kid, extra)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [("alg", alg), ("typ", typ), ("kid", kid)] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            if let Some((k, v)) = extra {
                m.insert(k, v);
            }
            Value::Object(m)
        });
    prop_oneof![v => structured, 1 => arb_json()]
}

/// Access-token claims: mostly near-valid (around `now`), with each field sometimes missing,
/// of the wrong type or out of range. `v` as in [`arb_header`].
fn arb_payload(now_secs: i64, v: u32) -> impl Strategy<Value = Value> {
    let text = move |valid: &'static str| {
        prop_oneof![
            v => Just(json!(valid)),
            1 => arb_string(20).prop_map(Value::String),
            1 => arb_json(),
        ]
    };
    let aud = prop_oneof![
        v => Just(json!(AUD)),
        1 => Just(json!([AUD])),
        1 => Just(json!([AUD, "other"])),
        1 => arb_string(20).prop_map(Value::String),
        1 => arb_json(),
    ];
    let id = move || {
        prop_oneof![
            v => arb_nonempty_string(20).prop_map(Value::String),
            1 => Just(json!("")),
            1 => arb_json(),
        ]
    };
    let time = move |lo: i64, hi: i64| {
        prop_oneof![
            v => (lo..hi).prop_map(move |d| json!(now_secs + d)),
            1 => any::<i64>().prop_map(Value::from),
            1 => any::<u64>().prop_map(Value::from),
            1 => Just(json!(now_secs as f64 + 0.5)),
            1 => arb_json(),
        ]
    };
    let roles = prop_oneof![
        v => prop::collection::vec(arb_string(10), 0..4).prop_map(|r| json!(r)),
        1 => arb_json(),
    ];
    let fields = (
        (
            prop::option::weighted(0.95, text(ISS)),
            prop::option::weighted(0.95, aud),
            prop::option::weighted(0.95, id()),
            prop::option::weighted(0.95, id()),
            prop::option::weighted(0.95, id()),
        ),
        (
            prop::option::weighted(0.95, time(-120, 60)),
            prop::option::weighted(0.95, time(-120, 3600)),
            prop::option::weighted(0.95, roles),
            prop::option::weighted(0.1, time(-120, 120)),
            prop::option::weighted(0.1, (arb_string(8), arb_json())),
        ),
    );
    let structured = fields.prop_map(|((iss, aud, sub, sid, jti), (iat, exp, roles, nbf, extra))| {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("iss", iss),
            ("aud", aud),
            ("sub", sub),
            ("sid", sid),
            ("jti", jti),
            ("iat", iat),
            ("exp", exp),
            ("roles", roles),
            ("nbf", nbf),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        }
        if let Some((k, v)) = extra {
            m.insert(k, v);
        }
        Value::Object(m)
    });
    prop_oneof![v => structured, 1 => arb_json()]
}

/// How a segment is put on the wire: mostly right, sometimes with the encodings JWS forbids.
fn arb_encoding() -> impl Strategy<Value = u8> {
    prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)]
}

fn encode_segment(bytes: &[u8], how: u8) -> String {
    match how {
        0 => URL_SAFE_NO_PAD.encode(bytes),
        1 => URL_SAFE.encode(bytes),
        2 => STANDARD.encode(bytes),
        _ => latin1(bytes),
    }
}

fn arb_claims_input() -> impl Strategy<Value = (String, String, Vec<String>)> {
    (arb_nonempty_string(40), arb_nonempty_string(40), prop::collection::vec(arb_string(12), 0..4))
}

/// What `verify` must answer for a JSON payload signed by a loaded key under an acceptable
/// header, by the contract (docs/API.md §3.1).
#[derive(Debug)]
enum Verdict {
    Accept(Claims),
    Refuse,
    /// Within a few seconds of an `exp`/`nbf` boundary: `jsonwebtoken` also checks those
    /// against the system clock, which moves on while the test runs.
    Either(Claims),
}

fn payload_verdict(payload: &Value, now_secs: i64) -> Verdict {
    let Ok(c) = serde_json::from_value::<Claims>(payload.clone()) else { return Verdict::Refuse };
    let near = |t: i64| t.abs_diff(now_secs) <= 5;
    let (nbf_ok, nbf_near) = match payload.get("nbf") {
        None => (true, false),
        // A NumericDate: jsonwebtoken takes a non-negative integer, or a float it rounds.
        Some(v) => match v.as_u64().or_else(|| {
            v.as_f64().filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64).map(|f| f.round() as u64)
        }) {
            Some(n) => {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                (n <= now_secs + LEEWAY_SECS, near(n.saturating_sub(LEEWAY_SECS)))
            }
            None => (false, false),
        },
    };
    let exp_ok = c.exp >= 0 && c.exp.saturating_add(LEEWAY_SECS) >= now_secs;
    let exp_near = c.exp >= 0 && near(c.exp.saturating_add(LEEWAY_SECS));
    let ok = c.iss == ISS
        && c.aud == AUD
        && !c.sub.is_empty()
        && !c.sid.is_empty()
        && !c.jti.is_empty()
        && c.iat <= now_secs + LEEWAY_SECS;
    if !ok {
        Verdict::Refuse
    } else if exp_near || nbf_near {
        Verdict::Either(c)
    } else if exp_ok && nbf_ok {
        Verdict::Accept(c)
    } else {
        Verdict::Refuse
    }
}

fn header_acceptable(header: &Value) -> bool {
    let Some(h) = header.as_object() else { return false };
    h.keys().all(|k| ["alg", "typ", "kid"].contains(&k.as_str()))
        && h.get("alg") == Some(&json!("EdDSA"))
        && h.get("typ")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt"))
        && h.get("kid") == Some(&json!(kid()))
}

// ---------------------------------------------------------------------------------------------
// Access-token verification
// ---------------------------------------------------------------------------------------------

fn verify_all_ways(keys: &Keys, token: &str, now: i64) -> Result<Claims, VerifyError> {
    let first = keys.verify(token, now);
    // Again, now possibly from the cache, and once without it: all three must agree.
    assert_eq!(keys.verify(token, now), first, "second verification (cache) disagrees");
    assert_eq!(keys.verify_with(token, now, false), first, "verification without remembering disagrees");
    first
}

proptest! {
    #![proptest_config(Config::with_cases(256))]

    #[test]
    fn p_verify_never_panics_nor_accepts_arbitrary_strings(s in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.=+/-]{0,600}",
        "[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,100}",
    ]) {
        let now = real_now_ms() / 1000;
        prop_assert!(verify_all_ways(&fixture().keys, &s, now).is_err());
    }

    #[test]
    fn p_verify_never_panics_nor_accepts_arbitrary_bytes_as_latin1(
        bytes in prop::collection::vec(any::<u8>(), 0..700),
        dots in prop::collection::vec(any::<Index>(), 0..4),
    ) {
        let mut bytes = bytes;
        for d in dots {
            if !bytes.is_empty() {
                let i = d.index(bytes.len());
                bytes[i] = b'.';
            }
        }
        let now = real_now_ms() / 1000;
        prop_assert!(verify_all_ways(&fixture().keys, &latin1(&bytes), now).is_err());
    }

    #[test]
    fn p_verify_never_panics_nor_accepts_structured_near_jwts(
        header in arb_header(kid(), 12),
        payload in arb_payload(real_now_ms() / 1000, 12),
        sig in prop_oneof![
            prop::collection::vec(any::<u8>(), 64),
            prop::collection::vec(any::<u8>(), 0..100),
        ],
        encodings in (arb_encoding(), arb_encoding(), arb_encoding()),
        shape in prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
    ) {
        let h = encode_segment(header.to_string().as_bytes(), encodings.0);
        let p = encode_segment(payload.to_string().as_bytes(), encodings.1);
        let s = encode_segment(&sig, encodings.2);
        let token = match shape {
            0 => format!("{h}.{p}.{s}"),
            1 => format!("{h}.{p}"),
            2 => format!("{h}.{p}.{s}.{s}"),
            _ => format!("{h}.{p}.{s}{}", "A".repeat(MAX_TOKEN_LEN)),
        };
        let now = real_now_ms() / 1000;
        prop_assert!(verify_all_ways(&fixture().keys, &token, now).is_err());
    }

    /// Tokens minted by another key under the loaded key's kid (the other keyset accepts them).
    #[test]
    fn p_verify_never_accepts_a_token_signed_by_another_key_under_a_spoofed_kid(
        (sub, sid, roles) in arb_claims_input(),
        ttl_secs in 1i64..3600,
        verify_legit_first in any::<bool>(),
    ) {
        let f = fixture();
        let now = real_now_ms();
        let mut other = generate_key(now, now);
        other.kid = f.row.kid.clone();
        let attacker = Keys::new(ISS, AUD, TTL);
        attacker.load(std::slice::from_ref(&other), now);
        let (forged, _) = attacker.issue(&sub, &sid, roles.clone(), now, now + ttl_secs * 1000).unwrap();
        prop_assert!(attacker.verify(&forged, now / 1000).is_ok(), "the forger's own keyset accepts it");
        if verify_legit_first {
            let (legit, _) = f.keys.issue(&sub, &sid, roles, now, now + ttl_secs * 1000).unwrap();
            prop_assert!(f.keys.verify(&legit, now / 1000).is_ok());
        }
        prop_assert_eq!(
            verify_all_ways(&f.keys, &forged, now / 1000),
            Err(VerifyError::Invalid("signature or claims"))
        );
    }

    /// A key that left the keyset takes its tokens with it, cached or not.
    #[test]
    fn p_verify_never_accepts_a_token_of_a_key_that_is_no_longer_loaded(
        (sub, sid, roles) in arb_claims_input(),
        cached in any::<bool>(),
    ) {
        let now = real_now_ms();
        let keys = Keys::new(ISS, AUD, TTL);
        let (old, new) = (generate_key(now, now), generate_key(now, now));
        keys.load(std::slice::from_ref(&old), now);
        let (token, _) = keys.issue(&sub, &sid, roles, now, now + 60_000).unwrap();
        if cached {
            prop_assert!(keys.verify(&token, now / 1000).is_ok());
        }
        keys.load(std::slice::from_ref(&new), now);
        prop_assert_eq!(verify_all_ways(&keys, &token, now / 1000), Err(VerifyError::Invalid("unknown kid")));
    }

    /// Any one character of a valid token replaced: refused, or (only if the change decodes to
    /// the very same bytes, which strict base64 forbids) accepted with the very same claims.
    #[test]
    fn p_verify_refuses_any_single_character_mutation_of_a_valid_token(
        (sub, sid, roles) in arb_claims_input(),
        at in any::<Index>(),
        replacement in prop_oneof![
            6 => prop::sample::select(B64URL.to_vec()).prop_map(char::from),
            1 => Just('.'),
            1 => Just('='),
            1 => any::<char>(),
        ],
        verify_original_first in any::<bool>(),
    ) {
        let f = fixture();
        let now = real_now_ms();
        let (token, _) = f.keys.issue(&sub, &sid, roles, now, now + 300_000).unwrap();
        let original = if verify_original_first { Some(f.keys.verify(&token, now / 1000).unwrap()) } else { None };
        let i = at.index(token.len());
        prop_assume!(token.as_bytes()[i] as char != replacement);
        let mut mutated = token.clone();
        mutated.replace_range(i..i + 1, replacement.encode_utf8(&mut [0; 4]));
        match verify_all_ways(&f.keys, &mutated, now / 1000) {
            Err(_) => {}
            Ok(claims) => {
                let original = original.unwrap_or_else(|| f.keys.verify(&token, now / 1000).unwrap());
                prop_assert_eq!(claims, original, "a mutated token was accepted with other claims");
            }
        }
        prop_assert!(f.keys.verify(&token, now / 1000).is_ok(), "the original still verifies");
    }

    /// The classic algorithm confusion: HMAC over the token with the public key as the secret.
    #[test]
    fn p_verify_refuses_tokens_resigned_with_hmac_using_the_public_key(
        (sub, sid, roles) in arb_claims_input(),
        alg in prop::sample::select(vec!["HS256", "HS384", "HS512", "hs256", "EdDSA", "none", "RS256", "ES256"]),
        secret in 0u8..5,
    ) {
        let f = fixture();
        let now = real_now_ms();
        let (valid, _) = f.keys.issue(&sub, &sid, roles, now, now + 300_000).unwrap();
        let payload = valid.split('.').nth(1).unwrap().to_string();
        let header = b64(json!({"alg": alg, "typ": "at+jwt", "kid": f.row.kid}).to_string());
        let message = format!("{header}.{payload}");
        let secret: Vec<u8> = match secret {
            0 => URL_SAFE_NO_PAD.decode(&f.row.public_x).unwrap(),
            1 => f.row.public_x.clone().into_bytes(),
            2 => f.keys.jwks().as_bytes().to_vec(),
            3 => f.row.kid.clone().into_bytes(),
            _ => Vec::new(),
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
        mac.update(message.as_bytes());
        let sig = b64(mac.finalize().into_bytes());
        let now = now / 1000;
        let (resigned, unsigned) = (format!("{message}.{sig}"), format!("{message}."));
        prop_assert!(verify_all_ways(&f.keys, &resigned, now).is_err(), "HMAC-signed");
        prop_assert!(verify_all_ways(&f.keys, &unsigned, now).is_err(), "unsigned");
    }

    /// A token issued by the loaded key is accepted, from the cache or not, with the claims it
    /// was issued with, until `exp` + leeway; then it is `Expired`, from the cache too.
    #[test]
    fn p_verify_accepts_a_valid_token_with_the_claims_it_was_issued_with(
        (sub, sid, roles) in arb_claims_input(),
        ttl_ms in 1i64..3_600_000,
        later_secs in 0i64..4000,
        rotated in any::<bool>(),
    ) {
        let f = fixture();
        let now = real_now_ms();
        let (token, exp) = f.keys.issue(&sub, &sid, roles.clone(), now, now + ttl_ms).unwrap();
        let iat = now.div_euclid(1000);
        prop_assert_eq!(exp, (now + ttl_ms).div_euclid(1000).max(iat + 1));
        let c = verify_all_ways(&f.keys, &token, iat).unwrap();
        prop_assert_eq!(&c.iss, ISS);
        prop_assert_eq!(&c.aud, AUD);
        prop_assert_eq!(&c.sub, &sub);
        prop_assert_eq!(&c.sid, &sid);
        prop_assert_eq!(&c.roles, &roles);
        prop_assert_eq!(c.iat, iat);
        prop_assert_eq!(c.exp, exp);
        prop_assert!(c.jti.len() == 32 && c.jti.bytes().all(|b| b.is_ascii_hexdigit()));

        // Another keyset with the same key (a rotated-in successor published next to it, or
        // not): no cache there, same answer.
        let other = Keys::new(ISS, AUD, TTL);
        let mut rows = vec![f.row.clone()];
        if rotated {
            rows.push(generate_key(now, now + 360_000));
        }
        other.load(&rows, now);
        prop_assert_eq!(verify_all_ways(&other, &token, iat), Ok(c.clone()));

        // Later: accepted until exp + leeway, then expired, for both keysets.
        let t = iat + later_secs;
        let expected = if t <= exp + LEEWAY_SECS { Ok(c) } else { Err(VerifyError::Expired) };
        prop_assert_eq!(verify_all_ways(&f.keys, &token, t), expected.clone());
        let fresh = Keys::new(ISS, AUD, TTL);
        fresh.load(std::slice::from_ref(&f.row), now);
        prop_assert_eq!(verify_all_ways(&fresh, &token, t), expected);
    }
}

/// Tokens signed by the loaded key itself, with arbitrary headers and payloads: no panic, and
/// accepted exactly when the header policy and the claims contract allow it. Checks that the
/// generators reach acceptance often enough for the property to mean something.
#[test]
fn p_verify_accepts_only_what_the_policy_allows_when_signed_by_the_loaded_key() {
    let accepted = AtomicUsize::new(0);
    let cases = 384;
    let config = Config { failure_persistence: None, ..Config::with_cases(cases) };
    let mut runner = TestRunner::new(config);
    let now = real_now_ms() / 1000;
    let strategy = (arb_header(kid(), 48), arb_payload(now, 48), any::<bool>());
    let result = runner.run(&strategy, |(header, payload, compact_json)| {
        let f = fixture();
        let (h, p) = if compact_json {
            (header.to_string(), payload.to_string())
        } else {
            (serde_json::to_string_pretty(&header).unwrap(), serde_json::to_string_pretty(&payload).unwrap())
        };
        let message = format!("{}.{}", b64(h), b64(p));
        let token = format!("{message}.{}", b64(f.signer.sign(message.as_bytes()).to_bytes()));
        let got = verify_all_ways(&f.keys, &token, now);
        let want = if token.len() <= MAX_TOKEN_LEN && header_acceptable(&header) {
            payload_verdict(&payload, now)
        } else {
            Verdict::Refuse
        };
        match (&got, &want) {
            (Ok(c), Verdict::Accept(w) | Verdict::Either(w)) => prop_assert_eq!(c, w),
            (Err(_), Verdict::Refuse | Verdict::Either(_)) => {}
            _ => prop_assert!(false, "verify gave {got:?}, the contract says {want:?}"),
        }
        if got.is_ok() {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let accepted = accepted.into_inner();
    eprintln!("{accepted} of {cases} tokens signed by the loaded key were accepted");
    assert!(accepted * 20 >= cases as usize, "only {accepted} of {cases} generated tokens were valid");
}

/// The last character of each segment carries unused low bits (base64 of 3n+1 or 3n+2 bytes):
/// a different character there can decode to the same bytes. The strict decoder refuses those
/// (non-canonical encodings); for the header and payload the signed text changes anyway.
#[test]
fn p_verify_refuses_non_canonical_trailing_bits_in_every_segment() {
    let f = fixture();
    let now = real_now_ms();
    let (token, _) = f.keys.issue("u", "s", vec!["admin".into()], now, now + 300_000).unwrap();
    let original = f.keys.verify(&token, now / 1000).unwrap();
    let ends: Vec<usize> =
        token.char_indices().filter(|&(_, c)| c == '.').map(|(i, _)| i - 1).chain([token.len() - 1]).collect();
    for end in ends {
        for &c in B64URL {
            if token.as_bytes()[end] == c {
                continue;
            }
            let mut mutated = token.clone();
            mutated.replace_range(end..end + 1, &(c as char).to_string());
            let got = verify_all_ways(&f.keys, &mutated, now / 1000);
            assert!(got.is_err(), "position {end} ← {:?} accepted: {got:?} (original {original:?})", c as char);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket messages
// ---------------------------------------------------------------------------------------------

/// What `parse` must answer for a JSON value (docs/API.md §5).
fn expected_message(v: &Value) -> Result<ClientMessage, ParseError> {
    let Some(obj) = v.as_object() else { return Err(ParseError::Violation) };
    match obj.get("type").and_then(Value::as_str) {
        Some("ping") => Ok(ClientMessage::Ping),
        Some("auth") => match obj.get("access_token").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => Ok(ClientMessage::Auth { access_token: t.to_string() }),
            _ => Err(ParseError::BadFields),
        },
        _ => Err(ParseError::Violation),
    }
}

/// JSON text of a string with every character written as a `\u` escape (surrogate pairs
/// beyond the BMP).
fn json_escape_all(s: &str) -> String {
    let mut out = String::from("\"");
    for u in s.encode_utf16() {
        out.push_str(&format!("\\u{u:04x}"));
    }
    out.push('"');
    out
}

proptest! {
    #![proptest_config(Config::with_cases(256))]

    #[test]
    fn p_ws_parse_never_panics_on_arbitrary_text(s in prop_oneof![
        any::<String>(),
        "[{}\\[\\]\":,a-z0-9 \\\\]{0,200}",
        "\\{\"type\":\"(auth|ping|Auth)\"(,\"access_token\":.{0,40})?\\}?",
    ]) {
        let _ = parse(&s);
    }

    #[test]
    fn p_ws_parse_never_panics_on_arbitrary_json_and_follows_the_contract(
        v in prop_oneof![
            arb_json(),
            (
                prop_oneof![Just(json!("auth")), Just(json!("ping")), arb_json()],
                prop::option::of(prop_oneof![arb_string(30).prop_map(Value::String), arb_json()]),
                prop::collection::vec((arb_string(8), arb_json()), 0..3),
            )
                .prop_map(|(ty, tok, extra)| {
                    let mut m: serde_json::Map<String, Value> = extra.into_iter().collect();
                    m.insert("type".into(), ty);
                    if let Some(t) = tok {
                        m.insert("access_token".into(), t);
                    }
                    Value::Object(m)
                }),
        ],
        pretty in any::<bool>(),
    ) {
        let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
        prop_assert_eq!(parse(&text), expected_message(&v));
    }

    #[test]
    fn p_ws_parse_returns_exactly_the_access_token_of_a_valid_auth(
        s in prop_oneof![
            arb_nonempty_string(600),
            "[A-Za-z0-9_-]{10,300}\\.[A-Za-z0-9_-]{10,600}\\.[A-Za-z0-9_-]{86}",
        ],
        escape_all in any::<bool>(),
        extra in prop::collection::vec((arb_string(8), arb_json()), 0..3),
        token_first in any::<bool>(),
    ) {
        let token = if escape_all { json_escape_all(&s) } else { Value::String(s.clone()).to_string() };
        let mut fields = vec![format!(r#""type":"auth""#), format!(r#""access_token":{token}"#)];
        if token_first {
            fields.swap(0, 1);
        }
        for (k, v) in extra {
            if k != "type" && k != "access_token" {
                fields.push(format!("{}:{v}", Value::String(k)));
            }
        }
        let text = format!("{{{}}}", fields.join(","));
        prop_assert_eq!(parse(&text), Ok(ClientMessage::Auth { access_token: s }));
    }

    #[test]
    fn p_ws_parse_refuses_unknown_types_as_a_violation(
        ty in prop_oneof![
            arb_string(20).prop_filter("known type", |t| t != "auth" && t != "ping").prop_map(Value::String),
            Just(json!("Auth")),
            Just(json!("PING")),
            Just(json!(" ping")),
            arb_json().prop_filter("a string", |v| !v.is_string()),
        ],
        token in arb_nonempty_string(20),
    ) {
        let text = json!({"type": ty, "access_token": token}).to_string();
        prop_assert_eq!(parse(&text), Err(ParseError::Violation));
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization header
// ---------------------------------------------------------------------------------------------

fn headers_with(value: HeaderValue) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::AUTHORIZATION, value);
    h
}

fn refused(r: &Result<Option<&str>, AppError>) -> bool {
    matches!(r, Err(AppError::InvalidToken { presented: true }))
}

/// Header-value bytes: mostly printable ASCII, some tabs, any byte now and then.
fn arb_header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![16 => 0x20u8..0x7f, 1 => Just(b'\t'), 1 => any::<u8>()], 0..max)
}

/// Random case for each letter.
fn arb_bearer_scheme() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), 6)
        .prop_map(|up| "bearer".chars().zip(up).map(|(c, u)| if u { c.to_ascii_uppercase() } else { c }).collect())
}

proptest! {
    #![proptest_config(Config::with_cases(256))]

    #[test]
    fn p_bearer_never_panics_and_follows_the_contract_on_arbitrary_header_bytes(
        bytes in prop_oneof![
            4 => arb_header_bytes(300),
            4 => arb_header_bytes(300).prop_map(|b| [b"Bearer ".as_slice(), &b].concat()),
            1 => arb_header_bytes(300).prop_map(|b| [b"Bearer ".as_slice(), &b, &[b'x'; MAX_TOKEN_LEN]].concat()),
        ],
    ) {
        let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
        let headers = headers_with(value);
        let got = bearer(&headers);
        // The contract: visible ASCII (or tab), at most MAX_TOKEN_LEN + 16 bytes, a scheme
        // equal to "bearer" ignoring case, then one space and the token; a blank token (or
        // none) presents no token at all.
        let text = std::str::from_utf8(&bytes).ok().filter(|t| {
            t.len() <= MAX_TOKEN_LEN + 16 && t.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        });
        let want = text.map(|t| t.split_once(' ').unwrap_or((t, ""))).and_then(|(scheme, token)| {
            scheme.eq_ignore_ascii_case("bearer").then(|| Some(token.trim()).filter(|t| !t.is_empty()))
        });
        match want {
            Some(t) => prop_assert_eq!(got.ok().flatten(), t),
            None => prop_assert!(refused(&got), "{got:?}"),
        }
    }

    #[test]
    fn p_bearer_scheme_is_case_insensitive_and_the_token_is_returned_trimmed(
        scheme in arb_bearer_scheme(),
        token in "[!-~]([ -~]{0,300}[!-~])?",
        before in "[ \t]{0,4}",
        after in "[ \t]{0,4}",
    ) {
        let value = HeaderValue::from_str(&format!("{scheme} {before}{token}{after}")).unwrap();
        let headers = headers_with(value);
        prop_assert_eq!(bearer(&headers).ok().flatten(), Some(token.as_str()));
    }

    #[test]
    fn p_bearer_refuses_other_schemes_and_presents_no_blank_token(
        scheme in prop_oneof![
            "[!-~]{0,10}".prop_filter("bearer", |s| !s.eq_ignore_ascii_case("bearer")),
            arb_bearer_scheme().prop_map(|s| format!("{s}\t")),
        ],
        token in prop_oneof!["[!-~]{1,100}", "[ \t]{0,6}"],
        blank_bearer in any::<bool>(),
    ) {
        if blank_bearer {
            // `Bearer` and blanks: no token presented (the caller is told one is needed).
            let value = format!("Bearer {}", token.chars().filter(|c| c.is_ascii_whitespace()).collect::<String>());
            let headers = headers_with(HeaderValue::from_str(&value).unwrap());
            prop_assert_eq!(bearer(&headers).ok(), Some(None));
        } else {
            let headers = headers_with(HeaderValue::from_str(&format!("{scheme} {token}")).unwrap());
            prop_assert!(refused(&bearer(&headers)));
        }
    }

    #[test]
    fn p_bearer_refuses_over_long_values_and_accepts_up_to_the_limit(
        scheme in arb_bearer_scheme(),
        len in (MAX_TOKEN_LEN - 64)..(MAX_TOKEN_LEN + 64),
    ) {
        let value = format!("{scheme} {}", "t".repeat(len));
        let headers = headers_with(HeaderValue::from_str(&value).unwrap());
        let got = bearer(&headers);
        if value.len() > MAX_TOKEN_LEN + 16 {
            prop_assert!(refused(&got));
        } else {
            prop_assert_eq!(got.ok().flatten().map(str::len), Some(len));
        }
    }
}

#[test]
fn p_bearer_without_the_header_is_none() {
    assert!(matches!(bearer(&HeaderMap::new()), Ok(None)));
}

// ---------------------------------------------------------------------------------------------
// Refresh tokens
// ---------------------------------------------------------------------------------------------

/// The exact issued shape: `rt_` + base64url (no padding) of 32 bytes, i.e. 43 characters the
/// last of which carries 2 unused bits that must be zero.
fn is_refresh_format(s: &str) -> bool {
    let Some(body) = s.strip_prefix("rt_") else { return false };
    s.len() == TOKEN_LEN
        && body.bytes().all(|b| B64URL.contains(&b))
        && body.bytes().last().is_some_and(|b| b"AEIMQUYcgkosw048".contains(&b))
}

proptest! {
    #![proptest_config(Config::with_cases(256))]

    #[test]
    fn p_refresh_parse_accepts_exactly_the_issued_format(s in prop_oneof![
        any::<String>(),
        "rt_[A-Za-z0-9_-]{43}",
        "rt_[A-Za-z0-9_-]{40,46}",
        "(rt_|RT_|rt-|rt|_rt_)[A-Za-z0-9_=+/-]{41,45}",
        "rt_[A-Za-z0-9_-]{42}[^A-Za-z0-9_-]",
        "rt_.{43}",
    ]) {
        let parsed = RefreshToken::parse(&s);
        prop_assert_eq!(parsed.is_some(), is_refresh_format(&s), "{:?}", s);
        if let Some(t) = parsed {
            prop_assert_eq!(t.as_str(), s.as_str());
            prop_assert_eq!(t.digest(), <[u8; 32]>::from(Sha256::digest(s.as_bytes())));
        }
    }

    #[test]
    fn p_refresh_parse_round_trips_any_32_bytes(bytes in prop::array::uniform32(any::<u8>())) {
        let s = format!("rt_{}", b64(bytes));
        let t = RefreshToken::parse(&s).expect("the issued format parses");
        prop_assert_eq!(t.as_str(), s.as_str());
    }

    #[test]
    fn p_refresh_generate_round_trips_through_parse(_case in 0u8..1) {
        let t = RefreshToken::generate();
        prop_assert!(is_refresh_format(t.as_str()));
        let parsed = RefreshToken::parse(t.as_str()).expect("a generated token parses");
        prop_assert_eq!(parsed.digest(), t.digest());
        prop_assert_eq!(parsed, t);
    }
}

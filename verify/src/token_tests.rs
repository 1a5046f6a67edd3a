//! The verification rule against sessiond's security cases (SECURITY.md §1, rows J1–J10), ported
//! from its HTTP tests (`tests/api/jwt.rs`) to the pure function.
//!
//! Every refusal has a positive control: the same crafted token with only the attacked field
//! changed back is accepted, so a refusal can only come from the check under test. Each test
//! runs many cases and reports every failing case at once.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use super::*;
use crate::testkit::{b64, now_secs, TestKey, ISSUER};

/// What a case must give.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Accepted,
    Invalid,
    Expired,
}

/// Collects failures, then fails once with all of them.
#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    fn check(&mut self, keys: &KeySet, policy: &Policy, now: i64, token: &str, want: Want, case: &str) {
        let got = match verify(token, keys, policy, now) {
            Ok(_) => Want::Accepted,
            Err(VerifyError::Invalid(_)) => Want::Invalid,
            Err(VerifyError::Expired) => Want::Expired,
        };
        if got != want {
            self.0.push(format!("{case}: want {want:?}, got {got:?} ({:?})", verify(token, keys, policy, now).err()));
        }
    }

    fn finish(self) {
        assert!(self.0.is_empty(), "{} failing case(s):\n{}", self.0.len(), self.0.join("\n"));
    }
}

/// The key, its keyset, the policy and the time every test starts from.
struct Fixture {
    key: TestKey,
    keys: KeySet,
    policy: Policy,
    now: i64,
    report: Report,
}

impl Fixture {
    fn new() -> Self {
        let key = TestKey::new(7, "kid-1");
        let keys = key.keyset();
        Fixture { key, keys, policy: Policy::new(ISSUER, "sessiond"), now: now_secs(), report: Report::default() }
    }

    fn genuine(&self) -> String {
        self.key.token(&self.key.claims(self.now))
    }

    fn check(&mut self, token: &str, want: Want, case: &str) {
        self.report.check(&self.keys, &self.policy, self.now, token, want, case);
    }

    /// Claims as raw JSON members in order (see [`Raw`]).
    fn raw(&self) -> Raw {
        let q = |s: &str| Value::from(s).to_string();
        Raw(vec![
            ("iss".into(), q(ISSUER)),
            ("aud".into(), q("sessiond")),
            ("sub".into(), q("u1")),
            ("sid".into(), q("s1")),
            ("jti".into(), q("j1")),
            ("iat".into(), self.now.to_string()),
            ("exp".into(), (self.now + 300).to_string()),
            ("roles".into(), "[]".into()),
        ])
    }

    /// `raw` signed with the real key under the genuine header.
    fn signed(&self, raw: &Raw) -> String {
        self.key.sign(&self.key.header(), &raw.json())
    }
}

/// Claims as raw JSON members, so a test can drop one, give it any raw JSON text (`1e30`,
/// `null`) or repeat a key.
#[derive(Clone)]
struct Raw(Vec<(String, String)>);

impl Raw {
    fn set(&self, key: &str, raw: impl Into<String>) -> Self {
        let mut c = self.clone();
        let raw = raw.into();
        match c.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = raw,
            None => c.0.push((key.into(), raw)),
        }
        c
    }

    fn without(&self, key: &str) -> Self {
        let mut c = self.clone();
        c.0.retain(|(k, _)| k != key);
        c
    }

    /// Appends `key` even if present: a duplicate member.
    fn push(&self, key: &str, raw: impl Into<String>) -> Self {
        let mut c = self.clone();
        c.0.push((key.into(), raw.into()));
        c
    }

    fn json(&self) -> String {
        let members: Vec<String> = self.0.iter().map(|(k, v)| format!("{}:{v}", Value::from(k.as_str()))).collect();
        format!("{{{}}}", members.join(","))
    }
}

fn segments(token: &str) -> [String; 3] {
    let p: Vec<&str> = token.split('.').collect();
    [p[0].to_string(), p[1].to_string(), p[2].to_string()]
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

#[test]
fn a_genuine_token_verifies_with_its_kid_and_claims() {
    let f = Fixture::new();
    let v = verify(&f.genuine(), &f.keys, &f.policy, f.now).unwrap();
    assert_eq!(v.kid, "kid-1");
    assert_eq!(v.claims, f.key.claims(f.now));
}

#[test]
fn j1_alg_none_is_refused() {
    let mut f = Fixture::new();
    let [_, p, s] = segments(&f.genuine());
    for alg in ["none", "None", "NONE", "nOnE"] {
        for header in [
            json!({"alg": alg}),
            json!({"alg": alg, "typ": "JWT"}),
            json!({"alg": alg, "typ": "at+jwt", "kid": "kid-1"}),
        ] {
            let h = b64(header.to_string());
            f.check(&format!("{h}.{p}."), Want::Invalid, &format!("{header} + empty signature"));
            f.check(&format!("{h}.{p}.{s}"), Want::Invalid, &format!("{header} + genuine signature"));
        }
    }
    f.report.finish();
}

#[test]
fn j2_hmac_signed_with_the_public_key_is_refused() {
    let mut f = Fixture::new();
    let x_b64 = f.key.x();
    let x = unb64(&x_b64);
    let jwks = json!({"keys": [f.key.jwk()]}).to_string();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("raw 32-byte x", x.clone()),
        ("x as base64url text", x_b64.clone().into_bytes()),
        ("x as base64 text", STANDARD.encode(&x).into_bytes()),
        ("JWK JSON", f.key.jwk().to_string().into_bytes()),
        ("JWKS document", jwks.into_bytes()),
    ];
    let payload = serde_json::to_string(&f.key.claims(f.now)).unwrap();
    for (alg, name) in [(Algorithm::HS256, "HS256"), (Algorithm::HS384, "HS384"), (Algorithm::HS512, "HS512")] {
        for header in [json!({"alg": name, "typ": "at+jwt", "kid": "kid-1"}), json!({"alg": name, "typ": "JWT"})] {
            for (what, secret) in &secrets {
                let input = format!("{}.{}", b64(header.to_string()), b64(&payload));
                let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &EncodingKey::from_secret(secret), alg).unwrap();
                f.check(&format!("{input}.{sig}"), Want::Invalid, &format!("{header} keyed with {what}"));
            }
        }
    }
    f.report.finish();
}

#[test]
fn j2_other_algorithms_are_refused() {
    let mut f = Fixture::new();
    let [_, p, s] = segments(&f.genuine());
    let junk = |n: usize| b64((0..n).map(|i| (i * 31 + 7) as u8).collect::<Vec<u8>>());
    for (alg, len) in [("RS256", 256), ("PS256", 256), ("ES256", 64), ("ES384", 96), ("ES512", 132)] {
        let h = b64(json!({"alg": alg, "typ": "at+jwt", "kid": "kid-1"}).to_string());
        f.check(&format!("{h}.{p}.{}", junk(len)), Want::Invalid, &format!("{alg} junk signature"));
        f.check(&format!("{h}.{p}.{s}"), Want::Invalid, &format!("{alg} with the genuine signature"));
    }
    for alg in ["eddsa", "EDDSA", "Ed25519", "ED25519", "EdDSA ", "ES256K"] {
        let h = b64(json!({"alg": alg, "typ": "at+jwt", "kid": "kid-1"}).to_string());
        f.check(&format!("{h}.{p}.{s}"), Want::Invalid, &format!("alg {alg:?}"));
    }
    f.report.finish();
}

#[test]
fn j3_tampered_signatures_are_refused() {
    let mut f = Fixture::new();
    let a = f.genuine();
    let mut other = f.key.claims(f.now);
    other.sid = "s2".into();
    other.sub = "u2".into();
    let b = f.key.token(&other);
    let ([ha, pa, sa], [hb, pb, sb]) = (segments(&a), segments(&b));
    let sig = unb64(&sa);
    f.check(&a, Want::Accepted, "control: A");
    f.check(&b, Want::Accepted, "control: B");

    let mut claims: Value = serde_json::from_slice(&unb64(&pa)).unwrap();
    claims["roles"] = json!(["admin"]);
    f.check(&format!("{ha}.{}.{sa}", b64(claims.to_string())), Want::Invalid, "roles:[admin] re-encoded");
    let mut flipped = sig.clone();
    flipped[10] ^= 1;
    f.check(&format!("{ha}.{pa}.{}", b64(&flipped)), Want::Invalid, "signature bit flipped");
    f.check(&format!("{ha}.{pb}.{sa}"), Want::Invalid, "B's payload under A's signature");
    f.check(&format!("{hb}.{pb}.{sa}"), Want::Invalid, "B's header+payload, A's signature");
    f.check(&format!("{ha}.{pa}.{sb}"), Want::Invalid, "A's header+payload, B's signature");
    f.check(&format!("{ha}.{pa}.{}", &sa[..sa.len() - 2]), Want::Invalid, "signature minus 2 chars");
    f.check(&format!("{ha}.{pa}.{}", b64(&sig[..63])), Want::Invalid, "63-byte signature");
    f.check(&format!("{ha}.{pa}.{}", b64([&sig[..], &[0]].concat())), Want::Invalid, "65-byte signature");
    f.check(&format!("{ha}.{pa}.{}", b64([0u8; 64])), Want::Invalid, "64 zero bytes");
    // S = L (the group order), a classic malleability case.
    let mut s_is_l = sig[..32].to_vec();
    s_is_l.extend_from_slice(&[
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ]);
    f.check(&format!("{ha}.{pa}.{}", b64(&s_is_l)), Want::Invalid, "S = L");
    f.report.finish();
}

#[test]
fn j3_malformed_token_shapes_are_refused() {
    let mut f = Fixture::new();
    let [h, p, s] = segments(&f.genuine());
    let shapes = [
        ("1 segment", h.clone()),
        ("2 segments", format!("{h}.{p}")),
        ("2 segments, trailing dot", format!("{h}.{p}.")),
        ("4 segments (trailing dot)", format!("{h}.{p}.{s}.")),
        ("4 segments", format!("{h}.{p}.{s}.{s}")),
        ("5 segments (JWE shape)", format!("{h}.{}.{}.{p}.{}", b64([7u8; 32]), b64([1u8; 12]), b64([2u8; 16]))),
        ("empty payload", format!("{h}..{s}")),
        ("empty header", format!(".{p}.{s}")),
        ("only dots", "..".to_string()),
        ("empty", String::new()),
        ("header padded", format!("{h}=.{p}.{s}")),
        ("payload padded", format!("{h}.{p}=.{s}")),
        ("signature padded", format!("{h}.{p}.{s}==")),
        ("signature as padded base64", format!("{h}.{p}.{}", STANDARD.encode(unb64(&s)))),
        ("'*' in header", format!("*{}.{p}.{s}", &h[1..])),
        ("space inside payload", format!("{h}.{} {}.{s}", &p[..10], &p[10..])),
    ];
    for (what, token) in shapes {
        f.check(&token, Want::Invalid, what);
    }
    let segs = [&h, &p, &s];
    for (i, name) in ["header", "payload", "signature"].iter().enumerate() {
        let std = STANDARD_NO_PAD.encode(unb64(segs[i]));
        if std != *segs[i] {
            let mut parts = [h.clone(), p.clone(), s.clone()];
            parts[i] = std;
            f.check(&parts.join("."), Want::Invalid, &format!("{name} in the standard alphabet"));
        }
    }
    // A non-canonical last character (unused low bits set) of the 64-byte signature.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.iter().position(|&c| c == *s.as_bytes().last().unwrap()).unwrap();
    let tweaked = alphabet[(idx & !0b11) | 0b01] as char;
    f.check(&format!("{h}.{p}.{}{tweaked}", &s[..s.len() - 1]), Want::Invalid, "non-canonical last char");
    f.report.finish();
}

#[test]
fn j4_hostile_or_unknown_kid_is_refused_and_only_a_string_kid_is_unknown() {
    let f = Fixture::new();
    let attacker = TestKey::new(99, "kid-1");
    let payload = serde_json::to_string(&f.key.claims(f.now)).unwrap();
    let kids: Vec<(&str, Value, bool)> = vec![
        ("path traversal", json!("../../../dev/null"), true),
        ("SQL injection", json!("' OR 1=1--"), true),
        ("1 KB of junk", json!("A".repeat(1024)), true),
        ("empty string", json!(""), true),
        ("URL", json!("https://evil.example/jwks.json"), true),
        ("real kid plus trailing space", json!("kid-1 "), true),
        ("real kid upper-cased", json!("KID-1"), true),
        ("real kid with NUL", json!("kid-1\u{0}"), true),
        ("null", Value::Null, false),
        ("number", json!(1), false),
        ("array with the real kid", json!(["kid-1"]), false),
        ("object", json!({"kid": "kid-1"}), false),
    ];
    let mut failures = vec![];
    for (what, kid, unknown) in kids {
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid}).to_string();
        match verify(&attacker.sign(&header, &payload), &f.keys, &f.policy, f.now) {
            Err(e @ VerifyError::Invalid(_)) if e.is_unknown_kid() == unknown => {}
            other => failures.push(format!("kid {what}: {other:?}")),
        }
    }
    // The real kid under an attacker's signature: known kid, bad signature.
    match verify(&attacker.token(&f.key.claims(f.now)), &f.keys, &f.policy, f.now) {
        Err(e @ VerifyError::Invalid(_)) if !e.is_unknown_kid() => {}
        other => failures.push(format!("real kid, attacker signature: {other:?}")),
    }
    let no_kid = attacker.sign(&json!({"alg": "EdDSA", "typ": "at+jwt"}).to_string(), &payload);
    if verify(&no_kid, &f.keys, &f.policy, f.now) != Err(VerifyError::Invalid("kid missing")) {
        failures.push("no kid".into());
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn j5_forbidden_header_params_are_refused_even_with_the_real_key() {
    let mut f = Fixture::new();
    let claims = f.raw();
    let payload = claims.json();
    let genuine = f.signed(&claims);
    f.check(&genuine, Want::Accepted, "control: crafted token with the real key");
    let base = |extra: Value| {
        let mut h = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "kid-1"});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h.to_string()
    };
    let cases = vec![
        ("crit [exp]", base(json!({"crit": ["exp"]}))),
        ("crit []", base(json!({"crit": []}))),
        ("cty JWT", base(json!({"cty": "JWT"}))),
        ("jwk (the real public JWK)", base(json!({"jwk": f.key.jwk()}))),
        ("jku", base(json!({"jku": "https://evil.example/jwks.json"}))),
        ("x5u", base(json!({"x5u": "https://evil.example/cert.pem"}))),
        ("x5c", base(json!({"x5c": [STANDARD.encode([0x30u8; 64])]}))),
        ("x5t", base(json!({"x5t": b64([1u8; 20])}))),
        ("b64 false + crit", base(json!({"b64": false, "crit": ["b64"]}))),
        ("zip DEF", base(json!({"zip": "DEF"}))),
        ("enc (JWE)", base(json!({"enc": "A256GCM"}))),
        ("unknown parameter", base(json!({"foo": "bar"}))),
        ("duplicate alg none,EdDSA", r#"{"alg":"none","alg":"EdDSA","typ":"at+jwt","kid":"kid-1"}"#.into()),
        ("duplicate alg EdDSA,none", r#"{"alg":"EdDSA","alg":"none","typ":"at+jwt","kid":"kid-1"}"#.into()),
        ("duplicate typ JWT,at+jwt", r#"{"typ":"JWT","alg":"EdDSA","typ":"at+jwt","kid":"kid-1"}"#.into()),
        ("duplicate kid unknown,real", r#"{"alg":"EdDSA","typ":"at+jwt","kid":"unknown","kid":"kid-1"}"#.into()),
        ("header is an array", r#"["EdDSA","at+jwt","kid-1"]"#.into()),
    ];
    for (what, header) in cases {
        f.check(&f.key.sign(&header, &payload), Want::Invalid, &format!("real key, {what}"));
    }
    // Nested: the genuine token as the payload.
    f.check(&f.key.sign(&base(json!({"cty": "JWT"})), &genuine), Want::Invalid, "nested JWT");
    f.check(&f.key.sign(&f.key.header(), &genuine), Want::Invalid, "a token as the payload");
    f.report.finish();
}

#[test]
fn j6_typ_other_than_at_jwt_is_refused() {
    let mut f = Fixture::new();
    let payload = f.raw().json();
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"] {
        let h = json!({"alg": "EdDSA", "typ": typ, "kid": "kid-1"}).to_string();
        f.check(&f.key.sign(&h, &payload), Want::Accepted, &format!("control: typ {typ:?}"));
    }
    let typs: Vec<(&str, Option<Value>)> = vec![
        ("JWT", Some(json!("JWT"))),
        ("application/jwt", Some(json!("application/jwt"))),
        ("JOSE", Some(json!("JOSE"))),
        ("dpop+jwt", Some(json!("dpop+jwt"))),
        ("logout+jwt", Some(json!("logout+jwt"))),
        ("at+jwt with trailing space", Some(json!("at+jwt "))),
        ("at+jwt with parameter", Some(json!("at+jwt; q=1"))),
        ("empty", Some(json!(""))),
        ("number", Some(json!(1))),
        ("null", Some(Value::Null)),
        ("array", Some(json!(["at+jwt"]))),
        ("missing", None),
    ];
    for (what, typ) in typs {
        let mut h = json!({"alg": "EdDSA", "kid": "kid-1"});
        if let Some(v) = typ {
            h["typ"] = v;
        }
        f.check(&f.key.sign(&h.to_string(), &payload), Want::Invalid, &format!("typ {what}"));
    }
    f.report.finish();
}

#[test]
fn j7_malformed_claims_are_refused() {
    let mut f = Fixture::new();
    let c = f.raw();
    let now = f.now;
    let q = |s: &str| Value::from(s).to_string();
    f.check(&f.signed(&c), Want::Accepted, "control");
    f.check(&f.signed(&c.set("nbf", (now - 10).to_string())), Want::Accepted, "control: past nbf");
    f.check(&f.signed(&c.set("extra", "[1,2,3]")), Want::Accepted, "control: unknown claim");
    let cases: Vec<(&str, Raw)> = vec![
        ("exp missing", c.without("exp")),
        ("exp string", c.set("exp", q(&(now + 300).to_string()))),
        ("exp 1e30", c.set("exp", "1e30")),
        ("exp -1", c.set("exp", "-1")),
        ("exp null", c.set("exp", "null")),
        ("exp true", c.set("exp", "true")),
        ("exp array", c.set("exp", format!("[{}]", now + 300))),
        ("exp beyond u64", c.set("exp", "18446744073709551616")),
        ("exp beyond i64", c.set("exp", "9223372036854775808")),
        ("exp fractional", c.set("exp", format!("{}.5", now + 300))),
        ("nbf string", c.set("nbf", q("99999999999"))),
        ("nbf -1", c.set("nbf", "-1")),
        ("nbf null", c.set("nbf", "null")),
        ("iat missing", c.without("iat")),
        ("iat string", c.set("iat", q(&now.to_string()))),
        ("roles missing", c.without("roles")),
        ("roles string", c.set("roles", q("admin"))),
        ("duplicate sub (own, other)", c.push("sub", q("u2"))),
        ("duplicate sub (same twice)", c.push("sub", q("u1"))),
        ("duplicate exp (future, past)", c.push("exp", (now - 3600).to_string())),
        ("duplicate exp (past, future)", c.set("exp", (now - 3600).to_string()).push("exp", (now + 300).to_string())),
        ("duplicate sid", c.push("sid", q("s2"))),
    ];
    for (what, claims) in cases {
        f.check(&f.signed(&claims), Want::Invalid, what);
    }
    for (what, payload) in [("array", "[]"), ("string", "\"x\""), ("empty", ""), ("null", "null")] {
        f.check(&f.key.sign(&f.key.header(), payload), Want::Invalid, &format!("payload {what}"));
    }
    // An exp near i64::MAX fits both parsers and must not overflow our own check.
    for exp in [i64::MAX, i64::MAX - 29] {
        let _ = verify(&f.signed(&c.set("exp", exp.to_string())), &f.keys, &f.policy, now);
    }
    f.report.finish();
}

#[test]
fn j8_time_validation_uses_a_30_second_leeway() {
    let mut f = Fixture::new();
    let c = f.raw();
    let now = f.now;
    let at = |iat: i64, exp: i64| c.set("iat", iat.to_string()).set("exp", exp.to_string());
    f.check(&f.signed(&at(now - 331, now - 31)), Want::Expired, "exp = now - 31");
    f.check(&f.signed(&at(now - 3600, now - 3300)), Want::Expired, "exp = now - 3300");
    f.check(&f.signed(&at(now - 330, now - 30)), Want::Accepted, "exp = now - 30 (the leeway's edge)");
    f.check(&f.signed(&at(now - 325, now - 25)), Want::Accepted, "exp = now - 25");
    f.check(&f.signed(&at(now + 35, now + 335)), Want::Invalid, "iat = now + 35");
    f.check(&f.signed(&at(now + 3600, now + 3900)), Want::Invalid, "iat = now + 3600");
    f.check(&f.signed(&at(now + 25, now + 325)), Want::Accepted, "iat = now + 25");
    f.check(&f.signed(&c.set("nbf", (now + 35).to_string())), Want::Invalid, "nbf = now + 35");
    f.check(&f.signed(&c.set("nbf", (now + 25).to_string())), Want::Accepted, "nbf = now + 25");

    // The caller's clock decides too: 5 min + 31 s later the token has expired; 31 s before its
    // iat it was not yet valid.
    let token = f.signed(&c);
    f.report.check(&f.keys, &f.policy, now + 300 + 30, &token, Want::Accepted, "caller clock at exp + 30");
    f.report.check(&f.keys, &f.policy, now + 300 + 31, &token, Want::Expired, "caller clock at exp + 31");
    f.report.check(&f.keys, &f.policy, now - 31, &token, Want::Invalid, "caller clock at iat - 31");
    f.report.finish();
}

#[test]
fn the_leeway_is_at_most_30_seconds() {
    let f = Fixture::new();
    assert_eq!(Policy::new(ISSUER, "sessiond").leeway_secs(), 30);
    assert_eq!(Policy::new(ISSUER, "sessiond").with_leeway_secs(3600).leeway_secs(), 30);
    assert_eq!(Policy::new(ISSUER, "sessiond").with_leeway_secs(-5).leeway_secs(), 0);
    let strict = Policy::new(ISSUER, "sessiond").with_leeway_secs(0);
    let token = f.signed(&f.raw().set("exp", (f.now - 1).to_string()));
    assert_eq!(verify(&token, &f.keys, &strict, f.now), Err(VerifyError::Expired));
    assert!(verify(&token, &f.keys, &f.policy, f.now).is_ok());
}

#[test]
fn ignoring_expiry_lets_only_expired_genuine_tokens_through() {
    let f = Fixture::new();
    let lax = f.policy.ignoring_expiry();
    let expired = f.signed(&f.raw().set("iat", (f.now - 7200).to_string()).set("exp", (f.now - 6900).to_string()));
    assert_eq!(verify(&expired, &f.keys, &f.policy, f.now), Err(VerifyError::Expired), "the normal rule");
    assert_eq!(verify(&expired, &f.keys, &lax, f.now).unwrap().claims.sub, "u1");
    // Everything else stands: a forged signature, another issuer, a future iat.
    let mut forged = segments(&expired);
    forged[2] = URL_SAFE_NO_PAD.encode([0u8; 64]);
    assert!(verify(&forged.join("."), &f.keys, &lax, f.now).is_err(), "forged signature");
    let other_iss = f.signed(&f.raw().set("iss", "\"https://evil.example\"").set("exp", (f.now - 6900).to_string()));
    assert!(verify(&other_iss, &f.keys, &lax, f.now).is_err(), "another issuer");
    let future = f.signed(&f.raw().set("iat", (f.now + 3600).to_string()).set("exp", (f.now + 3900).to_string()));
    assert!(verify(&future, &f.keys, &lax, f.now).is_err(), "iat in the future");
}

#[test]
fn j9_issuer_audience_subject_and_session_are_enforced() {
    let mut f = Fixture::new();
    let c = f.raw();
    let q = |s: &str| Value::from(s).to_string();
    let cases: Vec<(&str, Raw)> = vec![
        ("iss missing", c.without("iss")),
        ("iss wrong", c.set("iss", q("https://evil.example"))),
        ("iss with trailing slash", c.set("iss", q(&format!("{ISSUER}/")))),
        ("iss upper-cased", c.set("iss", q(&ISSUER.to_uppercase()))),
        ("iss null", c.set("iss", "null")),
        ("iss array [ours]", c.set("iss", json!([ISSUER]).to_string())),
        ("aud missing", c.without("aud")),
        ("aud wrong", c.set("aud", q("other-service"))),
        ("aud empty", c.set("aud", q(""))),
        ("aud null", c.set("aud", "null")),
        ("aud [ours, other]", c.set("aud", json!(["sessiond", "other-service"]).to_string())),
        ("aud [other, ours]", c.set("aud", json!(["other-service", "sessiond"]).to_string())),
        ("aud [ours]", c.set("aud", json!(["sessiond"]).to_string())),
        ("sub missing", c.without("sub")),
        ("sub empty", c.set("sub", q(""))),
        ("sub null", c.set("sub", "null")),
        ("sub number", c.set("sub", "1")),
        ("sid missing", c.without("sid")),
        ("sid empty", c.set("sid", q(""))),
        ("sid null", c.set("sid", "null")),
        ("jti missing", c.without("jti")),
        ("jti empty", c.set("jti", q(""))),
    ];
    for (what, claims) in cases {
        f.check(&f.signed(&claims), Want::Invalid, what);
    }
    // Another audience policy refuses sessiond's audience, and accepts its own.
    let other = Policy::new(ISSUER, "notes-api");
    f.report.check(&f.keys, &other, f.now, &f.signed(&c), Want::Invalid, "policy for another audience");
    let ours = f.signed(&c.set("aud", q("notes-api")));
    f.report.check(&f.keys, &other, f.now, &ours, Want::Accepted, "control: token for that audience");
    f.report.finish();
}

#[test]
fn j10_length_is_limited_to_4096_bytes() {
    let mut f = Fixture::new();
    let c = f.raw();
    let padded = |n: usize| f.signed(&c.set("pad", Value::from("x".repeat(n)).to_string()));
    let fits = (0..4096).map(padded).take_while(|t| t.len() <= MAX_TOKEN_LEN).last().unwrap();
    let over = (0..4096).map(padded).find(|t| t.len() > MAX_TOKEN_LEN).unwrap();
    assert!(fits.len() >= 4093 && over.len() <= 4100, "{} {}", fits.len(), over.len());
    f.check(&fits, Want::Accepted, "longest token that fits");
    f.check(&over, Want::Invalid, "shortest token over the limit");
    f.check(&"A".repeat(64 * 1024), Want::Invalid, "64 KB junk");
    f.report.finish();
}

#[test]
fn j10_deeply_nested_json_is_refused_without_a_crash() {
    let mut f = Fixture::new();
    let nested = format!("{}{}", "[".repeat(1300), "]".repeat(1300));
    let header = format!(r#"{{"alg":{nested},"typ":"at+jwt","kid":"kid-1"}}"#);
    f.check(&format!("{}.{}.{}", b64(&header), b64("{}"), b64([0u8; 64])), Want::Invalid, "nested header");
    // Behind an attacker signature and the real kid; with the real key, no crash either way
    // (sessiond's rule accepts an unknown deep claim it signed itself).
    let deep = f.raw().set("x", nested);
    let attacker = TestKey::new(99, "kid-1");
    f.check(&attacker.sign(&f.key.header(), &deep.json()), Want::Invalid, "nested payload, attacker key");
    let _ = verify(&f.signed(&deep), &f.keys, &f.policy, f.now);
    f.report.finish();
}

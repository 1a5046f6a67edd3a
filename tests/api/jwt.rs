//! Access-token attacks (SECURITY.md §1, rows J1–J12) against the real server over HTTP.
//!
//! Tokens are forged three ways: unsigned or HMAC-signed with the public key (J1, J2), signed
//! with an attacker's Ed25519 key (J3–J6), and signed with the server's *real* key, read from its
//! database through the library (J5–J9). The real-key tests make each refusal meaningful: the
//! same crafted token with only the one attacked field changed back is accepted (the positive
//! control in every such test), so a 401 can only come from the check under test.
//!
//! Each test runs many cases and reports every failing case at once.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use reqwest::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Sha256, Sha384, Sha512};

use crate::helpers::{self, TestApp, Tokens};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The challenge of a 401 for a presented but unusable token (RFC 6750 §3).
const CHALLENGE_INVALID: &str = r#"Bearer error="invalid_token""#;

/// base64url without padding (RFC 7515 §2).
fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("base64url")
}

/// `header.payload.signature` signed with Ed25519. Header and payload are raw JSON text, so a
/// test can send duplicate keys, `1e30` or anything else a JSON serializer would not produce.
fn sign_with(key: &SigningKey, header_json: &str, payload_json: &str) -> String {
    let input = format!("{}.{}", b64(header_json), b64(payload_json));
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64(sig.to_bytes()))
}

/// `header.payload.signature` with an HMAC (`HS256`/`HS384`/`HS512`) keyed with `secret`.
fn hmac_sign(alg: &str, secret: &[u8], header_json: &str, payload_json: &str) -> String {
    let input = format!("{}.{}", b64(header_json), b64(payload_json));
    macro_rules! tag {
        ($d:ty) => {{
            let mut m = Hmac::<$d>::new_from_slice(secret).expect("HMAC takes any key length");
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }};
    }
    let sig = match alg {
        "HS256" => tag!(Sha256),
        "HS384" => tag!(Sha384),
        "HS512" => tag!(Sha512),
        other => panic!("not an HMAC alg: {other}"),
    };
    format!("{input}.{}", b64(sig))
}

/// The three segments of a compact JWS.
fn segments(token: &str) -> [String; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS has three segments");
    [parts[0].to_string(), parts[1].to_string(), parts[2].to_string()]
}

fn header_of(token: &str) -> Value {
    serde_json::from_slice(&unb64(&segments(token)[0])).expect("header JSON")
}

fn payload_text(token: &str) -> String {
    String::from_utf8(unb64(&segments(token)[1])).expect("payload UTF-8")
}

fn kid_of(token: &str) -> String {
    header_of(token)["kid"].as_str().expect("kid").to_string()
}

fn attacker_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// The attacker key's public JWK.
fn jwk_of(key: &SigningKey, kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.verifying_key().as_bytes()), "kid": kid, "alg": "EdDSA", "use": "sig"})
}

/// The header every genuine token has.
fn good_header(kid: &str) -> String {
    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid}).to_string()
}

/// The JWKS document.
async fn jwks(app: &TestApp) -> Value {
    let r = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// The server's real signing key, read from its database through the library, and its kid.
struct RealSigner {
    kid: String,
    key: SigningKey,
}

impl RealSigner {
    /// The key that signed `token` (a genuine access token).
    async fn of(app: &TestApp, token: &str) -> Self {
        let kid = kid_of(token);
        let rows = app.state.store.signing_keys().await.unwrap();
        let row = rows.iter().find(|r| r.kid == kid).expect("the kid of a genuine token is in the database");
        let key = SigningKey::from_pkcs8_der(&row.private_der).expect("PKCS#8 Ed25519 key");
        assert_eq!(b64(key.verifying_key().as_bytes()), row.public_x, "private and public key match");
        RealSigner { kid, key }
    }

    fn sign(&self, header_json: &str, payload_json: &str) -> String {
        sign_with(&self.key, header_json, payload_json)
    }

    /// A correctly crafted header and `claims`, signed with the real key.
    fn sign_claims(&self, claims: &RawClaims) -> String {
        self.sign(&good_header(&self.kid), &claims.json())
    }
}

/// Claims as raw JSON members in order, so a test can drop one, give it any raw JSON text
/// (a string, `1e30`, `null`) or repeat a key.
#[derive(Clone, Debug)]
struct RawClaims(Vec<(String, String)>);

impl RawClaims {
    /// What the server itself would issue for `t`'s user and session, now.
    fn valid(app: &TestApp, t: &Tokens) -> Self {
        let now = app.clock.now_secs();
        let s = |v: &str| Value::from(v).to_string();
        RawClaims(vec![
            ("iss".into(), s(&app.config.issuer)),
            ("aud".into(), s(&app.config.audience)),
            ("sub".into(), s(&t.user_id)),
            ("sid".into(), s(&t.session_id)),
            ("jti".into(), s(&uuid::Uuid::new_v4().simple().to_string())),
            ("iat".into(), now.to_string()),
            ("exp".into(), (now + 300).to_string()),
            ("roles".into(), "[]".into()),
        ])
    }

    /// Replaces `key` (or appends it) with the raw JSON `raw`.
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

/// What `/v1/me` answered.
struct Probe {
    status: StatusCode,
    content_type: Option<String>,
    www_authenticate: Option<String>,
    body: Value,
}

async fn probe_with(app: &TestApp, authorization: Option<&str>) -> Probe {
    let mut req = app.client.get(app.url("/v1/me"));
    if let Some(a) = authorization {
        req = req.header(AUTHORIZATION, a);
    }
    let r = req.send().await.expect("request sent");
    let h = |name: reqwest::header::HeaderName| {
        r.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let (status, content_type, www_authenticate) = (r.status(), h(CONTENT_TYPE), h(WWW_AUTHENTICATE));
    let body = r.json().await.unwrap_or(Value::Null);
    Probe { status, content_type, www_authenticate, body }
}

async fn probe(app: &TestApp, token: &str) -> Probe {
    probe_with(app, Some(&format!("Bearer {token}"))).await
}

/// `Err(description)` unless the 401 is problem+json with `code` and the `invalid_token` challenge.
fn check_refused(p: &Probe, code: &str, case: &str) -> Result<(), String> {
    let ok = p.status == StatusCode::UNAUTHORIZED
        && p.content_type.as_deref() == Some("application/problem+json")
        && p.body["code"] == code
        && p.www_authenticate.as_deref() == Some(CHALLENGE_INVALID);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{case}: expected 401 {code}, got {} code={} www-authenticate={:?}",
            p.status, p.body["code"], p.www_authenticate
        ))
    }
}

/// `Err(description)` unless `/v1/me` refuses `token` with 401 `code`.
async fn refused(app: &TestApp, token: &str, code: &str, case: &str) -> Result<(), String> {
    check_refused(&probe(app, token).await, code, case)
}

/// `Err(description)` unless `/v1/me` accepts `token` as `t`'s user and session.
async fn accepted(app: &TestApp, token: &str, t: &Tokens, case: &str) -> Result<(), String> {
    let p = probe(app, token).await;
    if p.status == StatusCode::OK
        && p.body["user_id"] == t.user_id.as_str()
        && p.body["session_id"] == t.session_id.as_str()
    {
        Ok(())
    } else {
        Err(format!("{case}: expected 200 for {}, got {} {}", t.user_id, p.status, p.body))
    }
}

/// Collects failing cases so one run shows all of them.
#[derive(Default)]
struct Report {
    cases: usize,
    failures: Vec<String>,
}

impl Report {
    fn add(&mut self, r: Result<(), String>) {
        self.cases += 1;
        if let Err(e) = r {
            self.failures.push(e);
        }
    }

    fn finish(self, name: &str) {
        eprintln!("{name}: {} cases, {} failed", self.cases, self.failures.len());
        assert!(
            self.failures.is_empty(),
            "{name}: {} of {} cases failed:\n  {}",
            self.failures.len(),
            self.cases,
            self.failures.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// J12 (d, e): the token verifies with nothing but the JWKS and a generic Ed25519 implementation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn j12_access_token_verifies_independently_against_jwks() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;

    let r = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cc = r.headers().get(CACHE_CONTROL).expect("JWKS sets Cache-Control").to_str().unwrap().to_string();
    let max_age: u64 = cc
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .unwrap_or_else(|| panic!("no max-age in {cc:?}"))
        .parse()
        .unwrap();
    assert!(max_age <= 300, "JWKS max-age {max_age} > 300");
    assert!(!cc.contains("no-store"), "the JWKS is meant to be cached: {cc}");
    let doc: Value = r.json().await.unwrap();
    let keys = doc["keys"].as_array().expect("keys array");
    assert!(!keys.is_empty());
    for k in keys {
        assert_eq!(k["kty"], "OKP", "{k}");
        assert_eq!(k["crv"], "Ed25519", "{k}");
        assert_eq!(k["alg"], "EdDSA", "{k}");
        assert_eq!(k["use"], "sig", "{k}");
        assert!(k["kid"].as_str().is_some_and(|s| !s.is_empty()), "{k}");
        let x = URL_SAFE_NO_PAD.decode(k["x"].as_str().expect("x")).expect("x is base64url");
        assert_eq!(x.len(), 32, "{k}");
        for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
            assert!(k.get(private).is_none(), "JWK publishes private member {private:?}: {k}");
        }
    }

    let [h, p, s] = segments(&t.access);
    let header: Value = serde_json::from_slice(&unb64(&h)).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let kid = header["kid"].as_str().expect("kid");
    for name in header.as_object().unwrap().keys() {
        assert!(["alg", "typ", "kid"].contains(&name.as_str()), "unexpected header parameter {name}");
    }
    let jwk = keys.iter().find(|k| k["kid"] == kid).expect("the token's kid is in the JWKS");
    let x: [u8; 32] = unb64(jwk["x"].as_str().unwrap()).try_into().unwrap();
    let vk = VerifyingKey::from_bytes(&x).expect("valid Ed25519 point");
    let sig = Signature::from_slice(&unb64(&s)).expect("64-byte signature");
    let signing_input = format!("{h}.{p}");
    vk.verify_strict(signing_input.as_bytes(), &sig).expect("signature verifies against the JWKS key");
    // The check above is not vacuous: another message fails.
    assert!(vk.verify_strict(format!("{h}.{p}x").as_bytes(), &sig).is_err());

    let claims: Value = serde_json::from_slice(&unb64(&p)).unwrap();
    let now = app.clock.now_secs();
    assert_eq!(claims["iss"], "http://localhost:8080");
    assert_eq!(claims["aud"], "sessiond");
    assert_eq!(claims["sub"], t.user_id.as_str());
    assert_eq!(claims["sid"], t.session_id.as_str());
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()), "{claims}");
    let iat = claims["iat"].as_i64().expect("iat integer");
    let exp = claims["exp"].as_i64().expect("exp integer");
    assert!(iat <= now, "iat {iat} in the future (now {now})");
    assert!(iat >= now - 60, "iat {iat} far in the past (now {now})");
    // The TTL is 5 min: `exp` and `iat` come from the same clock reading.
    assert_eq!(exp - iat, 300, "exp - iat");
    assert_eq!(t.raw["expires_in"].as_i64(), Some(exp - iat), "expires_in matches the token");
    assert!(claims["roles"].is_array(), "{claims}");
}

// ---------------------------------------------------------------------------------------------
// J1: alg none
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn j1_alg_none_is_refused() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let [_, p, s] = segments(&t.access);
    let kid = kid_of(&t.access);
    let mut report = Report::default();
    report.add(accepted(&app, &t.access, &t, "control: the genuine token").await);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let headers =
            [json!({"alg": alg}), json!({"alg": alg, "typ": "JWT"}), json!({"alg": alg, "typ": "at+jwt", "kid": kid})];
        for header in headers {
            let h = b64(header.to_string());
            report.add(
                refused(&app, &format!("{h}.{p}."), "invalid_token", &format!("{header} + empty signature")).await,
            );
            report.add(
                refused(&app, &format!("{h}.{p}.{s}"), "invalid_token", &format!("{header} + genuine signature")).await,
            );
        }
    }
    report.finish("j1_alg_none_is_refused");
}

// ---------------------------------------------------------------------------------------------
// J2: algorithm / key confusion
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn j2_hmac_signed_with_the_public_key_is_refused() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let kid = kid_of(&t.access);
    let jwks_text = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap();
    let doc: Value = serde_json::from_str(&jwks_text).unwrap();
    let jwk = doc["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).unwrap().clone();
    let x_b64 = jwk["x"].as_str().unwrap().to_string();
    let x = unb64(&x_b64);
    let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    spki.extend_from_slice(&x);
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(&spki));
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("raw 32-byte x", x.clone()),
        ("x as base64url text", x_b64.clone().into_bytes()),
        ("x as base64 text", STANDARD.encode(&x).into_bytes()),
        ("JWK JSON", jwk.to_string().into_bytes()),
        ("RFC 7638 canonical JWK", format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x_b64}"}}"#).into_bytes()),
        ("JWKS document", jwks_text.clone().into_bytes()),
        ("SPKI DER", spki.clone()),
        ("SPKI PEM", pem.clone().into_bytes()),
        ("SPKI PEM without final newline", pem.trim_end().as_bytes().to_vec()),
        ("SPKI PEM with leading whitespace", format!(" \n\t {pem}").into_bytes()),
        ("SPKI PEM with CRLF", pem.replace('\n', "\r\n").into_bytes()),
    ];
    let payload = payload_text(&t.access);
    let mut report = Report::default();
    report.add(accepted(&app, &t.access, &t, "control: the genuine token").await);
    for alg in ["HS256", "HS384", "HS512"] {
        let headers = [json!({"alg": alg, "typ": "at+jwt", "kid": kid}), json!({"alg": alg, "typ": "JWT"})];
        for header in &headers {
            for (what, secret) in &secrets {
                let token = hmac_sign(alg, secret, &header.to_string(), &payload);
                report.add(refused(&app, &token, "invalid_token", &format!("{header} keyed with {what}")).await);
            }
        }
    }
    report.finish("j2_hmac_signed_with_the_public_key_is_refused");
}

#[tokio::test]
async fn j2_other_algorithms_are_refused() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let kid = kid_of(&t.access);
    let [_, p, s] = segments(&t.access);
    let junk = |n: usize| b64((0..n).map(|i| (i * 31 + 7) as u8).collect::<Vec<u8>>());
    let mut report = Report::default();
    report.add(accepted(&app, &t.access, &t, "control: the genuine token").await);
    let cases = [("RS256", 256), ("PS256", 256), ("ES384", 96), ("ES256", 64), ("RS512", 512), ("ES512", 132)];
    for (alg, len) in cases {
        let h = b64(json!({"alg": alg, "typ": "at+jwt", "kid": kid}).to_string());
        report.add(
            refused(&app, &format!("{h}.{p}.{}", junk(len)), "invalid_token", &format!("{alg} junk signature")).await,
        );
        report.add(
            refused(&app, &format!("{h}.{p}.{s}"), "invalid_token", &format!("{alg} with the genuine signature")).await,
        );
    }
    // The genuine signature under a header that only spells EdDSA differently.
    for alg in ["eddsa", "EDDSA", "Ed25519", "ED25519", "EdDSA ", "ES256K"] {
        let h = b64(json!({"alg": alg, "typ": "at+jwt", "kid": kid}).to_string());
        report.add(refused(&app, &format!("{h}.{p}.{s}"), "invalid_token", &format!("alg {alg:?}")).await);
    }
    report.finish("j2_other_algorithms_are_refused");
}

// ---------------------------------------------------------------------------------------------
// J3: signature integrity and token shape
// ---------------------------------------------------------------------------------------------

/// An ECDSA signature `r‖s` re-encoded as DER (`SEQUENCE { INTEGER r, INTEGER s }`).
fn der_ecdsa(sig: &[u8]) -> Vec<u8> {
    let int = |v: &[u8]| {
        let pad = v[0] & 0x80 != 0;
        let mut o = vec![0x02, (v.len() + usize::from(pad)) as u8];
        if pad {
            o.push(0);
        }
        o.extend_from_slice(v);
        o
    };
    let (r, s) = sig.split_at(sig.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

#[tokio::test]
async fn j3_tampered_signatures_are_refused() {
    let Some(app) = helpers::spawn_app().await else { return };
    let a = app.new_session().await;
    let b = app.new_session().await;
    let [ha, pa, sa] = segments(&a.access);
    let [hb, pb, sb] = segments(&b.access);
    let sig = unb64(&sa);
    let mut report = Report::default();
    report.add(accepted(&app, &a.access, &a, "control: user A's genuine token").await);
    report.add(accepted(&app, &b.access, &b, "control: user B's genuine token").await);

    // (a) One payload bit flipped, the JSON still valid (inside the jti).
    let mut bytes = unb64(&pa);
    let at = bytes.windows(7).position(|w| w == br#""jti":""#).expect("jti in payload") + 7;
    bytes[at] ^= 0x01;
    serde_json::from_slice::<Value>(&bytes).expect("still valid JSON");
    report.add(refused(&app, &format!("{ha}.{}.{sa}", b64(&bytes)), "invalid_token", "(a) payload bit flipped").await);
    // ... and a privilege escalation under the original signature.
    let mut claims: Value = serde_json::from_slice(&unb64(&pa)).unwrap();
    claims["roles"] = json!(["admin"]);
    report.add(
        refused(
            &app,
            &format!("{ha}.{}.{sa}", b64(claims.to_string())),
            "invalid_token",
            "(a) roles:[admin] re-encoded",
        )
        .await,
    );
    // One signature bit flipped.
    let mut flipped = sig.clone();
    flipped[10] ^= 0x01;
    report.add(
        refused(&app, &format!("{ha}.{pa}.{}", b64(&flipped)), "invalid_token", "(a) signature bit flipped").await,
    );

    // (b) Splices.
    report.add(refused(&app, &format!("{ha}.{pb}.{sa}"), "invalid_token", "(b) B's payload under A's signature").await);
    report
        .add(refused(&app, &format!("{hb}.{pb}.{sa}"), "invalid_token", "(b) B's header+payload, A's signature").await);
    report
        .add(refused(&app, &format!("{ha}.{pa}.{sb}"), "invalid_token", "(b) A's header+payload, B's signature").await);

    // (c) Truncated signatures.
    report.add(
        refused(&app, &format!("{ha}.{pa}.{}", &sa[..sa.len() - 2]), "invalid_token", "(c) signature minus 2 chars")
            .await,
    );
    report
        .add(refused(&app, &format!("{ha}.{pa}.{}", b64(&sig[..63])), "invalid_token", "(c) 63-byte signature").await);
    report
        .add(refused(&app, &format!("{ha}.{pa}.{}", b64(&sig[..32])), "invalid_token", "(c) 32-byte signature").await);
    report.add(
        refused(
            &app,
            &format!("{ha}.{pa}.{}", b64([&sig[..], &[0]].concat())),
            "invalid_token",
            "(c) 65-byte signature",
        )
        .await,
    );

    // (d) The psychic signature: all zeros, as EdDSA and as ES256 (r = s = 0).
    let zeros = b64([0u8; 64]);
    report.add(refused(&app, &format!("{ha}.{pa}.{zeros}"), "invalid_token", "(d) 64 zero bytes").await);
    let es256 = b64(json!({"alg": "ES256", "typ": "at+jwt", "kid": kid_of(&a.access)}).to_string());
    report.add(refused(&app, &format!("{es256}.{pa}.{zeros}"), "invalid_token", "(d) ES256 r=s=0").await);
    // S = L (the group order), a classic malleability case, and R = identity with S = 0.
    let mut s_is_l = sig[..32].to_vec();
    s_is_l.extend_from_slice(&[
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ]);
    report.add(refused(&app, &format!("{ha}.{pa}.{}", b64(&s_is_l)), "invalid_token", "(d) S = L").await);
    let mut identity = vec![0u8; 64];
    identity[0] = 1;
    report
        .add(refused(&app, &format!("{ha}.{pa}.{}", b64(&identity)), "invalid_token", "(d) R = identity, S = 0").await);

    // (e) The genuine signature DER-wrapped.
    report.add(
        refused(&app, &format!("{ha}.{pa}.{}", b64(der_ecdsa(&sig))), "invalid_token", "(e) DER-wrapped signature")
            .await,
    );
    report.add(
        refused(&app, &format!("{es256}.{pa}.{}", b64(der_ecdsa(&sig))), "invalid_token", "(e) ES256 DER signature")
            .await,
    );

    report.finish("j3_tampered_signatures_are_refused");
}

#[tokio::test]
async fn j3_malformed_token_shapes_are_refused() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let [h, p, s] = segments(&t.access);
    let mut report = Report::default();
    report.add(accepted(&app, &t.access, &t, "control: the genuine token").await);

    // (f) Segment counts.
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
        ("leading dot", format!(".{h}.{p}.{s}")),
    ];
    for (what, token) in shapes {
        report.add(refused(&app, &token, "invalid_token", &format!("(f) {what}")).await);
    }

    // (g) Not base64url, or padded.
    report.add(refused(&app, &format!("{h}=.{p}.{s}"), "invalid_token", "(g) header padded").await);
    report.add(refused(&app, &format!("{h}.{p}=.{s}"), "invalid_token", "(g) payload padded").await);
    report.add(refused(&app, &format!("{h}.{p}.{s}=="), "invalid_token", "(g) signature padded").await);
    report.add(
        refused(
            &app,
            &format!("{h}.{p}.{}", STANDARD.encode(unb64(&s))),
            "invalid_token",
            "(g) signature as padded base64",
        )
        .await,
    );
    report.add(refused(&app, &format!("*{}.{p}.{s}", &h[1..]), "invalid_token", "(g) '*' in header").await);
    report
        .add(refused(&app, &format!("{h}.{p}.{}!", &s[..s.len() - 1]), "invalid_token", "(g) '!' in signature").await);
    report.add(refused(&app, &format!("{h}.{}%41.{s}", &p), "invalid_token", "(g) percent-encoding in payload").await);
    report.add(
        refused(&app, &format!("{h}.{} {}.{s}", &p[..10], &p[10..]), "invalid_token", "(g) space inside payload").await,
    );
    // The standard alphabet (+ and / instead of - and _) where it differs from base64url.
    let segs = [&h, &p, &s];
    for (i, name) in ["header", "payload", "signature"].iter().enumerate() {
        let std = STANDARD_NO_PAD.encode(unb64(segs[i]));
        if std != *segs[i] {
            let mut parts = [h.clone(), p.clone(), s.clone()];
            parts[i] = std;
            report.add(
                refused(&app, &parts.join("."), "invalid_token", &format!("(g) {name} in the standard alphabet")).await,
            );
        }
    }
    // A non-canonical final character (unused low bits set): decodes to the same bytes with a
    // lenient decoder.
    let last = s.chars().last().unwrap();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.iter().position(|&c| c == last as u8).unwrap();
    // 64 bytes = 21 three-byte groups (84 chars) + 1 byte in 2 chars: the last char carries 2
    // bits of data and 4 unused bits, which canonical encoding leaves at zero.
    let tweaked = alphabet[(idx & !0b11) | 0b01] as char;
    report.add(
        refused(
            &app,
            &format!("{h}.{p}.{}{tweaked}", &s[..s.len() - 1]),
            "invalid_token",
            "(g) non-canonical last char",
        )
        .await,
    );
    report.finish("j3_malformed_token_shapes_are_refused");
}

// ---------------------------------------------------------------------------------------------
// J4: kid injection / unknown kid
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn j4_hostile_or_unknown_kid_is_refused() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let real_kid = kid_of(&t.access);
    let attacker = attacker_key();
    let payload = RawClaims::valid(&app, &t).json();
    let long_junk = "A".repeat(10 * 1024);
    let kids: Vec<(&str, Value)> = vec![
        ("path traversal", json!("../../../dev/null")),
        ("SQL injection", json!("' OR 1=1--")),
        ("10 KB of junk", json!(long_junk)),
        ("unknown UUID", json!(uuid::Uuid::new_v4().to_string())),
        ("empty string", json!("")),
        ("URL", json!("https://evil.example/jwks.json")),
        ("null", Value::Null),
        ("number", json!(1)),
        ("array with the real kid", json!([real_kid])),
        ("object", json!({"kid": real_kid})),
        ("real kid plus trailing space", json!(format!("{real_kid} "))),
        ("real kid upper-cased", json!(real_kid.to_uppercase())),
        ("real kid with NUL", json!(format!("{real_kid}\u{0}"))),
        ("real kid (attacker signature)", json!(real_kid)),
    ];
    let mut report = Report::default();
    report.add(accepted(&app, &t.access, &t, "control: the genuine token").await);
    for (what, kid) in kids {
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid}).to_string();
        let token = sign_with(&attacker, &header, &payload);
        let start = Instant::now();
        report.add(refused(&app, &token, "invalid_token", &format!("kid {what}")).await);
        let took = start.elapsed();
        if took > Duration::from_secs(2) {
            report.add(Err(format!("kid {what}: took {took:?}")));
        }
    }
    let no_kid = sign_with(&attacker, &json!({"alg": "EdDSA", "typ": "at+jwt"}).to_string(), &payload);
    report.add(refused(&app, &no_kid, "invalid_token", "no kid").await);
    // Keysets stay as they were: nothing was fetched or added.
    let kids_after = app.state.keys.kids();
    if kids_after != vec![real_kid.clone()] {
        report.add(Err(format!("keyset changed: {kids_after:?}")));
    }
    report.finish("j4_hostile_or_unknown_kid_is_refused");
}

// ---------------------------------------------------------------------------------------------
// J5: attacker-supplied keys, crit, nested tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn j5_attacker_key_headers_are_refused() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let real_kid = kid_of(&t.access);
    let attacker = attacker_key();
    let payload = RawClaims::valid(&app, &t).json();
    let jwks_url = app.url("/.well-known/jwks.json");
    let headers = vec![
        (
            "jwk, own kid",
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "attacker", "jwk": jwk_of(&attacker, "attacker")}),
        ),
        (
            "jwk, real kid",
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": real_kid, "jwk": jwk_of(&attacker, &real_kid)}),
        ),
        ("jwk, no kid", json!({"alg": "EdDSA", "typ": "at+jwt", "jwk": jwk_of(&attacker, "attacker")})),
        (
            "jku evil",
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "attacker", "jku": "https://evil.example/jwks.json"}),
        ),
        ("jku own JWKS", json!({"alg": "EdDSA", "typ": "at+jwt", "kid": real_kid, "jku": jwks_url})),
        (
            "x5u evil",
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "attacker", "x5u": "https://evil.example/cert.pem"}),
        ),
        ("x5c junk", json!({"alg": "EdDSA", "typ": "at+jwt", "kid": real_kid, "x5c": [STANDARD.encode([0x30u8; 64])]})),
        (
            "crit x-unknown",
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": real_kid, "crit": ["x-unknown"], "x-unknown": 1}),
        ),
        ("crit exp", json!({"alg": "EdDSA", "typ": "at+jwt", "kid": real_kid, "crit": ["exp"]})),
        ("cty JWT", json!({"alg": "EdDSA", "typ": "at+jwt", "kid": real_kid, "cty": "JWT"})),
    ];
    let mut report = Report::default();
    report.add(accepted(&app, &t.access, &t, "control: the genuine token").await);
    for (what, header) in headers {
        let token = sign_with(&attacker, &header.to_string(), &payload);
        report.add(refused(&app, &token, "invalid_token", &format!("attacker key, {what}")).await);
    }
    // Nested: the genuine token as the payload of an attacker-signed outer token.
    let outer = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": real_kid, "cty": "JWT"}).to_string();
    report.add(
        refused(&app, &sign_with(&attacker, &outer, &t.access), "invalid_token", "attacker key, nested genuine JWT")
            .await,
    );
    report.finish("j5_attacker_key_headers_are_refused");
}

#[tokio::test]
async fn j5_forbidden_header_params_are_refused_even_with_the_real_key() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let real = RealSigner::of(&app, &t.access).await;
    let kid = real.kid.clone();
    let claims = RawClaims::valid(&app, &t);
    let payload = claims.json();
    let real_jwk =
        jwks(&app).await["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).unwrap().clone();
    let mut report = Report::default();
    report.add(accepted(&app, &real.sign_claims(&claims), &t, "control: crafted token with the real key").await);

    let base = |extra: Value| {
        let mut h = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h.to_string()
    };
    let cases = vec![
        ("crit [exp]", base(json!({"crit": ["exp"]}))),
        ("crit [x-unknown]", base(json!({"crit": ["x-unknown"], "x-unknown": true}))),
        ("crit []", base(json!({"crit": []}))),
        ("cty JWT", base(json!({"cty": "JWT"}))),
        ("cty application/json", base(json!({"cty": "application/json"}))),
        ("jwk (the server's own public JWK)", base(json!({"jwk": real_jwk}))),
        ("jku (the server's own JWKS)", base(json!({"jku": app.url("/.well-known/jwks.json")}))),
        ("x5u", base(json!({"x5u": "https://evil.example/cert.pem"}))),
        ("x5c", base(json!({"x5c": [STANDARD.encode([0x30u8; 64])]}))),
        ("x5t", base(json!({"x5t": b64([1u8; 20])}))),
        ("b64 false + crit", base(json!({"b64": false, "crit": ["b64"]}))),
        ("zip DEF", base(json!({"zip": "DEF"}))),
        ("enc (JWE)", base(json!({"enc": "A256GCM"}))),
        ("unknown parameter", base(json!({"foo": "bar"}))),
        ("duplicate alg none,EdDSA", format!(r#"{{"alg":"none","alg":"EdDSA","typ":"at+jwt","kid":"{kid}"}}"#)),
        ("duplicate alg EdDSA,none", format!(r#"{{"alg":"EdDSA","alg":"none","typ":"at+jwt","kid":"{kid}"}}"#)),
        ("duplicate typ JWT,at+jwt", format!(r#"{{"typ":"JWT","alg":"EdDSA","typ":"at+jwt","kid":"{kid}"}}"#)),
        ("duplicate kid unknown,real", format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"unknown","kid":"{kid}"}}"#)),
        ("alg eddsa", format!(r#"{{"alg":"eddsa","typ":"at+jwt","kid":"{kid}"}}"#)),
        ("alg Ed25519", format!(r#"{{"alg":"Ed25519","typ":"at+jwt","kid":"{kid}"}}"#)),
        ("header is an array", format!(r#"["EdDSA","at+jwt","{kid}"]"#)),
    ];
    for (what, header) in cases {
        report.add(refused(&app, &real.sign(&header, &payload), "invalid_token", &format!("real key, {what}")).await);
    }
    // Nested JWT: the genuine token as the payload, signed with the real key.
    let nested = base(json!({"cty": "JWT"}));
    report.add(refused(&app, &real.sign(&nested, &t.access), "invalid_token", "real key, nested JWT payload").await);
    report.finish("j5_forbidden_header_params_are_refused_even_with_the_real_key");
}

// ---------------------------------------------------------------------------------------------
// J6: token purpose (typ) confusion
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn j6_typ_other_than_at_jwt_is_refused() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let real = RealSigner::of(&app, &t.access).await;
    let kid = real.kid.clone();
    let claims = RawClaims::valid(&app, &t);
    let payload = claims.json();
    let mut report = Report::default();
    report.add(accepted(&app, &real.sign_claims(&claims), &t, "control: typ at+jwt").await);
    // RFC 9068 §4: "at+jwt" or "application/at+jwt"; media types compare case-insensitively.
    for typ in ["AT+JWT", "application/at+jwt"] {
        let h = json!({"alg": "EdDSA", "typ": typ, "kid": kid}).to_string();
        report.add(accepted(&app, &real.sign(&h, &payload), &t, &format!("control: typ {typ:?}")).await);
    }

    // Attacker key with typ JWT.
    let attacker = attacker_key();
    let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}).to_string();
    report.add(refused(&app, &sign_with(&attacker, &h, &payload), "invalid_token", "attacker key, typ JWT").await);
    // A genuine token whose header is swapped for one with typ JWT (the signature breaks).
    let [_, p, s] = segments(&t.access);
    report.add(refused(&app, &format!("{}.{p}.{s}", b64(&h)), "invalid_token", "genuine token, header typ JWT").await);

    // The real key.
    let typs: Vec<(&str, Option<Value>)> = vec![
        ("JWT", Some(json!("JWT"))),
        ("jwt", Some(json!("jwt"))),
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
        let mut h = json!({"alg": "EdDSA", "kid": kid});
        if let Some(v) = typ {
            h["typ"] = v;
        }
        report.add(
            refused(&app, &real.sign(&h.to_string(), &payload), "invalid_token", &format!("real key, typ {what}"))
                .await,
        );
    }

    // Other token kinds: the refresh token is no access token, and the reverse.
    report.add(refused(&app, &t.refresh, "invalid_token", "refresh token presented as access token").await);
    let r = app.refresh(&t.access).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status != StatusCode::UNAUTHORIZED || body["code"] != "invalid_refresh_token" {
        report.add(Err(format!("access token presented as refresh token: {status} {body}")));
    }
    report.add(accepted(&app, &t.access, &t, "the genuine token still works").await);
    report.finish("j6_typ_other_than_at_jwt_is_refused");
}

// ---------------------------------------------------------------------------------------------
// J7: claim type confusion / malformed claims (signed with the real key)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn j7_malformed_claims_are_refused() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let other = app.new_session().await;
    let real = RealSigner::of(&app, &t.access).await;
    let c = RawClaims::valid(&app, &t);
    let now = app.clock.now_secs();
    let q = |s: &str| Value::from(s).to_string();
    let mut report = Report::default();
    report.add(accepted(&app, &real.sign_claims(&c), &t, "control: crafted token with the real key").await);
    report.add(accepted(&app, &real.sign_claims(&c.set("nbf", (now - 10).to_string())), &t, "control: past nbf").await);
    report.add(accepted(&app, &real.sign_claims(&c.set("extra", "[1,2,3]")), &t, "control: unknown claim").await);

    let cases: Vec<(&str, RawClaims)> = vec![
        ("exp missing", c.without("exp")),
        ("exp string \"9999999999\"", c.set("exp", q("9999999999"))),
        ("exp string of a valid time", c.set("exp", q(&(now + 300).to_string()))),
        ("exp 1e30", c.set("exp", "1e30")),
        ("exp -1", c.set("exp", "-1")),
        ("exp null", c.set("exp", "null")),
        ("exp true", c.set("exp", "true")),
        ("exp array", c.set("exp", format!("[{}]", now + 300))),
        ("exp beyond u64", c.set("exp", "18446744073709551616")),
        ("exp beyond i64", c.set("exp", "9223372036854775808")),
        ("nbf string \"99999999999\"", c.set("nbf", q("99999999999"))),
        ("nbf -1", c.set("nbf", "-1")),
        ("nbf null", c.set("nbf", "null")),
        ("iat missing", c.without("iat")),
        ("iat string", c.set("iat", q(&now.to_string()))),
        ("roles missing", c.without("roles")),
        ("roles string", c.set("roles", q("admin"))),
        ("duplicate sub (own, other)", c.push("sub", q(&other.user_id))),
        ("duplicate sub (other, own)", c.set("sub", q(&other.user_id)).push("sub", q(&t.user_id))),
        ("duplicate sub (same twice)", c.push("sub", q(&t.user_id))),
        ("duplicate exp (future, past)", c.push("exp", (now - 3600).to_string())),
        ("duplicate exp (past, future)", c.set("exp", (now - 3600).to_string()).push("exp", (now + 300).to_string())),
        ("duplicate sid", c.push("sid", q(&other.session_id))),
    ];
    for (what, claims) in cases {
        report.add(refused(&app, &real.sign_claims(&claims), "invalid_token", &format!("real key, {what}")).await);
    }
    // Payloads that are not a JSON object.
    for (what, payload) in
        [("array", "[]".to_string()), ("string", q("x")), ("empty", String::new()), ("null", "null".into())]
    {
        report.add(
            refused(&app, &real.sign(&good_header(&real.kid), &payload), "invalid_token", &format!("payload {what}"))
                .await,
        );
    }
    report.finish("j7_malformed_claims_are_refused");
}

/// An `exp` near `i64::MAX` passes `jsonwebtoken` (it fits a u64 and is in the future) and the
/// `Claims` struct (it fits an i64), then reaches the server's own `c.exp + LEEWAY_SECS < now`.
/// Only the server's key can produce such a token, but the verifier must not fail with a 5xx.
#[tokio::test]
async fn j7_exp_near_i64_max_is_handled_without_a_server_error() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let real = RealSigner::of(&app, &t.access).await;
    let c = RawClaims::valid(&app, &t);
    let mut report = Report::default();
    report.add(accepted(&app, &real.sign_claims(&c), &t, "control: crafted token with the real key").await);
    for exp in [i64::MAX, i64::MAX - 29] {
        let p = probe(&app, &real.sign_claims(&c.set("exp", exp.to_string()))).await;
        // Either answer is defensible for a token the server signed (accept a far future exp,
        // or refuse it); a 5xx is not.
        if p.status != StatusCode::OK && p.status != StatusCode::UNAUTHORIZED {
            report.add(Err(format!("exp {exp}: got {} {}", p.status, p.body)));
        } else {
            report.add(Ok(()));
        }
    }
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    report.add(if health.status() == StatusCode::OK { Ok(()) } else { Err(format!("healthz {}", health.status())) });
    report.finish("j7_exp_near_i64_max_is_handled_without_a_server_error");
}

// ---------------------------------------------------------------------------------------------
// J8: time validation (leeway 30 s)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn j8_time_validation_uses_a_30_second_leeway() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let real = RealSigner::of(&app, &t.access).await;
    let c = RawClaims::valid(&app, &t);
    let now = app.clock.now_secs();
    let at = |iat: i64, exp: i64| c.set("iat", iat.to_string()).set("exp", exp.to_string());
    let mut report = Report::default();
    report.add(accepted(&app, &real.sign_claims(&c), &t, "control: crafted token with the real key").await);

    // exp: 30 s of leeway, not more.
    let expired = real.sign_claims(&at(now - 331, now - 31));
    report.add(refused(&app, &expired, "token_expired", "exp = now - 31").await);
    report
        .add(refused(&app, &real.sign_claims(&at(now - 3600, now - 3300)), "token_expired", "exp = now - 3300").await);
    report.add(
        accepted(&app, &real.sign_claims(&at(now - 325, now - 25)), &t, "exp = now - 25 (inside the leeway)").await,
    );

    // iat in the future: refused beyond the leeway (our own check).
    report.add(refused(&app, &real.sign_claims(&at(now + 35, now + 335)), "invalid_token", "iat = now + 35").await);
    report
        .add(refused(&app, &real.sign_claims(&at(now + 3600, now + 3900)), "invalid_token", "iat = now + 3600").await);
    report.add(
        accepted(&app, &real.sign_claims(&at(now + 25, now + 325)), &t, "iat = now + 25 (inside the leeway)").await,
    );

    // nbf (validated when present) with the same leeway.
    report.add(
        refused(&app, &real.sign_claims(&c.set("nbf", (now + 35).to_string())), "invalid_token", "nbf = now + 35")
            .await,
    );
    report.add(accepted(&app, &real.sign_claims(&c.set("nbf", (now + 25).to_string())), &t, "nbf = now + 25").await);

    // The server's injectable clock decides too (`jsonwebtoken` itself reads the system clock):
    // 5 min + 31 s later the genuine token and the crafted one have expired.
    let crafted = real.sign_claims(&c);
    app.clock.advance(Duration::from_secs(300 + 31));
    report.add(refused(&app, &t.access, "token_expired", "genuine token at exp + 31 (server clock)").await);
    report.add(refused(&app, &crafted, "token_expired", "crafted token at exp + 31 (server clock)").await);
    report.finish("j8_time_validation_uses_a_30_second_leeway");
}

// ---------------------------------------------------------------------------------------------
// J9 (and J11's "no sid"): issuer, audience, subject, session
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn j9_issuer_audience_subject_and_session_are_enforced() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let real = RealSigner::of(&app, &t.access).await;
    let c = RawClaims::valid(&app, &t);
    let q = |s: &str| Value::from(s).to_string();
    let iss = app.config.issuer.clone();
    let aud = app.config.audience.clone();
    let mut report = Report::default();
    report.add(accepted(&app, &real.sign_claims(&c), &t, "control: crafted token with the real key").await);

    let cases: Vec<(&str, RawClaims)> = vec![
        ("iss missing", c.without("iss")),
        ("iss wrong", c.set("iss", q("https://evil.example"))),
        ("iss with trailing slash", c.set("iss", q(&format!("{iss}/")))),
        ("iss upper-cased", c.set("iss", q(&iss.to_uppercase()))),
        ("iss null", c.set("iss", "null")),
        ("iss array [ours]", c.set("iss", json!([iss]).to_string())),
        ("aud missing", c.without("aud")),
        ("aud wrong", c.set("aud", q("other-service"))),
        ("aud empty", c.set("aud", q(""))),
        ("aud null", c.set("aud", "null")),
        // Documented decision (jwt.rs `Claims`): multi-audience tokens are not ours.
        ("aud [ours, other]", c.set("aud", json!([aud, "other-service"]).to_string())),
        ("aud [other, ours]", c.set("aud", json!(["other-service", aud]).to_string())),
        ("aud [ours]", c.set("aud", json!([aud]).to_string())),
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
        report.add(refused(&app, &real.sign_claims(&claims), "invalid_token", &format!("real key, {what}")).await);
    }
    report.finish("j9_issuer_audience_subject_and_session_are_enforced");
}

// ---------------------------------------------------------------------------------------------
// J10: oversized and malformed Authorization headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn j10_oversized_authorization_headers_are_refused_quickly() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let [h, _, s] = segments(&t.access);
    let mut report = Report::default();
    let cases = [
        ("8 KB junk", format!("Bearer {}", "A".repeat(8 * 1024))),
        ("64 KB junk", format!("Bearer {}", "A".repeat(64 * 1024))),
        ("8 KB JWT-shaped", format!("Bearer {h}.{}.{s}", "A".repeat(8 * 1024))),
        ("64 KB JWT-shaped", format!("Bearer {h}.{}.{s}", "A".repeat(64 * 1024))),
        ("token of 4097 bytes", format!("Bearer {h}.{}.{s}", "A".repeat(4097 - h.len() - s.len() - 2))),
    ];
    for (what, value) in cases {
        let start = Instant::now();
        let p = probe_with(&app, Some(&value)).await;
        let took = start.elapsed();
        report.add(check_refused(&p, "invalid_token", what));
        if took > Duration::from_secs(2) {
            report.add(Err(format!("{what}: took {took:?}")));
        }
    }

    // 1 MB: hyper may answer 431 or close the connection; never a 5xx, and the server lives on.
    let start = Instant::now();
    let big = format!("Bearer {}", "A".repeat(1024 * 1024));
    match app.client.get(app.url("/v1/me")).header(AUTHORIZATION, big).send().await {
        Ok(r) => {
            eprintln!("1 MB Authorization: {}", r.status());
            if !r.status().is_client_error() {
                report.add(Err(format!("1 MB Authorization: expected a 4xx, got {}", r.status())));
            }
        }
        Err(e) => eprintln!("1 MB Authorization: connection closed ({e})"),
    }
    if start.elapsed() > Duration::from_secs(5) {
        report.add(Err(format!("1 MB Authorization: took {:?}", start.elapsed())));
    }
    let health = app.client.get(app.url("/healthz")).send().await.expect("server still answers");
    report.add(if health.status() == StatusCode::OK { Ok(()) } else { Err(format!("healthz {}", health.status())) });
    report.add(accepted(&app, &t.access, &t, "the genuine token still works").await);

    // The 4096-byte limit applies to validly signed tokens too: the longest real-key token that
    // fits is accepted, the shortest one over it is refused.
    let real = RealSigner::of(&app, &t.access).await;
    let c = RawClaims::valid(&app, &t);
    let padded = |n: usize| real.sign_claims(&c.set("pad", Value::from("x".repeat(n)).to_string()));
    let fits = (0..4096).map(padded).take_while(|tok| tok.len() <= 4096).last().unwrap();
    let over = (0..4096).map(padded).find(|tok| tok.len() > 4096).unwrap();
    assert!(fits.len() >= 4093 && over.len() <= 4100, "{} {}", fits.len(), over.len());
    report.add(accepted(&app, &fits, &t, &format!("real-key token of {} bytes", fits.len())).await);
    report.add(refused(&app, &over, "invalid_token", &format!("real-key token of {} bytes", over.len())).await);
    report.finish("j10_oversized_authorization_headers_are_refused_quickly");
}

#[tokio::test]
async fn j10_malformed_authorization_headers_are_refused() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let mut report = Report::default();

    // No header: the bare challenge, no error attribute (RFC 6750 §3.1).
    let p = probe_with(&app, None).await;
    let ok = p.status == StatusCode::UNAUTHORIZED
        && p.body["code"] == "invalid_token"
        && p.content_type.as_deref() == Some("application/problem+json")
        && p.www_authenticate.as_deref() == Some("Bearer");
    report.add(if ok {
        Ok(())
    } else {
        Err(format!("no header: got {} {} www-authenticate={:?}", p.status, p.body["code"], p.www_authenticate))
    });

    // `Bearer` with no value presents no token: the bare challenge and "needs a token", not
    // "the token is not valid" (an unset `$ACCESS_TOKEN` in a shell is the usual cause).
    for (what, value) in [("Bearer alone", "Bearer"), ("Bearer and spaces", "Bearer   ")] {
        let p = probe_with(&app, Some(value)).await;
        let ok = p.status == StatusCode::UNAUTHORIZED
            && p.body["code"] == "invalid_token"
            && p.body["detail"] == "This endpoint needs a Bearer access token."
            && p.www_authenticate.as_deref() == Some("Bearer");
        report.add(if ok { Ok(()) } else { Err(format!("{what}: got {} {}", p.status, p.body)) });
    }

    let cases = [
        ("Basic credentials", "Basic dXNlcjpwYXNz".to_string()),
        ("Basic with the access token", format!("Basic {}", t.access)),
        ("Token scheme", format!("Token {}", t.access)),
        ("token without scheme", t.access.clone()),
        ("Bearer, token, extra word", format!("Bearer {} extra", t.access)),
        ("two tokens, comma", format!("Bearer {}, Bearer {}", t.access, t.access)),
        ("Bearer with junk", "Bearer not-a-jwt".to_string()),
    ];
    for (what, value) in cases {
        report.add(check_refused(&probe_with(&app, Some(&value)).await, "invalid_token", what));
    }
    // Non-ASCII bytes in the header value.
    let r = app
        .client
        .get(app.url("/v1/me"))
        .header(AUTHORIZATION, reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe.\xff.\xff").unwrap())
        .send()
        .await
        .unwrap();
    let (status, www) = (r.status(), r.headers().get(WWW_AUTHENTICATE).cloned());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    report.add(
        if status == StatusCode::UNAUTHORIZED
            && body["code"] == "invalid_token"
            && www.as_ref().map(|v| v.as_bytes()) == Some(CHALLENGE_INVALID.as_bytes())
        {
            Ok(())
        } else {
            Err(format!("non-ASCII header: {status} {body}"))
        },
    );
    // A presented bad token names the error; the scheme is case-insensitive (RFC 7235 §2.1).
    report.add(refused(&app, "x.y.z", "invalid_token", "bad token challenge").await);
    let p = probe_with(&app, Some(&format!("bearer {}", t.access))).await;
    report.add(if p.status == StatusCode::OK { Ok(()) } else { Err(format!("lower-case scheme: {}", p.status)) });
    report.finish("j10_malformed_authorization_headers_are_refused");
}

#[tokio::test]
async fn j10_deeply_nested_json_is_refused_without_a_crash() {
    let Some(app) = helpers::spawn_app().await else { return };
    let t = app.new_session().await;
    let real_kid = kid_of(&t.access);
    let attacker = attacker_key();
    let mut report = Report::default();

    // The header is parsed before any signature check: nesting there is attacker-reachable.
    let depth = 1300;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let header = format!(r#"{{"alg":{nested},"typ":"at+jwt","kid":"{real_kid}"}}"#);
    let token = format!("{}.{}.{}", b64(&header), b64("{}"), b64([0u8; 64]));
    assert!(token.len() <= 4096, "fits under the token length limit: {}", token.len());
    report.add(refused(&app, &token, "invalid_token", "1300-deep arrays in the header").await);
    let header = format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{real_kid}","x":{nested}}}"#);
    let token = format!("{}.{}.{}", b64(&header), b64("{}"), b64([0u8; 64]));
    report.add(refused(&app, &token, "invalid_token", "1300-deep arrays in an extra header member").await);
    // In the payload, behind an attacker signature and the real kid; and 10 000 deep (too long).
    let c = RawClaims::valid(&app, &t).set("x", nested.clone());
    report.add(
        refused(&app, &sign_with(&attacker, &good_header(&real_kid), &c.json()), "invalid_token", "nested payload")
            .await,
    );
    let deep = RawClaims::valid(&app, &t).set("x", format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)));
    report.add(
        refused(
            &app,
            &sign_with(&attacker, &good_header(&real_kid), &deep.json()),
            "invalid_token",
            "10 000-deep payload",
        )
        .await,
    );

    let health = app.client.get(app.url("/healthz")).send().await.expect("server still answers");
    report.add(if health.status() == StatusCode::OK { Ok(()) } else { Err(format!("healthz {}", health.status())) });
    report.add(accepted(&app, &t.access, &t, "the genuine token still works").await);
    report.finish("j10_deeply_nested_json_is_refused_without_a_crash");
}

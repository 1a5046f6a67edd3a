//! Access-token verification (`Keys::verify`) against a loaded key: never panics, and never
//! accepts what the contract refuses.
//!
//! The first byte picks a mode:
//! - 0: the rest is a token (UTF-8, or Latin-1 when it is not UTF-8), verified as is;
//! - 1: the rest is `header JSON` `\n` `payload JSON`; the target encodes both and signs them
//!   with the loaded key, so the fuzzer reaches the claim checks behind the signature;
//! - 2: as 0, and the cached, uncached and unremembered answers must agree.
//!
//! The key is fixed (seed and kid), so crashes reproduce; its kid is `fuzz-kid`.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use sessiond::store::KeyRow;
use sessiond::tokens::jwt::{Keys, LEEWAY_SECS};

const ISS: &str = "https://issuer.fuzz";
const AUD: &str = "sessiond-fuzz";
const KID: &str = "fuzz-kid";

struct Fixture {
    keys: Keys,
    signer: SigningKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let signer = SigningKey::from_bytes(&[7; 32]);
        let row = KeyRow {
            kid: KID.into(),
            private_der: signer.to_pkcs8_der().expect("PKCS#8").as_bytes().to_vec(),
            public_x: URL_SAFE_NO_PAD.encode(signer.verifying_key().as_bytes()),
            created_at: 0,
            activates_at: 0,
        };
        let keys = Keys::new(ISS, AUD, Duration::from_secs(900));
        keys.load(&[row], now_secs() * 1000);
        Fixture { keys, signer }
    })
}

/// `jsonwebtoken` reads the system clock for `exp`, so the target does too.
fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixture();
    let now = now_secs();
    match mode % 3 {
        0 => {
            let token = text(rest);
            // Nothing unsigned by the fixed key can pass; the fuzzer cannot forge Ed25519.
            assert!(f.keys.verify(&token, now).is_err(), "accepted an unsigned token: {token:?}");
        }
        1 => {
            let (header, payload) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
            let sig = f.signer.sign(message.as_bytes());
            let token = format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
            if let Ok(c) = f.keys.verify(&token, now) {
                // Accepted: the header policy and the claim contract held.
                let h: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(header).expect("accepted header is a JSON object");
                assert!(h.keys().all(|k| ["alg", "typ", "kid"].contains(&k.as_str())), "header {h:?}");
                assert_eq!(h.get("alg").and_then(|v| v.as_str()), Some("EdDSA"));
                assert_eq!(h.get("kid").and_then(|v| v.as_str()), Some(KID));
                assert_eq!((c.iss.as_str(), c.aud.as_str()), (ISS, AUD));
                assert!(!c.sub.is_empty() && !c.sid.is_empty() && !c.jti.is_empty());
                assert!(c.exp.saturating_add(LEEWAY_SECS) >= now && c.iat <= now + LEEWAY_SECS);
                // And again from the cache, identically.
                assert_eq!(f.keys.verify(&token, now), Ok(c));
            }
        }
        _ => {
            let token = text(rest);
            let first = f.keys.verify(&token, now);
            assert_eq!(f.keys.verify(&token, now), first);
            assert_eq!(f.keys.verify_with(&token, now, false), first);
            assert!(first.is_err());
        }
    }
});

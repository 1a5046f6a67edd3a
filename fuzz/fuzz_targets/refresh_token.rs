//! The refresh-token format (`RefreshToken::parse`): never panics, and accepts only `rt_` and
//! 43 base64url characters (32 bytes, canonical). Also opens arbitrary sealed blobs.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sessiond::tokens::refresh::{RefreshToken, TOKEN_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(t) = RefreshToken::parse(s) {
            assert_eq!(t.as_str(), s);
            assert_eq!(s.len(), TOKEN_LEN);
            assert!(s.starts_with("rt_"));
            assert!(s[3..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }
    // A sealed successor is read from the database, not from clients, but must not panic.
    static KEY: OnceLock<RefreshToken> = OnceLock::new();
    let key = KEY.get_or_init(RefreshToken::generate);
    let _ = key.open(data);
});

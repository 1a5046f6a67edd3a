//! The `Authorization: Bearer` parser (`http::extract::bearer`): never panics, and a token it
//! returns is non-empty, trimmed and taken from the value after a case-insensitive `Bearer `.
#![no_main]

use axum::http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sessiond::http::extract::bearer;
use sessiond::tokens::jwt::MAX_TOKEN_LEN;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value);
    if let Ok(Some(token)) = bearer(&headers) {
        assert!(data.len() <= MAX_TOKEN_LEN + 16);
        assert!(!token.is_empty() && token.trim() == token);
        assert!(data[..7].eq_ignore_ascii_case(b"bearer "));
        let rest = std::str::from_utf8(&data[7..]).expect("accepted values are ASCII");
        assert_eq!(rest.trim(), token);
    }
});

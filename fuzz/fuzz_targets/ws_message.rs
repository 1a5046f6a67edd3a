//! The WebSocket client-message parser (`hub::protocol::parse`): never panics, and an `auth`
//! it returns carries a non-empty token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiond::hub::protocol::{parse, ClientMessage};

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (the socket closes 1007 otherwise); fuzz the lossy text too.
    let text = String::from_utf8_lossy(data);
    if let Ok(ClientMessage::Auth { access_token }) = parse(&text) {
        assert!(!access_token.is_empty());
    }
});

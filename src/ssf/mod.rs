//! The OpenID Shared Signals transmitter (docs/SSF.md, API.md §11): streams of Security Event
//! Tokens to the app's other services and to push-only receivers.
//!
//! - [`push`]: the HTTP side of RFC 8935 push delivery: which endpoint URLs are acceptable (SSRF),
//!   one POST of one SET, how the receiver's answer is classified, and the retry curve.
pub mod push;

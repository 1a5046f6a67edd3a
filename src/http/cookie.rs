//! Cookie mode for browsers: the refresh token lives in a `__Host-` cookie (`Secure; HttpOnly;
//! SameSite=Strict; Path=/`) that scripts cannot read, instead of in the response body.
//!
//! A request that *uses* the cookie must also prove it comes from our own pages (CSRF
//! defence in depth on top of SameSite=Strict): its `Origin` must be one of
//! `--allowed-origins` and it must carry the custom header `X-Sessiond-Csrf`, which a
//! cross-site form cannot send and a cross-site `fetch` cannot send without a CORS preflight
//! that we never grant. Otherwise: 403, and nothing changes.

use axum::http::{header, HeaderMap, HeaderValue};

use crate::error::AppError;
use crate::state::AllowedOrigins;

/// The cookie's name (the `__Host-` prefix makes browsers enforce Secure, Path=/, no Domain).
pub const REFRESH_COOKIE: &str = "__Host-sessiond_refresh";
/// The header a cookie-mode request must carry.
pub const CSRF_HEADER: &str = "x-sessiond-csrf";

/// The refresh token from the cookie, if the request has one.
pub fn refresh_from_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == REFRESH_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// 403 unless the request comes from an allowed Origin and carries the CSRF header.
pub fn check_csrf(origins: &AllowedOrigins, headers: &HeaderMap) -> Result<(), AppError> {
    let origin_ok = headers.get(header::ORIGIN).is_some_and(|o| origins.allows(o));
    let header_ok = headers.get(CSRF_HEADER).is_some_and(|v| !v.is_empty());
    if origin_ok && header_ok {
        Ok(())
    } else {
        tracing::debug!(origin_ok, header_ok, "cookie request refused (CSRF)");
        Err(AppError::Forbidden)
    }
}

/// `Set-Cookie` holding `token` for `max_age` seconds.
pub fn set_refresh_cookie(token: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.max(0)
    ))
    .unwrap_or_else(|_| clear_refresh_cookie())
}

/// `Set-Cookie` deleting the cookie.
pub fn clear_refresh_cookie() -> HeaderValue {
    HeaderValue::from_static("__Host-sessiond_refresh=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

//! The `Authorization: Bearer …` header (RFC 6750 §2.1), read exactly as sessiond reads it, so
//! the same header gets the same answer from sessiond and from every resource server.

use crate::problem::Rejection;
use crate::token::MAX_TOKEN_LEN;

/// The longest `Authorization` value looked at: a maximal token plus the scheme and spaces.
pub const MAX_AUTHORIZATION_LEN: usize = MAX_TOKEN_LEN + 16;

/// The token of an `Authorization` header value (`None`: no header).
///
/// No header is `InvalidToken { presented: false }` (the bare `Bearer` challenge); a header that
/// is present but unusable (too long, not visible ASCII, another scheme, no token) is
/// `InvalidToken { presented: true }`. The scheme is case-insensitive (RFC 7235 §2.1); the token
/// is trimmed of surrounding whitespace.
pub fn bearer_token(authorization: Option<&[u8]>) -> Result<&str, Rejection> {
    const INVALID: Rejection = Rejection::InvalidToken { presented: true };
    let Some(value) = authorization else { return Err(Rejection::InvalidToken { presented: false }) };
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(INVALID);
    }
    // What `http::HeaderValue::to_str` accepts: visible ASCII and tab.
    if !value.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        return Err(INVALID);
    }
    let value = std::str::from_utf8(value).map_err(|_| INVALID)?;
    let (scheme, token) = value.split_once(' ').ok_or(INVALID)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(INVALID);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRESENTED: Rejection = Rejection::InvalidToken { presented: true };

    #[test]
    fn the_token_is_taken_from_a_bearer_header() {
        assert_eq!(bearer_token(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some(b"bearer abc")), Ok("abc"), "the scheme is case-insensitive");
        assert_eq!(bearer_token(Some(b"BEARER  abc ")), Ok("abc"));
    }

    /// Ported from sessiond's `j10_malformed_authorization_headers_are_refused` (header part).
    #[test]
    fn unusable_headers_are_refused() {
        assert_eq!(bearer_token(None), Err(Rejection::InvalidToken { presented: false }));
        let cases: [&[u8]; 7] = [
            b"Basic dXNlcjpwYXNz",
            b"Bearer",
            b"Bearer   ",
            b"Token abc",
            b"abc.def.ghi",
            b"Bearer \xff\xfe.\xff.\xff",
            b"Bearer a\x00b",
        ];
        for value in cases {
            assert_eq!(bearer_token(Some(value)), Err(PRESENTED), "{:?}", String::from_utf8_lossy(value));
        }
        let long = format!("Bearer {}", "A".repeat(MAX_AUTHORIZATION_LEN));
        assert_eq!(bearer_token(Some(long.as_bytes())), Err(PRESENTED));
        // Extra words stay in the token, which then fails verification.
        assert_eq!(bearer_token(Some(b"Bearer a.b.c extra")), Ok("a.b.c extra"));
    }
}

//! The answers a protected resource gives when it refuses a request: sessiond's own RFC 9457
//! problem+json bodies and headers (docs/API.md §2), byte for byte, so a client handles a refusal
//! from any resource server exactly as one from sessiond.
//!
//! Bodies hold no per-request fields: equal refusals have byte-identical bodies, and nothing
//! from the request (least of all the token) is ever echoed.

use crate::token::VerifyError;

/// The media type of every body here (RFC 9457 §3).
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
/// `Retry-After` of a 503 in seconds, as sessiond sends it (RFC 9110 §10.2.3): a feed that
/// dropped usually reconnects within a second.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Why a protected request is refused. Each variant has one status, one stable `code`, one
/// fixed detail sentence (sessiond's), and the headers sessiond sends with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// 401 `invalid_token`; `presented` says whether a token was sent (RFC 6750 §3).
    #[error("invalid token")]
    InvalidToken { presented: bool },
    /// 401 `token_expired`: refresh, then retry.
    #[error("token expired")]
    TokenExpired,
    /// 401 `session_revoked`: the session has ended; sign in again.
    #[error("session revoked")]
    SessionRevoked,
    /// 503 `unavailable` with `Retry-After`: the revocation feed is down (fail closed) or the
    /// keys could never be fetched.
    #[error("unavailable")]
    Unavailable,
}

impl From<VerifyError> for Rejection {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Expired => Rejection::TokenExpired,
            VerifyError::Invalid(_) => Rejection::InvalidToken { presented: true },
        }
    }
}

/// The body's members in sessiond's order (`type`, `title`, `status`, `detail`, `code`).
#[derive(serde::Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
}

impl Rejection {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::Unavailable => 503,
            _ => 401,
        }
    }

    /// The stable machine-readable `code` (docs/API.md §2).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InvalidToken { .. } => "invalid_token",
            Rejection::TokenExpired => "token_expired",
            Rejection::SessionRevoked => "session_revoked",
            Rejection::Unavailable => "unavailable",
        }
    }

    /// The body's `title`: the status's reason phrase.
    pub fn title(&self) -> &'static str {
        match self {
            Rejection::Unavailable => "Service Unavailable",
            _ => "Unauthorized",
        }
    }

    /// The fixed sentence of the body's `detail`.
    pub fn detail(&self) -> &'static str {
        match self {
            Rejection::InvalidToken { presented: true } => "The access token is not valid.",
            Rejection::InvalidToken { presented: false } => "This endpoint needs a Bearer access token.",
            Rejection::TokenExpired => "The access token has expired; refresh it.",
            Rejection::SessionRevoked => "The session of this token has ended; sign in again.",
            Rejection::Unavailable => "A dependency is unavailable; retry shortly.",
        }
    }

    /// The `application/problem+json` body.
    pub fn body(&self) -> String {
        let problem = Problem {
            type_: format!("urn:sessiond:problem:{}", self.code()),
            title: self.title(),
            status: self.status(),
            detail: self.detail(),
            code: self.code(),
        };
        serde_json::to_string(&problem).unwrap_or_default()
    }

    /// `WWW-Authenticate` (RFC 6750 §3): every 401 names the scheme; when a token was
    /// presented, it says why it failed.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            Rejection::InvalidToken { presented: false } => Some("Bearer"),
            Rejection::InvalidToken { presented: true } | Rejection::TokenExpired | Rejection::SessionRevoked => {
                Some("Bearer error=\"invalid_token\"")
            }
            Rejection::Unavailable => None,
        }
    }

    /// `Retry-After` in seconds, on a 503.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Rejection::Unavailable => Some(RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// Every header of the answer besides the body, as `(name, value)` pairs (lower-case
    /// names), for frameworks other than axum.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("content-type", PROBLEM_CONTENT_TYPE.to_string())];
        if let Some(v) = self.www_authenticate() {
            h.push(("www-authenticate", v.to_string()));
        }
        if let Some(s) = self.retry_after_secs() {
            h.push(("retry-after", s.to_string()));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact bytes sessiond's `error.rs` produces for the same codes.
    #[test]
    fn bodies_are_byte_identical_to_sessiond() {
        let cases = [
            (
                Rejection::InvalidToken { presented: true },
                r#"{"type":"urn:sessiond:problem:invalid_token","title":"Unauthorized","status":401,"detail":"The access token is not valid.","code":"invalid_token"}"#,
            ),
            (
                Rejection::InvalidToken { presented: false },
                r#"{"type":"urn:sessiond:problem:invalid_token","title":"Unauthorized","status":401,"detail":"This endpoint needs a Bearer access token.","code":"invalid_token"}"#,
            ),
            (
                Rejection::TokenExpired,
                r#"{"type":"urn:sessiond:problem:token_expired","title":"Unauthorized","status":401,"detail":"The access token has expired; refresh it.","code":"token_expired"}"#,
            ),
            (
                Rejection::SessionRevoked,
                r#"{"type":"urn:sessiond:problem:session_revoked","title":"Unauthorized","status":401,"detail":"The session of this token has ended; sign in again.","code":"session_revoked"}"#,
            ),
            (
                Rejection::Unavailable,
                r#"{"type":"urn:sessiond:problem:unavailable","title":"Service Unavailable","status":503,"detail":"A dependency is unavailable; retry shortly.","code":"unavailable"}"#,
            ),
        ];
        for (rejection, body) in cases {
            assert_eq!(rejection.body(), body);
        }
    }

    #[test]
    fn headers_follow_rfc_6750_and_9110() {
        let invalid =
            [("content-type", "application/problem+json"), ("www-authenticate", "Bearer error=\"invalid_token\"")];
        let h = |r: Rejection| r.headers();
        let own = |v: &[(&'static str, &str)]| v.iter().map(|(k, v)| (*k, v.to_string())).collect::<Vec<_>>();
        assert_eq!(h(Rejection::InvalidToken { presented: true }), own(&invalid));
        assert_eq!(h(Rejection::TokenExpired), own(&invalid));
        assert_eq!(h(Rejection::SessionRevoked), own(&invalid));
        assert_eq!(
            h(Rejection::InvalidToken { presented: false }),
            own(&[("content-type", "application/problem+json"), ("www-authenticate", "Bearer")])
        );
        assert_eq!(
            h(Rejection::Unavailable),
            own(&[("content-type", "application/problem+json"), ("retry-after", "1")])
        );
    }

    #[test]
    fn verification_errors_map_to_coarse_rejections() {
        assert_eq!(Rejection::from(VerifyError::Expired), Rejection::TokenExpired);
        assert_eq!(Rejection::from(VerifyError::Invalid("typ")), Rejection::InvalidToken { presented: true });
    }
}

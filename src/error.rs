//! Every error the HTTP API returns, as RFC 9457 problem+json with a stable `code` (API.md §2).
//!
//! Bodies hold no per-request fields, so equal errors have byte-identical bodies, and nothing
//! from the request (a password, a token, a serde message quoting the input) is ever echoed.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// Outcomes, each with one status and one stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400 `invalid_request`; the detail is a fixed sentence chosen by the caller.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// 409 `email_taken`.
    #[error("email taken")]
    EmailTaken,
    /// 403 `registration_disabled`.
    #[error("registration disabled")]
    RegistrationDisabled,
    /// 401 `invalid_credentials`: unknown email and wrong password look the same.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// 401 `invalid_token`; `presented` says whether a token was sent (RFC 6750 §3).
    #[error("invalid token")]
    InvalidToken { presented: bool },
    /// 401 `token_expired`.
    #[error("token expired")]
    TokenExpired,
    /// 401 `session_revoked`.
    #[error("session revoked")]
    SessionRevoked,
    /// 401 `invalid_refresh_token`.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// 401 `refresh_token_reused`; the session has already been revoked.
    #[error("refresh token reused")]
    RefreshTokenReused,
    /// 403 `forbidden`.
    #[error("forbidden")]
    Forbidden,
    /// 404 `not_found`.
    #[error("not found")]
    NotFound,
    /// 405, reported as `invalid_request`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413 `payload_too_large`.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 429 `rate_limited` with `Retry-After` seconds (≤ 60).
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// 503 `unavailable`: a dependency (the database) cannot be reached; retry.
    #[error("unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    /// 500 `internal`; logged, never shown.
    #[error("internal: {0}")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => AppError::Unavailable(e.into()),
            sqlx::Error::Database(ref db) if is_busy(db.as_ref()) => AppError::Unavailable(e.into()),
            other => AppError::Internal(other.into()),
        }
    }
}

/// SQLite `SQLITE_BUSY`/`SQLITE_LOCKED`, Postgres serialization/deadlock/admin-shutdown: retryable.
fn is_busy(db: &dyn sqlx::error::DatabaseError) -> bool {
    matches!(db.code().as_deref(), Some("5") | Some("6") | Some("517") | Some("40001") | Some("40P01") | Some("57P01"))
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        use AppError::*;
        match self {
            InvalidRequest(_) => StatusCode::BAD_REQUEST,
            EmailTaken => StatusCode::CONFLICT,
            RegistrationDisabled | Forbidden => StatusCode::FORBIDDEN,
            InvalidCredentials
            | InvalidToken { .. }
            | TokenExpired
            | SessionRevoked
            | InvalidRefreshToken
            | RefreshTokenReused => StatusCode::UNAUTHORIZED,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        use AppError::*;
        match self {
            InvalidRequest(_) | MethodNotAllowed => "invalid_request",
            EmailTaken => "email_taken",
            RegistrationDisabled => "registration_disabled",
            InvalidCredentials => "invalid_credentials",
            InvalidToken { .. } => "invalid_token",
            TokenExpired => "token_expired",
            SessionRevoked => "session_revoked",
            InvalidRefreshToken => "invalid_refresh_token",
            RefreshTokenReused => "refresh_token_reused",
            Forbidden => "forbidden",
            NotFound => "not_found",
            PayloadTooLarge => "payload_too_large",
            RateLimited { .. } => "rate_limited",
            Unavailable(_) => "unavailable",
            Internal(_) => "internal",
        }
    }

    fn detail(&self) -> &'static str {
        use AppError::*;
        match self {
            InvalidRequest(d) => d,
            EmailTaken => "An account with this email already exists.",
            RegistrationDisabled => "Registration is closed on this server.",
            InvalidCredentials => "The email or password is not correct.",
            InvalidToken { presented: true } => "The access token is not valid.",
            InvalidToken { presented: false } => "This endpoint needs a Bearer access token.",
            TokenExpired => "The access token has expired; refresh it.",
            SessionRevoked => "The session of this token has ended; sign in again.",
            InvalidRefreshToken => "The refresh token is not valid; sign in again.",
            RefreshTokenReused => "The refresh token was already used; the session has been ended. Sign in again.",
            Forbidden => "You are not allowed to do this.",
            NotFound => "No such resource.",
            MethodNotAllowed => "This method is not allowed on this resource.",
            PayloadTooLarge => "The request body is larger than 64 KiB.",
            RateLimited { .. } => "Too many attempts; retry later.",
            Unavailable(_) => "A dependency is unavailable; retry shortly.",
            Internal(_) => "An internal error occurred.",
        }
    }

    fn title(&self) -> &'static str {
        self.status().canonical_reason().unwrap_or("Error")
    }
}

/// The problem+json body for `code`, with no per-request fields.
pub fn problem_body(status: StatusCode, code: &str, title: &str, detail: &str) -> String {
    serde_json::json!({
        "type": format!("urn:sessiond:problem:{code}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
    })
    .to_string()
}

/// `application/problem+json` response for a status and code.
pub fn problem(status: StatusCode, code: &str, title: &str, detail: &str) -> Response {
    let mut res = (status, problem_body(status, code, title, detail)).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    res
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            AppError::Internal(e) => tracing::error!(error = ?e, "internal error"),
            AppError::Unavailable(e) => tracing::warn!(error = %e, "dependency unavailable"),
            _ => {}
        }
        let mut res = problem(status, self.code(), self.title(), self.detail());
        let h = res.headers_mut();
        match &self {
            // RFC 6750 §3: a 401 from a Bearer-protected resource names the scheme; when a token
            // was presented, it says why it failed.
            AppError::InvalidToken { presented: false } => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AppError::InvalidToken { presented: true } | AppError::TokenExpired | AppError::SessionRevoked => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
            }
            AppError::RateLimited { retry_after_secs } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from((*retry_after_secs).clamp(1, 60)));
            }
            _ => {}
        }
        res
    }
}

//! Every error the HTTP API returns, as RFC 9457 problem+json with a stable `code` (docs/API.md §2).
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
    /// 409 `stream_exists`: the credential has a Shared Signals stream already (docs/SSF.md §1.2).
    #[error("stream exists")]
    StreamExists,
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
    /// 403 `forbidden`: a receiver's status change of a Shared Signals stream its operator
    /// disabled (SECURITY.md G-1; docs/SSF.md §8.7).
    #[error("stream disabled by the operator")]
    StreamDisabledByOperator,
    /// 403 `forbidden` from a Bearer-protected resource whose token lacks the scope needed, with
    /// `WWW-Authenticate: Bearer error="insufficient_scope"` (RFC 6750 §3.1; the Shared Signals
    /// API, docs/SSF.md §1.3).
    #[error("insufficient scope")]
    InsufficientScope,
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
        if is_outage(&e) {
            AppError::Unavailable(e.into())
        } else {
            AppError::Internal(e.into())
        }
    }
}

/// Whether a database error is an outage or a transient refusal, answered 503 `unavailable`
/// (docs/API.md §14), never 500: the database cannot be reached or stopped answering (pool
/// timeout or closed, I/O, TLS, a broken protocol stream, SQLite's worker gone), or it refuses
/// for now ([`is_outage_code`]).
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else { return false };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                code.parse().is_ok_and(is_sqlite_outage)
            } else {
                is_postgres_outage(&code)
            }
        }
        _ => false,
    }
}

/// PostgreSQL's SQLSTATEs of an outage or a transient refusal: any connection exception (class
/// `08`), the server shutting down or starting (`57P01` admin, `57P02` crash, `57P03` cannot
/// connect now), too many connections (`53300`), out of memory or disk (`53100`, `53200`),
/// serialization failure and deadlock (`40001`, `40P01`).
pub fn is_postgres_outage(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || matches!(sqlstate, "57P01" | "57P02" | "57P03" | "53300" | "53100" | "53200" | "40001" | "40P01")
}

/// SQLite's result codes (the primary code of an extended one) of an outage or a transient
/// refusal: `SQLITE_BUSY` (5), `SQLITE_LOCKED` (6), `SQLITE_READONLY` (8: a read-only file
/// system), `SQLITE_IOERR` (10), `SQLITE_FULL` (13: a full disk), `SQLITE_CANTOPEN` (14),
/// `SQLITE_PROTOCOL` (15).
pub fn is_sqlite_outage(code: i64) -> bool {
    matches!(code & 0xff, 5 | 6 | 8 | 10 | 13 | 14 | 15)
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        use AppError::*;
        match self {
            InvalidRequest(_) => StatusCode::BAD_REQUEST,
            EmailTaken | StreamExists => StatusCode::CONFLICT,
            RegistrationDisabled | Forbidden | StreamDisabledByOperator | InsufficientScope => StatusCode::FORBIDDEN,
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
        self.problem_code().as_str()
    }

    /// The stable code as the enum the OpenAPI document publishes.
    pub fn problem_code(&self) -> ProblemCode {
        use AppError::*;
        match self {
            InvalidRequest(_) | MethodNotAllowed => ProblemCode::InvalidRequest,
            EmailTaken => ProblemCode::EmailTaken,
            StreamExists => ProblemCode::StreamExists,
            RegistrationDisabled => ProblemCode::RegistrationDisabled,
            InvalidCredentials => ProblemCode::InvalidCredentials,
            InvalidToken { .. } => ProblemCode::InvalidToken,
            TokenExpired => ProblemCode::TokenExpired,
            SessionRevoked => ProblemCode::SessionRevoked,
            InvalidRefreshToken => ProblemCode::InvalidRefreshToken,
            RefreshTokenReused => ProblemCode::RefreshTokenReused,
            Forbidden | StreamDisabledByOperator | InsufficientScope => ProblemCode::Forbidden,
            NotFound => ProblemCode::NotFound,
            PayloadTooLarge => ProblemCode::PayloadTooLarge,
            RateLimited { .. } => ProblemCode::RateLimited,
            Unavailable(_) => ProblemCode::Unavailable,
            Internal(_) => ProblemCode::Internal,
        }
    }

    /// The fixed sentence of the body's `detail`.
    pub fn detail(&self) -> &'static str {
        use AppError::*;
        match self {
            InvalidRequest(d) => d,
            EmailTaken => "An account with this email already exists.",
            StreamExists => "This credential has a stream already; read, update or delete it.",
            RegistrationDisabled => "Registration is closed on this server.",
            InvalidCredentials => "The email or password is not correct.",
            InvalidToken { presented: true } => "The access token is not valid.",
            InvalidToken { presented: false } => "This endpoint needs a Bearer access token.",
            TokenExpired => "The access token has expired; refresh it.",
            SessionRevoked => "The session of this token has ended; sign in again.",
            InvalidRefreshToken => "The refresh token is not valid; sign in again.",
            RefreshTokenReused => "The refresh token was already used; the session has been ended. Sign in again.",
            Forbidden => "You are not allowed to do this.",
            StreamDisabledByOperator => "An operator disabled this stream; only the operator can change its status.",
            InsufficientScope => "The token does not have the scope this needs.",
            NotFound => "No such resource.",
            MethodNotAllowed => "This method is not allowed on this resource.",
            PayloadTooLarge => "The request body is larger than 64 KiB.",
            RateLimited { .. } => "Too many attempts; retry later.",
            Unavailable(_) => "A dependency is unavailable; retry shortly.",
            Internal(_) => "An internal error occurred.",
        }
    }

    /// The body's `title`: the status's reason phrase.
    pub fn title(&self) -> &'static str {
        self.status().canonical_reason().unwrap_or("Error")
    }
}

/// Defines [`ProblemCode`], its [`ProblemCode::ALL`] list and [`ProblemCode::as_str`] from one
/// list of variants and wire names, so the three cannot drift apart.
macro_rules! problem_codes {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        /// The stable, machine-readable `code` of every error body (docs/API.md §2). The OpenAPI
        /// document publishes this enum, and each operation lists the codes it can answer with.
        ///
        /// (`rename_all` rather than a per-variant rename: utoipa's schema ignores the latter.
        /// The wire names equal the snake-case variant names; a unit test checks they agree.)
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ProblemCode {
            $($variant,)+
        }

        impl ProblemCode {
            pub const ALL: &'static [ProblemCode] = &[$(ProblemCode::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ProblemCode::$variant => $name,)+
                }
            }
        }
    };
}

problem_codes! {
    InvalidRequest => "invalid_request",
    EmailTaken => "email_taken",
    StreamExists => "stream_exists",
    RegistrationDisabled => "registration_disabled",
    InvalidCredentials => "invalid_credentials",
    RateLimited => "rate_limited",
    InvalidToken => "invalid_token",
    TokenExpired => "token_expired",
    SessionRevoked => "session_revoked",
    InvalidRefreshToken => "invalid_refresh_token",
    RefreshTokenReused => "refresh_token_reused",
    Forbidden => "forbidden",
    NotFound => "not_found",
    PayloadTooLarge => "payload_too_large",
    Internal => "internal",
    Unavailable => "unavailable",
}

impl ProblemCode {
    /// A representative error with this code (its status, title and detail), for the examples
    /// of the OpenAPI document. `invalid_request` details vary; the others are fixed.
    pub fn sample(self) -> AppError {
        use ProblemCode::*;
        match self {
            InvalidRequest => AppError::InvalidRequest("A required field is missing or has the wrong type."),
            EmailTaken => AppError::EmailTaken,
            StreamExists => AppError::StreamExists,
            RegistrationDisabled => AppError::RegistrationDisabled,
            InvalidCredentials => AppError::InvalidCredentials,
            RateLimited => AppError::RateLimited { retry_after_secs: 1 },
            InvalidToken => AppError::InvalidToken { presented: true },
            TokenExpired => AppError::TokenExpired,
            SessionRevoked => AppError::SessionRevoked,
            InvalidRefreshToken => AppError::InvalidRefreshToken,
            RefreshTokenReused => AppError::RefreshTokenReused,
            Forbidden => AppError::Forbidden,
            NotFound => AppError::NotFound,
            PayloadTooLarge => AppError::PayloadTooLarge,
            Internal => AppError::Internal(anyhow::anyhow!("example")),
            Unavailable => AppError::Unavailable(anyhow::anyhow!("example")),
        }
    }
}

/// An RFC 9457 problem body, exactly as every error response of the API carries it
/// (`application/problem+json`). Nothing in it depends on the request.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct Problem<'a> {
    /// `urn:sessiond:problem:{code}`.
    #[serde(rename = "type")]
    #[schema(value_type = String, pattern = "^urn:sessiond:problem:[a-z_]+$", example = "urn:sessiond:problem:invalid_token")]
    pub type_: String,
    /// The reason phrase of the status.
    #[schema(value_type = String, example = "Unauthorized")]
    pub title: &'a str,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599, example = 401)]
    pub status: u16,
    /// A fixed sentence for people; never quotes the request.
    #[schema(value_type = String, example = "The access token is not valid.")]
    pub detail: &'a str,
    /// The stable machine-readable code.
    #[schema(value_type = ProblemCode)]
    pub code: &'a str,
}

/// The problem+json body for `code`, with no per-request fields.
pub fn problem_body(status: StatusCode, code: &str, title: &str, detail: &str) -> String {
    let body = Problem { type_: format!("urn:sessiond:problem:{code}"), title, status: status.as_u16(), detail, code };
    serde_json::to_string(&body).unwrap_or_default()
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
            AppError::InsufficientScope => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"insufficient_scope\""));
            }
            AppError::RateLimited { retry_after_secs } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from((*retry_after_secs).clamp(1, 60)));
            }
            // RFC 9110 §10.2.3: a 503 may say when to come back; a dependency or a full instance
            // is usually back (or has room) within a second.
            AppError::Unavailable(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 21: every outage the contract names is a 503, and a genuine fault stays a 500.
    #[test]
    fn outage_codes_are_unavailable_and_faults_are_not() {
        for code in
            ["57P01", "57P02", "57P03", "08000", "08003", "08006", "08001", "08004", "08P01", "53300", "40001", "40P01"]
        {
            assert!(is_postgres_outage(code), "PostgreSQL {code}");
        }
        // Bugs and bad input: unique and foreign-key violations, syntax, a bad value.
        for code in ["23505", "23503", "42601", "22P02", "42P01"] {
            assert!(!is_postgres_outage(code), "PostgreSQL {code} is not an outage");
        }
        // SQLite: BUSY, LOCKED, BUSY_SNAPSHOT (517), READONLY, IOERR and its extended codes
        // (IOERR_READ 266, IOERR_WRITE 778, IOERR_FSYNC 1034), FULL, CANTOPEN, PROTOCOL.
        for code in [5, 6, 517, 8, 10, 266, 778, 1034, 13, 14, 15] {
            assert!(is_sqlite_outage(code), "SQLite {code}");
        }
        // A constraint (19, and its extended UNIQUE 2067, FOREIGNKEY 787), an error, corruption.
        for code in [19, 2067, 787, 1, 11] {
            assert!(!is_sqlite_outage(code), "SQLite {code} is not an outage");
        }
        assert!(is_outage(&sqlx::Error::PoolTimedOut));
        assert!(is_outage(&sqlx::Error::Protocol("unexpected message".into())));
        assert!(is_outage(&sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))));
        assert!(!is_outage(&sqlx::Error::RowNotFound));
        let e: AppError = sqlx::Error::Protocol("x".into()).into();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let e: AppError = sqlx::Error::RowNotFound.into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// The published enum spells every code exactly as the bodies do.
    #[test]
    fn problem_codes_serialize_as_their_strings() {
        for &code in ProblemCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::Value::from(code.as_str()));
            assert_eq!(code.sample().problem_code(), code);
        }
    }
}

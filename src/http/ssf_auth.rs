//! The caller of the Shared Signals management API (docs/SSF.md §1.3): a service credential
//! with scope `ssf`, presenting either its `sk_…` or an SSF access token from
//! `POST /oauth2/token` ([`crate::tokens::ssf`]).
//!
//! Resource-server rules (RFC 6750, IOP §2.7.3), with problem+json bodies (docs/API.md §2):
//! - the token is taken from the `Authorization` header only: a request with an
//!   `access_token` query parameter is refused (401 `invalid_token`) even when the token in it
//!   is valid (RFC 6750 §2.3 is a MAY that the profile does not take; URLs end up in logs);
//! - no token: 401 `invalid_token` with `WWW-Authenticate: Bearer`;
//! - a user access token, a refresh token, anything malformed, forged or expired, an unknown or
//!   removed credential: 401 `invalid_token` with `WWW-Authenticate: Bearer error="invalid_token"`;
//! - an `sk_` without scope `ssf`, or a write ([`SsfCaller::require_manage`]) with an
//!   `ssf.read`-only token: 403 `forbidden` with `WWW-Authenticate: Bearer
//!   error="insufficient_scope"`.
//!
//! Reading needs only the extractor: `ssf.read`, `ssf.manage` (which includes reading; IOP
//! §2.7.2) or an `sk_` with scope `ssf`. Every request looks the credential up in the database,
//! so a removal takes effect at the next request on every instance.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;

use super::extract::bearer;
use super::service::{note_use, ServiceCaller};
use crate::clock::Clock;
use crate::error::AppError;
use crate::service_credentials::ServiceCredential;
use crate::store::Store;
use crate::tokens::jwt::Keys;
use crate::tokens::ssf;

/// An authenticated Shared Signals receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsfCaller {
    /// The credential's immutable id: what owns its stream (SECURITY.md G-1).
    pub id: String,
    /// The credential's name.
    pub name: String,
    /// The `aud` of its stream: `--ssf-aud`, else the name.
    pub aud: String,
    /// Whether it may write: an `sk_` with scope `ssf`, or a token with `ssf.manage`.
    pub can_manage: bool,
}

impl SsfCaller {
    /// 403 `insufficient_scope` unless the caller may write (every non-GET endpoint but poll).
    pub fn require_manage(&self) -> Result<(), AppError> {
        if self.can_manage {
            Ok(())
        } else {
            tracing::debug!(service = %self.name, "SSF write with a read-only token");
            Err(AppError::InsufficientScope)
        }
    }
}

/// Whether the query string carries an `access_token` parameter (RFC 6750 §2.3).
fn token_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token"))
}

impl<S> FromRequestParts<S> for SsfCaller
where
    S: Send + Sync,
    Store: FromRef<S>,
    Clock: FromRef<S>,
    Keys: FromRef<S>,
{
    type Rejection = AppError;

    #[tracing::instrument(skip_all)]
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if token_in_query(parts.uri.query()) {
            tracing::debug!("SSF request with a token in the query string");
            return Err(AppError::InvalidToken { presented: true });
        }
        let token = bearer(&parts.headers)?.ok_or(AppError::InvalidToken { presented: false })?;
        if token.starts_with("sk_") {
            let caller = ServiceCaller::from_request_parts(parts, state).await?;
            let Some(aud) = caller.0.ssf_aud() else {
                tracing::debug!(service = %caller.0.name, "service credential without scope ssf");
                return Err(AppError::InsufficientScope);
            };
            return Ok(SsfCaller { aud: aud.to_string(), id: caller.0.id, name: caller.0.name, can_manage: true });
        }
        let clock = Clock::from_ref(state);
        let claims = ssf::verify(&Keys::from_ref(state), token, clock.now_secs()).map_err(|e| {
            tracing::debug!(reason = ?e, "SSF access token refused");
            AppError::InvalidToken { presented: true }
        })?;
        let store = Store::from_ref(state);
        // The credential now, by name: gone, or replaced by a new one of the same name (another
        // secret, so another `cid`), and the token is dead.
        let binding = store.service_credential_binding(&claims.sub).await?;
        let Some(binding) = binding.filter(|b| ssf::credential_id(&b.secret_digest) == claims.cid) else {
            tracing::debug!(service = %claims.sub, "SSF access token of a removed credential");
            return Err(AppError::InvalidToken { presented: true });
        };
        note_use(&store, &clock, &binding.row).await;
        let credential = ServiceCredential::from(binding.row);
        let Some(aud) = credential.ssf_aud() else {
            tracing::debug!(service = %credential.name, "SSF access token of a credential without scope ssf");
            return Err(AppError::InvalidToken { presented: true });
        };
        Ok(SsfCaller {
            aud: aud.to_string(),
            id: credential.id.clone(),
            name: credential.name.clone(),
            can_manage: claims.scopes().manage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_the_query_is_found_however_it_is_spelled() {
        for q in ["access_token=x", "a=1&access_token=", "access_token", "x=1&access%5Ftoken=y"] {
            assert!(token_in_query(Some(q)), "{q}");
        }
        for q in [None, Some(""), Some("stream_id=st_1"), Some("access_token_x=1"), Some("x=access_token")] {
            assert!(!token_in_query(q), "{q:?}");
        }
    }
}

//! The caller of a service endpoint (docs/API.md §8): `Authorization: Bearer sk_…`.
//!
//! - no credential, one that is not a service secret (a user's access token, a refresh token,
//!   junk), or one that is unknown or removed: 401 `invalid_token` with `WWW-Authenticate: Bearer`;
//! - a valid credential without the endpoint's scope: 403 `forbidden` ([`ServiceCaller::require`]).
//!
//! The credential is looked up in the database on every request, so a removal takes effect at
//! the next request on every instance (there is nothing to invalidate). `last_used_at` is
//! written at most once a minute per credential.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;

use super::extract::bearer;
use crate::clock::{Clock, Millis};
use crate::error::AppError;
use crate::service_credentials::{Scope, ServiceCredential, ServiceSecret};
use crate::store::{ServiceCredentialRow, Store};

/// `last_used_at` moves at most this often per credential.
pub const LAST_USED_PRECISION_MS: Millis = 60_000;

/// An authenticated service: a known, not removed credential. Check the endpoint's scope with
/// [`ServiceCaller::require`] before anything else (400s included).
#[derive(Debug, Clone)]
pub struct ServiceCaller(pub ServiceCredential);

impl ServiceCaller {
    /// 403 `forbidden` unless the credential has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), AppError> {
        if self.0.has(scope) {
            Ok(())
        } else {
            tracing::debug!(service = %self.0.name, scope = %scope, "service credential lacks the scope");
            Err(AppError::Forbidden)
        }
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }
}

impl<S> FromRequestParts<S> for ServiceCaller
where
    S: Send + Sync,
    Store: FromRef<S>,
    Clock: FromRef<S>,
{
    type Rejection = AppError;

    #[tracing::instrument(skip_all)]
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?.ok_or(AppError::InvalidToken { presented: false })?;
        // A user's access token (or anything else that is not a service secret) never gets
        // here as a service: it does not have the shape, and nothing is looked up for it.
        let secret = ServiceSecret::parse(token).ok_or(AppError::InvalidToken { presented: true })?;
        let store = Store::from_ref(state);
        // Looked up by the SHA-256 of the secret, never compared with it: timing can tell an
        // attacker at most something about a digest of a 256-bit secret, which does not help
        // find the secret, so no constant-time comparison is needed here.
        let Some(row) = store.service_credential_by_digest(&secret.digest()).await? else {
            tracing::debug!("unknown service credential");
            return Err(AppError::InvalidToken { presented: true });
        };
        note_use(&store, &Clock::from_ref(state), &row).await;
        Ok(ServiceCaller(row.into()))
    }
}

/// Records that a credential was used (`last_used_at`), at most once per
/// [`LAST_USED_PRECISION_MS`]; a failure is logged, never the request's failure.
pub(crate) async fn note_use(store: &Store, clock: &Clock, row: &ServiceCredentialRow) {
    let now = clock.now_ms();
    if row.last_used_at.is_none_or(|t| now - t >= LAST_USED_PRECISION_MS) {
        // Conditional in the database too, so racing requests and instances write it once.
        if let Err(e) = store.touch_service_credential(&row.name, now, now - LAST_USED_PRECISION_MS).await {
            tracing::warn!(error = %e, service = %row.name, "recording a service credential's use failed");
        }
    }
}

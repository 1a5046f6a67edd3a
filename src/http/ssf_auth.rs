//! TEMPORARY (replaced by the ssfauth branch): a service credential with scope ssf.
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;

use super::service::ServiceCaller;
use crate::clock::Clock;
use crate::error::AppError;
use crate::service_credentials::Scope;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct SsfCaller {
    pub name: String,
    pub aud: String,
    pub can_manage: bool,
}

impl SsfCaller {
    pub fn require_manage(&self) -> Result<(), AppError> {
        if self.can_manage {
            Ok(())
        } else {
            Err(AppError::Forbidden)
        }
    }
}

impl<S> FromRequestParts<S> for SsfCaller
where
    S: Send + Sync,
    Store: FromRef<S>,
    Clock: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let c = ServiceCaller::from_request_parts(parts, state).await?;
        c.require(Scope::Ssf)?;
        Ok(SsfCaller { name: c.name().to_string(), aud: c.name().to_string(), can_manage: true })
    }
}

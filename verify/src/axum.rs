//! axum integration: the [`Authenticated`] extractor for one handler, and [`VerifyLayer`] for a
//! whole router. Both answer a refusal with sessiond's own problem+json body and headers
//! ([`Rejection`]'s `IntoResponse`).
//!
//! The extractor finds the [`Verifier`] in the router state through `FromRef` (the axum way to
//! share a handle); behind the layer it reuses the layer's result instead of verifying twice.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::problem::{Rejection, PROBLEM_CONTENT_TYPE};
use crate::token::Claims;
use crate::verifier::Verifier;

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut res = (status, self.body()).into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        // RFC 6750 §3.
        if let Some(challenge) = self.www_authenticate() {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        // RFC 9110 §10.2.3.
        if let Some(secs) = self.retry_after_secs() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl Verifier {
    /// [`Verifier::verify`] for a request's headers.
    pub async fn verify_headers(&self, headers: &HeaderMap) -> Result<Claims, Rejection> {
        self.verify_authorization(headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes)).await
    }

    /// A layer that protects every route under it (see [`VerifyLayer`]).
    pub fn layer(&self) -> VerifyLayer {
        VerifyLayer { verifier: self.clone() }
    }
}

/// The caller of a protected handler: the verified claims of a live session's access token.
///
/// Refuses with 401 `invalid_token` / `token_expired` / `session_revoked` or 503
/// `unavailable`. Needs `Verifier: FromRef<S>` (e.g. a `Verifier` field of a
/// `#[derive(FromRef)]` state, or the `Verifier` itself as the state).
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

/// What [`VerifyLayer`] leaves for [`Authenticated`]: only this crate can make one, so a claim
/// found in the extensions is known to come from the layer.
#[derive(Clone)]
struct Verified(Claims);

impl<S> FromRequestParts<S> for Authenticated
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(Verified(claims)) = parts.extensions.get::<Verified>() {
            return Ok(Authenticated(claims.clone()));
        }
        Verifier::from_ref(state).verify_headers(&parts.headers).await.map(Authenticated)
    }
}

/// Protects every route of a router: a request passes only with a valid token of a live
/// session, and its [`Claims`] are then in the request extensions (`Extension<Claims>`, or
/// the [`Authenticated`] extractor at no extra cost). Refusals are answered here.
#[derive(Clone)]
pub struct VerifyLayer {
    verifier: Verifier,
}

impl<S> tower::Layer<S> for VerifyLayer {
    type Service = VerifyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyService { inner, verifier: self.verifier.clone() }
    }
}

/// The service of [`VerifyLayer`].
#[derive(Clone)]
pub struct VerifyService<S> {
    inner: S,
    verifier: Verifier,
}

impl<S, B> tower::Service<Request<B>> for VerifyService<S>
where
    S: tower::Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            match verifier.verify_headers(req.headers()).await {
                Ok(claims) => {
                    req.extensions_mut().insert(Verified(claims.clone()));
                    req.extensions_mut().insert(claims);
                    inner.call(req).await
                }
                Err(rejection) => Ok(rejection.into_response()),
            }
        })
    }
}

#[cfg(test)]
#[path = "axum_tests.rs"]
mod tests;

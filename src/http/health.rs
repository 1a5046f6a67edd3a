//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`, and the JWKS.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use subtle::ConstantTimeEq;

use super::extract::{bearer, ClientAddr};
use crate::config::Config;
use crate::error::AppError;
use crate::sessions::Sessions;
use crate::state::AppState;
use crate::tokens::jwt::{Keys, JWKS_MAX_AGE};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(jwks))
}

/// `{"status": "ok"}` / `{"status": "ready"}`.
#[derive(Serialize, ToSchema)]
struct Status {
    #[schema(pattern = "^(ok|ready)$")]
    status: String,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = Status))
)]
async fn healthz() -> Response {
    healthz_ok().await
}

/// `/healthz`'s answer (also while the instance starts, before it has a state).
pub async fn healthz_ok() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#).into_response()
}

problems!(ReadyProblems: Unavailable);

/// Readiness.
///
/// 200 once startup finished (keys loaded, denylist rebuilt) and while the database answers;
/// with PostgreSQL also the revocation listener (after its first `LISTEN` and resync, and not
/// down for 5 s). 503 from the shutdown signal on.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, description = "`{\"status\":\"ready\"}`", body = Status), ReadyProblems)
)]
async fn readyz(
    State(sessions): State<Sessions>,
    State(ready): State<Arc<AtomicBool>>,
    State(draining): State<crate::state::Draining>,
) -> Response {
    if !ready.load(Ordering::Acquire) {
        return AppError::Unavailable(anyhow::anyhow!("starting")).into_response();
    }
    // Shutting down: a load balancer must stop sending here (docs/API.md §14).
    if draining.is_set() {
        return AppError::Unavailable(anyhow::anyhow!("shutting down")).into_response();
    }
    // With PostgreSQL: not before the first LISTEN + resync, nor after 5 s without a listener.
    if let Some(link) = &sessions.link {
        if !link.is_ready(sessions.clock.now_ms()) {
            return AppError::Unavailable(anyhow::anyhow!("revocation listener down")).into_response();
        }
    }
    match sessions.store.ping().await {
        Ok(()) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"status":"ready"}"#).into_response()
        }
        Err(e) => AppError::Unavailable(e.into()).into_response(),
    }
}

problems!(MetricsProblems: InvalidToken, Forbidden);

/// Prometheus metrics.
///
/// Not public (SECURITY.md RT10: outcome counters time attacks, e.g. a refresh-token replay):
/// with `--metrics-token` it needs `Authorization: Bearer <token>`; without, it answers only
/// loopback clients (the address after `--trusted-proxies`). `--metrics-listen` serves it on a
/// second address without authentication. A scrape does no database work.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security((), ("metrics_token" = [])),
    responses((status = 200, description = "Prometheus text exposition format 0.0.4.", body = String,
        content_type = "text/plain"), MetricsProblems)
)]
async fn metrics(State(sessions): State<Sessions>, ClientAddr(addr): ClientAddr, headers: HeaderMap) -> Response {
    match metrics_allowed(&sessions.config, addr, &headers) {
        Ok(()) => render_metrics(&sessions),
        Err(e) => e.into_response(),
    }
}

/// Whether this request may read `/metrics` on the main listener (see [`metrics`]).
fn metrics_allowed(config: &Config, addr: Option<IpAddr>, headers: &HeaderMap) -> Result<(), AppError> {
    match &config.metrics_token {
        Some(token) => {
            let presented = bearer(headers).ok().flatten().unwrap_or_default();
            // Constant time: the comparison must not tell how much of a guess was right.
            if bool::from(presented.as_bytes().ct_eq(token.0.as_bytes())) && !token.0.is_empty() {
                Ok(())
            } else {
                Err(AppError::InvalidToken { presented: !presented.is_empty() })
            }
        }
        None if addr.is_some_and(|a| a.to_canonical().is_loopback()) => Ok(()),
        None => Err(AppError::Forbidden),
    }
}

/// The Prometheus text exposition: in-memory gauges only, no database work per scrape.
pub fn render_metrics(sessions: &Sessions) -> Response {
    sessions.metrics.denylist_entries.set(sessions.denylist.len() as i64);
    sessions.metrics.email_cache_entries.set(sessions.store.email_cache_len() as i64);
    if let Some(link) = &sessions.link {
        sessions.metrics.listener_up.set(i64::from(link.is_up()));
        sessions.metrics.listener_last_proof.set(link.last_proof().map_or(0.0, |t| t as f64 / 1000.0));
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], sessions.metrics.render())
        .into_response()
}

/// A public key of the JWKS (RFC 8037 OKP).
#[derive(ToSchema)]
#[allow(dead_code)] // (schema only: the JWKS is built by `tokens::jwt`)
struct Jwk {
    #[schema(pattern = "^OKP$")]
    kty: String,
    #[schema(pattern = "^Ed25519$")]
    crv: String,
    /// The public key, base64url.
    x: String,
    /// The RFC 7638 thumbprint of the key.
    kid: String,
    #[schema(pattern = "^EdDSA$")]
    alg: String,
    #[schema(pattern = "^sig$")]
    r#use: String,
}

/// `{"keys": [Jwk]}`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Jwks {
    keys: Vec<Jwk>,
}

/// The JSON Web Key Set.
///
/// Every key that may still have live tokens, public parts only; cacheable for a short time
/// (docs/API.md §7): a new key is published at least this long before it signs.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "operations",
    responses((status = 200, description = "The JSON Web Key Set.", body = Jwks,
        headers(("Cache-Control" = String, description = "`public, max-age=…` (at most 5 minutes)."))))
)]
async fn jwks(State(keys): State<Keys>) -> Response {
    let mut res = (StatusCode::OK, keys.jwks().to_string()).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={}", JWKS_MAX_AGE.as_secs())).expect("ascii"),
    );
    res
}

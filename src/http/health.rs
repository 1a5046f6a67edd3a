//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`, and the JWKS.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::AppError;
use crate::state::AppState;
use crate::tokens::jwt::JWKS_MAX_AGE;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
}

/// Live: the process answers.
async fn healthz() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#).into_response()
}

/// Ready: startup finished (keys loaded, denylist rebuilt) and the database answers.
async fn readyz(State(state): State<AppState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return AppError::Unavailable(anyhow::anyhow!("starting")).into_response();
    }
    // With PostgreSQL: not before the first LISTEN + resync, nor after 5 s without a listener.
    if let Some(bp) = &state.backplane {
        if !bp.is_ready(state.clock.now_ms()) {
            return AppError::Unavailable(anyhow::anyhow!("revocation listener down")).into_response();
        }
    }
    match state.store.ping().await {
        Ok(()) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"status":"ready"}"#).into_response()
        }
        Err(e) => AppError::Unavailable(e.into()).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    if let Ok(n) = state.store.count_live_sessions(state.clock.now_ms()).await {
        state.metrics.active_sessions.set(n);
    }
    state.metrics.denylist_entries.set(state.denylist.len() as i64);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
        .into_response()
}

/// Every key that may still have live tokens, public parts only; cacheable for a short time
/// (API.md §7): a new key is published at least this long before it signs.
async fn jwks(State(state): State<AppState>) -> Response {
    let mut res = (StatusCode::OK, state.keys.jwks().to_string()).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={}", JWKS_MAX_AGE.as_secs())).expect("ascii"),
    );
    res
}

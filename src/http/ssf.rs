//! The Shared Signals endpoints (docs/SSF.md §1): the transmitter metadata, the SET keys, the
//! stream management API and poll delivery. The work is [`Ssf`]'s; these handlers read the
//! request, check the caller ([`SsfCaller`]: a service credential with scope `ssf`, or a token
//! from `/oauth2/token`) and shape the answer. Management answers carry
//! `Cache-Control: no-store` (the API router's layer) and errors are problem+json.
//!
//! Not in the OpenAPI document: the SSF specification is their contract (docs/SSF.md).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::ssf_auth::SsfCaller;
use crate::audit::Who;
use crate::config::Config;
use crate::error::AppError;
use crate::ssf::{Owner, Ssf, POLL, PUSH};
use crate::state::AppState;

/// The management API and poll (no-store, under the API router's layers).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ssf/stream", get(read).post(create).patch(update).put(replace).delete(delete))
        .route("/ssf/status", get(status).post(set_status))
        .route("/ssf/subjects:add", post(add_subject))
        .route("/ssf/subjects:remove", post(remove_subject))
        .route("/ssf/verify", post(verify))
        .route("/ssf/poll/{stream_id}", post(poll))
}

/// The public documents: metadata and keys (cacheable).
pub fn public_router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/ssf-configuration", get(configuration))
        .route("/.well-known/ssf-configuration/{*path}", get(configuration_at))
        .route("/ssf/jwks.json", get(jwks))
}

/// The body as JSON; 400 `invalid_request` when it is not.
fn json_body(body: &Bytes) -> Result<Value, AppError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|_| AppError::InvalidRequest("The body is not valid JSON."))
}

fn who(caller: &SsfCaller) -> Who {
    Who { actor: Some(format!("service:{}", caller.name)), ..Who::default() }
}

/// Transmitter metadata (SSF §7.1; docs/SSF.md §1.1).
fn metadata(config: &Config) -> Value {
    let base = config.issuer.trim_end_matches('/');
    json!({
        "spec_version": "1_0",
        "issuer": config.issuer,
        "jwks_uri": format!("{base}/ssf/jwks.json"),
        "delivery_methods_supported": [PUSH, POLL],
        "configuration_endpoint": format!("{base}/ssf/stream"),
        "status_endpoint": format!("{base}/ssf/status"),
        "add_subject_endpoint": format!("{base}/ssf/subjects:add"),
        "remove_subject_endpoint": format!("{base}/ssf/subjects:remove"),
        "verification_endpoint": format!("{base}/ssf/verify"),
        "authorization_schemes": [{ "spec_urn": "urn:ietf:rfc:6749" }],
        "default_subjects": "ALL",
    })
}

fn cacheable(body: Value) -> Response {
    let mut res = Json(body).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    res
}

async fn configuration(State(config): State<Arc<Config>>) -> Response {
    cacheable(metadata(&config))
}

/// SSF §7.2: with an issuer path `/p`, the document is also at `/.well-known/ssf-configuration/p`.
async fn configuration_at(State(config): State<Arc<Config>>, Path(path): Path<String>) -> Result<Response, AppError> {
    let issuer_path = config.issuer.splitn(4, '/').nth(3).unwrap_or("").trim_end_matches('/');
    if issuer_path.is_empty() || issuer_path != path.trim_end_matches('/') {
        return Err(AppError::NotFound);
    }
    Ok(cacheable(metadata(&config)))
}

async fn jwks(State(ssf): State<Ssf>) -> Result<Response, AppError> {
    Ok(cacheable(ssf.jwks().await?))
}

#[derive(Deserialize)]
struct StreamQuery {
    stream_id: Option<String>,
}

async fn create(State(ssf): State<Ssf>, caller: SsfCaller, body: Bytes) -> Result<Response, AppError> {
    caller.require_manage()?;
    let body = json_body(&body)?;
    let config =
        ssf.create(Owner { id: &caller.id, name: &caller.name }, &caller.aud, &body, false, &who(&caller)).await?;
    Ok((StatusCode::CREATED, Json(config)).into_response())
}

async fn read(
    State(ssf): State<Ssf>,
    caller: SsfCaller,
    Query(q): Query<StreamQuery>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(ssf.read(&caller.id, q.stream_id.as_deref()).await?))
}

async fn update(State(ssf): State<Ssf>, caller: SsfCaller, body: Bytes) -> Result<Json<Value>, AppError> {
    caller.require_manage()?;
    let body = json_body(&body)?;
    Ok(Json(ssf.update(&caller.id, &body, false, &who(&caller)).await?))
}

async fn replace(State(ssf): State<Ssf>, caller: SsfCaller, body: Bytes) -> Result<Json<Value>, AppError> {
    caller.require_manage()?;
    let body = json_body(&body)?;
    Ok(Json(ssf.update(&caller.id, &body, true, &who(&caller)).await?))
}

async fn delete(
    State(ssf): State<Ssf>,
    caller: SsfCaller,
    Query(q): Query<StreamQuery>,
) -> Result<StatusCode, AppError> {
    caller.require_manage()?;
    let id = q.stream_id.ok_or(AppError::InvalidRequest("stream_id is required."))?;
    ssf.delete(&caller.id, &id, &who(&caller)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn status(
    State(ssf): State<Ssf>,
    caller: SsfCaller,
    Query(q): Query<StreamQuery>,
) -> Result<Json<Value>, AppError> {
    let id = q.stream_id.ok_or(AppError::InvalidRequest("stream_id is required."))?;
    let stream = ssf.owned(&caller.id, &id).await?;
    Ok(Json(Ssf::status_json(&stream)))
}

async fn set_status(State(ssf): State<Ssf>, caller: SsfCaller, body: Bytes) -> Result<Json<Value>, AppError> {
    caller.require_manage()?;
    let body = json_body(&body)?;
    let id = body.get("stream_id").and_then(Value::as_str).ok_or(AppError::InvalidRequest("stream_id is required."))?;
    let to = body.get("status").and_then(Value::as_str).ok_or(AppError::InvalidRequest("status is required."))?;
    let reason = match body.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) => Some(r.as_str()),
        Some(_) => return Err(AppError::InvalidRequest("reason must be a string.")),
    };
    if !matches!(to, "enabled" | "paused" | "disabled") {
        return Err(AppError::InvalidRequest("status must be enabled, paused or disabled."));
    }
    ssf.owned(&caller.id, id).await?;
    Ok(Json(ssf.set_status(id, to, reason, false, &who(&caller)).await?))
}

async fn add_subject(State(ssf): State<Ssf>, caller: SsfCaller, body: Bytes) -> Result<StatusCode, AppError> {
    caller.require_manage()?;
    ssf.subject(&caller.id, &json_body(&body)?, true).await?;
    Ok(StatusCode::OK)
}

async fn remove_subject(State(ssf): State<Ssf>, caller: SsfCaller, body: Bytes) -> Result<StatusCode, AppError> {
    caller.require_manage()?;
    ssf.subject(&caller.id, &json_body(&body)?, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn verify(State(ssf): State<Ssf>, caller: SsfCaller, body: Bytes) -> Result<StatusCode, AppError> {
    caller.require_manage()?;
    ssf.verify(&caller.id, &json_body(&body)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// RFC 8936 poll; either scope may poll (docs/SSF.md §1.3).
async fn poll(
    State(ssf): State<Ssf>,
    caller: SsfCaller,
    Path(stream_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body = json_body(&body)?;
    Ok(Json(ssf.poll(&caller.id, &stream_id, &body).await?))
}

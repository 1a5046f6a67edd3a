//! The standard token endpoints (docs/API.md §10): RFC 7009 revocation, RFC 7662 introspection,
//! RFC 8414 metadata, and the client-credentials token endpoint ([`super::oauth_token`]). Their
//! bodies are `application/x-www-form-urlencoded` and their errors the OAuth form
//! `{"error": "invalid_request"}` (RFC 6749 §5.2), as the RFCs say, not
//! problem+json: third-party OAuth clients parse them. (A missing or wrong service credential
//! on introspection is a service endpoint's 401/403 problem, docs/API.md §8.)

use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Client;
use super::service::ServiceCaller;
use crate::config::Config;
use crate::error::Result;
use crate::service_credentials::Scope;
use crate::sessions::{Introspection, Sessions};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(revoke))
        .routes(routes!(introspect))
        .routes(routes!(metadata))
        .merge(super::oauth_token::router())
}

/// A response whose error body is meant as it is (the OAuth error form): the problem+json
/// rewrite of error responses leaves it alone.
#[derive(Clone, Copy)]
pub struct OAuthBody;

/// `{"error": "invalid_request"}` with 400, `Cache-Control: no-store` (RFC 6749 §5.2).
pub fn invalid_request() -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request")
}

/// `{"error": error}` with `status` and `Cache-Control: no-store` (RFC 6749 §5.2), marked
/// [`OAuthBody`] so it reaches the client as it is.
pub fn oauth_error(status: StatusCode, error: &'static str) -> Response {
    let mut res = (status, Json(OAuthError { error })).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.extensions_mut().insert(OAuthBody);
    res
}

/// The OAuth error body (RFC 6749 §5.2).
#[derive(Serialize, ToSchema)]
pub struct OAuthError {
    #[schema(pattern = "^invalid_request$")]
    error: &'static str,
}

/// The parameters of a token request: `token` and `token_type_hint`. Each at most once (RFC
/// 6749 §3.1); an empty value counts as absent; unknown parameters are ignored.
#[derive(Debug, Default)]
pub struct TokenForm {
    pub token: Option<String>,
    pub hint: Option<String>,
}

/// The form, read from a bounded body: `Err` (the OAuth `invalid_request`) for a body that is
/// not a form, or a repeated parameter.
pub struct Form(pub TokenForm);

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Response> {
        let [token, hint] = read_form(req, state, ["token", "token_type_hint"]).await?;
        Ok(Form(TokenForm { token, hint }))
    }
}

/// The parameters `names` of an `application/x-www-form-urlencoded` body, from a bounded body.
/// Each at most once (RFC 6749 §3.1); an empty value counts as absent; other parameters are
/// ignored. `Err` (the OAuth `invalid_request`; 413 over the body limit) for a body that is
/// not a form, or a repeated parameter.
pub async fn read_form<S: Send + Sync, const N: usize>(
    req: Request,
    state: &S,
    names: [&str; N],
) -> std::result::Result<[Option<String>; N], Response> {
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(invalid_request());
    }
    let body = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            e.into_response()
        } else {
            invalid_request()
        }
    })?;
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    for (k, v) in form_urlencoded::parse(&body) {
        let Some(i) = names.iter().position(|n| *n == k) else { continue };
        if values[i].is_some() {
            return Err(invalid_request());
        }
        values[i] = Some(v.into_owned());
    }
    Ok(values.map(|v| v.filter(|v| !v.is_empty())))
}

/// The body of a token request (RFC 7009 §2.1, RFC 7662 §2.1).
#[derive(ToSchema)]
#[allow(dead_code)] // (schema only: the body is read by `Form`)
struct TokenRequest {
    /// The token: a refresh token or an access token (empty counts as absent: 400).
    #[schema(min_length = 1)]
    token: String,
    /// `access_token` or `refresh_token`: which kind to look for first.
    token_type_hint: Option<String>,
}

/// Revokes a token (RFC 7009).
///
/// No credential: the token is the proof. A refresh token (live or in its rotation history),
/// or an access token with a valid signature (expired or not), ends its session with reason
/// `logout`, exactly like `POST /v1/auth/logout` (denylist, sockets, the revocation feed).
/// 200 with an empty body whatever the token was; only a missing `token` is 400.
#[utoipa::path(
    post,
    path = "/oauth2/revoke",
    tag = "oauth",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Done (or nothing to do): an empty body."),
        (status = 400, description = "`token` is missing, or the body is not a form.", body = OAuthError),
    )
)]
async fn revoke(State(sessions): State<Sessions>, client: Client, Form(form): Form) -> Result<Response> {
    let Some(token) = form.token else { return Ok(invalid_request()) };
    sessions.revoke_token(&token, form.hint.as_deref(), &client.who(None)).await?;
    let mut res = StatusCode::OK.into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// An introspection answer (RFC 7662 §2.2): `{"active": false}` and nothing more, or the
/// token's facts.
#[derive(Serialize, ToSchema)]
struct IntrospectionResponse {
    active: bool,
    /// `access_token` or `refresh_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    token_type: Option<&'static str>,
    /// The user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    sub: Option<String>,
    /// The session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    aud: Option<String>,
    /// Seconds since the Unix epoch: the access token's `exp`, or the session's expiry for a
    /// refresh token.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    roles: Option<Vec<String>>,
}

impl IntrospectionResponse {
    fn inactive() -> Self {
        IntrospectionResponse {
            active: false,
            token_type: None,
            sub: None,
            sid: None,
            iss: None,
            aud: None,
            exp: None,
            iat: None,
            jti: None,
            roles: None,
        }
    }
}

problems!(IntrospectProblems: InvalidToken, Forbidden, Unavailable);

/// Introspects a token (RFC 7662).
///
/// Needs a service credential with the scope `introspect`. An access token that sessiond itself
/// would accept, of a live session, or a live session's current refresh token is active;
/// anything else (malformed, forged, expired, rotated out, revoked, unknown) is
/// `{"active": false}`. Read only: nothing is rotated, extended or revoked, and a rotated-out
/// refresh token never counts as reuse here.
#[utoipa::path(
    post,
    path = "/oauth2/introspect",
    tag = "oauth",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    security(("service" = [])),
    responses(
        (status = 200, description = "The token's state.", body = IntrospectionResponse),
        (status = 400, description = "`token` is missing, or the body is not a form.", body = OAuthError),
        IntrospectProblems,
    )
)]
async fn introspect(caller: ServiceCaller, State(sessions): State<Sessions>, Form(form): Form) -> Result<Response> {
    caller.require(Scope::Introspect)?;
    let Some(token) = form.token else { return Ok(invalid_request()) };
    let answer = match sessions.introspect(&token, form.hint.as_deref()).await? {
        None => IntrospectionResponse::inactive(),
        Some(Introspection::Access(c)) => IntrospectionResponse {
            active: true,
            token_type: Some("access_token"),
            sub: Some(c.sub),
            sid: Some(c.sid),
            iss: Some(c.iss),
            aud: Some(c.aud),
            exp: Some(c.exp),
            iat: Some(c.iat),
            jti: Some(c.jti),
            roles: Some(c.roles),
        },
        Some(Introspection::Refresh(r)) => IntrospectionResponse {
            active: true,
            token_type: Some("refresh_token"),
            sub: Some(r.user_id),
            sid: Some(r.session_id),
            exp: Some(r.expires_at.div_euclid(1000)),
            ..IntrospectionResponse::inactive()
        },
    };
    let mut res = Json(answer).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// RFC 8414 authorization server metadata.
#[derive(Serialize, ToSchema)]
struct Metadata {
    issuer: String,
    jwks_uri: String,
    introspection_endpoint: String,
    revocation_endpoint: String,
    /// `["bearer"]`: a service credential (docs/API.md §8).
    introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    /// `["none"]`: the token is the proof.
    revocation_endpoint_auth_methods_supported: Vec<&'static str>,
    /// Empty: sessiond issues no authorization codes.
    response_types_supported: Vec<&'static str>,
    /// `POST /oauth2/token`: client credentials for the Shared Signals API (docs/SSF.md §1.3).
    token_endpoint: String,
    /// `["client_credentials"]`.
    grant_types_supported: Vec<&'static str>,
    /// `["client_secret_basic", "client_secret_post"]`: a service credential's name and secret.
    token_endpoint_auth_methods_supported: Vec<&'static str>,
    /// `["ssf.read", "ssf.manage"]`: the scopes a token can have.
    scopes_supported: Vec<&'static str>,
}

/// Authorization server metadata (RFC 8414).
#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    tag = "oauth",
    responses((status = 200, description = "The metadata.", body = Metadata))
)]
async fn metadata(State(config): State<Arc<Config>>) -> Json<Metadata> {
    let base = config.issuer.trim_end_matches('/');
    Json(Metadata {
        issuer: config.issuer.clone(),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        introspection_endpoint: format!("{base}/oauth2/introspect"),
        revocation_endpoint: format!("{base}/oauth2/revoke"),
        introspection_endpoint_auth_methods_supported: vec!["bearer"],
        revocation_endpoint_auth_methods_supported: vec!["none"],
        response_types_supported: vec![],
        token_endpoint: format!("{base}/oauth2/token"),
        grant_types_supported: vec!["client_credentials"],
        token_endpoint_auth_methods_supported: vec!["client_secret_basic", "client_secret_post"],
        scopes_supported: vec!["ssf.read", "ssf.manage"],
    })
}

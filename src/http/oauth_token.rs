//! `POST /oauth2/token`: the OAuth 2.0 client-credentials grant (RFC 6749 §4.4) for the Shared
//! Signals management API (docs/SSF.md §1.3, docs/API.md §10). A service credential with scope
//! `ssf` authenticates as the client (`client_id` = its name, the secret = its `sk_…`) and gets
//! a short-lived SSF access token ([`crate::tokens::ssf`]).
//!
//! - Client authentication (RFC 6749 §2.3.1): `client_secret_basic` (`Authorization: Basic`,
//!   id and secret form-urlencoded before base64) or `client_secret_post` (`client_id` and
//!   `client_secret` in the form); not both (§2.3: 400 `invalid_request`).
//! - Errors are the RFC 6749 §5.2 form `{"error": …}` with `Cache-Control: no-store`, never
//!   problem+json ([`super::oauth::OAuthBody`]): `invalid_request`, `unsupported_grant_type`,
//!   `invalid_client` (401 with `WWW-Authenticate: Basic realm="sessiond"`, whichever method
//!   was tried: RFC 9110 §11.6.1 wants a challenge on every 401, and Basic is the scheme this
//!   endpoint takes), `unauthorized_client` (a valid credential without scope `ssf`) and
//!   `invalid_scope`.
//! - The secret is matched as every `sk_` is: by looking its SHA-256 up, never by comparing it
//!   (see [`super::service`]). Guessing is hopeless (256-bit secrets), so, like introspection,
//!   there is no rate limit; issuing is one indexed read and one Ed25519 signature.
//! - Tokens are not audited (one per receiver every 15 minutes would drown the log), and never
//!   logged: refusals log a fixed reason only.

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::oauth::{invalid_request, oauth_error, read_form};
use super::service::note_use;
use crate::clock::Clock;
use crate::error::{AppError, Result};
use crate::service_credentials::{Scope, ServiceSecret};
use crate::state::AppState;
use crate::store::Store;
use crate::tokens::jwt::Keys;
use crate::tokens::ssf::{self, SsfScopes};

/// The name of the HTTP Basic security scheme (`client_secret_basic`) in the OpenAPI document.
pub const CLIENT_SECRET_BASIC: &str = "client_secret_basic";
/// The challenge of every 401 `invalid_client` (RFC 7617 §2: `realm` is required).
const BASIC_CHALLENGE: &str = "Basic realm=\"sessiond\"";
/// The one grant type (RFC 6749 §4.4.2).
const CLIENT_CREDENTIALS: &str = "client_credentials";

#[derive(OpenApi)]
#[openapi(modifiers(&BasicScheme))]
struct TokenDoc;

/// `client_secret_basic` (RFC 6749 §2.3.1).
struct BasicScheme;

impl Modify for BasicScheme {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        openapi.components.get_or_insert_with(Default::default).add_security_scheme(
            CLIENT_SECRET_BASIC,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "`client_secret_basic`: a service credential's name as the user and its `sk_…` \
                         as the password (each form-urlencoded first, RFC 6749 §2.3.1).",
                    ))
                    .build(),
            ),
        );
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(TokenDoc::openapi()).routes(routes!(token))
}

/// The parameters of a client-credentials request (absent and empty are alike).
struct TokenParams {
    grant_type: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

impl<S: Send + Sync> FromRequest<S> for TokenParams {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Response> {
        let [grant_type, scope, client_id, client_secret] =
            read_form(req, state, ["grant_type", "scope", "client_id", "client_secret"]).await?;
        Ok(TokenParams { grant_type, scope, client_id, client_secret })
    }
}

/// The body of a client-credentials request (RFC 6749 §4.4.2).
#[derive(ToSchema)]
#[allow(dead_code)] // (schema only: the body is read by `TokenParams`)
struct ClientCredentialsRequest {
    /// `client_credentials`.
    #[schema(pattern = "^client_credentials$")]
    grant_type: String,
    /// Space-separated subset of `ssf.read ssf.manage`; absent: both.
    scope: Option<String>,
    /// `client_secret_post`: the service credential's name (with `client_secret`).
    client_id: Option<String>,
    /// `client_secret_post`: the credential's `sk_…` secret. Never together with Basic.
    client_secret: Option<String>,
}

/// A token answer (RFC 6749 §5.1).
#[derive(Serialize, ToSchema)]
struct ClientCredentialsToken {
    /// An SSF access token: send it as `Authorization: Bearer …` to the Shared Signals API.
    access_token: String,
    /// `Bearer`.
    #[schema(pattern = "^Bearer$")]
    token_type: &'static str,
    /// Seconds: 900.
    expires_in: u64,
    /// The scopes granted: `ssf.read ssf.manage`, `ssf.read` or `ssf.manage`.
    scope: &'static str,
}

/// The error body of the token endpoint (RFC 6749 §5.2).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // (schema only: the bodies are `oauth::OAuthError`)
struct TokenError {
    #[schema(pattern = "^(invalid_request|invalid_client|unauthorized_client|unsupported_grant_type|invalid_scope)$")]
    error: &'static str,
}

problems!(TokenProblems: Unavailable);

/// Issues an SSF access token (RFC 6749 §4.4, client credentials).
///
/// The client is a service credential with scope `ssf`: `client_secret_basic` or
/// `client_secret_post` (not both). `scope` ⊆ `ssf.read ssf.manage` (absent: both). The token
/// lives 900 s and dies at once with its credential. Errors are RFC 6749 §5.2 bodies.
#[utoipa::path(
    post,
    path = "/oauth2/token",
    tag = "oauth",
    request_body(content = ClientCredentialsRequest, content_type = "application/x-www-form-urlencoded"),
    security((), ("client_secret_basic" = [])),
    responses(
        (status = 200, description = "A token, with `Cache-Control: no-store`.", body = ClientCredentialsToken),
        (status = 400, description = "`invalid_request` (not a form, a repeated or missing parameter, both \
            client authentication methods), `unsupported_grant_type`, `unauthorized_client` (the credential \
            lacks scope `ssf`) or `invalid_scope`.", body = TokenError),
        (status = 401, description = "`invalid_client`: no client authentication, or an unknown client or \
            wrong secret.", body = TokenError,
            headers(("WWW-Authenticate" = String, description = "`Basic realm=\"sessiond\"`"))),
        TokenProblems,
    )
)]
#[tracing::instrument(skip_all)]
async fn token(
    State(store): State<Store>,
    State(keys): State<Keys>,
    State(clock): State<Clock>,
    headers: HeaderMap,
    params: TokenParams,
) -> Result<Response> {
    let Some(grant_type) = params.grant_type.as_deref() else { return Ok(invalid_request()) };
    if grant_type != CLIENT_CREDENTIALS {
        return Ok(oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"));
    }
    let (client_id, secret) = match client_credentials(&headers, &params) {
        Ok(pair) => pair,
        Err(Refusal::BothMethods) => return Ok(invalid_request()),
        Err(Refusal::InvalidClient(why)) => return Ok(invalid_client(why)),
    };
    let Some(secret) = ServiceSecret::parse(&secret) else { return Ok(invalid_client("not a service secret")) };
    // By the digest of the secret, never compared with it (see `ServiceCaller`); the name is
    // not secret.
    let Some(row) = store.service_credential_by_digest(&secret.digest()).await? else {
        return Ok(invalid_client("unknown secret"));
    };
    if row.name != client_id {
        return Ok(invalid_client("the secret is another client's"));
    }
    note_use(&store, &clock, &row).await;
    let name = row.name.clone();
    if !crate::service_credentials::ServiceCredential::from(row).has(Scope::Ssf) {
        tracing::debug!(service = %name, "token request by a credential without scope ssf");
        return Ok(oauth_error(StatusCode::BAD_REQUEST, "unauthorized_client"));
    }
    let scopes = match params.scope.as_deref() {
        None => SsfScopes::ALL,
        Some(list) => match SsfScopes::parse(list) {
            Some(s) => s,
            None => return Ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_scope")),
        },
    };
    let (access_token, expires_in) =
        ssf::issue(&keys, &name, &secret.digest(), scopes, clock.now_ms()).map_err(AppError::Internal)?;
    let body = ClientCredentialsToken { access_token, token_type: "Bearer", expires_in, scope: scopes.as_str() };
    let mut res = Json(body).into_response();
    // RFC 6749 §5.1.
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(res)
}

/// 401 `invalid_client` with the Basic challenge; `why` goes to the debug log only.
fn invalid_client(why: &'static str) -> Response {
    tracing::debug!(reason = why, "token request: client authentication failed");
    let mut res = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(BASIC_CHALLENGE));
    res
}

/// Why [`client_credentials`] found no usable client authentication.
enum Refusal {
    /// 400 `invalid_request`: both methods, or a `client_id` that contradicts Basic.
    BothMethods,
    /// 401 `invalid_client`; the reason goes to the debug log only.
    InvalidClient(&'static str),
}

/// The client's `(id, secret)` from exactly one method: `Authorization: Basic` or the form.
/// Refused: both methods at once; none, another scheme, or a malformed Basic value.
fn client_credentials(headers: &HeaderMap, params: &TokenParams) -> std::result::Result<(String, String), Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return match (&params.client_id, &params.client_secret) {
            (Some(id), Some(secret)) => Ok((id.clone(), secret.clone())),
            _ => Err(Refusal::InvalidClient("no client authentication")),
        };
    };
    let value = value.to_str().map_err(|_| Refusal::InvalidClient("Authorization is not ASCII"))?;
    let (scheme, encoded) = value.split_once(' ').unwrap_or((value, ""));
    // RFC 7235 §2.1: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Refusal::InvalidClient("an Authorization scheme other than Basic"));
    }
    // RFC 6749 §2.3: one method per request. (A `client_id` beside Basic that names the same
    // client is only redundant.)
    if params.client_secret.is_some() {
        tracing::debug!("token request: both client_secret_basic and client_secret_post");
        return Err(Refusal::BothMethods);
    }
    let (id, secret) = basic_pair(encoded.trim()).ok_or(Refusal::InvalidClient("malformed Basic credentials"))?;
    if params.client_id.as_ref().is_some_and(|form_id| *form_id != id) {
        tracing::debug!("token request: client_id differs from the Basic user");
        return Err(Refusal::BothMethods);
    }
    Ok((id, secret))
}

/// `base64(urlencode(id) ":" urlencode(secret))` (RFC 7617, RFC 6749 §2.3.1) → `(id, secret)`.
fn basic_pair(encoded: &str) -> Option<(String, String)> {
    let decoded = STANDARD.decode(encoded).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// One `application/x-www-form-urlencoded` value decoded (`+` is a space, `%XX` a byte); `None`
/// for a bad escape or bytes that are not UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let (hi, lo) = (bytes.next()?, bytes.next()?);
                let digit = |c: u8| (c as char).to_digit(16);
                (digit(hi)? * 16 + digit(lo)?) as u8
            }
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_urlencoded_then_base64() {
        let enc = |s: &str| STANDARD.encode(s);
        assert_eq!(basic_pair(&enc("billing:sk_abc")), Some(("billing".into(), "sk_abc".into())));
        assert_eq!(basic_pair(&enc("a%2Eb+c:s%3Ak")), Some(("a.b c".into(), "s:k".into())));
        assert_eq!(basic_pair(&enc("id:sec:ret")), Some(("id".into(), "sec:ret".into())), "the first colon splits");
        assert_eq!(basic_pair(&enc(":")), Some((String::new(), String::new())));
        for bad in [enc("no-colon"), enc("a%2:b"), enc("a%zz:b"), enc("a%+f:b"), enc("a%ff:b"), "***".into()] {
            assert_eq!(basic_pair(&bad), None, "{bad}");
        }
    }
}

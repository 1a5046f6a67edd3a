//! Extractors: the authenticated caller (`AuthUser`, `AdminUser`), JSON bodies that fail with
//! problem+json instead of axum's defaults, and where a request comes from (`Client`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use crate::audit::Who;
use crate::config::Config;
use crate::error::AppError;
use crate::sessions::Sessions;
use crate::tokens::jwt::MAX_TOKEN_LEN;

/// Largest `User-Agent` kept with a session.
const MAX_USER_AGENT: usize = 512;

pub use crate::sessions::AuthUser;

/// The raw Bearer token, if the request has an `Authorization: Bearer …` header with a value
/// (`Bearer` with nothing after it presents no token: `None`). `Err` when the header is
/// present but unusable (not Bearer, not ASCII, too long).
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AppError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    if value.len() > MAX_TOKEN_LEN + 16 {
        return Err(AppError::InvalidToken { presented: true });
    }
    let value = value.to_str().map_err(|_| AppError::InvalidToken { presented: true })?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    // RFC 7235 §2.1: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AppError::InvalidToken { presented: true });
    }
    // `Bearer` with an empty value (an unset shell variable, say) presents no token: say that
    // one is needed, rather than that it is not valid.
    let token = token.trim();
    Ok((!token.is_empty()).then_some(token))
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Sessions: FromRef<S>,
{
    type Rejection = AppError;

    #[tracing::instrument(skip_all)]
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match bearer(&parts.headers)? {
            Some(token) => Sessions::from_ref(state).authenticate(token).await,
            None => Err(AppError::InvalidToken { presented: false }),
        }
    }
}

/// An authenticated caller with the `admin` role, in the token and in the database now (403
/// otherwise).
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl<S> FromRequestParts<S> for AdminUser
where
    S: Send + Sync,
    Sessions: FromRef<S>,
{
    type Rejection = AppError;

    #[tracing::instrument(skip_all)]
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !user.is_admin() {
            return Err(AppError::Forbidden);
        }
        // The token's role is a claim of when it was issued; the database decides now, so a
        // revoked admin role (or a disabled admin) stops working at once (SECURITY.md S2).
        match Sessions::from_ref(state).store.user_by_id(&user.user_id).await? {
            Some(u) if u.is_admin && u.disabled_at.is_none() => Ok(AdminUser(user)),
            _ => Err(AppError::Forbidden),
        }
    }
}

/// Where a request comes from: the client address (the peer, or with `--trusted-proxies` the
/// `X-Forwarded-For` hop the proxies vouch for) and the `User-Agent`.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub addr: Option<IpAddr>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// The client address alone (see [`Client`]): what the socket upgrade needs, without the
/// allocations of `Client`.
pub fn client_addr(config: &Config, parts: &Parts) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    peer.map(|p| config.trusted_proxies.client_ip(p, &parts.headers))
}

/// [`client_addr`] as an extractor.
pub struct ClientAddr(pub Option<IpAddr>);

impl<S> FromRequestParts<S> for ClientAddr
where
    S: Send + Sync,
    Arc<Config>: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(client_addr(&Arc::<Config>::from_ref(state), parts)))
    }
}

impl Client {
    pub fn of(config: &Config, parts: &Parts) -> Client {
        let addr = client_addr(config, parts);
        let user_agent =
            parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|s| truncate(s, MAX_USER_AGENT));
        Client { addr, ip: addr.map(|a| a.to_string()), user_agent }
    }

    /// The audit context of this client acting as `actor`.
    pub fn who(&self, actor: Option<&str>) -> Who {
        Who { actor: actor.map(str::to_string), ip: self.ip.clone(), user_agent: self.user_agent.clone() }
    }

    /// This client as the session layer sees it (no device name).
    pub fn info(&self) -> crate::sessions::ClientInfo {
        crate::sessions::ClientInfo {
            device_name: None,
            user_agent: self.user_agent.clone(),
            ip: self.ip.clone(),
            addr: self.addr,
            refresh_cookie: None,
        }
    }
}

impl<S> FromRequestParts<S> for Client
where
    S: Send + Sync,
    Arc<Config>: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Client::of(&Arc::<Config>::from_ref(state), parts))
    }
}

/// A resource id from the path (`{id}`). Ids are opaque URL-safe strings (docs/API.md §2), so any
/// other value (not UTF-8, too long, or holding characters such as NUL that PostgreSQL cannot
/// even compare) names nothing: 404 at once, without a database round trip.
pub struct PathId(pub String);

/// What a path id may look like: 1 to 128 characters of RFC 3986's unreserved set, published as
/// the `pattern` `^[A-Za-z0-9._~-]{1,128}$` of every `{id}` in the OpenAPI document.
fn is_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
}

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await.map_err(|r| {
                if r.status().is_server_error() {
                    AppError::Internal(anyhow::anyhow!("path parameters: {r}"))
                } else {
                    AppError::NotFound
                }
            })?;
        if !is_id(&id) {
            return Err(AppError::NotFound);
        }
        Ok(PathId(id))
    }
}

/// 400 for a query parameter holding NUL: no stored value contains one, and PostgreSQL refuses
/// it in a text parameter.
pub fn no_nul(values: &[Option<&str>]) -> Result<(), AppError> {
    if values.iter().flatten().any(|v| v.contains('\0')) {
        return Err(AppError::InvalidRequest("Query parameters must not contain NUL characters."));
    }
    Ok(())
}

/// At most `max` bytes, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A JSON object body. An empty body reads as `{}` (so optional bodies work and a missing
/// required field is a 400). Every failure is a problem+json 400 (413 over the body limit),
/// never axum's plain-text 415/422, and never an echo of the input.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                AppError::PayloadTooLarge
            } else {
                AppError::InvalidRequest("The request body could not be read.")
            }
        })?;
        let body: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) { b"{}" } else { &bytes };
        if body != b"{}" && is_json != Some(true) {
            return Err(AppError::InvalidRequest("Send a JSON body with Content-Type: application/json."));
        }
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(AppError::InvalidRequest("The request body must be a JSON object."));
        }
        serde_json::from_slice(body).map(JsonBody).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                AppError::InvalidRequest("A required field is missing or has the wrong type.")
            }
            _ => AppError::InvalidRequest("The request body is not valid JSON."),
        })
    }
}

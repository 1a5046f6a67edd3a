//! Accept sessiond's access tokens in your own service, and refuse revoked ones at once, with
//! no call to sessiond per request (docs/API.md §12).
//!
//! sessiond's access tokens are short-lived EdDSA JWTs: anyone can verify one offline with the
//! public keys of its JWKS. Offline verification alone cannot know that a session has ended,
//! though: a logged-out user's token would keep working here until it expires (up to 5 min).
//! This crate closes that gap. A [`Verifier`]
//!
//! 1. verifies tokens offline exactly as sessiond does ([`verify`]: EdDSA only, a known `kid`,
//!    `typ` `at+jwt`, `iss`, `aud`, `exp` with 30 s of leeway), with the JWKS fetched from the
//!    issuer and cached per its `Cache-Control`;
//! 2. follows sessiond's revocation feed (`GET /v1/revocations/stream`, Server-Sent Events) into
//!    a local denylist, so a revoked session's token is refused here as soon as the feed
//!    delivers the revocation (milliseconds), with no request to sessiond;
//! 3. answers refusals with sessiond's own problem+json bodies and `WWW-Authenticate`
//!    headers, so clients handle them exactly like sessiond's (refresh on `token_expired`, sign
//!    in again on `session_revoked`, retry on `unavailable`).
//!
//! # Quick start (axum)
//!
//! ```no_run
//! # #[cfg(feature = "axum")] mod example {
//! use axum::{routing::get, Json, Router};
//! use serde_json::{json, Value};
//! use sessiond_verify::{Authenticated, Verifier};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let verifier = Verifier::builder("https://auth.example.com") // sessiond's --issuer
//!         .audience("sessiond")                                      // sessiond's --audience
//!         .service_key(std::env::var("SESSIOND_SERVICE_KEY")?)       // sk_…, see below
//!         .build()?;
//!     verifier.start(); // background: JWKS refresh, feed follower, pruning
//!
//!     let app = Router::new().route("/me", get(me)).with_state(verifier);
//!     let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//!
//! // Runs only for a valid token of a live session; 401/503 problems otherwise.
//! async fn me(Authenticated(claims): Authenticated) -> Json<Value> {
//!     Json(json!({ "user_id": claims.sub, "session_id": claims.sid, "roles": claims.roles }))
//! }
//! # }
//! # fn main() {}
//! ```
//!
//! [`Authenticated`] finds the verifier through `FromRef`, so with a larger state give it a
//! `Verifier` field and `#[derive(FromRef)]`. To protect a whole router instead, add
//! [`Verifier::layer`]; handlers then read the claims with `Extension<Claims>` (or
//! [`Authenticated`], at no extra cost):
//!
//! ```no_run
//! # #[cfg(feature = "axum")] mod example {
//! # use axum::{routing::get, Extension, Router};
//! # use sessiond_verify::{Claims, Verifier};
//! # fn app(verifier: Verifier) -> Router {
//! Router::new()
//!     .route("/notes", get(|Extension(claims): Extension<Claims>| async move { claims.sub }))
//!     .layer(verifier.layer())
//! # }
//! # }
//! ```
//!
//! `examples/notes.rs` is a complete small API (`GET /notes`, `GET /readyz`). Other
//! frameworks call [`Verifier::verify_authorization`] and answer an `Err` with
//! [`Rejection::status`], [`Rejection::headers`] and [`Rejection::body`].
//!
//! # The service credential
//!
//! The feed is for sessiond's own services only. Create a credential once and give it to this
//! service as a secret:
//!
//! ```text
//! sessiond service add notes-api --scope revocations:read
//! ```
//!
//! It prints `sk_…` once. A wrong, removed or under-scoped credential makes the feed answer
//! 401/403: the verifier logs an error and retries every 30 s, and (failing closed) serves
//! nothing meanwhile.
//!
//! # Fail closed or fail open, and readiness
//!
//! The denylist is only as current as the feed. The verifier counts the feed as down when no
//! byte has arrived on a synced stream for the staleness bound ([`VerifierBuilder::staleness`],
//! default 10 s): from the disconnect or the last byte, whichever is earlier, so a stream that
//! is connected but silent (sessiond sends a keep-alive at least every 5 s) counts too.
//!
//! - **Fail closed** (the default): while the feed is down, every protected request gets 503
//!   `unavailable` with `Retry-After: 1`, and [`Verifier::is_ready`] is false, so a load
//!   balancer stops sending traffic. A revoked token never passes for longer than the bound.
//! - **Fail open** ([`VerifierBuilder::fail_open`]`(true)`): while the feed is down, requests
//!   are served with the denylist as it is, and readiness stays true. Revocations made
//!   meanwhile take effect when the feed resumes (it resumes from its cursor, so none is lost).
//!
//! In both modes the verifier is not ready, and answers 503, until the JWKS has been fetched
//! and the feed's first snapshot has arrived (`synced`): before that it knows no revocation.
//! Wire [`Verifier::is_ready`] into your readiness probe.
//!
//! # Guarantees and limits
//!
//! - **Same rule as sessiond.** [`verify`] is the rule sessiond itself applies (and will call):
//!   header limited to `alg`/`typ`/`kid`, `alg` `EdDSA`, `typ` `at+jwt` or
//!   `application/at+jwt`, a known `kid` whose key pins the algorithm, `exp`/`iss`/`aud`/`sub`
//!   required, one audience string, `nbf` honoured, non-empty `sub`/`sid`/`jti`, 30 s of leeway
//!   (never more), tokens of at most 4096 bytes.
//! - **Revocation.** A revoked session is refused from the moment its revocation arrives
//!   (sessiond's target: 50 ms p99) until its `until`, the instant after which no token of the
//!   session can still be valid anyway (last `exp` + leeway); then the entry is dropped. The
//!   comparison is made in whole seconds, the same way `exp` is, so no token outlives its
//!   entry. A database restore on sessiond's side (the cursor becomes unknown) makes the
//!   follower start over from a snapshot; what it already knew stays denied.
//! - **JWKS.** Fetched from `{issuer}/.well-known/jwks.json`; kept for `max-age` (between
//!   30 s and 5 min; 5 min without one); refetched early when a token names an unknown `kid`,
//!   at most once every 30 s however many such tokens arrive; the last good keyset is kept
//!   while fetches fail. A key sessiond stops publishing stops verifying at the next fetch.
//! - **Bounded.** The denylist holds at most [`VerifierBuilder::max_revocations`] entries
//!   (default 1 000 000); if live entries ever exceed it, the verifier fails closed until the
//!   dropped entries' `until` has passed, rather than forget a revocation. Verified tokens are
//!   memoized (16 384 at most), SSE lines and events are bounded, reconnects back off
//!   exponentially with full jitter (250 ms to 10 s).
//! - **Offline.** On the request path nothing calls sessiond, except the rate-limited refetch
//!   for an unknown `kid`.
//! - **TLS.** For an `https://` issuer enable the `rustls` or `native-tls` feature (or pass a
//!   `reqwest::Client` built with TLS to [`VerifierBuilder::http_client`]).
//!
//! # Features
//!
//! - `client` (default): [`Verifier`], with reqwest, tokio and the SSE parser.
//! - `axum` (default): [`Authenticated`], [`VerifyLayer`], `IntoResponse` for [`Rejection`].
//! - `rustls`, `native-tls`: TLS for reqwest.
//!
//! Without default features only the verification core remains ([`verify`], [`KeySet`],
//! [`Policy`], [`VerifiedCache`], [`bearer_token`], [`Rejection`]), with no I/O and a handful
//! of dependencies: what sessiond itself uses.
//!
//! # Layout
//!
//! - [`token`]: the verification rule and the claims.
//! - [`keys`]: the keyset, from a JWKS or from raw keys.
//! - [`cache`]: the memo of verified tokens.
//! - [`bearer`]: the `Authorization` header.
//! - [`problem`]: the refusals and their problem+json bodies.
//! - `jwks`, `feed`, `sse`, `denylist` (feature `client`): the JWKS cache, the feed follower,
//!   its bounded byte stream, the denylist; `Verifier` ties them together.
//! - `axum` (feature `axum`): the extractor and the layer.
#![forbid(unsafe_code)]

pub mod bearer;
pub mod cache;
pub mod keys;
pub mod problem;
pub mod token;

#[cfg(feature = "client")]
mod clock;
#[cfg(feature = "client")]
pub mod denylist;
#[cfg(feature = "client")]
pub mod feed;
#[cfg(feature = "client")]
pub mod jwks;
#[cfg(feature = "client")]
pub mod sse;
#[cfg(feature = "client")]
mod verifier;

#[cfg(feature = "axum")]
mod axum;

#[cfg(all(test, feature = "client"))]
mod fake_issuer;
#[cfg(test)]
mod testkit;

/// The README's examples compile too.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use bearer::bearer_token;
pub use cache::VerifiedCache;
pub use keys::{KeyError, KeySet};
pub use problem::Rejection;
pub use token::{check_times, verify, Claims, Policy, Verified, VerifyError, LEEWAY_SECS, MAX_TOKEN_LEN};

#[cfg(feature = "client")]
pub use verifier::{
    BuildError, Status, Verifier, VerifierBuilder, DEFAULT_AUDIENCE, DEFAULT_STALENESS, PRUNE_INTERVAL,
};

#[cfg(feature = "axum")]
pub use crate::axum::{Authenticated, VerifyLayer, VerifyService};

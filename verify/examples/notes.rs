//! A notes API protected by sessiond-verify: the whole integration in one file (docs/API.md §12).
//!
//! ```text
//! sessiond service add notes --scope revocations:read     # prints sk_…
//! cargo run --release -p sessiond-verify --example notes -- \
//!     --issuer http://localhost:8080 --service-key sk_… --listen 127.0.0.1:3000
//! curl -H "Authorization: Bearer $ACCESS_TOKEN" http://127.0.0.1:3000/notes
//! ```
//!
//! `GET /notes` answers 200 `{"user_id", "session_id", "notes": []}` for a valid token of a live
//! session, and sessiond's own 401/503 problems otherwise; a session revoked in sessiond is
//! refused here at once. `GET /readyz` is 200 once the verifier is ready, 503 otherwise.

use std::net::SocketAddr;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};
use sessiond_verify::{Authenticated, Rejection, Verifier};

#[derive(Parser)]
struct Args {
    /// sessiond's `--issuer`: the tokens' `iss`, and where the JWKS and the revocation feed are.
    #[arg(long)]
    issuer: String,
    /// A service credential with the scope `revocations:read`.
    #[arg(long, env = "NOTES_SERVICE_KEY", hide_env_values = true)]
    service_key: String,
    /// Address to serve on.
    #[arg(long)]
    listen: SocketAddr,
    /// The `aud` the tokens must carry (sessiond's `--audience`).
    #[arg(long, default_value = "sessiond")]
    audience: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let args = Args::parse();

    let verifier = Verifier::builder(args.issuer).audience(args.audience).service_key(args.service_key).build()?;
    verifier.start();

    let app = Router::new().route("/notes", get(list_notes)).route("/readyz", get(readyz)).with_state(verifier);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, "notes API listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The caller's notes. None are stored: what matters here is who the caller is.
async fn list_notes(Authenticated(claims): Authenticated) -> Json<Value> {
    Json(json!({ "user_id": claims.sub, "session_id": claims.sid, "notes": [] }))
}

/// 200 once the JWKS is fetched and the revocation feed has synced (and is not down past the
/// staleness bound); sessiond's 503 `unavailable` problem otherwise.
async fn readyz(State(verifier): State<Verifier>) -> Response {
    if verifier.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        Rejection::Unavailable.into_response()
    }
}

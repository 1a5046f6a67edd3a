//! The browser pages and `sessiond.js`, served from `static/`: the demo app at `/`, the admin
//! console at `/admin`, and the files under `/static/`. Pages get a strict CSP (scripts and
//! styles from this origin only, no framing).

use axum::http::{header, HeaderValue};
use axum::Router;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::state::AppState;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn router(state: &AppState) -> Router<AppState> {
    let dir = state.config.static_dir();
    if !dir.join("index.html").is_file() {
        tracing::warn!(
            dir = %dir.display(),
            "no browser pages here: / and /admin will answer 404 (the API works); point --static-dir \
             (SESSIOND_STATIC_DIR) at the repository's static/ directory"
        );
    }
    Router::new()
        .route_service("/", ServeFile::new(dir.join("index.html")))
        .route_service("/admin", ServeFile::new(dir.join("admin.html")))
        .nest_service("/static", ServeDir::new(&dir))
        .layer(SetResponseHeaderLayer::overriding(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
}

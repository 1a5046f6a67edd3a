//! `GET /v1/ws`: the upgrade. The Origin check happens here, before the upgrade (a browser
//! cannot be trusted to enforce it for WebSockets); authentication is the first message, never
//! the URL (docs/API.md §5).

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ClientAddr;
use std::sync::Arc;

use crate::error::AppError;
use crate::sessions::Sessions;
use crate::socket::{Socket, MAX_MESSAGE_BYTES};
use crate::state::{AllowedOrigins, AppState};

/// Per-socket read buffer. tungstenite's default (128 KiB, eagerly zero-filled) costs ~137 KB
/// of RSS per idle socket (PERFORMANCE.md §0). Client messages are tiny (an `auth` message is
/// well under 1 KiB); longer ones are read in several chunks.
const READ_BUFFER: usize = 1024;
/// Outbound frames smaller than this wait for a flush, so the logout event and its close frame
/// go out in one write; every other message is flushed at once.
const WRITE_BUFFER: usize = 1024;
/// Hard cap on buffered outbound bytes per socket.
const MAX_WRITE_BUFFER: usize = 64 * 1024;
/// tungstenite's own message and frame limits: a little above the protocol limit, so that a
/// message just over 16 KiB is read and refused with a proper close code by us.
const WIRE_LIMIT: usize = 4 * MAX_MESSAGE_BYTES;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(upgrade))
}

problems!(
    /// 400 for a request that is not a WebSocket upgrade (no `Connection: upgrade`, `Upgrade:
    /// websocket`, `Sec-WebSocket-Key`, or `Sec-WebSocket-Version: 13`); 403 for a foreign
    /// `Origin`; 429 when this client's address key (`--ipv4-prefix` / `--ipv6-prefix`: by
    /// default the IPv4 address or the IPv6 /64) holds too many sockets that have not
    /// authenticated yet; 503 when the instance is full or shutting down.
    UpgradeProblems: InvalidRequest, Forbidden, RateLimited, Unavailable
);

/// The realtime logout channel (WebSocket).
///
/// A WebSocket upgrade (RFC 6455). The protocol on the socket
/// (an `auth` message first, `ready`, `logout` events, `ping`/`pong`, close codes 4001, 4401,
/// 4408, 4429, 1012…) is docs/API.md §5; tokens are never accepted in the URL.
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "realtime",
    operation_id = "websocket",
    params(
        ("Connection" = String, Header, pattern = "[Uu][Pp][Gg][Rr][Aa][Dd][Ee]", description = "Must include `upgrade`."),
        ("Upgrade" = String, Header, pattern = "^websocket$"),
        ("Sec-WebSocket-Version" = String, Header, pattern = "^13$"),
        ("Sec-WebSocket-Key" = String, Header, description = "RFC 6455 §4.1: 16 random bytes, base64."),
        ("Origin" = Option<String>, Header, nullable = false,
            description = "Browsers: must equal one of `--allowed-origins` (else 403); other clients omit it."),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the socket is open; send \
            `{\"type\":\"auth\",\"access_token\":\"…\"}` within 10 s (docs/API.md §5)."),
        (status = 426, description = "`invalid_request`: the connection cannot be upgraded.",
            body = crate::error::Problem, content_type = "application/problem+json"),
        UpgradeProblems,
    )
)]
async fn upgrade(
    State(sessions): State<Sessions>,
    State(origins): State<Arc<AllowedOrigins>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        // Exact match only: no prefix, suffix or case tricks.
        if !origins.allows(origin) {
            tracing::debug!("websocket upgrade from a foreign origin refused");
            return AppError::Forbidden.into_response();
        }
    }
    if sessions.hub.is_shutting_down() {
        return AppError::Unavailable(anyhow::anyhow!("shutting down")).into_response();
    }
    // Caps (SECURITY.md W3, W7), before the upgrade: sockets on this instance, then sockets of
    // this address key that have not authenticated yet (a squatter's; authenticated ones count
    // per user). Keyed by network, not exact address: a neighbouring IPv6 address is no escape.
    if sessions.hub.open_sockets() >= sessions.config.ws_max_sockets {
        sessions.metrics.ws_refused("instance_full");
        return AppError::Unavailable(anyhow::anyhow!("socket cap reached")).into_response();
    }
    let Some(unauthenticated) = sessions.limits.unauthenticated_socket(addr) else {
        sessions.metrics.ws_refused("unauthenticated_per_ip");
        return AppError::RateLimited { retry_after_secs: 1 }.into_response();
    };
    let token = sessions.hub.track();
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(WIRE_LIMIT)
        .max_frame_size(WIRE_LIMIT)
        .on_upgrade(move |socket| Socket::run(socket, sessions, unauthenticated, token))
}

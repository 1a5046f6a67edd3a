//! `GET /v1/admin/health` (docs/API.md §14): what an operator needs at a glance about this
//! instance and the cluster it is part of. Every figure but the database round trip and the
//! Shared Signals counts is read from memory.

use std::time::Instant;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::AdminUser;
use crate::clock::rfc3339;
use crate::error::Result;
use crate::feed::FeedSignal;
use crate::sessions::Sessions;
use crate::state::{AppState, Draining};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(health))
}

problems!(HealthProblems: InvalidToken, TokenExpired, SessionRevoked, Forbidden, Unavailable);

/// The instance and its cluster at a glance.
#[derive(Serialize, ToSchema)]
struct Health {
    /// This instance's id (its notifications and presence carry it).
    instance: String,
    /// `sqlite` or `postgres`.
    backend: String,
    /// Whether `/readyz` answers 200 now (the database answered, and with PostgreSQL the
    /// listener is up).
    ready: bool,
    /// The instance is shutting down (`/readyz` answers 503).
    draining: bool,
    /// One round trip to the database, in ms (`null`: it did not answer within `--db-timeout`).
    #[schema(nullable)]
    database_latency_ms: Option<f64>,
    /// PostgreSQL: the revocation listener (`null` on SQLite, which has none).
    #[schema(nullable)]
    listener: Option<ListenerHealth>,
    /// WebSocket connections open here, and those authenticated.
    sockets_open: i64,
    sockets_authenticated: usize,
    /// Revocation feed followers held open here (streams, long polls, snapshots being sent).
    feed_followers: usize,
    /// Every Shared Signals stream, with its SETs waiting.
    ssf_streams: Vec<StreamHealth>,
    /// The instances alive (a heartbeat in the last 15 s), this one included (PostgreSQL; on
    /// SQLite only this one).
    instances: Vec<InstanceHealth>,
}

#[derive(Serialize, ToSchema)]
struct ListenerHealth {
    /// Connected, resynced and proven alive (its own probe heard within 5 s).
    up: bool,
    /// When it last proved it delivers (RFC 3339), if ever.
    #[schema(nullable)]
    last_proof_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct StreamHealth {
    stream_id: String,
    owner: String,
    status: String,
    health: String,
    /// SETs stored, not yet delivered.
    pending: i64,
    /// Dead letters kept.
    dead: i64,
}

#[derive(Serialize, ToSchema)]
struct InstanceHealth {
    id: String,
    /// Its last heartbeat (RFC 3339).
    last_seen_at: String,
}

/// The instance and its cluster at a glance (admin).
///
/// Listener state, database latency, open sockets, feed followers, Shared Signals streams with
/// their pending and dead SETs, and the instances alive.
#[utoipa::path(
    get,
    path = "/v1/admin/health",
    tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, description = "This instance and its cluster.", body = Health), HealthProblems)
)]
async fn health(
    State(sessions): State<Sessions>,
    State(feed): State<FeedSignal>,
    State(draining): State<Draining>,
    _admin: AdminUser,
) -> Result<Json<Health>> {
    let store = &sessions.store;
    let now = sessions.clock.now_ms();
    let started = Instant::now();
    let database_latency_ms = store.ping().await.ok().map(|()| started.elapsed().as_secs_f64() * 1000.0);
    let listener =
        sessions.link.as_ref().map(|l| ListenerHealth { up: l.is_up(), last_proof_at: l.last_proof().map(rfc3339) });
    let ready =
        database_latency_ms.is_some() && !draining.is_set() && sessions.link.as_ref().is_none_or(|l| l.is_ready(now));
    let (streams, counts) = (store.ssf_streams().await?, store.ssf_counts().await?);
    let ssf_streams = streams
        .into_iter()
        .map(|s| {
            let c = counts.iter().find(|c| c.stream_id == s.id);
            StreamHealth {
                pending: c.map_or(0, |c| c.pending),
                dead: c.map_or(0, |c| c.dead),
                stream_id: s.id,
                owner: s.owner,
                status: s.status,
                health: s.health,
            }
        })
        .collect();
    let instances = match store.postgres() {
        Some(pg) => pg
            .instances(now - crate::cluster::INSTANCE_TTL_MS)
            .await?
            .into_iter()
            .map(|(id, at)| InstanceHealth { id, last_seen_at: rfc3339(at) })
            .collect(),
        None => vec![InstanceHealth { id: store.instance_id().to_string(), last_seen_at: rfc3339(now) }],
    };
    Ok(Json(Health {
        instance: store.instance_id().to_string(),
        backend: if store.postgres().is_some() { "postgres" } else { "sqlite" }.into(),
        ready,
        draining: draining.is_set(),
        database_latency_ms,
        listener,
        sockets_open: sessions.metrics.ws_open.get(),
        sockets_authenticated: sessions.hub.len(),
        feed_followers: feed.open_streams(),
        ssf_streams,
        instances,
    }))
}

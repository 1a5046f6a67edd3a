//! `GET /v1/revocations` (docs/API.md §9): the revocation feed for the app's other services, read
//! with a service credential that has the `revocations:read` scope (docs/API.md §8).
//!
//! - Without `after`: a snapshot, every revocation still in force, and the cursor it was read at.
//! - With `after`: the entries after that cursor, oldest first, at most `limit`; with `wait`, a
//!   long poll that answers as soon as an entry is committed (woken by the instance's
//!   [`FeedSignal`], never by polling the database), or with an empty list after `wait` seconds.
//!
//! Cursors are `EPOCH.ID` (opaque to followers): the database's feed epoch and the revocation
//! log's id. Ids grow in commit order (see `Store::revocations_after`), so a follower that asks
//! with the `next` it was given receives every later revocation exactly once. A cursor of
//! another epoch (a restored backup, a new database: docs/API.md §14), beyond the newest entry,
//! or not one of ours is 400 `invalid_request`: the follower starts over from a snapshot.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::service::ServiceCaller;
use crate::clock::{rfc3339, Clock, Millis};
use crate::error::{AppError, Result};
use crate::feed::tail::FeedTail;
use crate::feed::FeedSignal;
use crate::service_credentials::Scope;
use crate::state::AppState;
use crate::store::{LogEntry, Store};

/// Page size bounds (docs/API.md §9).
pub const DEFAULT_LIMIT: i64 = 500;
pub const MAX_LIMIT: i64 = 1000;
/// Longest long poll, in seconds.
pub const MAX_WAIT_SECS: u64 = 30;
/// The name of the service-credential security scheme in the OpenAPI document.
pub const SERVICE: &str = "service";

#[derive(OpenApi)]
#[openapi(
    modifiers(&ServiceScheme),
    tags((name = "feed", description = "The revocation feed for the app's other services (docs/API.md §9): \
        needs a service credential (docs/API.md §8) with the `revocations:read` scope."))
)]
struct FeedDoc;

/// The service-credential Bearer scheme (docs/API.md §8).
struct ServiceScheme;

impl Modify for ServiceScheme {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        openapi.components.get_or_insert_with(Default::default).add_security_scheme(
            SERVICE,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A service credential `sk_…` from `sessiond service add NAME --scope …` (docs/API.md §8). \
                         A user's access token is never accepted here.",
                    ))
                    .build(),
            ),
        );
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(FeedDoc::openapi()).routes(routes!(revocations)).routes(routes!(stream))
}

problems!(FeedProblems: InvalidRequest, InvalidToken, Forbidden, Unavailable);

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct FeedQuery {
    /// The `next` of the previous answer (or the `cursor` of the last entry processed). Absent:
    /// a snapshot.
    #[param(pattern = "^[0-9a-f]{16}\\.[0-9]{1,19}$")]
    after: Option<String>,
    /// With `after`: at most this many entries, 1 to 1000; empty or absent: 500.
    #[param(schema_with = limit_schema)]
    limit: Option<String>,
    /// With `after`: wait up to this many seconds (0 to 30) for an entry when there is none;
    /// empty or absent: 0. Ignored without `after`.
    #[param(schema_with = wait_schema)]
    wait: Option<String>,
}

/// An integer in `min..=max`, or the empty string (the default).
fn bounded_or_empty(min: i64, max: i64) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(min)).maximum(Some(max)))
        .item(ObjectBuilder::new().schema_type(Type::String).max_length(Some(0)))
        .into()
}

fn limit_schema() -> utoipa::openapi::schema::Schema {
    bounded_or_empty(1, MAX_LIMIT)
}

fn wait_schema() -> utoipa::openapi::schema::Schema {
    bounded_or_empty(0, MAX_WAIT_SECS as i64)
}

/// `Revocation` of docs/API.md §9.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Revocation)]
pub struct RevocationView {
    /// Opaque; cursors order the entries. Ask with it as `after` to get what follows.
    #[schema(pattern = "^[0-9a-f]{16}\\.[0-9]{1,19}$")]
    pub cursor: String,
    pub session_id: String,
    pub user_id: String,
    /// Why the session ended (docs/API.md §5.5): `logout`, `logout_all`, `logout_others`,
    /// `session_revoked`, `password_changed`, `admin_logout`, `admin_revoked`,
    /// `refresh_token_reused`, `session_expired`, `account_disabled`.
    pub reason: String,
    /// When the session ended.
    #[schema(format = DateTime)]
    pub at: String,
    /// After this instant no access token of the session can still be valid (its last token's
    /// `exp` plus the verification leeway): the entry may then be forgotten.
    #[schema(format = DateTime)]
    pub until: String,
}

impl RevocationView {
    fn new(e: LogEntry, cursors: &Cursors) -> Self {
        RevocationView {
            cursor: cursors.show(e.cursor),
            session_id: e.session_id,
            user_id: e.user_id,
            reason: e.reason,
            at: rfc3339(e.at),
            // Shown in whole seconds, rounded up: never earlier than the rule says.
            until: rfc3339(ceil_to_second(e.until)),
        }
    }
}

fn ceil_to_second(t: Millis) -> Millis {
    t.div_euclid(1000).saturating_add(i64::from(t.rem_euclid(1000) != 0)).saturating_mul(1000)
}

/// `{"revocations": [Revocation], "next": CURSOR}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevocationPage {
    pub revocations: Vec<RevocationView>,
    /// The cursor to ask with next time (`after`); equal to `after` when nothing is new.
    #[schema(pattern = "^[0-9a-f]{16}\\.[0-9]{1,19}$")]
    pub next: String,
}

impl RevocationPage {
    fn new(entries: Vec<LogEntry>, after: i64, cursors: &Cursors) -> Self {
        let next = cursors.show(entries.last().map_or(after, |e| e.cursor));
        RevocationPage { revocations: entries.into_iter().map(|e| RevocationView::new(e, cursors)).collect(), next }
    }
}

/// The cursors of this database: `EPOCH.ID`, its feed epoch (16 hex digits, `sessiond_meta`)
/// and a log id (0: before the first entry).
#[derive(Clone)]
struct Cursors(std::sync::Arc<str>);

/// Why a cursor was refused.
enum BadCursor {
    /// Not the shape we issue.
    Malformed,
    /// Ours in shape, but of another database (a restored backup, a new database).
    OtherEpoch,
}

impl Cursors {
    async fn of(store: &Store) -> Result<Cursors> {
        Ok(Cursors(store.feed_epoch().await?))
    }

    fn show(&self, id: i64) -> String {
        format!("{}.{id}", self.0)
    }

    fn parse(&self, s: &str) -> std::result::Result<i64, BadCursor> {
        let (epoch, id) = s.split_once('.').ok_or(BadCursor::Malformed)?;
        let id = parse_id(id).ok_or(BadCursor::Malformed)?;
        if epoch.len() != 16 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadCursor::Malformed);
        }
        if epoch != &*self.0 {
            return Err(BadCursor::OtherEpoch);
        }
        Ok(id)
    }

    /// [`parse`](Self::parse), as the 400 a follower gets (`what`: the parameter's name).
    fn parse_or_400(&self, s: &str, what: &'static str) -> Result<i64> {
        self.parse(s).map_err(|e| match (e, what) {
            (BadCursor::OtherEpoch, _) => AppError::InvalidRequest(
                "The cursor is of another database (a restored backup, or a new database): start over from a snapshot.",
            ),
            (BadCursor::Malformed, "Last-Event-ID") => {
                AppError::InvalidRequest("Last-Event-ID is not a cursor of this feed.")
            }
            (BadCursor::Malformed, _) => AppError::InvalidRequest("after is not a cursor of this feed."),
        })
    }
}

/// A log id as a cursor holds it: decimal, no sign, no leading zero.
fn parse_id(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An integer query parameter in `range`; empty or absent: `default`.
fn bounded(value: Option<&str>, range: std::ops::RangeInclusive<i64>, default: i64, err: &'static str) -> Result<i64> {
    match value {
        None | Some("") => Ok(default),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| range.contains(n) && s.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(AppError::InvalidRequest(err)),
    }
}

/// The revocation feed.
///
/// Without `after`, a snapshot: every revocation whose `until` is still in the future, then
/// `next`. With `after`, the entries committed after that cursor, oldest first, at most `limit`;
/// with `wait`, the answer waits up to that many seconds for one to be committed. Followers
/// ask again with `next`: no entry is ever skipped or repeated, even when revocations commit
/// concurrently on several instances.
#[utoipa::path(
    get,
    path = "/v1/revocations",
    tag = "feed",
    operation_id = "revocations",
    params(FeedQuery),
    security(("service" = [])),
    responses(
        (status = 200, description = "Revocations and the cursor to continue from.", body = RevocationPage),
        FeedProblems
    )
)]
#[allow(clippy::too_many_arguments)]
async fn revocations(
    caller: ServiceCaller,
    State(store): State<Store>,
    State(clock): State<Clock>,
    State(feed): State<FeedSignal>,
    State(tail): State<FeedTail>,
    query: std::result::Result<Query<FeedQuery>, QueryRejection>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    caller.require(Scope::RevocationsRead)?;
    let Query(q) = query.map_err(|_| AppError::InvalidRequest("The query string is not valid."))?;
    let limit = bounded(q.limit.as_deref(), 1..=MAX_LIMIT, DEFAULT_LIMIT, "limit must be an integer from 1 to 1000.")?;
    let wait = bounded(q.wait.as_deref(), 0..=MAX_WAIT_SECS as i64, 0, "wait must be an integer from 0 to 30.")?;
    let Some(after) = q.after else {
        // A snapshot is held open while it is sent: under the followers' caps (G-5).
        let slot = feed.admit(caller.name()).ok_or_else(too_many)?;
        return snapshot(store, &tail, clock.now_ms(), slot).await;
    };
    let cursors = Cursors::of(&store).await?;
    let after = cursors.parse_or_400(&after, "after")?;
    // A long poll holds a place under the caps while it waits (G-5); a plain poll answers at once.
    let _slot = match wait {
        0 => None,
        _ => Some(feed.admit(caller.name()).ok_or_else(too_many)?),
    };
    // Subscribed before the first read: a commit after it wakes the wait below.
    let mut commits = feed.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait as u64);
    let mut head_checked = false;
    loop {
        let seen = *commits.borrow_and_update();
        let entries = tail.after(after, limit, seen).await?;
        if !entries.is_empty() {
            return Ok(Json(RevocationPage::new(entries, after, &cursors)).into_response());
        }
        // Nothing after it: is it a cursor we ever gave out? (Entries exist beyond any cursor
        // below the head, so this read is only needed when there are none.)
        if !head_checked {
            let head = store.revocation_head().await?;
            tail.saw_head(head).await;
            if after > head {
                return Err(AppError::InvalidRequest(
                    "after is beyond the newest revocation: start over from a snapshot.",
                ));
            }
            head_checked = true;
        }
        let woken = tokio::select! {
            biased;
            _ = feed.closed() => false,
            changed = tokio::time::timeout_at(deadline, commits.changed()) => matches!(changed, Ok(Ok(()))),
        };
        if !woken {
            return Ok(Json(RevocationPage::new(Vec::new(), after, &cursors)).into_response());
        }
    }
}

/// Past the followers' caps: 503 `unavailable` with `Retry-After`.
fn too_many() -> AppError {
    AppError::Unavailable(anyhow::anyhow!("too many revocation feed followers"))
}

/// Entries one read of a snapshot takes, and one chunk of its answer holds.
const SNAPSHOT_PAGE: i64 = 1000;

/// A chunk of a streamed snapshot; the last one says so (a body that ends without it was cut
/// short, and is aborted rather than ended: the follower must not take it for the whole set).
struct Chunk {
    bytes: axum::body::Bytes,
    last: bool,
}

/// The snapshot as one JSON document, sent page by page as it is read (G-5): a snapshot of any
/// size holds about one page in memory. The head and the first page are read before the
/// answer starts (their failure is a 503); a later failed read, or a reader that takes longer
/// than [`SLOW_READER`] to accept a page, aborts the answer, which the follower sees as a broken
/// response. `slot` is the snapshot's place under the caps, held until the last page is sent.
async fn snapshot(
    store: Store,
    tail: &FeedTail,
    now: Millis,
    slot: crate::feed::StreamSlot,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    let cursors = Cursors::of(&store).await?;
    let head = store.revocation_head().await?;
    tail.saw_head(head).await;
    let first = store.revocations_in_force(0, head, now, SNAPSHOT_PAGE).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(2);
    tokio::spawn(async move {
        let _slot = slot;
        let mut page = first;
        let mut bytes = b"{\"revocations\":[".to_vec();
        let mut first_entry = true;
        loop {
            let full = page.len() as i64 == SNAPSHOT_PAGE;
            let last_cursor = page.last().map(|e| e.cursor);
            for e in page {
                if !first_entry {
                    bytes.push(b',');
                }
                first_entry = false;
                bytes.extend(serde_json::to_vec(&RevocationView::new(e, &cursors)).unwrap_or_default());
            }
            let Some(after) = last_cursor.filter(|_| full) else { break };
            let chunk = Chunk { bytes: std::mem::take(&mut bytes).into(), last: false };
            if !matches!(tokio::time::timeout(SLOW_READER, tx.send(chunk)).await, Ok(Ok(()))) {
                return;
            }
            page = match store.revocations_in_force(after, head, now, SNAPSHOT_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "revocation snapshot: a page read failed; the answer is aborted");
                    return;
                }
            };
        }
        bytes.extend(format!("],\"next\":\"{}\"}}", cursors.show(head)).into_bytes());
        let _ = tokio::time::timeout(SLOW_READER, tx.send(Chunk { bytes: bytes.into(), last: true })).await;
    });
    let body = futures::stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(c) => Some((Ok::<_, std::io::Error>(c.bytes), (rx, c.last))),
            None => Some((Err(std::io::Error::other("the snapshot was cut short")), (rx, true))),
        }
    });
    let mut res = axum::body::Body::from_stream(body).into_response();
    res.headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    Ok(res)
}

problems!(StreamProblems: InvalidRequest, InvalidToken, Forbidden, Unavailable);

/// A comment line at least this often when nothing else is sent (docs/API.md §9: ≤ 5 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// A stream whose reader takes longer than this to accept the next event is dropped: its
/// follower resumes from its last id. Nothing is buffered for it beyond [`STREAM_BUFFER`].
pub const SLOW_READER: Duration = Duration::from_secs(10);
/// Events queued for one stream's connection.
const STREAM_BUFFER: usize = 64;
/// How often a stream re-checks that its credential still exists (removal ends it).
pub const CREDENTIAL_RECHECK: Duration = Duration::from_secs(2);

/// The revocation feed as Server-Sent Events.
///
/// Each entry is an event `revocation` whose `id:` is its cursor and whose data is the
/// Revocation JSON. Without `Last-Event-ID` (or `after`; the header wins) the snapshot comes
/// first; with one, the entries after it. Then one event `synced` (`id:` and data
/// `{"next": CURSOR}`: where to resume), then live entries as they commit on any instance. A
/// comment line comes at least every 2 s when nothing else does. At most 16 streams per
/// credential and 1024 per instance (503 with `Retry-After` past them); a reader that stops
/// reading for 10 s is dropped; removing the credential ends its streams within 2 s.
#[utoipa::path(
    get,
    path = "/v1/revocations/stream",
    tag = "feed",
    operation_id = "revocations_stream",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = "^[0-9a-f]{16}\\.[0-9]{1,19}$",
            description = "The last cursor received: resume after it (wins over `after`)."),
    ),
    security(("service" = [])),
    responses(
        (status = 200, description = "An event stream: `revocation` events, one `synced`, keep-alive comments.",
            content_type = "text/event-stream", body = String),
        StreamProblems
    )
)]
#[allow(clippy::too_many_arguments)]
async fn stream(
    caller: ServiceCaller,
    State(store): State<Store>,
    State(clock): State<Clock>,
    State(feed): State<FeedSignal>,
    State(tail): State<FeedTail>,
    headers: axum::http::HeaderMap,
    query: std::result::Result<Query<StreamQuery>, QueryRejection>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    caller.require(Scope::RevocationsRead)?;
    let Query(q) = query.map_err(|_| AppError::InvalidRequest("The query string is not valid."))?;
    let cursors = Cursors::of(&store).await?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(cursors.parse_or_400(v.to_str().unwrap_or_default(), "Last-Event-ID")?),
        None => match q.after.as_deref() {
            Some(a) => Some(cursors.parse_or_400(a, "after")?),
            None => None,
        },
    };
    if let Some(after) = resume {
        let head = store.revocation_head().await?;
        tail.saw_head(head).await;
        if after > head {
            return Err(AppError::InvalidRequest(
                "The cursor is beyond the newest revocation: start over from a snapshot.",
            ));
        }
    }
    let slot = feed.admit(caller.name()).ok_or_else(too_many)?;
    // The secret's digest, to notice the credential's removal while the stream lasts.
    let digest = super::extract::bearer(&headers)?
        .and_then(crate::service_credentials::ServiceSecret::parse)
        .map(|s| s.digest())
        .ok_or(AppError::InvalidToken { presented: true })?;
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    tokio::spawn(feed_stream(Follower { store, tail, clock, feed, cursors }, resume, digest, tx, slot));
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    let sse = axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::new().interval(KEEP_ALIVE).text(""));
    let mut res = sse.into_response();
    res.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    // nginx buffers proxied responses by default, which would hold events back: not this one.
    res.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    Ok(res)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Resume after this cursor (`Last-Event-ID` wins when both are sent).
    #[param(pattern = "^[0-9a-f]{16}\\.[0-9]{1,19}$")]
    after: Option<String>,
}

type EventTx = tokio::sync::mpsc::Sender<axum::response::sse::Event>;

fn revocation_event(e: LogEntry, cursors: &Cursors) -> axum::response::sse::Event {
    let id = cursors.show(e.cursor);
    let data = serde_json::to_string(&RevocationView::new(e, cursors)).unwrap_or_default();
    axum::response::sse::Event::default().event("revocation").id(id).data(data)
}

/// Queues one event; false when the stream must end (the reader left, or is too slow).
async fn deliver(tx: &EventTx, event: axum::response::sse::Event) -> bool {
    matches!(tokio::time::timeout(SLOW_READER, tx.send(event)).await, Ok(Ok(())))
}

/// One stream's producer: the snapshot or the entries after the resume cursor, `synced`, then
/// every entry as it commits, woken by the instance's [`FeedSignal`] (no polling loop). Ends
/// when the reader leaves or stalls, the credential is removed, a read fails (the follower
/// resumes from its last id), or the server shuts down.
/// What a stream's producer reads with.
struct Follower {
    store: Store,
    tail: FeedTail,
    clock: Clock,
    feed: FeedSignal,
    cursors: Cursors,
}

/// The snapshot's entries as events, page by page (G-5); the head it was read at, or `None`
/// when the stream must end.
async fn send_snapshot(store: &Store, tail: &FeedTail, cursors: &Cursors, now: Millis, tx: &EventTx) -> Option<i64> {
    let head = match store.revocation_head().await {
        Ok(head) => {
            tail.saw_head(head).await;
            head
        }
        Err(e) => {
            tracing::warn!(error = %e, "revocation stream: snapshot read failed");
            return None;
        }
    };
    let mut after = 0;
    loop {
        let page = match store.revocations_in_force(after, head, now, SNAPSHOT_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "revocation stream: snapshot read failed");
                return None;
            }
        };
        let full = page.len() as i64 == SNAPSHOT_PAGE;
        for e in page {
            after = e.cursor;
            if !deliver(tx, revocation_event(e, cursors)).await {
                return None;
            }
        }
        if !full {
            return Some(head);
        }
    }
}

async fn feed_stream(
    follower: Follower,
    resume: Option<i64>,
    digest: [u8; 32],
    tx: EventTx,
    _slot: crate::feed::StreamSlot,
) {
    let Follower { store, tail, clock, feed, cursors } = follower;
    let mut commits = feed.subscribe();
    let mut cursor = match resume {
        Some(after) => after,
        None => match send_snapshot(&store, &tail, &cursors, clock.now_ms(), &tx).await {
            Some(head) => head,
            None => return,
        },
    };
    let mut synced = false;
    let mut recheck = tokio::time::Instant::now() + CREDENTIAL_RECHECK;
    loop {
        if tokio::time::Instant::now() >= recheck {
            match store.service_credential_by_digest(&digest).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::debug!("revocation stream ended: its credential was removed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revocation stream: credential re-check failed");
                    return;
                }
            }
            recheck = tokio::time::Instant::now() + CREDENTIAL_RECHECK;
        }
        let seen = *commits.borrow_and_update();
        let entries = match tail.after(cursor, MAX_LIMIT, seen).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "revocation stream: log read failed");
                return;
            }
        };
        if let Some(last) = entries.last() {
            cursor = last.cursor;
            for e in entries {
                if !deliver(&tx, revocation_event(e, &cursors)).await {
                    return;
                }
            }
            continue;
        }
        if !synced {
            let next = cursors.show(cursor);
            let data = serde_json::json!({ "next": next }).to_string();
            if !deliver(&tx, axum::response::sse::Event::default().event("synced").id(next).data(data)).await {
                return;
            }
            synced = true;
        }
        tokio::select! {
            biased;
            _ = feed.closed() => return,
            _ = tx.closed() => return,
            changed = commits.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(recheck) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_and_bounds_are_strict() {
        let c = Cursors("0123456789abcdef".into());
        assert_eq!(c.show(42), "0123456789abcdef.42");
        assert!(matches!(c.parse("0123456789abcdef.42"), Ok(42)));
        assert!(matches!(c.parse("0123456789abcdee.42"), Err(BadCursor::OtherEpoch)), "another database's");
        for bad in ["42", "0123456789abcdef", "0123456789abcdef.", ".42", "0123456789abcdeg.42", "abc.42"] {
            assert!(matches!(c.parse(bad), Err(BadCursor::Malformed)), "{bad}");
        }
        let parse_cursor = parse_id;
        assert_eq!(parse_cursor("0"), Some(0));
        assert_eq!(parse_cursor("9223372036854775807"), Some(i64::MAX));
        for bad in ["", "-1", "+1", " 1", "1a", "9223372036854775808", "00000000000000000001", "0x10"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
        let err = "e";
        assert_eq!(bounded(None, 1..=1000, 500, err).unwrap(), 500);
        assert_eq!(bounded(Some(""), 1..=1000, 500, err).unwrap(), 500);
        assert_eq!(bounded(Some("1000"), 1..=1000, 500, err).unwrap(), 1000);
        for bad in ["0", "1001", "+5", "-1", "1.5", "ten"] {
            assert!(bounded(Some(bad), 1..=1000, 500, err).is_err(), "{bad}");
        }
    }

    #[test]
    fn until_is_shown_rounded_up_to_the_second() {
        assert_eq!(ceil_to_second(5_000), 5_000);
        assert_eq!(ceil_to_second(5_001), 6_000);
        assert_eq!(ceil_to_second(5_999), 6_000);
    }
}

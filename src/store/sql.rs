//! The SQL of every query and transaction, written once for both backends through sqlx's `Any`
//! driver. Placeholders are `$N` (SQLite accepts them too); times are integer milliseconds;
//! booleans are integers. The few differences are explicit: [`Kind::greatest`], row locks
//! (`FOR UPDATE`) on PostgreSQL where SQLite has `BEGIN IMMEDIATE`, and the revocation log +
//! `NOTIFY` that PostgreSQL writes in the revoking transaction.

use std::sync::LazyLock;

use sqlx::{Any, Transaction};

use super::*;

pub(super) const SESSION_COLS: &str = "id, user_id, device_name, user_agent, ip, created_at, last_used_at, \
    settled_used_at, idle_expires_at, absolute_expires_at, access_expires_at, revoked_at, revoked_reason";

/// The `NOTIFY` channel of revocations.
pub const REVOCATIONS_CHANNEL: &str = "sessiond_revocations";

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    rotated_at: Option<i64>,
    successor_id: Option<String>,
    sealed_successor: Option<Vec<u8>>,
    /// The binding of the client that rotated this token out.
    rotated_by: Option<Vec<u8>>,
}

/// `settled_used_at` of a session being used at `$1` with grace `$G` (the placeholder given):
/// the previous use becomes the settled one once it is older than the grace window. In an
/// UPDATE every column reads its old value, so `last_used_at` here is the previous use.
fn settle(grace: &str) -> String {
    format!("settled_used_at = CASE WHEN $1 - last_used_at > {grace} THEN last_used_at ELSE settled_used_at END")
}

type Tx = Transaction<'static, Any>;

/// What a revocation notification says besides the log range: which instance made it (it has
/// already applied it) and, optionally, a request id to acknowledge.
pub struct NoteTag<'a> {
    pub origin: &'a str,
    pub request: Option<&'a str>,
}

/// The decision of one refresh, inside the caller's write transaction (docs/API.md §3.3).
pub(super) async fn rotate_in(
    tx: &mut Tx,
    kind: Kind,
    r: &Rotation,
    tag: &NoteTag<'_>,
    failpoints: &Failpoints,
) -> StoreResult<RotateOutcome> {
    let (session, token, disabled_at) = match kind {
        // SQLite: `BEGIN IMMEDIATE` holds the write lock already; one round trip reads both.
        Kind::Sqlite => {
            static SQL: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "SELECT s.{}, t.id AS t_id, t.rotated_at AS t_rotated_at, t.successor_id AS t_successor_id, \
                     t.sealed_successor AS t_sealed_successor, t.rotated_by AS t_rotated_by, \
                     u.disabled_at AS u_disabled_at \
                     FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id \
                     WHERE t.token_hash = $1",
                    SESSION_COLS.replace(", ", ", s.")
                )
            });
            let row: Option<(SessionRow, TokenRow, Option<i64>)> = sqlx::query(SQL.as_str())
                .bind(&r.presented_hash[..])
                .try_map(|row: sqlx::any::AnyRow| {
                    use sqlx::{FromRow, Row};
                    Ok((
                        SessionRow::from_row(&row)?,
                        TokenRow {
                            id: row.try_get("t_id")?,
                            rotated_at: row.try_get("t_rotated_at")?,
                            successor_id: row.try_get("t_successor_id")?,
                            sealed_successor: row.try_get("t_sealed_successor")?,
                            rotated_by: row.try_get("t_rotated_by")?,
                        },
                        row.try_get("u_disabled_at")?,
                    ))
                })
                .fetch_optional(&mut **tx)
                .await?;
            match row {
                Some(triple) => triple,
                None => return Ok(RotateOutcome::Invalid),
            }
        }
        // PostgreSQL: lock the session row first, then the token row, in two statements. Every
        // writer that touches a session's tokens (refreshes of any of its tokens) or the
        // session (revocations, which touch no token rows) takes the session lock first, so
        // racing refreshes and revocations serialise without lock cycles. The token is read by
        // a second statement, after the session lock is held, so that (READ COMMITTED) it sees
        // the commit of a refresh that held the lock before us; a join would re-check only the
        // locked session row and could return the token as it was before that commit.
        // The user row is read without a lock: disabling, demoting and password changes lock
        // the user row and then the user's session rows, so locking it here (after the session
        // row) could deadlock with them. Unlocked is enough: such a writer ends this session
        // after us, in its own transaction, if it had not committed before this read.
        Kind::Postgres => {
            let lock = kind.for_update();
            let session: Option<SessionRow> = sqlx::query_as(&format!(
                "SELECT {SESSION_COLS} FROM sessions \
                 WHERE id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $1){lock}"
            ))
            .bind(&r.presented_hash[..])
            .fetch_optional(&mut **tx)
            .await?;
            let Some(session) = session else { return Ok(RotateOutcome::Invalid) };
            let token: TokenRow = sqlx::query_as(&format!(
                "SELECT id, rotated_at, successor_id, sealed_successor, rotated_by FROM refresh_tokens \
                 WHERE token_hash = $1{lock}"
            ))
            .bind(&r.presented_hash[..])
            .fetch_one(&mut **tx)
            .await?;
            let disabled_at: Option<i64> = sqlx::query_scalar("SELECT disabled_at FROM users WHERE id = $1")
                .bind(&session.user_id)
                .fetch_one(&mut **tx)
                .await?;
            (session, token, disabled_at)
        }
    };
    if session.revoked_at.is_some() {
        return Ok(RotateOutcome::Invalid);
    }
    if session.expires_at() <= r.now {
        let sel = Selector::Session(session.id.clone());
        return Ok(RotateOutcome::Expired(revoke_in(tx, kind, &sel, "session_expired", r.now, tag).await?));
    }
    // A disabled account's sessions end with the flag (same transaction), so this finds only
    // one that is somehow still live (e.g. from before that was so): end it too (RT1).
    if disabled_at.is_some() {
        let sel = Selector::Session(session.id.clone());
        return Ok(RotateOutcome::Disabled(revoke_in(tx, kind, &sel, "account_disabled", r.now, tag).await?));
    }

    let idle = r.now + r.idle_ttl;
    let access_exp = (r.now + r.access_ttl).min(idle).min(session.absolute_expires_at);

    let Some(rotated_at) = token.rotated_at else {
        // The live token: rotate it.
        let session = rotate_live(tx, kind, &session, &token, r, idle, access_exp, failpoints).await?;
        return Ok(RotateOutcome::Rotated { session, access_exp });
    };
    let successor_live = match &token.successor_id {
        Some(sid) => sqlx::query_scalar::<_, Option<i64>>("SELECT rotated_at FROM refresh_tokens WHERE id = $1")
            .bind(sid)
            .fetch_optional(&mut **tx)
            .await?
            .is_some_and(|ra| ra.is_none()),
        None => false,
    };
    let within = r.now - rotated_at <= r.grace;
    // Grace exists for the client that rotated (racing tabs of one browser, a retry after a lost
    // response), not for whoever else holds a copy of the token: a thief who replays the
    // previous token just after the victim's rotation is a reuse like any other (RT6).
    let same_client = token.rotated_by.as_deref() == Some(&r.client[..]);
    match (&token.sealed_successor, successor_live && within) {
        (Some(sealed), true) if same_client => {
            sqlx::query(&format!(
                "UPDATE sessions SET last_used_at = $1, {}, access_expires_at = {}(access_expires_at, $2) WHERE id = $3",
                settle("$4"),
                kind.greatest()
            ))
            .bind(r.now)
            .bind(access_exp)
            .bind(&session.id)
            .bind(r.grace)
            .execute(&mut **tx)
            .await?;
            Ok(RotateOutcome::Grace { session, sealed_successor: sealed.clone(), access_exp })
        }
        (sealed, in_grace) => {
            let foreign_client = sealed.is_some() && in_grace && !same_client;
            let sel = Selector::Session(session.id.clone());
            let revoked = revoke_in(tx, kind, &sel, "refresh_token_reused", r.now, tag).await?;
            Ok(RotateOutcome::Reused { revoked, foreign_client })
        }
    }
}

/// Marks `token` rotated, stores the candidate as the live token, and extends the session's
/// idle expiry. The old token is marked first: the partial unique index allows one live token.
#[allow(clippy::too_many_arguments)]
async fn rotate_live(
    tx: &mut Tx,
    kind: Kind,
    session: &SessionRow,
    token: &TokenRow,
    r: &Rotation,
    idle: Millis,
    access_exp: Millis,
    failpoints: &Failpoints,
) -> StoreResult<SessionRow> {
    // One statement: mark the presented token rotated (keeping its sealed successor), and forget
    // every older sealed successor: only the immediately previous token may converge.
    // The rotating client's binding stays with the token: only that client may converge on the
    // successor inside grace.
    sqlx::query(
        "UPDATE refresh_tokens SET \
           rotated_at = CASE WHEN id = $4 THEN $1 ELSE rotated_at END, \
           successor_id = CASE WHEN id = $4 THEN $2 ELSE successor_id END, \
           sealed_successor = CASE WHEN id = $4 THEN $3 ELSE NULL END, \
           rotated_by = CASE WHEN id = $4 THEN $6 ELSE rotated_by END \
         WHERE session_id = $5 AND (id = $4 OR sealed_successor IS NOT NULL)",
    )
    .bind(r.now)
    .bind(&r.candidate.id)
    .bind(&r.sealed_candidate)
    .bind(&token.id)
    .bind(&session.id)
    .bind(&r.client[..])
    .execute(&mut **tx)
    .await?;
    // Tests: a fault between the two writes must roll the whole rotation back (SECURITY.md R6).
    if failpoints.hit(failpoint::ROTATE_AFTER_MARK) {
        return Err(StoreError::Injected(failpoint::ROTATE_AFTER_MARK));
    }
    sqlx::query(
        "INSERT INTO refresh_tokens (id, session_id, token_hash, prev_id, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&r.candidate.id)
    .bind(&session.id)
    .bind(&r.candidate.hash[..])
    .bind(&token.id)
    .bind(r.now)
    .execute(&mut **tx)
    .await?;
    Ok(sqlx::query_as(&format!(
        "UPDATE sessions SET last_used_at = $1, {}, idle_expires_at = $2, \
           access_expires_at = {}(access_expires_at, $3) WHERE id = $4 RETURNING {SESSION_COLS}",
        settle("$5"),
        kind.greatest()
    ))
    .bind(r.now)
    .bind(idle)
    .bind(access_exp)
    .bind(&session.id)
    .bind(r.grace)
    .fetch_one(&mut **tx)
    .await?)
}

/// Ends the selected sessions inside `tx` and, on PostgreSQL, logs and announces them in the
/// same transaction (nothing is announced on rollback). The tag travels in the notification.
pub(super) async fn revoke_in(
    tx: &mut Tx,
    kind: Kind,
    sel: &Selector,
    reason: &str,
    now: Millis,
    tag: &NoteTag<'_>,
) -> StoreResult<Vec<Revoked>> {
    // Only live sessions, except when ending expired ones.
    let live = if reason == "session_expired" { "" } else { " AND idle_expires_at > $1 AND absolute_expires_at > $1" };
    let filter = match sel {
        Selector::Session(_) => " AND id = $3",
        Selector::OwnSession { .. } => " AND id = $3 AND user_id = $4",
        Selector::User { .. } => " AND user_id = $3 AND ($4 IS NULL OR id <> $4)",
        Selector::Everyone => "",
        Selector::Expired => " AND (idle_expires_at <= $1 OR absolute_expires_at <= $1)",
    };
    let update = format!(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE revoked_at IS NULL{live}{filter} \
         RETURNING id, user_id, access_expires_at"
    );
    let sql = match kind {
        Kind::Sqlite => update,
        // One statement: revoke, append to the log, and return the log's id range.
        Kind::Postgres => format!(
            "WITH r AS ({update}), \
                  l AS (INSERT INTO revocations (session_id, user_id, reason, at, access_expires_at) \
                        SELECT id, user_id, $2, $1, access_expires_at FROM r RETURNING id) \
             SELECT r.id, r.user_id, r.access_expires_at, \
                    (SELECT MIN(id) FROM l) AS log_from, (SELECT MAX(id) FROM l) AS log_to FROM r"
        ),
    };
    let q = sqlx::query_as::<_, RevokedRow>(&sql).bind(now).bind(reason);
    let q = match sel {
        Selector::Session(id) => q.bind(id),
        Selector::OwnSession { user_id, session_id } => q.bind(session_id).bind(user_id),
        Selector::User { user_id, except } => q.bind(user_id).bind(except),
        Selector::Everyone | Selector::Expired => q,
    };
    let rows: Vec<RevokedRow> = q.fetch_all(&mut **tx).await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // The ended sessions' sealed successors are left for the sweep (they are useless: a refresh
    // of an ended session is refused before anything is unsealed). Touching token rows here
    // would take token locks after the session lock, against the refresh's order.
    if kind == Kind::Postgres {
        let (from, to) = (rows[0].log_from.unwrap_or(0), rows[0].log_to.unwrap_or(0));
        let payload =
            serde_json::json!({ "from": from, "to": to, "origin": tag.origin, "req": tag.request }).to_string();
        sqlx::query("SELECT pg_notify($1, $2)").bind(REVOCATIONS_CHANNEL).bind(payload).execute(&mut **tx).await?;
    }
    Ok(rows
        .into_iter()
        .map(|r| Revoked {
            session_id: r.id,
            user_id: r.user_id,
            access_expires_at: r.access_expires_at,
            reason: reason.to_string(),
            at: now,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct RevokedRow {
    id: String,
    user_id: String,
    access_expires_at: i64,
    #[sqlx(default)]
    log_from: Option<i64>,
    #[sqlx(default)]
    log_to: Option<i64>,
}

-- Issue 14: sessiond as an OpenID Shared Signals transmitter (docs/SSF.md). The same tables and
-- meaning as migrations/sqlite/0006.

-- The RS256 keys that sign Security Event Tokens (never the access-token keys). The newest key
-- without `retired_at` signs; a retired key stays published while a stored SET signed by it is
-- still undelivered or a dead letter (docs/SSF.md §1.1).
CREATE TABLE ssf_keys (
    kid         TEXT PRIMARY KEY NOT NULL,
    private_der BYTEA NOT NULL,
    created_at  timestamptz NOT NULL,
    retired_at  timestamptz
);

-- One stream per receiver credential (`owner`). The Receiver-supplied configuration is kept as
-- sent (`delivery`, `events_requested` as JSON, `description`) so reads echo it; `method`,
-- `endpoint_url` and `authorization_header` are derived from `delivery` for the workers.
CREATE TABLE ssf_streams (
    id                   TEXT PRIMARY KEY NOT NULL,
    owner                TEXT NOT NULL UNIQUE,
    aud                  TEXT NOT NULL,
    delivery             TEXT NOT NULL,
    method               TEXT NOT NULL CHECK (method IN ('push', 'poll')),
    endpoint_url         TEXT,
    authorization_header TEXT,
    events_requested     TEXT,
    events_delivered     TEXT NOT NULL,
    description          TEXT,
    event_subject        BOOLEAN NOT NULL DEFAULT false,
    status               TEXT NOT NULL CHECK (status IN ('enabled', 'paused', 'disabled')),
    status_reason        TEXT,
    health               TEXT NOT NULL DEFAULT 'ok',
    last_success_at      timestamptz,
    last_error           TEXT,
    last_verify_at       timestamptz,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);

-- Subjects removed from a stream (`default_subjects` is ALL, so `remove` adds a rule and `add`
-- deletes one). `subject` is the normalised subject as JSON.
CREATE TABLE ssf_subject_rules (
    stream_id TEXT NOT NULL REFERENCES ssf_streams (id) ON DELETE CASCADE,
    subject   TEXT NOT NULL,
    PRIMARY KEY (stream_id, subject)
);

-- The outbox: one row per event, written by the transaction that causes it (a revocation, a
-- password change, a disable or enable), so nothing is announced on rollback and nothing is
-- lost after the commit. Written only while some stream exists. `stream_id` is set for the
-- events about one stream (verification, stream-updated), `payload` holds their fields.
-- The dispatcher expands each row into one SET per stream and sets `expanded_at`.
CREATE TABLE ssf_signals (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL,
    user_id     TEXT,
    session_id  TEXT,
    reason      TEXT NOT NULL,
    txn         TEXT,
    occurred_at timestamptz NOT NULL,
    stream_id   TEXT,
    payload     TEXT,
    expanded_at timestamptz
);
CREATE INDEX ssf_signals_pending_idx ON ssf_signals (id) WHERE expanded_at IS NULL;

-- One signed SET for one stream, stored once and sent byte for byte on every attempt.
-- `state`: pending (to push, or to hand to a poller; `returned_at` when handed out and not yet
-- acknowledged), delivered (2xx or acknowledged), dead (dead letter), dropped (discarded by a
-- disable or the paused-stream bound). `subject_key` orders the SETs about one subject.
CREATE TABLE ssf_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    stream_id       TEXT NOT NULL REFERENCES ssf_streams (id) ON DELETE CASCADE,
    jti             TEXT NOT NULL UNIQUE,
    signal_id       BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    subject_key     TEXT NOT NULL,
    kid             TEXT NOT NULL,
    set_jws         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead', 'dropped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    leased_until    timestamptz,
    returned_at     timestamptz,
    last_error      TEXT,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX ssf_deliveries_stream_idx ON ssf_deliveries (stream_id, state, id);
CREATE INDEX ssf_deliveries_kid_idx ON ssf_deliveries (kid, state);
-- The push claim's ordering check: is an older SET about the same subject still pending?
-- The dispatcher's "anything due?" read, every second: only the pending rows.
CREATE INDEX ssf_deliveries_due_idx ON ssf_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX ssf_deliveries_subject_idx ON ssf_deliveries (stream_id, subject_key, state, signal_id);

-- The `aud` of the SSF stream of a credential with scope `ssf` (docs/SSF.md §1.3:
-- `sessiond service add NAME --scope ssf [--ssf-aud AUD]`). NULL (credentials created before
-- this migration, or without scope `ssf`) means the credential's name.
ALTER TABLE service_credentials ADD COLUMN ssf_aud TEXT;

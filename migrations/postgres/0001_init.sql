-- sessiond schema (PostgreSQL): the same tables and semantics as migrations/sqlite, plus the
-- revocation log and presence used by the multi-instance backplane. Times are BIGINT
-- milliseconds since the Unix epoch; booleans are BIGINT 0/1 (one row type for both backends).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_admin      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    disabled_at   BIGINT
);

CREATE TABLE sessions (
    id                  TEXT PRIMARY KEY,
    user_id             TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device_name         TEXT,
    user_agent          TEXT,
    ip                  TEXT,
    created_at          BIGINT NOT NULL,
    last_used_at        BIGINT NOT NULL,
    idle_expires_at     BIGINT NOT NULL,
    absolute_expires_at BIGINT NOT NULL,
    access_expires_at   BIGINT NOT NULL,
    revoked_at          BIGINT,
    revoked_reason      TEXT
);
CREATE INDEX sessions_user_idx ON sessions (user_id, created_at);
CREATE INDEX sessions_live_idx ON sessions (revoked_at, idle_expires_at);
CREATE INDEX sessions_revoked_idx ON sessions (access_expires_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens (
    id               TEXT PRIMARY KEY,
    session_id       TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    token_hash       BYTEA NOT NULL UNIQUE,
    prev_id          TEXT REFERENCES refresh_tokens(id),
    created_at       BIGINT NOT NULL,
    rotated_at       BIGINT,
    successor_id     TEXT,
    sealed_successor BYTEA
);
CREATE UNIQUE INDEX refresh_tokens_one_live ON refresh_tokens (session_id) WHERE rotated_at IS NULL;
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);
CREATE INDEX refresh_tokens_sealed_idx ON refresh_tokens (rotated_at) WHERE sealed_successor IS NOT NULL;

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    private_der  BYTEA NOT NULL,
    public_x     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    activates_at BIGINT NOT NULL
);

-- Every revocation, in the transaction that makes it; NOTIFY carries only an id range of this
-- log, and listeners read the rows (payload stays tiny, "logout everyone" is one notification).
CREATE TABLE revocations (
    id                BIGSERIAL PRIMARY KEY,
    session_id        TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    reason            TEXT NOT NULL,
    at                BIGINT NOT NULL,
    access_expires_at BIGINT NOT NULL
);
CREATE INDEX revocations_at_idx ON revocations (at);

-- Cluster presence: which instance holds sockets of which session, with instance heartbeats so
-- a crashed instance's presence stops counting.
CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL
);
CREATE TABLE presence (
    instance_id TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    PRIMARY KEY (instance_id, session_id)
);
CREATE INDEX presence_session_idx ON presence (session_id);

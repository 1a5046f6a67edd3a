-- sessiond schema (SQLite). Times are integer milliseconds since the Unix epoch, ids are text.
-- Never edit an applied migration: add a new numbered file instead.

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL UNIQUE,          -- normalised: trimmed, lower case
    password_hash TEXT NOT NULL,                 -- argon2id PHC string
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    disabled_at   INTEGER
);

CREATE TABLE sessions (
    id                  TEXT PRIMARY KEY NOT NULL,
    user_id             TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device_name         TEXT,
    user_agent          TEXT,
    ip                  TEXT,
    created_at          INTEGER NOT NULL,
    last_used_at        INTEGER NOT NULL,
    idle_expires_at     INTEGER NOT NULL,
    absolute_expires_at INTEGER NOT NULL,
    -- latest `exp` of any access token issued for this session: a denylist entry must live
    -- at least this long (plus leeway) after the session is revoked
    access_expires_at   INTEGER NOT NULL,
    revoked_at          INTEGER,
    revoked_reason      TEXT
);
CREATE INDEX sessions_user_idx ON sessions (user_id, created_at);
CREATE INDEX sessions_live_idx ON sessions (revoked_at, idle_expires_at);
CREATE INDEX sessions_revoked_idx ON sessions (access_expires_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens (
    id               TEXT PRIMARY KEY NOT NULL,
    session_id       TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    token_hash       BLOB NOT NULL UNIQUE,       -- SHA-256 of the token; the token is never stored
    prev_id          TEXT REFERENCES refresh_tokens(id),
    created_at       INTEGER NOT NULL,
    rotated_at       INTEGER,                    -- NULL while this is the session's live token
    successor_id     TEXT,
    -- the successor token sealed under a key derived from THIS token (which only the client
    -- holds), so a retry inside the grace window converges on it while the database alone
    -- cannot recover it
    sealed_successor BLOB
);
-- invariant: at most one live refresh token per session
CREATE UNIQUE INDEX refresh_tokens_one_live ON refresh_tokens (session_id) WHERE rotated_at IS NULL;
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY NOT NULL,
    private_der  BLOB NOT NULL,                  -- Ed25519 PKCS#8; shared by every instance
    public_x     TEXT NOT NULL,                  -- base64url public key (JWK `x`)
    created_at   INTEGER NOT NULL,               -- published in the JWKS from here on
    activates_at INTEGER NOT NULL                -- signs from here on (the newest active key signs)
);
CREATE INDEX refresh_tokens_sealed_idx ON refresh_tokens (rotated_at) WHERE sealed_successor IS NOT NULL;

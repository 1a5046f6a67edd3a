-- Issue 13: service credentials (docs/API.md §8), and the `revocations` log (migration 0001)
-- becomes the revocation feed's source (docs/API.md §9). The same tables and meaning as
-- migrations/sqlite/0005.

-- A credential of one of the app's other services. Only the SHA-256 digest of its secret
-- (`sk_` + 256 random bits, base64url) is stored; requests look it up by that digest.
-- `scopes` is a space-separated list (`revocations:read introspect ssf`), as OAuth writes them
-- (text rather than text[]: the statements are shared with SQLite). `last_used_at` is written at
-- most once a minute per credential.
CREATE TABLE service_credentials (
    name          TEXT PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    secret_digest BYTEA NOT NULL UNIQUE,
    scopes        TEXT NOT NULL,
    created_at    timestamptz NOT NULL,
    last_used_at  timestamptz
);

-- The log is now pruned by `until` (derived from `access_expires_at`, see
-- `store::revocation_until`) in the expiry sweep, and the feed's snapshot selects by it; nothing
-- reads by `at` any more. Ids are allocated under an advisory lock held until commit, so they
-- grow in commit order (see `PgStore::revoke_in`).
CREATE INDEX revocations_exp_idx ON revocations (access_expires_at);
DROP INDEX revocations_at_idx;

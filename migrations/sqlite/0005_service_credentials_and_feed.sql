-- Issue 13: service credentials (docs/API.md §8) and the commit-ordered revocation log that the
-- revocation feed reads (docs/API.md §9). The same tables and meaning as migrations/postgres/0005
-- (PostgreSQL has had its `revocations` log since 0001; SQLite gets it here).

-- A credential of one of the app's other services. Only the SHA-256 digest of its secret
-- (`sk_` + 256 random bits, base64url) is stored; requests look it up by that digest.
-- `scopes` is a space-separated list (`revocations:read introspect ssf`), as OAuth writes them.
-- `last_used_at` is written at most once a minute per credential.
CREATE TABLE service_credentials (
    name          TEXT PRIMARY KEY NOT NULL
                  CHECK (length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^A-Za-z0-9._-]*'),
    secret_digest BLOB NOT NULL UNIQUE,
    scopes        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER
);

-- Every ended session, appended in the transaction that ends it (nothing on rollback). The one
-- writer of SQLite commits transactions one at a time, so ids grow in commit order and a reader
-- that has seen id N has seen every entry below N. AUTOINCREMENT: an id is never reused, even
-- after the newest rows are deleted (the expiry sweep keeps the newest row anyway, so the head
-- never moves back). `until` (docs/API.md §9) is derived from `access_expires_at` by
-- `store::revocation_until`, in one place.
CREATE TABLE revocations (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id        TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    reason            TEXT NOT NULL,
    at                INTEGER NOT NULL,
    access_expires_at INTEGER NOT NULL
);
CREATE INDEX revocations_exp_idx ON revocations (access_expires_at);

-- Sessions revoked before this migration whose access tokens may still be unexpired: a follower
-- that takes a snapshot right after the upgrade must hold them too. (Older ones are useless;
-- the expiry sweep would drop them anyway.)
INSERT INTO revocations (session_id, user_id, reason, at, access_expires_at)
SELECT id, user_id, COALESCE(revoked_reason, 'session_revoked'), revoked_at, access_expires_at
FROM sessions
WHERE revoked_at IS NOT NULL AND access_expires_at > CAST(strftime('%s', 'now') AS INTEGER) * 1000 - 3600000
ORDER BY revoked_at, id;

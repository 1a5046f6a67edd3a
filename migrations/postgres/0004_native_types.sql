-- Issue 12: native PostgreSQL types. Migrations 0001-0003 stored every time as BIGINT
-- milliseconds since the Unix epoch and every flag as BIGINT 0/1, because one row type served
-- both backends through sqlx's `Any` driver. Each backend now has its own typed pool, so
-- PostgreSQL gets `timestamptz` and `boolean`: readable in psql, comparable with now(), and
-- checked by the database. Existing rows are converted in place: a time t becomes
-- to_timestamp(t / 1000.0) (timestamptz keeps µs, so every millisecond survives: the refresh
-- grace window is inclusive to the ms), a flag f becomes f <> 0. SQLite keeps INTEGER ms and
-- 0/1, which suit it (migrations/sqlite has no 0004).
--
-- Ids stay TEXT: the statements are shared with SQLite, which stores text, and not every id is
-- a UUID (instance ids are opaque strings, signing key ids are RFC 7638 thumbprints).
--
-- Each ALTER rewrites its table under an exclusive lock, and sessiond versions before this one
-- cannot read the new types: stop every instance, upgrade, start them again.

ALTER TABLE users
    ALTER COLUMN is_admin DROP DEFAULT,
    ALTER COLUMN is_admin TYPE boolean USING is_admin <> 0,
    ALTER COLUMN is_admin SET DEFAULT false,
    ALTER COLUMN created_at TYPE timestamptz USING to_timestamp(created_at / 1000.0),
    ALTER COLUMN disabled_at TYPE timestamptz USING to_timestamp(disabled_at / 1000.0);

ALTER TABLE sessions
    ALTER COLUMN created_at TYPE timestamptz USING to_timestamp(created_at / 1000.0),
    ALTER COLUMN last_used_at TYPE timestamptz USING to_timestamp(last_used_at / 1000.0),
    ALTER COLUMN idle_expires_at TYPE timestamptz USING to_timestamp(idle_expires_at / 1000.0),
    ALTER COLUMN absolute_expires_at TYPE timestamptz USING to_timestamp(absolute_expires_at / 1000.0),
    ALTER COLUMN access_expires_at TYPE timestamptz USING to_timestamp(access_expires_at / 1000.0),
    ALTER COLUMN revoked_at TYPE timestamptz USING to_timestamp(revoked_at / 1000.0),
    -- 0 ("no settled use yet", migration 0003) becomes the epoch, which reads back as 0.
    ALTER COLUMN settled_used_at DROP DEFAULT,
    ALTER COLUMN settled_used_at TYPE timestamptz USING to_timestamp(settled_used_at / 1000.0),
    ALTER COLUMN settled_used_at SET DEFAULT 'epoch';

ALTER TABLE refresh_tokens
    ALTER COLUMN created_at TYPE timestamptz USING to_timestamp(created_at / 1000.0),
    ALTER COLUMN rotated_at TYPE timestamptz USING to_timestamp(rotated_at / 1000.0);

ALTER TABLE signing_keys
    ALTER COLUMN created_at TYPE timestamptz USING to_timestamp(created_at / 1000.0),
    ALTER COLUMN activates_at TYPE timestamptz USING to_timestamp(activates_at / 1000.0);

ALTER TABLE revocations
    ALTER COLUMN at TYPE timestamptz USING to_timestamp(at / 1000.0),
    ALTER COLUMN access_expires_at TYPE timestamptz USING to_timestamp(access_expires_at / 1000.0);

ALTER TABLE instances
    ALTER COLUMN heartbeat_at TYPE timestamptz USING to_timestamp(heartbeat_at / 1000.0);

-- A table rewrite fires no row triggers: the append-only triggers stay, untouched.
ALTER TABLE audit_log
    ALTER COLUMN at TYPE timestamptz USING to_timestamp(at / 1000.0);

-- Issue 11 (red team): credential state checked at session creation, refresh grace bound to the
-- rotating client, session listings that do not time a rotation, TRUNCATE refused on the audit
-- log. The same columns and meaning as migrations/sqlite/0003.

-- Bumped by every password change (in the transaction that ends the other sessions). A login
-- creates its session only if the version it verified is still current and the account is not
-- disabled, checked under a row lock in the session's own transaction (SECURITY.md RT1). A
-- rehash with new parameters does not bump it: the password is the same.
ALTER TABLE users ADD COLUMN credential_version BIGINT NOT NULL DEFAULT 0;

-- SHA-256 of the client (address, user agent) that rotated this token out: the grace window
-- lets only that client converge on the successor (RT6). NULL for tokens rotated before.
ALTER TABLE refresh_tokens ADD COLUMN rotated_by BYTEA;

-- The latest use of the session that was already older than the grace window when the session
-- was last used: session listings show it while `last_used_at` is inside the window (RT6).
-- 0 before this migration (listings then fall back to `created_at`).
ALTER TABLE sessions ADD COLUMN settled_used_at BIGINT NOT NULL DEFAULT 0;

-- Row-level triggers do not fire on TRUNCATE: refuse it with a statement-level one (RT13).
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

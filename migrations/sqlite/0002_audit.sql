-- Append-only audit log of security events (SECURITY.md S2; issue 7). Rows are never updated
-- or deleted by sessiond; the triggers refuse it for anyone else too.
CREATE TABLE audit_log (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    at                INTEGER NOT NULL,
    event             TEXT NOT NULL,
    actor_user_id     TEXT,
    target_user_id    TEXT,
    target_session_id TEXT,
    ip                TEXT,
    user_agent        TEXT,
    detail            TEXT
);
CREATE INDEX audit_log_target_idx ON audit_log (target_user_id, id);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_user_id, id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

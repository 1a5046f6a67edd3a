-- Append-only audit log of security events (SECURITY.md S2; issue 7). Rows are never updated
-- or deleted by sessiond; the trigger refuses it for anyone else too (short of dropping it).
CREATE TABLE audit_log (
    id                BIGSERIAL PRIMARY KEY,
    at                BIGINT NOT NULL,
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

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- Issue 20: the holes an independent attack found in the Shared Signals transmitter (SECURITY.md
-- G-1, G-2, G-3, G-6). The same tables and meaning as migrations/postgres/0007.

-- G-1. A service credential has an immutable id, and its stream belongs to that id: removing the
-- credential deletes its stream (ON DELETE CASCADE; `Store::remove_service_credential` also
-- deletes the stream's SETs, subject rules and heads in the same transaction), and a credential
-- added later under the same name is another id that owns nothing.
ALTER TABLE service_credentials ADD COLUMN id TEXT;
UPDATE service_credentials SET id = 'svc_' || lower(hex(randomblob(16)));
CREATE UNIQUE INDEX service_credentials_id_idx ON service_credentials (id);
ALTER TABLE ssf_streams ADD COLUMN owner_id TEXT REFERENCES service_credentials (id) ON DELETE CASCADE;
UPDATE ssf_streams SET owner_id = (SELECT c.id FROM service_credentials c WHERE c.name = ssf_streams.owner);
CREATE INDEX ssf_streams_owner_idx ON ssf_streams (owner_id);
-- Streams left behind by a credential removed before this migration (the hole itself) go now,
-- with what they held, and the audit trail says so.
INSERT INTO audit_log (at, event, detail)
SELECT CAST(strftime('%s', 'now') AS INTEGER) * 1000, 'ssf_stream_deleted',
       json_object('stream_id', id, 'owner', owner, 'by', 'migration_0007_credential_removed')
FROM ssf_streams WHERE owner_id IS NULL;
DELETE FROM ssf_deliveries WHERE stream_id IN (SELECT id FROM ssf_streams WHERE owner_id IS NULL);
DELETE FROM ssf_subject_rules WHERE stream_id IN (SELECT id FROM ssf_streams WHERE owner_id IS NULL);
DELETE FROM ssf_streams WHERE owner_id IS NULL;
-- Who set the status: 'operator' (the CLI) or 'receiver' (POST /ssf/status). An operator's
-- disable is sticky: the receiver's own status call cannot lift it.
ALTER TABLE ssf_streams ADD COLUMN status_by TEXT;

-- G-2. Subject rules are matched by key, so matching a signal is one indexed lookup whatever the
-- number of rules: `user_key` and `session_key` are the canonical JSON of the rule's `user` and
-- `session` members, '*' when the member is absent, and `user_key` is '-' for a rule that no
-- subject sessiond sends can match (`ssf::events::rule_keys`). Rules stored before this migration
-- get their keys when a server starts (NULL until then).
ALTER TABLE ssf_subject_rules ADD COLUMN user_key TEXT;
ALTER TABLE ssf_subject_rules ADD COLUMN session_key TEXT;
CREATE INDEX ssf_subject_rules_key_idx ON ssf_subject_rules (user_key, session_key);

-- G-2. The dispatcher leases outbox rows (`claimed_until`) and builds and signs their SETs
-- outside any write transaction; a short one stores them. A SET waits while an earlier outbox row
-- about the same user is still unexpanded (so a slow expansion cannot reorder one user's SETs).
ALTER TABLE ssf_signals ADD COLUMN claimed_until INTEGER;
CREATE INDEX ssf_signals_user_pending_idx ON ssf_signals (user_id, id) WHERE expanded_at IS NULL;

-- G-3, G-6. The head of each (push stream, subject): its oldest pending SET, the only one that may
-- be pushed (SETs about one subject are never in flight together nor reordered). Maintained on
-- insert and on completion, so a claim reads the due heads of one stream through an index
-- instead of ranking every pending SET. The push lease lives here (`ssf_deliveries.leased_until`
-- is no longer used).
CREATE TABLE ssf_heads (
    stream_id       TEXT NOT NULL REFERENCES ssf_streams (id) ON DELETE CASCADE,
    subject_key     TEXT NOT NULL,
    delivery_id     INTEGER NOT NULL,
    signal_id       INTEGER NOT NULL,
    user_id         TEXT,
    next_attempt_at INTEGER NOT NULL,
    leased_until    INTEGER,
    PRIMARY KEY (stream_id, subject_key)
);
CREATE INDEX ssf_heads_due_idx ON ssf_heads (stream_id, next_attempt_at);
INSERT INTO ssf_heads (stream_id, subject_key, delivery_id, signal_id, user_id, next_attempt_at)
SELECT stream_id, subject_key, id, signal_id,
       CASE WHEN subject_key LIKE 'user:%' THEN substr(subject_key, 6) END, next_attempt_at
FROM (SELECT d.stream_id, d.subject_key, d.id, d.signal_id, d.next_attempt_at,
             row_number() OVER (PARTITION BY d.stream_id, d.subject_key ORDER BY d.signal_id, d.id) AS rn
      FROM ssf_deliveries d JOIN ssf_streams s ON s.id = d.stream_id
      WHERE d.state = 'pending' AND s.method = 'push') AS x
WHERE rn = 1;
-- The claim no longer probes the pending SETs by due time.
DROP INDEX ssf_deliveries_due_idx;

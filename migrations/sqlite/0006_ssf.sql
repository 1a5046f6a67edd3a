-- Issue 14: the Shared Signals transmitter (docs/SSF.md). The same meaning as
-- migrations/postgres/0006_ssf.sql.

-- The `aud` of the SSF stream of a credential with scope `ssf` (docs/SSF.md §1.3:
-- `sessiond service add NAME --scope ssf [--ssf-aud AUD]`). NULL (credentials created before
-- this migration, or without scope `ssf`) means the credential's name.
ALTER TABLE service_credentials ADD COLUMN ssf_aud TEXT;

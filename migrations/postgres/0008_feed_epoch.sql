-- Issue 21 (docs/API.md §14): the revocation feed's cursors carry the database's epoch, so a
-- follower holding a cursor of another database (a restored backup, a new database) is told to
-- start over from a snapshot instead of silently skipping entries. A new database gets a random
-- epoch here; after restoring a dump or a point-in-time recovery, `sessiond epoch renew` gives
-- the database a new one. The same table and meaning as migrations/sqlite/0008.
CREATE TABLE sessiond_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
INSERT INTO sessiond_meta (key, value)
VALUES ('feed_epoch', substr(replace(gen_random_uuid()::text, '-', ''), 1, 16));

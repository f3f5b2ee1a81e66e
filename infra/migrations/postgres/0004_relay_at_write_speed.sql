-- The relay at the speed of the writes (see the SQLite migration of the
-- same version for what each change is for).
CREATE TABLE outbox_relay_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1)
);
INSERT INTO outbox_relay_lease (id) VALUES (1);

ALTER TABLE outbox ADD COLUMN superseded_by BIGINT;
CREATE INDEX outbox_pending ON outbox (published, dead_lettered, id);
DROP INDEX outbox_unpublished;
DROP INDEX outbox_by_aggregate;

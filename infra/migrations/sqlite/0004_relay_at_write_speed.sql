-- The relay at the speed of the writes (issue 17).
--
-- One relay per shard at a time: a firing takes this row's lock
-- (FOR UPDATE SKIP LOCKED on the servers; SQLite's write transaction is
-- exclusive anyway), so several hosts never publish a row twice and an
-- aggregate's order never depends on who claimed what.
CREATE TABLE outbox_relay_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1)
);
INSERT INTO outbox_relay_lease (id) VALUES (1);

-- A snapshot event (settlement.updated) whose state a newer row of the same
-- aggregate carries is marked published without being sent; this names
-- the row that went out in its place.
ALTER TABLE outbox ADD COLUMN superseded_by INTEGER;

-- The relay's window is the oldest pending rows by id: one range of this
-- index, whatever the backlog, and dead letters are outside it. It replaces
-- both earlier indexes (the per-aggregate lookup is gone).
CREATE INDEX outbox_pending ON outbox (published, dead_lettered, id);
DROP INDEX outbox_unpublished;
DROP INDEX outbox_by_aggregate;

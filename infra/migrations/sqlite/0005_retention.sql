-- What the retention purge (host/src/retention.rs) reads: the oldest rows
-- first, as index range scans that stop after one batch, never a full scan.
-- Published outbox rows by the time they were published: ids are not in
-- publishing order (a row whose publish failed goes out after later rows),
-- so an index by id would walk every row still within the retention to
-- find none. Unpublished and dead-lettered rows sit under other prefixes
-- of the key and are never visited.
CREATE INDEX outbox_published_at ON outbox (published, dead_lettered, published_at);
CREATE INDEX processed_events_by_time ON processed_events (processed_at);
CREATE INDEX idempotency_keys_by_time ON idempotency_keys (created_at_ms);

-- What the retention purge reads, oldest first (see the SQLite migration of
-- the same version). InnoDB builds these online: writes go on meanwhile.
CREATE INDEX outbox_published_at ON outbox (published, dead_lettered, published_at);
CREATE INDEX processed_events_by_time ON processed_events (processed_at);
CREATE INDEX idempotency_keys_by_time ON idempotency_keys (created_at_ms);

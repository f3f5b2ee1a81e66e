-- What the retention purge reads, oldest first (see the SQLite migration of
-- the same version). A migration runs in a transaction, so these are built
-- without CONCURRENTLY and block writes to their table while they build; on
-- large existing tables, create them first by hand with
-- `CREATE INDEX CONCURRENTLY` under the same names, and this is a no-op.
CREATE INDEX IF NOT EXISTS outbox_published_at ON outbox (published, dead_lettered, published_at);
CREATE INDEX IF NOT EXISTS processed_events_by_time ON processed_events (processed_at);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_time ON idempotency_keys (created_at_ms);

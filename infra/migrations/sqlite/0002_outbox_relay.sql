-- What the outbox relay needs beyond the seed's columns: when a failed row
-- may be tried again, why it failed, whether it was given up on, and the
-- W3C trace context of the request that wrote it.
ALTER TABLE outbox ADD COLUMN next_attempt_at_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN last_error TEXT;
ALTER TABLE outbox ADD COLUMN dead_lettered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN traceparent TEXT;

-- The relay takes, per aggregate, the oldest row not yet published.
CREATE INDEX outbox_by_aggregate ON outbox (aggregate_id, published, id);

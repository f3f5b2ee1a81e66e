-- What the outbox relay needs beyond the seed's columns (see the SQLite
-- migration of the same version).
ALTER TABLE outbox
    ADD COLUMN next_attempt_at_ms BIGINT   NOT NULL DEFAULT 0,
    ADD COLUMN last_error         TEXT,
    ADD COLUMN dead_lettered      SMALLINT NOT NULL DEFAULT 0,
    ADD COLUMN traceparent        VARCHAR(64);

CREATE INDEX outbox_by_aggregate ON outbox (aggregate_id, published, id);

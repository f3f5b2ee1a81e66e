-- Consumed events that failed and that their dead-letter topic did not take
-- either (see the SQLite migration of the same version).
CREATE TABLE failed_events (
    id                BIGINT       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer          VARCHAR(255) NOT NULL,
    source_topic      VARCHAR(255) NOT NULL,
    source_partition  INTEGER      NOT NULL,
    source_offset     BIGINT       NOT NULL,
    event_id          VARCHAR(255),
    merchant_id       BIGINT,
    record_key        BYTEA,
    record_value      BYTEA        NOT NULL,
    headers           TEXT         NOT NULL,
    error             TEXT         NOT NULL,
    dead_letter_topic VARCHAR(255) NOT NULL,
    dead_letter_error TEXT         NOT NULL,
    failed_at         VARCHAR(32)  NOT NULL,
    UNIQUE (consumer, source_topic, source_partition, source_offset)
);

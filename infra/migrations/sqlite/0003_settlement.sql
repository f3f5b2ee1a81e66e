-- Kafka-triggered effects are exactly-once: the trigger records each event
-- id here in the same transaction as the component's writes.
CREATE TABLE processed_events (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- Per merchant, day (UTC) and currency: what settles.
CREATE TABLE settlements (
    merchant_id    INTEGER NOT NULL,
    day            TEXT    NOT NULL,
    currency       TEXT    NOT NULL,
    gross_captured INTEGER NOT NULL DEFAULT 0 CHECK (gross_captured >= 0),
    refunded       INTEGER NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    capture_count  INTEGER NOT NULL DEFAULT 0,
    refund_count   INTEGER NOT NULL DEFAULT 0,
    fee            INTEGER NOT NULL DEFAULT 0,
    net            INTEGER NOT NULL DEFAULT 0,
    updated_at     TEXT    NOT NULL,
    version        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (merchant_id, day, currency)
);

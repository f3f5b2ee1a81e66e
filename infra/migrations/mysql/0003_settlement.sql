-- Exactly-once effects of Kafka triggers, and per merchant / day / currency
-- settlement totals (see the SQLite migration of the same version).
CREATE TABLE processed_events (
    consumer     VARCHAR(128) NOT NULL,
    event_id     VARCHAR(64)  NOT NULL,
    processed_at VARCHAR(32)  NOT NULL,
    PRIMARY KEY (consumer, event_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE settlements (
    merchant_id    BIGINT      NOT NULL,
    day            VARCHAR(10) NOT NULL,
    currency       VARCHAR(3)  NOT NULL,
    gross_captured BIGINT      NOT NULL DEFAULT 0 CHECK (gross_captured >= 0),
    refunded       BIGINT      NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    capture_count  BIGINT      NOT NULL DEFAULT 0,
    refund_count   BIGINT      NOT NULL DEFAULT 0,
    fee            BIGINT      NOT NULL DEFAULT 0,
    net            BIGINT      NOT NULL DEFAULT 0,
    updated_at     VARCHAR(32) NOT NULL,
    version        BIGINT      NOT NULL DEFAULT 0,
    PRIMARY KEY (merchant_id, day, currency)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The payment schema of one shard (MariaDB 10.5+ / MySQL 8). Same tables,
-- columns and versions as the SQLite and PostgreSQL migrations.
-- utf8mb4_bin: ids and idempotency keys compare byte for byte (the default
-- collations are case-insensitive). Times are RFC 3339 UTC text, so they
-- sort and compare the same on every dialect.

CREATE TABLE payments (
    id              VARCHAR(64)  NOT NULL PRIMARY KEY,
    merchant_id     BIGINT       NOT NULL,
    status          VARCHAR(24)  NOT NULL CHECK (status IN
                        ('AUTHORIZED', 'DECLINED', 'CAPTURED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'VOIDED')),
    amount          BIGINT       NOT NULL CHECK (amount > 0),
    captured_amount BIGINT       NOT NULL DEFAULT 0 CHECK (captured_amount BETWEEN 0 AND amount),
    refunded_amount BIGINT       NOT NULL DEFAULT 0 CHECK (refunded_amount BETWEEN 0 AND captured_amount),
    currency        VARCHAR(3)   NOT NULL,
    order_id        VARCHAR(255),
    metadata        TEXT,
    created_at      VARCHAR(32)  NOT NULL,
    updated_at      VARCHAR(32)  NOT NULL,
    version         BIGINT       NOT NULL DEFAULT 0,
    INDEX payments_by_merchant (merchant_id, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE refunds (
    id          VARCHAR(64)  NOT NULL PRIMARY KEY,
    payment_id  VARCHAR(64)  NOT NULL,
    merchant_id BIGINT       NOT NULL,
    amount      BIGINT       NOT NULL CHECK (amount > 0),
    reason      TEXT,
    created_at  VARCHAR(32)  NOT NULL,
    INDEX refunds_by_payment (payment_id),
    FOREIGN KEY (payment_id) REFERENCES payments (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Double-entry ledger: the entries of one posting sum to zero.
CREATE TABLE ledger_entries (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    posting_id  VARCHAR(64)  NOT NULL,
    kind        VARCHAR(32)  NOT NULL,
    payment_id  VARCHAR(64)  NOT NULL,
    merchant_id BIGINT       NOT NULL,
    account     VARCHAR(64)  NOT NULL,
    amount      BIGINT       NOT NULL CHECK (amount <> 0),
    currency    VARCHAR(3)   NOT NULL,
    created_at  VARCHAR(32)  NOT NULL,
    INDEX ledger_by_posting (posting_id),
    INDEX ledger_by_merchant (merchant_id, account),
    FOREIGN KEY (payment_id) REFERENCES payments (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Transactional outbox (the seed's columns kept).
CREATE TABLE outbox (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id      VARCHAR(64)  NOT NULL UNIQUE,
    aggregate_id  VARCHAR(64)  NOT NULL,
    merchant_id   BIGINT       NOT NULL,
    event_type    VARCHAR(64)  NOT NULL,
    payload       MEDIUMTEXT   NOT NULL,
    created_at    VARCHAR(32)  NOT NULL,
    published     SMALLINT     NOT NULL DEFAULT 0,
    published_at  VARCHAR(32),
    retry_count   BIGINT       NOT NULL DEFAULT 0,
    last_retry_at VARCHAR(32),
    INDEX outbox_unpublished (published, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Idempotency records, committed in the same transaction as the response
-- they replay.
CREATE TABLE idempotency_keys (
    merchant_id     BIGINT       NOT NULL,
    idempotency_key VARCHAR(255) NOT NULL,
    fingerprint     VARCHAR(128) NOT NULL,
    status          BIGINT       NOT NULL,
    body            MEDIUMBLOB   NOT NULL,
    created_at_ms   BIGINT       NOT NULL,
    PRIMARY KEY (merchant_id, idempotency_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

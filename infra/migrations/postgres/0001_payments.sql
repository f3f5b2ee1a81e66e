-- The payment schema of one shard (PostgreSQL 13+). Same tables, columns
-- and versions as the SQLite and MariaDB migrations. Times are RFC 3339
-- UTC text, so they sort and compare the same on every dialect; flags are
-- SMALLINT 0/1, because components compare them with integers.

CREATE TABLE payments (
    id              VARCHAR(64)  PRIMARY KEY,
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
    version         BIGINT       NOT NULL DEFAULT 0
);
CREATE INDEX payments_by_merchant ON payments (merchant_id, created_at);

CREATE TABLE refunds (
    id          VARCHAR(64)  PRIMARY KEY,
    payment_id  VARCHAR(64)  NOT NULL REFERENCES payments (id),
    merchant_id BIGINT       NOT NULL,
    amount      BIGINT       NOT NULL CHECK (amount > 0),
    reason      TEXT,
    created_at  VARCHAR(32)  NOT NULL
);
CREATE INDEX refunds_by_payment ON refunds (payment_id);

-- Double-entry ledger: the entries of one posting sum to zero.
CREATE TABLE ledger_entries (
    id          BIGINT       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    posting_id  VARCHAR(64)  NOT NULL,
    kind        VARCHAR(32)  NOT NULL,
    payment_id  VARCHAR(64)  NOT NULL REFERENCES payments (id),
    merchant_id BIGINT       NOT NULL,
    account     VARCHAR(64)  NOT NULL,
    amount      BIGINT       NOT NULL CHECK (amount <> 0),
    currency    VARCHAR(3)   NOT NULL,
    created_at  VARCHAR(32)  NOT NULL
);
CREATE INDEX ledger_by_posting ON ledger_entries (posting_id);
CREATE INDEX ledger_by_merchant ON ledger_entries (merchant_id, account);

-- Transactional outbox (the seed's columns kept).
CREATE TABLE outbox (
    id            BIGINT       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      VARCHAR(64)  NOT NULL UNIQUE,
    aggregate_id  VARCHAR(64)  NOT NULL,
    merchant_id   BIGINT       NOT NULL,
    event_type    VARCHAR(64)  NOT NULL,
    payload       TEXT         NOT NULL,
    created_at    VARCHAR(32)  NOT NULL,
    published     SMALLINT     NOT NULL DEFAULT 0,
    published_at  VARCHAR(32),
    retry_count   BIGINT       NOT NULL DEFAULT 0,
    last_retry_at VARCHAR(32)
);
CREATE INDEX outbox_unpublished ON outbox (published, id);

-- Idempotency records, committed in the same transaction as the response
-- they replay.
CREATE TABLE idempotency_keys (
    merchant_id     BIGINT       NOT NULL,
    idempotency_key VARCHAR(255) NOT NULL,
    fingerprint     VARCHAR(128) NOT NULL,
    status          BIGINT       NOT NULL,
    body            BYTEA        NOT NULL,
    created_at_ms   BIGINT       NOT NULL,
    PRIMARY KEY (merchant_id, idempotency_key)
);

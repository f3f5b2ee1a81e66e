-- The payment schema of one shard. Amount rules are CHECK constraints too:
-- the components enforce them first, the shard refuses to commit a breach.

CREATE TABLE payments (
    id              TEXT    PRIMARY KEY,
    merchant_id     INTEGER NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN
                        ('AUTHORIZED', 'DECLINED', 'CAPTURED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'VOIDED')),
    amount          INTEGER NOT NULL CHECK (amount > 0),
    captured_amount INTEGER NOT NULL DEFAULT 0 CHECK (captured_amount BETWEEN 0 AND amount),
    refunded_amount INTEGER NOT NULL DEFAULT 0 CHECK (refunded_amount BETWEEN 0 AND captured_amount),
    currency        TEXT    NOT NULL,
    order_id        TEXT,
    metadata        TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    version         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX payments_by_merchant ON payments (merchant_id, created_at);

CREATE TABLE refunds (
    id          TEXT    PRIMARY KEY,
    payment_id  TEXT    NOT NULL REFERENCES payments (id),
    merchant_id INTEGER NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount > 0),
    reason      TEXT,
    created_at  TEXT    NOT NULL
);
CREATE INDEX refunds_by_payment ON refunds (payment_id);

-- Double-entry ledger: the entries of one posting sum to zero.
CREATE TABLE ledger_entries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    posting_id  TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    payment_id  TEXT    NOT NULL REFERENCES payments (id),
    merchant_id INTEGER NOT NULL,
    account     TEXT    NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount <> 0),
    currency    TEXT    NOT NULL,
    created_at  TEXT    NOT NULL
);
CREATE INDEX ledger_by_posting ON ledger_entries (posting_id);
CREATE INDEX ledger_by_merchant ON ledger_entries (merchant_id, account);

-- Transactional outbox (the seed's columns kept). `id` gives commit order
-- within the shard; the relay publishes per aggregate in that order.
CREATE TABLE outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT    NOT NULL UNIQUE,
    aggregate_id  TEXT    NOT NULL,
    merchant_id   INTEGER NOT NULL,
    event_type    TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    created_at    TEXT    NOT NULL,
    published     INTEGER NOT NULL DEFAULT 0,
    published_at  TEXT,
    retry_count   INTEGER NOT NULL DEFAULT 0,
    last_retry_at TEXT
);
CREATE INDEX outbox_unpublished ON outbox (published, id);

-- Idempotency records, committed in the same transaction as the response
-- they replay.
CREATE TABLE idempotency_keys (
    merchant_id     INTEGER NOT NULL,
    idempotency_key TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    status          INTEGER NOT NULL,
    body            BLOB    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, idempotency_key)
);

-- Online merchant moves (issue 18; docs/ARCHITECTURE.md "Merchant moves").
-- A merchant being moved from or to this shard. Retention and expiry leave
-- its rows alone; with `hold_events` the outbox relay does too (set on the
-- target from the start, on the source at the cut-over), so an event is
-- published by exactly one shard.
CREATE TABLE moving_merchants (
    merchant_id BIGINT PRIMARY KEY,
    move_id BIGINT NOT NULL,
    role VARCHAR(8) NOT NULL,         -- 'source' or 'target'
    hold_events INTEGER NOT NULL DEFAULT 0
);

-- Whose event a processed id is, so a move takes its merchant's along
-- (rows written before this column are found through the outbox).
ALTER TABLE processed_events ADD COLUMN merchant_id BIGINT;
CREATE INDEX processed_events_by_merchant ON processed_events (merchant_id);
-- A move reads one merchant's outbox and refunds.
CREATE INDEX outbox_by_merchant ON outbox (merchant_id, id);
CREATE INDEX refunds_by_merchant ON refunds (merchant_id, created_at);
-- Deleting a moved merchant's payments checks their ledger entries' foreign
-- key: without this index each deleted payment scanned the whole ledger
-- (a cleanup of 77 k payments ran past the statement deadline).
CREATE INDEX ledger_by_payment ON ledger_entries (payment_id);

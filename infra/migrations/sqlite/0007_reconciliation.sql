-- Reconciliation (issue 17; docs/ARCHITECTURE.md, "Reconciliation").
--
-- Each capture and refund keeps the instant settlement files it under (the
-- UTC day of its event's occurredAt) and its event's id, so a settlement
-- row can be recomputed exactly from the shard's own rows, counting only
-- the events the settlement consumer has recorded in processed_events.
-- payments.captured_at is the payment.captured event's occurredAt (the
-- capture's updated_at); refunds.created_at already is the
-- payment.refunded event's occurredAt.
ALTER TABLE payments ADD COLUMN captured_at TEXT;
ALTER TABLE payments ADD COLUMN capture_event_id TEXT;
ALTER TABLE refunds ADD COLUMN event_id TEXT;

-- Rows written before this migration: exact from their outbox row while it
-- is kept (published rows are purged after the outbox retention); older
-- captured payments get captured_at = updated_at, approximate (a later
-- refund moved updated_at) and without an event id, which reconciliation
-- counts as settled.
UPDATE payments SET captured_at = o.created_at, capture_event_id = o.event_id
FROM outbox o
WHERE o.aggregate_id = payments.id AND o.event_type = 'payment.captured';
UPDATE payments SET captured_at = updated_at WHERE captured_amount > 0 AND captured_at IS NULL;
UPDATE refunds SET event_id = o.event_id
FROM outbox o
WHERE o.event_type = 'payment.refunded' AND o.aggregate_id = refunds.payment_id
  AND json_extract(o.payload, '$.data.refundId') = refunds.id;

-- The recompute of one day reads that day's captures, refunds and
-- settlement rows as index ranges, never the whole table.
CREATE INDEX payments_by_captured_at ON payments (captured_at);
CREATE INDEX refunds_by_created_at ON refunds (created_at);
CREATE INDEX settlements_by_day ON settlements (day);

-- Reconciliation: each capture and refund keeps its settlement instant and
-- its event's id (see the SQLite migration of the same version).
ALTER TABLE payments ADD COLUMN captured_at VARCHAR(32), ADD COLUMN capture_event_id VARCHAR(64);
ALTER TABLE refunds ADD COLUMN event_id VARCHAR(64);

-- Rows written before this migration: exact from their outbox row while it
-- is kept, else captured_at = updated_at (approximate) and no event id.
UPDATE payments p SET captured_at = o.created_at, capture_event_id = o.event_id
FROM outbox o
WHERE o.aggregate_id = p.id AND o.event_type = 'payment.captured';
UPDATE payments SET captured_at = updated_at WHERE captured_amount > 0 AND captured_at IS NULL;
UPDATE refunds r SET event_id = o.event_id
FROM outbox o
WHERE o.event_type = 'payment.refunded' AND o.aggregate_id = r.payment_id
  AND (o.payload::json -> 'data' ->> 'refundId') = r.id;

-- One day's recompute reads index ranges. A migration runs in a
-- transaction, so these block writes to their table while they build; on
-- large tables create them first with CREATE INDEX CONCURRENTLY under the
-- same names, and this is a no-op.
CREATE INDEX IF NOT EXISTS payments_by_captured_at ON payments (captured_at);
CREATE INDEX IF NOT EXISTS refunds_by_created_at ON refunds (created_at);
CREATE INDEX IF NOT EXISTS settlements_by_day ON settlements (day);

-- Reconciliation: each capture and refund keeps its settlement instant and
-- its event's id (see the SQLite migration of the same version).
ALTER TABLE payments ADD COLUMN captured_at VARCHAR(32) NULL, ADD COLUMN capture_event_id VARCHAR(64) NULL;
ALTER TABLE refunds ADD COLUMN event_id VARCHAR(64) NULL;

-- Rows written before this migration: exact from their outbox row while it
-- is kept, else captured_at = updated_at (approximate) and no event id.
UPDATE payments p JOIN outbox o ON o.aggregate_id = p.id AND o.event_type = 'payment.captured'
SET p.captured_at = o.created_at, p.capture_event_id = o.event_id;
UPDATE payments SET captured_at = updated_at WHERE captured_amount > 0 AND captured_at IS NULL;
UPDATE refunds r JOIN outbox o
    ON o.event_type = 'payment.refunded' AND o.aggregate_id = r.payment_id
   AND JSON_UNQUOTE(JSON_EXTRACT(o.payload, '$.data.refundId')) = r.id
SET r.event_id = o.event_id;

-- One day's recompute reads index ranges. InnoDB builds these online.
CREATE INDEX payments_by_captured_at ON payments (captured_at);
CREATE INDEX refunds_by_created_at ON refunds (created_at);
CREATE INDEX settlements_by_day ON settlements (day);

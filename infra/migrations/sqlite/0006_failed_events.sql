-- Consumed events that failed and that their dead-letter topic did not take
-- either (the broker stayed unavailable for the trigger's patience, or
-- refused the message, e.g. as too large). The Kafka trigger keeps each
-- here, on the shard of the record's merchant (the first shard of the set
-- for a record without a valid merchant-id header), before it commits the
-- record's offset: a failed event is dead-lettered or stored, never dropped.
--
-- One row per record a consumer group failed on: (consumer, source topic,
-- partition, offset) is unique, and a host that stored a row and died
-- before its offset commit finds it there on the replay. The record is
-- kept whole: key and value as bytes; headers as a JSON array, in order,
-- of {"name": ..., "value": ...} ({"name": ..., "base64": ...} for a value
-- that is not UTF-8). event_id and merchant_id are copies of those headers
-- (NULL if absent or invalid), for finding rows. `error` is why the
-- record failed (the dlq-error header it would have carried),
-- `dead_letter_error` why the dead-letter topic did not take it. Times are
-- RFC 3339 UTC text, like every time on the shards.
CREATE TABLE failed_events (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer          TEXT    NOT NULL,
    source_topic      TEXT    NOT NULL,
    source_partition  INTEGER NOT NULL,
    source_offset     INTEGER NOT NULL,
    event_id          TEXT,
    merchant_id       INTEGER,
    record_key        BLOB,
    record_value      BLOB    NOT NULL,
    headers           TEXT    NOT NULL,
    error             TEXT    NOT NULL,
    dead_letter_topic TEXT    NOT NULL,
    dead_letter_error TEXT    NOT NULL,
    failed_at         TEXT    NOT NULL,
    UNIQUE (consumer, source_topic, source_partition, source_offset)
);

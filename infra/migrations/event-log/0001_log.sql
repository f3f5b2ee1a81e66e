-- The embedded event log: Kafka's model (topics, partitions, offsets,
-- consumer-group positions) in one durable SQLite file.
CREATE TABLE records (
    topic          TEXT    NOT NULL,
    partition      INTEGER NOT NULL,
    "offset"       INTEGER NOT NULL,
    key            BLOB,
    value          BLOB    NOT NULL,
    headers        BLOB    NOT NULL,
    appended_at_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);

CREATE TABLE group_offsets (
    group_id    TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);

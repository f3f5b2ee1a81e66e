-- Consumed events that failed and that their dead-letter topic did not take
-- either (see the SQLite migration of the same version). Key, value,
-- headers and errors without a length limit: a record must be storable
-- whatever it carries.
CREATE TABLE failed_events (
    id                BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    consumer          VARCHAR(255) NOT NULL,
    source_topic      VARCHAR(255) NOT NULL,
    source_partition  INT          NOT NULL,
    source_offset     BIGINT       NOT NULL,
    event_id          VARCHAR(255),
    merchant_id       BIGINT,
    record_key        LONGBLOB,
    record_value      LONGBLOB     NOT NULL,
    headers           LONGTEXT     NOT NULL,
    error             MEDIUMTEXT   NOT NULL,
    dead_letter_topic VARCHAR(255) NOT NULL,
    dead_letter_error MEDIUMTEXT   NOT NULL,
    failed_at         VARCHAR(32)  NOT NULL,
    UNIQUE KEY failed_events_by_source (consumer, source_topic, source_partition, source_offset)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

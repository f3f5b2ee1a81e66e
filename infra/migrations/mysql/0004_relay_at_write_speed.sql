-- The relay at the speed of the writes (see the SQLite migration of the
-- same version for what each change is for).
CREATE TABLE outbox_relay_lease (
    id INT NOT NULL PRIMARY KEY CHECK (id = 1)
) ENGINE = InnoDB;
INSERT INTO outbox_relay_lease (id) VALUES (1);

ALTER TABLE outbox
    ADD COLUMN superseded_by BIGINT NULL,
    ADD INDEX outbox_pending (published, dead_lettered, id),
    DROP INDEX outbox_unpublished,
    DROP INDEX outbox_by_aggregate;

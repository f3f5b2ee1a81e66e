-- Each host's per-version invocation counts (JSON bytes, written at every
-- check-in), so `payfn versions` can sum the figures of every live host.
-- Stored as binary, like component_blobs.bytes: every dialect reads it back
-- as bytes through sqlx::Any (MariaDB reports its TEXT types as blobs).
ALTER TABLE control_hosts ADD COLUMN stats LONGBLOB;

-- Each host's per-version invocation counts (JSON, written at every
-- check-in), so `payfn versions` can sum the figures of every live host.
ALTER TABLE control_hosts ADD COLUMN stats TEXT;

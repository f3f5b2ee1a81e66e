-- The merchant directory (issue 18): which shard holds each merchant. Every
-- host routes by it; a merchant gets its entry when it is first placed (or
-- adopted from a shard that held it before the directory existed, or pinned
-- by the runtime config), and keeps it when shards are added.
CREATE TABLE merchant_directory (
    merchant_id BIGINT PRIMARY KEY,
    shard VARCHAR(128) NOT NULL,
    how VARCHAR(16) NOT NULL,         -- 'placed', 'adopted' or 'pinned'
    placed_at BIGINT NOT NULL         -- unix milliseconds
);

-- Shards whose existing merchants are in the directory: each configured
-- shard is scanned once, when the host first reaches it, so a deployment
-- that ran before the directory keeps every merchant where its rows are.
CREATE TABLE directory_shards (
    shard VARCHAR(128) PRIMARY KEY,
    adopted_at BIGINT NOT NULL,       -- unix milliseconds
    merchants BIGINT NOT NULL         -- merchants found on it then
);

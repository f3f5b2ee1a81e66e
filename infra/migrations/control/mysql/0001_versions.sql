-- The control store: deployed component versions and which one serves.
-- Shard-independent: one per deployment, shared by every host.

-- Component binaries, content-addressed: a digest is stored once.
CREATE TABLE component_blobs (
    digest VARCHAR(64) PRIMARY KEY,          -- hex SHA-256 of the bytes
    size BIGINT NOT NULL,
    bytes LONGBLOB NOT NULL
);

-- Every version ever uploaded for a component.
CREATE TABLE component_versions (
    component VARCHAR(128) NOT NULL,
    digest VARCHAR(64) NOT NULL,
    label VARCHAR(200) NOT NULL,              -- `--version`, or one the host chose
    deployed_at BIGINT NOT NULL,      -- unix milliseconds
    deployed_by VARCHAR(200) NOT NULL,
    PRIMARY KEY (component, digest)
);

-- What serves each component now.
CREATE TABLE active_versions (
    component VARCHAR(128) PRIMARY KEY,
    digest VARCHAR(64) NOT NULL,
    previous_digest VARCHAR(64),             -- what `rollback` returns to
    canary_digest VARCHAR(64),
    canary_percent BIGINT NOT NULL DEFAULT 0,
    origin VARCHAR(16) NOT NULL,             -- 'manifest' (follows spin.toml) or 'admin'
    generation BIGINT NOT NULL,       -- the change that set this row
    changed_at BIGINT NOT NULL,
    changed_by VARCHAR(200) NOT NULL
);

-- The audit trail of every change to active_versions.
CREATE TABLE deployments (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    generation BIGINT NOT NULL,
    component VARCHAR(128) NOT NULL,
    action VARCHAR(16) NOT NULL,             -- activate, rollback, canary, end-canary
    digest VARCHAR(64) NOT NULL,
    previous_digest VARCHAR(64),
    canary_digest VARCHAR(64),
    canary_percent BIGINT NOT NULL,
    changed_at BIGINT NOT NULL,
    actor VARCHAR(200) NOT NULL
);

-- One row: bumped by every change, so a host learns of one with one read.
-- Updating it first also serialises changes across hosts.
CREATE TABLE control_generation (
    id BIGINT PRIMARY KEY,
    generation BIGINT NOT NULL
);
INSERT INTO control_generation (id, generation) VALUES (1, 0);

-- Each host's last check-in: which generation it serves.
CREATE TABLE control_hosts (
    host_id VARCHAR(64) PRIMARY KEY,
    address VARCHAR(200) NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL,
    generation BIGINT NOT NULL
);

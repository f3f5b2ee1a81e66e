-- The control store: deployed component versions and which one serves.
-- Shard-independent: one per deployment, shared by every host.

-- Component binaries, content-addressed: a digest is stored once.
CREATE TABLE component_blobs (
    digest TEXT PRIMARY KEY,          -- hex SHA-256 of the bytes
    size BIGINT NOT NULL,
    bytes BLOB NOT NULL
);

-- Every version ever uploaded for a component.
CREATE TABLE component_versions (
    component TEXT NOT NULL,
    digest TEXT NOT NULL REFERENCES component_blobs (digest),
    label TEXT NOT NULL,              -- `--version`, or one the host chose
    deployed_at BIGINT NOT NULL,      -- unix milliseconds
    deployed_by TEXT NOT NULL,
    PRIMARY KEY (component, digest)
);

-- What serves each component now.
CREATE TABLE active_versions (
    component TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    previous_digest TEXT,             -- what `rollback` returns to
    canary_digest TEXT,
    canary_percent BIGINT NOT NULL DEFAULT 0,
    origin TEXT NOT NULL,             -- 'manifest' (follows spin.toml) or 'admin'
    generation BIGINT NOT NULL,       -- the change that set this row
    changed_at BIGINT NOT NULL,
    changed_by TEXT NOT NULL
);

-- The audit trail of every change to active_versions.
CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    generation BIGINT NOT NULL,
    component TEXT NOT NULL,
    action TEXT NOT NULL,             -- activate, rollback, canary, end-canary
    digest TEXT NOT NULL,
    previous_digest TEXT,
    canary_digest TEXT,
    canary_percent BIGINT NOT NULL,
    changed_at BIGINT NOT NULL,
    actor TEXT NOT NULL
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
    host_id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL,
    generation BIGINT NOT NULL
);

-- Online merchant moves (issue 18). A directory entry's state says whether
-- its merchant is being moved: 'serving' (normal), 'moving' (its rows are
-- being copied; hosts sync fast), 'frozen' (the cut-over: hosts hold its
-- requests). Every change of an entry by a move bumps the control
-- generation and records it here, so a host reads only what changed.
ALTER TABLE merchant_directory ADD COLUMN state VARCHAR(16) NOT NULL DEFAULT 'serving';
ALTER TABLE merchant_directory ADD COLUMN changed_generation BIGINT NOT NULL DEFAULT 0;
CREATE INDEX merchant_directory_changes ON merchant_directory (changed_generation);

-- Every move, its step, and which host drives it. The steps:
-- copying -> frozen -> cleanup -> done, or rolling_back -> rolled_back.
CREATE TABLE merchant_moves (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    merchant_id BIGINT NOT NULL,
    from_shard VARCHAR(128) NOT NULL,
    to_shard VARCHAR(128) NOT NULL,
    step VARCHAR(16) NOT NULL,
    owner VARCHAR(255) NOT NULL,      -- the host driving it
    owner_seen_at BIGINT NOT NULL,    -- unix ms; a stale owner's move is taken over
    started_at BIGINT NOT NULL,
    step_at BIGINT NOT NULL,
    finished_at BIGINT,
    rows_copied BIGINT NOT NULL DEFAULT 0,
    pause_ms BIGINT,                  -- the cut-over: frozen until switched
    step_generation BIGINT NOT NULL DEFAULT 0, -- the control generation the step set
    watermark_ms BIGINT NOT NULL DEFAULT 0,    -- rows changed since are copied again
    detail VARCHAR(2000)
);
CREATE INDEX merchant_moves_by_merchant ON merchant_moves (merchant_id, step);

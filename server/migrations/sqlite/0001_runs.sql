-- The store as it was before migrations existed: `IF NOT EXISTS`, so a data directory written by
-- an older server takes this migration as already done.
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    completed_rounds INTEGER NOT NULL DEFAULT 0,
    finished_reason TEXT,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    server_round INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, server_round)
);
CREATE TABLE IF NOT EXISTS participants (
    run_id INTEGER NOT NULL,
    server_round INTEGER NOT NULL,
    client_key TEXT NOT NULL,
    num_examples INTEGER,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS clients (
    run_id INTEGER NOT NULL,
    client_key TEXT NOT NULL,
    shard_index INTEGER,
    ledger TEXT NOT NULL,
    rounds INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, client_key)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id INTEGER NOT NULL,
    server_round INTEGER NOT NULL,
    params BLOB NOT NULL,
    PRIMARY KEY (run_id, server_round)
);

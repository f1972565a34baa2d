-- A round's participants are read by (run, round); without an index that reads every round's.
CREATE INDEX IF NOT EXISTS participants_by_round ON participants (run_id, server_round);

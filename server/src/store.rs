//! The run store: one SQLite file in the data directory. Runs and their configs, every committed
//! round with its participants, each client's privacy ledger, and a checkpoint of the global
//! model after every round (round 0 is the initial model), so a restarted server resumes from
//! the last committed round with the same ledger.
//!
//! Owned by the coordinator task (one writer, no locks). Every round commits in one transaction:
//! a crash leaves either the whole round or none of it.

use std::path::Path;

use protocol::admin::{LedgerEntry, RoundRecord, RunConfig, RunStatus, RunSummary};
use rusqlite::{Connection, OptionalExtension, params};

/// Why the store failed (the file, SQLite, or a row that does not decode).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored {what} does not decode: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "fl.sqlite3";

const SCHEMA: &str = "
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
";

/// A client's row in a run: its shard and the server's view of its privacy spend.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRow {
    pub client_key: String,
    pub shard_index: Option<u32>,
    pub ledger: learning::PrivacyLedger,
    pub rounds: u64,
}

/// What a participant's result was in a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    pub client_key: String,
    pub num_examples: Option<u64>,
    /// `ok` or `failed`.
    pub outcome: &'static str,
    pub detail: Option<String>,
}

#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn to_blob(params: &[f32]) -> Vec<u8> {
    params.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_blob(bytes: &[u8]) -> Result<Vec<f32>, StoreError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(StoreError::Corrupt {
            what: "checkpoint",
            detail: format!("{} bytes is not a whole number of f32", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn corrupt(what: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
    move |e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(data_dir.join(DB_FILE))?;
        // WAL: a crash mid-write leaves the last committed transaction intact.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// A store that lives in memory only (unit tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Stores a new run with its initial model as the round-0 checkpoint.
    pub fn create_run(
        &mut self,
        config: &RunConfig,
        initial: &[f32],
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let config_json = serde_json::to_string(config).map_err(corrupt("run config"))?;
        tx.execute(
            "INSERT INTO runs (config, status, created_at_ms) VALUES (?1, ?2, ?3)",
            params![config_json, RunStatus::Created.as_str(), now_ms as i64],
        )?;
        let id = tx.last_insert_rowid() as u64;
        tx.execute(
            "INSERT INTO checkpoints (run_id, server_round, params) VALUES (?1, 0, ?2)",
            params![id as i64, to_blob(initial)],
        )?;
        tx.commit()?;
        Ok(id)
    }

    pub fn set_status(
        &mut self,
        run_id: u64,
        status: RunStatus,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE runs SET status = ?2, finished_reason = COALESCE(?3, finished_reason) WHERE id = ?1",
            params![run_id as i64, status.as_str(), reason],
        )?;
        Ok(())
    }

    fn summary_from_row(
        row: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<(u64, String, String, u64, Option<String>, u64)> {
        Ok((
            row.get::<_, i64>(0)? as u64,
            row.get(1)?,
            row.get(2)?,
            row.get::<_, i64>(3)? as u64,
            row.get(4)?,
            row.get::<_, i64>(5)? as u64,
        ))
    }

    fn summary(
        raw: (u64, String, String, u64, Option<String>, u64),
    ) -> Result<RunSummary, StoreError> {
        let (run_id, config, status, completed_rounds, finished_reason, created_at_ms) = raw;
        Ok(RunSummary {
            run_id,
            config: serde_json::from_str(&config).map_err(corrupt("run config"))?,
            status: RunStatus::parse(&status).ok_or(StoreError::Corrupt {
                what: "run status",
                detail: status.clone(),
            })?,
            completed_rounds,
            finished_reason,
            created_at_ms,
        })
    }

    const RUN_COLUMNS: &str =
        "id, config, status, completed_rounds, finished_reason, created_at_ms";

    pub fn runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM runs ORDER BY id",
            Self::RUN_COLUMNS
        ))?;
        let rows = stmt.query_map([], Self::summary_from_row)?;
        rows.map(|r| Self::summary(r?)).collect()
    }

    pub fn run(&self, run_id: u64) -> Result<Option<RunSummary>, StoreError> {
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {} FROM runs WHERE id = ?1", Self::RUN_COLUMNS),
                [run_id as i64],
                Self::summary_from_row,
            )
            .optional()?;
        raw.map(Self::summary).transpose()
    }

    /// The latest checkpoint of a run: `(server_round, params)`.
    pub fn latest_checkpoint(&self, run_id: u64) -> Result<Option<(u64, Vec<f32>)>, StoreError> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT server_round, params FROM checkpoints WHERE run_id = ?1 ORDER BY server_round DESC LIMIT 1",
                [run_id as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(r, b)| Ok((r as u64, from_blob(&b)?))).transpose()
    }

    pub fn rounds(&self, run_id: u64) -> Result<Vec<RoundRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT record FROM rounds WHERE run_id = ?1 ORDER BY server_round")?;
        let rows = stmt.query_map([run_id as i64], |r| r.get::<_, String>(0))?;
        rows.map(|r| serde_json::from_str(&r?).map_err(corrupt("round record")))
            .collect()
    }

    pub fn clients(&self, run_id: u64) -> Result<Vec<ClientRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT client_key, shard_index, ledger, rounds FROM clients WHERE run_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([run_id as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        rows.map(|r| {
            let (client_key, shard, ledger, rounds) = r?;
            Ok(ClientRow {
                client_key,
                shard_index: shard.map(|s| s as u32),
                ledger: serde_json::from_str(&ledger).map_err(corrupt("privacy ledger"))?,
                rounds: rounds as u64,
            })
        })
        .collect()
    }

    /// Records (or updates) clients' rows in one transaction: used when shards are assigned and
    /// when a round is dispatched, *before* any client trains, so the server's ledger never lags
    /// what clients may have spent (a crash mid-round over-counts, never under-counts).
    pub fn upsert_clients(&mut self, run_id: u64, rows: &[ClientRow]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for row in rows {
            let ledger = serde_json::to_string(&row.ledger).map_err(corrupt("privacy ledger"))?;
            tx.execute(
                "INSERT INTO clients (run_id, client_key, shard_index, ledger, rounds) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (run_id, client_key) DO UPDATE SET shard_index = ?3, ledger = ?4, rounds = ?5",
                params![
                    run_id as i64,
                    row.client_key,
                    row.shard_index.map(|s| s as i64),
                    ledger,
                    row.rounds as i64
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Commits a closed round: its record, participants and checkpoint, and the run's progress
    /// (and its final status when this was the last round) — all or nothing.
    pub fn commit_round(
        &mut self,
        run_id: u64,
        record: &RoundRecord,
        participants: &[Participant],
        params: &[f32],
        finished: Option<&str>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let r = record.server_round as i64;
        tx.execute(
            "INSERT INTO rounds (run_id, server_round, record) VALUES (?1, ?2, ?3)",
            params![
                run_id as i64,
                r,
                serde_json::to_string(record).map_err(corrupt("round record"))?
            ],
        )?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO participants (run_id, server_round, client_key, num_examples, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for p in participants {
                stmt.execute(params![
                    run_id as i64,
                    r,
                    p.client_key,
                    p.num_examples.map(|n| n as i64),
                    p.outcome,
                    p.detail
                ])?;
            }
        }
        tx.execute(
            "INSERT INTO checkpoints (run_id, server_round, params) VALUES (?1, ?2, ?3)",
            params![run_id as i64, r, to_blob(params)],
        )?;
        tx.execute(
            "UPDATE runs SET completed_rounds = ?2 WHERE id = ?1",
            params![run_id as i64, r],
        )?;
        if let Some(reason) = finished {
            tx.execute(
                "UPDATE runs SET status = ?2, finished_reason = ?3 WHERE id = ?1",
                params![run_id as i64, RunStatus::Finished.as_str(), reason],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Participants of one round (history view, tests).
    pub fn participants(
        &self,
        run_id: u64,
        server_round: u64,
    ) -> Result<Vec<Participant>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT client_key, num_examples, outcome, detail FROM participants WHERE run_id = ?1 AND server_round = ?2 ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![run_id as i64, server_round as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        rows.map(|r| {
            let (client_key, n, outcome, detail) = r?;
            Ok(Participant {
                client_key,
                num_examples: n.map(|n| n as u64),
                outcome: if outcome == "ok" { "ok" } else { "failed" },
                detail,
            })
        })
        .collect()
    }
}

/// Per-client ε of a run as the server accounts it. Tens of milliseconds per distinct ledger
/// (the tight accountant): call it off the coordinator task.
pub fn ledger_entries(clients: &[ClientRow], delta: Option<f64>) -> Vec<LedgerEntry> {
    clients
        .iter()
        .map(|c| LedgerEntry {
            client_key_prefix: c.client_key.chars().take(8).collect(),
            shard_index: c.shard_index,
            rounds: c.rounds,
            steps: c.ledger.steps(),
            epsilon: delta.and_then(|d| c.ledger.epsilon(d).ok()),
            collusion_epsilon: delta.and_then(|d| collusion_epsilon(&c.ledger, d)),
            rdp_epsilon: delta.and_then(|d| rdp_epsilon(&c.ledger, d)),
        })
        .collect()
}

/// A ledger's ε under RDP, shown beside the tight ε; `None` where RDP is the ε itself (a
/// ledger with distributed-DP rounds) or nothing was spent.
pub fn rdp_epsilon(ledger: &learning::PrivacyLedger, delta: f64) -> Option<f64> {
    if !ledger.skellam.is_empty() || ledger.steps() == 0 {
        return None;
    }
    ledger.rdp_epsilon(delta).ok()
}

/// A ledger's ε whatever the server and the other clients of its distributed-DP rounds do;
/// `None` without such rounds (it would equal the ε shown).
pub fn collusion_epsilon(ledger: &learning::PrivacyLedger, delta: f64) -> Option<f64> {
    if ledger.skellam.is_empty() {
        return None;
    }
    ledger.worst_case_epsilon(delta).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(r: u64) -> RoundRecord {
        RoundRecord {
            server_round: r,
            started_at_ms: 1,
            duration_ms: 2,
            aggregate_ms: 0.1,
            test_loss: 0.5,
            test_accuracy: 0.9,
            federated_loss: None,
            federated_accuracy: None,
            participants: 2,
            failures: 1,
            epsilon: Some(1.0),
            attempts: 1,
            secure: false,
            recovered: 0,
            keys_reused: false,
        }
    }

    #[test]
    fn a_run_survives_reopening_with_rounds_ledger_and_checkpoint() {
        let dir = std::env::temp_dir().join(format!("fl-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = RunConfig::default();
        let id;
        {
            let mut s = Store::open(&dir).unwrap();
            id = s.create_run(&config, &[1.0, 2.0], 10).unwrap();
            s.set_status(id, RunStatus::Running, None).unwrap();
            let mut ledger = learning::PrivacyLedger::default();
            ledger.record(0.04, 1.1, 25).unwrap();
            s.upsert_clients(
                id,
                &[ClientRow {
                    client_key: "k1".into(),
                    shard_index: Some(3),
                    ledger,
                    rounds: 1,
                }],
            )
            .unwrap();
            let p = Participant {
                client_key: "k1".into(),
                num_examples: Some(6000),
                outcome: "ok",
                detail: None,
            };
            s.commit_round(id, &record(1), &[p], &[3.0, 4.0], None)
                .unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let run = s.run(id).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.completed_rounds, 1);
        assert_eq!(run.config, config);
        assert_eq!(s.latest_checkpoint(id).unwrap(), Some((1, vec![3.0, 4.0])));
        assert_eq!(s.rounds(id).unwrap(), vec![record(1)]);
        let clients = s.clients(id).unwrap();
        assert_eq!(clients[0].ledger.steps(), 25);
        assert_eq!(clients[0].shard_index, Some(3));
        assert_eq!(s.participants(id, 1).unwrap()[0].num_examples, Some(6000));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_round_is_committed_once() {
        let mut s = Store::in_memory().unwrap();
        let id = s.create_run(&RunConfig::default(), &[0.0], 0).unwrap();
        s.commit_round(id, &record(1), &[], &[1.0], None).unwrap();
        // The same round again violates the primary key and changes nothing.
        assert!(s.commit_round(id, &record(1), &[], &[2.0], None).is_err());
        assert_eq!(s.latest_checkpoint(id).unwrap(), Some((1, vec![1.0])));
        s.commit_round(id, &record(2), &[], &[2.0], Some("all rounds done"))
            .unwrap();
        let run = s.run(id).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Finished);
        assert_eq!(run.finished_reason.as_deref(), Some("all rounds done"));
    }
}

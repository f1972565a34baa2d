//! The run store: SQLite in the data directory on one machine, or PostgreSQL when the server is
//! given a database URL. Runs and their configs, every committed round with its participants,
//! each client's privacy ledger, and a checkpoint of the global model after every round (round 0
//! is the initial model), so a restarted server resumes from the last committed round with the
//! same ledger.
//!
//! Owned by the coordinator task (one writer, no locks). Every round commits in one transaction:
//! a crash leaves either the whole round or none of it. Both databases run the same queries
//! (sqlx's `Any` driver); only the schema's column types differ (`server/migrations/`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::admin::{LedgerEntry, RoundRecord, RunConfig, RunStatus, RunSummary};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, ConnectOptions, Connection, SqlSafeStr};

/// Why the store failed (the database, its schema, or a row that does not decode).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot open the database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot bring the database schema up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database URL {url} is not one the store supports: expected postgres://… \
         (or postgresql://…) or sqlite://…"
    )]
    Unsupported { url: String },
    #[error("the database did not answer within {secs} s")]
    Timeout { secs: f64 },
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

/// Which database holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0;
        match scheme {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }

    /// The schema's migrations, in order. The SQL differs only in column types; a version is the
    /// same change in both.
    fn migrations(self) -> Vec<Migration> {
        let files: [(&'static str, &'static str); 2] = match self {
            Self::Sqlite => [
                ("runs", include_str!("../migrations/sqlite/0001_runs.sql")),
                (
                    "participants by round",
                    include_str!("../migrations/sqlite/0002_participants_by_round.sql"),
                ),
            ],
            Self::Postgres => [
                ("runs", include_str!("../migrations/postgres/0001_runs.sql")),
                (
                    "participants by round",
                    include_str!("../migrations/postgres/0002_participants_by_round.sql"),
                ),
            ],
        };
        (1..)
            .zip(files)
            .map(|(version, (description, sql))| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect()
    }
}

/// A database URL as it may be shown: without its password, a user name standing alone (it
/// may be a token: `nats://TOKEN@host`), or a query that carries a password or token.
pub fn redacted(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "(a URL that does not parse)".into();
    };
    // Both fail only for URLs without a host, which carry no credentials.
    let _no_host = if u.password().is_some() {
        u.set_password(Some("***"))
    } else if !u.username().is_empty() {
        u.set_username("***")
    } else {
        Ok(())
    };
    if u.query_pairs()
        .any(|(k, _)| k == "password" || k == "token")
    {
        u.set_query(Some("***"));
    }
    u.to_string()
}

/// Where the store is: SQLite in a data directory, or a database URL.
#[derive(Clone)]
pub enum Location {
    DataDir(PathBuf),
    Url(String),
}

impl std::fmt::Display for Location {
    /// Without the URL's password: this is what logs show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DataDir(dir) => write!(f, "SQLite in {}", dir.join(DB_FILE).display()),
            Self::Url(url) => f.write_str(&redacted(url)),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

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

/// The store: a pool of one connection, and the runtime that drives it.
///
/// The coordinator calls the store from synchronous code inside its tokio task, and waits for
/// each write before it goes on (so memory and store never disagree). A future of the caller's
/// own runtime cannot be blocked on there, so the store brings a small runtime of its own and
/// blocks on it from a scoped thread ([`Store::wait`]): a few microseconds per call, next to a
/// database round trip.
#[derive(Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// How long one call may wait for the database ([`STORE_TIMEOUT`]).
    timeout: Duration,
}

/// How long one store call waits for the database: a database that hangs fails the call (the
/// coordinator then retries the round or refuses the request) instead of freezing the
/// coordinator's task, which answers every socket.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Integers are stored as SQL's signed 64-bit; ours are counts and ids far below 2^63.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(what: &'static str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("{v} is negative"),
    })
}

type RunRow = (i64, String, String, i64, Option<String>, i64);

const RUN_COLUMNS_BY_ID: &str = "SELECT id, config, status, completed_rounds, finished_reason, created_at_ms FROM runs ORDER BY id";
const RUN_COLUMNS_OF_ID: &str = "SELECT id, config, status, completed_rounds, finished_reason, created_at_ms FROM runs WHERE id = $1";

fn summary(raw: RunRow) -> Result<RunSummary, StoreError> {
    let (run_id, config, status, completed_rounds, finished_reason, created_at_ms) = raw;
    Ok(RunSummary {
        run_id: uint("run id", run_id)?,
        config: serde_json::from_str(&config).map_err(corrupt("run config"))?,
        status: RunStatus::parse(&status).ok_or(StoreError::Corrupt {
            what: "run status",
            detail: status.clone(),
        })?,
        completed_rounds: uint("completed rounds", completed_rounds)?,
        finished_reason,
        created_at_ms: uint("creation time", created_at_ms)?,
    })
}

impl Store {
    /// Opens the store where it is.
    pub fn open_at(location: &Location) -> Result<Self, StoreError> {
        match location {
            Location::DataDir(dir) => Self::open(dir),
            Location::Url(url) => Self::connect(url),
        }
    }

    /// Opens (creating if needed) the SQLite store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let url = SqliteConnectOptions::new()
            .filename(data_dir.join(DB_FILE))
            .create_if_missing(true)
            .to_url_lossy();
        Self::connect(url.as_str())
    }

    /// A store that lives in memory only (unit tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::connect("sqlite::memory:")
    }

    /// Opens the store at a database URL (`postgres://user:password@host/db`, `sqlite://path`)
    /// and brings its schema up to date.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let backend =
            Backend::of_url(url).ok_or_else(|| StoreError::Unsupported { url: redacted(url) })?;
        install_default_drivers();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        let cannot_connect = |source| StoreError::Connect {
            url: redacted(url),
            source,
        };
        let connect = async {
            // One attempt first, for its reason: the pool retries a refused connection until
            // its timeout and then says only that it timed out.
            AnyConnection::connect(url)
                .await
                .map_err(cannot_connect)?
                .close()
                .await?;
            let pool = pool_options(backend)
                .connect(url)
                .await
                .map_err(cannot_connect)?;
            Migrator::with_migrations(backend.migrations())
                .run(&pool)
                .await?;
            Ok::<_, StoreError>(pool)
        };
        let pool = match on(&runtime, connect) {
            Ok(pool) => pool,
            Err(e) => {
                // Dropping a runtime inside the caller's async task would panic.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        Ok(Self {
            pool,
            backend,
            runtime: Some(runtime),
            timeout: STORE_TIMEOUT,
        })
    }

    /// How long each call may wait for the database from now on.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Which database this store is in.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs a database future to completion (see [`Store`]), or fails it after the timeout.
    fn wait<T: Send>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives until the store is dropped");
        let timeout = self.timeout;
        on(runtime, async move {
            tokio::time::timeout(timeout, f)
                .await
                .unwrap_or(Err(StoreError::Timeout {
                    secs: timeout.as_secs_f64(),
                }))
        })
    }

    /// [`Store::wait`] for one query.
    fn query<T: Send>(
        &self,
        f: impl Future<Output = Result<T, sqlx::Error>> + Send,
    ) -> Result<T, StoreError> {
        self.wait(async { Ok(f.await?) })
    }

    /// Stores a new run with its initial model as the round-0 checkpoint.
    pub fn create_run(
        &mut self,
        config: &RunConfig,
        initial: &[f32],
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let config_json = serde_json::to_string(config).map_err(corrupt("run config"))?;
        self.wait(async {
            let mut tx = self.pool.begin().await?;
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO runs (config, status, created_at_ms) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(config_json)
            .bind(RunStatus::Created.as_str())
            .bind(int(now_ms))
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO checkpoints (run_id, server_round, params) VALUES ($1, 0, $2)",
            )
            .bind(id)
            .bind(to_blob(initial))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            uint("run id", id)
        })
    }

    pub fn set_status(
        &mut self,
        run_id: u64,
        status: RunStatus,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.wait(async {
            sqlx::query(
                "UPDATE runs SET status = $2, finished_reason = COALESCE($3, finished_reason) WHERE id = $1",
            )
            .bind(int(run_id))
            .bind(status.as_str())
            .bind(reason)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    pub fn runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        let rows: Vec<RunRow> =
            self.query(sqlx::query_as(RUN_COLUMNS_BY_ID).fetch_all(&self.pool))?;
        rows.into_iter().map(summary).collect()
    }

    pub fn run(&self, run_id: u64) -> Result<Option<RunSummary>, StoreError> {
        let row: Option<RunRow> = self.query(
            sqlx::query_as(RUN_COLUMNS_OF_ID)
                .bind(int(run_id))
                .fetch_optional(&self.pool),
        )?;
        row.map(summary).transpose()
    }

    /// The latest checkpoint of a run: `(server_round, params)`.
    pub fn latest_checkpoint(&self, run_id: u64) -> Result<Option<(u64, Vec<f32>)>, StoreError> {
        let row: Option<(i64, Vec<u8>)> = self.query(
            sqlx::query_as(
                "SELECT server_round, params FROM checkpoints WHERE run_id = $1 ORDER BY server_round DESC LIMIT 1",
            )
            .bind(int(run_id))
            .fetch_optional(&self.pool),
        )?;
        row.map(|(r, b)| Ok((uint("checkpoint round", r)?, from_blob(&b)?)))
            .transpose()
    }

    pub fn rounds(&self, run_id: u64) -> Result<Vec<RoundRecord>, StoreError> {
        let rows: Vec<(String,)> = self.query(
            sqlx::query_as("SELECT record FROM rounds WHERE run_id = $1 ORDER BY server_round")
                .bind(int(run_id))
                .fetch_all(&self.pool),
        )?;
        rows.into_iter()
            .map(|(r,)| serde_json::from_str(&r).map_err(corrupt("round record")))
            .collect()
    }

    /// A run's clients: those with a shard in shard order, then those with their own data by key.
    pub fn clients(&self, run_id: u64) -> Result<Vec<ClientRow>, StoreError> {
        let rows: Vec<(String, Option<i64>, String, i64)> = self.query(
            sqlx::query_as(
                "SELECT client_key, shard_index, ledger, rounds FROM clients WHERE run_id = $1
                 ORDER BY shard_index IS NULL, shard_index, client_key",
            )
            .bind(int(run_id))
            .fetch_all(&self.pool),
        )?;
        rows.into_iter()
            .map(|(client_key, shard, ledger, rounds)| {
                Ok(ClientRow {
                    client_key,
                    shard_index: shard
                        .map(|s| {
                            u32::try_from(s).map_err(|_| StoreError::Corrupt {
                                what: "shard index",
                                detail: format!("{s} is not a shard index"),
                            })
                        })
                        .transpose()?,
                    ledger: serde_json::from_str(&ledger).map_err(corrupt("privacy ledger"))?,
                    rounds: uint("client rounds", rounds)?,
                })
            })
            .collect()
    }

    /// Records (or updates) clients' rows, all or none: used when shards are assigned and
    /// when a round is dispatched, *before* any client trains, so the server's ledger never lags
    /// what clients may have spent (a crash mid-round over-counts, never under-counts).
    ///
    /// [`ROWS_PER_STATEMENT`] rows per statement: a round of 10 000 clients is 20 round trips to
    /// the database, not 10 000.
    pub fn upsert_clients(&mut self, run_id: u64, rows: &[ClientRow]) -> Result<(), StoreError> {
        // One row per key (the last): a statement may not update a row twice.
        let mut last = std::collections::HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            last.insert(row.client_key.as_str(), i);
        }
        let rows: Vec<(&ClientRow, String)> = rows
            .iter()
            .enumerate()
            .filter(|(i, row)| last.get(row.client_key.as_str()) == Some(i))
            .map(|(_, row)| {
                let ledger =
                    serde_json::to_string(&row.ledger).map_err(corrupt("privacy ledger"))?;
                Ok((row, ledger))
            })
            .collect::<Result<_, StoreError>>()?;
        self.wait(async {
            let mut tx = self.pool.begin().await?;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let sql = values_sql(
                    "INSERT INTO clients (run_id, client_key, shard_index, ledger, rounds)",
                    5,
                    chunk.len(),
                    " ON CONFLICT (run_id, client_key) DO UPDATE SET shard_index = excluded.shard_index, \
                     ledger = excluded.ledger, rounds = excluded.rounds",
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for (row, ledger) in chunk {
                    query = query
                        .bind(int(run_id))
                        .bind(row.client_key.as_str())
                        .bind(row.shard_index.map(i64::from))
                        .bind(ledger.as_str())
                        .bind(int(row.rounds));
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
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
        let record_json = serde_json::to_string(record).map_err(corrupt("round record"))?;
        let (run, round) = (int(run_id), int(record.server_round));
        self.wait(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("INSERT INTO rounds (run_id, server_round, record) VALUES ($1, $2, $3)")
                .bind(run)
                .bind(round)
                .bind(record_json)
                .execute(&mut *tx)
                .await?;
            for chunk in participants.chunks(ROWS_PER_STATEMENT) {
                let sql = values_sql(
                    "INSERT INTO participants (run_id, server_round, client_key, num_examples, outcome, detail)",
                    6,
                    chunk.len(),
                    "",
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for p in chunk {
                    query = query
                        .bind(run)
                        .bind(round)
                        .bind(p.client_key.as_str())
                        .bind(p.num_examples.map(int))
                        .bind(p.outcome)
                        .bind(p.detail.as_deref());
                }
                query.execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO checkpoints (run_id, server_round, params) VALUES ($1, $2, $3)")
                .bind(run)
                .bind(round)
                .bind(to_blob(params))
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE runs SET completed_rounds = $2 WHERE id = $1")
                .bind(run)
                .bind(round)
                .execute(&mut *tx)
                .await?;
            if let Some(reason) = finished {
                sqlx::query("UPDATE runs SET status = $2, finished_reason = $3 WHERE id = $1")
                    .bind(run)
                    .bind(RunStatus::Finished.as_str())
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Participants of one round, by client key (history view, tests).
    pub fn participants(
        &self,
        run_id: u64,
        server_round: u64,
    ) -> Result<Vec<Participant>, StoreError> {
        let rows: Vec<(String, Option<i64>, String, Option<String>)> = self.query(
            sqlx::query_as(
                "SELECT client_key, num_examples, outcome, detail FROM participants
                 WHERE run_id = $1 AND server_round = $2 ORDER BY client_key",
            )
            .bind(int(run_id))
            .bind(int(server_round))
            .fetch_all(&self.pool),
        )?;
        rows.into_iter()
            .map(|(client_key, n, outcome, detail)| {
                Ok(Participant {
                    client_key,
                    num_examples: n.map(|n| uint("example count", n)).transpose()?,
                    outcome: if outcome == "ok" { "ok" } else { "failed" },
                    detail,
                })
            })
            .collect()
    }
}

/// Rows per multi-row `INSERT`: its parameters stay far below both databases' limits (SQLite
/// 32 766, PostgreSQL 65 535).
pub const ROWS_PER_STATEMENT: usize = 500;

/// `head VALUES ($1, …, $c), ($c+1, …), … tail` for `rows` rows of `columns` values. Only
/// placeholders are generated: the values are bound.
fn values_sql(head: &str, columns: usize, rows: usize, tail: &str) -> String {
    let mut sql = format!("{head} VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        let placeholders: Vec<String> = (1..=columns)
            .map(|c| format!("${}", r * columns + c))
            .collect();
        sql.push_str(&placeholders.join(", "));
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing lets SQLite fold its write-ahead log back into the file and PostgreSQL end
        // the session cleanly; then the runtime goes without blocking the caller's task.
        let _closed_or_timed_out = self.wait(async {
            self.pool.close().await;
            Ok(())
        });
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One connection: the coordinator is the only writer and waits for each call. In-memory SQLite
/// lives as long as its one connection, so that connection is never retired.
fn pool_options(backend: Backend) -> AnyPoolOptions {
    let options = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30));
    match backend {
        Backend::Postgres => options,
        Backend::Sqlite => {
            options
                .idle_timeout(None)
                .max_lifetime(None)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        // WAL: a crash mid-write leaves the last committed transaction intact.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                })
        }
    }
}

/// Blocks on `f` in `runtime` from a thread that is no runtime's worker, so it may be called
/// from inside any async task.
fn on<T: Send>(runtime: &tokio::runtime::Runtime, f: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| runtime.block_on(f))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
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

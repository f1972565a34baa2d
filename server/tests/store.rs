//! The run store, the same tests against both databases it runs on: SQLite in a data directory
//! and PostgreSQL in a throw-away cluster these tests start (support/postgres.rs). Each runs
//! inside a tokio task, as the coordinator calls the store.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use protocol::admin::{RoundRecord, RunConfig, RunStatus};
use server::store::{Backend, ClientRow, Participant, Store, StoreError};
use support::postgres::{Cluster, cluster};

/// A database for one test: reopened by [`Db::open`] as a restarted server would.
enum Db {
    Sqlite(PathBuf),
    Postgres { url: String, _cluster: Arc<Cluster> },
}

impl Db {
    fn open(&self) -> Store {
        let store = match self {
            Self::Sqlite(dir) => Store::open(dir),
            Self::Postgres { url, .. } => Store::connect(url),
        };
        store.unwrap_or_else(|e| panic!("{}: {e}", self.name()))
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "SQLite",
            Self::Postgres { .. } => "PostgreSQL",
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Self::Sqlite(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh database of each kind.
fn databases(test: &str) -> [Db; 2] {
    let dir = std::env::temp_dir().join(format!("fl-store-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = cluster();
    [
        Db::Sqlite(dir),
        Db::Postgres {
            url: cluster.database(test),
            _cluster: cluster,
        },
    ]
}

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

fn client(key: &str, shard: Option<u32>, steps: u64) -> ClientRow {
    let mut ledger = learning::PrivacyLedger::default();
    ledger.record(0.04, 1.1, steps).unwrap();
    ClientRow {
        client_key: key.into(),
        shard_index: shard,
        ledger,
        rounds: 1,
    }
}

#[tokio::test]
async fn a_run_survives_reopening_with_rounds_ledger_and_checkpoint() {
    for db in databases("reopen") {
        let config = RunConfig::default();
        // A whole model, with values whose bits must come back as they were.
        let model: Vec<f32> = (0..12_810_u32)
            .map(|i| f32::from_bits(0x3f80_0000 ^ i.wrapping_mul(2_654_435_761)))
            .collect();
        let id;
        {
            let mut s = db.open();
            id = s.create_run(&config, &[1.0, 2.0], 10).unwrap();
            s.set_status(id, RunStatus::Running, None).unwrap();
            s.upsert_clients(id, &[client("k1", Some(3), 25)]).unwrap();
            let p = Participant {
                client_key: "k1".into(),
                num_examples: Some(6000),
                outcome: "ok",
                detail: None,
            };
            s.commit_round(id, &record(1), &[p], &model, None).unwrap();
        }
        let s = db.open();
        let name = db.name();
        let run = s.run(id).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Running, "{name}");
        assert_eq!(run.completed_rounds, 1, "{name}");
        assert_eq!(run.created_at_ms, 10, "{name}");
        assert_eq!(run.config, config, "{name}");
        let (round, params) = s.latest_checkpoint(id).unwrap().unwrap();
        assert_eq!(round, 1, "{name}");
        assert!(
            params
                .iter()
                .map(|v| v.to_bits())
                .eq(model.iter().map(|v| v.to_bits())),
            "{name}: the checkpoint came back changed"
        );
        assert_eq!(s.rounds(id).unwrap(), vec![record(1)], "{name}");
        let clients = s.clients(id).unwrap();
        assert_eq!(clients, vec![client("k1", Some(3), 25)], "{name}");
        assert_eq!(s.participants(id, 1).unwrap()[0].num_examples, Some(6000));
        assert_eq!(s.runs().unwrap().len(), 1, "{name}");
        assert!(s.run(id + 1).unwrap().is_none(), "{name}");
    }
}

#[tokio::test]
async fn a_round_is_committed_once() {
    for db in databases("once") {
        let name = db.name();
        let mut s = db.open();
        let id = s.create_run(&RunConfig::default(), &[0.0], 0).unwrap();
        let p = |key: &str| Participant {
            client_key: key.into(),
            num_examples: None,
            outcome: "failed",
            detail: Some("left".into()),
        };
        s.commit_round(id, &record(1), &[p("a")], &[1.0], None)
            .unwrap();
        // The same round again violates the primary key and changes nothing: not its
        // checkpoint, not its participants.
        assert!(
            matches!(
                s.commit_round(id, &record(1), &[p("b")], &[2.0], None),
                Err(StoreError::Database(_))
            ),
            "{name}"
        );
        assert_eq!(
            s.latest_checkpoint(id).unwrap(),
            Some((1, vec![1.0])),
            "{name}"
        );
        assert_eq!(s.participants(id, 1).unwrap(), vec![p("a")], "{name}");
        s.commit_round(id, &record(2), &[], &[2.0], Some("all rounds done"))
            .unwrap();
        let run = s.run(id).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Finished, "{name}");
        assert_eq!(run.finished_reason.as_deref(), Some("all rounds done"));
        assert_eq!(run.completed_rounds, 2, "{name}");
    }
}

/// Shards in order, then clients with their own data by key — the same order in both databases
/// (PostgreSQL sorts NULL last, SQLite first: the query says which it wants).
#[tokio::test]
async fn clients_come_in_shard_order_then_own_data_by_key_and_an_upsert_updates() {
    for db in databases("order") {
        let name = db.name();
        let mut s = db.open();
        let id = s.create_run(&RunConfig::default(), &[0.0], 0).unwrap();
        let other = s.create_run(&RunConfig::default(), &[0.0], 0).unwrap();
        s.upsert_clients(
            id,
            &[
                client("own-b", None, 1),
                client("shard-7", Some(7), 1),
                client("own-a", None, 1),
                client("shard-2", Some(2), 1),
            ],
        )
        .unwrap();
        s.upsert_clients(other, &[client("elsewhere", Some(0), 1)])
            .unwrap();
        // A round dispatched: the same key again, with more spent.
        s.upsert_clients(id, &[client("shard-7", Some(7), 50)])
            .unwrap();
        let keys: Vec<_> = s
            .clients(id)
            .unwrap()
            .into_iter()
            .map(|c| (c.client_key, c.ledger.steps()))
            .collect();
        assert_eq!(
            keys,
            [("shard-2", 1), ("shard-7", 50), ("own-a", 1), ("own-b", 1)]
                .map(|(k, n)| (k.to_string(), n)),
            "{name}"
        );
        let runs: Vec<_> = s.runs().unwrap().iter().map(|r| r.run_id).collect();
        assert_eq!(runs, [id, other], "{name}");
    }
}

/// A round of more clients than one statement takes (the rows go in several): every row is
/// written, a key given twice keeps its last row, and the participants all land.
#[tokio::test]
async fn thousands_of_clients_are_stored_in_a_few_statements() {
    for db in databases("many") {
        let name = db.name();
        let mut s = db.open();
        let id = s.create_run(&RunConfig::default(), &[0.0], 0).unwrap();
        let n = server::store::ROWS_PER_STATEMENT * 2 + 7;
        let mut rows: Vec<ClientRow> = (0..n)
            .map(|i| client(&format!("k{i:05}"), Some(i as u32), 1))
            .collect();
        rows.push(client("k00003", Some(3), 99));
        s.upsert_clients(id, &rows).unwrap();
        let stored = s.clients(id).unwrap();
        assert_eq!(stored.len(), n, "{name}");
        assert_eq!(
            stored[3].ledger.steps(),
            99,
            "{name}: the last row of a key wins"
        );
        let participants: Vec<Participant> = (0..n)
            .map(|i| Participant {
                client_key: format!("k{i:05}"),
                num_examples: Some(i as u64),
                outcome: "ok",
                detail: None,
            })
            .collect();
        s.commit_round(id, &record(1), &participants, &[1.0], None)
            .unwrap();
        assert_eq!(s.participants(id, 1).unwrap(), participants, "{name}");
    }
}

/// A data directory written before the store had migrations (the same tables, no migration
/// table) opens with its runs, and is brought up to date.
#[tokio::test]
async fn a_store_written_before_migrations_opens_with_its_runs() {
    use sqlx::Connection;
    let dir = std::env::temp_dir().join(format!("fl-store-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join(server::store::DB_FILE))
        .create_if_missing(true);
    let mut old = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::raw_sql(include_str!("../migrations/sqlite/0001_runs.sql"))
        .execute(&mut old)
        .await
        .unwrap();
    let config = serde_json::to_string(&RunConfig::default()).unwrap();
    sqlx::query("INSERT INTO runs (config, status, created_at_ms) VALUES ($1, 'paused', 5)")
        .bind(config)
        .execute(&mut old)
        .await
        .unwrap();
    old.close().await.unwrap();

    let s = Store::open(&dir).unwrap();
    assert_eq!(s.backend(), Backend::Sqlite);
    let runs = s.runs().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Paused);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What an operator mistypes is named, and a password never appears in a message.
#[tokio::test]
async fn a_bad_database_url_is_refused_with_what_was_expected() {
    let e = Store::connect("mysql://root:hunter2@db/fl").unwrap_err();
    assert!(matches!(e, StoreError::Unsupported { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("expected postgres://"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    // Nothing listens on port 1: the error names the database, without its password.
    let e = Store::connect("postgres://fl:hunter2@127.0.0.1:1/fl").unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StoreError::Connect { .. }), "{text}");
    assert!(
        text.contains("127.0.0.1:1/fl") && !text.contains("hunter2"),
        "{text}"
    );
    // A user name alone may be a token; a password may come as a query parameter.
    for url in [
        "postgres://hunter2@127.0.0.1:1/fl",
        "postgres://fl@127.0.0.1:1/fl?password=hunter2",
        "postgres://127.0.0.1:1/fl?password=hunter2",
    ] {
        let text = Store::connect(url).unwrap_err().to_string();
        assert!(!text.contains("hunter2"), "{text}");
    }
}

/// A TCP proxy to `target` that stops passing bytes while `stalled` is set: a database that
/// hangs (a network partition, a stuck server) without closing anything. On a thread and a
/// runtime of its own: the store blocks the caller's thread while it waits.
fn stalling_proxy(
    target: std::net::SocketAddr,
    stalled: Arc<std::sync::atomic::AtomicBool>,
) -> std::net::SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(proxy(std_listener, target, stalled));
    });
    addr
}

async fn proxy(
    listener: std::net::TcpListener,
    target: std::net::SocketAddr,
    stalled: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to, stalled) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    stalled.clone(),
                ),
                (Box::new(sr), Box::new(cw), stalled.clone()),
            ] {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        while stalled.load(Ordering::SeqCst) {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }
}

/// A database that stops answering fails each store call after the store's timeout, with an
/// error that says so, instead of freezing the coordinator's task; once it answers again, so
/// does the store.
#[tokio::test]
async fn a_database_that_hangs_fails_calls_after_the_timeout() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let cluster = cluster();
    let url = cluster.database("hangs");
    let (prefix, rest) = url.split_once("@").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let stalled = Arc::new(AtomicBool::new(false));
    let proxy = stalling_proxy(host.parse().unwrap(), stalled.clone());
    let mut store = Store::connect(&format!("{prefix}@{proxy}/{path}")).unwrap();
    store.set_timeout(std::time::Duration::from_secs(1));
    assert!(store.runs().unwrap().is_empty());
    stalled.store(true, Ordering::SeqCst);
    let err = store.runs().unwrap_err();
    assert!(matches!(err, StoreError::Timeout { .. }), "{err}");
    assert_eq!(err.to_string(), "the database did not answer within 1 s");
    stalled.store(false, Ordering::SeqCst);
    // The connection the timed-out call left may be dropped first: the store reconnects.
    let answered = (0..5).any(|_| store.runs().is_ok());
    assert!(answered, "the store answers again once the database does");
}

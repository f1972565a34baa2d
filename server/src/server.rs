//! Wiring: store + data + coordinator task + router, for the binary and the tests.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use protocol::servers::ServerUrl;

use crate::bus::{self, GatewayId, Subjects};
use crate::coordinator::{self, AdminError, Coordinator, CoordinatorOptions};
use crate::data::DemoData;
use crate::store::{Location, Store, StoreError};
use crate::{AppState, app};

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where the runs, rounds and ledgers are kept.
    pub store: Location,
    pub admin_token: String,
    /// Create and start the demo run when the store has no run yet.
    pub demo: bool,
    pub coordinator: CoordinatorOptions,
    /// Serve this directory (the built frontend) at `/`.
    pub static_dir: Option<PathBuf>,
    /// The address the server listens on (the dashboard's join link and QR code).
    pub listen: Option<std::net::SocketAddr>,
}

impl Started {
    fn new(state: AppState, coordinator: JoinHandle<()>) -> Self {
        Self {
            router: app(state.clone()),
            state,
            coordinator,
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Bus(String),
    #[error("cannot create the demo run: {0}")]
    Demo(#[from] AdminError),
}

/// A started server: its router and the coordinator task.
pub struct Started {
    pub router: axum::Router,
    pub state: AppState,
    pub coordinator: JoinHandle<()>,
}

/// Opens the store, resumes or creates the run, starts the coordinator.
pub fn start(options: ServerOptions, data: Option<Arc<DemoData>>) -> Result<Started, StartError> {
    let store = Store::open_at(&options.store)?;
    let (events, _) = broadcast::channel(1024);
    let mut c = Coordinator::new(store, data.clone(), events.clone(), options.coordinator)?;
    if options.demo {
        c.ensure_demo_run()?;
    }
    let (tx, handle) = coordinator::spawn(c);
    let state = AppState {
        coordinator: tx,
        events,
        admin_token: Arc::new(options.admin_token),
        data,
        model_params: learning::task::max_params(),
        static_dir: options.static_dir.map(Arc::new),
        listen: options.listen,
        peers: Default::default(),
    };
    Ok(Started::new(state, handle))
}

/// Where the bus is, and this process's part on it.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// `nats://host:4222` (with `user:password@` if the NATS server asks for them).
    pub nats_url: String,
    pub subjects: Subjects,
}

/// Puts a started coordinator on the bus: every gateway's clients become its clients.
pub async fn attach_bus(started: &Started, bus: &BusOptions) -> Result<JoinHandle<()>, StartError> {
    let nats = bus::connect(&bus.nats_url, "fl-coordinator")
        .await
        .map_err(StartError::Bus)?;
    watch_peers(
        nats.clone(),
        bus.subjects.clone(),
        started.state.peers.clone(),
    );
    let (subjects, coordinator) = (bus.subjects.clone(), started.state.coordinator.clone());
    Ok(tokio::spawn(async move {
        if let Err(e) = bus::bridge::run(nats, subjects, coordinator).await {
            tracing::error!(error = %e, "the coordinator's bus bridge stopped");
        }
    }))
}

/// How to start a gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub id: GatewayId,
    pub bus: BusOptions,
    /// Serve this directory (the built client page) at `/`.
    pub static_dir: Option<PathBuf>,
    pub listen: Option<std::net::SocketAddr>,
    /// Where browsers reach this gateway, said in its heartbeats: every server lists the live
    /// gateways' URLs at `GET /api/servers`, where a client page finds where to move.
    pub public_url: Option<ServerUrl>,
}

/// Keeps `peers` filled from the gateways' heartbeats. Not a lifeline: without it the listing
/// empties and pages try only their own server, as on a single machine.
fn watch_peers(nats: async_nats::Client, subjects: Subjects, peers: bus::peers::Peers) {
    tokio::spawn(async move {
        if let Err(e) = bus::peers::watch(nats, subjects, peers).await {
            tracing::error!(error = %e, "the list of gateways for client pages is no longer kept");
        }
    });
}

/// Starts a gateway: the same router as a server, its command channel served by the bus relay
/// (`Started::coordinator` is the relay's task). Its data sets serve shard downloads.
pub async fn start_gateway(
    options: GatewayOptions,
    data: Option<Arc<DemoData>>,
) -> Result<Started, StartError> {
    let name = format!("fl-gateway-{}", options.id);
    let nats = bus::connect(&options.bus.nats_url, &name)
        .await
        .map_err(StartError::Bus)?;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let peers = bus::peers::Peers::default();
    watch_peers(nats.clone(), options.bus.subjects.clone(), peers.clone());
    let (subjects, id) = (options.bus.subjects.clone(), options.id.clone());
    let public_url = options.public_url.as_ref().map(ToString::to_string);
    let relay = tokio::spawn(async move {
        if let Err(e) = bus::relay::run(nats, subjects, id, public_url, rx).await {
            tracing::error!(error = %e, "the gateway's bus relay stopped");
        }
    });
    let (events, _) = broadcast::channel(16);
    let admin_token = crate::random_hex(24).map_err(|e| StartError::Bus(e.to_string()))?;
    let state = AppState {
        coordinator: tx,
        events,
        admin_token: Arc::new(admin_token),
        data,
        model_params: learning::task::max_params(),
        static_dir: options.static_dir.map(Arc::new),
        listen: options.listen,
        peers,
    };
    Ok(Started::new(state, relay))
}

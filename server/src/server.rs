//! Wiring: store + data + coordinator task + router, for the binary and the tests.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

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

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
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
    };
    Ok(Started {
        router: app(state.clone()),
        state,
        coordinator: handle,
    })
}
